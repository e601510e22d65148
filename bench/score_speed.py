"""Seconds per video when scoring a file, cpllm beside BRISQUE and NIQE on the same videos:
`python -m bench.run score_speed [--quick]`.

Videos: ffmpeg's `testsrc2` (moving shapes, text and colour gradients, detailed enough that
libx264 at CRF 23 spends the bitrates of web video on it: about 0.7, 2.4 and 5 Mbit/s),
640x360, 1280x720 and 1920x1080, 2 s at 25 fps, made by the ffmpeg of imageio-ffmpeg at the
start of the run.

Per video and resolution, timed separately and interleaved (a load change hits them all):
  decode   `Scorer.read`: the config's num_frames segment-centre key frames at native size
           (video.read_key_frames), shared by every scorer;
  cpllm    `Scorer.score_frames(frames, describe=False)`: preprocessing at native size and
           the forward pass (score and level-token score); `score_file` is read + this;
  cpllm + description  the same with the greedy description (config.describe_tokens);
  BRISQUE, NIQE  cpllm.evals.baselines, the mean of `score_frame` over the same key frames
           (what cpllm.evals.real_ladder scores).
seconds per video = decode + the scorer's own time. Each is the median of the repeats after
a first call per resolution, which is reported apart: cpllm's first call compiles its
preprocessing for that frame size (and, at the first size, the forward pass and the
sampler).

The Scorer reads a workdir as a user's `cpllm-score --workdir` does: runs/demo when it holds
a trained checkpoint, else a temporary one written here as the trainer leaves it
(config.json of configs/demo.py, a tokenizer trained by the demo's own recipe, a step-0
checkpoint of the initialised train state). Weights do not change the cost of a score; an
initialised decoder rarely emits EOS, so its description runs the full describe_tokens
(the token count is recorded).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from bench import common
from bench import report
from bench import workloads
from cpllm import configs
from cpllm import score
from cpllm.data import demo_clips
from cpllm.data import tokenizer as tokenizer_lib
from cpllm.data import video
from cpllm.evals import baselines as baselines_lib
from cpllm.train import trainer

SIZES = ((640, 360), (1280, 720), (1920, 1080))
SECONDS, FPS, CRF = 2.0, 25, 23
DEMO_WORKDIR = os.path.join(common.REPO_ROOT, "runs", "demo")
DEMO_CONFIG = "configs/demo.py"
SCORERS = ("cpllm", "cpllm_describe", "brisque", "niqe")


def make_video(path: str, width: int, height: int, seconds: float = SECONDS,
               fps: int = FPS) -> None:
  # `veryfast` keeps the 1080p encode to seconds; the decoder's cost follows the bitrate
  # (recorded per video) more than the preset.
  video.run_ffmpeg(["-f", "lavfi", "-i",
                    f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}",
                    "-c:v", "libx264", "-preset", "veryfast", "-crf", str(CRF),
                    "-pix_fmt", "yuv420p", path], path=path)


def trained(workdir: str) -> bool:
  """Whether `workdir` is a run with a checkpoint (orbax names step folders by number)."""
  checkpoints = os.path.join(workdir, "checkpoints")
  return (os.path.exists(os.path.join(workdir, "config.json")) and os.path.isdir(checkpoints)
          and any(name.isdigit() for name in os.listdir(checkpoints)))


def write_workdir(workdir: str) -> None:
  """config.json, tokenizer.model and a step-0 checkpoint of the initialised train state of
  configs/demo.py, written by the trainer's own functions, so that `score.Scorer(workdir)`
  loads it as a run's."""
  # The demo tokenizer's recipe (demo_clips.demo_texts) on its level and dimension sweep
  # alone: no dataset has to be built, and the level words are single tokens as in the demo.
  config = configs.load(DEMO_CONFIG)
  root = epath.Path(workdir)
  with tempfile.TemporaryDirectory() as tmp:  # write_run_files copies it into the workdir
    tokenizer = tokenizer_lib.Tokenizer(tokenizer_lib.train_sentencepiece(
        demo_clips.demo_texts([], seed=0), os.path.join(tmp, "spm"),
        config.model["decoder"]["vocab_size"]))
    config.model = {**config.model, "level_token_ids": tokenizer.level_token_ids()}
    trainer.write_run_files(config, root, tokenizer)
  state, _ = workloads.train_state(config)
  manager = trainer.checkpoint_manager(root, config)
  manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  manager.wait_until_finished()
  manager.close()


def make_videos(folder: str, sizes: Sequence[tuple[int, int]] = SIZES,
                seconds: float = SECONDS) -> dict[str, str]:
  """{'WxH': path} of a test video per size, made in `folder`."""
  paths = {}
  for width, height in sizes:
    paths[f"{width}x{height}"] = path = os.path.join(folder, f"{width}x{height}.mp4")
    make_video(path, width, height, seconds)
  return paths


def load_scorer(workdir: str, folder: str) -> tuple[score.Scorer, str, float]:
  """(Scorer, what it scores with, seconds of `Scorer(workdir)`): `workdir` when it is a
  trained run, else a workdir of configs/demo.py with initialised parameters written in
  `folder`."""
  if trained(workdir):
    source = f"{os.path.relpath(workdir, common.REPO_ROOT)} (trained)"
  else:
    workdir = os.path.join(folder, "workdir")
    write_workdir(workdir)
    source = f"{DEMO_CONFIG}, initialised parameters (temporary workdir)"
  scorer, seconds = _timed(score.Scorer, workdir)
  return scorer, source, seconds


def scorer_fns(scorer: score.Scorer, baselines) -> dict[str, Callable[[np.ndarray], dict]]:
  """SCORERS' own work on decoded key frames, each returning what its caller keeps."""
  fns = dict(cpllm=lambda f: scorer.score_frames(f, describe=False),
             cpllm_describe=lambda f: scorer.score_frames(f, describe=True))
  for b in baselines:
    fns[b.name.lower()] = lambda f, b=b: dict(score=float(np.mean([b.score_frame(x)
                                                                    for x in f])))
  return fns


def _timed(fn, *args):
  start = time.perf_counter()
  out = fn(*args)
  return out, time.perf_counter() - start


def measure(scorer: score.Scorer, baselines, paths: dict[str, str], repeats: int
            ) -> list[dict]:
  """One row per video: the median seconds of decoding and of each scorer's own work, their
  sums (seconds per video), each scorer's first call, the ratios to BRISQUE."""
  fns = scorer_fns(scorer, baselines)
  firsts = {}
  for size, path in paths.items():  # the first call of every scorer at every size
    frames = scorer.read(path)
    firsts[size] = {}
    for name, fn in fns.items():
      out, firsts[size][name] = _timed(fn, frames)
      if "description" in out:
        firsts[size]["description_tokens"] = len(scorer.tokenizer.encode(out["description"]))
  times = {size: {name: [] for name in ("decode", *fns)} for size in paths}
  for _ in range(repeats):  # interleaved, so that a change of load hits every scorer alike
    for size, path in paths.items():
      frames, t = _timed(scorer.read, path)
      times[size]["decode"].append(t)
      for name, fn in fns.items():
        times[size][name].append(_timed(fn, frames)[1])
  rows = []
  for size, by_name in times.items():
    row = dict(video=size, kbps=video.bitrate_kbps(paths[size]),
               decode_s=statistics.median(by_name["decode"]),
               decode_times=by_name["decode"],
               description_tokens=firsts[size].get("description_tokens"))
    for name in SCORERS:
      own = statistics.median(by_name[name])
      row.update({f"{name}_own_s": own, f"{name}_s": row["decode_s"] + own,
                  f"{name}_first_s": firsts[size][name], f"{name}_times": by_name[name]})
    row["ratio"] = row["cpllm_s"] / row["brisque_s"]
    row["own_ratio"] = row["cpllm_own_s"] / row["brisque_own_s"]
    row["describe_ratio"] = row["cpllm_describe_s"] / row["brisque_s"]
    rows.append(row)
  return rows


def summarise(rows: list[dict], scorer: score.Scorer, source: str, baselines, repeats: int,
              setup_s: dict[str, float]) -> dict:
  return dict(
      rows=rows, repeats=repeats, workdir=source, step=scorer.step,
      key_frames=int(scorer.config.num_frames),
      describe_tokens=scorer.config.get("describe_tokens", 64),
      video=dict(source="ffmpeg testsrc2", seconds=SECONDS, fps=FPS, crf=CRF,
                 preset="veryfast"),
      setup_s=setup_s, packages={b.name: b.packages for b in baselines},
      ratio={r["video"]: r["ratio"] for r in rows})


def run(quick: bool = False) -> dict:
  repeats = 2 if quick else 5
  with tempfile.TemporaryDirectory(prefix="bench-score-speed-") as tmp:
    paths = make_videos(tmp)
    scorer, source, scorer_s = load_scorer(DEMO_WORKDIR, tmp)
    baselines, baselines_s = _timed(baselines_lib.load, ["brisque", "niqe"])
    rows = measure(scorer, baselines, paths, repeats)
  result = summarise(rows, scorer, source, baselines, repeats,
                     dict(scorer=scorer_s, baselines=baselines_s))
  print(report.score_speed(result))
  common.write_result("score_speed", result, quick=quick)
  return result
