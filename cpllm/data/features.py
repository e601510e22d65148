"""The record layout shared by the video builders and read by the pipeline.

Every video record (mos_videos, crf_variants, demo_videos) has the same features, so one
pipeline reads them all. Key frames are stored as PNG (lossless: a quality model must not
learn JPEG's artifacts). Scores live on the 1..5 scale; each dataset's native MOS range is
mapped linearly (`to_unit_scale`) and the native value is kept in `mos_native`.

Unknown measurements are NaN, never 0: a NaN VMAF says "not measured", 0 would say "awful".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from cpllm.data import instructions

DIMENSIONS = tuple(instructions.DIMENSIONS)  # ('sharpness', 'noise', ...)
NO_CRF = -1  # `crf` of a record that is not a compression variant

# Native MOS ranges of the supported subjective datasets (low, high).
MOS_RANGES = {
    "lsvq": (0.0, 100.0),
    "konvid": (1.0, 5.0),
    "livevqc": (0.0, 100.0),
    "ytugc": (1.0, 5.0),
    "unit": (1.0, 5.0),
}


def to_unit_scale(mos: float, native_range: tuple[float, float]) -> float:
  """Linear map of a native MOS onto 1..5: e.g. LSVQ's 0..100 -> 1 + 4 * mos / 100."""
  low, high = native_range
  if not (math.isfinite(mos) and low <= mos <= high):
    raise ValueError(f"MOS {mos} is outside the dataset's range [{low}, {high}]")
  return 1.0 + 4.0 * (mos - low) / (high - low)


def pseudo_mos(source_mos: float, vmaf: float) -> float:
  """Pseudo-MOS of a compressed variant: 1 + (source_mos - 1) * clip(vmaf, 0, 100) / 100.

  A variant can be no better than its source (VMAF 100 keeps the source's MOS) and falls
  towards 1 as VMAF falls; a pristine source without a MOS counts as 5.0.
  """
  return 1.0 + (source_mos - 1.0) * min(max(vmaf, 0.0), 100.0) / 100.0


def intact(dims, names: Sequence[str]):
  """Where none of the named dimensions is known to be degraded: bool[...] of float
  dims[..., len(DIMENSIONS)] (below 5 is degraded; NaN, unknown, counts as intact).
  NumPy or JAX arrays; no names: all True.

  e.g. exposure [5.0, 2.9, nan], names ('exposure',) -> [True, False, True].
  """
  unknown = [n for n in names if n not in DIMENSIONS]
  if unknown:
    raise ValueError(f"unknown quality dimension(s) {unknown}; known: {list(DIMENSIONS)}")
  out = np.ones(dims.shape[:-1], bool)
  for name in names:
    out = out & ~(dims[..., DIMENSIONS.index(name)] < 5.0)
  return out


def video_features(num_frames: int) -> tfds.features.FeaturesDict:
  """Features of one video record with `num_frames` key frames of any size."""
  f32 = lambda doc: tfds.features.Scalar(np.float32, doc=doc)
  i32 = lambda doc: tfds.features.Scalar(np.int32, doc=doc)
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(doc="unique id (dataset-relative path without extension)"),
      "source_id": tfds.features.Text(doc="shared by all variants of one source video"),
      "frames": tfds.features.Video((num_frames, None, None, 3), encoding_format="png",
                                    doc="key frames at segment centres, PNG"),
      "mos": f32("quality on 1..5: subjective MOS, or pseudo-MOS for variants"),
      "mos_native": f32("MOS on the dataset's own scale (NaN for pseudo-MOS)"),
      "is_original": tfds.features.Scalar(np.bool_, doc="an unprocessed video with a real MOS"),
      "crf": i32(f"libx264 CRF of a compression variant, {NO_CRF} otherwise"),
      "vmaf": f32("VMAF (vmaf_v0.6.1) against the source, NaN if not measured"),
      "ssim": f32("SSIM against the source, NaN if not measured"),
      "psnr": f32("PSNR (dB) against the source, NaN if not measured"),
      "bitrate_kbps": f32("video bitrate of the stored/encoded file, NaN if unknown"),
      "fps": f32("frames per second (average for variable frame rate)"),
      "duration": f32("seconds"),
      "height": i32("displayed height of the source frames"),
      "width": i32("displayed width of the source frames"),
      "dimensions": tfds.features.Tensor(shape=(len(DIMENSIONS),), dtype=np.float32,
                                         doc=f"scores 1..5 of {DIMENSIONS}, NaN if unknown"),
      "description": tfds.features.Text(doc="quality description ('' if none)"),
  })


def empty_measurements() -> dict:
  """The optional fields of a record, all 'not measured'."""
  nan = float("nan")
  return dict(mos_native=nan, crf=NO_CRF, vmaf=nan, ssim=nan, psnr=nan, bitrate_kbps=nan,
              dimensions=np.full((len(DIMENSIONS),), np.nan, np.float32), description="")
