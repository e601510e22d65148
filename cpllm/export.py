"""TF SavedModel export of a trained CP-LLM (jax2tf), for TF Serving or plain TensorFlow.

  python -m cpllm.export --workdir=runs/demo --output=runs/demo/saved_model/1 [--step=N]
      [--frame_size=120,160] [--describe_tokens=160]

LoRA adapters are merged into the decoder weights first, so the SavedModel holds the base
model's shapes only. Frames are preprocessed inside the graph by `video.preprocess`, the
function training uses; their height and width are fixed at export (`--frame_size`, by
default the size of the training data's frames), the batch size is free.

Signatures (see README, "Serving"):
  score(frames uint8[batch, M, H, W, 3]) -> score float32[batch] (raw head output),
      frame_scores float32[batch, M], level_score float32[batch]
  describe(frames uint8[batch, M, H, W, 3]) -> tokens int32[batch, N] (EOS-padded),
      lengths int32[batch], text string[batch]   (greedy)
"""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging
from jax.experimental import jax2tf

from cpllm import score as score_lib
from cpllm.data import instructions
from cpllm.data import pipeline
from cpllm.data import tokenizer as tokenizer_lib
from cpllm.data import video
from cpllm.models import gemma
from cpllm.models import sampler


@dataclasses.dataclass(frozen=True)
class ExportSpec:
  """What the exported graph is fixed to."""
  num_frames: int  # M
  height: int
  width: int
  describe_tokens: int


def merged_model(scorer: score_lib.Scorer):
  """(model without LoRA, params with every adapter folded into its weight)."""
  decoder = dict(scorer.model.decoder)
  lora = gemma.LoRA(rank=decoder.pop("lora_rank", 0), alpha=decoder.pop("lora_alpha", None))
  decoder.pop("lora_targets", None)
  model = scorer.model.clone(decoder=decoder)
  params = dict(scorer.params)
  params["llm"] = gemma.merge_lora(params["llm"], lora.scale)
  return model, params


def piece_table(tokenizer: tokenizer_lib.Tokenizer) -> list[str]:
  """Text of every token id for decoding in the graph: '▁' -> ' ', byte pieces <0xNN> ->
  that byte when it is printable ASCII (else ''), control pieces -> ''."""
  table = []
  for i in range(tokenizer.vocab_size):
    piece = tokenizer.pieces([i])[0]
    if i in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) or (
        piece.startswith("<") and piece.endswith(">") and not piece.startswith("<0x")):
      table.append("")
    elif piece.startswith("<0x") and piece.endswith(">"):
      byte = int(piece[3:-1], 16)
      table.append(chr(byte) if 32 <= byte < 127 else "")
    else:
      table.append(piece.replace("\u2581", " "))
  return table


def jax_functions(scorer: score_lib.Scorer, spec: ExportSpec):
  """The JAX functions the graph is made of, with the LoRA-merged model:

    preprocess(frames uint8[B, M, H, W, 3]) -> (ctx uint8[B, M, R, R, 3],
                                               patches uint8[B, M, K, P, P, 3])
    score(params, ctx, patches) -> dict(score, frame_scores, level_score)
    describe(params, ctx, patches) -> dict(tokens, lengths)
  """
  model, _ = merged_model(scorer)
  config, tokenizer = scorer.config, scorer.tokenizer

  level_prompt = score_lib.prompt_arrays(tokenizer, instructions.LEVEL_PROMPT)
  describe_prompt = score_lib.prompt_arrays(tokenizer, pipeline.DESCRIBE_PROMPT)

  def preprocess(frames):
    return video.preprocess(frames, config.model, scoring=True)

  def score(params, ctx, patches):
    out = model.apply({"params": params}, score_lib.model_batch(ctx, patches, level_prompt))
    return dict(score=out["score"][:, 0], frame_scores=out["frame_scores"][:, 0],
                level_score=out["level_score"])

  def describe(params, ctx, patches):
    batch = score_lib.model_batch(ctx, patches, describe_prompt)
    out = model.apply({"params": params}, batch, decode=False)
    prefix = model.apply({"params": params}, out["ctx_tokens"], out["pix_tokens"],
                         batch["video_mask"], batch["text"], batch["input_mask"],
                         batch["mask_ar"], method=model.decoder_inputs)
    result = sampler.generate(model, {"params": params}, *prefix,
                              max_new_tokens=spec.describe_tokens, eos_id=tokenizer.eos_id)
    return dict(tokens=result["tokens"], lengths=result["lengths"])

  return preprocess, score, describe


class Exported(tf.Module):
  """The SavedModel's root: merged weights as variables, the `score` and `describe`
  signatures, and `preprocess` / `score_inputs` (frames -> model inputs -> scores, the two
  halves of `score`) for clients that prepare inputs themselves."""

  def __init__(self, scorer: score_lib.Scorer, spec: ExportSpec):
    super().__init__()
    self.spec = spec
    _, params = merged_model(scorer)
    preprocess, score, describe = jax_functions(scorer, spec)
    leaves, self._treedef = jax.tree.flatten(params)
    self._weights = [tf.Variable(np.asarray(x), trainable=False) for x in leaves]
    m, r = spec.num_frames, scorer.config.model.ctx_res
    k = video.scoring_patch_count(scorer.config.model, spec.height, spec.width)
    p = scorer.config.model.patch_size
    inputs = [None, f"(b, {m}, {r}, {r}, 3)", f"(b, {m}, {k}, {p}, {p}, 3)"]
    self._preprocess = jax2tf.convert(
        preprocess, polymorphic_shapes=[f"(b, {m}, {spec.height}, {spec.width}, 3)"],
        with_gradient=False)
    self._score = jax2tf.convert(score, polymorphic_shapes=inputs, with_gradient=False)
    self._describe = jax2tf.convert(describe, polymorphic_shapes=inputs,
                                    with_gradient=False)
    self._pieces = tf.constant(piece_table(scorer.tokenizer))
    self.score_inputs = tf.function(
        lambda ctx, patches: self._score(self._params(), ctx, patches), autograph=False,
        input_signature=[tf.TensorSpec([None, m, r, r, 3], tf.uint8, name="ctx"),
                         tf.TensorSpec([None, m, k, p, p, 3], tf.uint8, name="patches")])

  def _params(self):
    return jax.tree.unflatten(self._treedef, self._weights)

  def _check(self, frames):
    """Clear errors for a wrong shape (the signature already fixes the dtype to uint8)."""
    s = self.spec
    expected = f"uint8[batch, {s.num_frames}, {s.height}, {s.width}, 3]"
    checks = [
        tf.debugging.assert_rank(frames, 5, message=f"frames must be {expected}"),
        tf.debugging.assert_equal(
            tf.shape(frames)[1:], tf.constant([s.num_frames, s.height, s.width, 3]),
            message=f"frames must be {expected} (M key frames of H x W RGB; this model was "
                    "exported for that size, re-export with --frame_size for another)")]
    with tf.control_dependencies(checks):
      frames = tf.identity(frames)
    return tf.ensure_shape(frames, [None, s.num_frames, s.height, s.width, 3])

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, None, None], tf.uint8,
                                              name="frames")], autograph=False)
  def preprocess(self, frames):
    return self._preprocess(self._check(frames))

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, None, None], tf.uint8,
                                              name="frames")], autograph=False)
  def score(self, frames):
    return self._score(self._params(), *self._preprocess(self._check(frames)))

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, None, None], tf.uint8,
                                              name="frames")], autograph=False)
  def describe(self, frames):
    out = self._describe(self._params(), *self._preprocess(self._check(frames)))
    steps = tf.range(tf.shape(out["tokens"])[1])
    keep = steps[None, :] < out["lengths"][:, None]
    pieces = tf.where(keep, tf.gather(self._pieces, out["tokens"]), "")
    text = tf.strings.strip(tf.strings.reduce_join(pieces, axis=1))
    return dict(tokens=out["tokens"], lengths=out["lengths"], text=text)


def default_frame_size(scorer: score_lib.Scorer) -> tuple[int, int]:
  """The frame size of the training data (the first evaluation record's)."""
  data = scorer.config.data
  records, _ = pipeline.open_split(data.name, data.eval_split, data.data_dir)
  return tuple(np.asarray(records[0]["frames"][0]).shape[:2])


def export(workdir: str, output: str, *, step: int | None = None,
           frame_size: tuple[int, int] | None = None,
           describe_tokens: int | None = None) -> ExportSpec:
  """Writes the SavedModel of a workdir's checkpoint to `output`; returns its ExportSpec."""
  scorer = score_lib.Scorer(workdir, step)
  height, width = frame_size or default_frame_size(scorer)
  spec = ExportSpec(num_frames=int(scorer.config.num_frames), height=int(height),
                    width=int(width), describe_tokens=int(
                        describe_tokens or scorer.config.get("describe_tokens", 64)))
  module = Exported(scorer, spec)
  tf.saved_model.save(module, output, signatures={"score": module.score,
                                                  "describe": module.describe})
  return spec


def define_flags():
  """The command line's flags (defined on use: importing this module adds none)."""
  flags.DEFINE_string("workdir", None, "Training workdir.")
  flags.DEFINE_string("output", None, "SavedModel directory (TF Serving wants "
                      ".../<model name>/<version number>).")
  flags.DEFINE_integer("step", None, "Checkpoint step; the latest if not given.")
  flags.DEFINE_list("frame_size", None, "height,width of the input frames (default: the "
                    "training data's).")
  flags.DEFINE_integer("describe_tokens", None, "Most tokens of a description (default: "
                       "the config's describe_tokens).")


def main(argv):
  if len(argv) > 1 or not flags.FLAGS.workdir or not flags.FLAGS.output:
    raise app.UsageError("usage: python -m cpllm.export --workdir=DIR --output=DIR")
  logging.set_verbosity(logging.WARNING)
  size = tuple(int(v) for v in flags.FLAGS.frame_size) if flags.FLAGS.frame_size else None
  spec = export(flags.FLAGS.workdir, flags.FLAGS.output, step=flags.FLAGS.step,
                frame_size=size, describe_tokens=flags.FLAGS.describe_tokens)
  print(f"SavedModel in {flags.FLAGS.output}: score and describe take frames "
        f"uint8[batch, {spec.num_frames}, {spec.height}, {spec.width}, 3]")


if __name__ == "__main__":
  define_flags()
  app.run(main)
