"""Input pipeline throughput against the train step: `python -m bench.run pipeline [--quick]`.

examples/s of the demo's grain training pipeline (pipeline.train_dataset: shuffle, pair
planning, PNG decode of both videos' key frames, preprocessing for both encoders,
tokenisation, batching; prefetch in 0, 1 or 2 worker processes) over the demo_videos
dataset in runs/data (built with the demo's own builder when absent), against the examples/s
the demo's train step consumes (its batch / its median step time, measured in the same
process on a synthetic batch). ratio_to_train = pipeline examples/s with the demo's
num_workers / train-step examples/s; >= 1.5 means the pipeline keeps ahead.

Measured apart, the two overstate what runs together: on 2 cores the workers and the step
share the CPU. So the demo's train loop, run as trainer.main runs it (steps dispatched
asynchronously, the next batch fetched while a step computes; after FED_WARMUP_STEPS),
is also timed fed by the pipeline (its configured workers, and with none) and fed one
fixed batch: `loop_slowdown` = fed / fixed loop step time (1 = the pipeline costs the step
nothing). The fed loop with the demo's workers is timed twice: with the pipeline's read-ahead
(pipeline.READ_AHEAD) and with grain's default (500 batches on 16 threads per process).
"""

from __future__ import annotations

import os
import time

import grain
import jax

from absl import flags

from bench import common
from bench import workloads
from cpllm.data import pipeline
from cpllm.data import tokenizer as tokenizer_lib


def demo_data(config) -> str:
  """The demo_videos build directory's data_dir, built by the demo's stage when absent."""
  data_dir = os.path.join(common.REPO_ROOT, config.data.data_dir)
  try:
    pipeline.dataset_dir(config.data.name, data_dir)
  except FileNotFoundError:
    from cpllm import demo  # the demo's data stage: `tfds build data_builders/demo_videos`
    demo.build_data(data_dir)
  return data_dir


def make_iterator(config, data_dir: str, num_workers: int,
                  read_ahead: grain.ReadOptions = pipeline.READ_AHEAD):
  tokenizer = tokenizer_lib.Tokenizer(pipeline.dataset_tokenizer(config.data.name, data_dir))
  records, meta = pipeline.open_split(config.data.name, config.data.train_split, data_dir)
  return iter(pipeline.train_dataset(
      records, meta, tokenizer, model_config=config.model, num_frames=config.num_frames,
      text_len=config.text_len, batch_size=config.batch_size, seed=config.seed,
      mix=pipeline.Mix(**config.data.mix), level_rate=config.data.level_rate,
      reason_rate=config.data.get("reason_rate", 0.0), num_workers=num_workers,
      read_ahead=read_ahead))


def warm_batches(num_workers: int) -> int:
  """Batches to discard before timing: the read-ahead buffer (batches taken right after a
  pause come from it, not from the work), and each worker process starting Python,
  importing JAX and compiling the preprocessing on its first batch."""
  return pipeline.READ_AHEAD.prefetch_buffer_size + 2 * max(num_workers, 1)


def pipeline_rate(config, data_dir: str, num_workers: int, batches: int) -> dict:
  """examples/s over `batches` batches after the warm-up batches (worker start-up)."""
  iterator = make_iterator(config, data_dir, num_workers)
  try:
    start = time.perf_counter()
    next(iterator)
    first_s = time.perf_counter() - start
    for _ in range(warm_batches(num_workers) - 1):
      next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
      next(iterator)
    seconds = time.perf_counter() - start
  finally:
    if hasattr(iterator, "close"):
      iterator.close()
  return dict(num_workers=num_workers, batches=batches, first_batch_s=first_s,
              seconds=seconds, examples_per_s=batches * config.batch_size / seconds)


# Right after start the workers import JAX, compile their preprocessing and then fill their
# read-ahead buffers as fast as they can, taking both cores from the step; a long run sees
# that once. Timing begins after as many steps as the demo logs at once (25).
FED_WARMUP_STEPS = 25


def fed_loop_step_s(config, data_dir: str, loop_step_s, steps: int, workers: int,
                    read_ahead: grain.ReadOptions = pipeline.READ_AHEAD) -> float:
  """Step time of the train loop fed by the pipeline, after FED_WARMUP_STEPS."""
  iterator = make_iterator(config, data_dir, workers, read_ahead)
  try:
    loop_step_s(lambda: next(iterator), FED_WARMUP_STEPS)
    return loop_step_s(lambda: next(iterator), steps)
  finally:
    if hasattr(iterator, "close"):
      iterator.close()


def train_loop(config, data_dir: str, steps: int, fed_workers=()) -> dict:
  """The demo's step alone (median of `steps` calls, each waited for: the rate the step
  consumes examples) and run as trainer.main runs it: `steps` steps dispatched without
  waiting, so each next batch is fetched while the previous step computes (JAX's
  asynchronous dispatch), on one fixed batch and fed by the pipeline with each of
  `fed_workers` workers. A loop's step time = its wall time / steps."""
  state, setup = workloads.train_state(config)
  batch = workloads.synthetic_batch(config)
  step = workloads.train_step(setup, config).lower(
      state, workloads.float_batch(batch)).compile()
  holder = [state]

  def call(get_batch):
    holder[0], metrics = step(holder[0], workloads.float_batch(get_batch()))
    return metrics["loss"]

  def loop_step_s(get_batch, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
      loss = call(get_batch)
    jax.block_until_ready(loss)
    return (time.perf_counter() - start) / n

  fixed = common.time_call(lambda: call(lambda: batch), warmup=1, repeats=steps)
  loop_fixed = loop_step_s(lambda: batch, steps)
  out = dict(fixed_step_s=fixed["median"], loop_fixed_step_s=loop_fixed,
             train_examples_per_s=config.batch_size / fixed["median"], fed={})
  for workers in fed_workers:
    fed = fed_loop_step_s(config, data_dir, loop_step_s, steps, workers)
    out["fed"][workers] = dict(step_s=fed, slowdown=fed / loop_fixed)
  if fed_workers:  # the demo's workers with grain's default read-ahead, for comparison
    workers = config.data.num_workers
    fed = fed_loop_step_s(config, data_dir, loop_step_s, steps, workers, grain.ReadOptions())
    out["grain_default"] = dict(num_workers=workers, step_s=fed, slowdown=fed / loop_fixed)
  return out


def run(quick: bool = False) -> dict:
  if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
    flags.FLAGS.mark_as_parsed()
  config = workloads.load("configs/demo.py")
  data_dir = demo_data(config)
  batches = 4 if quick else 12
  # Quick mode measures the demo's own setting only (each setting pays a start-up).
  workers = (config.data.num_workers,) if quick else (0, 1, 2)
  rows = [pipeline_rate(config, data_dir, w, batches) for w in workers]
  # Quick mode times the step alone; the full run also feeds it (0 and the demo's workers).
  loop = train_loop(config, data_dir, steps=3 if quick else 25,
                    fed_workers=() if quick else sorted({0, config.data.num_workers}))
  for row in rows:
    row["ratio_to_train"] = row["examples_per_s"] / loop["train_examples_per_s"]
    fed = loop["fed"].get(row["num_workers"])
    row["fed_step_s"], row["loop_slowdown"] = (fed["step_s"], fed["slowdown"]) if fed else (
        None, None)
  configured = next(r for r in rows if r["num_workers"] == config.data.num_workers)
  print(f"demo train step: {loop['train_examples_per_s']:.1f} examples/s (batch "
        f"{config.batch_size}, {loop['fixed_step_s']:.3f} s/step on a fixed batch)")
  print(common.markdown_table(rows, ["num_workers", "examples_per_s", "ratio_to_train",
                                     "first_batch_s", "fed_step_s", "loop_slowdown"],
                              ["workers", "examples/s", "ratio to train step",
                               "first batch s", "step s fed by it", "fed / fixed step"]))
  result = dict(ratio_to_train=configured["ratio_to_train"],
                num_workers=config.data.num_workers, batch_size=config.batch_size,
                rows=rows, fixed_step_s=loop["fixed_step_s"],
                loop_fixed_step_s=loop["loop_fixed_step_s"],
                train_examples_per_s=loop["train_examples_per_s"],
                read_ahead=dict(num_threads=pipeline.READ_AHEAD.num_threads,
                                prefetch_buffer_size=pipeline.READ_AHEAD.prefetch_buffer_size),
                grain_default=loop.get("grain_default") and dict(
                    loop["grain_default"], num_threads=grain.ReadOptions().num_threads,
                    prefetch_buffer_size=grain.ReadOptions().prefetch_buffer_size))
  common.write_result("pipeline", result, quick=quick)
  return result

