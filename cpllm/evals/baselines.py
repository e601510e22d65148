"""Classical no-reference quality metrics from pinned third-party packages, as peer rows.

  BRISQUE  the `brisque` package (Mittal et al. 2012: 36 natural-scene statistics of the
           mean-subtracted contrast-normalised luma at two scales, an SVR fitted on LIVE
           IQA). Needs opencv and libsvm-official; see requirements-baselines.txt.
  NIQE     scikit-video's `skvideo.measure.niqe` (Mittal et al. 2013: distance of 96 x 96
           patch statistics from a model of pristine images; frames must exceed 193 x 193).

Both are lower-is-better and score one RGB frame uint8[H, W, 3] at its native size; a video
is scored by the caller (the mean over key frames). The code is the packages' own; two
compatibility shims make it run on this stack, each the documented equivalent of what the
package expected:

  - brisque 0.2.0 `scale_features` calls float() on features that are 1-element arrays,
    which the pinned NumPy (2.4) refuses (deprecated since 1.25: only 0-d arrays convert);
    the shim passes each as its single value (`.item()`, what float() returned before) to
    the package's own method.
  - scikit-video 1.1.11 NIQE calls `scipy.misc.imresize(img, 0.5, interp='bicubic',
    mode='F')` (removed in SciPy 1.3; SciPy's notice names Pillow's `Image.resize` as the
    replacement) and `np.int` (removed in NumPy 1.24). The shim gives that one module a
    `scipy.misc.imresize` doing what SciPy 1.2's did for mode 'F' (a float32 Pillow image,
    size floor(scale * (W, H)), Pillow's bicubic resize, back to float32) and an `np.int`
    that is `int`. Nothing outside skvideo.measure.niqe is patched.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import types
import warnings
from collections.abc import Callable

import numpy as np

NIQE_MIN_SIDE = 194  # skvideo asserts height and width > 2 * 96 + 1

INSTALL_HINT = "install them with `pip install -r requirements-baselines.txt`"


@dataclasses.dataclass(frozen=True)
class Baseline:
  """A no-reference metric: `score_frame(uint8[H, W, 3]) -> float`, lower is better.

  `key` names the metric and the package versions that computed it, so cached scores of
  another version are never reused.
  """
  name: str
  key: str
  packages: str  # for table headers, e.g. 'brisque 0.2.0 (libsvm-official 3.37.0, ...)'
  score_frame: Callable[[np.ndarray], float]
  lower_is_better: bool = True


def _version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def brisque() -> Baseline:
  """BRISQUE from the `brisque` package, with the NumPy 2 shim of its `scale_features`."""
  try:
    from brisque import BRISQUE  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"BRISQUE needs the brisque, opencv-python-headless and "
                      f"libsvm-official packages ({e}); {INSTALL_HINT}") from e

  class Brisque(BRISQUE):
    def scale_features(self, features):
      return super().scale_features([np.asarray(f, np.float64).item() for f in features])

  model = Brisque(url=False)
  versions = {p: _version(p) for p in ("brisque", "libsvm-official", "opencv-python-headless")}
  return Baseline(
      name="BRISQUE", key="brisque==" + ",".join(versions.values()),
      packages=(f"brisque {versions['brisque']} (libsvm-official "
                f"{versions['libsvm-official']}, opencv-python-headless "
                f"{versions['opencv-python-headless']})"),
      score_frame=lambda frame: float(model.score(np.asarray(frame))))


def imresize(image: np.ndarray, scale: float) -> np.ndarray:
  """SciPy 1.2's `imresize(image, scale, interp='bicubic', mode='F')`: float[H, W] ->
  float32[floor(scale * H), floor(scale * W)] by Pillow's bicubic resize of a float32
  image (which low-pass filters when shrinking)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  height, width = image.shape
  size = (int(width * scale), int(height * scale))  # SciPy: (array(im.size) * s).astype(int)
  resized = Image.fromarray(np.asarray(image, np.float32)).resize(size, Image.BICUBIC)
  return np.asarray(resized, np.float32)


class _NumpyWithInt(types.ModuleType):
  """numpy, plus the `np.int` alias (= int) that skvideo's NIQE still uses."""
  int = int

  def __getattr__(self, name):
    return getattr(np, name)


def niqe() -> Baseline:
  """NIQE from scikit-video, with `scipy.misc.imresize` and `np.int` supplied to its module."""
  try:
    with warnings.catch_warnings():  # skvideo imports scipy.misc, deprecated: not our call
      warnings.simplefilter("ignore", DeprecationWarning)
      module = importlib.import_module("skvideo.measure.niqe")
      from skvideo import utils  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"NIQE needs scikit-video ({e}); install it with "
                      "`pip install -r requirements.txt`") from e
  import scipy.io  # pylint: disable=import-outside-toplevel
  import scipy.linalg  # pylint: disable=import-outside-toplevel
  module.np = _NumpyWithInt("numpy")
  module.scipy = types.SimpleNamespace(
      misc=types.SimpleNamespace(imresize=lambda image, scale, interp, mode: imresize(
          image, scale)),
      io=scipy.io, linalg=scipy.linalg)

  def score_frame(frame):
    height, width = frame.shape[:2]
    if min(height, width) < NIQE_MIN_SIDE:
      raise ValueError(f"NIQE needs frames of at least {NIQE_MIN_SIDE} x {NIQE_MIN_SIDE} "
                       f"pixels (scikit-video's 96-pixel patches at two scales), got "
                       f"{width}x{height}")
    luma = utils.rgb2gray(np.asarray(frame)[None])  # float [1, H, W, 1], BT.601 weights
    return float(module.niqe(luma)[0])

  version = _version("scikit-video")
  return Baseline(name="NIQE", key=f"niqe==scikit-video-{version}",
                  packages=f"scikit-video {version}", score_frame=score_frame)


BASELINES = dict(brisque=brisque, niqe=niqe)


def load(names) -> list[Baseline]:
  """The named baselines ('brisque', 'niqe'), ready to score; ImportError says what to
  install, ValueError names an unknown one."""
  unknown = [n for n in names if n not in BASELINES]
  if unknown:
    raise ValueError(f"unknown baseline(s) {unknown}; choose from {sorted(BASELINES)}")
  return [BASELINES[n]() for n in names]
