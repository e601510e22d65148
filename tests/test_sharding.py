"""The tiny CP-LLM initialises directly sharded on a 2x2x2 CPU mesh and computes the same
values as on one device."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from cpllm import configs
from cpllm import sharding
from cpllm.models import cpllm
from tests.models.test_cpllm import make_batch


def test_make_mesh_sizes_and_errors():
  assert jax.device_count() == 8, "tests/conftest.py must set 8 host devices"
  assert dict(sharding.make_mesh((-1, 2, 1)).shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert sharding.make_mesh((2, 2, 2)).axis_types == (jax.sharding.AxisType.Auto,) * 3
  with pytest.raises(ValueError, match="needs 12 devices"):
    sharding.make_mesh((3, 2, 2))
  with pytest.raises(ValueError, match="at most one"):
    sharding.make_mesh((-1, -1, 1))


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
