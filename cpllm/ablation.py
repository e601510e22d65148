"""The demo's ablation table (the paper's Table 4): `python -m cpllm.ablation`.

Trains every configs/demo_ablation.py row that has not finished into <workdir>/<name>
(an interrupted row resumes), then writes the table of the last evaluations as
<workdir>/table.md and table.csv and prints it. `--rows=single,mix` limits the rows.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags
from absl import logging

from cpllm import configs
from cpllm.evals import evaluator
from cpllm.evals import tables
from cpllm.train import trainer

CONFIG = "configs/demo_ablation.py"


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  names = flags.FLAGS.rows or list(configs.load_module(CONFIG).ABLATIONS)
  demo_data_dir = configs.load("configs/demo.py").data.data_dir
  results = {}
  for name in names:
    config = configs.load(f"{CONFIG}:{name}")
    if config.data.data_dir == demo_data_dir:
      config.data.data_dir = flags.FLAGS.data_dir  # rows with data of their own keep it
    workdir = os.path.join(flags.FLAGS.workdir, name)
    done = evaluator.load_metrics(workdir, config.total_steps)
    if done is None:
      print(f"\n=== {name}: python -m cpllm.main --config={CONFIG}:{name} "
            f"--workdir={workdir}", flush=True)
      start = time.perf_counter()
      done = trainer.main(config, workdir)
      print(f"=== {name}: {time.perf_counter() - start:.0f}s", flush=True)
    results[name] = done
  print("\n" + tables.write_tables(flags.FLAGS.workdir, results))


def define_flags():
  """The command line's flags (defined on use: importing this module adds none)."""
  flags.DEFINE_string("workdir", "runs/ablation", "One sub-directory per row.")
  flags.DEFINE_string("data_dir", "runs/data", "Where demo_videos is built.")
  flags.DEFINE_list("rows", None, "Rows to run (default: all of configs/demo_ablation.py).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
