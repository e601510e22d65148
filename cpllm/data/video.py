"""Frame preprocessing for both CP-LLM paths, shared by the pipeline, scoring and export.

Everything here is a pure JAX function of a frame array whose height and width are static,
so it runs on NumPy input, under jit, and inside a jax2tf export alike. Pixel values stay
in [0, 255] (float32); the model maps them to [-1, 1].

Context path: bilinear resize to R x R ignoring aspect.
Pixel path: aspect-preserving bilinear fit into a 540 x 1080 box (the box turns with a
portrait frame), then K non-overlapping P x P patches on a uniform grid. Example for a
1080 x 1920 frame, K = 8, P = 224: fit to 540 x 960, grid 2 x 4, rows start at y = 0, 316
and columns at x = 0, 245, 490, 736 (first and last patch touch the frame edges, equal gaps
in between). A frame too small for the grid is upscaled just enough; it is never padded.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def resize_bilinear(frames, height: int, width: int):
  """float32[..., H, W, 3] or uint8 -> float32[..., height, width, 3] (antialiased)."""
  frames = jnp.asarray(frames, jnp.float32)
  shape = frames.shape[:-3] + (height, width, frames.shape[-1])
  return jax.image.resize(frames, shape, method="bilinear", antialias=True)


def context_frames(frames, resolution: int):
  """Context-encoder input: [..., H, W, 3] -> float32[..., R, R, 3], aspect ignored."""
  return resize_bilinear(frames, resolution, resolution)


def fit_size(height: int, width: int, box: tuple[int, int] = (540, 1080)):
  """Size of a frame scaled (up or down) to fit the box, aspect preserved.

  `box` is (short, long): a landscape frame fits in short x long, a portrait one in
  long x short. >>> fit_size(1080, 1920) == (540, 960); fit_size(1920, 1080) == (960, 540)
  """
  short, long = box
  box_h, box_w = (short, long) if width >= height else (long, short)
  scale = min(box_h / height, box_w / width)
  return max(1, round(height * scale)), max(1, round(width * scale))


def patch_grid(height: int, width: int, num_patches: int, patch_size: int):
  """(rows, cols) with rows * cols = K for a frame of this size.

  Prefers a grid that fits without upscaling; among those (or if none fits, among the
  least-upscaling ones) the grid whose shape is closest to the frame's aspect.
  """
  candidates = []
  for rows in range(1, num_patches + 1):
    if num_patches % rows:
      continue
    cols = num_patches // rows
    upscale = max(rows * patch_size / height, cols * patch_size / width, 1.0)
    aspect_gap = abs(math.log((rows / cols) / (height / width)))
    candidates.append((round(upscale, 6), aspect_gap, rows, cols))
  _, _, rows, cols = min(candidates)
  return rows, cols


def _starts(length: int, count: int, patch_size: int):
  """Top-left offsets of `count` patches spread uniformly over `length` (no overlap)."""
  if count == 1:
    return [(length - patch_size) // 2]
  gap = length - count * patch_size
  return [i * patch_size + (i * gap) // (count - 1) for i in range(count)]


def patch_layout(height: int, width: int, num_patches: int, patch_size: int,
                 box: tuple[int, int] = (540, 1080)):
  """Resized frame size and the K patch corners for a source frame of height x width.

  Returns ((H', W'), [(y, x), ...]) with every patch inside [0, H') x [0, W').
  """
  fit_h, fit_w = fit_size(height, width, box)
  rows, cols = patch_grid(fit_h, fit_w, num_patches, patch_size)
  scale = max(rows * patch_size / fit_h, cols * patch_size / fit_w, 1.0)
  new_h = max(math.ceil(fit_h * scale - 1e-9), rows * patch_size)
  new_w = max(math.ceil(fit_w * scale - 1e-9), cols * patch_size)
  corners = [(y, x) for y in _starts(new_h, rows, patch_size)
             for x in _starts(new_w, cols, patch_size)]
  return (new_h, new_w), corners


def pixel_patches(frames, num_patches: int, patch_size: int,
                  box: tuple[int, int] = (540, 1080)):
  """Pixel-encoder input: [..., H, W, 3] -> float32[..., K, P, P, 3]."""
  (new_h, new_w), corners = patch_layout(frames.shape[-3], frames.shape[-2], num_patches,
                                         patch_size, box)
  resized = resize_bilinear(frames, new_h, new_w)
  patches = [resized[..., y:y + patch_size, x:x + patch_size, :] for y, x in corners]
  return jnp.stack(patches, axis=-4)
