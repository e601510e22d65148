"""Video decoding, key-frame sampling, encoding and quality metrics on tiny generated clips.

Every clip is made here, in tmp_path, by ffmpeg itself or by write_video. Expectations are
computed by hand from the known timestamps and pixel values, or taken from ffmpeg's own
autorotate, never from the code under test.
"""

import hashlib
import subprocess
import types

import av
import numpy as np
import pytest
import skimage.data

from cpllm.data import video


def ffmpeg(*args):
  video.run_ffmpeg([str(a) for a in args])


def ramp(n, first=0, height=48, width=64):
  """uint8[n, H, W, 3] whose frame i is filled with the value (first + i) * 10."""
  return np.stack([np.full((height, width, 3), (first + i) * 10, np.uint8) for i in range(n)])


def frame_ids(frames):
  """Index of each frame of a ramp clip; asserts the frame is exactly one flat value."""
  ids = []
  for f in frames:
    assert f.dtype == np.uint8 and (f == f.flat[0]).all(), "not a flat lossless frame"
    assert f.flat[0] % 10 == 0
    ids.append(int(f.flat[0]) // 10)
  return ids


def packet_times(path):
  with av.open(str(path)) as c:
    s = c.streams.video[0]
    return [round(float(p.pts * s.time_base), 6) for p in c.demux(s) if p.size]


# ----------------------------------------------------------------------------- key frames

@pytest.mark.parametrize("m,want", [
    # 24 frames at 10 fps, duration 2.4 s, frame i at 0.1 i s.
    # M=8: centres 0.15, 0.45, ..., 2.25 s fall half-way between frames; ties -> earlier.
    (8, [1, 4, 7, 10, 13, 16, 19, 22]),
    # M=5: centres 0.24, 0.72, 1.20, 1.68, 2.16 s -> nearest frames 0.2, 0.7, 1.2, 1.7, 2.2.
    (5, [2, 7, 12, 17, 22]),
    (1, [12]),  # centre 1.2 s
])
def test_key_frames_are_segment_centres(tmp_path, m, want):
  path = tmp_path / "ramp.mkv"
  video.write_video(ramp(24), path, fps=10, lossless=True)
  frames, info = video.read_key_frames(path, m)
  assert frames.shape == (m, 48, 64, 3) and frames.dtype == np.uint8
  assert frame_ids(frames) == want
  assert (info.num_frames, info.width, info.height) == (24, 64, 48)
  assert info.duration == pytest.approx(2.4) and info.fps == pytest.approx(10)


def test_short_video_repeats_frames(tmp_path):
  path = tmp_path / "three.mkv"
  video.write_video(ramp(3), path, fps=10, lossless=True)
  frames, _ = video.read_key_frames(path, 6)
  # Frames at 0, 0.1, 0.2 s, duration 0.3 s; centres 0.025, 0.075, ..., 0.275 s.
  assert frame_ids(frames) == [0, 1, 1, 2, 2, 2]


def test_variable_frame_rate_is_sampled_in_time(tmp_path):
  # Concatenate lossless segments at 10, 25 and 4 fps (values continue across segments).
  listing = []
  for k, (n, fps, first) in enumerate([(6, 10, 0), (6, 25, 6), (4, 4, 12)]):
    video.write_video(ramp(n, first), tmp_path / f"seg{k}.mkv", fps, lossless=True)
    listing.append(f"file 'seg{k}.mkv'\n")
  (tmp_path / "list.txt").write_text("".join(listing))
  path = tmp_path / "vfr.mkv"
  ffmpeg("-f", "concat", "-safe", "0", "-i", tmp_path / "list.txt", "-c", "copy", path)
  times = [0, .1, .2, .3, .4, .5, .6, .64, .68, .72, .76, .8, .84, 1.09, 1.34, 1.59]
  assert packet_times(path) == times  # the fixture is what we think it is
  frames, info = video.read_key_frames(path, 4)
  # Duration 1.59 + 0.25 = 1.84 s; centres 0.23, 0.69, 1.15, 1.61 s -> nearest frames at
  # 0.2 (#2), 0.68 (#8), 1.09 (#13), 1.59 (#15). Index-uniform sampling would give
  # 2, 6, 10, 14 and over-sample the 25 fps stretch.
  assert frame_ids(frames) == [2, 8, 13, 15]
  assert info.num_frames == 16 and info.duration == pytest.approx(1.84)
  assert info.fps == pytest.approx(16 / 1.84)


# ---------------------------------------------------------------------- odd sources

def marker_frame(height=48, width=64):
  f = np.full((height, width, 3), 30, np.uint8)
  f[:12, :16] = 230  # bright top-left corner
  return f


def ffmpeg_autorotated(path, height, width):
  """The first frame as ffmpeg's CLI displays it (autorotate), an independent reference."""
  raw = subprocess.run(
      [video.ffmpeg_exe(), "-v", "error", "-i", str(path), "-frames:v", "1", "-f",
       "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
  return np.frombuffer(raw, np.uint8).reshape(height, width, 3)


@pytest.mark.parametrize("flags,ccw,k,mirror", [
    (["-display_rotation", "90"], 90, 1, False),
    (["-display_rotation", "-90"], 270, 3, False),
    (["-display_rotation", "180"], 180, 2, False),
    (["-display_rotation", "90", "-display_hflip"], 90, 1, True),
])
def test_rotation_is_applied(tmp_path, flags, ccw, k, mirror):
  stored = marker_frame()
  plain, rotated = tmp_path / "plain.mp4", tmp_path / "rotated.mp4"
  video.write_video(np.stack([stored] * 8), plain, fps=10, crf=10)
  # Display-matrix side data on a stream copy (`-metadata:s:v rotate=` no longer does
  # anything in ffmpeg 7+).
  ffmpeg(*flags, "-i", plain, "-c", "copy", rotated)
  frames, info = video.read_key_frames(rotated, 2)
  want = np.rot90(stored, k)  # counter-clockwise quarter turns
  if mirror:
    want = want[:, ::-1]
  h, w = want.shape[:2]
  assert frames.shape == (2, h, w, 3)
  assert (info.width, info.height, info.rotation) == (w, h, ccw)
  assert (info.width, info.height) == ((48, 64) if k % 2 else (64, 48))  # swapped
  np.testing.assert_allclose(frames[0], want, atol=12)
  np.testing.assert_array_equal(frames[0], ffmpeg_autorotated(rotated, h, w))
  np.testing.assert_array_equal(video.read_frames(rotated)[0], frames[0])


def test_old_rotate_tag_is_clockwise():
  """Files from old muxers carry only a `rotate` tag (clockwise degrees, no matrix)."""
  stored = marker_frame()
  frame = types.SimpleNamespace(side_data=[])
  for cw, k in [("90", -1), ("180", 2), ("270", 1), ("0", 0)]:
    orient, ccw = video._orientation(frame, types.SimpleNamespace(metadata={"rotate": cw}))
    assert ccw == (-int(cw)) % 360
    np.testing.assert_array_equal(video._upright(stored, orient), np.rot90(stored, k))


def test_10_bit_becomes_8_bit_rgb(tmp_path):
  path = tmp_path / "p10.mp4"
  colour = np.array([180, 100, 60], np.uint8)
  video.write_video(np.broadcast_to(colour, (6, 48, 64, 3)), path, 10, crf=0,
                    pix_fmt="yuv420p10le")
  frames, info = video.read_key_frames(path, 3)
  assert (info.pix_fmt, info.bit_depth) == ("yuv420p10le", 10)
  assert frames.dtype == np.uint8 and frames.shape == (3, 48, 64, 3)
  np.testing.assert_allclose(frames.reshape(-1, 3).mean(0), colour, atol=3)


@pytest.mark.parametrize("name,codec", [("gray.mkv", "ffv1"), ("gray.png", "png")])
def test_grayscale_becomes_rgb(tmp_path, name, codec):
  path = tmp_path / name
  gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))  # 48 x 64 gradient
  video.run_ffmpeg(["-f", "rawvideo", "-pix_fmt", "gray", "-s", "64x48", "-i", "pipe:0",
                    "-c:v", codec, "-pix_fmt", "gray", str(path)], input=gray.tobytes())
  frames, info = video.read_key_frames(path, 2)
  assert info.pix_fmt == "gray" and info.num_frames == 1
  assert frames.dtype == np.uint8 and frames.shape == (2, 48, 64, 3)
  for c in range(3):
    np.testing.assert_array_equal(frames[..., c], np.broadcast_to(gray, (2, 48, 64)))


def test_still_images_read_as_one_frame(tmp_path):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (40, 56, 3), np.uint8)
  png, jpg = tmp_path / "photo.png", tmp_path / "photo.jpg"
  for path in (png, jpg):
    video.run_ffmpeg(["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "56x40", "-i", "pipe:0",
                      str(path)], input=image.tobytes())
  frames, info = video.read_key_frames(png, 3)
  assert info.num_frames == 1 and (info.width, info.height) == (56, 40)
  np.testing.assert_array_equal(frames, np.stack([image] * 3))  # PNG is exact
  frames, info = video.read_key_frames(jpg, 2)
  assert frames.shape == (2, 40, 56, 3) and info.num_frames == 1
  assert np.array_equal(frames[0], frames[1])


def test_one_frame_video(tmp_path):
  path = tmp_path / "one.mkv"
  video.write_video(ramp(1, first=7), path, fps=25, lossless=True)
  frames, info = video.read_key_frames(path, 4)
  assert frame_ids(frames) == [7] * 4
  assert info.num_frames == 1 and info.duration == pytest.approx(0.04)


# ---------------------------------------------------------------------- bad input

def make_audio_only(d):
  ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", d / "song.m4a")
  return d / "song.m4a", "audio only"


def make_audio_with_cover_art(d):
  """An mp3 whose cover picture is a 'video' stream with the attached_pic disposition."""
  video.write_video(ramp(1), d / "cover.png", 1, codec="png", pix_fmt="rgb24")
  ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-i", d / "cover.png",
         "-map", "0", "-map", "1", "-c:a", "libmp3lame", "-c:v", "mjpeg",
         "-disposition:v", "attached_pic", d / "song.mp3")
  return d / "song.mp3", "audio only"


def make_text(d):
  (d / "notes.mp4").write_text("this is not a video\n" * 50)
  return d / "notes.mp4", "not a readable video"


def make_empty(d):
  (d / "empty.mp4").write_bytes(b"")
  return d / "empty.mp4", "empty file"


def _mp4(d, *extra):
  path = d / "src.mp4"
  ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10", "-frames:v", "20",
         "-c:v", "libx264", "-pix_fmt", "yuv420p", *extra, path)
  return path.read_bytes()


def make_truncated(d):
  data = _mp4(d)  # moov (the index) is written last: cutting the file loses it
  (d / "cut.mp4").write_bytes(data[:len(data) // 2])
  return d / "cut.mp4", "corrupt/truncated"


def make_no_frames(d):
  data = _mp4(d, "-movflags", "+faststart")  # index first, then the frame data
  pos, end = 0, None
  while pos < len(data):  # walk the top-level boxes to find the end of moov
    size = int.from_bytes(data[pos:pos + 4], "big")
    if data[pos + 4:pos + 8] == b"moov":
      end = pos + size
    pos += size
  (d / "index_only.mp4").write_bytes(data[:end])
  return d / "index_only.mp4", "no decodable video frames"


def make_missing(d):
  return d / "missing.mp4", "No such file"


def make_directory(d):
  (d / "folder.mp4").mkdir()
  return d / "folder.mp4", "Is a directory"


@pytest.mark.parametrize("make", [make_audio_only, make_audio_with_cover_art, make_text,
                                  make_empty, make_truncated, make_no_frames, make_missing,
                                  make_directory])
def test_bad_input_raises_video_error_with_name_and_reason(tmp_path, make):
  path, reason = make(tmp_path)
  for read in (video.probe, lambda p: video.read_key_frames(p, 4), video.read_frames):
    with pytest.raises(video.VideoError) as err:
      read(path)
    assert path.name in str(err.value) and reason in str(err.value), str(err.value)
  with pytest.raises(video.VideoError, match=path.name):
    video.encode_x264(path, tmp_path / "out.mp4", 23)


@pytest.mark.parametrize("faststart", [False, True])
def test_truncated_files_never_crash(tmp_path, faststart):
  data = _mp4(tmp_path, *(["-movflags", "+faststart"] if faststart else []))
  for fraction in (0.05, 0.3, 0.6, 0.8, 0.95):
    path = tmp_path / f"cut{int(fraction * 100)}.mp4"
    path.write_bytes(data[:int(len(data) * fraction)])
    try:
      frames, info = video.read_key_frames(path, 5)
    except video.VideoError as e:
      assert path.name in str(e)
    else:
      assert frames.shape == (5, 48, 64, 3) and frames.dtype == np.uint8
      assert 1 <= info.num_frames <= 20


# ---------------------------------------------------------------------- encoding, metrics

def test_lossless_round_trip_is_exact(tmp_path):
  rng = np.random.default_rng(1)
  frames = rng.integers(0, 256, (5, 49, 65, 3), np.uint8)  # odd size, full-range noise
  path = tmp_path / "noise.mkv"
  video.write_video(frames, path, fps=24, lossless=True)
  np.testing.assert_array_equal(video.read_frames(path), frames)
  with pytest.raises(ValueError, match="mkv"):
    video.write_video(frames, tmp_path / "noise.mp4", 24, lossless=True)


def test_odd_size_lossy_is_edge_padded_and_metrics_crop_it_back(tmp_path):
  frames = np.stack([np.roll(marker_frame(49, 65), 2 * i, axis=1) for i in range(6)])
  ref, lossy = tmp_path / "ref.mkv", tmp_path / "lossy.mp4"
  video.write_video(frames, ref, 10, lossless=True)
  video.write_video(frames, lossy, 10, crf=18)  # yuv420p: needs even width and height
  out = video.read_frames(lossy)
  assert out.shape == (6, 50, 66, 3)
  np.testing.assert_allclose(out[:, :49, :65], frames, atol=40)
  np.testing.assert_allclose(out[:, :, 65], out[:, :, 64], atol=12)  # repeated, not black
  m = video.quality_metrics(ref, lossy)
  assert m["vmaf"] > 80 and m["psnr"] > 30
  reencoded = tmp_path / "reencoded.mp4"
  video.encode_x264(ref, reencoded, 18, preset="veryfast")  # same rule inside ffmpeg
  out = video.read_frames(reencoded)
  assert out.shape == (6, 50, 66, 3)
  np.testing.assert_allclose(out[:, :, 65], out[:, :, 64], atol=12)
  np.testing.assert_allclose(out[:, 49], out[:, 48], atol=12)
  assert video.quality_metrics(ref, reencoded)["vmaf"] > 80


def pan_clip(num_frames=24, height=96, width=160):
  """A real photograph (scikit-image's astronaut) seen by a camera panning right and down."""
  photo = skimage.data.astronaut()[::2, ::2]  # 256 x 256 x 3
  return np.stack([photo[i:i + height, 3 * i:3 * i + width] for i in range(num_frames)])


def test_crf_ladder_on_a_real_photo(tmp_path):
  src = tmp_path / "src.mkv"
  video.write_video(pan_clip(), src, fps=24, lossless=True)
  same = video.quality_metrics(src, src)
  assert same["vmaf"] > 95 and same["psnr"] >= 50 and same["ssim"] > 0.99
  crfs = [13, 25, 37, 51]
  vmaf, kbps, digests, pixels = [], [], [], []
  for crf in crfs:
    out = tmp_path / f"crf{crf}.mp4"
    video.encode_x264(src, out, crf, preset="veryfast")
    info = video.probe(out)
    assert (info.num_frames, info.width, info.height, info.pix_fmt) == (24, 160, 96,
                                                                        "yuv420p")
    m = video.quality_metrics(src, out)
    vmaf.append(m["vmaf"])
    kbps.append(video.bitrate_kbps(out))
    digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    pixels.append(video.read_frames(out))
  assert all(a > b for a, b in zip(vmaf, vmaf[1:])), vmaf
  assert all(a > b for a, b in zip(kbps, kbps[1:])), kbps
  assert len(set(digests)) == len(crfs)
  for i in range(len(crfs) - 1):
    assert not np.array_equal(pixels[i], pixels[i + 1])
  assert vmaf[0] > 85 and vmaf[-1] < vmaf[0] - 20


@pytest.mark.parametrize("crf", [52, 53, -1, float("nan"), "23"])
def test_crf_outside_x264_range_is_refused(tmp_path, crf):
  with pytest.raises(ValueError, match="clamps"):
    video.encode_x264(tmp_path / "any.mp4", tmp_path / "out.mp4", crf)


def test_metrics_scale_a_smaller_distorted_video_and_check_frame_counts(tmp_path):
  frames = pan_clip(12)
  ref, small, short = tmp_path / "ref.mkv", tmp_path / "small.mp4", tmp_path / "short.mkv"
  video.write_video(frames, ref, 24, lossless=True)
  video.write_video(frames[:, ::2, ::2], small, 24, crf=10)
  m = video.quality_metrics(ref, small)
  assert 0 < m["vmaf"] < 95 and 0 < m["ssim"] < 1
  video.write_video(frames[:10], short, 24, lossless=True)
  with pytest.raises(video.VideoError, match=r"short\.mkv: 10 frames .* has 12"):
    video.quality_metrics(ref, short)


def test_run_ffmpeg_reports_stderr(tmp_path):
  with pytest.raises(video.FFmpegError, match="nothing.mp4.*No such file") as err:
    video.run_ffmpeg(["-i", str(tmp_path / "nothing.mp4"), "-f", "null", "-"],
                     path="nothing.mp4")
  assert isinstance(err.value, video.VideoError)
