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
from jax.experimental import multihost_utils
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


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins this process to a multi-process job (`jax.distributed.initialize`).

  On Cloud TPU VMs every argument may be None: JAX reads the pod's metadata. Elsewhere
  (e.g. two local CPU processes in the tests) all three are given; CPU collectives then
  run over gloo. Must run before anything asks JAX for its devices.
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def process_rows(batch_sharding: NamedSharding, global_batch: int) -> tuple[int, int]:
  """(block index, block count) of the rows of a global batch this process's devices hold.

  Each process feeds one contiguous block of rows (`jax.make_array_from_process_local_data`
  needs exactly the rows its devices own); the data pipeline is sharded by this block, so
  row r of every global batch is the same example whatever the number of processes.
  E.g. batch 8 over 2 processes of 4 devices each: process 1 holds rows 4..7 -> (1, 2).
  """
  rows = set()
  for index in batch_sharding.addressable_devices_indices_map((global_batch,)).values():
    rows.update(range(*index[0].indices(global_batch)))
  start, size = min(rows), len(rows)
  if rows != set(range(start, start + size)) or global_batch % size or start % size:
    raise ValueError(f"this process's devices hold rows {sorted(rows)} of a batch of "
                     f"{global_batch}: not one aligned contiguous block")
  return start // size, global_batch // size


def global_batch(batch, batch_sharding: NamedSharding):
  """This process's NumPy rows -> global jax.Arrays sharded over the batch axis."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(batch_sharding, x),
                      batch)


def to_host(x) -> np.ndarray:
  """A global jax.Array as NumPy on every process (an all-gather across processes)."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def batch_sharding(mesh: jax.sharding.Mesh, global_batch: int, what: str = "batch_size"):
  """Batches split along their first axis over 'data' x 'fsdp' (replicated over 'tensor').

  Raises if `global_batch` (named `what` in the message) does not divide over them.
  """
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch % shards:
    raise ValueError(f"{what} {global_batch} does not split over the mesh's {shards} batch "
                     f"shards (data x fsdp of {dict(mesh.shape)})")
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
