"""The smallest end-to-end forward pass: `python -m cpllm.smoke` (what `make demo` runs
until the trained demo exists).

It makes a short synthetic clip and a copy blurred by a box filter, preprocesses both
with the shared functions of cpllm.data.video, runs the UNTRAINED tiny CP-LLM on them as
a pair, and greedily decodes a few tokens through the KV cache. The numbers mean nothing
yet; the point is that every stage runs and its shapes are printed.
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import numpy as np

from cpllm import configs
from cpllm.data import video
from cpllm.models import cpllm
from cpllm.models import sampler


def synthetic_clip(num_frames: int, height: int = 72, width: int = 128):
  """uint8[T, H, W, 3]: a textured pattern panning right by 2 pixels per frame."""
  y, x = np.mgrid[:height, :width + 2 * num_frames]
  canvas = np.stack([128 + 100 * np.sin(x / 5.0), 128 + 100 * np.cos(y / 7.0),
                     (x * y) % 256], axis=-1)
  return np.stack([canvas[:, 2 * t:2 * t + width] for t in range(num_frames)]).astype(np.uint8)


def box_blur(frames, radius: int = 2):
  padded = np.pad(frames.astype(np.float32), ((0, 0), (radius, radius), (radius, radius),
                                              (0, 0)), mode="edge")
  size = 2 * radius + 1
  out = sum(padded[:, i:i + frames.shape[1], j:j + frames.shape[2]]
            for i in range(size) for j in range(size)) / size**2
  return out.astype(np.uint8)


def main():
  start = time.time()
  config = configs.load("configs/tiny.py")
  model_cfg = config.model
  m = config.num_frames
  print("cpllm smoke run: untrained tiny CP-LLM, forward pass only (the trained demo "
        "comes with the trainer).")

  clip = synthetic_clip(12)
  pristine, blurred = clip, box_blur(clip)
  picks = video.segment_centres(len(clip), m)
  frames = np.stack([pristine[picks], blurred[picks]])  # [V=2, M, H, W, 3]
  ctx = video.context_frames(frames, model_cfg["ctx_res"])
  patches = video.pixel_patches(frames, model_cfg["num_patches"], model_cfg["patch_size"],
                                video.pix_box(model_cfg))
  print(f"  key frames {frames.shape} -> context {ctx.shape}, patches {patches.shape}")

  text_len = config.text_len
  prompt_len = 6
  batch = dict(ctx=ctx[None], patches=patches[None], video_mask=np.ones((1, 2), bool),
               text=np.arange(text_len, dtype=np.int32)[None] % 200 + 20,
               input_mask=np.arange(text_len)[None] < prompt_len,
               mask_ar=np.zeros((1, text_len), np.int32))
  model = cpllm.CPLLM(**model_cfg)
  variables = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), batch))
  n_params = sum(x.size for x in jax.tree.leaves(variables))
  out = jax.jit(model.apply)(variables, batch)
  print(f"  parameters: {n_params:,}")
  for key, value in out.items():
    print(f"  out[{key!r}]: {value.dtype}{list(value.shape)}")
  pristine_score, blurred_score = (float(s) for s in out["score"][0])
  print(f"  scores: pristine {pristine_score:.4f}, blurred {blurred_score:.4f}")
  print(f"  level-token score: {float(out['level_score'][0]):.3f} (1..5)")

  # Greedy continuation of the prompt through the KV cache.
  prompt = slice(0, prompt_len)
  x, input_mask, mask_ar = jax.jit(lambda *a: model.apply(
      variables, *a, method=model.decoder_inputs))(
          out["ctx_tokens"], out["pix_tokens"], batch["video_mask"],
          batch["text"][:, prompt], batch["input_mask"][:, prompt],
          batch["mask_ar"][:, prompt])
  tokens = sampler.make_generate(model, max_new_tokens=8, eos_id=-1)(
      variables, x, input_mask, mask_ar)["tokens"]
  print(f"  greedy tokens (KV cache): {np.asarray(tokens[0]).tolist()}")
  print(f"done in {time.time() - start:.1f}s")


if __name__ == "__main__":
  main()
