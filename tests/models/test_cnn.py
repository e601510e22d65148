"""The MSCN CNN pixel encoder: MSCN against SciPy's Gaussian filter in float64, the token
grid's layout, the parameter count by hand, and what normalisation removes (brightness)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from cpllm.models import cnn


def mscn_reference(luma, c=1.0):
  """BRISQUE's MSCN in float64 with SciPy: 7x7 window (truncate 3 / sigma), mirrored."""
  blur = lambda x: ndimage.gaussian_filter(x, 7 / 6, truncate=3 / (7 / 6), mode="reflect")
  mu = blur(luma)
  sigma = np.sqrt(np.abs(blur(luma * luma) - mu * mu))
  return (luma - mu) / (sigma + c)


def test_mscn_matches_scipy_reference():
  rng = np.random.default_rng(0)
  luma = np.cumsum(rng.normal(0, 8, (2, 37, 45)), axis=2) % 256  # structure and edges
  got = np.asarray(cnn.mscn(luma))
  want = np.stack([mscn_reference(x) for x in luma])
  np.testing.assert_allclose(got, want, atol=2e-4)
  assert np.abs(want).max() > 1.0  # not a degenerate all-zero case


def test_mscn_of_flat_and_offset_images():
  flat = np.full((1, 16, 16), 77.0)
  np.testing.assert_allclose(np.asarray(cnn.mscn(flat)), 0.0, atol=1e-5)
  rng = np.random.default_rng(1)
  luma = rng.uniform(20, 200, (1, 16, 16))
  np.testing.assert_allclose(np.asarray(cnn.mscn(luma + 40.0)), np.asarray(cnn.mscn(luma)),
                             atol=1e-3)


def test_mscn_constant_of_the_encoder_reaches_its_input():
  """PatchCNN(mscn_c=c) normalises with c: its out['mscn'] against the float64 reference
  on the luma of its own image (BT.601 weights of cnn.LUMA, [-1, 1] -> 0..255)."""
  rng = np.random.default_rng(3)
  image = np.clip(rng.normal(0, 0.02, (1, 32, 32, 3)), -1, 1).astype(np.float32)  # faint
  luma = (image[0].astype(np.float64) + 1) * 127.5 @ np.asarray(cnn.LUMA, np.float64)
  for c in (1.0, 0.25):
    model = cnn.PatchCNN(**cnn.VARIANTS["small"], mscn_c=c)
    params = model.init(jax.random.PRNGKey(0), image)
    _, out = model.apply(params, image)
    np.testing.assert_allclose(out["mscn"][0, ..., 0], mscn_reference(luma, c),
                               atol=2e-3)  # float32 E[x^2] - mu^2 at luma ~127
  # Faint texture (std ~2.5 code values) is normalised up by the smaller constant.
  assert np.std(mscn_reference(luma, 0.25)) > 1.2 * np.std(mscn_reference(luma, 1.0))


@pytest.fixture(scope="module")
def small():
  model = cnn.PatchCNN(**cnn.VARIANTS["small"])
  params = nn.unbox(model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32)))
  return model, params


def test_parameter_count_by_hand(small):
  _, params = small
  cfg = cnn.VARIANTS["small"]
  count, c_in = 0, cfg["space_to_depth"] ** 2
  for c_out in cfg["features"]:
    count += 9 * c_in * c_out + c_out
    c_in = c_out
  count += 2 * c_in * cfg["width"] + cfg["width"]
  assert sum(x.size for x in jax.tree.leaves(params)) == count


def test_tokens_are_row_major_cells_and_ignore_brightness(small):
  model, params = small
  rng = np.random.default_rng(2)
  image = rng.uniform(-0.6, 0.6, (1, 32, 32, 3)).astype(np.float32)
  tokens, out = model.apply(params, image)
  g = cnn.VARIANTS["small"]["token_grid"]
  assert tokens.shape == (1, g * g, cnn.VARIANTS["small"]["width"])
  assert out["mscn"].shape == (1, 32, 32, 1)

  # A change in the top-left corner reaches the first (top-left) cell's token only: the
  # receptive field (MSCN window, space-to-depth, two 3x3 convolutions) is narrower than a
  # cell.
  corner = image.copy()
  corner[0, :2, :2] = -image[0, :2, :2]
  changed, _ = model.apply(params, corner)
  moved = np.abs(np.asarray(changed - tokens)).max(axis=-1)[0]
  assert moved[0] > 1e-4 and np.all(moved[1:] < 1e-6), moved

  # The same picture brighter (an offset on every channel) gives the same tokens.
  brighter, _ = model.apply(params, image + 0.3)
  np.testing.assert_allclose(brighter, tokens, atol=2e-4)


def test_token_grid_must_divide_the_feature_map(small):
  model, params = small
  with pytest.raises(ValueError, match="token grid"):  # 20 -> 10 -> 5 rows
    model.apply(params, np.zeros((1, 20, 24, 3), np.float32))
  with pytest.raises(ValueError, match="space_to_depth"):
    model.apply(params, np.zeros((1, 33, 32, 3), np.float32))


def test_flat_patches_have_finite_gradients_and_numpy_pooling(small):
  """A flat patch makes every feature of a cell equal: the standard deviation pooling must
  not give NaN gradients there (it stopped a training run on 320x240 clips at step 217),
  and elsewhere it is NumPy's standard deviation of the last feature map."""
  model, params = small
  rng = np.random.default_rng(3)
  images = np.concatenate([np.full((1, 32, 32, 3), 0.8, np.float32),
                           rng.uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)])
  loss = lambda p: jnp.sum(model.apply(p, images)[0] ** 2)
  grads = jax.jit(jax.grad(loss))(params)
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
  _, out = model.apply(params, images)
  last = np.asarray(out[f"conv{len(cnn.VARIANTS['small']['features']) - 1}"], np.float64)
  g = cnn.VARIANTS["small"]["token_grid"]
  h, w = last.shape[1] // g, last.shape[2] // g
  cell = last[1, h:2 * h, :w]  # row 1, column 0 of the token grid: token g
  want = np.sqrt(cell.reshape(-1, last.shape[-1]).var(axis=0) + cnn.STD_EPS)
  c = last.shape[-1]
  np.testing.assert_allclose(np.asarray(out["pooled"])[1, g, c:], want, rtol=1e-4, atol=1e-6)
