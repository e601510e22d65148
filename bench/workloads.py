"""The models, states, batches and steps the benchmarks measure, built with the project's
own code (trainer.create_state / make_train_step, the model's apply), plus the closed-form
counts the measurements are compared with (parameters, the memory lower bound).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bench import common
from cpllm import configs
from cpllm import sharding
from cpllm.data import pipeline
from cpllm.models import cnn
from cpllm.models import cpllm
from cpllm.train import trainer

PROMPT_LEN = 32  # prompt tokens of a synthetic example; the rest of text_len is target


LEVEL_TOKEN_IDS = (1, 2, 3, 4, 5)  # trainer.main reads them from the tokenizer


def load(spec: str, **overrides) -> ml_collections.ConfigDict:
  """A config file with top-level overrides (e.g. num_frames=8, text_len=256), and level
  token ids where the config leaves them to the tokenizer, so the level-score loss is on
  as in training."""
  config = configs.load(spec)
  for key, value in overrides.items():
    config[key] = value
  if config.model.get("level_token_ids") is None:
    config.model = {**config.model, "level_token_ids": LEVEL_TOKEN_IDS}
  return config


def with_model(config, **model_overrides) -> ml_collections.ConfigDict:
  """A copy of `config` with `config.model` entries replaced."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.model = {**config.model, **model_overrides}
  return config


def synthetic_batch(config, batch_size: int | None = None, seed: int = 0) -> dict:
  """A NumPy batch shaped like the pipeline's (pipeline.example_spec): random frames,
  pairs in both slots (every loss term is on), a PROMPT_LEN-token prompt and target text
  filling the rest of text_len."""
  b = batch_size or config.batch_size
  spec = pipeline.example_spec(config.model, config.num_frames, config.text_len, b)
  rng = np.random.default_rng(seed)
  vocab = config.model["decoder"].get("vocab_size", 256)
  l = config.text_len
  mask_ar = np.broadcast_to((np.arange(l) >= min(PROMPT_LEN, l - 1)).astype(np.int32),
                            (b, l)).copy()
  values = dict(
      ctx=rng.integers(0, 256, spec["ctx"].shape, np.uint8),
      patches=rng.integers(0, 256, spec["patches"].shape, np.uint8),
      video_mask=np.ones((b, 2), bool), mos=rng.uniform(1, 5, (b, 2)).astype(np.float32),
      is_original=np.ones((b, 2), bool), crf=np.zeros((b, 2), np.int32),
      index=np.zeros((b, 2), np.int32), dims=np.full(spec["dims"].shape, 5.0),
      pair_kind=np.ones((b,), np.int32),
      task=np.zeros((b,), np.int32), truncated=np.zeros((b,), bool),
      valid=np.ones((b,), bool), text=rng.integers(0, vocab, (b, l)).astype(np.int32),
      input_mask=np.ones((b, l), bool), mask_ar=mask_ar, mask_loss=mask_ar.copy())
  assert set(values) == set(spec), set(values) ^ set(spec)
  return {k: v.astype(spec[k].dtype) for k, v in values.items()}


def train_state(config, *, abstract: bool = False):
  """(state, setup) from trainer.create_state on a one-device mesh.

  abstract=True runs create_state under jax.eval_shape: nothing is materialised (how the
  paper's 3B-parameter state is inspected) and the state's leaves are ShapeDtypeStructs
  carrying their shardings, ready for `step.lower`.
  """
  model = cpllm.CPLLM(**config.model)
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  spec = pipeline.example_spec(config.model, config.num_frames, config.text_len,
                               config.batch_size)
  rng = jax.random.PRNGKey(config.get("seed", 0))
  if not abstract:
    return trainer.create_state(config, model, spec, mesh, rng)
  # create_state jits its init under jax.set_mesh, which cannot run inside eval_shape: its
  # steps are repeated here on shapes, with the trainer's own rules, optimiser and Setup.
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    boxed = jax.eval_shape(model.init, rng, spec)
  param_sh = sharding.param_shardings(boxed, mesh)["params"]
  params = nn.unbox(boxed)["params"]
  mults = trainer.lr_multipliers(params, trainer.param_rules(config))
  trainable, frozen = trainer.partition(params, mults)
  trainable_sh, frozen_sh = trainer.partition(param_sh, mults)
  optimizer = trainer.make_optimizer(config, trainable, mults)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  opt_state = jax.eval_shape(optimizer.init, trainable)
  opt_sh = jax.tree.map(lambda _: replicated, opt_state)  # one device: all replicated
  shapes = dict(step=jax.ShapeDtypeStruct((), jnp.int32), trainable=trainable,
                frozen=frozen, opt_state=opt_state)
  shardings = dict(step=replicated, trainable=trainable_sh, frozen=frozen_sh,
                   opt_state=opt_sh)
  batch_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  setup = trainer.Setup(model, mesh, mults, optimizer, shardings, batch_sh)
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       shapes, shardings)
  return state, setup


def batch_spec(config, batch_size: int | None = None) -> dict:
  return pipeline.example_spec(config.model, config.num_frames, config.text_len,
                               batch_size or config.batch_size)


def train_step(setup, config):
  """The project's jitted train step for `setup`."""
  return trainer.make_train_step(setup, config.loss_weights)


def compiled_train_step(config, *, abstract: bool = True):
  """(compiled train step, state, setup): from shapes only when `abstract`, else from a
  real state and synthetic batch, i.e. the very program that train_step and scaling time
  (a hit in bench.run's compilation cache)."""
  state, setup = train_state(config, abstract=abstract)
  batch = batch_spec(config) if abstract else float_batch(synthetic_batch(config))
  compiled = train_step(setup, config).lower(state, batch).compile()
  return compiled, state, setup


def train_step_flops(config, compiled: bool = True) -> float:
  """FLOPs of one train step from XLA's cost analysis of the compiled (or only lowered)
  step of the same config with unrolled layer stacks (XLA counts a loop body once)."""
  twin = with_model(config, **common.unrolled(config.model))
  state, setup = train_state(twin, abstract=True)
  lowered = train_step(setup, twin).lower(state, batch_spec(twin))
  return common.cost(lowered.compile() if compiled else lowered)["flops"]


def param_counts(state) -> dict:
  """Numbers of trainable, frozen and all parameters of a train state."""
  trainable = common.tree_size(state["trainable"])
  frozen = common.tree_size(state["frozen"])
  return dict(trainable=trainable, frozen=frozen, total=trainable + frozen)


# --------------------------------------------------------------------------- memory bound


def sequence_lengths(model_config: Mapping[str, Any], text_len: int) -> dict:
  """Token counts per image / sequence: T_h (context tokens after pooling), T_ctx (before
  pooling), T_q (pixel tokens per patch), S (decoder sequence)."""
  ctx_patch = _vit(model_config["ctx_encoder"])["patch_size"]
  t_ctx = (model_config["ctx_res"] // ctx_patch) ** 2
  t_h = t_ctx // model_config.get("ctx_pool", 1) ** 2
  pix = cpllm.build_pixel_encoder(model_config["pix_encoder"], jnp.float32)
  if isinstance(pix, cnn.PatchCNN):  # a token per grid cell
    t_q = pix.token_grid ** 2
  else:
    t_q = (model_config["patch_size"] // _vit(model_config["pix_encoder"])["patch_size"]) ** 2
  s = 2 * model_config.get("decoder_frames", 1) * (t_h + t_q) + text_len
  return dict(T_ctx=t_ctx, T_h=t_h, T_q=t_q, S=s)


def _vit(cfg):
  from cpllm.models import vit
  cfg = dict(cfg)
  return {**vit.VARIANTS[cfg.pop("variant")], **cfg}


def _gemma(cfg):
  from cpllm.models import gemma
  cfg = dict(cfg)
  return {**gemma.VARIANTS[cfg.pop("variant")], **cfg}


def remat_activation_bytes(config, trains: Mapping[str, bool], itemsize: int = 4) -> dict:
  """Activations a perfectly rematerialised backward pass must keep: the residual stream
  entering every layer (and the stack's output) of each stack that backpropagation runs
  through, i.e. (depth + 1) * tokens * width * itemsize per stack; everything inside a
  layer is recomputed. A stack runs backward if it trains (`trains[name]`) or if a trained
  stack lies before it (the decoder always does here: LoRA or base weights train).

  Returns dict(ctx, pix, decoder, total) in bytes.
  """
  m = config.model
  b, frames = config.batch_size, 2 * config.num_frames
  lengths = sequence_lengths(m, config.text_len)
  ctx, dec = _vit(m["ctx_encoder"]), _gemma(m["decoder"])
  pix_encoder = cpllm.build_pixel_encoder(m["pix_encoder"], jnp.float32)
  if isinstance(pix_encoder, cnn.PatchCNN):
    per_patch = cnn_layer_inputs(pix_encoder, m["patch_size"])
  else:
    pix = _vit(m["pix_encoder"])
    per_patch = (pix["depth"] + 1) * lengths["T_q"] * pix["width"]
  out = dict(
      ctx=(ctx["depth"] + 1) * b * frames * lengths["T_ctx"] * ctx["width"] * itemsize
      if trains["ctx"] else 0,
      pix=b * frames * m["num_patches"] * per_patch * itemsize if trains["pix"] else 0,
      decoder=(dec["depth"] + 1) * b * lengths["S"] * dec["width"] * itemsize)
  out["total"] = sum(out.values())
  return out


def cnn_layer_inputs(encoder: cnn.PatchCNN, patch: int) -> int:
  """Values a rematerialised backward pass keeps per patch of the CNN pixel encoder: the
  input of every convolution and the last feature map (space-to-depth, then SAME-padded
  3x3 convolutions with the given strides)."""
  side, channels = patch // encoder.space_to_depth, encoder.space_to_depth ** 2
  total = side * side * channels
  for features, stride in zip(encoder.features, encoder.strides):
    side, channels = -(-side // stride), features
    total += side * side * channels
  return total


def memory_lower_bound(state, config, trains: Mapping[str, bool] | None = None) -> dict:
  """Bytes a train step cannot do without: trainable params + their optimiser state
  (Adam: two moments, plus its counters) + frozen params + activations at remat
  (`remat_activation_bytes`) + the input batch itself. Gradients are not counted: an
  update fused into the backward pass never holds them all at once.

  state: the train state (arrays or ShapeDtypeStructs).
  trains: which encoder stacks train; derived from the config's rules when None.
  """
  if trains is None:
    rules = trainer.param_rules(config)
    first = lambda path: next(m for r, m in rules if re.fullmatch(r, path))
    trains = dict(ctx=first("img/x") > 0, pix=first("pix/x") > 0)
  acts = remat_activation_bytes(config, trains)
  out = dict(trainable=common.tree_bytes(state["trainable"]),
             optimizer=common.tree_bytes(state["opt_state"]),
             frozen=common.tree_bytes(state["frozen"]), activations=acts["total"],
             batch=common.tree_bytes(batch_spec(config)))
  out["total"] = sum(out.values())
  out["activations_by_stack"] = acts
  return out


def float_batch(batch):
  """jnp arrays of a NumPy batch (device_put once, outside the timed region)."""
  return jax.tree.map(jnp.asarray, batch)
