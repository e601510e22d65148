"""Temporal perturbations for GRPO's temporal-consistency reward (papers/vqathinker.md).

Each function takes `frames` with time on the leading axis -- uint8[T, H, W, 3] frames, or
an index sequence int[T] such as the key-frame indices into a video (perturb those before
decoding) -- a numpy Generator and a strength in [0, 1], and returns
(frames[idx], idx int32[T]). T never changes, because the model expects M frames:

  repeat_frames   playback stalls: n = round(strength * (T-1)) of frames 1..T-1 show the
                  previous frame again and the rest follow late; the tail is cut.
                  T=5, stalls at 2 and 3: idx [0 1 1 1 2]
  drop_frames     frames are lost and the player holds the last one it got: n of frames
                  1..T-1 are dropped and replaced by the previous kept frame.
                  T=5, drops at 2 and 3: idx [0 1 1 1 4]
  shuffle_frames  n = round(strength * T) frames (at least 2 if strength > 0) are permuted
                  among their positions in a single cycle, so every one of them moves.
  reverse_frames  a random window of n = round(strength * T) frames (at least 2 if
                  strength > 0) plays backwards; strength 1 reverses the whole clip.

Strength 0 is the identity for all four.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import numpy as np


def repeat_frames(frames, rng: np.random.Generator, strength: float):
  """Stutter: (frames[idx], idx) with idx non-decreasing in steps of 0 or 1 from 0."""
  t = _check(frames, rng, strength)
  step = np.ones(t, np.int32)
  step[0] = 0
  step[_positions(rng, t, strength)] = 0
  return _apply(frames, np.cumsum(step, dtype=np.int32))


def drop_frames(frames, rng: np.random.Generator, strength: float):
  """Frame loss: (frames[idx], idx) with idx[i] = i where kept, else the last kept index."""
  t = _check(frames, rng, strength)
  kept = np.ones(t, bool)
  kept[_positions(rng, t, strength)] = False
  idx = np.maximum.accumulate(np.where(kept, np.arange(t), 0)).astype(np.int32)
  return _apply(frames, idx)


def shuffle_frames(frames, rng: np.random.Generator, strength: float):
  """Shuffle: (frames[idx], idx), idx a permutation moving exactly n frames."""
  t = _check(frames, rng, strength)
  idx = np.arange(t, dtype=np.int32)
  n = _window(t, strength)
  if n:
    chosen = rng.choice(t, n, replace=False)
    # Sattolo's algorithm: a uniformly random single cycle, so no chosen frame stays put.
    cycle = chosen.copy()
    for i in range(n - 1, 0, -1):
      j = rng.integers(i)
      cycle[i], cycle[j] = cycle[j], cycle[i]
    idx[chosen] = cycle
  return _apply(frames, idx)


def reverse_frames(frames, rng: np.random.Generator, strength: float):
  """Reversal: (frames[idx], idx) with a window of n consecutive indices reversed."""
  t = _check(frames, rng, strength)
  idx = np.arange(t, dtype=np.int32)
  n = _window(t, strength)
  if n:
    start = rng.integers(t - n + 1)
    idx[start:start + n] = idx[start:start + n][::-1]
  return _apply(frames, idx)


class Perturbation(enum.Enum):
  """The built-in perturbations; configs name a member (or a function), never a string."""
  REPEAT = "repeat"
  DROP = "drop"
  SHUFFLE = "shuffle"
  REVERSE = "reverse"


_FUNCTIONS = {Perturbation.REPEAT: repeat_frames, Perturbation.DROP: drop_frames,
              Perturbation.SHUFFLE: shuffle_frames, Perturbation.REVERSE: reverse_frames}

PerturbFn = Callable[[np.ndarray, np.random.Generator, float], tuple[np.ndarray, np.ndarray]]


def perturb(frames, kind: Perturbation | PerturbFn, rng: np.random.Generator,
            strength: float):
  """(frames[idx], idx) for a Perturbation member or a function with the same signature.

  >>> perturb(np.arange(4), Perturbation.REVERSE, np.random.default_rng(0), 1.0)
  (array([3, 2, 1, 0]), array([3, 2, 1, 0], dtype=int32))
  """
  if isinstance(kind, Perturbation):
    return _FUNCTIONS[kind](frames, rng, strength)
  if callable(kind):
    return kind(frames, rng, strength)
  raise TypeError(f"kind must be a Perturbation or a function; got {kind!r}")


def _check(frames, rng, strength) -> int:
  """Validates the arguments and returns T."""
  if not isinstance(rng, np.random.Generator):
    raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)); "
                    f"got {type(rng).__name__}")
  if not 0.0 <= strength <= 1.0:  # also rejects NaN
    raise ValueError(f"strength {strength} is outside [0, 1]")
  t = len(frames)
  if t < 2:
    raise ValueError(f"a temporal perturbation needs at least 2 frames; got {t}")
  return t


def _positions(rng: np.random.Generator, t: int, strength: float) -> np.ndarray:
  """round(strength * (T-1)) distinct positions among 1..T-1 (frame 0 always stays)."""
  return rng.choice(np.arange(1, t), round(strength * (t - 1)), replace=False)


def _window(t: int, strength: float) -> int:
  """round(strength * T), raised to 2 when positive: one frame cannot move on its own."""
  n = round(strength * t)
  return 0 if strength == 0 else max(n, 2)


def _apply(frames, idx: np.ndarray):
  return np.asarray(frames)[idx], idx
