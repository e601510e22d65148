"""Train-step model FLOP utilisation: `python -m bench.run train_step [--quick]`.

MFU = (FLOPs of one step from XLA's cost analysis of the compiled step) / (median step
time) / (this machine's f32 matmul peak, a large jnp.dot timed in the same process).
Other processes share this machine's 2 cores, so each timed step is followed by a peak
measurement (best of 3 jnp.dot calls) and the MFU is the median over repeats of
step FLOP/s / adjacent peak: a load that changes during the run moves both alike.
The FLOPs come from the same step compiled with unrolled layer stacks, because XLA's
cost analysis counts a scanned loop's body once; the scanned step's own count is reported
beside it to show the difference. The timed step is the project's (trainer.make_train_step
on trainer.create_state), scanned as configured, on a synthetic batch of the pipeline's
shapes (no input pipeline in the loop: bench.pipeline measures that).
"""

from __future__ import annotations

import time

import jax
import numpy as np


from bench import common
from bench import workloads

CONFIGS = {"demo": "configs/demo.py", "bench": "configs/bench.py",
           "gemma3_270m": "configs/demo.py:gemma3"}  # frozen base, LoRA rank 4 (#16)


def measure(spec: str, *, repeats: int, quick: bool, overrides=None) -> dict:
  """One config's step: parameters, FLOPs, compile and step time, achieved FLOP/s, MFU.

  quick: FLOPs from the lowered (not compiled) unrolled step, which saves a compilation
  (the two counts agree within 1% on both configs).
  """
  config = workloads.load(spec, **(overrides or {}))
  state, setup = workloads.train_state(config)
  batch = workloads.float_batch(workloads.synthetic_batch(config))
  start = time.perf_counter()
  compiled = workloads.train_step(setup, config).lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  scanned_flops = common.cost(compiled)["flops"]
  flops = workloads.train_step_flops(config, compiled=not quick)
  holder = [state]

  def call():
    holder[0], metrics = compiled(holder[0], batch)  # the state is donated: keep the new one
    return metrics["loss"]

  jax.block_until_ready(call())  # warm-up
  times, peaks = [], []
  for _ in range(repeats):
    times.append(common.time_call(call, warmup=0, repeats=1)["median"])
    peaks.append(common.matmul_peak(repeats=3, warmup=0)["flops_per_s"])
  mfus = [flops / t / p for t, p in zip(times, peaks)]
  counts = workloads.param_counts(holder[0])
  lengths = workloads.sequence_lengths(config.model, config.text_len)
  return dict(config=spec, params=counts["total"], trainable=counts["trainable"],
              batch_size=config.batch_size, num_frames=config.num_frames,
              text_len=config.text_len, decoder_seq=lengths["S"], flops=flops,
              scanned_flops_as_counted=scanned_flops, compile_s=compile_s,
              step_s=float(np.median(times)), step_times=times, peaks=peaks,
              flops_per_s=flops / float(np.median(times)), peak_flops_per_s=max(peaks),
              mfu=float(np.median(mfus)), mfu_per_repeat=mfus)


def run(quick: bool = False) -> dict:
  repeats = 2 if quick else 7
  rows = {name: measure(spec, repeats=repeats, quick=quick)
          for name, spec in CONFIGS.items()}
  peak = common.matmul_peak(repeats=5)
  table = common.markdown_table(
      [dict(name=k, **v) for k, v in rows.items()],
      ["name", "params", "batch_size", "decoder_seq", "flops", "step_s", "flops_per_s",
       "peak_flops_per_s", "mfu"],
      ["config", "params", "batch", "decoder tokens", "FLOPs/step", "step s (median)",
       "FLOP/s", "peak FLOP/s", "MFU"])
  print(f"matmul peak at the end {peak['flops_per_s'] / 1e9:.1f} GFLOP/s (f32 "
        f"{peak['n']}^2 jnp.dot)")
  print(table)
  result = dict(mfu={k: v["mfu"] for k, v in rows.items()}, peak=peak, configs=rows)
  common.write_result("train_step", result, quick=quick)
  return result

