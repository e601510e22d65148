"""Plots are readable PNGs and match the arrays returned for TensorBoard."""

import matplotlib.image
import numpy as np
import pytest

from cpllm.evals import metrics as M
from cpllm.evals import plots as P


def _check_png(plot, path):
  assert plot.path == str(path)
  data = path.read_bytes()
  assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
  png = matplotlib.image.imread(path)
  assert plot.image.dtype == np.uint8 and plot.image.shape == png.shape[:2] + (3,)
  assert plot.image.shape == (480, 640, 3)
  # The PNG holds the same pixels as the array (imread gives floats in [0, 1]).
  np.testing.assert_array_equal(np.round(png[..., :3] * 255).astype(np.uint8), plot.image)
  assert plot.image.std() > 10  # not a blank canvas


def test_scatter_with_logistic(tmp_path):
  rng = np.random.default_rng(0)
  pred = rng.normal(size=150)
  mos = M.logistic4(pred, 4.6, 1.3, 0.2, 0.6) + rng.normal(0, 0.2, 150)
  path = tmp_path / "eval" / "100" / "scatter.png"  # parent folders are created
  _check_png(P.scatter_with_logistic(pred, mos, str(path), title="demo"), path)


def test_scatter_with_constant_predictions(tmp_path):
  path = tmp_path / "flat.png"
  _check_png(P.scatter_with_logistic([2.0] * 5, [1.0, 2.0, 3.0, 4.0, 5.0], str(path)), path)


@pytest.mark.parametrize("with_ties", [False, True])
def test_flip_rate_plot(tmp_path, with_ties):
  crf = np.tile([20, 22, 24, 26, 30], 4)
  ids = np.repeat(list("abcd"), 5)
  pred = np.round(5 - 0.1 * crf + np.random.default_rng(1).normal(0, 0.3, 20), 1)
  fr = M.flip_rate(pred, ids, crf)
  assert fr["flip_rate"]["20"] is None  # drawn as 'no pairs'
  path = tmp_path / "flip.png"
  plot = P.flip_rate_plot(fr["flip_rate"], str(path), ties=fr["flip_ties"] if with_ties else None)
  _check_png(plot, path)


def test_figure_to_array():
  fig = P.Figure(figsize=(2, 1), dpi=50)
  fig.add_subplot().plot([0, 1], [0, 1])
  image = P.figure_to_array(fig)
  assert image.shape == (50, 100, 3) and image.dtype == np.uint8


def test_training_curves(tmp_path):
  rng = np.random.default_rng(2)
  rows = [dict(step=s, reward_total=0.8 + s / 300 + rng.normal(0, 0.1),
               parse_rate=0.5 + s / 600) for s in range(1, 151)]
  rows.insert(10, dict(step=10, eval_srcc=0.2))  # rows without the keys are skipped
  path = tmp_path / "rewards.png"
  _check_png(P.training_curves(rows, ("reward_total", "parse_rate", "absent"), str(path)),
             path)
