"""mos_videos and crf_variants builders on tiny generated clips.

Every input is made here in tmp folders: 96x64 (one 65x49) 12-frame clips cut with camera
motion from scikit-image's photographs, written by video.write_video, plus bad files (text
renamed .mp4, a truncated .mp4, an audio-only .m4a, a one-frame video). Each builder is
built through the Python API into a tmp data_dir with a 3-level ladder and M = 3, and
crf_variants once through the command line; the results are read back with
tfds.data_source / builder_from_directory and through grain.
"""

import math
import os
import shutil
import subprocess
import sys
import tempfile

import grain
import numpy as np
import pytest
import skimage.data
import tensorflow_datasets as tfds
from absl import flags

from cpllm.data import build_utils
from cpllm.data import features
from cpllm.data import video
from data_builders.crf_variants import crf_variants
from data_builders.mos_videos import mos_videos

pytestmark = pytest.mark.slow  # end to end: `make test-fast` leaves it out

flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags.
tfds.disable_progress_bar()

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CRFS = (18, 30, 45)
M = 3
IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


def clip(k, n=12, height=64, width=96):
  """n frames of a moving window over photograph k: uint8[n, height, width, 3]."""
  img = getattr(skimage.data, IMAGES[k % len(IMAGES)])()
  img = img[..., :3] if img.ndim == 3 else np.stack([img] * 3, -1)
  frames = []
  for i in range(n):
    y, x = 10 + 3 * i, 20 + 5 * i
    frames.append(img[y:y + 2 * height:2, x:x + 2 * width:2])
  return np.ascontiguousarray(np.stack(frames).astype(np.uint8))


def write(path, k, pix_fmt="yuv420p", **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  video.write_video(clip(k, **kwargs), path, fps=12, crf=8, pix_fmt=pix_fmt)


def write_bad(folder):
  """The four bad inputs; returns {file name: words its skip reason must contain}."""
  with open(os.path.join(folder, "notes.mp4"), "w") as f:
    f.write("this is a text file renamed to .mp4\n")
  write(os.path.join(folder, "_full.mp4"), 3)
  data = open(os.path.join(folder, "_full.mp4"), "rb").read()
  os.remove(os.path.join(folder, "_full.mp4"))
  with open(os.path.join(folder, "cut.mp4"), "wb") as f:
    f.write(data[:len(data) // 3])  # mp4 index (moov) at the end: lost
  video.run_ffmpeg(["-f", "lavfi", "-i", "sine=frequency=440:duration=0.5", "-c:a", "aac",
                    os.path.join(folder, "voice.m4a")])
  write(os.path.join(folder, "still.mp4"), 4, n=1)
  return {"notes.mp4": "not a readable video", "cut.mp4": "truncated",
          "voice.m4a": "audio only", "still.mp4": "too short"}


def build(builder_cls, config, manual_dir, data_dir):
  builder = builder_cls(config=config, data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def records(data_path, split):
  ds = tfds.builder_from_directory(str(data_path)).as_data_source(split)
  return [ds[i] for i in range(len(ds))]


def text(value):
  return value.decode() if isinstance(value, bytes) else str(value)


def report(path):
  with open(path) as f:
    lines = f.read().splitlines()
  assert lines[0] == "path\treason"
  return dict(line.split("\t") for line in lines[1:])


# ------------------------------------------------------------------------- crf_variants

@pytest.fixture(scope="module")
def crf_build(tmp_path_factory):
  """4 good sources (one 65x49, one in a sub-folder) + 4 bad files, no mos.csv."""
  src = tmp_path_factory.mktemp("sources")
  for k, rel in enumerate(["beach.mp4", "cat.avi", "sub/cup.mkv"]):
    write(str(src / rel), k)
  write(str(src / "odd.mov"), 3, height=49, width=65, pix_fmt="yuv444p")  # odd size kept
  bad = write_bad(str(src))
  (src / "README.txt").write_text("not an input")
  out = tmp_path_factory.mktemp("crf_out")
  cfg = crf_variants.CrfVariantsConfig(name="t3", crfs=CRFS, num_frames=M, test_share=0.25,
                                       max_skip_share=0.5)
  builder = build(crf_variants.CrfVariants, cfg, src, out)
  return builder, src, bad


def check_crf_records(rows, expect_sources, sizes=None):
  by_source = {}
  for r in rows:
    by_source.setdefault(text(r["source_id"]), []).append(r)
  assert sorted(by_source) == sorted(expect_sources)
  for sid, group in by_source.items():
    group.sort(key=lambda r: int(r["crf"]))
    assert [int(r["crf"]) for r in group] == [features.NO_CRF, *CRFS]
    src, variants = group[0], group[1:]
    assert text(src["id"]) == sid and math.isnan(src["vmaf"])
    assert [text(r["id"]) for r in variants] == [f"{sid}@crf{c}" for c in CRFS]
    vmaf = [float(r["vmaf"]) for r in variants]
    kbps = [float(r["bitrate_kbps"]) for r in variants]
    mos = [float(r["mos"]) for r in variants]
    assert vmaf == sorted(vmaf, reverse=True) and vmaf[0] > vmaf[-1] + 20, (sid, vmaf)
    assert kbps == sorted(kbps, reverse=True) and kbps[0] > kbps[-1], (sid, kbps)
    assert float(src["bitrate_kbps"]) > kbps[0]
    assert mos == sorted(mos, reverse=True) and mos[0] <= float(src["mos"]), (sid, mos)
    for r in variants:  # pseudo-MOS formula (VMAF here is already monotone)
      assert float(r["mos"]) == pytest.approx(
          features.pseudo_mos(float(src["mos"]), float(r["vmaf"])), abs=1e-4)
      assert not r["is_original"] and math.isnan(r["mos_native"])
      assert 0 < float(r["ssim"]) <= 1 and float(r["psnr"]) > 10
    for r in group:
      frames = np.stack(r["frames"])
      h, w = (sizes or {}).get(sid, (64, 96))
      assert frames.dtype == np.uint8 and frames.shape == (M, h, w, 3), (sid, frames.shape)
      assert (int(r["height"]), int(r["width"])) == (h, w)
      assert float(r["fps"]) == pytest.approx(12) and float(r["duration"]) == pytest.approx(1)
      assert np.isnan(r["dimensions"]).all() and text(r["description"]) == ""
  return by_source


def test_crf_variants_records(crf_build):
  builder, _, _ = crf_build
  data_path = builder.data_path
  splits = {s: records(data_path, s) for s in ("train", "test")}
  assert {s: len(r) for s, r in splits.items()} == {"train": 12, "test": 4}
  ids = {s: {text(r["source_id"]) for r in rows} for s, rows in splits.items()}
  assert not ids["train"] & ids["test"]  # split by source
  assert ids["train"] | ids["test"] == {"beach", "cat", "sub/cup", "odd"}
  for rows in splits.values():
    by_source = check_crf_records(
        rows, {text(r["source_id"]) for r in rows}, sizes={"odd": (49, 65)})
    for group in by_source.values():  # no mos.csv: pristine sources, MOS 5
      assert float(group[0]["mos"]) == 5.0 and not group[0]["is_original"]
      assert math.isnan(group[0]["mos_native"])
  # Same split again from the same seed and sources.
  train, test = build_utils.seeded_split(["beach", "cat", "sub/cup", "odd"], 0.25, 0)
  assert (set(train), set(test)) == (ids["train"], ids["test"])


def test_crf_variants_skip_report(crf_build):
  builder, src, bad = crf_build
  reasons = report(os.path.join(builder.data_path, "skipped_files_crf_variants.tsv"))
  assert sorted(reasons) == sorted(str(src / name) for name in bad)
  for name, words in bad.items():
    assert words in reasons[str(src / name)], (name, reasons[str(src / name)])
  assert not any("README" in p for p in reasons)  # not a video extension: not an input


def test_crf_variants_through_grain(crf_build):
  builder, _, _ = crf_build
  ds = tfds.data_source("crf_variants/t3", data_dir=os.path.dirname(
      os.path.dirname(os.path.dirname(builder.data_path))), split="train")
  want = sorted(text(ds[i]["id"]) for i in range(len(ds)))
  plain = grain.MapDataset.source(ds).to_iter_dataset()
  assert sorted(text(r["id"]) for r in plain) == want
  workers = (grain.MapDataset.source(ds).map(lambda r: (text(r["id"]), np.stack(r["frames"])))
             .to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(num_workers=2)))
  got = list(workers)
  assert sorted(i for i, _ in got) == want
  assert all(f.dtype == np.uint8 and f.shape[0] == M for _, f in got)


def test_crf_variants_mos_csv(tmp_path, monkeypatch):
  scratch = tmp_path / "scratch"
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))
  src = tmp_path / "src"
  for k, name in enumerate(["a.mp4", "b.mp4", "c.mp4", "d.mp4", "e.mp4"]):
    write(str(src / name), k)
  (src / "mos.csv").write_text(
      "path,mos\n"
      "a.mp4,4.2\n"     # with extension
      "b,3.5\n"         # without
      "c.mp4,nan\n"     # NaN: skipped
      "ghost.mp4,4\n"   # no such file: skipped
      # d.mp4 missing from the table: skipped; e.mp4 with an empty MOS: skipped
      "e.mp4,\n")
  cfg = crf_variants.CrfVariantsConfig(name="m", crfs=CRFS, num_frames=M, test_share=0.0,
                                       max_skip_share=0.7, num_workers=2)
  builder = build(crf_variants.CrfVariants, cfg, src, tmp_path / "out")
  assert list(builder.info.splits) == ["train"]
  by_source = check_crf_records(records(builder.data_path, "train"), ["a", "b"])
  for sid, mos in (("a", 4.2), ("b", 3.5)):
    head = by_source[sid][0]
    assert head["is_original"] and float(head["mos"]) == pytest.approx(mos)
    assert float(head["mos_native"]) == pytest.approx(mos)
    assert float(by_source[sid][-1]["mos"]) < mos
  reasons = report(os.path.join(builder.data_path, "skipped_files_crf_variants.tsv"))
  assert len(reasons) == 4
  assert "NaN" in reasons[str(src / "c.mp4")] and "NaN" in reasons[str(src / "e.mp4")]
  assert "not listed" in reasons[str(src / "d.mp4")]
  assert any(p.startswith("ghost.mp4") and "missing file" in r for p, r in reasons.items())
  assert not [p for p in os.listdir(scratch) if p.startswith("crf_variants_")]  # cleaned up


def test_crf_variants_too_many_skipped(tmp_path):
  src = tmp_path / "src"
  write(str(src / "ok.mp4"), 0)
  write(str(src / "ok2.mp4"), 1)
  write_bad(str(src))
  cfg = crf_variants.CrfVariantsConfig(name="strict", crfs=CRFS, num_frames=M,
                                       max_skip_share=0.25)
  with pytest.raises(build_utils.TooManySkipped, match=r"skipped 4.*More than 25%.*manual_dir"):
    build(crf_variants.CrfVariants, cfg, src, tmp_path / "out")
  # The dataset folder is gone; the report survives in the config folder.
  assert not os.path.exists(tmp_path / "out" / "crf_variants" / "strict" / "1.0.0")
  reasons = report(tmp_path / "out" / "crf_variants" / "strict" / "skipped_files_crf_variants.tsv")
  assert len(reasons) == 4


def test_crf_variants_skips_a_source_on_an_unanticipated_error(tmp_path, monkeypatch):
  src = tmp_path / "src"
  write(str(src / "a.mp4"), 0)
  write(str(src / "b.mp4"), 1)
  real = video.quality_metrics

  def failing_for_b(reference, distorted):  # a bug of ours, not a VideoError
    if os.path.basename(reference) == "b.mp4":
      raise KeyError("vmaf")
    return real(reference, distorted)

  monkeypatch.setattr(video, "quality_metrics", failing_for_b)
  cfg = crf_variants.CrfVariantsConfig(name="bug", crfs=(30,), num_frames=M, test_share=0.0,
                                       max_skip_share=0.5)
  builder = build(crf_variants.CrfVariants, cfg, src, tmp_path / "out")
  assert {text(r["id"]) for r in records(builder.data_path, "train")} == {"a", "a@crf30"}
  assert report(os.path.join(builder.data_path, "skipped_files_crf_variants.tsv")) == {
      str(src / "b.mp4"): "encode/metrics failed: KeyError: 'vmaf'"}


@pytest.mark.parametrize("crfs,words", [
    ((15, 51, 53), ["53", "clamps", "byte-identical", "15..53 ladder cannot be made"]),
    ((18, 30, 30), ["repeated"]),
    ((), ["empty"]),
    ((18.5,), ["not an integer"]),
])
def test_bad_ladders_are_refused(crfs, words):
  with pytest.raises(ValueError) as e:
    crf_variants.CrfVariantsConfig(name="bad", crfs=crfs)
  for w in words:
    assert w in str(e.value)


def test_default_ladder():
  cfg = crf_variants.CrfVariants.BUILDER_CONFIGS[0]
  assert cfg.crfs == tuple(range(13, 52, 2)) and len(cfg.crfs) == 20 and cfg.num_frames == 8


def test_collapsed_ladder_fails(tmp_path, monkeypatch):
  src = tmp_path / "src"
  write(str(src / "a.mp4"), 0)
  scratch = tmp_path / "scratch"
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))
  real = video.encode_x264

  def clamping(source, dst, crf, *, preset="medium"):  # what libx264 does with CRF > 51
    real(source, dst, min(crf, 30), preset=preset)

  monkeypatch.setattr(video, "encode_x264", clamping)
  cfg = crf_variants.CrfVariantsConfig(name="c", crfs=CRFS, num_frames=M)
  with pytest.raises(crf_variants.CollapsedLadder, match="CRF 30 and CRF 45 gave byte-identical"):
    build(crf_variants.CrfVariants, cfg, src, tmp_path / "out")
  assert not [p for p in os.listdir(scratch) if p.startswith("crf_variants_")]  # cleaned up


def tfds_command():
  """The `tfds` command of this environment."""
  return [os.path.join(os.path.dirname(sys.executable), "tfds")]


def test_tfds_command_starts():
  run = subprocess.run(tfds_command() + ["build", "--help"], capture_output=True, text=True,
                       cwd=REPO, timeout=120, check=False)
  assert run.returncode == 0, run.stderr[-2000:]


def test_crf_variants_command_line(tmp_path):
  src = tmp_path / "src"
  write(str(src / "x.mp4"), 0)
  write(str(tmp_path / "y.mp4"), 1)
  # An ordinary .avi as cameras and old tools write it: MPEG-4 Part 2 in AVI.
  video.run_ffmpeg(["-i", str(tmp_path / "y.mp4"), "-c:v", "mpeg4", "-q:v", "2",
                    str(src / "y.avi")])
  out = tmp_path / "out"
  config = '{"name": "cli", "crfs": [18, 30, 45], "num_frames": 3, "test_share": 0.5}'
  run = subprocess.run(
      tfds_command() + ["build", "data_builders/crf_variants", f"--manual_dir={src}",
                        f"--data_dir={out}", f"--config={config}"],
      capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  data_path = out / "crf_variants" / "cli" / "1.0.0"
  assert (data_path / "dataset_info.json").exists()
  assert any(f.endswith(".array_record-00000-of-00001") for f in os.listdir(data_path))
  train = tfds.data_source("crf_variants/cli", data_dir=str(out), split="train")
  test = records(data_path, "test")
  assert len(train) == len(test) == 4
  check_crf_records(list(train) + test, ["x", "y"])
  # A ladder that cannot be made is refused on the command line with the reason.
  bad = '{"name": "paper", "crfs": [15, 17, 51, 53]}'
  run = subprocess.run(
      tfds_command() + ["build", "data_builders/crf_variants", f"--manual_dir={src}",
                        f"--data_dir={out}", f"--config={bad}"],
      capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
  assert run.returncode != 0
  assert "clamps any CRF above 51" in run.stderr and "byte-identical" in run.stderr
  assert not (out / "crf_variants" / "paper").exists()


# --------------------------------------------------------------------------- mos_videos

LSVQ_HEADER = "name,p1,p2,p3,height,width,mos_p1,mos_p2,mos_p3,mos,frame_number,is_test,is_valid"


def lsvq_row(name, mos, is_test):
  return f"{name},0,0,0,64,96,0,0,0,{mos},12,{is_test},True"


def test_mos_videos_lsvq(tmp_path):
  root = tmp_path / "LSVQ"
  names = ["ia-batch1/alpha", "ia-batch1/beta", "yfcc-batch2/1234", "ia-batch2/gamma",
           "yfcc-batch3/999"]
  for k, name in enumerate(names):
    write(str(root / f"{name}.mp4"), k)
  write(str(root / "ia-batch1" / "still.mp4"), 0, n=1)
  (root / "labels_train_test.csv").write_text("\n".join([
      LSVQ_HEADER,
      lsvq_row("ia-batch1/alpha", 50.0, "False"),
      lsvq_row("ia-batch1/beta", 72.5, "False"),
      lsvq_row("yfcc-batch2/1234", 25.0, "True"),
      lsvq_row("ia-batch9/missing", 60.0, "False"),   # no such file
      lsvq_row("ia-batch1/nanmos", "", "False"),      # empty MOS
      lsvq_row("ia-batch1/still", 40.0, "False"),     # a single frame
  ]) + "\n")
  (root / "labels_test_1080p.csv").write_text("\n".join([
      LSVQ_HEADER, lsvq_row("ia-batch2/gamma", 90.0, "True"),
      lsvq_row("yfcc-batch3/999.mp4", 10.0, "True")]) + "\n")
  cfg = mos_videos.MosVideosConfig(name="lsvq_t", dataset="lsvq", num_frames=M,
                                   max_skip_share=0.5)
  builder = build(mos_videos.MosVideos, cfg, root, tmp_path / "out")
  assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == {
      "train": 2, "test": 1, "test_1080p": 2}
  rows = {s: {text(r["id"]): r for r in records(builder.data_path, s)}
          for s in ("train", "test", "test_1080p")}
  assert sorted(rows["train"]) == ["ia-batch1/alpha", "ia-batch1/beta"]
  assert sorted(rows["test"]) == ["yfcc-batch2/1234"]
  assert sorted(rows["test_1080p"]) == ["ia-batch2/gamma", "yfcc-batch3/999"]
  alpha = rows["train"]["ia-batch1/alpha"]
  assert float(alpha["mos"]) == pytest.approx(3.0) and float(alpha["mos_native"]) == 50.0
  assert float(rows["test"]["yfcc-batch2/1234"]["mos"]) == pytest.approx(2.0)
  assert float(rows["test_1080p"]["yfcc-batch3/999"]["mos"]) == pytest.approx(1.4)
  for split in rows.values():
    for vid, r in split.items():
      frames = np.stack(r["frames"])
      assert frames.dtype == np.uint8 and frames.shape == (M, 64, 96, 3)
      assert text(r["source_id"]) == vid and r["is_original"]
      assert int(r["crf"]) == features.NO_CRF and math.isnan(r["vmaf"])
      assert float(r["bitrate_kbps"]) > 0 and float(r["fps"]) == pytest.approx(12)
      assert (int(r["height"]), int(r["width"])) == (64, 96)
  reasons = report(os.path.join(builder.data_path, "skipped_files_mos_videos.tsv"))
  assert len(reasons) == 3
  assert reasons[str(root / "ia-batch1" / "still.mp4")].startswith("too short: 1 frame")
  assert any("missing" in p and r.startswith("missing file") for p, r in reasons.items())
  assert any("nanmos" in p and "missing or NaN" in r for p, r in reasons.items())
  # Through grain with worker processes, as the training pipeline reads it.
  source = tfds.builder_from_directory(builder.data_path).as_data_source("test_1080p")
  loaded = (grain.MapDataset.source(source).map(lambda r: text(r["id"])).to_iter_dataset()
            .mp_prefetch(grain.MultiprocessingOptions(num_workers=2)))
  assert sorted(loaded) == sorted(rows["test_1080p"])


def test_mos_videos_konvid_with_seeded_split(tmp_path):
  root = tmp_path / "KoNViD"
  ids = ["3240926995", "5001", "5002", "5003"]
  for k, i in enumerate(ids):
    write(str(root / "KoNViD_1k_videos" / f"{i}.mp4"), k)
  shutil.copy(root / "KoNViD_1k_videos" / "5001.mp4", root / "KoNViD_1k_videos" / "7777.mp4")
  with open(root / "KoNViD_1k_videos" / "7777.mp4", "r+b") as f:
    f.truncate(300)  # broken file: skipped with the decoder's reason
  (root / "KoNViD_1k_mos.csv").write_text(
      '"flickr_id","mos"\n' + "".join(f"{i},{m}\n" for i, m in zip(
          ids + ["7777"], [3.0, 4.5, 1.5, 2.25, 3.3])))
  cfg = mos_videos.MosVideosConfig(name="konvid_t", dataset="konvid", num_frames=M,
                                   test_share=0.25, max_skip_share=0.25, num_workers=2)
  builder = build(mos_videos.MosVideos, cfg, root, tmp_path / "out")
  train = {text(r["id"]): r for r in records(builder.data_path, "train")}
  test = {text(r["id"]): r for r in records(builder.data_path, "test")}
  assert len(train) == 3 and len(test) == 1 and not set(train) & set(test)
  assert set(train) | set(test) == set(ids)
  both = {**train, **test}
  assert float(both["5001"]["mos"]) == pytest.approx(4.5)  # KoNViD is already 1..5
  reasons = report(os.path.join(builder.data_path, "skipped_files_mos_videos.tsv"))
  assert list(reasons) == [str(root / "KoNViD_1k_videos" / "7777.mp4")]


def test_mos_videos_generic_csv_ytugc_livevqc(tmp_path):
  # Generic CSV: paths with and without extension, a per-row native range.
  root = tmp_path / "generic"
  write(str(root / "clips" / "one.mp4"), 0)
  write(str(root / "two.mkv"), 1)
  (root / "mos.csv").write_text(
      "path,mos,mos_min,mos_max\nclips/one.mp4,7.5,0,10\ntwo,2,1,5\n")
  cfg = mos_videos.MosVideosConfig(name="csv_t", dataset="csv", num_frames=M)
  builder = build(mos_videos.MosVideos, cfg, root, tmp_path / "out")
  rows = {text(r["id"]): r for r in records(builder.data_path, "train")}
  assert float(rows["clips/one"]["mos"]) == pytest.approx(4.0)
  assert float(rows["two"]["mos"]) == pytest.approx(2.0)
  assert not os.path.exists(os.path.join(builder.data_path, "skipped_files_mos_videos.tsv"))

  # YouTube-UGC: `vid` and `MOS full`; <vid>.mkv or <vid>_orig.mp4 in category folders.
  root = tmp_path / "ytugc"
  write(str(root / "original_videos" / "Gaming" / "360P" / "Gaming_360P-1a2b.mkv"), 2)
  write(str(root / "original_videos_h264" / "Vlog_480P-77aa_orig.mp4"), 3)
  (root / "original_videos_MOS_for_YouTube_UGC_dataset.csv").write_text(
      "vid,category,resolution,MOS full,MOS chunk00\n"
      "Gaming_360P-1a2b,Gaming,360,3.2,3.1\nVlog_480P-77aa,Vlog,480,4.6,4.4\n")
  cfg = mos_videos.MosVideosConfig(name="yt_t", dataset="ytugc", num_frames=M)
  builder = build(mos_videos.MosVideos, cfg, root, tmp_path / "out")
  rows = {text(r["id"]): float(r["mos"]) for r in records(builder.data_path, "train")}
  assert rows == pytest.approx({"Gaming_360P-1a2b": 3.2, "Vlog_480P-77aa": 4.6})

  # LIVE-VQC: a CSV export of data.mat, names with extension, MOS 0..100.
  root = tmp_path / "livevqc"
  write(str(root / "Video" / "A001.mp4"), 4)
  write(str(root / "Video" / "B002.mp4"), 5)
  (root / "LIVE_VQC.csv").write_text("File,MOS\nA001.mp4,75\nB002.mp4,12.5\n")
  cfg = mos_videos.MosVideosConfig(name="vqc_t", dataset="livevqc", num_frames=M)
  builder = build(mos_videos.MosVideos, cfg, root, tmp_path / "out")
  rows = {text(r["id"]): float(r["mos"]) for r in records(builder.data_path, "train")}
  assert rows == pytest.approx({"A001": 4.0, "B002": 1.5})


def test_mos_videos_fails_on_wrong_folder(tmp_path):
  root = tmp_path / "wrong"
  root.mkdir()
  (root / "labels_train_test.csv").write_text("\n".join(
      [LSVQ_HEADER] + [lsvq_row(f"ia-batch1/v{i}", 50, "False") for i in range(5)]) + "\n")
  cfg = mos_videos.MosVideosConfig(name="lsvq_w", dataset="lsvq", num_frames=M)
  with pytest.raises(build_utils.TooManySkipped, match="skipped 5.*wrong --manual_dir"):
    build(mos_videos.MosVideos, cfg, root, tmp_path / "out")


def test_file_index_resolves_label_names(tmp_path):
  for rel in ["videos/ia-batch1/xyz.mp4", "videos/ia-batch1/dup.mp4", "other/dup.mp4",
              "KoNViD_1k_videos/42.mp4", "ugc/Vlog_480P-1_orig.mp4", "both.mkv", "both.mp4",
              "notes.txt"]:
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_bytes(b"")
  index = build_utils.FileIndex(tmp_path, prefer=(".mkv",))
  assert "notes.txt" not in index.files and len(index.files) == 7
  assert index.lookup("ia-batch1/xyz") == "videos/ia-batch1/xyz.mp4"
  assert index.lookup("./ia-batch1/xyz.mp4") == "videos/ia-batch1/xyz.mp4"
  assert index.lookup("xyz.mkv") == "videos/ia-batch1/xyz.mp4"  # other extension
  assert index.lookup("42") == "KoNViD_1k_videos/42.mp4"
  assert index.lookup("Vlog_480P-1", suffixes=("", "_orig")) == "ugc/Vlog_480P-1_orig.mp4"
  assert index.lookup("both") == "both.mkv"  # preferred extension
  assert index.lookup("ia-batch1/dup") == "videos/ia-batch1/dup.mp4"  # longer key decides
  with pytest.raises(ValueError, match="ambiguous"):
    index.lookup("dup")
  with pytest.raises(ValueError, match="no video file"):
    index.lookup("ia-batch1/nothere")
