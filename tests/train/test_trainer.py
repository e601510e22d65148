"""Trainer pieces on synthetic batches: parameter rules, frozen parameters, the NaN guard."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from cpllm import configs
from cpllm import sharding
from cpllm.data import pipeline
from cpllm.models import cpllm
from cpllm.train import trainer


def train_config(**over):
  config = configs.load("configs/demo.py:smoke")
  tiny = configs.load("configs/tiny.py")
  config.model = dict(tiny.model, level_token_ids=(10, 11, 12, 13, 14))
  config.num_frames, config.text_len = 2, 12
  config.train_decoder_base = False  # the paper's LoRA-only decoder
  for key, value in over.items():
    config[key] = value
  return config


def synthetic_batch(config, seed=0):
  rng = np.random.default_rng(seed)
  spec = pipeline.example_spec(config.model, config.num_frames, config.text_len,
                               config.batch_size)
  batch = {}
  for key, s in spec.items():
    if s.dtype == np.uint8:
      batch[key] = rng.integers(0, 256, s.shape, dtype=np.uint8)
    elif s.dtype == np.bool_:
      batch[key] = np.ones(s.shape, bool)
    elif s.dtype == np.float32:
      batch[key] = rng.uniform(1, 5, s.shape).astype(np.float32)
    else:
      batch[key] = rng.integers(0, 2, s.shape).astype(s.dtype)
  batch["text"] = rng.integers(0, 200, batch["text"].shape).astype(np.int32)
  batch["video_mask"][::2, 1] = False
  return batch, spec


def names(tree):
  return set(traverse_util.flatten_dict(tree, sep="/"))


@pytest.mark.parametrize("mode,img,proj", [("frozen", 0, 0), ("head", 0, 1), ("all", 1, 1)])
def test_param_rules_cover_every_parameter(mode, img, proj):
  config = train_config(context_encoder=mode)
  model = cpllm.CPLLM(**config.model)
  batch, spec = synthetic_batch(config)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), spec)["params"]
  mults = trainer.lr_multipliers(params, trainer.param_rules(config))
  assert set(mults) == names(params)
  by_prefix = lambda p: {m for k, m in mults.items() if k.startswith(p)}
  assert by_prefix("img/") == {img} and by_prefix("proj_ctx/") == {proj}
  assert by_prefix("pix/") == by_prefix("score_head/") == by_prefix("proj_pix/") == {1}
  assert {m for k, m in mults.items() if "lora_" in k} == {1}
  assert {m for k, m in mults.items() if k.startswith("llm/") and "lora_" not in k} == {0}
  with pytest.raises(ValueError, match="match no rule"):
    trainer.lr_multipliers(params, (("img/.*", 1.0),))


@pytest.mark.slow
def test_frozen_params_unchanged_and_without_optimizer_state():
  config = train_config(context_encoder="frozen", lr=1e-2, warmup_steps=0)
  model = cpllm.CPLLM(**config.model)
  batch, spec = synthetic_batch(config)
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  state, setup = trainer.create_state(config, model, spec, mesh, jax.random.PRNGKey(0))
  frozen_before = jax.tree.map(np.array, state["frozen"])
  trainable_before = jax.tree.map(np.array, state["trainable"])
  step = trainer.make_train_step(setup, config.loss_weights)
  for i in range(3):
    state, metrics = step(state, sharding.global_batch(synthetic_batch(config, i)[0],
                                                      setup.batch_sharding))
    assert bool(metrics["finite"])
  assert int(state["step"]) == 3
  jax.tree.map(np.testing.assert_array_equal, state["frozen"], frozen_before)
  assert names(state["frozen"]) >= {n for n in names(state["frozen"]) if n.startswith("img/")}
  assert any(n.startswith("img/") for n in names(state["frozen"]))
  changed = jax.tree.map(lambda a, b: bool((np.asarray(a) != b).any()),
                         state["trainable"], trainable_before)
  assert all(jax.tree.leaves(changed))  # every trained leaf moved (LoRA B included)
  # Adam's moments exist exactly for the trainable leaves.
  moment_trees = [x for x in jax.tree.leaves(
      state["opt_state"], is_leaf=lambda x: hasattr(x, "mu")) if hasattr(x, "mu")]
  assert moment_trees and all(names(m.mu) <= names(state["trainable"]) for m in moment_trees)
  assert sum(len(names(m.mu)) for m in moment_trees) == len(names(state["trainable"]))
  assert not names(state["trainable"]) & names(state["frozen"])


@pytest.mark.slow
def test_non_finite_step_leaves_state_unchanged():
  config = train_config(loss_weights=dict(pair=1.0, reg=float("nan"), text=1.0))
  model = cpllm.CPLLM(**config.model)
  batch, spec = synthetic_batch(config)
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  state, setup = trainer.create_state(config, model, spec, mesh, jax.random.PRNGKey(0))
  before = jax.tree.map(np.array, state["trainable"])
  state, metrics = trainer.make_train_step(setup, config.loss_weights)(
      state, sharding.global_batch(batch, setup.batch_sharding))
  assert not bool(metrics["finite"]) and int(state["step"]) == 0
  jax.tree.map(np.testing.assert_array_equal, state["trainable"], before)
