"""End to end on a tiny built demo_videos (tests/train/conftest.py): train a few steps,
evaluate, resume, score video files from the workdir (Python, command line, SavedModel).
Killing and resuming: test_resume.py; GRPO from the trained workdir: test_grpo_main.py."""

import csv
import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags

from cpllm import demo
from cpllm import export
from cpllm import real_footage
from cpllm import score
from cpllm.data import features
from cpllm.data import instructions
from cpllm.data import pipeline
from cpllm.data import video
from cpllm.models import cpllm
from cpllm.train import trainer
from tests.data import test_pair_order
from tests.train import e2e

pytestmark = pytest.mark.slow  # end to end: `make test-fast` leaves it out


def test_train_evaluate_and_resume(data_dir, trained, capsys, tmp_path):
  workdir, metrics, printed = trained
  for key in ("srcc", "krcc", "plcc", "plcc_raw", "rmse", "flip_rate", "flip_ties",
              "n_videos", "level_srcc", "text_parse_rate"):
    assert key in metrics, key
  assert set(metrics["flip_rate"]) >= {"2", "4", "6", "8", "10", "20"}
  assert metrics["n_videos"] > 0
  out = os.path.join(workdir, "eval", "6")
  assert json.load(open(os.path.join(out, "metrics.json")))["srcc"] == metrics["srcc"]
  for name in ("scatter.png", "flip_rate.png", "descriptions.jsonl"):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert {r["step"] for r in rows if "loss" in r} == {1, 2, 3, 4, 5, 6}
  assert json.load(open(os.path.join(workdir, "config.json")))["total_steps"] == 6
  assert "step 6/6" in printed and "ETA" in printed

  # Same e2e.command again (on a copy: other workers read the shared one): nothing left
  # to train, the last evaluation is returned.
  copy = shutil.copytree(workdir, tmp_path / "run")
  again = trainer.main(e2e.smoke_config(data_dir, **e2e.SMOKE_RUN), str(copy))
  assert again["srcc"] == metrics["srcc"]
  assert "resumed from step 6" in capsys.readouterr().out


def test_scorer_scores_files_with_the_checkpoint_the_trainer_wrote(data_dir, trained, tmp_path):
  workdir, _, _ = trained
  scorer = score.Scorer(workdir)
  assert scorer.step == 6
  assert os.path.exists(os.path.join(workdir, "tokenizer.model"))

  # Two key frames of a held-out record, written losslessly: reading them back with
  # num_frames=2 gives exactly these frames.
  source = tfds.data_source("demo_videos/tiny", split="test", data_dir=data_dir)
  frames = np.stack(source[0]["frames"])[:2]
  path = str(tmp_path / "clip.mkv")
  video.write_video(frames, path, fps=2.0, lossless=True)
  line = scorer.score_file(path)

  # Reference: the whole saved state restored by orbax's plain path, then only the two
  # encoders and the score head (no pair padding, no decoder) on the same frames. Other
  # batch shapes fuse differently: float32 round-off of a few 1e-6 relative, no more.
  _, state = e2e.final_params(workdir)
  params = trainer.combine(state["trainable"], state["frozen"])
  ctx, patches = video.preprocess(frames, scorer.config.model)
  _, _, frame_scores, _ = scorer.model.apply({"params": params}, ctx, patches,
                                          method=scorer.model.encode_frames)
  np.testing.assert_allclose(line["frame_scores"], frame_scores, rtol=1e-5, atol=1e-5)
  assert line["score"] == pytest.approx(float(np.clip(np.mean(frame_scores), 1, 5)), rel=1e-5,
                                        abs=1e-5)
  assert line["level"] == instructions.score_to_level(line["score"])
  assert 1.0 <= line["level_score"] <= 5.0
  assert isinstance(line["description"], str)
  assert "description" not in scorer.score_file(path, describe=False)

  bad = tmp_path / "broken.mp4"
  bad.write_bytes(b"not a video")
  failed = scorer.score_file(str(bad))
  assert set(failed) == {"path", "error"} and str(bad) in failed["error"]
  # The real-footage ladder ranks by the unclipped mean of the frame scores.
  score_file, _ = real_footage.cpllm_scorer(workdir)
  assert score_file(path) == pytest.approx(float(np.mean(frame_scores)), abs=1e-5)
  with pytest.raises(video.VideoError, match="broken.mp4"):
    score_file(str(bad))
  with pytest.raises(FileNotFoundError, match="no checkpoint of step 5"):
    score.Scorer(workdir, step=5)


def test_demo_held_out_video_is_the_median_record_written_losslessly(data_dir, tmp_path):
  path, record_id, mos = demo.held_out_video(data_dir, str(tmp_path))
  records, meta = pipeline.open_split("demo_videos", "test", data_dir)
  index = list(meta.ids).index(record_id)
  assert mos == pytest.approx(float(np.sort(meta.mos)[len(meta) // 2]))
  stored = np.stack(records[index]["frames"])
  frames, info = video.read_key_frames(path, len(stored))
  assert info.num_frames == len(stored)
  np.testing.assert_array_equal(frames, stored)
  # With score_blind, the median of the records whose named dimensions are 5 (or unknown),
  # counted here from the dimension columns by name (the tiny split's test records have
  # blur and noise variants, no exposure or stutter ones).
  _, seen_id, seen_mos = demo.held_out_video(data_dir, str(tmp_path), ("noise", "sharpness"))
  columns = [features.DIMENSIONS.index(n) for n in ("noise", "sharpness")]
  dims = meta.dimensions[:, columns]
  seen = [i for i in range(len(meta)) if not (dims[i] < 5).any()]
  assert len(seen) < len(meta) and list(meta.ids).index(seen_id) in seen
  assert seen_mos == pytest.approx(float(np.sort(meta.mos[seen])[len(seen) // 2]))


def test_score_command_line_folders_globs_csv_compare_and_exit_code(data_dir, trained, tmp_path,
                                                                   capsys):
  workdir, _, _ = trained
  source = tfds.data_source("demo_videos/tiny", split="test", data_dir=data_dir)
  folder = tmp_path / "videos"
  (folder / "sub").mkdir(parents=True)
  good = np.stack(source[0]["frames"])
  worse = np.stack(source[len(source) - 1]["frames"])
  video.write_video(good, str(folder / "a.mkv"), fps=3.0, lossless=True)
  video.write_video(worse, str(folder / "sub" / "b.mkv"), fps=3.0, lossless=True)
  (folder / "sub" / "notes.txt").write_text("not a video, and not picked up by the folder")
  (folder / "broken.mp4").write_bytes(b"\x00" * 64)

  assert score.expand_inputs([str(folder)]) == [
      str(folder / "a.mkv"), str(folder / "broken.mp4"), str(folder / "sub" / "b.mkv")]
  assert score.expand_inputs([str(folder / "**" / "*.mkv")]) == [
      str(folder / "a.mkv"), str(folder / "sub" / "b.mkv")]
  empty = str(tmp_path / "none*.mp4")
  assert score.expand_inputs([empty]) == [empty]  # reported, not dropped

  if "output" not in flags.FLAGS:
    score.define_flags()
  scorer = score.Scorer(workdir)
  output = tmp_path / "out" / "scores.csv"
  argv = ["cpllm-score", f"--workdir={workdir}", "--nodescribe", f"--output={output}",
          str(folder)]
  with pytest.raises(SystemExit) as exit_info:
    score.main(flags.FLAGS(argv))  # absl hands main the arguments left after the flags
  assert exit_info.value.code == 1  # broken.mp4 failed, the others were scored
  rows = list(csv.DictReader(open(output)))
  assert [r["path"] for r in rows] == score.expand_inputs([str(folder)])
  broken = rows[1]
  assert broken["score"] == "" and "broken.mp4" in broken["error"]
  expected = scorer.score_file(str(folder / "a.mkv"), describe=False)
  assert float(rows[0]["score"]) == pytest.approx(expected["score"], abs=1e-6)
  assert json.loads(rows[0]["frame_scores"]) == pytest.approx(expected["frame_scores"])
  assert "2 of 3 scored, 1 failed" in capsys.readouterr().err

  # Pairwise inference: both videos in one example; their scores are the single scores.
  result = scorer.compare(str(folder / "a.mkv"), str(folder / "sub" / "b.mkv"))
  single_b = scorer.score_file(str(folder / "sub" / "b.mkv"), describe=False)["score"]
  assert result["score_first"] == pytest.approx(expected["score"], abs=1e-5)
  assert result["score_second"] == pytest.approx(single_b, abs=1e-5)
  assert result["better"] == ("first" if result["score_first"] > result["score_second"]
                              else "second" if result["score_second"] > result["score_first"]
                              else "equal")
  assert isinstance(result["justification"], str)
  assert "error" in scorer.compare(str(folder / "a.mkv"), str(folder / "broken.mp4"))
  # Either slot order gives the same judgement: the scores swap with the videos.
  test_pair_order.assert_compare_is_order_free(scorer, str(folder / "a.mkv"),
                                               str(folder / "sub" / "b.mkv"))
  flags.FLAGS.unparse_flags()
  flags.FLAGS.mark_as_parsed()


def test_saved_model_matches_jax_and_serves_through_saved_model_cli(data_dir, trained,
                                                                   tmp_path):
  workdir, _, _ = trained
  output = str(tmp_path / "saved_model" / "1")
  spec = export.export(workdir, output, describe_tokens=8)
  assert (spec.num_frames, spec.height, spec.width) == (2, 48, 64)  # the smoke data's frames
  scorer = score.Scorer(workdir, describe_tokens=8)
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (3, 2, 48, 64, 3), dtype=np.uint8)

  loaded = tf.saved_model.load(output)
  served = {k: v.numpy() for k, v in loaded.signatures["score"](frames=frames).items()}
  # The graph's preprocessing is the JAX one compiled again: a resized value can land on
  # the other side of a .5 rounding edge (it rounds to uint8, as in training), so its
  # inputs differ from JAX's by at most one code value, rarely ...
  ctx, patches = loaded.preprocess(frames)
  reference = video.preprocess(frames, scorer.config.model, scoring=True)
  for got, want in zip((ctx, patches), reference):
    difference = np.abs(got.numpy().astype(int) - np.asarray(want, int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01
  # ... and on the same inputs the served model equals the JAX model with its LoRA
  # adapters still separate (not merged).
  same_inputs = {k: v.numpy() for k, v in loaded.score_inputs(ctx, patches).items()}
  np.testing.assert_array_equal(same_inputs["score"], served["score"])
  for i in range(3):
    batch = scorer._batch(frames[i], instructions.LEVEL_PROMPT)
    batch.update(ctx=batch["ctx"].at[0, 0].set(ctx[i].numpy()),
                 patches=batch["patches"].at[0, 0].set(patches[i].numpy()))
    out = scorer._forward(scorer.params, batch)
    np.testing.assert_allclose(same_inputs["frame_scores"][i], out["frame_scores"][0, 0],
                               atol=1e-4)
    assert same_inputs["score"][i] == pytest.approx(float(out["score"][0, 0]), abs=1e-4)
    assert same_inputs["level_score"][i] == pytest.approx(float(out["level_score"][0]),
                                                          abs=1e-4)
  natural = np.stack(tfds.data_source("demo_videos/tiny", split="test",
                                      data_dir=data_dir)[0]["frames"])[None, :2]
  described = loaded.signatures["describe"](frames=natural)
  assert described["text"].numpy()[0].decode() == scorer.score_frames(natural[0])[
      "description"]
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"frames must be uint8\[batch, 2, "
                                                           r"48, 64, 3\]"):
    loaded.signatures["score"](frames=frames[:, :, :40])

  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  shown = subprocess.run([cli, "show", "--all", "--dir", output], capture_output=True,
                         text=True, check=True).stdout
  assert "signature_def['score']" in shown and "signature_def['describe']" in shown
  np.save(tmp_path / "frames.npy", frames)
  subprocess.run([cli, "run", "--dir", output, "--tag_set", "serve", "--signature_def",
                  "score", "--inputs", f"frames={tmp_path / 'frames.npy'}", "--outdir",
                  str(tmp_path / "cli")], capture_output=True, text=True, check=True)
  np.testing.assert_allclose(np.load(tmp_path / "cli" / "score.npy"), served["score"],
                             atol=1e-6)


USER_FILES = {  # name: ffmpeg output options for a lavfi test pattern
    "landscape.mp4": ["-s", "320x240", "-c:v", "libx264", "-pix_fmt", "yuv420p"],
    "portrait.mov": ["-s", "240x320", "-c:v", "libx264", "-pix_fmt", "yuv420p"],
    "clip.avi": ["-s", "176x144", "-c:v", "mpeg4"],
    "clip.webm": ["-s", "160x120", "-c:v", "libvpx-vp9"],
    "ten_bit.mp4": ["-s", "320x180", "-c:v", "libx264", "-pix_fmt", "yuv420p10le"],
    "uhd.mp4": ["-s", "3840x2160", "-c:v", "libx264", "-preset", "ultrafast",
                "-pix_fmt", "yuv420p"],
    "tiny.mkv": ["-s", "32x24", "-c:v", "ffv1"],
    "one_frame.mkv": ["-s", "128x96", "-c:v", "ffv1", "-frames:v", "1"],
    "still.png": ["-s", "200x150", "-frames:v", "1"],
}


def test_scorer_takes_the_files_users_have(trained, tmp_path):
  workdir, _, _ = trained
  scorer = score.Scorer(workdir)
  for name, options in USER_FILES.items():
    video.run_ffmpeg(["-f", "lavfi", "-i", "testsrc=rate=8:duration=1", *options,
                      str(tmp_path / name)])
  video.run_ffmpeg(["-f", "lavfi", "-i", "testsrc=size=160x120:rate=8:duration=1", "-f",
                    "lavfi", "-i", "sine=frequency=440:duration=1", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
                    str(tmp_path / "with_audio.mp4")])
  for path in score.expand_inputs([str(tmp_path)]):
    line = scorer.score_file(path, describe=False)
    assert "error" not in line, line
    assert 1.0 <= line["score"] <= 5.0 and np.isfinite(line["frame_scores"]).all(), path
    assert len(line["frame_scores"]) == 2  # config.num_frames key frames, stills repeated


def test_scorer_tiles_a_large_frame_with_score_patches(trained):
  """A 48 x 96 frame (the smoke config's pix_box, so not resized) holds 3 x 6 tiles of its
  16-pixel patches, more than its num_patches: the scorer's frame scores are those of the
  18 tiles, cut here by NumPy slicing at multiples of 16, through the model's encoder."""
  workdir, _, _ = trained
  scorer = score.Scorer(workdir)
  model_config = scorer.config.model
  p = model_config.patch_size
  assert tuple(model_config.pix_box) == (3 * p, 6 * p)
  assert 3 * 6 > model_config.num_patches and model_config.score_patches >= 18
  rng = np.random.default_rng(3)
  frames = rng.integers(0, 256, (scorer.config.num_frames, 3 * p, 6 * p, 3)).astype(np.uint8)
  line = scorer.score_frames(frames, describe=False)
  tiles = np.stack([frames[:, y:y + p, x:x + p] for y in range(0, 3 * p, p)
                    for x in range(0, 6 * p, p)], axis=1)  # [M, 18, P, P, 3]
  ctx, _ = video.preprocess(frames, model_config)
  _, _, frame_scores, _ = scorer.model.apply({"params": scorer.params}, ctx, tiles,
                                             method=scorer.model.encode_frames)
  np.testing.assert_allclose(line["frame_scores"], frame_scores, atol=1e-5)


def test_init_encoders_takes_the_towers_of_a_run(trained):
  """config.init.encoders (configs/demo.py:gemma3): the context and pixel towers come from a
  run's checkpoint, under a decoder of another width, and nothing else does; a pixel
  encoder of another shape is refused, naming the parameter and both shapes."""
  workdir, _, _ = trained
  run_config = trainer.load_config(workdir)
  run_model = dict(run_config.model.to_dict(), level_token_ids=None)
  run_params, _ = trainer.restore_params(workdir, run_config, cpllm.CPLLM(**run_model))
  model_config = dict(run_model, decoder=dict(variant="tiny3", width=32, vocab_size=600,
                                              lora_rank=4))

  def init(config):
    spec = pipeline.example_spec(config, run_config.num_frames, run_config.text_len, 1)
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), spec)
    return nn.unbox(jax.jit(cpllm.CPLLM(**config).init)(jax.random.PRNGKey(5), zeros))[
        "params"]

  params = init(model_config)
  got = trainer.with_encoders(params, workdir)
  for tower, source in (("img", run_params), ("pix", run_params), ("llm", params),
                        ("proj_pix", params), ("score_head", params)):
    jax.tree.map(np.testing.assert_array_equal, got[tower], source[tower])
  assert got["proj_pix"]["kernel"].shape[1] == 32
  wide = dict(model_config, pix_encoder=dict(run_model["pix_encoder"], width=48))
  with pytest.raises(ValueError, match=r"pix/tokens/bias \(64,\), this model \(48,\)"):
    trainer.with_encoders(init(wide), workdir)
