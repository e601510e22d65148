"""A small convolutional pixel encoder on locally normalised luma (the demo's `pix`).

Why: a quality model must judge content it never saw. BRISQUE (Mittal et al., 2012) and
CNNIQA (Kang et al., CVPR 2014) generalise across content from a few dozen training images
because they look at mean-subtracted, contrast-normalised (MSCN) luminance through small
receptive fields: compression, blur and noise change those local statistics in much the
same way whatever the scene, while the scene itself is largely divided out. A from-scratch
ViT on raw RGB patches memorises the demo's 13 training photos instead (README, "Why the
demo does not reach the learning target"). configs/paper.py keeps the paper's ViT.

Input and output follow vit.ViT, so CPLLM can use either as its pixel encoder:

  images float32[B, H, W, 3] in [-1, 1]
    -> luma Y = 0.299 R + 0.587 G + 0.114 B on the 0..255 scale
    -> MSCN (Y - mu) / (sigma + 1), mu and sigma from a 7x7 Gaussian window, sigma 7/6
       (BRISQUE's), borders mirrored
    -> space-to-depth: each `space_to_depth` x `space_to_depth` block of MSCN values becomes
       one position's channels (no information lost; XLA's CPU convolutions at full
       resolution cost several times the rest of the demo's step)
    -> 3x3 convolutions with ReLU (`features`, `strides`)
    -> a `token_grid` x `token_grid` grid of cells, each pooled to its mean and standard
       deviation over space (float[2 * features[-1]])
    -> Dense to `width`: tokens float32[B, token_grid ** 2, width], row-major cells.

The standard deviation pooling keeps how much the local structure varies, which is what
blocking, ringing and noise change; mean pooling alone averages it away.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

STD_EPS = 1e-6  # in the standard deviation pooling; features are O(0.1..1)

VARIANTS: dict[str, dict[str, Any]] = {
    # 28k parameters, 1.5M multiply-adds per 32x32 patch, receptive field 16 pixels with
    # the MSCN window: a seventh of the compute of the CNN that ranked a real CRF ladder
    # with SRCC 0.87 in #15's experiment, as the demo runs it on 4 frames x 12 patches x 2
    # videos of every example (one training step: 0.28 s for the pixel path, 1.49 s with
    # 3x3 convolutions 16-32-32-64 at full resolution).
    "small": dict(space_to_depth=2, features=(32, 64), strides=(2, 1), width=64,
                  token_grid=2),
}

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as BRISQUE's reference code converts
MSCN_SIGMA = 7 / 6
MSCN_RADIUS = 3  # a 7 x 7 window
MSCN_C = 1.0


def gaussian_window(sigma: float = MSCN_SIGMA, radius: int = MSCN_RADIUS) -> np.ndarray:
  """Normalised 1-D Gaussian float64[2 * radius + 1]."""
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  w = np.exp(-0.5 * (x / sigma) ** 2)
  return w / w.sum()


def _blur(x, window):
  """Separable Gaussian of float[B, H, W] with mirrored borders (edge sample repeated)."""
  r = (len(window) - 1) // 2
  x = jnp.pad(x, ((0, 0), (r, r), (r, r)), mode="symmetric")
  w = jnp.asarray(window, x.dtype)
  h, wd = x.shape[1] - 2 * r, x.shape[2] - 2 * r
  x = sum(w[i] * x[:, i:i + h, :] for i in range(len(window)))
  return sum(w[i] * x[:, :, i:i + wd] for i in range(len(window)))


def mscn(luma, sigma: float = MSCN_SIGMA, c: float = MSCN_C):
  """MSCN coefficients float32[B, H, W] of luma float[B, H, W] on the 0..255 scale.

  e.g. a flat image gives all zeros; an edge gives large values on both of its sides.
  """
  luma = jnp.asarray(luma, jnp.float32)
  window = gaussian_window(sigma)
  mu = _blur(luma, window)
  var = jnp.abs(_blur(luma * luma, window) - mu * mu)  # abs: rounding can go below 0
  return (luma - mu) / (jnp.sqrt(var) + c)


class PatchCNN(nn.Module):
  """See the module docstring. Parameters: Conv_i/{kernel [3, 3, C_in, C_out], bias}
  (C_in of Conv_0: space_to_depth ** 2), tokens/{kernel [2 * features[-1], width], bias}."""
  features: tuple[int, ...]
  strides: tuple[int, ...]
  width: int
  space_to_depth: int = 1
  token_grid: int = 2
  # MSCN's constant (BRISQUE's 1 on 0..255 luma): below it, local contrast is damped, so
  # faint texture (a microscope's cells, fog) looks like smoothed texture.
  mscn_c: float = MSCN_C
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train=False):
    """float32[B, H, W, 3] in [-1, 1] -> (tokens float32[B, G * G, width], out dict).

    H and W must each hold `token_grid` cells of the final feature map.
    """
    del train  # no dropout or batch statistics
    if len(self.features) != len(self.strides):
      raise ValueError(f"features {self.features} and strides {self.strides} differ in "
                       "length")
    out = {}
    luma = (jnp.asarray(images, jnp.float32) + 1.0) * 127.5 @ jnp.asarray(LUMA)
    x = out["mscn"] = mscn(luma, c=self.mscn_c)[..., None].astype(self.dtype)
    s = self.space_to_depth
    b, h, w, _ = x.shape
    if h % s or w % s:
      raise ValueError(f"a {h}x{w} patch is not a multiple of space_to_depth={s}")
    x = x.reshape(b, h // s, s, w // s, s).transpose(0, 1, 3, 2, 4).reshape(
        b, h // s, w // s, s * s)
    for i, (feat, stride) in enumerate(zip(self.features, self.strides)):
      x = nn.relu(nn.Conv(feat, (3, 3), strides=(stride, stride), padding="SAME",
                          dtype=self.dtype, name=f"Conv_{i}",
                          kernel_init=nn.with_logical_partitioning(
                              nn.initializers.he_normal(), (None, None, None, None)))(x))
      out[f"conv{i}"] = x
    b, h, w, c = x.shape
    g = self.token_grid
    if h % g or w % g:
      raise ValueError(f"a {images.shape[1]}x{images.shape[2]} patch gives a {h}x{w} "
                       f"feature map, not divisible into a {g}x{g} token grid")
    cells = x.reshape(b, g, h // g, g, w // g, c).transpose(0, 1, 3, 2, 4, 5)
    cells = cells.reshape(b, g * g, (h // g) * (w // g), c).astype(jnp.float32)
    # sqrt(var + eps), not jnp.std: a flat patch (sky, a white wall) makes every feature
    # of a cell equal, where std's gradient is 0/0 = NaN and stops training.
    std = jnp.sqrt(cells.var(axis=2) + STD_EPS)
    pooled = jnp.concatenate([cells.mean(axis=2), std], axis=-1)
    out["pooled"] = pooled
    tokens = nn.Dense(self.width, dtype=self.dtype, name="tokens",
                      kernel_init=nn.with_logical_partitioning(
                          nn.initializers.lecun_normal(), (None, "embed")))(pooled)
    out["encoded"] = tokens
    return tokens, out
