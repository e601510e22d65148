"""demo_videos and quality_instructions builders, and the clip code in cpllm/data/demo_clips.py.

The builders run at toy size (2-3 photos, 48x64 clips of 8 frames, M=3, a short CRF ladder)
in a tmp data_dir: once through the Python API, once through the `tfds build` command
line. Expected values of the distortion functions are worked out by hand.
"""

import collections
import json
import math
import os
import re
import subprocess
import sys
import warnings

import grain
import numpy as np
import skimage.data
import pytest
import tensorflow_datasets as tfds
from absl import flags

from cpllm.data import demo_clips
from cpllm.data import features
from cpllm.data import instructions
from cpllm.data import tokenizer
from data_builders.demo_videos import demo_videos
from data_builders.quality_instructions import quality_instructions

pytestmark = pytest.mark.slow  # end to end: `make test-fast` leaves it out

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIM = {name: i for i, name in enumerate(features.DIMENSIONS)}

TINY = dict(
    name="tiny", sources=("chelsea", "coins", "rocket"), height=48, width=64,
    clip_frames=8, num_frames=3, crfs=(23, 33, 43), blur_sigmas=(1.0, 2.5),
    noise_sigmas=(5.0, 20.0), grain_sigma=5.0, grain_crfs=(23, 43), exposure_gains=(0.6, 1.6),
    stutter_strengths=(0.3,),
    drop_strengths=(0.3,), vocab_size=600)


def read_all(builder_or_dir, split):
  builder = (tfds.builder_from_directory(builder_or_dir)
             if isinstance(builder_or_dir, (str, os.PathLike)) else builder_or_dir)
  source = builder.as_data_source(split)
  return [source[i] for i in range(len(source))]


def text(value):
  return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def demo(data_dir):
  """The tiny demo_videos build: (builder, {split: [records]})."""
  builder = demo_videos.DemoVideos(config=demo_videos.DemoVideosConfig(**TINY),
                                   data_dir=str(data_dir))
  builder.download_and_prepare()
  return builder, {split: read_all(builder, split) for split in builder.info.splits}


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("manual")
  (d / "summaries.jsonl").write_text(
      '{"id": "chelsea/pristine", "text": "A ginger cat lies on a floor. A natural '
      'photograph. The quality is excellent."}\n'
      '\n'
      '{"id": "coins/crf43", "text": ""}\n'  # line 3: empty text
      '{"id": "coins/blur2.5", "text": "Old coins on a table. A museum photograph. '
      'The picture is blurred."}\n'
      '{"id": "x", "text": "broken\n')  # line 5: not JSON
  (d / "conversations.json").write_text(json.dumps([
      {"id": "rocket/noise20", "conversations": [
          {"from": "human", "value": "<video>\nIs the video noisy?"},
          {"from": "gpt", "value": "Yes, heavily."}]},
      {"video": "rocket/crf23", "conversations": [
          {"from": "human", "value": "Is it sharp?"}]},  # record [1]: no answer
      {"id": "not_a_demo_video", "conversations": [
          {"from": "human", "value": "Rate it."}, {"from": "gpt", "value": "Good."}]},
  ]))
  return d


@pytest.fixture(scope="module")
def qi(demo, data_dir, manual_dir):
  del demo  # built first: quality_instructions reads it
  builder = quality_instructions.QualityInstructions(
      config=quality_instructions.QualityInstructionsConfig(
          name="tiny", video_config="tiny", max_skip_share=0.5),
      data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder, {split: read_all(builder, split) for split in builder.info.splits}


def by_source(records):
  out = collections.defaultdict(dict)
  for r in records:
    source, variant = text(r["id"]).split("/")
    grainy = variant.startswith("noise5_crf")  # the grainy ladder is a source of its own
    assert text(r["source_id"]) == (f"{source}+noise5" if grainy else source)
    out[source][variant] = r
  return out


# --------------------------------------------------------------------------- demo_videos

def test_splits_are_disjoint_by_source(demo):
  builder, splits = demo
  assert set(splits) == {"train", "test"}
  sources = {s: {text(r["source_id"]).split("+")[0] for r in rs} for s, rs in splits.items()}
  assert not sources["train"] & sources["test"]
  assert sources["train"] | sources["test"] == set(TINY["sources"])
  assert len(sources["test"]) == 1  # round(0.25 * 3)
  assert builder.info.metadata["split_sources"] == {s: sorted(v) for s, v in sources.items()}
  assert builder.info.file_format.value == "array_record"


def test_record_layout(demo):
  builder, splits = demo
  records = [r for rs in splits.values() for r in rs]
  n_variants = 1 + sum(len(TINY[k]) for k in ("crfs", "blur_sigmas", "noise_sigmas",
                                               "exposure_gains", "stutter_strengths",
                                               "drop_strengths", "grain_crfs"))
  assert len(records) == len(TINY["sources"]) * n_variants
  assert len({text(r["id"]) for r in records}) == len(records)
  assert set(builder.info.features.keys()) == set(features.video_features(3).keys())
  for r in records:
    frames = np.stack(r["frames"])
    portrait = text(r["source_id"]).startswith("rocket")
    assert frames.shape == ((3, 64, 48, 3) if portrait else (3, 48, 64, 3))
    assert (int(r["height"]), int(r["width"])) == frames.shape[1:3]
    assert r["is_original"]  # every demo video has a trusted label
    variant = text(r["id"]).split("/")[1]
    crf = variant.split("_")[-1]
    assert r["crf"] == (int(crf[3:]) if crf.startswith("crf") else features.NO_CRF)
    assert math.isnan(r["mos_native"])
    assert 1.0 <= r["mos"] <= 5.0 and np.all((r["dimensions"] >= 1) & (r["dimensions"] <= 5))
    assert np.isfinite([r["vmaf"], r["ssim"], r["psnr"], r["bitrate_kbps"]]).all()
    assert r["fps"] == 24.0 and r["duration"] == pytest.approx(8 / 24)
  pristine = [r for r in records if text(r["id"]).endswith("/pristine")]
  assert all(r["mos"] == 5.0 and r["vmaf"] > 95 for r in pristine)


def test_key_frames_come_from_the_distorted_clip(demo):
  _, splits = demo
  for variants in by_source([r for rs in splits.values() for r in rs]).values():
    ref = np.stack(variants["pristine"]["frames"]).astype(float)
    dark = np.stack(variants["gain0.6"]["frames"]).astype(float)
    np.testing.assert_allclose(dark, np.rint(ref * 0.6), atol=0)  # lossless + exact gain
    blurred = np.stack(variants["blur2.5"]["frames"]).astype(float)
    assert np.abs(np.diff(blurred, axis=2)).mean() < 0.6 * np.abs(np.diff(ref, axis=2)).mean()


def test_quality_falls_with_crf_blur_and_noise(demo):
  _, splits = demo
  for source, v in by_source([r for rs in splits.values() for r in rs]).items():
    for ladder in (["crf23", "crf33", "crf43"], ["pristine", "blur1", "blur2.5"],
                   ["pristine", "noise5", "noise20"]):
      vmaf = [v[name]["vmaf"] for name in ladder]
      mos = [v[name]["mos"] for name in ladder]
      psnr = [v[name]["psnr"] for name in ladder]
      assert vmaf == sorted(vmaf, reverse=True) and len(set(vmaf)) == 3, (source, ladder, vmaf)
      assert mos == sorted(mos, reverse=True) and len(set(mos)) == 3, (source, ladder, mos)
      assert psnr == sorted(psnr, reverse=True), (source, ladder, psnr)
    # The grainy ladder: scored against the grainy clip, no rung better than that clip.
    grainy = [v[name]["mos"] for name in ("noise5", "noise5_crf23", "noise5_crf43")]
    assert grainy == sorted(grainy, reverse=True) and grainy[1] > grainy[2], (source, grainy)
    assert v["noise5_crf23"]["vmaf"] > v["noise5_crf43"]["vmaf"]


def test_dimensions_move_with_their_distortion(demo):
  _, splits = demo
  for variants in by_source([r for rs in splits.values() for r in rs]).values():
    dims = {name: r["dimensions"] for name, r in variants.items()}
    np.testing.assert_array_equal(dims["pristine"], 5.0)
    for names, affected in ((["blur1", "blur2.5"], "sharpness"),
                            (["noise5", "noise20"], "noise"),
                            (["crf33", "crf43"], "compression"),
                            (["stutter0.3"], "smoothness"), (["drop0.3"], "smoothness"),
                            (["gain0.6"], "exposure"), (["gain1.6"], "exposure")):
      scores = [dims[n][DIM[affected]] for n in names]
      assert scores == sorted(scores, reverse=True) and scores[-1] < 4.2, (names, scores)
      if names[0].startswith(("blur", "noise", "stutter", "drop", "gain")):
        others = np.delete(np.stack([dims[n] for n in names]), DIM[affected], axis=1)
        np.testing.assert_array_equal(others, 5.0)  # nothing else is touched
    assert dims["blur2.5"][DIM["sharpness"]] < dims["blur1"][DIM["sharpness"]] < 5.0


def test_descriptions_state_the_overall_level(demo):
  _, splits = demo
  for r in [r for rs in splits.values() for r in rs]:
    description = text(r["description"])
    mos = demo_clips.stored_score(r["mos"])
    assert instructions.stated_level(description) == instructions.score_to_level(mos)
    # and every dimension's level is stated for the stored score
    for name, score in zip(features.DIMENSIONS, r["dimensions"]):
      topic = instructions.DIMENSIONS[name].topic
      assert topic.lower() in description.lower()
      assert instructions.score_to_level(float(score)) in description


def test_tokenizer_is_stored_with_the_dataset(demo, data_dir):
  builder, splits = demo
  path = demo_clips.tokenizer_path(str(data_dir), config="tiny")
  assert os.path.dirname(path) == os.fspath(builder.data_dir)
  assert demo_clips.tokenizer_path(builder.data_dir) == path  # a version dir works too
  assert demo_videos.tokenizer_path is demo_clips.tokenizer_path
  tok = tokenizer.Tokenizer(path)
  assert tok.vocab_size == TINY["vocab_size"]
  ids = tok.level_token_ids()  # raises unless every level word is a single token
  assert len(set(ids)) == 5
  for level in instructions.LEVELS:
    assert tok.pieces(tok.encode(" " + level)) == ["\u2581" + level]
  sample = text(splits["train"][0]["description"])
  assert tok.decode(tok.encode(sample)) == sample
  assert tok.pieces(tok.encode("<answer>3.42</answer>")) == [
      "<answer>", "3", ".", "4", "2", "</answer>"]
  with pytest.raises(FileNotFoundError, match="demo_videos"):
    demo_clips.tokenizer_path(str(data_dir), config="no_such_config")


@pytest.mark.parametrize("built", ["demo", "qi"])
@pytest.mark.parametrize("workers", [0, 2])
def test_grain_reads_the_data_source(request, built, workers):
  flags.FLAGS.mark_as_parsed()
  builder, splits = request.getfixturevalue(built)
  source = builder.as_data_source("train")
  ds = grain.MapDataset.source(source).to_iter_dataset()
  if workers:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    got = list(ds)
  key = lambda r: (text(r["id"]), text(r.get("prompt", "")), text(r.get("answer", "")))
  assert sorted(map(key, got)) == sorted(map(key, splits["train"]))
  if built == "demo":
    assert all(np.stack(r["frames"]).shape[0] == 3 for r in got)


def _tfds_build_command():
  return [os.path.join(os.path.dirname(sys.executable), "tfds"), "build"]


def test_command_line_build(tmp_path):
  config = dict(TINY, name="cli", sources=["chelsea", "coins"], crfs=[25, 45],
                blur_sigmas=[2.0], noise_sigmas=[], grain_sigma=None, exposure_gains=[],
                stutter_strengths=[], drop_strengths=[0.3])  # no noise-5 clip for TINY's grain
  cmd = _tfds_build_command() + [
      "data_builders/demo_videos", f"--data_dir={tmp_path}", f"--config={json.dumps(config)}"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  version_dir = tmp_path / "demo_videos" / "cli" / "1.1.0"
  assert sorted(p.name for p in version_dir.iterdir() if "array_record" in p.name) == [
      "demo_videos-test.array_record-00000-of-00001",
      "demo_videos-train.array_record-00000-of-00001"]
  records = read_all(str(version_dir), "train") + read_all(str(version_dir), "test")
  assert len(records) == 2 * 5
  assert os.path.isfile(demo_clips.tokenizer_path(str(tmp_path), config="cli"))


# ------------------------------------------------------------------ quality_instructions

def test_quality_instructions_has_every_kind_and_follows_the_video_splits(demo, qi):
  _, videos = demo
  _, splits = qi
  assert set(splits) == {"train", "test"}
  video_split = {text(r["id"]): s for s, rs in videos.items() for r in rs}
  mos = {text(r["id"]): demo_clips.stored_score(r["mos"])
         for rs in videos.values() for r in rs}
  kinds = collections.Counter()
  for split, records in splits.items():
    for r in records:
      vid, kind = text(r["id"]), text(r["kind"])
      kinds[kind] += 1
      if vid in video_split:
        assert video_split[vid] == split, (vid, kind)
      else:
        assert split == "train" and kind == "llava"
      other = text(r["other_id"])
      assert (other != "") == (kind == "compare")
      if kind == "compare":
        assert video_split[other] == split and other != vid
      if kind == "grpo":
        assert text(r["prompt"]) == instructions.GRPO_PROMPT
        m = re.fullmatch(r"<think>(.+)</think><answer>(\d\.\d\d)</answer>",
                         text(r["answer"]), re.S)
        assert m and float(m.group(2)) == round(mos[vid], 2), (vid, r["answer"])
        assert instructions.stated_level(m.group(1)) == instructions.score_to_level(mos[vid])
      if kind == "level":
        assert text(r["prompt"]) == instructions.LEVEL_PROMPT
        assert text(r["answer"]) == instructions.level_answer(mos[vid])
  assert set(kinds) == set(demo_clips.INSTRUCTION_KINDS)
  for kind in demo_clips.SIG_KINDS:
    assert kinds[kind] == len(video_split), kind
  assert kinds["annotation"] == 2 and kinds["llava"] == 2


def test_imports_skip_malformed_records_with_reasons(qi, manual_dir):
  builder, splits = qi
  annotation = [r for r in splits["train"] + splits["test"] if text(r["kind"]) == "annotation"]
  assert {text(r["prompt"]) for r in annotation} == {demo_clips.ANNOTATION_PROMPT}
  llava = {text(r["id"]): r for rs in splits.values() for r in rs if text(r["kind"]) == "llava"}
  assert text(llava["rocket/noise20"]["prompt"]) == "Is the video noisy?"
  report = os.path.join(builder.data_dir, "skipped_files_quality_instructions.tsv")
  with open(report) as f:
    rows = [line.rstrip("\n").split("\t") for line in f][1:]
  where = {path: reason for path, reason in rows}
  assert set(where) == {f"{manual_dir}/summaries.jsonl:3", f"{manual_dir}/summaries.jsonl:5",
                        f"{manual_dir}/conversations.json record [1]"}
  assert "'text' must be a non-empty string" in where[f"{manual_dir}/summaries.jsonl:3"]
  assert "no gpt answer" in where[f"{manual_dir}/conversations.json record [1]"]


def test_too_many_malformed_imports_fail_the_build(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "a.jsonl").write_text('{"id": "v1", "text": "fine"}\nnot json\n{"id": 3}\n')
  builder = quality_instructions.QualityInstructions(
      config=quality_instructions.QualityInstructionsConfig(name="strict", video_builder=""),
      data_dir=str(tmp_path / "data"))
  with pytest.raises(Exception, match="More than 10% of the inputs were skipped"):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  report = tmp_path / "data" / "quality_instructions" / "strict" / \
      "skipped_files_quality_instructions.tsv"
  assert f"{manual}/a.jsonl:2\t" in report.read_text()


def test_missing_video_dataset_is_named(tmp_path):
  builder = quality_instructions.QualityInstructions(
      config=quality_instructions.QualityInstructionsConfig(name="nothing"),
      data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="demo_videos/default"):
    builder.download_and_prepare()


# ------------------------------------------------------------------ demo_clips: clips

def test_camera_motion_changes_frames_smoothly():
  photo = demo_clips.load_photo("astronaut")
  frames = demo_clips.render_clip(photo, (48, 64), 12, np.random.default_rng(0))
  assert frames.shape == (12, 48, 64, 3) and frames.dtype == np.uint8
  f = frames.astype(float)
  step = np.abs(np.diff(f, axis=0)).mean(axis=(1, 2, 3))  # consecutive frames
  assert (step > 0.5).all()  # every frame moves
  far = np.abs(f[-1] - f[0]).mean()
  assert step.max() < far  # neighbours are closer than the ends of the clip
  for a, b in zip(f[:-1], f[1:]):
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.8
  again = demo_clips.render_clip(photo, (48, 64), 12, np.random.default_rng(0))
  np.testing.assert_array_equal(frames, again)  # seeded


def test_motion_stays_inside_the_photo():
  rng = np.random.default_rng(1)
  for _ in range(20):
    motion = demo_clips.random_motion(rng, (100, 140), (48, 64))
    centres, zooms = motion.path(16)
    assert np.all((zooms >= 1.0) & (zooms <= 1.35)) and abs(zooms[-1] - zooms[0]) >= 0.1
    assert np.all(centres[:, 0] >= 23.5) and np.all(centres[:, 0] <= 100 - 1 - 23.5)
    assert np.all(centres[:, 1] >= 31.5) and np.all(centres[:, 1] <= 140 - 1 - 31.5)


def test_every_photo_loads_offline():
  for name in demo_clips.PHOTOS:
    photo = demo_clips.load_photo(name)
    assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3, name
    assert min(photo.shape[:2]) >= 150, name
  with pytest.raises(ValueError, match="unknown demo photo"):
    demo_clips.load_photo("lena")


# ------------------------------------------------------------- demo_clips: distortions

def test_noise_sigma_is_measured_as_requested():
  grey = np.full((4, 64, 64, 3), 128, np.uint8)
  for sigma in (5.0, 10.0, 20.0):
    noisy = demo_clips.gaussian_noise(grey, sigma, np.random.default_rng(0))
    residual = noisy.astype(float) - 128
    assert residual.std() == pytest.approx(sigma, rel=0.03)
    assert abs(residual.mean()) < 0.2
  assert not np.array_equal(noisy[0], noisy[1])  # fresh noise every frame


def test_exposure_gain_is_applied_exactly_before_clipping():
  v = np.array([0, 1, 3, 100, 127, 128, 200, 255], np.uint8).reshape(1, 1, 8, 1)
  v = np.repeat(v, 3, axis=-1)
  np.testing.assert_array_equal(demo_clips.exposure(v, gain=2.0)[0, 0, :, 0],
                                [0, 2, 6, 200, 254, 255, 255, 255])
  # x 0.5 rounds half to even: 0.5 -> 0, 1.5 -> 2, 63.5 -> 64, 127.5 -> 128
  np.testing.assert_array_equal(demo_clips.exposure(v, gain=0.5)[0, 0, :, 0],
                                [0, 0, 2, 50, 64, 64, 100, 128])
  np.testing.assert_array_equal(demo_clips.exposure(v, gamma=2.0)[0, 0, :, 0],
                                np.rint(255 * (np.array([0, 1, 3, 100, 127, 128, 200, 255])
                                               / 255) ** 2))
  with pytest.raises(ValueError):
    demo_clips.exposure(v, gain=0.0)


def test_blur_keeps_flat_frames_and_spreads_an_impulse():
  flat = np.full((2, 16, 16, 3), 77, np.uint8)
  np.testing.assert_array_equal(demo_clips.gaussian_blur(flat, 2.0), flat)
  impulse = np.zeros((1, 41, 41, 3), np.uint8)
  impulse[0, 20, 20] = 255
  for sigma in (1.0, 2.0):
    out = demo_clips.gaussian_blur(impulse, sigma)[0, 20, :, 0].astype(float)
    # a sampled Gaussian: the centre row is 255 * g(0) * g(x), g(0) = 1 / (sqrt(2 pi) sigma)
    x = np.arange(41) - 20
    g = np.exp(-x ** 2 / (2 * sigma ** 2)) / (np.sqrt(2 * np.pi) * sigma)
    np.testing.assert_allclose(out, 255 * g[20] * g, atol=1.0)
  np.testing.assert_array_equal(demo_clips.gaussian_blur(impulse, 0.0), impulse)


def test_stutter_and_drops_only_repeat_frames():
  frames = np.arange(8, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
  stalled = demo_clips.stutter(frames, 0.3, np.random.default_rng(0))[:, 0, 0, 0]
  dropped = demo_clips.drop_frames(frames, 0.3, np.random.default_rng(0))[:, 0, 0, 0]
  for out in (stalled, dropped):
    assert out[0] == 0 and np.all(np.diff(out.astype(int)) >= 0)
    assert (np.diff(out.astype(int)) == 0).sum() == round(0.3 * 7)  # 2 repeats
  assert np.all(np.diff(stalled.astype(int)) <= 1)  # stutter: late, never skips ahead
  for i in range(1, 8):  # drops: a frame is itself or the previous one held
    assert dropped[i] == i or dropped[i] == dropped[i - 1]


def test_photo_scale_keeps_a_video_scale():
  """By hand: a 512 x 512 photo under a 480 scene shrinks to 480 (0.9375); a 172 x 448
  page stays native (1.0); a 1411 x 1411 retina shrinks to 480 / 1411; a 100 x 100 thumb
  is enlarged until 1.4 windows of 120 x 160 fit (1.4 * 160 / 100 = 2.24); without a
  scene every photo shrinks to that fit (512: 1.4 * 160 / 512 = 0.4375)."""
  scale = demo_clips.photo_scale
  assert scale((512, 512), (120, 160), 480) == pytest.approx(0.9375)
  assert scale((172, 448), (120, 160), 480) == 1.0
  assert scale((1411, 1411), (120, 160), 480) == pytest.approx(480 / 1411)
  assert scale((100, 100), (120, 160), 480) == pytest.approx(2.24)
  assert scale((512, 512), (120, 160), None) == pytest.approx(0.4375)
  image = demo_clips.prescale_photo(np.zeros((512, 512, 3), np.uint8), (120, 160), 480)
  assert image.shape == (480, 480, 3)


def test_distortion_names_and_spec_validation():
  names = [d.name for d in demo_clips.ClipSpec().distortions()]
  assert names[:3] == ["pristine", "crf13", "crf15"] and "crf51" in names
  assert {"blur0.8", "noise20", "gain0.5", "gain2", "stutter0.15", "drop0.3"} <= set(names)
  assert len(names) == len(set(names)) == 35
  grainy = [d.name for d in demo_clips.ClipSpec(grain_sigma=5.0).distortions()]
  assert grainy[35:] == [f"noise5_crf{c}" for c in range(13, 50, 4)]
  with pytest.raises(ValueError, match="grain_sigma 7"):
    demo_clips.ClipSpec(grain_sigma=7.0)
  with pytest.raises(ValueError, match="grain is a property of a CRF rung"):
    demo_clips.Distortion("blur", 1.0, grain=5.0)
  with pytest.raises(ValueError, match="scene_short 100"):
    demo_clips.ClipSpec(scene_short=100)
  with pytest.raises(ValueError, match="outside libx264"):
    demo_clips.ClipSpec(crfs=(21, 53))
  with pytest.raises(ValueError, match="unknown or no demo sources"):
    demo_clips.ClipSpec(sources=("lena",))
  with pytest.raises(ValueError, match="unknown distortion"):
    demo_clips.Distortion("jpeg", 50)


def test_train_only_sources_join_train_and_leave_the_split():
  default = demo_clips.ClipSpec()
  smooth = demo_clips.ClipSpec(train_only=("colorwheel", "phantom"))
  assert not set(demo_clips.SMOOTH_PHOTOS) & set(default.sources)
  train, test = default.split()
  assert smooth.split() == (train + ["colorwheel", "phantom"], test)
  assert len(test) == 4 and sorted(train + test) == sorted(default.sources)
  phantom = demo_clips.load_photo("phantom")
  want = np.rint(skimage.data.shepp_logan_phantom() * 255)  # float [0, 1] -> code values
  assert phantom.dtype == np.uint8 and phantom.shape == want.shape + (3,)
  assert np.abs(phantom[..., 1] - want).max() <= 1 and (phantom[..., 0] == phantom[..., 2]).all()
  np.testing.assert_array_equal(demo_clips.load_photo("colorwheel"), skimage.data.colorwheel())
  for bad in (("lena",), ("coins",)):  # unknown; already a split source
    with pytest.raises(ValueError, match=f"train_only sources \\['{bad[0]}'\\]"):
      demo_clips.ClipSpec(train_only=bad)


# ------------------------------------------------------------------ demo_clips: labels

def test_dimension_scores_are_monotone_in_their_parameter():
  def score(kind, value, dim):
    return demo_clips.dimension_scores(demo_clips.Distortion(kind, value))[dim]
  for kind, dim, values in (("blur", "sharpness", [0.5, 1, 2, 4]),
                            ("noise", "noise", [2, 5, 10, 20, 40]),
                            ("crf", "compression", [15, 25, 35, 45, 51]),
                            ("stutter", "smoothness", [0.1, 0.3, 0.6]),
                            ("drop", "smoothness", [0.1, 0.3, 0.6]),
                            ("exposure", "exposure", [1.2, 1.5, 2.0, 3.0]),
                            ("exposure", "exposure", [0.8, 0.6, 0.4, 0.2])):
    scores = [score(kind, v, dim) for v in values]
    assert all(a > b for a, b in zip(scores, scores[1:])), (kind, scores)
    assert 1.0 <= scores[-1] and scores[0] <= 5.0
  assert score("blur", 1.6, "sharpness") == pytest.approx(1 + 4 * math.exp(-0.8))
  assert score("exposure", 1.0, "exposure") == 5.0
  # overexposure by a factor costs more than underexposure by the same factor
  assert score("exposure", 2.0, "exposure") < score("exposure", 0.5, "exposure")
  assert demo_clips.dimension_scores(demo_clips.Distortion("pristine")) == {
      d: 5.0 for d in features.DIMENSIONS}


def test_mos_labels():
  D = demo_clips.Distortion
  distortions = [D("pristine"), D("crf", 21), D("crf", 23), D("crf", 25), D("blur", 1.0),
                 D("noise", 10.0), D("stutter", 0.3)]
  vmafs = [99.9, 90.0, 91.0, 40.0, 55.0, 99.0, 10.0]
  # crf23's VMAF rises: the running minimum keeps it at crf21's 90 -> 4.6
  assert demo_clips.mos_labels(distortions, vmafs) == [
      5.0, 4.6, 4.6, 2.59, 3.2, round(1 + 4 * math.exp(-10 / 12), 2),
      round(1 + 4 * math.exp(-1), 2)]
  with pytest.raises(ValueError, match="not finite"):
    demo_clips.mos_labels([D("crf", 21)], [float("nan")])
  # The grainy ladder: its own running minimum (not crf21's 90), from its noise score.
  noise10 = 1 + 4 * math.exp(-10 / 12)
  grainy = [D("crf", 21), D("crf", 21, grain=10.0), D("crf", 25, grain=10.0)]
  assert demo_clips.mos_labels(grainy, [90.0, 95.0, 97.0]) == [
      4.6, round(1 + (noise10 - 1) * 0.95, 2), round(1 + (noise10 - 1) * 0.95, 2)]


def test_round_score_never_lands_on_a_level_edge():
  assert demo_clips.round_score(3.398) == 3.39
  assert demo_clips.round_score(3.4) == 3.39  # 3.4 is fair (closed on the right)
  assert demo_clips.round_score(3.403) == 3.41
  assert demo_clips.round_score(4.2) == 4.19 and demo_clips.round_score(1.8049) == 1.81
  assert demo_clips.round_score(5.0) == 5.0 and demo_clips.round_score(1.0) == 1.0
  for edge in instructions.LEVEL_EDGES:
    for x in np.linspace(edge - 0.006, edge + 0.006, 25):
      r = demo_clips.round_score(x)
      assert r not in instructions.LEVEL_EDGES
      assert instructions.score_to_level(r) == instructions.score_to_level(x)
      assert instructions.score_to_level(float(np.float32(r))) == instructions.score_to_level(x)


def test_sig_instructions_without_dimensions():
  videos = [demo_clips.LabelledVideo("a", "s", 3.0, {}),
            demo_clips.LabelledVideo("b", "s", 4.5, {})]
  got = list(demo_clips.sig_instructions(videos, seed=0))
  assert sorted({i.kind for i in got}) == ["compare", "describe", "grpo", "level"]
  assert [i.other_id for i in got if i.kind == "compare"] == ["b", "a"]
  again = list(demo_clips.sig_instructions(videos[::-1], seed=0))
  assert sorted(got, key=lambda i: (i.id, i.kind)) == sorted(again, key=lambda i: (i.id, i.kind))
