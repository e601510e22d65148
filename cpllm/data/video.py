"""Video I/O and frame preprocessing for both CP-LLM paths (pipeline, scoring, export).

Reading, key-frame sampling, encoding and quality metrics are at the end of this file (PyAV
and the ffmpeg binary of imageio-ffmpeg, both imported only when used).

The preprocessing is pure JAX: each function takes a frame array whose height and width are
static, so it runs on NumPy input, under jit, and inside a jax2tf export alike. Pixel values
stay in [0, 255] (float32); the model maps them to [-1, 1].

Context path: bilinear resize to R x R ignoring aspect.
Pixel path: aspect-preserving bilinear fit into a 540 x 1080 box (the box turns with a
portrait frame), then K non-overlapping P x P patches on a uniform grid. Example for a
1080 x 1920 frame, K = 8, P = 224: fit to 540 x 960, grid 2 x 4, rows start at y = 0, 316
and columns at x = 0, 245, 490, 736 (first and last patch touch the frame edges, equal gaps
in between). A frame too small for the grid is upscaled just enough; it is never padded.
"""

from __future__ import annotations

import bisect
import dataclasses
import fractions
import functools
import json
import math
import os
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np


def segment_centres(total: int, count: int) -> np.ndarray:
  """Indices of `count` picks among `total` items at segment centres, e.g. (8, 5) -> [0 2 4
  5 7], (5, 1) -> [2]: the rule for key frames, their subsets and decoder frames."""
  return ((np.arange(count) + 0.5) * total / count).astype(int)


def resize_bilinear(frames, height: int, width: int):
  """float32[..., H, W, 3] or uint8 -> float32[..., height, width, 3] (antialiased)."""
  frames = jnp.asarray(frames, jnp.float32)
  shape = frames.shape[:-3] + (height, width, frames.shape[-1])
  return jax.image.resize(frames, shape, method="bilinear", antialias=True)


def context_frames(frames, resolution: int):
  """Context-encoder input: [..., H, W, 3] -> float32[..., R, R, 3], aspect ignored."""
  return resize_bilinear(frames, resolution, resolution)


def fit_size(height: int, width: int, box: tuple[int, int] | None = (540, 1080)):
  """Size of a frame scaled (up or down) to fit the box, aspect preserved.

  `box` is (short, long): a landscape frame fits in short x long, a portrait one in
  long x short. >>> fit_size(1080, 1920) == (540, 960); fit_size(1920, 1080) == (960, 540)
  `box=None` keeps the native size: fit_size(720, 1280, None) == (720, 1280).
  """
  if box is None:
    return height, width
  short, long = box
  box_h, box_w = (short, long) if width >= height else (long, short)
  scale = min(box_h / height, box_w / width)
  return max(1, round(height * scale)), max(1, round(width * scale))


def patch_grid(height: int, width: int, num_patches: int, patch_size: int):
  """(rows, cols) with rows * cols = K for a frame of this size.

  Prefers a grid that fits without upscaling; among those (or if none fits, among the
  least-upscaling ones) the grid whose shape is closest to the frame's aspect.
  """
  candidates = []
  for rows in range(1, num_patches + 1):
    if num_patches % rows:
      continue
    cols = num_patches // rows
    upscale = max(rows * patch_size / height, cols * patch_size / width, 1.0)
    aspect_gap = abs(math.log((rows / cols) / (height / width)))
    candidates.append((round(upscale, 6), aspect_gap, rows, cols))
  _, _, rows, cols = min(candidates)
  return rows, cols


def _starts(length: int, count: int, patch_size: int):
  """Top-left offsets of `count` patches spread uniformly over `length` (no overlap)."""
  if count == 1:
    return [(length - patch_size) // 2]
  gap = length - count * patch_size
  return [i * patch_size + (i * gap) // (count - 1) for i in range(count)]


def tile_grid(height: int, width: int, patch_size: int, max_patches: int):
  """(rows, cols) of the non-overlapping patches that tile a height x width frame, thinned
  evenly in both directions (the aspect kept) to at most `max_patches`.

  e.g. 272 x 640 with patches of 32: (8, 20); with max_patches 40: (4, 10).
  """
  rows, cols = height // patch_size, width // patch_size
  if rows * cols > max_patches:
    shrink = math.sqrt(max_patches / (rows * cols))
    rows, cols = max(1, int(rows * shrink)), max(1, int(cols * shrink))
  return rows, cols


def patch_layout(height: int, width: int, num_patches: int, patch_size: int,
                 box: tuple[int, int] | None = (540, 1080), max_patches: int | None = None):
  """Resized frame size and the K patch corners for a source frame of height x width.

  With `box=None` patches are cut from the native frame (resized only if the grid does
  not fit), so compression artefacts reach the pixel encoder at the scale they were made.
  With `max_patches` (scoring) the patches tile the frame, up to that many (`tile_grid`),
  or form the `num_patches` grid where that holds more (a frame too small to tile).

  Returns ((H', W'), [(y, x), ...]) with every patch inside [0, H') x [0, W').
  """
  fit_h, fit_w = fit_size(height, width, box)
  rows, cols = patch_grid(fit_h, fit_w, num_patches, patch_size)
  if max_patches is not None:
    tiles = tile_grid(fit_h, fit_w, patch_size, max_patches)
    if tiles[0] * tiles[1] > rows * cols:
      rows, cols = tiles
  scale = max(rows * patch_size / fit_h, cols * patch_size / fit_w, 1.0)
  new_h = max(math.ceil(fit_h * scale - 1e-9), rows * patch_size)
  new_w = max(math.ceil(fit_w * scale - 1e-9), cols * patch_size)
  corners = [(y, x) for y in _starts(new_h, rows, patch_size)
             for x in _starts(new_w, cols, patch_size)]
  return (new_h, new_w), corners


def pixel_patches(frames, num_patches: int, patch_size: int,
                  box: tuple[int, int] | None = (540, 1080), max_patches: int | None = None):
  """Pixel-encoder input: [..., H, W, 3] -> float32[..., K, P, P, 3] (see patch_layout)."""
  (new_h, new_w), corners = patch_layout(frames.shape[-3], frames.shape[-2], num_patches,
                                         patch_size, box, max_patches)
  if (new_h, new_w) == tuple(frames.shape[-3:-1]):
    resized = jnp.asarray(frames, jnp.float32)  # exact pixels, no resampling round-off
  else:
    resized = resize_bilinear(frames, new_h, new_w)
  patches = [resized[..., y:y + patch_size, x:x + patch_size, :] for y, x in corners]
  return jnp.stack(patches, axis=-4)


def preprocess(frames, model_config, view_rng: np.random.Generator | None = None, *,
               scoring: bool = False):
  """Both model inputs from key frames, as the pipeline, scoring and export all use them.

  Args:
    frames: uint8[..., H, W, 3].
    model_config: `config.model` (reads ctx_res, num_patches, patch_size, pix_box; a
      pix_box of None cuts patches at native scale; score_patches if `scoring`).
    view_rng: training augmentation (None: none). With it, the frames are flipped
      left-right with probability 1/2 and the K patches are cut at uniformly random
      corners of the frame `patch_layout` sizes, instead of its fixed grid; two calls with
      equally seeded generators on frames of one size see the same view.
    scoring: one video scored on its own (cpllm-score, export): with
      `model_config.score_patches` set, the patches tile the frame up to that many, so
      K depends on the frame size. Batches of videos of several sizes need one K: the
      pipeline's evaluation keeps `num_patches`.

  Returns:
    (ctx uint8[..., R, R, 3], patches uint8[..., K, P, P, 3]). Rounding to uint8 here, once,
    keeps pipeline batches four times smaller and makes every consumer see the same values.
  """
  ctx_res, num_patches = int(model_config["ctx_res"]), int(model_config["num_patches"])
  patch_size, box = int(model_config["patch_size"]), pix_box(model_config)
  max_patches = model_config.get("score_patches") if scoring else None
  if view_rng is None:
    return _preprocess(frames, ctx_res, num_patches, patch_size, box,
                       None if max_patches is None else int(max_patches))
  frames = np.asarray(frames)
  if view_rng.random() < 0.5:
    frames = frames[..., ::-1, :]
  (new_h, new_w), _ = patch_layout(frames.shape[-3], frames.shape[-2], num_patches,
                                   patch_size, box)
  ys = view_rng.integers(0, new_h - patch_size + 1, num_patches)
  xs = view_rng.integers(0, new_w - patch_size + 1, num_patches)
  ctx = _context_uint8(frames, ctx_res)
  if (new_h, new_w) != frames.shape[-3:-1]:
    frames = _resized_uint8(frames, new_h, new_w)
  frames = np.asarray(frames)
  patches = np.stack([frames[..., y:y + patch_size, x:x + patch_size, :]
                      for y, x in zip(ys, xs)], axis=-4)
  return ctx, patches


def scoring_patch_count(model_config, height: int, width: int) -> int:
  """K of `preprocess(..., scoring=True)` for frames of height x width."""
  _, corners = patch_layout(height, width, int(model_config["num_patches"]),
                            int(model_config["patch_size"]), pix_box(model_config),
                            model_config.get("score_patches"))
  return len(corners)


def pix_box(model_config) -> tuple[int, int] | None:
  """`config.model.pix_box` as a hashable (short, long), or None for native scale."""
  box = model_config.get("pix_box")
  return None if box is None else tuple(int(b) for b in box)


def _to_uint8(x):
  return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnums=(1,))
def _context_uint8(frames, ctx_res):
  return _to_uint8(context_frames(frames, ctx_res))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _resized_uint8(frames, height, width):
  return _to_uint8(resize_bilinear(frames, height, width))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _preprocess(frames, ctx_res, num_patches, patch_size, box, max_patches):
  return (_to_uint8(context_frames(frames, ctx_res)),
          _to_uint8(pixel_patches(frames, num_patches, patch_size, box, max_patches)))


# ---------------------------------------------------------------------------------------
# Reading videos (PyAV).
#
# Key frames are chosen on the video's timestamps, not frame indices, so a variable frame
# rate source is sampled evenly in time. Frames come out upright (display matrix applied)
# and 8-bit RGB whatever the source (10-bit, gray, palette, still image). Every failure is
# a VideoError naming the file and the reason (see `_Reading`, the one place where any
# other exception becomes one): dataset builders record it and go on.


Fraction = fractions.Fraction


class VideoError(ValueError):
  """A file that cannot be read, decoded or processed; the message names file and reason."""


class FFmpegError(VideoError):
  """The ffmpeg binary failed; the message ends with the tail of ffmpeg's stderr."""


# Seconds one call of probe / read_key_frames / read_frames / bitrate_kbps may spend on one
# file (all its passes together); their `timeout=` overrides it. A hung decoder is a crash
# to the user; a minute decodes several minutes of 1080p H.264 on two cores (key frames
# are picked after decoding every frame).
DECODE_TIMEOUT = 60.0


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What `probe` learns about a file.

  width, height: as displayed, i.e. after rotation (the sample aspect ratio is not applied:
    frames keep their stored pixel grid).
  fps: num_frames / duration, the mean rate over the timeline (exact for constant rate).
  num_frames: video packets in the container (one per frame for the usual codecs).
  duration: seconds from the first frame's timestamp to the end of the last frame.
  rotation: counter-clockwise degrees (0, 90, 180 or 270) by which the stored frames are
    turned for display, as ffmpeg's `-display_rotation` sets it.
  pix_fmt, bit_depth: the decoded pixel format (e.g. 'yuv420p10le') and its bits/sample.
  """
  width: int
  height: int
  fps: float
  num_frames: int
  duration: float
  rotation: int
  pix_fmt: str
  bit_depth: int
  has_audio: bool


@dataclasses.dataclass(frozen=True)
class _Scan:
  """Everything one pass over the packets gives (see `_scan`)."""
  info: VideoInfo
  times: tuple  # sorted presentation times, Fraction seconds after the first frame
  end: Fraction  # end of the last frame on the same clock (= duration)
  start: Fraction | None  # first timestamp (s); None: no usable timestamps, so the clock
  rate: Fraction          # is frame index / rate
  orient: tuple  # (transpose, flip_x, flip_y) that turns stored frames upright
  video_bytes: int  # bytes of all video packets


def _av():
  import av  # pylint: disable=import-outside-toplevel  (only the I/O functions need PyAV)
  return av


class _Reading:
  """One call's reading of one file: its deadline, and the boundary of the reader.

  `with _Reading(path, timeout) as reading:` turns any exception raised inside that is not
  already a VideoError (PyAV's errors, a UnicodeDecodeError from metadata, ValueError,
  IndexError or MemoryError from broken headers, ...) into a VideoError that names the file
  and keeps the original type: 'x.webm: cannot decode (IndexError: ...)'. KeyboardInterrupt
  and SystemExit pass through.

  The deadline (`timeout` seconds, None: DECODE_TIMEOUT) covers every pass over the file.
  `check()` runs between packets, and FFmpeg's interrupt callback (av.open's timeout) stops
  opening, probing and each packet read, so a demuxer or decoder that loops or stalls over
  packets ends in 'decoding took longer than N s (limit)'. It cannot interrupt a single C
  call that never returns (one packet in the decoder): that blocks until it ends.
  """

  def __init__(self, path, timeout: float | None = None):
    self.path = os.fspath(path)
    self.timeout = DECODE_TIMEOUT if timeout is None else float(timeout)
    self.deadline = time.monotonic() + self.timeout

  def left(self) -> float:
    return max(0.0, self.deadline - time.monotonic())

  def check(self) -> None:
    if time.monotonic() >= self.deadline:
      raise VideoError(f"{self.path}: decoding took longer than {self.timeout:g} s (limit; "
                       "raise it with timeout= or video.DECODE_TIMEOUT)")

  def __enter__(self):
    return self

  def __exit__(self, kind, error, _):
    if isinstance(error, Exception) and not isinstance(error, VideoError):
      raise VideoError(f"{self.path}: cannot decode ({kind.__name__}: {error})") from error


class _Open:
  """`with _Open(reading) as (container, stream):` or a VideoError saying why not."""

  def __init__(self, reading: _Reading):
    self.reading = reading
    self.path = reading.path

  def __enter__(self):
    av = _av()
    if os.path.isfile(self.path) and os.path.getsize(self.path) == 0:
      raise VideoError(f"{self.path}: empty file")
    left = self.reading.left()
    try:
      # Tags are free text that damaged or odd files hold in any encoding: replaced, not
      # fatal. The timeout bounds each of FFmpeg's blocking steps (open, probe, a read).
      self.container = av.open(self.path, metadata_errors="replace",
                               timeout=left if math.isfinite(left) else None)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
      raise VideoError(f"{self.path}: cannot read file ({e.strerror})") from e
    except (av.FFmpegError, OSError) as e:
      self.reading.check()  # an open interrupted by the deadline
      reason = getattr(e, "strerror", None) or str(e)
      raise VideoError(f"{self.path}: not a readable video or image, or corrupt/truncated "
                       f"({reason})") from e
    # Cover art in audio files is a 'video' stream too (disposition attached_pic): skip it.
    covers = av.stream.Disposition.attached_pic | av.stream.Disposition.timed_thumbnails
    streams = [s for s in self.container.streams.video if not s.disposition & covers]
    if not streams:
      audio = " (audio only)" if self.container.streams.audio else ""
      self.container.close()
      raise VideoError(f"{self.path}: no video stream{audio}")
    stream = streams[0]
    stream.thread_type = "AUTO"  # frame + slice threads: decoding is the whole cost
    return self.container, stream

  def __exit__(self, *exc):
    self.container.close()


def _decoded(container, stream, reading: _Reading):
  """Yields decoded frames, skipping packets the decoder rejects.

  A damaged packet costs only its own frames; a truncated file yields what it holds.
  """
  av = _av()
  try:
    for packet in container.demux(stream):
      reading.check()
      try:
        yield from packet.decode()  # the final empty packet flushes the decoder
      except av.FFmpegError:
        continue
  except av.FFmpegError:  # the demuxer gave up (truncated container): keep what we have
    reading.check()  # ... unless the deadline interrupted it


def _orientation(frame, stream):
  """((transpose, flip_x, flip_y), ccw_degrees) from the display matrix or `rotate` tag.

  The matrix maps stored (x, y) to displayed (a x + c y, b x + d y) (ffmpeg's row-vector
  convention). Snapping it to quarter turns and mirrors reproduces ffmpeg's autorotate,
  mirrored matrices included.
  """
  sides = [s for s in frame.side_data if "DISPLAYMATRIX" in str(s.type)]
  if sides:
    m = np.frombuffer(bytes(sides[0]), np.int32)[:5].astype(np.float64)  # native int32[9]
    a, b, c, d = m[0], m[1], m[3], m[4]
  else:  # Files that only carry the old `rotate` tag (clockwise degrees).
    try:
      cw = math.radians(float(stream.metadata.get("rotate", 0)))
    except ValueError:
      cw = 0.0
    a, b, c, d = math.cos(cw), math.sin(cw), -math.sin(cw), math.cos(cw)
  transpose = abs(b) > abs(a)
  flips = (c < 0, b < 0) if transpose else (a < 0, d < 0)
  ccw = round(-math.degrees(math.atan2(b, a)) / 90) * 90 % 360  # av_display_rotation_get
  return (bool(transpose), bool(flips[0]), bool(flips[1])), int(ccw)


def _upright(rgb, orient):
  """uint8[h, w, 3] as stored -> uint8[H, W, 3] as displayed."""
  transpose, flip_x, flip_y = orient
  if transpose:
    rgb = rgb.transpose(1, 0, 2)
  if flip_x:
    rgb = rgb[:, ::-1]
  if flip_y:
    rgb = rgb[::-1]
  return np.ascontiguousarray(rgb)


def _scan(reading: _Reading) -> _Scan:
  """One pass over the packet headers (timestamps, sizes) that also decodes one frame."""
  path = reading.path
  av = _av()
  first, stamps, nbytes = None, [], 0
  with _Open(reading) as (container, stream):
    try:
      for packet in container.demux(stream):
        reading.check()
        if packet.size and not packet.is_discard:
          ts = packet.pts if packet.pts is not None else packet.dts
          stamps.append((ts, packet.duration or 0))
          nbytes += packet.size
        if first is None:  # decode until one frame comes out (or the flush packet)
          try:
            first = next(iter(packet.decode()), None)
          except av.FFmpegError:
            pass
    except av.FFmpegError:  # truncated container: the packets read so far stand
      reading.check()  # (unless the deadline interrupted the demuxer)
    if first is None:
      raise VideoError(f"{path}: no decodable video frames")
    orient, ccw = _orientation(first, stream)
    has_audio = bool(container.streams.audio)
    tb = stream.time_base
    rate = Fraction(stream.guessed_rate or stream.average_rate or 25)
  n = len(stamps)
  if not n:
    raise VideoError(f"{path}: no video packets")
  pts = sorted(s for s, _ in stamps if s is not None)
  if tb is None or len(pts) < n or len(set(pts)) < n:
    # No usable timestamps (raw elementary streams, broken muxing): a steady clock.
    start, times, end = None, tuple(Fraction(i) / rate for i in range(n)), n / rate
  else:
    tb = Fraction(tb)
    start = pts[0] * tb
    times = tuple(p * tb - start for p in pts)
    last = max(dur for p, dur in stamps if p == pts[-1]) * tb
    if last <= 0:  # containers that leave it out: the last gap, else one nominal frame
      last = times[-1] - times[-2] if n > 1 else 1 / rate
    end = times[-1] + last
  fmt = first.format
  h, w = (first.width, first.height) if orient[0] else (first.height, first.width)
  info = VideoInfo(
      width=w, height=h, fps=float(n / end) if end > 0 else float(rate), num_frames=n,
      duration=float(end), rotation=ccw, pix_fmt=fmt.name,
      bit_depth=max(c.bits for c in fmt.components), has_audio=has_audio)
  return _Scan(info, times, end, start, rate, orient, nbytes)


def probe(path, *, timeout: float | None = None) -> VideoInfo:
  """Size (as displayed), rate, frame count, duration, rotation and pixel format.

  Reads every packet header and decodes one frame; raises VideoError when the path cannot
  be read, holds no video stream, or no frame decodes, or after `timeout` seconds
  (default DECODE_TIMEOUT).
  """
  with _Reading(path, timeout) as reading:
    return _scan(reading).info


def _nearest(times, targets):
  """For each target, the nearest of the sorted `times`; a tie goes to the earlier one."""
  out = []
  for t in targets:
    i = bisect.bisect_left(times, t)
    if i == len(times) or (i > 0 and t - times[i - 1] <= times[i] - t):
      i -= 1
    out.append(times[i])
  return out


def _grab(reading, scan, wanted):
  """One decode pass: ({time: upright uint8[H, W, 3]} for times in `wanted`, decoded times).

  Only the wanted frames are converted and kept, so memory is O(len(wanted)) frames.
  """
  got, seen = {}, []
  with _Open(reading) as (container, stream):
    tb = Fraction(stream.time_base) if stream.time_base else None
    for i, frame in enumerate(_decoded(container, stream, reading)):
      if scan.start is None or frame.pts is None:
        t = Fraction(i) / scan.rate if scan.start is None else None
      else:
        t = frame.pts * tb - scan.start
      if t is None:
        continue
      seen.append(t)
      if t in wanted and t not in got:
        got[t] = _upright(frame.to_ndarray(format="rgb24"), scan.orient)
  return got, seen


def read_key_frames(path, num_frames: int, *, timeout: float | None = None):
  """M key frames by uniform segment-centre sampling over the video's timestamps.

  The timeline [0, duration) is cut into M equal segments; for segment j the frame whose
  presentation time is nearest (j + 0.5) * duration / M is taken (a tie goes to the earlier
  frame). A video with fewer than M frames repeats frames; a still image is a 1-frame video.
  A frame that fails to decode is replaced by the decodable frame nearest the same centre.

  Returns (uint8[M, H, W, 3] upright RGB, VideoInfo). Raises VideoError for unreadable,
  non-video, audio-only and undecodable files, and after `timeout` seconds (default
  DECODE_TIMEOUT) for all passes together.
  """
  if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
    raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
  with _Reading(path, timeout) as reading:
    scan = _scan(reading)
    targets = [(j + Fraction(1, 2)) * scan.end / num_frames for j in range(num_frames)]
    plan = _nearest(scan.times, targets)
    got, seen = _grab(reading, scan, set(plan))
    if any(t not in got for t in plan):  # damaged frames: re-plan over what did decode
      if not seen:
        raise VideoError(f"{reading.path}: no decodable video frames")
      plan = _nearest(sorted(set(seen)), targets)
      more, _ = _grab(reading, scan, set(plan) - set(got))
      got.update(more)
      if any(t not in got for t in plan):
        raise VideoError(f"{reading.path}: decoding is not repeatable (damaged stream)")
    return np.stack([got[t] for t in plan]), scan.info


def read_frames(path, *, timeout: float | None = None):
  """Every decodable frame, upright RGB: uint8[T, H, W, 3]. Holds all of them: short clips.

  Raises VideoError as read_key_frames does."""
  with _Reading(path, timeout) as reading:
    scan = _scan(reading)
    with _Open(reading) as (container, stream):
      frames = [_upright(f.to_ndarray(format="rgb24"), scan.orient)
                for f in _decoded(container, stream, reading)]
    if not frames:
      raise VideoError(f"{reading.path}: no decodable video frames")
    return np.stack(frames)


def bitrate_kbps(path, *, timeout: float | None = None) -> float:
  """Mean bitrate of the video stream: its packet bytes * 8 / duration, in kbit/s."""
  with _Reading(path, timeout) as reading:
    scan = _scan(reading)
    if scan.end <= 0:
      raise VideoError(f"{reading.path}: zero duration, bitrate undefined")
    return float(scan.video_bytes * 8 / scan.end / 1000)


# ---------------------------------------------------------------------------------------
# Encoding and quality metrics: the ffmpeg binary inside the imageio-ffmpeg wheel, which
# has libx264 (8 and 10 bit) and the libvmaf filter with its models built in. (Debian's
# ffmpeg has no libvmaf; PyAV has no VMAF.)

VMAF_MODEL = "vmaf_v0.6.1"
X264_MAX_CRF = 51


def ffmpeg_exe() -> str:
  import imageio_ffmpeg  # pylint: disable=import-outside-toplevel
  return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(args, *, input=None, cwd=None, path=None) -> bytes:  # pylint: disable=redefined-builtin
  """Runs `ffmpeg -nostdin -y <args>` (argument list, no shell); returns its stdout.

  `input` (bytes-like) is fed to stdin (`-i pipe:0`); `path` names the file in errors.
  Raises FFmpegError with the exit status and the tail of ffmpeg's stderr.
  """
  cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-nostats", "-loglevel", "error", "-y",
         *map(os.fspath, args)]
  who = path if path is not None else "ffmpeg"
  try:
    proc = subprocess.run(cmd, input=input, capture_output=True, cwd=cwd, check=False)
  except OSError as e:
    raise FFmpegError(f"{who}: cannot run ffmpeg ({e})") from e
  if proc.returncode != 0:
    tail = proc.stderr.decode(errors="replace").strip()[-1500:]
    raise FFmpegError(f"{who}: ffmpeg failed (exit {proc.returncode}): {tail}")
  return proc.stdout


def _url(path) -> str:
  """A path ffmpeg takes literally (no protocol guessing from a ':' in the name)."""
  return "file:" + os.path.abspath(os.fspath(path))


def _chroma_factors(pix_fmt):
  """(x, y) chroma subsampling of a pixel format, e.g. yuv420p -> (2, 2), gray -> (1, 1)."""
  fmt = _av().VideoFormat(pix_fmt, 1024, 1024)
  if len(fmt.components) < 3 or fmt.is_rgb:
    return 1, 1
  return 1024 // fmt.components[1].width, 1024 // fmt.components[1].height


def write_video(frames, path, fps, *, codec="libx264", crf=None, lossless=False,
                pix_fmt="yuv420p"):
  """Encodes uint8[T, H, W, 3] RGB frames at a constant `fps` (frames piped as rawvideo).

  lossless=True writes FFV1 with pix_fmt bgr0 (RGB, no colour conversion, no chroma
  subsampling) and needs a .mkv/.nut/.avi path: decoding gives back the exact frames.
  (x264 -qp 0 in yuv444p is not exact: the RGB -> YUV conversion itself rounds.)

  Odd sizes: a chroma-subsampled pix_fmt (yuv420p needs even width and height) gets the
  last column/row repeated up to the next multiple, so a 65x49 clip is stored as 66x50 and
  no black border is invented; `quality_metrics` crops such a padded copy back. yuv444p,
  gray and FFV1 keep any size.
  """
  if not fps > 0:
    raise ValueError(f"fps must be positive, got {fps!r}")
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
    raise ValueError(f"frames must be uint8[T>0, H, W, 3], got {frames.dtype}{frames.shape}")
  path = os.fspath(path)
  if lossless:
    if crf is not None:
      raise ValueError("lossless=True and crf are exclusive")
    if not path.lower().endswith((".mkv", ".nut", ".avi")):
      raise ValueError(f"{path}: lossless video is FFV1, which needs a .mkv, .nut or .avi path")
    codec_args = ["-c:v", "ffv1", "-pix_fmt", "bgr0"]
  else:
    fx, fy = _chroma_factors(pix_fmt)
    _, h, w, _ = frames.shape
    pad = ((0, 0), (0, -h % fy), (0, -w % fx), (0, 0))
    if any(p for _, p in pad):
      frames = np.pad(frames, pad, mode="edge")
    codec_args = ["-c:v", codec, "-pix_fmt", pix_fmt]
    if crf is not None:
      codec_args += ["-crf", f"{crf:g}"]
  frames = np.ascontiguousarray(frames)
  _, h, w, _ = frames.shape
  rate = Fraction(fps).limit_denominator(100_000)
  run_ffmpeg(["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
              "-framerate", f"{rate.numerator}/{rate.denominator}", "-i", "pipe:0",
              "-an", *codec_args, _url(path)],
             input=memoryview(frames).cast("B"), path=path)


def encode_x264(src, dst, crf, *, preset="medium"):
  """Re-encodes the video of `src` with libx264 at a CRF into `dst` (no audio).

  yuv420p, x264's default GOP and B-frames, every frame kept with its timestamp
  (-fps_mode passthrough, so metrics can pair frames). Rotated sources are written upright
  (ffmpeg's autorotate). Odd displayed sizes are padded by repeating the last column/row,
  as in `write_video`.
  """
  if (isinstance(crf, bool) or not isinstance(crf, (int, float))
      or not 0 <= crf <= X264_MAX_CRF):
    raise ValueError(
        f"crf={crf!r} is outside libx264's range 0..{X264_MAX_CRF} for 8-bit video; "
        f"libx264 clamps anything above {X264_MAX_CRF} to {X264_MAX_CRF} (CRF 53 gives "
        f"byte-identical output to CRF 51), so such a ladder would collapse")
  info = probe(src)  # a clear VideoError for bad input before ffmpeg runs
  px, py = info.width % 2, info.height % 2
  vf = []
  if px or py:
    vf = ["-vf", f"pad={info.width + px}:{info.height + py}:0:0,"
                 f"fillborders=right={px}:bottom={py}:mode=smear"]
  run_ffmpeg(["-i", _url(src), "-map", "0:V:0", "-an", "-sn", "-dn", *vf,
              "-c:v", "libx264", "-preset", preset, "-crf", f"{crf:g}",
              "-pix_fmt", "yuv420p", "-fps_mode", "passthrough", _url(dst)],
             path=f"{os.fspath(src)} -> {os.fspath(dst)}")


def quality_metrics(reference, distorted) -> dict:
  """VMAF (model vmaf_v0.6.1), SSIM and PSNR of `distorted` against `reference`.

  One libvmaf run (features psnr and float_ssim, n_threads = os.cpu_count()); frames are
  paired by index and compared as 8-bit YUV; the values are means over frames. A
  distorted stream of another size is scaled (bicubic) to the reference size, except one
  padded to even size by our encoders, which is cropped back. psnr is luma PSNR (libvmaf
  caps it for identical frames); ssim is luma SSIM.

  Returns dict(vmaf=float, ssim=float, psnr=float). Raises VideoError when the frame counts
  differ, FFmpegError when ffmpeg fails.
  """
  reference, distorted = os.fspath(reference), os.fspath(distorted)
  ref, dis = probe(reference), probe(distorted)
  if ref.num_frames != dis.num_frames:
    raise VideoError(f"{distorted}: {dis.num_frames} frames but reference {reference} has "
                     f"{ref.num_frames}; metrics need frame-by-frame pairs")
  w, h = ref.width, ref.height
  if (dis.width, dis.height) == (w, h):
    fit = ""
  elif (dis.width, dis.height) == (w + w % 2, h + h % 2):
    fit = f",crop={w}:{h}:0:0"
  else:
    fit = f",scale={w}:{h}:flags=bicubic"
  # setpts=N/TB puts frame i of both inputs at i seconds, so libvmaf pairs them by index.
  # yuv444p: odd sizes stay odd (crop on 4:2:0 would round them down); VMAF, psnr_y and
  # float_ssim read luma only, which is the same in any YUV layout.
  graph = (f"[0:V:0]setpts=N/TB,format=yuv444p{fit}[dis];"  # V: video, not cover art
           f"[1:V:0]setpts=N/TB,format=yuv444p[ref];"
           f"[dis][ref]libvmaf=model=version={VMAF_MODEL}"
           f":feature=name=psnr|name=float_ssim:log_fmt=json:log_path=vmaf.json"
           f":n_threads={os.cpu_count() or 1}")
  with tempfile.TemporaryDirectory() as tmp:  # cwd, so log_path needs no escaping
    run_ffmpeg(["-i", _url(distorted), "-i", _url(reference), "-lavfi", graph,
                "-f", "null", "-"], cwd=tmp, path=distorted)
    with open(os.path.join(tmp, "vmaf.json")) as f:
      log = json.load(f)
  if len(log["frames"]) != ref.num_frames:
    raise VideoError(f"{distorted}: libvmaf compared {len(log['frames'])} frames, expected "
                     f"{ref.num_frames} (undecodable frames?)")
  pooled = log["pooled_metrics"]
  return dict(vmaf=pooled["vmaf"]["mean"], ssim=pooled["float_ssim"]["mean"],
              psnr=pooled["psnr_y"]["mean"])
