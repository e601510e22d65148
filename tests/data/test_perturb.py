"""Temporal perturbations: hand-computed index maps and properties over many seeds."""

import numpy as np
import pytest

from cpllm.data import perturb as P

FUNCTIONS = (P.repeat_frames, P.drop_frames, P.shuffle_frames, P.reverse_frames)


def idx_of(fn, t, seed, strength):
  return fn(np.arange(t), np.random.default_rng(seed), strength)[1].tolist()


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_strength_zero_is_identity(fn):
  assert idx_of(fn, 6, 0, 0.0) == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("fn,want", [
    (P.repeat_frames, [0, 0, 0, 0, 0]),   # every step stalls: a frozen clip
    (P.drop_frames, [0, 0, 0, 0, 0]),     # everything after frame 0 is lost
    (P.reverse_frames, [4, 3, 2, 1, 0]),
])
def test_strength_one(fn, want):
  assert idx_of(fn, 5, 0, 1.0) == want


@pytest.mark.parametrize("fn,options", [
    # T=3, n = round(0.5 * 2) = 1 position among {1, 2}.
    (P.repeat_frames, [[0, 0, 1], [0, 1, 1]]),
    (P.drop_frames, [[0, 0, 2], [0, 1, 1]]),
    # T=3, n = round(0.5 * 3) = 2 frames swap.
    (P.shuffle_frames, [[1, 0, 2], [2, 1, 0], [0, 2, 1]]),
    (P.reverse_frames, [[1, 0, 2], [0, 2, 1]]),
])
def test_small_cases_enumerated(fn, options):
  seen = {tuple(idx_of(fn, 3, seed, 0.5)) for seed in range(50)}
  assert seen == {tuple(o) for o in options}


def test_two_frames():
  assert idx_of(P.shuffle_frames, 2, 0, 0.01) == [1, 0]  # a tiny positive strength moves 2
  assert idx_of(P.reverse_frames, 2, 0, 0.5) == [1, 0]


@pytest.mark.parametrize("t", [2, 5, 8, 16])
@pytest.mark.parametrize("strength", [0.1, 0.25, 0.5, 0.75, 1.0])
def test_properties(t, strength):
  for seed in range(20):
    rep, drop, shuf, rev = (np.array(idx_of(fn, t, seed, strength)) for fn in FUNCTIONS)
    n_tail = round(strength * (t - 1))
    # Repetition: starts at 0, steps of 0 or 1 (order kept, nothing skipped), n stalls.
    assert rep[0] == 0 and set(np.diff(rep)) <= {0, 1} and (np.diff(rep) == 0).sum() == n_tail
    # Dropping: order kept, kept frames in place, dropped ones hold the last kept frame.
    assert drop[0] == 0 and (np.diff(drop) >= 0).all() and (drop <= np.arange(t)).all()
    assert (drop == np.arange(t)).sum() == t - n_tail
    # Shuffle: a permutation moving exactly n frames.
    n = max(round(strength * t), 2)
    assert sorted(shuf) == list(range(t)) and (shuf != np.arange(t)).sum() == n
    # Reversal: one window of n consecutive frames reversed exactly, the rest in place.
    moved = np.flatnonzero(rev != np.arange(t))
    start = int(np.flatnonzero(np.diff(rev) < 0)[0])
    np.testing.assert_array_equal(rev[start:start + n], np.arange(start, start + n)[::-1])
    assert moved.size == n - n % 2  # an odd window keeps its middle frame


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_frames_follow_index_map_and_seed(fn):
  frames = np.random.default_rng(0).integers(0, 256, (8, 4, 6, 3), dtype=np.uint8)
  out, idx = fn(frames, np.random.default_rng(3), 0.5)
  assert out.shape == frames.shape and out.dtype == np.uint8 and idx.dtype == np.int32
  np.testing.assert_array_equal(out, frames[idx])
  _, again = fn(frames, np.random.default_rng(3), 0.5)
  np.testing.assert_array_equal(idx, again)


def test_index_sequences_perturb_to_video_indices():
  key_frames = np.array([5, 15, 25, 35])  # e.g. key-frame positions in a 40-frame video
  out, idx = P.reverse_frames(key_frames, np.random.default_rng(0), 1.0)
  assert out.tolist() == [35, 25, 15, 5] and idx.tolist() == [3, 2, 1, 0]


def test_perturb_dispatch():
  frames = np.arange(6)
  for kind in P.Perturbation:
    a = P.perturb(frames, kind, np.random.default_rng(1), 0.5)
    fn = {"repeat": P.repeat_frames, "drop": P.drop_frames, "shuffle": P.shuffle_frames,
          "reverse": P.reverse_frames}[kind.value]
    b = fn(frames, np.random.default_rng(1), 0.5)
    np.testing.assert_array_equal(a[1], b[1])
  custom = lambda f, rng, s: (f[::-1], np.arange(len(f))[::-1])
  assert P.perturb(frames, custom, np.random.default_rng(0), 1.0)[0].tolist() == [5, 4, 3, 2, 1, 0]
  with pytest.raises(TypeError, match="kind must be a Perturbation or a function; got 'drop'"):
    P.perturb(frames, "drop", np.random.default_rng(0), 0.5)


@pytest.mark.parametrize("args,error,match", [
    ((np.arange(1), np.random.default_rng(0), 0.5), ValueError, "at least 2 frames; got 1"),
    ((np.arange(4), np.random.default_rng(0), 1.5), ValueError, "strength 1.5 is outside"),
    ((np.arange(4), np.random.default_rng(0), float("nan")), ValueError, "strength nan"),
    ((np.arange(4), 0, 0.5), TypeError, "rng must be a numpy Generator"),
])
@pytest.mark.parametrize("fn", FUNCTIONS)
def test_bad_arguments(fn, args, error, match):
  with pytest.raises(error, match=match):
    fn(*args)
