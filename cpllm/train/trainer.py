"""Supervised multi-task training of CP-LLM: `python -m cpllm.main --config=... --workdir=...`.

`main(config, workdir)` is one linear function: data, model, sharded state, checkpoints,
then the loop with logging, periodic evaluation and checkpointing. Re-running the same
command resumes from the latest checkpoint, data iterator included.

Which parameters train is decided by regex rules on '/'-joined parameter paths (first match
wins, every parameter must match one): each rule gives a learning-rate multiplier, and 0
freezes. Frozen parameters get no gradient computation, no update and no optimiser state.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers
from clu import parameter_overview
from clu import periodic_actions
from etils import epath
from flax import traverse_util

from cpllm import configs
from cpllm import sharding
from cpllm.data import pipeline
from cpllm.data import tokenizer as tokenizer_lib
from cpllm.evals import evaluator
from cpllm.models import checkpoints
from cpllm.models import cpllm
from cpllm.models import gguf_checkpoint
from cpllm.train import losses

# --------------------------------------------------------------------------- param rules


TOKENIZER_FILE = "tokenizer.model"  # the run's own tokenizer, copied into its workdir


def param_rules(config) -> tuple[tuple[str, float], ...]:
  """The rules for a config: explicit `config.param_rules`, else built from the switches.

  context_encoder: 'frozen' keeps the SigLIP tower and its projection (PaliGemma's
  aligned `img/head`) fixed; 'head' trains only the projection `proj_ctx`; 'all' trains
  both. With LoRA the decoder's base weights are frozen and the adapters train, unless
  `train_decoder_base` (for decoders trained from scratch, as in the demo).
  """
  if config.get("param_rules"):
    return tuple((str(r), float(m)) for r, m in config.param_rules)
  mode = config.context_encoder
  if mode not in ("frozen", "head", "all"):
    raise ValueError(f"config.context_encoder must be frozen, head or all, got {mode!r}")
  frozen_base = (config.model["decoder"].get("lora_rank", 0) > 0
                 and not config.get("train_decoder_base", False))
  return (
      (r"img/.*", 1.0 if mode == "all" else 0.0),
      (r"proj_ctx/.*", 0.0 if mode == "frozen" else 1.0),
      (r"llm/.*lora_[ab]", 1.0),
      (r"llm/.*", 0.0 if frozen_base else 1.0),
      (r"(pix|proj_pix|pix_norm|score_head|score_weight|exposure_head)/.*", 1.0),
  )


def lr_multipliers(params, rules: Sequence[tuple[str, float]]) -> dict[str, float]:
  """{'/'-joined path: multiplier} by the first matching rule; every path must match."""
  flat = traverse_util.flatten_dict(params, sep="/")
  out, unmatched = {}, []
  for name in flat:
    for pattern, mult in rules:
      if re.fullmatch(pattern, name):
        out[name] = mult
        break
    else:
      unmatched.append(name)
  if unmatched:
    raise ValueError(f"{len(unmatched)} parameters match no rule in param_rules "
                     f"{[r for r, _ in rules]}: {unmatched[:10]}")
  return out


def partition(params, mults: Mapping[str, float]):
  """(trainable, frozen) nested dicts holding the parameters with multiplier > 0 / == 0."""
  flat = traverse_util.flatten_dict(params, sep="/")
  trainable = {k: v for k, v in flat.items() if mults[k] > 0}
  frozen = {k: v for k, v in flat.items() if mults[k] == 0}
  return (traverse_util.unflatten_dict(trainable, sep="/"),
          traverse_util.unflatten_dict(frozen, sep="/"))


def combine(trainable, frozen):
  flat = traverse_util.flatten_dict(trainable, sep="/")
  flat.update(traverse_util.flatten_dict(frozen, sep="/"))
  return traverse_util.unflatten_dict(flat, sep="/")


# --------------------------------------------------------------------------- optimiser


def learning_rate(config) -> optax.Schedule:
  warmup = int(config.get("warmup_steps", 0))
  if config.get("schedule", "cosine") == "constant":
    decay = optax.constant_schedule(config.lr)
  else:
    decay = optax.cosine_decay_schedule(config.lr, max(config.total_steps - warmup, 1),
                                        alpha=config.get("lr_end_ratio", 0.0))
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, config.lr, warmup), decay],
                              [warmup])


def make_optimizer(config, trainable, mults: Mapping[str, float]):
  """Adam (paper) with global-norm clipping, one learning-rate scale per multiplier."""
  flat = traverse_util.flatten_dict(trainable, sep="/")
  labels = traverse_util.unflatten_dict({k: f"x{mults[k]:g}" for k in flat}, sep="/")
  schedule = learning_rate(config)
  groups = {
      f"x{m:g}": optax.adam(lambda step, m=m: m * schedule(step), b1=config.get("b1", 0.9),
                            b2=config.get("b2", 0.999))
      for m in {mults[k] for k in flat}}
  return optax.chain(optax.clip_by_global_norm(config.get("grad_clip", 1.0)),
                     optax.multi_transform(groups, labels))


# --------------------------------------------------------------------------- train state


@dataclasses.dataclass
class Setup:
  """Everything main() derives from the config before the loop."""
  model: cpllm.CPLLM
  mesh: jax.sharding.Mesh
  mults: dict[str, float]
  optimizer: optax.GradientTransformation
  state_shardings: Any
  batch_sharding: jax.sharding.NamedSharding


def create_state(config, model: cpllm.CPLLM, spec, mesh, rng, load_params=None):
  """Builds the train state directly sharded: eval_shape, shardings, jitted init, then the
  pretrained checkpoints of `config.init` placed onto those shardings.

  Args:
    spec: the global batch as ShapeDtypeStructs (pipeline.example_spec).
    load_params: optional `shardings -> params` that replaces the random init and
      `config.init` (GRPO starts from a supervised run's checkpoint this way).

  Returns (state dict(step, trainable, frozen, opt_state), Setup).
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    abstract = jax.eval_shape(model.init, rng, spec)
    param_sh = sharding.param_shardings(abstract, mesh)["params"]
    # Zeros stand in for the batch: init only needs shapes, and XLA drops the forward pass.
    zeros = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), spec)
    if load_params is None:
      params = jax.jit(lambda r: nn.unbox(model.init(r, zeros()))["params"],
                       out_shardings=param_sh)(rng)
  init_paths = {k: v for k, v in config.get("init", {}).items() if v}
  encoders_from = init_paths.pop("encoders", None)
  if load_params is not None:
    params = load_params(param_sh)
  elif init_paths:
    params = checkpoints.load_pretrained(params, **init_paths)
  if load_params is None and encoders_from:
    params = with_encoders(params, encoders_from)

  mults = lr_multipliers(params, param_rules(config))
  trainable, frozen = partition(params, mults)
  optimizer = make_optimizer(config, trainable, mults)
  trainable_sh, frozen_sh = partition(param_sh, mults)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  # Moments are sharded like their parameters; counters are replicated.
  opt_sh = optax.tree_utils.tree_map_params(
      optimizer, lambda _, sh: sh, jax.eval_shape(optimizer.init, trainable), trainable_sh,
      transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  opt_state = jax.jit(optimizer.init, out_shardings=opt_sh)(trainable)
  state = dict(step=jax.device_put(jnp.zeros((), jnp.int32), replicated),
               trainable=trainable, frozen=frozen, opt_state=opt_state)
  state_sh = dict(step=replicated, trainable=trainable_sh, frozen=frozen_sh,
                  opt_state=opt_sh)
  batch_sh = sharding.batch_sharding(mesh, jax.tree.leaves(spec)[0].shape[0])
  return state, Setup(model, mesh, mults, optimizer, state_sh, batch_sh)


ENCODERS = ("img", "pix")  # the towers that do not depend on the decoder's width


def with_encoders(params, workdir: str):
  """`params` with the context and pixel encoders (ENCODERS) of a CP-LLM run's latest
  checkpoint (`config.init.encoders`), e.g. the demo's towers under a Gemma 3 decoder.
  Raises ValueError naming the run and the first parameter whose shape differs."""
  run_config = load_config(workdir)
  run_model = cpllm.CPLLM(**{**run_config.model.to_dict(),
                             "level_token_ids": None, "max_targets": None})
  restored, step = restore_params(workdir, run_config, run_model)
  out = dict(params)
  for tower in ENCODERS:
    want = traverse_util.flatten_dict(params[tower], sep="/")
    got = traverse_util.flatten_dict(restored[tower], sep="/")
    for name in sorted(want.keys() | got.keys()):
      if name not in want or name not in got or want[name].shape != got[name].shape:
        shapes = [x[name].shape if name in x else "missing" for x in (got, want)]
        raise ValueError(f"config.init.encoders: {workdir} (step {step}) has {tower}/{name} "
                         f"{shapes[0]}, this model {shapes[1]}: the encoders must match")
    out[tower] = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding),
                              restored[tower], params[tower])
  log_line(f"encoders {', '.join(ENCODERS)} from {workdir} (step {step})")
  return out


def guarded_update(optimizer, loss_fn, state, batch):
  """One optimiser step on `loss_fn(trainable, frozen, batch) -> (loss, terms)` (call
  under jit). A non-finite loss or gradient norm keeps the parameters and optimiser state
  and reports `finite` False. Returns (state with new trainable / opt_state, metrics)."""
  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state["trainable"], state["frozen"], batch)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = optimizer.update(grads, state["opt_state"], state["trainable"])
  trainable = optax.apply_updates(state["trainable"], updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = dict(state, trainable=keep(trainable, state["trainable"]),
                   opt_state=keep(opt_state, state["opt_state"]))
  return new_state, dict(loss=loss, grad_norm=grad_norm, finite=finite, **terms)


def make_train_step(setup: Setup, loss_weights: Mapping[str, float],
                    ladder_margin: float = 0.0, score_blind: Sequence[str] = (),
                    order_only: Sequence[str] = ()):
  """One jitted step: forward, loss, gradients of the trainable params only, update.

  A non-finite loss or gradient norm leaves the state unchanged and sets `finite` False,
  so the caller can stop with the step named and the last checkpoint stays good.
  """
  model = setup.model

  def loss_fn(trainable, frozen, batch):
    out = model.apply({"params": combine(trainable, frozen)}, batch, train=True)
    return losses.total_loss(out, batch, loss_weights, ladder_margin, tuple(score_blind),
                             tuple(order_only))

  def step(state, batch):
    new_state, metrics = guarded_update(setup.optimizer, loss_fn, state, batch)
    new_state["step"] = state["step"] + metrics["finite"].astype(jnp.int32)
    return new_state, metrics

  return jax.jit(step, in_shardings=(setup.state_shardings, setup.batch_sharding),
                 out_shardings=(setup.state_shardings, None), donate_argnums=(0,))


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def write_config(config, workdir: epath.Path) -> None:
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config_to_json(config))


def format_eta(seconds: float) -> str:
  minutes, secs = divmod(int(seconds), 60)
  return f"{minutes}m{secs:02d}s"


def log_line(text: str) -> None:
  """Progress for people watching the terminal (and absl's log)."""
  if jax.process_index() == 0:
    print(text, flush=True)
  logging.info(text)


# --------------------------------------------------------------------------- main


class JsonlWriter(metric_writers.MetricWriter):
  """Appends one JSON object per written step to `metrics.jsonl` (scalars only)."""

  def __init__(self, path: epath.Path):
    self._path = path

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    with self._path.open("a") as f:
      f.write(json.dumps(row) + "\n")

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def make_writer(workdir: epath.Path) -> metric_writers.MetricWriter:
  """TensorBoard events + metrics.jsonl on process 0; logging only elsewhere."""
  if jax.process_index() != 0:
    return metric_writers.LoggingWriter()
  return metric_writers.MultiWriter([
      metric_writers.SummaryWriter(str(workdir)), JsonlWriter(workdir / "metrics.jsonl")])


# Orbax splits each replicated array into one slice per replica so that replicas write
# their parts in parallel. Every slice is a small XLA program of its own: worth it for
# arrays of megabytes on many hosts, while for small arrays the compiling costs seconds per
# save (a third of a 6-step run on 8 host devices) and the write is no faster.
REPLICA_PARALLEL_MIN_BYTES = 1 << 20


def checkpoint_manager(workdir: epath.Path, config) -> ocp.CheckpointManager:
  """Every process writes its own shards of the state; orbax coordinates them. Items:
  'state' (save with `checkpoint_args`) and 'data' (the grain iterator)."""
  arrays = ocp.type_handlers.ArrayHandler(
      min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_BYTES)
  registry = ocp.type_handlers.create_type_handler_registry((jax.Array, arrays))
  return ocp.CheckpointManager(
      workdir / "checkpoints",
      options=ocp.CheckpointManagerOptions(
          max_to_keep=config.get("keep_checkpoints", 2), enable_async_checkpointing=True),
      item_handlers=dict(
          state=ocp.PyTreeCheckpointHandler(type_handler_registry=registry),
          data=grain.checkpoint.CheckpointHandler()))


def checkpoint_args(state, data_iterator) -> ocp.args.Composite:
  """What `checkpoint_manager(...).save` writes: the state (jax.Arrays) and the iterator."""
  return ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                            data=grain.checkpoint.CheckpointSave(data_iterator))


def restore_latest(manager, state, shardings, data_iterator):
  """Restores state (onto its shardings) and the data iterator in place; returns state."""
  step = manager.latest_step()
  restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s), shardings)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(state, restore_args=restore_args),
      data=grain.checkpoint.CheckpointRestore(data_iterator)))
  return restored["state"]


def resolve_tokenizer(config, data_dir: str) -> tokenizer_lib.Tokenizer:
  """config.tokenizer (a SentencePiece model, or a GGUF file whose tokenizer is written out
  as one), or the tokenizer.model a dataset build left beside its records."""
  path = config.get("tokenizer")
  if not path:
    path = pipeline.dataset_tokenizer(config.data.name, data_dir)
  elif path.endswith(".gguf"):
    path = gguf_checkpoint.write_tokenizer(
        path, os.path.join(tempfile.mkdtemp(prefix="cpllm-tokenizer-"), TOKENIZER_FILE))
  return tokenizer_lib.Tokenizer(path)


def write_run_files(config, workdir: epath.Path,
                    tokenizer: tokenizer_lib.Tokenizer) -> None:
  """config.json and the tokenizer (scoring and export read the run's own) on process 0."""
  write_config(config, workdir)
  if jax.process_index() == 0:
    (workdir / TOKENIZER_FILE).write_bytes(epath.Path(tokenizer.path).read_bytes())


def open_splits(config, data_dir: str):
  """((records, meta) of the training split, the same of the evaluation split)."""
  return (pipeline.open_split(config.data.name, config.data.train_split, data_dir),
          pipeline.open_split(config.data.name, config.data.eval_split, data_dir))


def main(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) and evaluates; returns the last evaluation's metrics.

  `workdir` and `config.data.data_dir` may be local paths or gs:// URLs.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  workdir = configs.resolve_path(workdir)
  if not config.data.get("data_dir"):
    raise ValueError("config.data.data_dir is not set: pass --config.data.data_dir=DIR, the "
                     f"--data_dir the '{config.data.name}' dataset was built into")
  data_dir = str(configs.resolve_path(config.data.data_dir))
  tokenizer = resolve_tokenizer(config, data_dir)
  if tokenizer.vocab_size > config.model["decoder"].get("vocab_size", tokenizer.vocab_size):
    raise ValueError(f"the tokenizer has {tokenizer.vocab_size} pieces but the decoder's "
                     f"vocabulary is {config.model['decoder']['vocab_size']}")
  if config.model.get("level_token_ids") is None:
    config.model["level_token_ids"] = tuple(tokenizer.level_token_ids())
  write_run_files(config, workdir, tokenizer)
  log_line(f"workdir {workdir}; config and tokenizer written to config.json, "
           "tokenizer.model")

  mesh = sharding.make_mesh(config.get("mesh", (-1, 1, 1)))
  # Each process feeds the rows of every global batch its devices hold.
  shard_index, shard_count = sharding.process_rows(
      sharding.batch_sharding(mesh, config.batch_size), config.batch_size)
  (records, meta), (eval_records, eval_meta) = open_splits(config, data_dir)
  train_iter = iter(pipeline.train_dataset(
      records, meta, tokenizer, model_config=config.model, num_frames=config.num_frames,
      text_len=config.text_len, batch_size=config.batch_size // shard_count,
      seed=config.seed, mix=pipeline.Mix(**config.data.mix),
      level_rate=config.data.level_rate, reason_rate=config.data.get("reason_rate", 0.0),
      augment=config.data.get("augment", False),
      low_contrast=config.data.get("low_contrast"),
      num_workers=config.data.get("num_workers", 0), shard_index=shard_index,
      shard_count=shard_count))
  log_line(f"data: {len(meta)} training and {len(eval_meta)} evaluation videos "
           f"({config.data.name} in {data_dir}); process {jax.process_index()} of "
           f"{jax.process_count()} feeds block {shard_index} of {shard_count} of each batch")

  model = cpllm.CPLLM(**config.model)
  example = pipeline.example_spec(config.model, config.num_frames, config.text_len,
                                  config.batch_size)
  state, setup = create_state(config, model, example, mesh,
                              jax.random.PRNGKey(config.seed))
  params_for_overview = combine(state["trainable"], state["frozen"])
  parameter_overview.log_parameter_overview(params_for_overview)
  n_train = sum(x.size for x in jax.tree.leaves(state["trainable"]))
  n_all = sum(x.size for x in jax.tree.leaves(params_for_overview))
  log_line(f"model: {n_all:,} parameters, {n_train:,} trained; mesh {dict(mesh.shape)}")
  del params_for_overview

  manager = checkpoint_manager(workdir, config)
  if manager.latest_step() is not None:
    state = restore_latest(manager, state, setup.state_shardings, train_iter)
    log_line(f"resumed from step {int(state['step'])}")
  writer = make_writer(workdir)
  train_step = make_train_step(setup, config.loss_weights, config.get("ladder_margin", 0.0),
                               config.get("score_blind", ()), config.get("order_only", ()))
  report = periodic_actions.ReportProgress(num_train_steps=config.total_steps, writer=writer,
                                           every_steps=config.log_every)
  evaluate = functools.partial(evaluator.evaluate, model=model, records=eval_records,
                               meta=eval_meta, tokenizer=tokenizer, config=config,
                               workdir=workdir, writer=writer, mesh=mesh)

  first_step = int(state["step"]) + 1
  eval_metrics, window, window_start = None, [], (first_step, time.perf_counter())
  try:
    for step in range(first_step, config.total_steps + 1):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch = sharding.global_batch(next(train_iter), setup.batch_sharding)
        state, metrics = train_step(state, batch)
      window.append(metrics)
      if not bool(metrics["finite"]):
        manager.wait_until_finished()
        raise FloatingPointError(
            f"step {step}: the loss or the gradients are not finite (loss "
            f"{float(metrics['loss'])}, gradient norm {float(metrics['grad_norm'])}); "
            f"stopped without updating. The last good checkpoint (step "
            f"{manager.latest_step()}) is intact in {workdir}/checkpoints.")
      report(step)
      if step % config.log_every == 0 or step == config.total_steps:
        scalars = {k: float(np.mean([float(m[k]) for m in window]))
                   for k in window[0] if k != "finite"}
        scalars["learning_rate"] = float(learning_rate(config)(step))
        writer.write_scalars(step, scalars)
        rate = (step - window_start[0] + 1) / (time.perf_counter() - window_start[1])
        log_line(f"step {step}/{config.total_steps}  loss {scalars['loss']:.4f} (pair "
                 f"{scalars['loss_pair']:.3f}, reg {scalars['loss_reg']:.3f}, text "
                 f"{scalars['loss_text']:.3f}, ladder {scalars['loss_ladder']:.3f})  "
                 f"{rate:.2f} steps/s  ETA "
                 f"{format_eta((config.total_steps - step) / rate)}")
        window, window_start = [], (step + 1, time.perf_counter())
      if step % config.checkpoint_every == 0 or step == config.total_steps:
        manager.save(step, args=checkpoint_args(state, train_iter))
      if step % config.eval_every == 0 or step == config.total_steps:
        eval_metrics = evaluate(combine(state["trainable"], state["frozen"]), step=step)
        window_start = (step + 1, time.perf_counter())
  finally:
    train_iter.close()  # stops the prefetch workers and frees their shared memory
  manager.wait_until_finished()
  if eval_metrics is None and manager.latest_step() is not None:
    step = manager.latest_step()
    eval_metrics = evaluator.load_metrics(workdir, step) or evaluate(
        combine(state["trainable"], state["frozen"]), step=step)
  writer.flush()
  return eval_metrics or {}


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: is {workdir} a training workdir?")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore_params(workdir: str, config, model: cpllm.CPLLM, step: int | None = None,
                   shardings=None):
  """The model parameters of a checkpoint (latest if `step` is None).

  Only the parameters are read (orbax partial restore): the optimiser state is skipped.
  `config` is the run's own (it says how the checkpoint splits trainable and frozen);
  `shardings` (a tree like the params) places them, default the first local device.
  Returns (params, step).
  """
  manager = ocp.CheckpointManager(configs.resolve_path(workdir) / "checkpoints")
  steps = manager.all_steps()
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
  step = max(steps) if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint of step {step} in {workdir}/checkpoints "
                            f"(there are {sorted(steps)})")
  spec = pipeline.example_spec(config.model, config.num_frames, config.text_len, 1)
  abstract = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), spec))["params"]
  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, abstract)
  mults = lr_multipliers(abstract, param_rules(config))
  trainable, frozen = partition(abstract, mults)
  trainable_sh, frozen_sh = partition(shardings, mults)
  target = dict(trainable=trainable, frozen=frozen)
  restore_args = jax.tree.map(lambda sh: ocp.ArrayRestoreArgs(sharding=sh),
                              dict(trainable=trainable_sh, frozen=frozen_sh))
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=target, restore_args=restore_args, partial_restore=True)))["state"]
  manager.close()
  return combine(restored["trainable"], restored["frozen"]), step
