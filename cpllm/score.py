"""Scoring video files with a trained CP-LLM.

  python -m cpllm.score --workdir=runs/demo [--step=N] [--no_describe] VIDEO...

prints one JSON line per video: path, score (clipped to 1..5), level (word), frame_scores,
level_score and description (greedy). A video that cannot be read gives a line with path
and error, the others go on, and the exit code is 1 if any failed.

Videos are read with `video.read_key_frames` (config.num_frames segment-centre key frames)
and prepared by `video.preprocess`, the function the training pipeline uses.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import app
from absl import flags
from flax import linen as nn

from cpllm.data import instructions
from cpllm.data import pipeline
from cpllm.data import tokenizer as tokenizer_lib
from cpllm.data import video
from cpllm.models import cpllm
from cpllm.train import sampler
from cpllm.train import trainer

TOKENIZER_FILE = "tokenizer.model"  # the trainer copies the run's tokenizer here


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} a training workdir?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_params(workdir: str, config, model: cpllm.CPLLM, step: int | None = None):
  """The model parameters of a checkpoint (latest if `step` is None), on one device.

  Only the parameters are read (orbax partial restore): the optimiser state is skipped.
  Returns (params, step).
  """
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")))
  steps = manager.all_steps()
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
  step = max(steps) if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint of step {step} in {workdir}/checkpoints "
                            f"(there are {sorted(steps)})")
  spec = pipeline.example_spec(config.model, config.num_frames, config.text_len, 1)
  abstract = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), spec))["params"]
  trainable, frozen = trainer.partition(
      abstract, trainer.lr_multipliers(abstract, trainer.param_rules(config)))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = dict(trainable=trainable, frozen=frozen)
  restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=device), target)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=target, restore_args=restore_args, partial_restore=True)))["state"]
  manager.close()
  return trainer.combine(restored["trainable"], restored["frozen"]), step


class Scorer:
  """A trained CP-LLM read from its workdir: config.json, tokenizer and a checkpoint."""

  def __init__(self, workdir: str, step: int | None = None, describe_tokens: int | None = None):
    self.workdir = workdir
    self.config = config = load_config(workdir)
    path = os.path.join(workdir, TOKENIZER_FILE)
    self.tokenizer = (tokenizer_lib.Tokenizer(path) if os.path.exists(path) else
                      trainer.resolve_tokenizer(config, config.data.data_dir))
    model_config = config.model.to_dict()
    model_config["level_token_ids"] = tuple(model_config["level_token_ids"])
    self.model = cpllm.CPLLM(**model_config)
    self.params, self.step = restore_params(workdir, config, self.model, step)
    self._forward = jax.jit(lambda p, b: self.model.apply({"params": p}, b))
    self._generate = sampler.make_generate(
        self.model, max_new_tokens=describe_tokens or config.get("describe_tokens", 64),
        eos_id=self.tokenizer.eos_id)

  def _batch(self, frames: np.ndarray, prompt: str) -> dict[str, Any]:
    """A one-video batch: frames uint8[M, H, W, 3] in slot A, B masked, `prompt` as text
    (the level prompt, so that 'level_score' is read after it)."""
    ctx, patches = video.preprocess(frames, self.config.model)
    pad = lambda x: jnp.stack([x, jnp.zeros_like(x)])[None]
    prompts = tokenizer_lib.encode_prompts(self.tokenizer, [prompt], self.config.text_len)
    return dict(ctx=pad(ctx), patches=pad(patches), video_mask=np.array([[True, False]]),
                text=prompts["text"], input_mask=prompts["input_mask"],
                mask_ar=prompts["mask_ar"])

  def score_frames(self, frames: np.ndarray, describe: bool = True) -> dict[str, Any]:
    """Scores key frames uint8[M, H, W, 3] (M = config.num_frames).

    Returns dict(score, level, frame_scores, level_score[, description]).
    """
    out = self._forward(self.params, self._batch(frames, instructions.LEVEL_PROMPT))
    # The visual tokens do not depend on the text: the description reuses them.
    # The regression head is unbounded; the reported score is clipped to the 1..5 scale
    # (frame_scores stay raw).
    score = float(np.clip(out["score"][0, 0], 1.0, 5.0))
    result = dict(score=score, level=instructions.score_to_level(score),
                  frame_scores=[float(s) for s in out["frame_scores"][0, 0]],
                  level_score=float(out["level_score"][0]))
    if describe:
      prompt = tokenizer_lib.encode_prompts(self.tokenizer, [pipeline.DESCRIBE_PROMPT],
                                            self.config.text_len)
      prefix = self.model.apply(
          {"params": self.params}, out["ctx_tokens"], out["pix_tokens"],
          np.array([[True, False]]), prompt["text"], prompt["input_mask"], prompt["mask_ar"],
          method=self.model.decoder_inputs)
      generated = jax.device_get(self._generate({"params": self.params}, *prefix))
      tokens = generated["tokens"][0, :generated["lengths"][0]]
      result["description"] = self.tokenizer.decode(
          tokens[tokens != self.tokenizer.eos_id].tolist())
    return result

  def score_file(self, path: str, describe: bool = True) -> dict[str, Any]:
    """{'path', 'score', ...} or {'path', 'error'} for a file that cannot be scored."""
    try:
      frames, _ = video.read_key_frames(path, int(self.config.num_frames))
    except (video.VideoError, OSError) as e:
      return dict(path=path, error=str(e))
    return dict(path=path, **self.score_frames(frames, describe=describe))


flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints/).")
flags.DEFINE_integer("step", None, "Checkpoint step; the latest if not given.")
flags.DEFINE_boolean("describe", True, "Generate a description (--no_describe skips the "
                     "decoder).")


def main(argv):
  paths = argv[1:]
  if not flags.FLAGS.workdir or not paths:
    raise app.UsageError("usage: python -m cpllm.score --workdir=DIR [--step=N] VIDEO...")
  scorer = Scorer(flags.FLAGS.workdir, flags.FLAGS.step)
  failed = 0
  for path in paths:
    line = scorer.score_file(path, describe=flags.FLAGS.describe)
    failed += "error" in line
    print(json.dumps(line), flush=True)
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  app.run(main)
