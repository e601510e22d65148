"""Preprocessing geometry: patch grids stay inside the frame, never overlap, never pad."""

import numpy as np
import pytest

from cpllm.data import video


@pytest.mark.parametrize("height,width,want", [
    (1080, 1920, (540, 960)),   # landscape 16:9
    (1920, 1080, (960, 540)),   # portrait: the box turns
    (2160, 3840, (540, 960)),   # 4K shrinks
    (240, 320, (540, 720)),     # small frames are scaled up to the box
    (100, 4000, (27, 1080)),    # panorama limited by width
    (500, 500, (540, 540)),
])
def test_fit_size(height, width, want):
  assert video.fit_size(height, width) == want


def occupancy(height, width, corners, p):
  grid = np.zeros((height, width), np.int32)
  for y, x in corners:
    assert 0 <= y and y + p <= height and 0 <= x and x + p <= width, (y, x)
    grid[y:y + p, x:x + p] += 1
  return grid


@pytest.mark.parametrize("height,width,k,p,grid", [
    (1080, 1920, 8, 224, (2, 4)),   # the paper's setting
    (1920, 1080, 8, 224, (4, 2)),   # portrait
    (720, 1280, 4, 224, (2, 2)),
    (360, 640, 8, 224, (2, 4)),     # upscaled to the box first
    (100, 4000, 8, 224, (1, 8)),    # panorama: too short for a patch, upscaled just enough
    (64, 64, 8, 224, (2, 4)),       # tiny square frame
    (200, 300, 5, 224, (1, 5)),     # prime K
])
def test_patch_layout_inside_and_disjoint(height, width, k, p, grid):
  (h, w), corners = video.patch_layout(height, width, k, p)
  assert len(corners) == k
  assert video.patch_grid(*video.fit_size(height, width), k, p) == grid
  occ = occupancy(h, w, corners, p)
  assert occ.max() == 1
  assert occ.sum() == k * p * p
  # Upscaling happens only when the fitted frame cannot hold the grid, and then minimally.
  fit_h, fit_w = video.fit_size(height, width)
  rows, cols = grid
  if rows * p <= fit_h and cols * p <= fit_w:
    assert (h, w) == (fit_h, fit_w)
  else:
    assert h == rows * p or w == cols * p
    assert abs(h / w - fit_h / fit_w) < 0.02 * fit_h / fit_w + 1 / min(h, w)


def test_patches_spread_to_frame_edges():
  (h, w), corners = video.patch_layout(1080, 1920, 8, 224)
  assert (h, w) == (540, 960)
  assert sorted({y for y, _ in corners}) == [0, 316]
  assert sorted({x for _, x in corners}) == [0, 245, 490, 736]


def test_pixel_patches_are_exact_crops_without_padding():
  rng = np.random.default_rng(0)
  frame = rng.integers(1, 256, (540, 960, 3)).astype(np.uint8)  # already at the fit size
  patches = np.asarray(video.pixel_patches(frame, 8, 224))
  assert patches.shape == (8, 224, 224, 3)
  _, corners = video.patch_layout(540, 960, 8, 224)
  for patch, (y, x) in zip(patches, corners):
    np.testing.assert_allclose(patch, frame[y:y + 224, x:x + 224], atol=1e-3)


@pytest.mark.parametrize("height,width", [(50, 70), (90, 2000), (1200, 300)])
def test_small_and_extreme_frames_contain_only_frame_content(height, width):
  """A constant frame stays constant through resize and cropping: no black padding."""
  frame = np.full((2, height, width, 3), 180, np.uint8)  # a leading batch axis works too
  patches = np.asarray(video.pixel_patches(frame, 4, 32, box=(48, 96)))
  assert patches.shape == (2, 4, 32, 32, 3)
  np.testing.assert_allclose(patches, 180.0, atol=1e-3)


def test_context_frames_ignore_aspect():
  frame = np.zeros((90, 160, 3), np.uint8)
  frame[:, 80:] = 200  # right half bright
  out = np.asarray(video.context_frames(frame, 32))
  assert out.shape == (32, 32, 3)
  np.testing.assert_allclose(out[:, :15], 0, atol=1e-3)
  np.testing.assert_allclose(out[:, 17:], 200, atol=1e-3)


def test_native_scale_patches_are_crops_at_hand_computed_corners():
  """pix_box None: a 272x640 frame is not resized; K=12 patches of 32 form a 2x6 grid (the
  shape closest to its aspect 0.425) spread to the edges: rows 0 and 272-32, columns
  i * 32 + i * (640 - 192) // 5."""
  rng = np.random.default_rng(3)
  frame = rng.integers(0, 256, (272, 640, 3)).astype(np.uint8)
  patches = np.asarray(video.pixel_patches(frame, 12, 32, box=None))
  corners = [(y, x) for y in (0, 240) for x in (0, 121, 243, 364, 486, 608)]
  assert patches.shape == (12, 32, 32, 3)
  for patch, (y, x) in zip(patches, corners):
    np.testing.assert_array_equal(patch, frame[y:y + 32, x:x + 32])
  assert video.fit_size(720, 1280, None) == (720, 1280)
  assert video.pix_box({"pix_box": None}) is None
  assert video.pix_box({"pix_box": [120, 240]}) == (120, 240)


@pytest.mark.parametrize("height,width,cap,want", [
    (272, 640, 10_000, (8, 20)),   # every tile: 8 * 32 = 256 <= 272, 20 * 32 = 640
    (272, 640, 40, (4, 10)),       # thinned by sqrt(40 / 160) = 1/2 in both directions
    (720, 1280, 256, (11, 21)),    # 22 x 40 tiles, x sqrt(256 / 880) = 0.539 -> 11.9, 21.6
    (20, 20, 256, (0, 0)),         # smaller than a patch: nothing tiles
])
def test_tile_grid_by_hand(height, width, cap, want):
  assert video.tile_grid(height, width, 32, cap) == want


@pytest.mark.parametrize("height,width,k,want_k", [
    (272, 640, 12, 160),   # the tiles
    (120, 160, 12, 15),    # a demo clip: 3 x 5 tiles beat the 3 x 4 training grid
    (40, 40, 4, 4),        # one tile fits: the 2 x 2 grid of num_patches, upscaled
])
def test_scoring_layout_tiles_native_frames(height, width, k, want_k):
  """Scoring with score_patches tiles the native frame without overlap; patches are exact
  crops there, found by NumPy slicing at the layout's corners; the pipeline's (unscored)
  layout keeps K = num_patches."""
  config = dict(ctx_res=16, num_patches=k, patch_size=32, pix_box=None, score_patches=256)
  assert video.scoring_patch_count(config, height, width) == want_k
  (h, w), corners = video.patch_layout(height, width, k, 32, None, 256)
  occ = occupancy(h, w, corners, 32)
  assert len(corners) == want_k and occ.max() == 1
  rng = np.random.default_rng(1)
  frames = rng.integers(0, 256, (2, height, width, 3)).astype(np.uint8)
  _, patches = video.preprocess(frames, config, scoring=True)
  assert patches.shape == (2, want_k, 32, 32, 3)
  if (h, w) == (height, width):
    for i, (y, x) in enumerate(corners):
      np.testing.assert_array_equal(patches[:, i], frames[:, y:y + 32, x:x + 32])
  assert video.preprocess(frames, config)[1].shape[1] == k
