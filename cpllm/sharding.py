"""Device mesh and logical-axis rules (DESIGN.md section 6).

Parameters and activations carry logical axis names ('batch', 'seq', 'embed', 'heads',
'kv', 'mlp', 'vocab', 'layers'); `LOGICAL_RULES` maps them onto the mesh axes
('data', 'fsdp', 'tensor'). A rule whose mesh axis would not divide an array dimension is
dropped for that array only (e.g. Gemma 2B's single KV head is never split).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# (logical name, mesh axis or axes); the first rule naming a logical axis wins.
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("seq", None),
    ("layers", None),
)


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> jax.sharding.Mesh:
  """Mesh over ('data', 'fsdp', 'tensor'); one entry may be -1 for "the rest".

  Axis types are Auto: JAX 0.10's `jax.make_mesh` defaults to Explicit axes, under which
  logical constraints inside the model would have to be spelled out at every op.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = list(shape)
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"mesh shape {shape} does not divide {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices, "
                     f"have {len(devices)}")
  return jax.make_mesh(tuple(shape), MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def _fits(spec: PartitionSpec, shape, mesh) -> PartitionSpec:
  """Drops mesh axes that do not divide the dimension they would split."""
  out = []
  for axes, dim in zip(tuple(spec) + (None,) * (len(shape) - len(spec)), shape):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    out.append(axes if names and dim % size == 0 else None)
  return PartitionSpec(*out)


def param_shardings(abstract_variables, mesh, rules=LOGICAL_RULES):
  """NamedShardings for boxed (nn.Partitioned) variables, e.g. from jax.eval_shape(init)."""
  logical = nn.get_partition_spec(abstract_variables)
  mesh_specs = nn.logical_to_mesh(logical, rules)
  # Partitioned.unbox would apply a sharding constraint to these abstract values.
  shapes = jax.tree.map(lambda x: x.unbox(apply_constraint=False)
                        if isinstance(x, nn.Partitioned) else x, abstract_variables,
                        is_leaf=lambda x: isinstance(x, nn.Partitioned))
  return jax.tree.map(lambda spec, x: NamedSharding(mesh, _fits(spec, x.shape, mesh)),
                      mesh_specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))
