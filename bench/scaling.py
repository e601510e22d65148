"""How the demo's train-step time grows with key frames M, patches K and text length:
`python -m bench.run scaling [--quick]`.

One sweep per knob, the others at configs/demo.py's values (M = 4, K = 12, L = 208, batch
16); each point is the project's train step compiled for that batch shape (the parameters
do not depend on M, K or L, so one state serves every point) and timed by the median of
repeats. Per curve, `exponent` is the least-squares slope of log(time) on log(knob):
1 = time proportional to the knob, 0 = independent of it. Writes bench/results/scaling.json
and one PNG per curve (scaling_M.png, scaling_K.png, scaling_text_len.png). --quick: the
smaller point of each sweep and the demo's own.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from bench import workloads  # noqa: E402

SWEEPS = {"M": (1, 2, 5, 8), "K": (2, 4, 8), "text_len": (128, 256, 512)}
# Quick: one point per knob and the demo's own (M 4, K 12, L 208), whose step train_step
# has already compiled (bench.run's compilation cache): 3 compilations instead of 10.
QUICK_SWEEPS = {"M": (1, 4), "K": (2, 12), "text_len": (128, 208)}


def point_config(base, knob: str, value: int):
  if knob == "M":
    return workloads.load("configs/demo.py", num_frames=value)
  if knob == "K":
    return workloads.with_model(base, num_patches=value)
  return workloads.load("configs/demo.py", text_len=value)


def log_slope(x, y) -> float:
  """Least-squares slope of log(y) on log(x): the growth exponent."""
  return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def plot(knob: str, points, path: str) -> None:
  fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
  x = [p["value"] for p in points]
  y = [p["step_s"] for p in points]
  ax.plot(x, y, "o-", label="measured")
  ax.plot(x, [y[0] * v / x[0] for v in x], "--", color="gray", label="proportional")
  ax.set_xlabel({"M": "key frames M", "K": "patches K", "text_len": "text length L"}[knob])
  ax.set_ylabel("train step (s, median)")
  ax.set_title(f"demo train step vs {knob}")
  ax.set_xticks(x)
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def run(quick: bool = False) -> dict:
  base = workloads.load("configs/demo.py")
  state, setup = workloads.train_state(base)
  step = workloads.train_step(setup, base)
  holder = [state]
  sweeps = QUICK_SWEEPS if quick else SWEEPS
  curves, timed = {}, {}
  for knob, values in sweeps.items():
    points = []
    for value in values:
      config = point_config(base, knob, value)
      shape = (config.num_frames, config.model["num_patches"], config.text_len)
      if shape in timed:  # the demo's own point, in every quick sweep
        points.append(dict(timed[shape], value=value))
        continue
      batch = workloads.float_batch(workloads.synthetic_batch(config))
      compiled = step.lower(holder[0], batch).compile()

      def call():
        holder[0], metrics = compiled(holder[0], batch)
        return metrics["loss"]

      timing = common.time_call(call, warmup=1, repeats=2 if quick else 5)
      timed[shape] = dict(value=value, step_s=timing["median"], times=timing["times"],
                          decoder_seq=workloads.sequence_lengths(config.model,
                                                                 config.text_len)["S"])
      points.append(timed[shape])
    path = os.path.join(common.RESULTS_DIR, f"scaling_{knob}.png")
    os.makedirs(common.RESULTS_DIR, exist_ok=True)
    plot(knob, points, path)
    curves[knob] = dict(points=points, exponent=log_slope(
        [p["value"] for p in points], [p["step_s"] for p in points]),
        plot=os.path.relpath(path, common.REPO_ROOT))
  rows = [dict(knob=k, value=p["value"], step_s=p["step_s"],
               relative=p["step_s"] / c["points"][0]["step_s"], exponent=c["exponent"])
          for k, c in curves.items() for p in c["points"]]
  print(common.markdown_table(rows, ["knob", "value", "step_s", "relative", "exponent"],
                              ["knob", "value", "step s (median)", "vs first point",
                               "growth exponent"]))
  result = dict(exponent={k: c["exponent"] for k, c in curves.items()}, curves=curves)
  common.write_result("scaling", result, quick=quick)
  return result

