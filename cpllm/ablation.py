"""The demo's ablation table (the paper's Table 4): `python -m cpllm.ablation`.

Trains every configs/demo_ablation.py row that has not finished into <workdir>/<name>
(an interrupted row resumes), then writes the table of the last evaluations as
<workdir>/table.md and table.csv and prints it. `--rows=single,mix` limits the rows.
"""

from __future__ import annotations

import csv
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags
from absl import logging

from cpllm import configs
from cpllm.evals import evaluator
from cpllm.train import trainer

CONFIG = "configs/demo_ablation.py"
COLUMNS = ("srcc", "plcc", "krcc", "rmse", "flip_rate 2", "flip_rate 4", "flip_rate 10",
           "flip_rate 20", "text_level_accuracy")


def row_values(metrics: dict) -> dict[str, float | None]:
  """The table's columns of one evaluation ('flip_rate 4' reads metrics['flip_rate']['4'])."""
  values = {}
  for column in COLUMNS:
    key, _, difference = column.partition(" ")
    value = metrics.get(key)
    values[column] = value.get(difference) if difference else value
  return values


def markdown(rows: dict[str, dict]) -> str:
  fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
  lines = ["| run | step | " + " | ".join(COLUMNS) + " |",
           "|---" * (len(COLUMNS) + 2) + "|"]
  for name, metrics in rows.items():
    values = row_values(metrics)
    lines.append(f"| {name} | {metrics.get('step')} | "
                 + " | ".join(fmt(values[c]) for c in COLUMNS) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  names = flags.FLAGS.rows or list(configs.load_module(CONFIG).ABLATIONS)
  results = {}
  for name in names:
    config = configs.load(f"{CONFIG}:{name}")
    config.data.data_dir = flags.FLAGS.data_dir
    workdir = os.path.join(flags.FLAGS.workdir, name)
    done = evaluator.load_metrics(workdir, config.total_steps)
    if done is None:
      print(f"\n=== {name}: python -m cpllm.main --config={CONFIG}:{name} "
            f"--workdir={workdir}", flush=True)
      start = time.perf_counter()
      done = trainer.main(config, workdir)
      print(f"=== {name}: {time.perf_counter() - start:.0f}s", flush=True)
    results[name] = done
  table = markdown(results)
  os.makedirs(flags.FLAGS.workdir, exist_ok=True)
  with open(os.path.join(flags.FLAGS.workdir, "table.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(flags.FLAGS.workdir, "table.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(("run", "step") + COLUMNS)
    for name, metrics in results.items():
      writer.writerow([name, metrics.get("step")] + list(row_values(metrics).values()))
  print("\n" + table)


def define_flags():
  """The command line's flags (defined on use: importing this module adds none)."""
  flags.DEFINE_string("workdir", "runs/ablation", "One sub-directory per row.")
  flags.DEFINE_string("data_dir", "runs/data", "Where demo_videos is built.")
  flags.DEFINE_list("rows", None, "Rows to run (default: all of configs/demo_ablation.py).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
