"""Scoring video files with a trained CP-LLM (also installed as the `cpllm-score` command).

  python -m cpllm.score --workdir=runs/demo [--step=N] [--no-describe] [--decode_timeout=S]
      VIDEO|FOLDER|'GLOB'...
  python -m cpllm.score --workdir=runs/demo --output=scores.csv my_videos/   # or .jsonl
  python -m cpllm.score --workdir=runs/demo --compare a.mp4 b.mp4

prints one JSON line per video: path, score (clipped to 1..5), level (word), frame_scores,
level_score and description (greedy). A file that cannot be scored gives a line with path
and error (naming the file and the reason; for a failure nobody anticipated, the exception's
type), the others go on, and the exit code is 1 if any failed; only Ctrl-C stops the run.
Decoding one file may take --decode_timeout seconds (default video.DECODE_TIMEOUT), so a
hung decoder costs one error line. With --output the lines go to a CSV or JSONL file,
flushed per video, with a progress bar on stderr. --compare puts both videos in one example
(the paper's pairwise inference): both scores, the better one, and the decoder's
justification.

Videos are read with `video.read_key_frames` (config.num_frames segment-centre key frames)
and prepared by `video.preprocess`, the function the training pipeline uses.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from absl import logging
import tqdm

from cpllm.data import build_utils
from cpllm.data import instructions
from cpllm.data import pipeline
from cpllm.data import tokenizer as tokenizer_lib
from cpllm.data import video
from cpllm.models import cpllm
from cpllm.models import sampler
from cpllm.train import trainer

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
MEDIA_EXTENSIONS = build_utils.VIDEO_EXTENSIONS + IMAGE_EXTENSIONS
COMPARE_PROMPT = instructions.COMPARE_QUESTIONS[0]


class Scorer:
  """A trained CP-LLM read from its workdir: config.json, tokenizer and a checkpoint."""

  def __init__(self, workdir: str, step: int | None = None, describe_tokens: int | None = None,
               decode_timeout: float | None = None):
    self.workdir = workdir
    self.decode_timeout = decode_timeout  # seconds per file; None: video.DECODE_TIMEOUT
    self.config = config = trainer.load_config(workdir)
    path = os.path.join(workdir, trainer.TOKENIZER_FILE)
    self.tokenizer = (tokenizer_lib.Tokenizer(path) if os.path.exists(path) else
                      trainer.resolve_tokenizer(config, config.data.data_dir))
    model_config = config.model.to_dict()
    model_config["level_token_ids"] = tuple(model_config["level_token_ids"])
    self.model = cpllm.CPLLM(**model_config)
    self.params, self.step = trainer.restore_params(workdir, config, self.model, step)
    self._forward = jax.jit(lambda p, b: self.model.apply({"params": p}, b))
    self._encode = jax.jit(lambda p, b: self.model.apply({"params": p}, b, decode=False))
    self._generate = sampler.make_generate(
        self.model, max_new_tokens=describe_tokens or config.get("describe_tokens", 64),
        eos_id=self.tokenizer.eos_id)
    self._prompts = {p: prompt_arrays(self.tokenizer, p) for p in (
        instructions.LEVEL_PROMPT, pipeline.DESCRIBE_PROMPT, COMPARE_PROMPT)}

  def _batch(self, frames: np.ndarray, prompt: str) -> dict[str, Any]:
    """A batch of one example: one video's key frames uint8[M, H, W, 3] in slot A and
    `prompt` as the text."""
    ctx, patches = video.preprocess(frames[None], self.config.model, scoring=True)
    return model_batch(ctx, patches, self._prompts[prompt])

  def _generate_text(self, out, video_mask, prompt: str) -> str:
    """Greedy text after `prompt`, conditioned on the visual tokens of `out`."""
    prompts = self._prompts[prompt]
    prefix = self.model.apply(
        {"params": self.params}, out["ctx_tokens"], out["pix_tokens"], video_mask,
        prompts["text"], prompts["input_mask"], prompts["mask_ar"],
        method=self.model.decoder_inputs)
    generated = jax.device_get(self._generate({"params": self.params}, *prefix))
    tokens = generated["tokens"][0, :generated["lengths"][0]]
    return self.tokenizer.decode(tokens[tokens != self.tokenizer.eos_id].tolist())

  def score_frames(self, frames: np.ndarray, describe: bool = True) -> dict[str, Any]:
    """Scores key frames uint8[M, H, W, 3] (M = config.num_frames).

    Returns dict(score, level, frame_scores, level_score[, description]).
    """
    # The level prompt makes the same forward pass give the level-token score.
    out = self._forward(self.params, self._batch(frames, instructions.LEVEL_PROMPT))
    result = dict(score=reported_score(out["score"][0, 0]),
                  frame_scores=[float(s) for s in out["frame_scores"][0, 0]],
                  level_score=float(out["level_score"][0]))
    result["level"] = instructions.score_to_level(result["score"])
    if describe:  # the visual tokens do not depend on the text: reused
      result["description"] = self._generate_text(out, np.array([[True, False]]),
                                                   pipeline.DESCRIBE_PROMPT)
    return result

  def read(self, path: str) -> np.ndarray:
    """config.num_frames key frames of a video or image file (raises video.VideoError)."""
    return video.read_key_frames(path, int(self.config.num_frames),
                                 timeout=self.decode_timeout)[0]

  def score_file(self, path: str, describe: bool = True) -> dict[str, Any]:
    """{'path', 'score', ...} or {'path', 'error'} for a file that cannot be scored.

    Any failure of this one file (reading, preprocessing, the model) is its error line, so
    a caller looping over files goes on; KeyboardInterrupt is not caught."""
    try:
      return dict(path=path, **self.score_frames(self.read(path), describe=describe))
    except Exception as e:  # pylint: disable=broad-except
      return dict(path=path, error=error_text(path, e))

  def compare(self, path_a: str, path_b: str) -> dict[str, Any]:
    """The paper's pairwise inference: both videos in one example, both scores, the better
    one by score, and the decoder's justification for the pair.

    Returns dict(first, second, score_first, score_second, better: 'first' | 'second' |
    'equal', justification) or dict(first, second, error).
    """
    frames = []
    try:
      for path in (path_a, path_b):
        frames.append(self.read(path))
    except Exception as e:  # pylint: disable=broad-except
      return dict(first=path_a, second=path_b, error=error_text(path, e))
    # Each video is encoded on its own, as `score_file` does (so both give one score per
    # file, and two frame sizes may tile into different patch counts); the decoder then
    # reads both videos' tokens, which have one shape whatever the patch count.
    outs = [self._encode(self.params, self._batch(f, COMPARE_PROMPT)) for f in frames]
    first, second = (reported_score(out["score"][0, 0]) for out in outs)
    better = "first" if first > second else "second" if second > first else "equal"
    both = {key: jnp.concatenate([out[key][:, :1] for out in outs], axis=1)
            for key in ("ctx_tokens", "pix_tokens")}
    return dict(first=path_a, second=path_b, score_first=first, score_second=second,
                better=better, justification=self._generate_text(
                    both, np.array([[True, True]]), COMPARE_PROMPT))


def error_text(path: str, error: Exception) -> str:
  """'path: reason' of a file that failed; the reason names the type of an exception that
  is not a VideoError (one nobody anticipated)."""
  return f"{path}: {build_utils.failure_reason(error, path)}"


def prompt_arrays(tokenizer: tokenizer_lib.Tokenizer, prompt: str) -> dict[str, np.ndarray]:
  """text, input_mask, mask_ar int32/bool[1, L] of `prompt` alone, L its length with bos
  (no padding to config.text_len: inference has no target to leave room for)."""
  length = 1 + len(tokenizer.encode(prompt))
  arrays = tokenizer_lib.encode_prompts(tokenizer, [prompt], length)
  return {k: arrays[k] for k in ("text", "input_mask", "mask_ar")}


def model_batch(ctx, patches, prompt: dict[str, np.ndarray]):
  """The model's batch for B examples of one video each (slot B masked).

  Args:
    ctx, patches: uint8[B, M, R, R, 3], uint8[B, M, K, P, P, 3] (video.preprocess).
    prompt: prompt_arrays(...), [1, L], the same text for every example.
  """
  b = ctx.shape[0]
  tile = lambda x: jnp.broadcast_to(jnp.asarray(x), (b,) + x.shape[1:])
  return dict(ctx=jnp.stack([ctx, jnp.zeros_like(ctx)], axis=1),
              patches=jnp.stack([patches, jnp.zeros_like(patches)], axis=1),
              video_mask=tile(np.array([[True, False]])),
              **{k: tile(v) for k, v in prompt.items()})


def reported_score(raw) -> float:
  """The regression head is unbounded; scores are reported clipped to the 1..5 scale."""
  return float(np.clip(raw, 1.0, 5.0))


def expand_inputs(arguments: Sequence[str]) -> list[str]:
  """Files, folders (their video and image files, sub-folders included, sorted) and glob
  patterns -> file paths. A folder or pattern that matches nothing stays as given, so that
  it is reported as an error line rather than dropped."""
  paths = []
  for argument in arguments:
    if os.path.isdir(argument):
      found = sorted(os.path.join(root, name) for root, _, names in os.walk(argument)
                     for name in names if name.lower().endswith(MEDIA_EXTENSIONS))
    elif glob.has_magic(argument):
      found = sorted(p for p in glob.glob(argument, recursive=True) if os.path.isfile(p))
    else:
      found = [argument]
    paths += found or [argument]
  return paths


CSV_COLUMNS = ("path", "score", "level", "level_score", "frame_scores", "description", "error")


class ResultWriter:
  """Result lines to stdout (JSON), and to a .jsonl or .csv file when `output` is given."""

  def __init__(self, output: str | None):
    self.output = output
    self._file = self._csv = None
    if output:
      if not output.endswith((".csv", ".jsonl")):
        raise ValueError(f"--output must end in .csv or .jsonl, got {output}")
      os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
      self._file = open(output, "w", newline="")
      if output.endswith(".csv"):
        self._csv = csv.DictWriter(self._file, CSV_COLUMNS)
        self._csv.writeheader()

  def write(self, line: dict[str, Any]) -> None:
    if self._file is None:
      print(json.dumps(line), flush=True)
    elif self._csv is not None:
      row = dict(line)
      if "frame_scores" in row:
        row["frame_scores"] = json.dumps(row["frame_scores"])
      self._csv.writerow(row)
      self._file.flush()  # an interrupted run keeps every finished line
    else:
      self._file.write(json.dumps(line) + "\n")
      self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


def define_flags():
  """The command line's flags (defined on use: importing this module adds none)."""
  flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints/).")
  flags.DEFINE_integer("step", None, "Checkpoint step; the latest if not given.")
  flags.DEFINE_boolean("describe", True, "Generate a description (--no-describe or "
                       "--nodescribe skips the decoder for speed).")
  flags.DEFINE_string("output", None, "Write the results to this .csv or .jsonl file "
                      "(with a progress bar) instead of JSON lines on stdout.")
  flags.DEFINE_boolean("compare", False, "Compare two videos: which has better quality.")
  flags.DEFINE_float("decode_timeout", video.DECODE_TIMEOUT, "Seconds decoding one file may "
                     "take before it is reported as failed (a hung or pathological file).")


USAGE = ("usage: cpllm-score --workdir=DIR [--step=N] [--no-describe] [--output=F.csv] "
         "[--decode_timeout=S] VIDEO|FOLDER|'GLOB'...\n"
         "       cpllm-score --workdir=DIR --compare A B")


def main(argv):
  arguments = argv[1:]
  if not flags.FLAGS.workdir or not arguments:
    raise app.UsageError(USAGE)
  if flags.FLAGS.compare and len(arguments) != 2:
    raise app.UsageError(f"--compare takes exactly two videos, got {len(arguments)}\n{USAGE}")
  logging.set_verbosity(logging.WARNING)  # stdout carries only the results
  scorer = Scorer(flags.FLAGS.workdir, flags.FLAGS.step,
                  decode_timeout=flags.FLAGS.decode_timeout)
  if flags.FLAGS.compare:
    result = scorer.compare(*arguments)
    print(json.dumps(result), flush=True)
    sys.exit(1 if "error" in result else 0)

  paths = expand_inputs(arguments)
  writer = ResultWriter(flags.FLAGS.output)
  failed = 0
  with tqdm.tqdm(paths, unit="video", disable=not flags.FLAGS.output or None,
                 file=sys.stderr) as progress:
    for path in progress:
      line = scorer.score_file(path, describe=flags.FLAGS.describe)
      if "error" in line:
        failed += 1
        progress.write(f"error: {line['error']}", file=sys.stderr)
      writer.write(line)
  writer.close()
  if flags.FLAGS.output:
    print(f"{len(paths) - failed} of {len(paths)} scored, {failed} failed; results in "
          f"{flags.FLAGS.output}", file=sys.stderr)
  sys.exit(1 if failed else 0)


def run():
  """Entry point of the `cpllm-score` console script."""
  define_flags()
  # absl spells a false boolean --nodescribe; the more common --no-describe works too.
  app.run(main, argv=["--nodescribe" if a == "--no-describe" else a for a in sys.argv])


if __name__ == "__main__":
  run()
