"""PNG plots of an evaluation, drawn on matplotlib's Agg canvas (no display, no pyplot state).

Each plot is written to `path` (local, or any etils.epath URL such as gs://...; parent
folders are created) and also returned as an RGB uint8 image [H, W, 3] for TensorBoard:

  >>> path, image = scatter_with_logistic(pred, mos, "runs/demo/eval/1000/scatter.png")
  >>> image.shape, image.dtype
  ((480, 640, 3), dtype('uint8'))
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cpllm.evals import metrics

FIGSIZE, DPI = (6.4, 4.8), 100  # 640 x 480 pixels


class Plot(NamedTuple):
  path: str
  image: np.ndarray  # uint8 [H, W, 3]


def figure_to_array(fig: Figure) -> np.ndarray:
  """The rendered figure as RGB uint8 [H, W, 3] (H, W = figure size in inches * dpi)."""
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # opaque background: drop alpha


def scatter_with_logistic(pred, mos, path: str,
                          title: str = "Predicted score vs MOS") -> Plot:
  """Scatter of pred [N] (x) against mos [N] (y) with the logistic fitted by
  metrics.fit_logistic, and SRCC / PLCC (after the fit) in the legend."""
  corr = metrics.correlations(pred, mos)
  fit = metrics.fit_logistic(pred, mos)
  pred, mos = np.asarray(pred, np.float64), np.asarray(mos, np.float64)
  fig = _figure()
  ax = fig.add_subplot()
  ax.scatter(pred, mos, s=10, alpha=0.5, linewidths=0, label=f"videos (n={corr['n']})")
  x = np.linspace(pred.min(), pred.max(), 200)
  ax.plot(x, fit(x), color="C3", lw=2,
          label=f"{fit.kind} fit: SRCC {_fmt(corr['srcc'])}, PLCC {_fmt(corr['plcc'])}")
  if fit.message:
    title = f"{title}\n({fit.message})"
  ax.set(xlabel="predicted score", ylabel="MOS", title=title)
  ax.grid(alpha=0.3)
  ax.legend(loc="upper left")
  return _save(fig, path)


def flip_rate_plot(flip_rate: Mapping[str, float | None], path: str,
                   ties: Mapping[str, float | None] | None = None,
                   title: str = "Flip rate vs CRF difference") -> Plot:
  """Bars of flip rate (lower is better) per CRF difference, from metrics.flip_rate's
  `flip_rate` dict ({'2': 0.12, ..., 'overall': 0.08}); `ties` (its `flip_ties`) adds a
  second bar per difference. 'overall' is a dashed line; a difference without pairs is
  marked 'no pairs'."""
  keys = [k for k in flip_rate if k != "overall"]
  x = np.arange(len(keys))  # evenly spaced: d = 20 would leave a wide gap after d = 10
  series = [("flip rate (ties count 1/2)", flip_rate)]
  if ties is not None:
    series.append(("tied pairs", ties))
  width = 0.8 / len(series)
  fig = _figure()
  ax = fig.add_subplot()
  for i, (label, values) in enumerate(series):
    heights = np.array([np.nan if values[k] is None else values[k] for k in keys], np.float64)
    bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, np.nan_to_num(heights), width,
                  label=label, color=f"C{i}", hatch="//" if i else None)
    ax.bar_label(bars, labels=["" if np.isnan(h) else f"{h:.3f}" for h in heights],
                 fontsize=8, padding=2)
  for xi, k in zip(x, keys):
    if flip_rate[k] is None:
      ax.text(xi, 0.01, "no pairs", rotation=90, ha="center", va="bottom", color="gray",
              transform=ax.get_xaxis_transform())
  if flip_rate.get("overall") is not None:
    ax.axhline(flip_rate["overall"], color="k", ls="--", lw=1,
               label=f"overall {flip_rate['overall']:.3f}")
  ax.set_xticks(x, keys)
  ax.set(xlabel="CRF difference d", ylabel="fraction of pairs", title=title)
  top = max((v for _, values in series for v in values.values() if v is not None), default=0)
  ax.set_ylim(0, max(0.05, 1.15 * top))  # room for the bar labels
  ax.grid(axis="y", alpha=0.3)
  ax.legend(loc="best")
  return _save(fig, path)


def training_curves(rows, keys, path: str, title: str = "Training curves",
                    window: int = 10) -> Plot:
  """Each of `keys` against 'step' over rows (dicts, e.g. metrics.jsonl lines; rows without
  the key are skipped), raw and as a trailing moving average over `window` steps."""
  fig = _figure()
  ax = fig.add_subplot()
  for i, key in enumerate(keys):
    points = sorted((r["step"], r[key]) for r in rows if r.get(key) is not None)
    if not points:
      continue
    steps, values = (np.array(v, np.float64) for v in zip(*points))
    smooth = np.array([values[max(0, j - window + 1):j + 1].mean()
                       for j in range(len(values))])
    ax.plot(steps, values, color=f"C{i}", lw=0.8, alpha=0.3)
    ax.plot(steps, smooth, color=f"C{i}", lw=2, label=key)
  ax.set(xlabel="step", title=f"{title} (lines: {window}-step mean)")
  ax.grid(alpha=0.3)
  ax.legend(loc="best", fontsize="small")
  return _save(fig, path)


def _figure() -> Figure:
  return Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")


def _save(fig: Figure, path: str) -> Plot:
  image = figure_to_array(fig)
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=DPI)
  out = epath.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_bytes(buffer.getvalue())
  return Plot(str(path), image)


def _fmt(value: float | None) -> str:
  return "n/a" if value is None else f"{value:.3f}"
