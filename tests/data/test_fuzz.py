"""No input file crashes a run (issue #19): seeded corruptions of tiny real videos go
through the reader, the scoring CLI and the mos_videos builder.

Three clean clips (H.264 .mp4, FFV1 .mkv, VP9 .webm; 48x32, 6 frames of ffmpeg's moving
test pattern, with a container and a stream title) are made here; each is corrupted by bit
flips, truncations, overwritten chunks and titles that are not UTF-8. Every file must
decode or raise a VideoError that names it, get one CLI line, and be one record or one
skip entry of the builder. The model is left out of the CLI (TrivialScorer): what is
tested is its per-file loop around the real reader.
"""

import functools
import itertools
import json
import os
import types

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags

from cpllm import score
from cpllm.data import build_utils
from cpllm.data import video
from data_builders.mos_videos import mos_videos

tfds.disable_progress_bar()

CODECS = {"mp4": ["-c:v", "libx264", "-pix_fmt", "yuv420p"],
          "mkv": ["-c:v", "ffv1"],
          "webm": ["-c:v", "libvpx-vp9", "-pix_fmt", "yuv420p"]}
CONTAINER_TITLE, STREAM_TITLE = b"containertitle", b"streamtitle"
M = 3
OTHER_READERS = (video.probe, video.read_frames, video.bitrate_kbps)  # besides key frames
READERS = (functools.partial(video.read_key_frames, num_frames=M), *OTHER_READERS)


def clean_clip(path):
  """Writes the clean clip for path's extension; returns its bytes."""
  video.run_ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=48x32:rate=10", "-frames:v", "6",
                    *CODECS[path.suffix[1:]], "-metadata", f"title={CONTAINER_TITLE.decode()}",
                    "-metadata:s:v:0", f"title={STREAM_TITLE.decode()}", path])
  return path.read_bytes()


def bad_utf8(data, title):
  """data with the first two bytes of `title` replaced by bytes that are not UTF-8."""
  at = data.index(title)
  return data[:at] + b"\xc9\xff" + data[at + 2:]


def corruptions(data, rng):
  """{kind: bytes}, 12 seeded corruptions of one file."""
  out = {}
  for bits in (1, 4, 16, 64):
    flipped = np.frombuffer(data, np.uint8).copy()
    at = rng.integers(0, len(data) * 8, bits)
    np.bitwise_xor.at(flipped, at // 8, (1 << (at % 8)).astype(np.uint8))
    out[f"flip{bits}"] = flipped.tobytes()
  for i, fraction in enumerate(rng.uniform(0.05, 0.95, 3)):
    out[f"cut{i}"] = data[:int(len(data) * fraction)]
  for i, size in enumerate(rng.integers(16, 512, 3)):
    start = int(rng.integers(0, len(data) - size))
    out[f"chunk{i}"] = data[:start] + rng.bytes(size) + data[start + size:]
  out["meta_title"] = bad_utf8(data, CONTAINER_TITLE)
  out["meta_stream_title"] = bad_utf8(data, STREAM_TITLE)
  return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
  """A folder with clip.mp4, clip.mkv and clip.webm."""
  folder = tmp_path_factory.mktemp("clean")
  for ext in CODECS:
    clean_clip(folder / f"clip.{ext}")
  return folder


@pytest.fixture(scope="module")
def corpus(clean, tmp_path_factory):
  """(folder, {path: (key frames, VideoInfo) or the VideoError it raised}) for 39 files:
  each clean clip and its 12 corruptions, named <ext>_<kind>.<ext>."""
  folder = tmp_path_factory.mktemp("fuzz")
  rng = np.random.default_rng(19)
  for ext in CODECS:
    data = (clean / f"clip.{ext}").read_bytes()
    for kind, corrupt in {"clean": data, **corruptions(data, rng)}.items():
      (folder / f"{ext}_{kind}.{ext}").write_bytes(corrupt)
  outcomes = {}
  for name in sorted(os.listdir(folder)):
    path = str(folder / name)
    try:
      outcomes[path] = video.read_key_frames(path, M)
    except video.VideoError as e:  # anything else fails the tests that use the corpus
      outcomes[path] = e
  return str(folder), outcomes


def refused(outcome):
  return isinstance(outcome, video.VideoError)


def test_every_file_decodes_or_is_refused_with_its_name(corpus):
  folder, outcomes = corpus
  assert len(outcomes) == 39
  for path, outcome in outcomes.items():
    if refused(outcome):
      assert str(outcome).startswith(f"{path}: "), str(outcome)
    else:
      frames, info = outcome
      assert frames.dtype == np.uint8 and frames.shape[0] == M and frames.shape[3] == 3
      assert info.num_frames >= 1
    for read in OTHER_READERS:
      try:
        read(path)
      except video.VideoError as e:
        assert str(e).startswith(f"{path}: "), str(e)
  # Broken titles cost nothing: the frames are the clean clip's.
  for ext in CODECS:
    want = outcomes[os.path.join(folder, f"{ext}_clean.{ext}")][0]
    for kind in ("meta_title", "meta_stream_title"):
      np.testing.assert_array_equal(
          outcomes[os.path.join(folder, f"{ext}_{kind}.{ext}")][0], want)
  decoded = sum(not refused(o) for o in outcomes.values())
  assert 10 <= decoded <= len(outcomes) - 5  # the corruptions exercise both outcomes


def test_invalid_utf8_in_stream_metadata_is_read(clean, tmp_path):
  """Issue #19's crash: PyAV decoded a stream title strictly (UnicodeDecodeError)."""
  bad = tmp_path / "bad_title.webm"
  bad.write_bytes(bad_utf8((clean / "clip.webm").read_bytes(), STREAM_TITLE))
  frames, info = video.read_key_frames(bad, M)
  want, want_info = video.read_key_frames(clean / "clip.webm", M)
  np.testing.assert_array_equal(frames, want)
  assert info == want_info


def test_any_failure_inside_the_reader_is_a_video_error_but_ctrl_c(clean, monkeypatch):
  path = str(clean / "clip.mp4")
  failure = IndexError("side data")

  def orientation(frame, stream):
    raise failure

  monkeypatch.setattr(video, "_orientation", orientation)
  for read in READERS:
    with pytest.raises(video.VideoError) as error:
      read(path)
    assert str(error.value) == f"{path}: cannot decode (IndexError: side data)"
    assert error.value.__cause__ is failure
  failure = KeyboardInterrupt()
  with pytest.raises(KeyboardInterrupt):
    video.probe(path)


def test_time_limit_refuses_with_the_limit(clean, monkeypatch):
  path = str(clean / "clip.webm")
  for read in READERS:
    with pytest.raises(video.VideoError) as error:
      read(path, timeout=0)
    assert str(error.value).startswith(f"{path}: decoding took longer than 0 s (limit")
  monkeypatch.setattr(video, "DECODE_TIMEOUT", 0.0)
  with pytest.raises(video.VideoError, match="longer than 0 s"):
    video.probe(path)


def test_time_limit_is_checked_between_packets(clean, monkeypatch):
  # A clock that advances 1 s per look: start (0, deadline 3), av.open's budget (1), then
  # one look per packet: the first packet passes (2), the second hits the limit (3).
  clock = itertools.count()
  monkeypatch.setattr(video, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
  with pytest.raises(video.VideoError, match="longer than 3 s"):
    video.read_key_frames(clean / "clip.mkv", M, timeout=3)
  assert next(clock) == 4


# ------------------------------------------------------------------------ scoring CLI

class TrivialScorer(score.Scorer):
  """The CLI's Scorer with the real reader and no model: the score is the mean pixel."""

  def __init__(self, workdir, step=None, describe_tokens=None, decode_timeout=None):
    # pylint: disable=super-init-not-called  (no workdir, checkpoint or tokenizer)
    self.config = ml_collections.ConfigDict(dict(num_frames=M))
    self.decode_timeout = decode_timeout

  def score_frames(self, frames, describe=True):
    return dict(score=1 + 4 * float(frames.mean()) / 255)


def run_cli(monkeypatch, output, *args):
  """Exit code of `cpllm-score --workdir=unused --nodescribe --output=OUTPUT ARGS` run with
  TrivialScorer."""
  monkeypatch.setattr(score, "Scorer", TrivialScorer)
  if "decode_timeout" not in flags.FLAGS:
    score.define_flags()
  try:
    with pytest.raises(SystemExit) as exit_info:
      score.main(flags.FLAGS(["cpllm-score", "--workdir=unused", "--nodescribe",
                              f"--output={output}", *map(str, args)]))
  finally:
    flags.FLAGS.unparse_flags()
    flags.FLAGS.mark_as_parsed()
  return exit_info.value.code


def lines(output):
  with open(output) as f:
    return [json.loads(line) for line in f]


def test_cli_writes_one_line_per_file_and_exits_1(corpus, monkeypatch, tmp_path):
  folder, outcomes = corpus
  assert run_cli(monkeypatch, tmp_path / "scores.jsonl", folder) == 1
  written = lines(tmp_path / "scores.jsonl")
  assert [line["path"] for line in written] == sorted(outcomes)
  for line in written:
    outcome = outcomes[line["path"]]
    if refused(outcome):
      assert line == dict(path=line["path"], error=str(outcome))
    else:
      assert 1 <= line["score"] <= 5 and "error" not in line


def test_cli_reports_unanticipated_errors_by_type_and_stops_on_ctrl_c(clean, monkeypatch,
                                                                      tmp_path):
  paths = score.expand_inputs([str(clean)])  # clip.mkv, clip.mp4, clip.webm
  failure = IndexError("a bug of ours")
  read = TrivialScorer.read

  def read_failing_second(self, path):
    if path == paths[1]:
      raise failure
    return read(self, path)

  monkeypatch.setattr(TrivialScorer, "read", read_failing_second)
  assert run_cli(monkeypatch, tmp_path / "a.jsonl", clean) == 1
  written = lines(tmp_path / "a.jsonl")
  assert [sorted(line) for line in written] == [["path", "score"], ["error", "path"],
                                                 ["path", "score"]]
  assert written[1]["error"] == f"{paths[1]}: IndexError: a bug of ours"

  failure = KeyboardInterrupt()
  with pytest.raises(KeyboardInterrupt):
    run_cli(monkeypatch, tmp_path / "b.jsonl", clean)
  assert [line["path"] for line in lines(tmp_path / "b.jsonl")] == paths[:1]


def test_cli_decode_timeout_flag(clean, monkeypatch, tmp_path):
  assert run_cli(monkeypatch, tmp_path / "c.jsonl", "--decode_timeout=0", clean) == 1
  for line in lines(tmp_path / "c.jsonl"):
    assert line["error"].startswith(f"{line['path']}: decoding took longer than 0 s")


# ----------------------------------------------------------------------------- builder

def test_mos_videos_uses_or_skips_every_file_with_its_reason(corpus, monkeypatch, tmp_path):
  folder, outcomes = corpus
  labels = tmp_path / "labels.csv"
  labels.write_text("path,mos\n" + "".join(f"{os.path.basename(p)},3\n" for p in outcomes))
  bug = os.path.join(folder, "mkv_clean.mkv")  # decodes, but our code fails on it
  read = video.read_key_frames

  def read_failing_on_bug(path, num_frames, **kwargs):
    if path == bug:
      raise IndexError("a bug of ours")
    return read(path, num_frames, **kwargs)

  monkeypatch.setattr(video, "read_key_frames", read_failing_on_bug)
  config = mos_videos.MosVideosConfig(name="fuzz", dataset="csv", num_frames=M,
                                      max_skip_share=1.0, label_file=str(labels))
  builder = mos_videos.MosVideos(config=config, data_dir=str(tmp_path / "data"))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=folder))

  records = builder.as_data_source("train")
  used = {records[i]["id"].decode() for i in range(len(records))}
  with open(os.path.join(builder.data_dir, "skipped_files_mos_videos.tsv")) as f:
    skipped = dict(line.rstrip("\n").split("\t") for line in list(f)[1:])
  assert len(used) + len(skipped) == len(outcomes)
  assert skipped.pop(bug) == "unreadable video: IndexError: a bug of ours"
  for path, outcome in outcomes.items():
    if path == bug:
      continue
    if refused(outcome):
      assert skipped[path] == "unreadable video: " + build_utils.failure_reason(outcome, path)
    elif outcome[1].num_frames < 2:
      assert skipped[path].startswith("too short")
    else:
      assert os.path.splitext(os.path.basename(path))[0] in used


def test_builders_go_on_after_any_error_but_ctrl_c():
  def work(item):
    if item == 1:
      raise IndexError("a bug of ours")
    if item == 3:
      raise KeyboardInterrupt
    return item * 10

  seen = []
  with pytest.raises(KeyboardInterrupt):
    for item, result, error in build_utils.map_ordered(work, range(5), num_workers=2):
      seen.append((item, result, type(error).__name__ if error else None))
  assert seen == [(0, 0, None), (1, None, "IndexError"), (2, 20, None)]
