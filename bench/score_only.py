"""Score-only inference vs the full forward pass: `python -m bench.run score_only [--quick]`.

Score-only is `model.apply(..., decode=False)`: both encoders and the score head, no
decoder. The full forward adds the decoder over the visual tokens and the level prompt
(what cpllm.score's Scorer runs for a score and its level-token score). One video per
example, slot B masked, as the Scorer batches it.

demo: videos/s measured (median of repeats; the two passes alternate and the speed-up is
  the median of per-repeat ratios), FLOPs from XLA's cost analysis of the
  compiled unrolled model.
paper: shapes from configs/paper.py through jax.eval_shape (3B parameters, never
  materialised); FLOPs per video from XLA's cost analysis of the lowered unrolled
  model; videos/s projected at this machine's measured matmul peak (an upper bound: at
  100% MFU) and at the bench config's measured MFU when bench/results/train_step.json has
  it.
"""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bench import common
from bench import workloads
from cpllm.data import pipeline
from cpllm.models import cpllm

PROMPT = 8  # tokens of the level prompt with bos ("The quality of the video is")


def inference_batch(config, batch: int) -> dict:
  """uint8 frames of `batch` single-video examples and an all-prefix PROMPT-token text."""
  rng = np.random.default_rng(0)
  spec = pipeline.example_spec(config.model, config.num_frames, PROMPT, batch)
  return dict(ctx=rng.integers(0, 256, spec["ctx"].shape, np.uint8),
              patches=rng.integers(0, 256, spec["patches"].shape, np.uint8),
              video_mask=np.tile(np.array([[True, False]]), (batch, 1)),
              text=np.full((batch, PROMPT), 5, np.int32),
              input_mask=np.ones((batch, PROMPT), bool),
              mask_ar=np.zeros((batch, PROMPT), np.int32))


def forward_fns(model: cpllm.CPLLM):
  return {name: jax.jit(lambda v, b, decode=decode: model.apply(v, b, decode=decode))
          for name, decode in (("score_only", False), ("full", True))}


def flops(config, batch_spec, *, compiled: bool) -> dict:
  """FLOPs per batch of both forward passes, counted on the unrolled model."""
  model_config = common.unrolled(config.model)
  model = cpllm.CPLLM(**model_config)
  variables = jax.eval_shape(lambda b: nn.unbox(model.init(jax.random.PRNGKey(0), b)),
                             batch_spec)
  out = {}
  for name, fn in forward_fns(model).items():
    lowered = fn.lower(variables, batch_spec)
    out[name] = common.cost(lowered.compile() if compiled else lowered)["flops"]
  return out


def measure_demo(batch: int, repeats: int, quick: bool) -> dict:
  config = workloads.load("configs/demo.py")
  model = cpllm.CPLLM(**config.model)
  data = jax.tree.map(jnp.asarray, inference_batch(config, batch))
  variables = jax.jit(lambda: nn.unbox(model.init(jax.random.PRNGKey(0), data)))()
  row = dict(config="demo", batch=batch)
  # Alternate the two passes, repeat by repeat, so a load change hits both alike.
  fns = forward_fns(model)
  for fn in fns.values():
    jax.block_until_ready(fn(variables, data)["score"])
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      times[name].append(common.time_call(lambda: fn(variables, data)["score"], warmup=0,
                                          repeats=1)["median"])
  for name, values in times.items():
    row[f"{name}_s"] = float(np.median(values))
    row[f"{name}_videos_per_s"] = batch / row[f"{name}_s"]
  spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), data)
  counted = flops(config, spec, compiled=not quick)  # lowered: 2 compilations fewer
  for name, value in counted.items():
    row[f"{name}_flops_per_video"] = value / batch
  row["speedup"] = float(np.median([f / o for f, o in zip(times["full"],
                                                          times["score_only"])]))
  row["flops_ratio"] = counted["full"] / counted["score_only"]
  return row


def project_paper(peak: float, mfu: float | None) -> dict:
  config = workloads.load("configs/paper.py")
  spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                      inference_batch(config, 1))
  counted = flops(config, spec, compiled=False)
  row = dict(config="paper", batch=1, flops_ratio=counted["full"] / counted["score_only"])
  for name, value in counted.items():
    row[f"{name}_flops_per_video"] = value
    row[f"{name}_videos_per_s_at_peak"] = peak / value
    if mfu:
      row[f"{name}_videos_per_s"] = mfu * peak / value
  row["speedup"] = row["flops_ratio"]
  return row


def run(quick: bool = False) -> dict:
  demo = measure_demo(batch=8, repeats=3 if quick else 10, quick=quick)
  peak = common.matmul_peak(repeats=5)["flops_per_s"]
  train = common.read_result("train_step")
  mfu = train["mfu"].get("bench") if train else None
  paper = project_paper(peak, mfu)
  rows = [demo, paper]
  print(f"matmul peak {peak / 1e9:.1f} GFLOP/s; paper projected at MFU "
        f"{mfu if mfu is None else round(mfu, 3)} (bench config's train step)")
  print(common.markdown_table(rows, [
      "config", "score_only_flops_per_video", "full_flops_per_video", "flops_ratio",
      "score_only_videos_per_s", "full_videos_per_s", "speedup"], [
      "config", "score-only FLOPs/video", "full FLOPs/video", "FLOPs full/score",
      "score-only videos/s", "full videos/s", "score-only speedup"]))
  result = dict(rows=rows, peak_flops_per_s=peak, paper_projection_mfu=mfu,
                speedup={r["config"]: r["speedup"] for r in rows})
  common.write_result("score_only", result, quick=quick)
  return result

