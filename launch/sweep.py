"""Sweeps: one run per override dict a config's `sweep()` yields, then one table of them all.

  python -m launch.sweep --config=configs/demo.py --workdir=runs/sweep [--config.key=value ...]
  python -m launch.sweep --config=configs/paper.py --workdir=gs://B/sweeps/paper --tpu \
      --name=cpllm --zone=us-west4-a --config.data.data_dir=gs://B/tfds [...]
  python -m launch.sweep --config=configs/demo.py --workdir=runs/sweep --table-only

Each run trains into <workdir>/<run name>, the name spelling its overrides
(`lr=0.0003,loss_weights.pair=0.0`; `base` for an empty dict). Locally the runs go one
after another, each its own `python -m cpllm.main` process, skipping finished ones; with
`--tpu` each run is `launch.tpu run --foreground` on the pod (every worker), one after
another. `--config.key=value` arguments apply to every run; the sweep's own overrides come
after them, so they win. A failed run does not stop the others. At the end, every run's
last evaluation goes into <workdir>/table.md and table.csv (also with `--table-only`, e.g.
while runs go on elsewhere). `--dry-run` prints the commands and runs nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import sys
from typing import Any, Sequence

from absl import flags
from etils import epath
from ml_collections import config_flags

from cpllm import configs
from cpllm.evals import tables
from launch import tpu

TRAIN = (sys.executable, "-m", "cpllm.main")  # the local training command


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  overrides: dict[str, Any]


def run_name(overrides: dict[str, Any]) -> str:
  """`key=value,...` with only characters that are safe in paths and shells unquoted."""
  name = ",".join(f"{key}={value}" for key, value in overrides.items())
  return re.sub(r"[^\w.=,+-]", "", name) or "base"


def runs(config: str) -> list[Run]:
  """The runs of `configs/<x>.py[:arg]`'s sweep(), in its order."""
  path = config.partition(":")[0]
  module = configs.load_module(path)
  if not hasattr(module, "sweep"):
    raise ValueError(f"{path} has no sweep() function")
  result = [Run(run_name(overrides), dict(overrides)) for overrides in module.sweep()]
  names = [run.name for run in result]
  if len(set(names)) != len(names):
    raise ValueError(f"{path}: sweep() yields runs with the same name: {names}")
  return result


def flag_args(overrides: dict[str, Any]) -> list[str]:
  return [f"--config.{key}={value}" for key, value in overrides.items()]


def load(config: str, args: Sequence[str]) -> Any:
  """The config cpllm.main builds from `--config=config *args` (the same flag parser), so a
  misspelt key fails here, before anything trains."""
  argv = ["sweep", f"--config={config}", *args]
  values = flags.FlagValues()
  # sys_argv: which overrides become flags (by default read from this process's sys.argv).
  config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


def final_metrics(workdir: str) -> dict:
  """The metrics of the run's last evaluation ({} before its first)."""
  eval_dir = epath.Path(workdir) / "eval"
  steps = [int(p.name) for p in eval_dir.iterdir()
           if p.name.isdigit() and (p / "metrics.json").exists()] if eval_dir.exists() else []
  return json.loads((eval_dir / str(max(steps)) / "metrics.json").read_text()) if steps else {}


def local_commands(config: str, workdir: str, sweep: list[Run], extra: Sequence[str] = (),
                   program: Sequence[str] | None = None) -> dict[str, list[str] | None]:
  """Run name -> its training command; None for a run whose last step is evaluated."""
  commands = {}
  for run in sweep:
    args = [*extra, *flag_args(run.overrides)]
    run_dir = os.path.join(workdir, run.name)
    done = final_metrics(run_dir).get("step") == load(config, args).total_steps
    commands[run.name] = None if done else [*(program or TRAIN), f"--config={config}",
                                            f"--workdir={run_dir}", *args]
  return commands


def tpu_commands(pod: tpu.Pod, config: str, workdir: str, sweep: list[Run],
                 extra: Sequence[str] = ()) -> dict[str, list[str]]:
  """Run name -> the command running it on every worker of `pod`, in the foreground."""
  commands = {}
  for run in sweep:
    args = (*extra, *flag_args(run.overrides))
    load(config, args)  # a misspelt key fails here rather than on the pod
    commands[run.name] = tpu.run(pod, config, os.path.join(workdir, run.name), args,
                                 log=f"cpllm_{run.name}.log", foreground=True)
  return commands


def collect(workdir: str, sweep: list[Run]) -> str:
  """Writes <workdir>/table.md and table.csv from every run's last evaluation."""
  results = {run.name: final_metrics(os.path.join(workdir, run.name)) for run in sweep}
  return tables.write_tables(workdir, results, {run.name: run.overrides for run in sweep})


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m launch.sweep", allow_abbrev=False,
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True, help="configs/<name>.py[:arg] with sweep()")
  parser.add_argument("--workdir", required=True, help="One sub-directory per run.")
  parser.add_argument("--dry-run", action="store_true", help="Print the commands only.")
  parser.add_argument("--table-only", action="store_true", help="Only collect the table.")
  parser.add_argument("--tpu", action="store_true", help="Run each on the pod --name.")
  tpu.add_pod_flags(parser, required=False)
  args, extra = parser.parse_known_args(argv)
  extra = tpu.config_overrides(extra, parser)
  sweep = runs(args.config)
  failed = []
  if not args.table_only:
    if args.tpu:
      if not (args.name and args.zone):
        parser.error("--tpu needs --name and --zone")
      commands = tpu_commands(tpu.pod_from_flags(args), args.config, args.workdir, sweep, extra)
    else:
      commands = local_commands(args.config, args.workdir, sweep, extra)
    for name, command in commands.items():
      if command is None:
        print(f"=== {name}: finished", flush=True)
        continue
      print(f"=== {name}: {shlex.join(command)}", flush=True)
      if not args.dry_run and tpu.call(command):
        failed.append(name)
    if args.dry_run:
      return
  print("\n" + collect(args.workdir, sweep))
  if failed:
    sys.exit(f"failed runs: {', '.join(failed)}")


if __name__ == "__main__":
  main()
