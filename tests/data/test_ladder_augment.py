"""Ladder pairs (two CRF rungs of one source within LADDER_SPAN) and training augmentation
(one flip and one set of random patch corners per pair), checked against crops searched for
in the frames themselves."""

import grain
import numpy as np
from absl import flags

from cpllm import configs
from cpllm.data import features
from cpllm.data import pipeline
from cpllm.data import video

flags.FLAGS.mark_as_parsed()

CFG = configs.load("configs/tiny.py")
# Source 0 has a 13..33 ladder (step 4) and two other variants; source 1 one CRF only.
LADDER = (13, 17, 21, 25, 29, 33)


def ladder_records():
  rng = np.random.default_rng(0)
  rows = [("src0", c) for c in LADDER] + [("src0", features.NO_CRF)] * 2
  rows += [("src1", 30), ("src1", features.NO_CRF)]
  return [dict(id=f"{s}/{i}", source_id=s, mos=np.float32(5 - 0.05 * max(c, 0)),
               is_original=True, crf=np.int32(c),
               dimensions=np.full(len(features.DIMENSIONS), np.nan, np.float32),
               description="", frames=rng.integers(0, 256, (3, 40, 56, 3), np.uint8))
          for i, (s, c) in enumerate(rows)]


def test_ladder_pairs_are_near_rungs_of_one_source():
  meta = pipeline.read_metadata(ladder_records())
  plans = grain.MapDataset.range(600).map(lambda i: i % len(meta)).random_map(
      pipeline.PlanPair(meta, pipeline.Mix(0, 0, 0, ladder=1), level_rate=0.0), seed=3)
  gaps, kinds = [], []
  for p in plans:
    a, b, kind = p["a"], p["b"], pipeline.PairKind(p["kind"])
    kinds.append(kind)
    if kind == pipeline.PairKind.LADDER:
      assert meta.source_ids[a] == meta.source_ids[b] == "src0"
      assert meta.crf[a] >= 0 and meta.crf[b] >= 0
      gaps.append(abs(int(meta.crf[a]) - int(meta.crf[b])))
    else:  # src1 has one rung: its anchors fall back to a same-source pair
      assert kind == pipeline.PairKind.SAME_SOURCE and meta.source_ids[a] == "src1"
  # src0's 8 records anchor 8/10 of the plans, its 2 non-CRF ones included (replaced).
  assert 0.7 < kinds.count(pipeline.PairKind.LADDER) / len(kinds) < 0.9
  assert set(gaps) == {4, 8}  # LADDER_SPAN 10 excludes 12 and more on a step-4 ladder


def test_mix_weights_keep_their_old_draws():
  """The ladder weight comes last, so a Mix without it plans what it planned before."""
  assert pipeline.Mix(1, 2, 1).probabilities().tolist() == [0.25, 0.5, 0.25, 0.0]
  assert [int(pipeline.PairKind[k]) for k in ("SINGLE", "SAME_SOURCE", "CROSS",
                                               "LADDER")] == [0, 1, 2, 3]


def find(patch, frames):
  """(flipped?, y, x) where `patch` uint8[M, P, P, 3] occurs in frames uint8[M, H, W, 3]
  or in their mirror image, by exhaustive search."""
  size = patch.shape[1]
  for flipped, f in ((False, frames), (True, frames[:, :, ::-1])):
    for y in range(f.shape[1] - size + 1):
      for x in range(f.shape[2] - size + 1):
        if np.array_equal(f[:, y:y + size, x:x + size], patch):
          return flipped, y, x
  return None


def test_augmented_pairs_share_flip_and_corners():
  records = ladder_records()
  meta = pipeline.read_metadata(records)
  model = dict(CFG.model, pix_box=None)
  load = pipeline.LoadExample(records, meta, tokenizer=None, model_config=model,
                              num_frames=3, text_len=8, augment=True)
  views = set()
  for seed in range(6):
    corners = []
    for index in (0, 3):  # two rungs of src0: different frames, one view
      ctx, patches = load._video(index, seed)  # pylint: disable=protected-access
      frames = records[index]["frames"]
      hits = [find(patches[:, k], frames) for k in range(patches.shape[1])]
      assert None not in hits, (seed, index)
      assert len({h[0] for h in hits}) == 1  # one flip for all K patches
      flipped = hits[0][0]
      want_ctx = video.context_frames(frames[:, :, ::-1] if flipped else frames,
                                      model["ctx_res"])
      np.testing.assert_array_equal(ctx, np.clip(np.round(np.asarray(want_ctx)), 0, 255))
      corners.append(hits)
    assert corners[0] == corners[1]
    views.add(tuple(corners[0]))
  assert len(views) == 6  # every seed another view
  # Without augmentation (evaluation, scoring) the fixed grid comes back.
  plain = pipeline.LoadExample(records, meta, None, model, 3, 8)
  _, patches = plain._video(0, 5)  # pylint: disable=protected-access
  np.testing.assert_array_equal(
      patches, np.asarray(video.pixel_patches(records[0]["frames"], model["num_patches"],
                                              model["patch_size"], None)))


def test_random_corners_reach_every_edge():
  """Corners are uniform over the frame: pixels coded with their own (y, x) show that the
  patches start at row 0 and at the last possible row, and likewise for columns."""
  h, w, size = 40, 56, 16
  coded = np.zeros((1, h, w, 3), np.uint8)
  coded[..., 0] = np.arange(h)[:, None]
  coded[..., 1] = np.arange(w)[None, :]
  model = dict(CFG.model, pix_box=None, num_patches=4, patch_size=size)
  ys, xs = set(), set()
  for seed in range(100):
    _, patches = video.preprocess(coded, model, np.random.default_rng(seed))
    ys.update(patches[0, :, 0, 0, 0].tolist())
    xs.update(np.minimum(patches[0, :, 0, 0, 1], patches[0, :, 0, -1, 1]).tolist())
  assert ys == set(range(h - size + 1)) and xs == set(range(w - size + 1))


def test_augmented_patches_come_from_the_resized_frame():
  """With a pix_box the frame is resized as for the fixed grid, then cropped."""
  frames = np.random.default_rng(1).integers(0, 256, (2, 30, 40, 3), np.uint8)
  model = dict(CFG.model, pix_box=(60, 80), num_patches=4, patch_size=16)
  (h, w), _ = video.patch_layout(30, 40, 4, 16, (60, 80))
  resized = np.clip(np.round(np.asarray(video.resize_bilinear(frames, h, w))), 0, 255)
  _, patches = video.preprocess(frames, model, np.random.default_rng(0))
  assert patches.shape == (2, 4, 16, 16, 3) and (h, w) == (60, 80)
  for k in range(4):
    assert find(patches[:, k], resized.astype(np.uint8)) is not None


def test_low_contrast_scales_both_videos_of_a_pair_by_one_factor():
  """low_contrast: about half the views are the augment-only view of frames whose deviation
  from each channel mean is scaled by one factor in [L, 1] for both videos (found by
  least squares against the NumPy rescaling), the others are untouched."""
  records = ladder_records()
  meta = pipeline.read_metadata(records)
  model = dict(CFG.model, pix_box=None)
  plain = pipeline.LoadExample(records, meta, None, model, 3, 8, augment=True)
  faint = pipeline.LoadExample(records, meta, None, model, 3, 8, augment=True,
                               low_contrast=0.25)
  np.testing.assert_array_equal(
      pipeline.scale_contrast(np.array([[[[100, 50, 0], [200, 150, 255]]]], np.uint8), 0.5),
      [[[[125, 75, 64], [175, 125, 191]]]])
  scaled = 0
  for seed in range(12):
    factors = []
    for index in (0, 3):
      frames = records[index]["frames"]
      _, got = faint._video(index, seed)  # pylint: disable=protected-access
      _, same_view = plain._video(index, seed)  # pylint: disable=protected-access
      if np.array_equal(got, same_view):
        factors.append(1.0)
        continue
      best = min(np.exp(np.linspace(np.log(0.25), 0, 400)), key=lambda f: np.abs(
          pipeline.LoadExample(  # the augment-only view of the rescaled frames
              [dict(records[index], frames=pipeline.scale_contrast(frames, f))], meta, None,
              model, 3, 8, augment=True)._video(0, seed)[1].astype(int)  # pylint: disable=protected-access
          - got.astype(int)).max())
      factors.append(float(best))
    assert factors[0] == factors[1] and 0.25 <= factors[0] <= 1.0, (seed, factors)
    scaled += factors[0] < 1.0
  assert 3 <= scaled <= 9
