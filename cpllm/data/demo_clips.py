"""The demo's synthetic videos: photos from scikit-image's wheel, camera motion, known distortions.

Used by the `demo_videos` builder (data_builders/demo_videos) and, for its text, by
`quality_instructions`. Everything is seeded: the same ClipSpec gives the same clips,
labels and text.

Sources: the real photographs that ship inside scikit-image's wheel (PHOTOS; nothing is
downloaded). Grayscale photos are repeated into three channels. Left out: synthetic
images (colorwheel, logo, checkerboard, blobs, phantom, horse), `clock` (deliberately
motion blurred, so not pristine), `microaneurysms` and `lfw_subset` (too small), and the
images skimage would fetch with pooch (not available offline).

Clip (render_clip): the photo is resized (antialiased; `photo_scale`): by default it keeps
its native scale, shrunk only above a 480-pixel short side, as a video frame of that size
would show it (`scene_short`; None shrinks the photo until the clip's window fits 1.4 times
in its tighter direction, the dataset's 1.0.0 layout), then every frame samples a window
with cubic-spline interpolation at a sub-pixel position: a linear pan (15-40 % of the
clip's width over the clip), a linear zoom between 1.0 and 1.35 (in or out), and a shake
of two sinusoids per axis (0.4-1.2 output pixels). Consecutive frames therefore differ smoothly.

Distortions (Distortion.apply), each a separate record of its source:
  crf       libx264 at that CRF (video.encode_x264 of the lossless pristine clip)
  blur      Gaussian blur, sigma in output pixels, per frame
  noise     additive Gaussian noise, sigma in 8-bit code values, fresh every frame
  exposure  gain on the 8-bit code values, clipped: round(v * gain) (a gain of g is about
            g ** 2.2 in linear light); < 1 underexposes, > 1 overexposes
  stutter   perturb.repeat_frames: frames repeat and the rest follow late
  drop      perturb.drop_frames: frames are lost and the previous one is held
Non-compression variants (and the pristine clip) are stored losslessly (FFV1), so their
only distortion is the one named.

Labels (see `dimension_scores` and `mos_labels` for the exact functions):
  dimensions  1..5 per instructions.DIMENSIONS, from the KNOWN distortion parameter by
              monotone functions; a dimension the distortion does not touch is 5.0.
  mos         pseudo-MOS from VMAF against the pristine clip (pristine = 5.0) for
              compression and blur; for distortions VMAF misjudges, the affected
              dimension's score (see mos_labels for the rule and the measurements).
  description instructions.chain_of_thought(dimensions, mos), seeded per record.

Also here: `sig_instructions` (the SIG instruction records of quality_instructions),
`demo_texts` (everything the demo tokenizer is trained on) and `tokenizer_path` (where
demo_videos stores that tokenizer).
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from cpllm.data import build_utils
from cpllm.data import features
from cpllm.data import instructions
from cpllm.data import perturb
from cpllm.data import video

# ---------------------------------------------------------------------------------------
# Sources


def _skimage(name: str, gray: bool = False, index: int | None = None):
  def load() -> np.ndarray:
    import skimage.data  # pylint: disable=import-outside-toplevel
    image = getattr(skimage.data, name)()
    if index is not None:
      image = image[index]
    image = np.asarray(image)
    if image.dtype != np.uint8:  # the phantom is float in [0, 1]
      import skimage.util  # pylint: disable=import-outside-toplevel
      image = skimage.util.img_as_ubyte(image)
    if gray:
      image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])
  return load


# name -> loader of uint8[H, W, 3]. The name is the record's source_id.
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    # colour photographs
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "motorcycle_left": _skimage("stereo_motorcycle", index=0),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "retina": _skimage("retina"),
    # grayscale photographs, as RGB
    "camera": _skimage("camera", gray=True),
    "moon": _skimage("moon", gray=True),
    "coins": _skimage("coins", gray=True),
    "brick": _skimage("brick", gray=True),
    "grass": _skimage("grass", gray=True),
    "gravel": _skimage("gravel", gray=True),
    "cell": _skimage("cell", gray=True),
    "page": _skimage("page", gray=True),
    "text": _skimage("text", gray=True),
}
# Smooth by nature, for `ClipSpec.train_only` (not in the default sources, so the default
# build and its split are unchanged): scikit-image's colour wheel (hue and saturation
# gradients) and Shepp-Logan phantom (flat regions, sharp edges). A no-reference model can
# only tell a smooth scene from a blurred one by having seen smooth ones labelled pristine.
SMOOTH_PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "colorwheel": _skimage("colorwheel"),
    "phantom": _skimage("shepp_logan_phantom", gray=True),
}


def load_photo(name: str) -> np.ndarray:
  """uint8[H, W, 3] of one of PHOTOS or SMOOTH_PHOTOS."""
  known = {**PHOTOS, **SMOOTH_PHOTOS}
  if name not in known:
    raise ValueError(f"unknown demo photo {name!r}; known: {sorted(known)}")
  return known[name]()


def stable_seed(*parts) -> list[int]:
  """Seed sequence for np.random.default_rng from ints and strings (crc32, not hash())."""
  return [p if isinstance(p, int) else zlib.crc32(str(p).encode()) for p in parts]


# ---------------------------------------------------------------------------------------
# Camera motion

PRESCALE = 1.4  # the window at zoom 1 fits this many times in the photo's tighter direction
ZOOM_RANGE = (1.0, 1.35)


@dataclasses.dataclass(frozen=True)
class Motion:
  """A camera path in the resized photo's pixel coordinates (y, x).

  The window centre moves linearly from `start` to `end`, the zoom (output pixels per
  photo pixel) linearly from `zoom[0]` to `zoom[1]`, and a shake is added in output pixels:
  amplitude * (0.7 sin(2 pi f1 u + p1) + 0.3 sin(2 pi f2 u + p2)) per axis, u in [0, 1].
  """
  start: tuple[float, float]
  end: tuple[float, float]
  zoom: tuple[float, float]
  shake_amplitude: float
  shake_freqs: tuple[tuple[float, float], tuple[float, float]]  # (y: f1, f2), (x: f1, f2)
  shake_phases: tuple[tuple[float, float], tuple[float, float]]

  def path(self, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(centres float[T, 2] before clamping, zooms float[T])."""
    u = np.linspace(0.0, 1.0, num_frames)
    zooms = self.zoom[0] + (self.zoom[1] - self.zoom[0]) * u
    centres = np.asarray(self.start) + np.outer(u, np.subtract(self.end, self.start))
    for axis in range(2):
      (f1, f2), (p1, p2) = self.shake_freqs[axis], self.shake_phases[axis]
      shake = self.shake_amplitude * (0.7 * np.sin(2 * np.pi * f1 * u + p1)
                                      + 0.3 * np.sin(2 * np.pi * f2 * u + p2))
      centres[:, axis] += shake / zooms  # output pixels -> photo pixels
    return centres, zooms


def random_motion(rng: np.random.Generator, photo_hw: tuple[int, int],
                  out_hw: tuple[int, int]) -> Motion:
  """A pan + zoom + shake that keeps the window inside a photo of size photo_hw."""
  (ph, pw), (h, w) = photo_hw, out_hw
  lo = np.array([(h - 1) / 2 + 2, (w - 1) / 2 + 2])  # largest window (zoom 1) + shake room
  hi = np.array([ph - 1 - lo[0], pw - 1 - lo[1]])
  start = rng.uniform(lo, hi)
  angle = rng.uniform(0, 2 * np.pi)
  distance = rng.uniform(0.15, 0.40) * w
  end = np.clip(start + distance * np.array([np.sin(angle), np.cos(angle)]), lo, hi)
  z = rng.uniform(*ZOOM_RANGE, size=2)
  if abs(z[1] - z[0]) < 0.1:  # always some zoom
    z = np.array(ZOOM_RANGE) if z[0] < z[1] else np.array(ZOOM_RANGE[::-1])
  return Motion(
      start=tuple(start), end=tuple(end), zoom=tuple(float(v) for v in z),
      shake_amplitude=float(rng.uniform(0.4, 1.2)),
      shake_freqs=tuple(tuple(float(v) for v in rng.uniform((1.0, 3.0), (2.5, 6.0)))
                        for _ in range(2)),
      shake_phases=tuple(tuple(float(v) for v in rng.uniform(0, 2 * np.pi, 2))
                         for _ in range(2)))


def photo_scale(photo_hw: tuple[int, int], out_hw: tuple[int, int],
                scene_short: int | None) -> float:
  """Resize factor of a photo before the window pans over it.

  scene_short None: the window fits PRESCALE times in the photo's tighter direction, so a
  512-pixel photo shrinks ~3x into a 120 x 160 clip (every pixel dense with detail).
  scene_short S: the photo keeps its native scale, shrunk only when its short side is
  above S (a frame of a video S pixels high) and enlarged only as far as the moving window
  needs; the clip is then a window of a scene at a video's resolution, with the per-pixel
  detail of one (#15). e.g. (512, 512), (120, 160), 480 -> 0.9375; (172, 448) -> 1.0.
  """
  (ph, pw), (h, w) = photo_hw, out_hw
  fit = PRESCALE * max(h / ph, w / pw)
  if scene_short is None:
    return fit
  return max(fit, min(1.0, scene_short / min(ph, pw)))


def prescale_photo(photo: np.ndarray, out_hw: tuple[int, int],
                   scene_short: int | None = None) -> np.ndarray:
  """float32[H', W', 3] in 0..255: the photo resized (antialiased) by `photo_scale`."""
  import skimage.transform  # pylint: disable=import-outside-toplevel
  (ph, pw), (h, w) = photo.shape[:2], out_hw
  scale = photo_scale((ph, pw), out_hw, scene_short)
  size = (max(round(ph * scale), h + 6), max(round(pw * scale), w + 6))
  resized = skimage.transform.resize(photo.astype(np.float32), size + (3,), order=1,
                                     anti_aliasing=scale < 1, preserve_range=True)
  return resized.astype(np.float32)


def render_clip(photo: np.ndarray, out_hw: tuple[int, int], num_frames: int,
                rng: np.random.Generator, scene_short: int | None = None) -> np.ndarray:
  """uint8[T, h, w, 3]: the photo (scaled by `photo_scale`) seen by a panning, zooming,
  shaking camera."""
  import scipy.ndimage  # pylint: disable=import-outside-toplevel
  if num_frames < 2:
    raise ValueError(f"a clip needs at least 2 frames, got {num_frames}")
  h, w = out_hw
  image = prescale_photo(photo, out_hw, scene_short)
  ph, pw = image.shape[:2]
  centres, zooms = random_motion(rng, (ph, pw), out_hw).path(num_frames)
  coeffs = [scipy.ndimage.spline_filter(image[..., c], order=3, mode="nearest")
            for c in range(3)]
  gy, gx = np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2
  frames = np.empty((num_frames, h, w, 3), np.uint8)
  for t in range(num_frames):
    half = np.array([(h - 1) / 2, (w - 1) / 2]) / zooms[t]
    cy, cx = np.clip(centres[t], half, np.array([ph - 1, pw - 1]) - half)
    ys, xs = np.meshgrid(cy + gy / zooms[t], cx + gx / zooms[t], indexing="ij")
    for c in range(3):
      values = scipy.ndimage.map_coordinates(coeffs[c], [ys, xs], order=3, mode="nearest",
                                             prefilter=False)
      frames[t, ..., c] = np.clip(np.rint(values), 0, 255)
  return frames


# ---------------------------------------------------------------------------------------
# Distortions (uint8[T, H, W, 3] -> uint8[T, H, W, 3])


def _to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def gaussian_blur(frames: np.ndarray, sigma: float) -> np.ndarray:
  """Spatial Gaussian blur of every frame (sigma in pixels; edges repeat)."""
  import scipy.ndimage  # pylint: disable=import-outside-toplevel
  if sigma < 0:
    raise ValueError(f"blur sigma must be >= 0, got {sigma}")
  if sigma == 0:
    return np.array(frames, np.uint8)
  out = scipy.ndimage.gaussian_filter(np.asarray(frames, np.float32), (0, sigma, sigma, 0),
                                      mode="nearest")
  return _to_uint8(out)


def gaussian_noise(frames: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
  """Adds N(0, sigma^2) (8-bit code values) independently per pixel, channel and frame."""
  if sigma < 0:
    raise ValueError(f"noise sigma must be >= 0, got {sigma}")
  frames = np.asarray(frames, np.float32)
  return _to_uint8(frames + rng.normal(0.0, sigma, frames.shape).astype(np.float32))


def exposure(frames: np.ndarray, gain: float = 1.0, gamma: float = 1.0) -> np.ndarray:
  """round(255 * (v / 255) ** gamma * gain), clipped to 0..255 (gain=2: 100 -> 200, 200 -> 255)."""
  if not (gain > 0 and gamma > 0):
    raise ValueError(f"exposure gain and gamma must be positive, got {gain}, {gamma}")
  v = np.asarray(frames, np.float64)
  if gamma != 1.0:
    v = 255.0 * (v / 255.0) ** gamma
  return _to_uint8(v * gain)


def stutter(frames: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
  """perturb.repeat_frames: round(strength * (T-1)) stalls, the rest follows late."""
  return perturb.repeat_frames(frames, rng, strength)[0]


def drop_frames(frames: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
  """perturb.drop_frames: round(strength * (T-1)) frames lost, the previous one held."""
  return perturb.drop_frames(frames, rng, strength)[0]


KINDS = ("pristine", "crf", "blur", "noise", "exposure", "stutter", "drop")
_NAME_PREFIX = {"crf": "crf", "blur": "blur", "noise": "noise", "exposure": "gain",
                "stutter": "stutter", "drop": "drop"}


@dataclasses.dataclass(frozen=True)
class Distortion:
  """One known distortion: kind (see KINDS) and its parameter (CRF, sigma, gain, strength).

  `grain` (kind 'crf' only): the noise sigma of the clip that is encoded, i.e. a CRF rung
  of the grainy ladder (ClipSpec.grain_sigma) instead of the pristine one.
  """
  kind: str
  value: float = 0.0
  grain: float = 0.0

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"unknown distortion kind {self.kind!r}; expected one of {KINDS}")
    if self.grain and self.kind != "crf":
      raise ValueError(f"grain is a property of a CRF rung, not of {self.kind!r}")

  @property
  def name(self) -> str:
    """Variant name in the record id: 'pristine', 'crf31', 'blur1.5', 'gain0.6',
    'noise5_crf31' (a rung of the grainy ladder), ..."""
    if self.kind == "pristine":
      return "pristine"
    name = f"{_NAME_PREFIX[self.kind]}{self.value:g}"
    return f"{self.ladder}_{name}" if self.grain else name

  @property
  def ladder(self) -> str:
    """Which CRF ladder a rung belongs to: '' (of the pristine clip) or the name of the
    noise variant it encodes, e.g. 'noise5'."""
    return Distortion("noise", self.grain).name if self.grain else ""

  def apply(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The distorted frames (not for 'crf': compression happens in the encoder)."""
    if self.kind == "pristine":
      return frames
    if self.kind == "blur":
      return gaussian_blur(frames, self.value)
    if self.kind == "noise":
      return gaussian_noise(frames, self.value, rng)
    if self.kind == "exposure":
      return exposure(frames, gain=self.value)
    if self.kind == "stutter":
      return stutter(frames, self.value, rng)
    if self.kind == "drop":
      return drop_frames(frames, self.value, rng)
    raise ValueError(f"{self.name}: compression is applied by the encoder, not apply()")


# ---------------------------------------------------------------------------------------
# Labels
#
# Dimension scores from the known parameter: 1 + 4 * exp(-x / scale) falls from 5 (x = 0)
# towards 1, monotonically; x is the distortion's strength on its own axis:
#   sharpness   blur sigma (px)                   scale 2.0: 0.8 -> 3.68, 1.6 -> 2.80, 3.2 -> 1.81
#   noise       noise sigma (8-bit code values)   scale 12:  5 -> 3.64, 10 -> 2.74, 20 -> 1.76
#   exposure    stops off in code values,         scale 1.0: gain 0.5 -> 2.47, 0.7 -> 3.39,
#               |log2 gain|, overexposure counted            1.4 -> 2.93, 2.0 -> 1.89
#               1.5x (clipped highlights are lost for good, dark shadows keep detail)
#   smoothness  stutter/drop strength (share of   scale 0.3: 0.15 -> 3.43, 0.3 -> 2.47
#               frames stalled or lost)
# Compression (libx264 CRF) follows a logistic curve, 1 + 4 / (1 + exp((crf - 40) / 4)):
#   21 -> 4.97, 31 -> 4.62, 37 -> 3.72, 41 -> 2.75, 45 -> 1.89, 51 -> 1.24,
# and heavy compression also smears detail: sharpness 5 - 1.5 * clip((crf - 35) / 16, 0, 1)
# (51 -> 3.5). Every other (dimension, distortion) pair is 5.0.
#
# Overall score (mos_labels): features.pseudo_mos(5.0, VMAF), i.e. 1 + 4 * VMAF / 100 with
# the pristine clip at 5.0, for the distortions VMAF was built to judge: compression and
# blur (its training set is compression and scaling artifacts). Across the default build
# this spreads the CRF ladder over the whole scale (mean VMAF 98 at CRF 21, 66 at 37, 8 at
# 51; blur 0.8 / 1.6 / 3.2: 82 / 46 / 6). For the other distortions VMAF measures
# something else than their visible quality, so their overall score is the known-parameter
# score of the one dimension they affect (the weakest dimension); VMAF is still measured
# and stored. Measured on the default build (17 sources):
#   exposure  overexposure is hardly penalised, even rewarded as contrast: gain 1.4 gives
#             VMAF >= 99.5 on 13 of 17 sources, gain 2.0 (half the range clipped) on 6;
#             underexposure is floored: gain 0.5 gives VMAF 0 on 13 sources ('worse'
#             than CRF 51, mean 8) although the picture is merely darker;
#   stutter   VMAF pairs frames by index, so every frame after a stall counts as a
#             misaligned frame: strength 0.15 gives mean VMAF 45 for stutter but 92 for
#             drops of the same share of frames;
#   noise     VMAF is lenient to added noise: sigma 20 (PSNR ~22 dB) gives mean VMAF 84,
#             i.e. 4.4, 'excellent'.
# The grainy ladder (ClipSpec.grain_sigma) encodes the noise variant's clip; a rung's score
# is features.pseudo_mos(noise score of that sigma, VMAF against the grainy clip), i.e. the
# grainy clip is its source with the noise variant's score (sigma 5: 3.64), and every rung
# is no better than it, although x264 smooths some of the grain away.
# Within a source the CRF ladder's VMAF is made monotone before mapping (a running minimum
# over rising CRF): near VMAF 0 and 100 it wobbles by up to ~2 points (e.g. brick CRF 49:
# 3.1, CRF 51: 5.2), and a higher CRF of the same source must never be labelled better.
# Scores are rounded to 2 decimals so the level that descriptions state matches the
# number a GRPO answer gives. A rounded score that lands exactly on a level edge (1.8,
# 2.6, 3.4, 4.2) is moved 0.01 to the side of its unrounded value: records store float32,
# and float32(3.4) = 3.4000001 would read back as 'good' where the text says 'fair'.

MOS_RULE = ("pristine 5.0; crf and blur: 1 + 4 * VMAF / 100 (VMAF a running minimum along "
            "the CRF ladder); exposure, noise, stutter, drop: the affected dimension's "
            "known-parameter score; grainy CRF ladder: 1 + (noise score - 1) * VMAF / 100 "
            "against the grainy clip; 2 decimals")

DIM_SCALES = {"blur": 2.0, "noise": 12.0, "exposure": 1.0, "smoothness": 0.3}
OVEREXPOSURE_WEIGHT = 1.5
CRF_MID, CRF_WIDTH = 40.0, 4.0
VMAF_KINDS = ("crf", "blur")  # overall score from VMAF; the others from their dimension


def _decay(x: float, scale: float) -> float:
  return 1.0 + 4.0 * math.exp(-max(float(x), 0.0) / scale)


def dimension_scores(distortion: Distortion) -> dict[str, float]:
  """{dimension: 1..5} for every features.DIMENSIONS entry, from the known parameter."""
  dims = {name: 5.0 for name in features.DIMENSIONS}
  kind, v = distortion.kind, float(distortion.value)
  if kind == "crf":
    dims["compression"] = 1.0 + 4.0 / (1.0 + math.exp((v - CRF_MID) / CRF_WIDTH))
    dims["sharpness"] = 5.0 - 1.5 * min(max((v - 35.0) / 16.0, 0.0), 1.0)
    if distortion.grain:  # the grain that was encoded (compression smooths some of it)
      dims["noise"] = _decay(distortion.grain, DIM_SCALES["noise"])
  elif kind == "blur":
    dims["sharpness"] = _decay(v, DIM_SCALES["blur"])
  elif kind == "noise":
    dims["noise"] = _decay(v, DIM_SCALES["noise"])
  elif kind == "exposure":
    stops = math.log2(v)
    dims["exposure"] = _decay(abs(stops) * (OVEREXPOSURE_WEIGHT if stops > 0 else 1.0),
                              DIM_SCALES["exposure"])
  elif kind in ("stutter", "drop"):
    dims["smoothness"] = _decay(v, DIM_SCALES["smoothness"])
  return dims


def mos_labels(distortions: Sequence[Distortion], vmafs: Sequence[float]) -> list[float]:
  """Overall 1..5 scores (2 decimals) of one source's variants, by the rule above.

  >>> mos_labels([Distortion("pristine"), Distortion("crf", 21), Distortion("crf", 23),
  ...             Distortion("noise", 10.0)], [99.9, 90.0, 91.0, 95.0])
  [5.0, 4.6, 4.6, 2.74]
  """
  if len(distortions) != len(vmafs):
    raise ValueError(f"{len(distortions)} distortions but {len(vmafs)} VMAF values")
  for d, v in zip(distortions, vmafs):
    if d.kind in VMAF_KINDS and not math.isfinite(v):
      raise ValueError(f"{d.name}: VMAF {v} is not finite")
  effective = list(map(float, vmafs))
  for name in {d.ladder for d in distortions if d.kind == "crf"}:
    ladder = sorted((d.value, i) for i, d in enumerate(distortions)
                    if d.kind == "crf" and d.ladder == name)
    running = math.inf
    for _, i in ladder:
      running = min(running, effective[i])
      effective[i] = running
  out = []
  for d, v in zip(distortions, effective):
    if d.kind == "pristine":
      out.append(5.0)
    elif d.grain:  # VMAF against the grainy clip, whose own score is its noise score
      out.append(round_score(features.pseudo_mos(dimension_scores(d)["noise"], v)))
    elif d.kind in VMAF_KINDS:
      out.append(round_score(features.pseudo_mos(5.0, v)))
    else:
      out.append(round_score(min(dimension_scores(d).values())))
  return out


def round_score(score: float) -> float:
  """2 decimals, never exactly on a level edge: 3.398 -> 3.39 (fair), 3.403 -> 3.41 (good)."""
  rounded = round(float(score), 2)
  if rounded in instructions.LEVEL_EDGES:  # levels are closed on the right
    rounded = round(rounded - 0.01 if score <= rounded else rounded + 0.01, 2)
  return rounded


# ---------------------------------------------------------------------------------------
# Records


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """What demo_videos builds (mirrored by its BuilderConfig)."""
  sources: tuple[str, ...] = tuple(PHOTOS)
  portrait: tuple[str, ...] = ("rocket", "astronaut")  # clips of width x height swapped
  height: int = 120
  width: int = 160
  clip_frames: int = 24  # T, frames of every clip
  fps: float = 24.0
  num_frames: int = 8  # M, key frames stored per record
  # None: the whole photo shrinks into the clip; S: the clip is a window of the photo at
  # the scale of a video S pixels high (photo_scale).
  scene_short: int | None = 480
  crfs: tuple[int, ...] = tuple(range(13, 52, 2))
  blur_sigmas: tuple[float, ...] = (0.8, 1.6, 3.2)
  noise_sigmas: tuple[float, ...] = (5.0, 10.0, 20.0)
  exposure_gains: tuple[float, ...] = (0.5, 0.7, 1.4, 2.0)
  stutter_strengths: tuple[float, ...] = (0.15, 0.3)
  drop_strengths: tuple[float, ...] = (0.15, 0.3)
  # S: a second CRF ladder encoded from the noise-S variant's clip, so the score sees
  # compression smooth grain away and still count it as a loss (real sources carry grain).
  # None (the demo): measured no better (README, #15's `grain` row).
  grain_sigma: float | None = None
  grain_crfs: tuple[int, ...] = tuple(range(13, 50, 4))
  test_share: float = 0.25
  seed: int = 0
  # Sources that go to `train` whatever the split of `sources` (which they leave unchanged),
  # from PHOTOS or SMOOTH_PHOTOS.
  train_only: tuple[str, ...] = ()

  def __post_init__(self):
    unknown = sorted(set(self.sources) - set(PHOTOS))
    if unknown or not self.sources:
      raise ValueError(f"unknown or no demo sources {unknown}; known: {sorted(PHOTOS)}")
    extra = sorted(set(self.train_only) - set(PHOTOS) - set(SMOOTH_PHOTOS)
                   | set(self.train_only) & set(self.sources))
    if extra:
      raise ValueError(f"train_only sources {extra} are unknown or already in sources; "
                       f"known: {sorted({**PHOTOS, **SMOOTH_PHOTOS})}")
    if self.clip_frames < 2 or self.num_frames < 1:
      raise ValueError(f"a clip needs >= 2 frames and >= 1 key frame; got clip_frames="
                       f"{self.clip_frames}, num_frames={self.num_frames}")
    if self.scene_short is not None and self.scene_short < max(self.height, self.width):
      raise ValueError(f"scene_short {self.scene_short} is smaller than the "
                       f"{self.width}x{self.height} clip it should contain")
    if self.height < 16 or self.width < 16:
      raise ValueError(f"clips of {self.width}x{self.height} are too small (min 16x16)")
    bad = [c for c in self.crfs + self.grain_crfs if not 0 <= c <= video.X264_MAX_CRF]
    if bad:
      raise ValueError(f"CRFs {bad} are outside libx264's 0..{video.X264_MAX_CRF}")
    for crfs in (self.crfs, self.grain_crfs):
      if len(set(crfs)) != len(crfs):
        raise ValueError(f"duplicate CRFs in {crfs}")
    if self.grain_sigma is not None and self.grain_sigma not in self.noise_sigmas:
      raise ValueError(f"grain_sigma {self.grain_sigma} must be one of noise_sigmas "
                       f"{self.noise_sigmas}: the grainy ladder encodes that variant")

  def split(self) -> tuple[list[str], list[str]]:
    """(train, test) sources: `sources` split by build_utils.seeded_split, then the
    train_only ones added to train."""
    train, test = build_utils.seeded_split(list(self.sources), self.test_share, self.seed)
    return train + list(self.train_only), test

  def distortions(self) -> list[Distortion]:
    return ([Distortion("pristine")]
            + [Distortion("crf", int(c)) for c in self.crfs]
            + [Distortion("blur", s) for s in self.blur_sigmas]
            + [Distortion("noise", s) for s in self.noise_sigmas]
            + [Distortion("exposure", g) for g in self.exposure_gains]
            + [Distortion("stutter", s) for s in self.stutter_strengths]
            + [Distortion("drop", s) for s in self.drop_strengths]
            + ([Distortion("crf", int(c), grain=self.grain_sigma) for c in self.grain_crfs]
               if self.grain_sigma else []))

  def clip_size(self, source: str) -> tuple[int, int]:
    """(height, width) of a source's clip: portrait sources have them swapped."""
    hw = (self.height, self.width)
    return hw[::-1] if source in self.portrait else hw


def source_records(source: str, spec: ClipSpec, workdir: str) -> list[dict]:
  """Every record (features.video_features layout) of one source, pristine first.

  Writes the pristine clip and each variant under `workdir`; the caller deletes it.
  """
  os.makedirs(workdir, exist_ok=True)
  out_hw = spec.clip_size(source)
  clip = render_clip(load_photo(source), out_hw, spec.clip_frames,
                     np.random.default_rng(stable_seed(spec.seed, source, "motion")),
                     spec.scene_short)
  reference = os.path.join(workdir, "pristine.mkv")
  video.write_video(clip, reference, spec.fps, lossless=True)
  distortions = spec.distortions()
  measured = []
  references = {"": reference}  # Distortion.ladder -> the clip its CRF rungs encode
  for distortion in distortions:
    rng = np.random.default_rng(stable_seed(spec.seed, source, distortion.name))
    source_clip = references[distortion.ladder] if distortion.kind == "crf" else reference
    if distortion.kind == "pristine":
      path = reference
    elif distortion.kind == "crf":
      path = os.path.join(workdir, f"{distortion.name}.mp4")
      video.encode_x264(source_clip, path, distortion.value)
    else:
      path = os.path.join(workdir, f"{distortion.name}.mkv")
      video.write_video(distortion.apply(clip, rng), path, spec.fps, lossless=True)
      if distortion.kind == "noise":  # 'noise5': also the name of its grainy ladder
        references[distortion.name] = path
    key_frames, info = video.read_key_frames(path, spec.num_frames)  # of the final clip
    if info.num_frames != spec.clip_frames or key_frames.shape[1:3] != out_hw:
      raise video.VideoError(f"{path}: read back {info.num_frames} frames of "
                             f"{key_frames.shape[1:3]}, made {spec.clip_frames} of {out_hw}")
    measured.append((video.quality_metrics(source_clip, path), key_frames,
                     video.bitrate_kbps(path)))
  labels = mos_labels(distortions, [m[0]["vmaf"] for m in measured])
  records = []
  for distortion, mos, (metrics, key_frames, kbps) in zip(distortions, labels, measured):
    record_id = f"{source}/{distortion.name}"
    # The text is made from the float32 values the record stores, so that a reader that
    # derives levels from the stored scores always agrees with it.
    dim_values = np.array([dimension_scores(distortion)[d] for d in features.DIMENSIONS],
                          np.float32)
    dims = {d: float(v) for d, v in zip(features.DIMENSIONS, dim_values)}
    rng = np.random.default_rng(stable_seed(spec.seed, record_id, "description"))
    record = features.empty_measurements()
    record.update(
        # A grainy rung is a variant of the grainy clip: its own source for CRF pairs.
        id=record_id, source_id=f"{source}+{distortion.ladder}" if distortion.grain else source,
        frames=key_frames, mos=mos,
        is_original=True,  # every demo video carries a trusted (known) label
        crf=int(distortion.value) if distortion.kind == "crf" else features.NO_CRF,
        vmaf=metrics["vmaf"], ssim=metrics["ssim"], psnr=metrics["psnr"],
        # fps and duration as made (Matroska's millisecond timestamps would give 24.02 fps)
        bitrate_kbps=kbps, fps=spec.fps, duration=spec.clip_frames / spec.fps,
        height=out_hw[0], width=out_hw[1],
        dimensions=dim_values,
        description=instructions.chain_of_thought(dims, mos, rng=rng))
    records.append(record)
  return records


# ---------------------------------------------------------------------------------------
# Instruction records (SIG text over labelled videos), shared by quality_instructions and
# the demo tokenizer.

# The paper's annotation prompt (three-sentence content / style / quality summary).
ANNOTATION_PROMPT = (
    "Based on the provided video frames, create a three-sentence summary. First, describe "
    "the visual content of the video in detail. Second, identify the style of the video. "
    "Third, assess the technical quality.")

SIG_KINDS = ("describe", "yes_no", "weakest", "compare", "level", "grpo")
INSTRUCTION_KINDS = SIG_KINDS + ("annotation", "llava")


def stored_score(value) -> float:
  """A score read back from a float32 field as the decimal it was written from:
  float32(3.42) = 3.4200000762939453 -> 3.42 (the shortest text that is that float32)."""
  return float(str(np.float32(value)))


@dataclasses.dataclass(frozen=True)
class LabelledVideo:
  """What SIG needs of a video: its scores (dims holds only the known dimensions)."""
  id: str
  source_id: str
  mos: float
  dims: Mapping[str, float]

  @classmethod
  def from_record(cls, record: Mapping) -> "LabelledVideo":
    """From a features.video_features record (dimension NaNs are dropped)."""
    text = lambda v: v.decode() if isinstance(v, bytes) else str(v)
    dims = {name: float(v) for name, v in zip(features.DIMENSIONS, record["dimensions"])
            if math.isfinite(float(v))}
    return cls(text(record["id"]), text(record["source_id"]), stored_score(record["mos"]),
               dims)


@dataclasses.dataclass(frozen=True)
class Instruction:
  id: str
  kind: str
  prompt: str
  answer: str
  other_id: str = ""


def sig_instructions(videos: Sequence[LabelledVideo], seed: int) -> Iterator[Instruction]:
  """One instruction of each SIG kind per video (kinds that need dimensions are left out
  for videos without them). The comparison partner is another video of the same source
  when there is one (for even-numbered videos in id order), else any other video; all
  choices and templates are seeded per video id, so the text does not depend on order.
  """
  videos = sorted(videos, key=lambda v: v.id)
  by_source: dict[str, list[LabelledVideo]] = {}
  for v in videos:
    by_source.setdefault(v.source_id, []).append(v)
  for n, v in enumerate(videos):
    rng = np.random.default_rng(stable_seed(seed, v.id, "sig"))
    prompt, answer = instructions.describe(v.dims, v.mos, rng=rng)
    yield Instruction(v.id, "describe", prompt, answer)
    if v.dims:
      yield Instruction(v.id, "yes_no", *instructions.yes_no(v.dims, rng=rng))
    if len(v.dims) >= 2:
      yield Instruction(v.id, "weakest", *instructions.weakest_dimension(v.dims, rng=rng))
    yield Instruction(v.id, "level", instructions.LEVEL_PROMPT,
                      instructions.level_answer(v.mos))
    yield Instruction(v.id, "grpo", instructions.GRPO_PROMPT,
                      instructions.grpo_target(v.dims, v.mos, rng=rng))
    same = [o for o in by_source[v.source_id] if o.id != v.id]
    pool = same if same and n % 2 == 0 else [o for o in videos if o.id != v.id]
    if pool:
      other = pool[rng.integers(len(pool))]
      shared = sorted(set(v.dims) & set(other.dims))
      pick = lambda d: {k: d[k] for k in shared}
      prompt, answer = instructions.compare(pick(v.dims), v.mos, pick(other.dims), other.mos,
                                            rng=rng)
      yield Instruction(v.id, "compare", prompt, answer, other.id)


def demo_texts(records: Iterable[Mapping], seed: int) -> Iterator[str]:
  """Every kind of text the demo produces, for training its tokenizer: descriptions, SIG
  prompts and answers (incl. comparisons, the level prompt with its answers and the GRPO
  prompt and targets), the annotation prompt, and a sweep of every level of every
  dimension so that no template or level word is missing.
  """
  videos = []
  for r in records:
    if r.get("description"):
      yield str(r["description"])
    videos.append(LabelledVideo.from_record(r))
  for inst in sig_instructions(videos, seed):
    yield f"{inst.prompt}{inst.answer}" if inst.kind == "level" else inst.prompt
    yield inst.answer
  yield ANNOTATION_PROMPT
  rng = np.random.default_rng(stable_seed(seed, "sweep"))
  for centre in instructions.LEVEL_CENTRES:
    yield instructions.LEVEL_PROMPT + instructions.level_answer(centre)
    for name in features.DIMENSIONS:
      for _ in range(4):
        yield instructions.chain_of_thought({name: centre}, centre, rng=rng)
        yield " ".join(instructions.yes_no({name: centre}, rng=rng))


TOKENIZER_FILE = "tokenizer.model"


def tokenizer_path(data_dir: str, config: str = "default", version: str | None = None
                   ) -> str:
  """Path of the demo tokenizer that demo_videos stores in its version directory.

  `data_dir` is either the TFDS data_dir (then `demo_videos/<config>/<version>` is looked
  up; the newest version when `version` is None) or a dataset version directory itself.
  Raises FileNotFoundError when it is not there.
  """
  from etils import epath  # pylint: disable=import-outside-toplevel
  root = epath.Path(data_dir)
  if (root / TOKENIZER_FILE).exists():
    return os.fspath(root / TOKENIZER_FILE)
  config_dir = root / "demo_videos" / config
  if version is None:
    def key(p):
      try:
        return tuple(int(x) for x in p.name.split("."))
      except ValueError:
        return None
    versions = sorted((p for p in config_dir.glob("*") if key(p) is not None
                       and (p / TOKENIZER_FILE).exists()), key=key) if config_dir.exists() else []
    if not versions:
      raise FileNotFoundError(f"no built demo_videos/{config} with a {TOKENIZER_FILE} under "
                              f"{data_dir}; run `tfds build data_builders/demo_videos`")
    return os.fspath(versions[-1] / TOKENIZER_FILE)
  path = config_dir / version / TOKENIZER_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist; run `tfds build data_builders/demo_videos`")
  return os.fspath(path)
