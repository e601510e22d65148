"""Sharding on 8 CPU devices: the tiny CP-LLM initialises directly sharded and computes
what one device computes; train steps agree across meshes; FSDP splits the state."""

import collections

import flax.linen as nn
import jax
import numpy as np
import pytest

from cpllm import configs
from cpllm import sharding
from cpllm.models import cpllm
from cpllm.train import trainer
from tests.models.test_cpllm import make_batch
from tests.train import test_trainer


def test_make_mesh_sizes_and_errors():
  assert jax.device_count() == 8, "tests/conftest.py must set 8 host devices"
  assert dict(sharding.make_mesh((-1, 2, 1)).shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert sharding.make_mesh((2, 2, 2)).axis_types == (jax.sharding.AxisType.Auto,) * 3
  with pytest.raises(ValueError, match="needs 12 devices"):
    sharding.make_mesh((3, 2, 2))
  with pytest.raises(ValueError, match="at most one"):
    sharding.make_mesh((-1, -1, 1))


@pytest.mark.slow
def test_sharded_init_matches_single_device():
  cfg = configs.load("configs/tiny.py:gemma2")
  model = cpllm.CPLLM(**cfg.model)
  batch = make_batch(cfg, [[True, True], [True, False], [True, False], [True, True]])
  rng = jax.random.PRNGKey(0)
  want_vars = nn.unbox(jax.jit(model.init)(rng, batch))
  want_out = jax.jit(model.apply)(want_vars, batch)

  mesh = sharding.make_mesh((2, 2, 2))
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    abstract = jax.eval_shape(model.init, rng, batch)
    shardings = sharding.param_shardings(abstract, mesh)
    variables = jax.jit(lambda r: nn.unbox(model.init(r, batch)),
                        out_shardings=shardings)(rng)
    out = jax.jit(model.apply)(variables, batch)

  embedding = variables["params"]["llm"]["embedder"]["input_embedding"]
  assert embedding.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  assert embedding.addressable_shards[0].data.shape == (128, 32)
  jax.tree.map(np.testing.assert_array_equal, variables, want_vars)
  for key in ("score", "logits", "level_score"):
    np.testing.assert_allclose(out[key], want_out[key], atol=1e-5)


def _train_on_mesh(config, shape, steps=3):
  """Losses and final trainable parameters of `steps` train steps on a mesh of `shape`."""
  model = cpllm.CPLLM(**config.model)
  mesh = sharding.make_mesh(shape, devices=jax.devices()[:int(np.prod(shape))])
  _, spec = test_trainer.synthetic_batch(config)
  state, setup = trainer.create_state(config, model, spec, mesh, jax.random.PRNGKey(0))
  step = trainer.make_train_step(setup, config.loss_weights)
  losses = []
  for i in range(steps):
    batch = test_trainer.synthetic_batch(config, seed=i)[0]
    state, metrics = step(state, sharding.global_batch(batch, setup.batch_sharding))
    losses.append(float(metrics["loss"]))
  return np.array(losses), jax.tree.map(np.asarray, state["trainable"])


@pytest.mark.slow
def test_train_steps_agree_across_meshes():
  """Data, FSDP and tensor parallelism change where numbers live, not what they are.

  Tolerance: reductions split over devices round differently (losses agree to 2e-7
  relative); Adam divides each update by its gradient's own scale, so on parameters with
  near-zero gradients those roundings reach ~1e-4 of lr = 1e-3 per step, never more.
  """
  config = test_trainer.train_config(batch_size=8, train_decoder_base=True,
                                     context_encoder="all", warmup_steps=0)
  want_losses, want_params = _train_on_mesh(config, (1, 1, 1))
  assert want_losses[-1] < want_losses[0]
  for shape in [(8, 1, 1), (2, 4, 1), (2, 2, 2)]:
    losses, params = _train_on_mesh(config, shape)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-6, err_msg=str(shape))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-4, rtol=0,
                                                         err_msg=str(shape)),
                 params, want_params)


def _bytes_per_device(tree) -> dict:
  per_device = collections.Counter()
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      per_device[shard.device] += shard.data.nbytes
  return per_device


@pytest.mark.slow
def test_fsdp_splits_parameters_and_optimizer_state():
  config = test_trainer.train_config(batch_size=8, train_decoder_base=True,
                                     context_encoder="all")
  model = cpllm.CPLLM(**config.model)
  _, spec = test_trainer.synthetic_batch(config)
  mesh = sharding.make_mesh((1, 8, 1))
  state, _ = trainer.create_state(config, model, spec, mesh, jax.random.PRNGKey(0))
  replicated = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
  per_device = _bytes_per_device(state)
  assert len(per_device) == 8
  assert max(per_device.values()) <= replicated / 6, (max(per_device.values()), replicated)
  # The optimiser's moments follow their parameters: Adam's mu of the MLP is split 8 ways.
  mu = state["opt_state"][1].inner_states["x1"].inner_state[0].mu
  gating = mu["llm"]["layers"]["mlp"]["gating_einsum"]
  assert gating.addressable_shards[0].data.size * 8 == gating.size
