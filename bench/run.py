"""Runs the benchmarks: `python -m bench.run [--quick] [name ...]` (`make bench`,
`make bench-quick`), then rewrites the numbers in BENCHMARKS.md from the result files.

Each benchmark prints its table and writes bench/results/<name>.json; --quick takes fewer
repeats and smaller sweeps (about 3.5 minutes on a 2-core CPU). Order matters a little:
score_only projects the paper config at train_step's measured MFU.
"""

from __future__ import annotations

import argparse
import importlib
import os
import tempfile
import time

# TensorFlow (imported by TFDS for the pipeline benchmark) logs a banner at import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NAMES = ("train_step", "decode", "score_only", "pipeline", "memory", "scaling", "score_speed")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller sweeps")
  parser.add_argument("--no-report", action="store_true",
                      help="leave BENCHMARKS.md as it is")
  parser.add_argument("names", nargs="*", help=f"a subset of {', '.join(NAMES)} (default: all)")
  args = parser.parse_args(argv)
  unknown = sorted(set(args.names) - set(NAMES))
  if unknown:
    parser.error(f"unknown benchmarks {unknown}; choose from {', '.join(NAMES)}")
  names = args.names or NAMES
  # Benchmarks compile some of the same programs (the demo's train step, its state's
  # initialisation): a compilation cache private to this run compiles each once.
  import jax
  cache = tempfile.TemporaryDirectory(prefix="bench-xla-cache-")
  jax.config.update("jax_compilation_cache_dir", cache.name)
  timings = {}
  for name in names:
    print(f"\n== {name}{' (quick)' if args.quick else ''}", flush=True)
    start = time.perf_counter()
    importlib.import_module(f"bench.{name}").run(quick=args.quick)
    timings[name] = time.perf_counter() - start
    print(f"({name}: {timings[name]:.0f}s)", flush=True)
  print("\n" + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
        + f"; total {sum(timings.values()):.0f}s")
  if not args.no_report:
    from bench import report
    report.main()


if __name__ == "__main__":
  main()
