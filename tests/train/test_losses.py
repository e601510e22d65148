"""Each loss against a NumPy reference written from the paper's equations, masks included."""

import numpy as np
import pytest

from cpllm.data import features
from cpllm.train import losses


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture
def batch():
  rng = np.random.default_rng(0)
  b, l, v = 6, 7, 11
  return dict(
      score=rng.normal(3, 1, (b, 2)).astype(np.float32),
      mos=rng.uniform(1, 5, (b, 2)).astype(np.float32),
      video_mask=np.array([[1, 1], [1, 0], [1, 1], [1, 1], [1, 0], [1, 1]], bool),
      is_original=np.array([[1, 0], [1, 1], [0, 0], [1, 0], [0, 1], [1, 1]], bool),
      valid=np.array([1, 1, 1, 1, 1, 0], bool),
      crf=np.full((b, 2), -1), pair_kind=np.array([1, 0, 2, 1, 0, 1]),  # no CRF pairs
      logits=rng.normal(0, 2, (b, l, v)).astype(np.float32),
      text=rng.integers(0, v, (b, l)),
      mask_loss=np.array([[0, 0, 0, 1, 1, 1, 0]] * 3 + [[0, 0, 1, 1, 1, 1, 1]] * 3))


def test_pairwise_hinge_examples():
  assert float(losses.pairwise_hinge(np.array([[1., 3.]]), np.array([[4., 2.]]),
                                     np.array([True]))) == pytest.approx(4.0)
  assert float(losses.pairwise_hinge(np.array([[3., 1.]]), np.array([[4., 2.]]),
                                     np.array([True]))) == 0.0
  assert float(losses.pairwise_hinge(np.array([[1., 3.]]), np.array([[4., 2.]]),
                                     np.array([False]))) == 0.0


def test_total_loss_matches_numpy_reference(batch):
  weights = dict(pair=0.7, reg=1.3, text=0.5)
  out = dict(score=batch["score"], logits=batch["logits"])
  loss, terms = losses.total_loss(out, batch, weights)

  pairs = [i for i in range(6) if batch["video_mask"][i, 1] and batch["valid"][i]]
  want_pair = np.mean([max(0.0, -(batch["mos"][i, 0] - batch["mos"][i, 1])
                           * (batch["score"][i, 0] - batch["score"][i, 1])) for i in pairs])
  originals = [i for i in range(6) if batch["is_original"][i, 0] and batch["valid"][i]]
  want_reg = np.mean([(batch["score"][i, 0] - batch["mos"][i, 0]) ** 2 for i in originals])
  logp = np_log_softmax(batch["logits"].astype(np.float64))
  nll, count = 0.0, 0
  for i in range(5):  # row 5 is padding
    for k in range(1, 7):
      if batch["mask_loss"][i, k]:
        nll -= logp[i, k - 1, batch["text"][i, k]]
        count += 1
  want_text = nll / count

  assert pairs == [0, 2, 3] and originals == [0, 1, 3]
  np.testing.assert_allclose(terms["loss_pair"], want_pair, rtol=1e-5)
  np.testing.assert_allclose(terms["loss_reg"], want_reg, rtol=1e-5)
  np.testing.assert_allclose(terms["loss_text"], want_text, rtol=1e-5)
  assert int(terms["n_target_tokens"]) == count == 3 * 3 + 2 * 5
  np.testing.assert_allclose(loss, 0.7 * want_pair + 1.3 * want_reg + 0.5 * want_text,
                             rtol=1e-5)


def test_empty_masks_give_zero_not_nan(batch):
  batch = dict(batch, video_mask=np.tile([True, False], (6, 1)),
               is_original=np.zeros((6, 2), bool), mask_loss=np.zeros((6, 7), int))
  out = dict(score=batch["score"], logits=batch["logits"])
  loss, terms = losses.total_loss(out, batch, dict(pair=1, reg=1, text=1))
  assert float(loss) == 0.0
  assert all(np.isfinite(float(v)) for v in terms.values())


def test_ladder_hinge_matches_numpy_reference():
  """Rows: a satisfied pair, a short one, slots swapped, a non-CRF video, equal CRFs, a
  cross-source pair, a single video, padding. Only same-source pairs of two different
  CRFs count; the lower CRF must lead by 0.02 per CRF unit."""
  score = np.array([[3.0, 2.7], [3.0, 2.9], [2.9, 2.5], [3.0, 1.0], [3.0, 3.5],
                    [1.0, 4.0], [2.0, 2.0], [1.0, 4.0]], np.float32)
  crf = np.array([[21, 31], [21, 31], [35, 27], [-1, 30], [25, 25], [21, 31], [30, 30],
                  [21, 31]])
  kind = np.array([3, 1, 3, 1, 3, 2, 0, 3])
  valid = np.array([1, 1, 1, 1, 1, 1, 1, 0], bool)
  mask = np.array([[1, 1]] * 6 + [[1, 0], [1, 1]], bool)
  want = []
  for i in range(8):
    same = valid[i] and mask[i, 1] and kind[i] in (1, 3)
    if same and min(crf[i]) >= 0 and crf[i, 0] != crf[i, 1]:
      better, worse = (0, 1) if crf[i, 0] < crf[i, 1] else (1, 0)
      need = 0.02 * abs(float(crf[i, 0]) - float(crf[i, 1]))
      want.append(max(0.0, need - (float(score[i, better]) - float(score[i, worse]))))
  assert np.allclose(want, [0.0, 0.1, 0.56])  # by hand: 0.2 - 0.1; 0.16 + 0.4 (B better)
  batch = dict(score=score, mos=np.full((8, 2), 3.0, np.float32), video_mask=mask,
               is_original=np.zeros((8, 2), bool), valid=valid, crf=crf, pair_kind=kind,
               text=np.zeros((8, 3), int), mask_loss=np.zeros((8, 3), int))
  out = dict(score=score, logits=np.zeros((8, 3, 5), np.float32))
  loss, terms = losses.total_loss(out, batch, dict(pair=0, reg=0, text=0, ladder=2.0),
                                  ladder_margin=0.02)
  assert int(terms["n_ladder_pairs"]) == 3
  np.testing.assert_allclose(terms["loss_ladder"], np.mean(want), rtol=1e-5)
  np.testing.assert_allclose(loss, 2.0 * np.mean(want), rtol=1e-5)
  # Without a ladder weight (configs/paper.py) the term is reported but adds nothing.
  loss, _ = losses.total_loss(out, batch, dict(pair=0, reg=0, text=0), ladder_margin=0.02)
  assert float(loss) == 0.0


def test_ladder_hinge_per_patch_position():
  """With patch scores each position of a pair is ordered on its own: by hand, CRF 21 vs
  31 (margin 0.2) at 3 positions leading by 0.1, 0.5 and -0.2 -> (0.1 + 0 + 0.4) / 3; the
  video score alone (mean lead 0.133) would give 0.067 and hide the reversed position."""
  patch = np.array([[[[3.0, 3.0, 2.8]], [[2.9, 2.5, 3.0]]]], np.float32)  # [B=1, 2, M=1, 3]
  batch = dict(mos=np.full((1, 2), 3.0, np.float32), video_mask=np.ones((1, 2), bool),
               is_original=np.zeros((1, 2), bool), valid=np.ones(1, bool),
               crf=np.array([[21, 31]]), pair_kind=np.array([3]),
               text=np.zeros((1, 3), int), mask_loss=np.zeros((1, 3), int))
  out = dict(score=patch.mean(axis=(2, 3)), patch_scores=patch,
             logits=np.zeros((1, 3, 5), np.float32))
  _, terms = losses.total_loss(out, batch, dict(pair=0, reg=0, text=0, ladder=1.0),
                               ladder_margin=0.02)
  np.testing.assert_allclose(terms["loss_ladder"], 0.5 / 3, rtol=1e-5)
  del out["patch_scores"]
  _, terms = losses.total_loss(out, batch, dict(pair=0, reg=0, text=0, ladder=1.0),
                               ladder_margin=0.02)
  np.testing.assert_allclose(terms["loss_ladder"], 0.2 - 0.4 / 3, rtol=1e-5)


def test_score_blind_dimensions_leave_videos_out_of_the_score_terms():
  """By hand. Row 0: a single video underexposed (exposure 2.9) -> out of reg. Row 1: a
  pair whose B stutters (smoothness 3.0) -> out of the pair hinge. Row 2: a pair with
  unknown (NaN) dimensions -> counted. Row 3: a single intact video -> counted in reg.
  Without score_blind every row counts; the text term never changes."""
  d = len(features.DIMENSIONS)
  dims = np.full((4, 2, d), 5.0, np.float32)
  dims[0, 0, features.DIMENSIONS.index("exposure")] = 2.9
  dims[1, 1, features.DIMENSIONS.index("smoothness")] = 3.0
  dims[2] = np.nan
  score = np.array([[4.0, 4.0], [3.0, 4.0], [2.0, 3.0], [3.5, 3.5]], np.float32)
  mos = np.array([[2.0, 2.0], [4.0, 2.0], [4.0, 1.0], [3.0, 3.0]], np.float32)
  batch = dict(mos=mos, video_mask=np.array([[1, 0], [1, 1], [1, 1], [1, 0]], bool),
               is_original=np.ones((4, 2), bool), valid=np.ones(4, bool),
               crf=np.full((4, 2), -1), pair_kind=np.array([0, 2, 2, 0]), dims=dims,
               text=np.zeros((4, 3), int), mask_loss=np.ones((4, 3), int))
  out = dict(score=score, logits=np.zeros((4, 3, 5), np.float32))
  weights = dict(pair=1.0, reg=1.0, text=0.0)
  _, blind = losses.total_loss(out, batch, weights, score_blind=("exposure", "smoothness"))
  _, all_rows = losses.total_loss(out, batch, weights)
  # Pairs: row 1 -(4-2)(3-4) = 2, row 2 -(4-1)(2-3) = 3. Reg: rows 0..3 errors 4, 1, 4, 0.25.
  np.testing.assert_allclose(blind["loss_pair"], 3.0, rtol=1e-6)
  np.testing.assert_allclose(all_rows["loss_pair"], 2.5, rtol=1e-6)
  np.testing.assert_allclose(blind["loss_reg"], (1 + 4 + 0.25) / 3, rtol=1e-6)
  np.testing.assert_allclose(all_rows["loss_reg"], (4 + 1 + 4 + 0.25) / 4, rtol=1e-6)
  np.testing.assert_allclose(blind["loss_text"], all_rows["loss_text"])
  np.testing.assert_array_equal(
      features.intact(dims, ("exposure",)), [[False, True], [True, True], [True, True],
                                             [True, True]])


def test_order_only_dimensions_leave_only_the_regression():
  """By hand. Row 0: a single noisy video (noise 3.6) -> out of reg. Row 1: a pair whose A
  is noisy -> still in the pair hinge, out of reg. Row 2: a single clean video -> in reg."""
  d = len(features.DIMENSIONS)
  dims = np.full((3, 2, d), 5.0, np.float32)
  dims[0, 0, features.DIMENSIONS.index("noise")] = 3.6
  dims[1, 0, features.DIMENSIONS.index("noise")] = 2.7
  score = np.array([[4.0, 4.0], [3.0, 2.0], [3.5, 3.5]], np.float32)
  mos = np.array([[2.0, 2.0], [2.0, 4.0], [3.0, 3.0]], np.float32)
  batch = dict(mos=mos, video_mask=np.array([[1, 0], [1, 1], [1, 0]], bool),
               is_original=np.ones((3, 2), bool), valid=np.ones(3, bool),
               crf=np.full((3, 2), -1), pair_kind=np.array([0, 2, 0]), dims=dims,
               text=np.zeros((3, 3), int), mask_loss=np.ones((3, 3), int))
  out = dict(score=score, logits=np.zeros((3, 3, 5), np.float32))
  weights = dict(pair=1.0, reg=1.0, text=0.0)
  _, ordered = losses.total_loss(out, batch, weights, order_only=("noise",))
  _, all_rows = losses.total_loss(out, batch, weights)
  # Pair (row 1): -(2-4)(3-2) = 2 either way. Reg errors: rows 0..2 are 4, 1, 0.25.
  np.testing.assert_allclose(ordered["loss_pair"], 2.0, rtol=1e-6)
  np.testing.assert_allclose(all_rows["loss_pair"], 2.0, rtol=1e-6)
  np.testing.assert_allclose(ordered["loss_reg"], 0.25, rtol=1e-6)
  np.testing.assert_allclose(all_rows["loss_reg"], (4 + 1 + 0.25) / 3, rtol=1e-6)


def test_unknown_dimension_names_are_refused():
  with pytest.raises(ValueError, match=r"unknown quality dimension.*'blur'.*sharpness"):
    features.intact(np.full((2, len(features.DIMENSIONS)), 5.0), ("blur",))
