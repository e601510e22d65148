"""The real-footage ladder: building it on a tiny real clip, the side-by-side table against
hand-computed values, the evaluation's files and cache, and the baselines' shims."""

import csv
import json
import os
from unittest import mock

import numpy as np
import pytest
import scipy.ndimage
import skimage.data
import skimage.feature

from cpllm.data import video
from cpllm.evals import baselines
from cpllm.evals import real_ladder as RL

CRFS = (13, 23, 35, 51)


def tiny_clip(path):
  """A 6-frame 64x96 pan over a photograph, stored losslessly: uint8[6, 64, 96, 3]."""
  image = skimage.data.astronaut()
  frames = np.stack([image[100 + 2 * t:164 + 2 * t, 150 + 3 * t:246 + 3 * t] for t in range(6)])
  video.write_video(frames, path, fps=6, lossless=True)
  return frames


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
  """(ladder folder, source path, source frames, label rows, build log)."""
  root = tmp_path_factory.mktemp("real_ladder")
  source = str(root / "tiny.mkv")
  frames = tiny_clip(source)
  printed = []
  rows = RL.build(str(root / "ladder"), [source], crfs=CRFS, log=printed.append)
  return str(root / "ladder"), source, frames, rows, printed


def test_ladder_labels_files_and_reference(ladder):
  out, _, frames, rows, printed = ladder
  with open(os.path.join(out, "labels.csv"), newline="") as f:
    reader = csv.DictReader(f)
    assert tuple(reader.fieldnames) == RL.LABEL_COLUMNS
    written = list(reader)
  assert [r["source"] for r in written] == ["tiny"] * 4
  assert [int(r["crf"]) for r in written] == list(CRFS)
  assert [r["path"] for r in written] == [f"tiny/crf{c}.mp4" for c in CRFS]
  assert {(r["width"], r["height"]) for r in written} == {("96", "64")}
  assert RL.read_labels(out) == rows
  vmaf = [r["vmaf"] for r in rows]
  assert vmaf[0] > 90 and vmaf == sorted(vmaf, reverse=True)  # falls along the ladder
  for key in ("ssim", "psnr", "kbps"):
    assert [r[key] for r in rows] == sorted((r[key] for r in rows), reverse=True)
  for row in rows:
    info = video.probe(os.path.join(out, row["path"]))
    assert (info.num_frames, info.width, info.height) == (6, 96, 64)
  # The reference is the source, exactly: metrics are measured against what it holds.
  np.testing.assert_array_equal(video.read_frames(os.path.join(out, "tiny", "reference.mkv")),
                                frames)
  assert sum("CRF" in line for line in printed) == 4  # one progress line per file


def test_ladder_rebuild_reuses_files_and_reports_bad_sources(ladder, tmp_path):
  out, source, _, rows, _ = ladder
  bad = tmp_path / "notes.mp4"
  bad.write_text("not a video")
  mtimes = {n: os.path.getmtime(os.path.join(out, "tiny", n)) for n in os.listdir(
      os.path.join(out, "tiny"))}
  printed = []
  assert RL.build(out, [source, str(bad)], crfs=CRFS, log=printed.append) == rows
  assert {n: os.path.getmtime(os.path.join(out, "tiny", n)) for n in mtimes} == mtimes
  assert sum("(reused)" in line for line in printed) == 4
  skipped = [line for line in printed if line.startswith("skipped")]
  assert len(skipped) == 1 and str(bad) in skipped[0] and "not a readable video" in skipped[0]
  with pytest.raises(FileExistsError, match="another --out"):  # another segment length
    RL.build(out, [source], crfs=CRFS, seconds=0.5, log=printed.append)
  with pytest.raises(video.VideoError, match="no usable source"):
    RL.build(str(tmp_path / "empty"), [str(bad)], crfs=CRFS, log=printed.append)


def test_panned_photos_are_lossless_and_never_trained_on(tmp_path):
  from cpllm.data import demo_clips
  printed = []
  (path,) = RL.panned_photos(str(tmp_path), seconds=3 / RL.PHOTO_FPS, names=("flower",),
                             log=printed.append)
  load, out_hw = RL.HELD_OUT_PHOTOS["flower"]
  # The camera of demo_videos, called here directly with the seed the docstring names.
  expected = demo_clips.render_clip(
      load(), out_hw, 3, np.random.default_rng(demo_clips.stable_seed("held-out photo",
                                                                      "flower")), 480)
  np.testing.assert_array_equal(video.read_frames(path), expected)
  assert os.path.basename(path) == "flower.mkv" and "flower" in printed[0]
  mtime = os.path.getmtime(path)
  assert RL.panned_photos(str(tmp_path), 3 / RL.PHOTO_FPS, ("flower",), printed.append)
  assert os.path.getmtime(path) == mtime and len(printed) == 1  # reused, not re-rendered
  RL.panned_photos(str(tmp_path), 4 / RL.PHOTO_FPS, ("flower",), printed.append)
  assert video.probe(path).num_frames == 4  # another length is rendered again
  # No held-out photo contains a training photo's pixels: a 32x32 block from the middle of
  # each one matches nowhere (normalised cross-correlation; 1.0 where it is found).
  held = {name: load()[..., 1] for name, (load, _) in RL.HELD_OUT_PHOTOS.items()}
  assert not set(held) & set(demo_clips.PHOTOS)
  for train_name in demo_clips.PHOTOS:
    train = demo_clips.load_photo(train_name)[..., 1]
    y, x = train.shape[0] // 2, train.shape[1] // 2
    block = train[y:y + 32, x:x + 32]
    assert skimage.feature.match_template(train, block).max() > 0.999  # the check can fire
    for name, photo in held.items():
      assert skimage.feature.match_template(photo, block).max() < 0.98, (train_name, name)
  with pytest.raises(ValueError, match="unknown held-out photos.*'lena'"):
    RL.panned_photos(str(tmp_path), names=("lena",))


def test_ladder_arguments_checked():
  assert RL.check_crfs([35, 13]) == (13, 35)
  with pytest.raises(ValueError, match="clamps"):
    RL.check_crfs([13, 53])
  with pytest.raises(ValueError, match="distinct"):
    RL.check_crfs([13, 13])
  assert list(RL.source_names(["a/clip.mp4", "b/clip.mov", "c/my clip!.mp4"])) == [
      "clip", "clip-2", "my_clip_"]
  assert [os.path.basename(p) for p in RL.packaged_clips()] == ["bikes.mp4",
                                                                 "bigbuckbunny.mp4"]
  assert all(os.path.isfile(p) for p in RL.packaged_clips())


# Two sources, five CRFs each: the pairs at d = 2 are (13, 15), (15, 17); d = 4: (13, 17);
# d = 10: (13, 23), (23, 33); d = 20: (13, 33).
CRF_LADDER = (13, 15, 17, 23, 33)
VMAF = dict(a=(99, 97, 90, 70, 40), b=(98, 95, 85, 60, 30))
MODEL = dict(a=(5, 4, 4.5, 3, 1), b=(4.8, 4.9, 3.5, 3, 3))


def table_rows():
  return [dict(source=s, crf=c, vmaf=float(v), path=f"{s}/crf{c}.mp4", width=96, height=64)
          for s in "ab" for c, v in zip(CRF_LADDER, VMAF[s])]


def scores(name, values, lower_is_better=False, errors=None):
  values = np.asarray(values, np.float64)
  return RL.Scores(name, values, np.full(len(values), np.nan), errors or {}, lower_is_better)


def test_table_against_hand_computed_values():
  model = np.array(MODEL["a"] + MODEL["b"], np.float64)
  vmaf = np.array(VMAF["a"] + VMAF["b"], np.float64)
  result = RL.compare(table_rows(), [
      scores("model", model), scores("inverted", -model, lower_is_better=True),
      scores("perfect", vmaf / 20)])
  m = result["scorers"]["model"]
  # Flips (more compressed scored higher): a 17 over 15 (d 2); b 15 over 13 (d 2); b 33
  # ties 23 (d 10, counts 1/2). Everything else is ordered right.
  assert m["flip_rate"] == {"2": 2 / 4, "4": 0 / 2, "10": 0.5 / 4, "20": 0 / 2,
                            "overall": 2.5 / 12}
  assert m["flip_ties"]["10"] == 1 / 4 and m["flip_pairs"]["2"] == 4
  # Per source: a's score ranks (5, 3, 4, 2, 1) against VMAF's (5, 4, 3, 2, 1):
  # 1 - 6 * 2 / (5 * 24). b has a tie: ranks (4, 5, 3, 1.5, 1.5), Pearson of the ranks.
  assert m["per_source_srcc"]["a"] == pytest.approx(0.9)
  assert m["per_source_srcc"]["b"] == pytest.approx(8.5 / np.sqrt(9.5 * 10))
  # Pooled: ranks of the 10 scores (ties 3, 3, 3 -> 3) and of the 10 VMAFs, in row order.
  x = np.array([10, 6, 7, 3, 1, 8, 9, 5, 3, 3]) - 5.5
  y = np.array([10, 8, 6, 4, 2, 9, 7, 5, 3, 1]) - 5.5
  assert m["srcc"] == pytest.approx(73.5 / np.sqrt(80.5 * 82.5))
  assert (x @ y, x @ x, y @ y) == (73.5, 80.5, 82.5)  # the hand sums above
  # A lower-is-better scorer is measured on its negated scores: the same numbers.
  inverted = result["scorers"]["inverted"]
  for key in ("srcc", "plcc", "flip_rate", "per_source_srcc"):
    assert inverted[key] == m[key]
  perfect = result["scorers"]["perfect"]
  assert perfect["srcc"] == pytest.approx(1) and perfect["plcc"] == pytest.approx(1)
  assert set(perfect["flip_rate"].values()) == {0.0}

  lines = RL.markdown_table(result).splitlines()
  assert lines[0] == ("| scorer | SRCC | PLCC | FR@2 | FR@4 | FR@10 | FR@20 | SRCC a | "
                      "SRCC b |")
  assert lines[2].startswith("| model | 0.902 | ") and lines[2].endswith(
      " | 0.500 | 0.000 | 0.125 | 0.000 | 0.900 | 0.872 |")
  assert lines[3].startswith("| inverted (negated) | 0.902 |")
  assert lines[4] == ("| perfect | 1.000 | 1.000 | 0.000 | 0.000 | 0.000 | 0.000 | 1.000 | "
                      "1.000 |")


def test_table_uses_only_files_every_scorer_scored():
  rows = table_rows()
  model = np.array(MODEL["a"] + MODEL["b"], np.float64)
  broken = model.copy()
  broken[1] = np.nan
  result = RL.compare(rows, [scores("model", model),
                             scores("other", broken, errors={1: "other: too small"})])
  assert result["n"] == 9 and result["excluded"] == {"a/crf15.mp4": ["other: too small"]}
  # Without a's CRF 15 the d = 2 pairs of a are gone: b's (13, 15) flip and (15, 17).
  assert result["scorers"]["model"]["flip_rate"]["2"] == 1 / 2


def test_evaluate_writes_table_and_caches_baseline_scores(ladder, tmp_path):
  out_ladder, _, _, rows, _ = ladder
  calls = []

  def mean_luma(frame):  # a fake lower-is-better metric that counts its calls
    calls.append(frame.shape)
    return float(frame.mean())

  fake = baselines.Baseline("FAKE", "fake==1", "fake 1", mean_luma)
  model = (lambda path: -float(os.path.basename(path)[3:5]), "a test model")
  printed = []
  result = RL.evaluate(out_ladder, str(tmp_path / "out"), {"model": model}, [fake],
                       key_frames=2, log=printed.append)
  assert calls == [(64, 96, 3)] * 8  # 2 key frames of each of the 4 variants
  assert result["scorers"]["model"]["srcc"] == pytest.approx(1)
  assert result["scorers"]["model"]["flip_rate"]["2"] is None  # no pairs 2 CRFs apart
  files = sorted(os.listdir(tmp_path / "out"))
  assert files == ["metrics.json", "scores.csv", "scores_vs_crf.png", "table.md"]
  table = (tmp_path / "out" / "table.md").read_text()
  assert "| model | 1.000 |" in table and "| FAKE (negated) |" in table
  assert "fake 1; mean over 2 key frames at native resolution" in table
  with open(tmp_path / "out" / "scores.csv", newline="") as f:
    written = list(csv.DictReader(f))
  assert [float(r["model"]) for r in written] == [-c for c in CRFS]
  assert [r["path"] for r in written] == [r["path"] for r in rows]
  assert json.loads((tmp_path / "out" / "metrics.json").read_text())["n"] == 4

  calls.clear()
  again = RL.evaluate(out_ladder, str(tmp_path / "again"), {}, [fake], key_frames=2,
                      log=printed.append)
  assert not calls  # every baseline score came from the cache
  assert again["scorers"]["FAKE"] == result["scorers"]["FAKE"]
  RL.evaluate(out_ladder, str(tmp_path / "three"), {}, [fake], key_frames=3,
              log=printed.append)
  assert len(calls) == 12  # another number of key frames is another score


def test_brisque_shim_matches_the_packages_own_path():
  pytest.importorskip("cv2", reason="BRISQUE needs requirements-baselines.txt")
  brisque_package = pytest.importorskip("brisque")
  frame = skimage.data.chelsea()[:128, :160]
  shimmed = baselines.brisque().score_frame(frame)
  # Unpatched, the package fails on the pinned NumPy 2.4: the reason the shim exists.
  with pytest.raises(TypeError, match="0-dimensional"):
    brisque_package.BRISQUE().score(frame)
  # The package's own scale_features and SVM, fed the same 36 features as plain floats.
  own = brisque_package.BRISQUE.calculate_brisque_features
  as_floats = lambda self, *a, **k: [np.asarray(f).item() for f in own(self, *a, **k)]
  with mock.patch.object(brisque_package.BRISQUE, "calculate_brisque_features", as_floats):
    # (equal up to float summation order inside OpenCV/libsvm between calls)
    assert brisque_package.BRISQUE().score(frame) == pytest.approx(shimmed, rel=1e-9)
  assert shimmed == pytest.approx(16.4961, abs=1e-3)  # brisque 0.2.0 on this crop


def test_niqe_shim_resizes_like_scipy_and_ranks_distortions():
  image = np.arange(7 * 9, dtype=np.float64).reshape(7, 9)
  half = baselines.imresize(image, 0.5)
  assert half.shape == (3, 4) and half.dtype == np.float32  # floor(0.5 * (7, 9))
  np.testing.assert_allclose(baselines.imresize(np.full((8, 10), 42.0), 0.5), 42.0)
  niqe = baselines.niqe()
  frame = skimage.data.chelsea()  # 300 x 451
  blurred = scipy.ndimage.gaussian_filter(frame.astype(float), (2, 2, 0)).astype(np.uint8)
  noisy = np.clip(frame + np.random.default_rng(0).normal(0, 20, frame.shape), 0, 255)
  clean = niqe.score_frame(frame)
  assert clean < niqe.score_frame(blurred) and clean < niqe.score_frame(noisy.astype(np.uint8))
  with pytest.raises(ValueError, match="at least 194"):
    niqe.score_frame(frame[:150])
