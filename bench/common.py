"""Shared pieces of the benchmarks: timing, this machine's limits, FLOP/byte accounting,
results files and Markdown tables.

Every benchmark times its workload and the machine's limits (matmul peak, copy bandwidth)
in the same process, so its ratios are taken under the same load. Workloads are timed by
the median of repeats (robust to a stray slow run); the limits by the best repeat, which
makes every ratio against them conservative (a lower MFU, a farther roofline).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --------------------------------------------------------------------------- timing


def time_call(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5) -> dict:
  """Times `fn()` (its result is blocked on) after `warmup` untimed calls.

  Returns dict(median, min, times) in seconds per call.
  """
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return dict(median=statistics.median(times), min=min(times), times=times)


# --------------------------------------------------------------------------- FLOPs, bytes


def matmul_flops(m: int, k: int, n: int) -> int:
  """FLOPs of [m, k] @ [k, n]: one multiply and one add per term, 2 m k n."""
  return 2 * m * k * n


def tree_bytes(tree) -> int:
  """Bytes of every array leaf (arrays or ShapeDtypeStructs) of a pytree."""
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(tree)))


def tree_size(tree) -> int:
  """Number of elements of every array leaf of a pytree."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def cost(compiled_or_lowered) -> dict:
  """XLA's cost analysis as dict(flops, bytes_accessed, transcendentals).

  XLA counts the body of a while loop once, whatever its trip count: count a model with
  unrolled layers (scan=False), not a scanned one (see `unrolled`).
  """
  analysis = compiled_or_lowered.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
    analysis = analysis[0]
  return dict(flops=float(analysis.get("flops", 0.0)),
              bytes_accessed=float(analysis.get("bytes accessed", 0.0)),
              transcendentals=float(analysis.get("transcendentals", 0.0)))


def memory(compiled) -> dict:
  """XLA's memory analysis of a compiled executable, in bytes.

  peak = arguments + outputs - aliased (donated buffers reused for outputs) + temporaries;
  XLA's own buffer assignment, i.e. what the device must hold at once for this program.
  """
  stats = compiled.memory_analysis()
  out = dict(argument=int(stats.argument_size_in_bytes),
             output=int(stats.output_size_in_bytes), alias=int(stats.alias_size_in_bytes),
             temp=int(stats.temp_size_in_bytes),
             code=int(stats.generated_code_size_in_bytes))
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


def unrolled(model_config: Mapping[str, Any]) -> dict:
  """The model config with every layer stack unrolled (scan=False): the same arithmetic,
  but XLA's cost analysis then sees every layer (it counts a loop body once)."""
  out = dict(model_config)
  for part in ("ctx_encoder", "pix_encoder", "decoder"):
    if out[part].get("kind", "vit") != "cnn":  # the CNN pixel encoder has no layer stack
      out[part] = {**out[part], "scan": False}
  return out


# --------------------------------------------------------------------------- machine limits


def matmul_peak(n: int = 2048, repeats: int = 5, warmup: int = 2) -> dict:
  """This machine's f32 matmul rate through XLA: a jitted [n, n] @ [n, n] jnp.dot.

  Returns dict(flops_per_s (best repeat), median_flops_per_s, n).
  """
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  timing = time_call(lambda: _dot(a, b), warmup=warmup, repeats=repeats)
  flops = matmul_flops(n, n, n)
  return dict(flops_per_s=flops / timing["min"], median_flops_per_s=flops / timing["median"],
              n=n)


_dot = jax.jit(jnp.dot)


def copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> dict:
  """Main-memory bandwidth through XLA: y = x + 1 over a float32 array far larger than the
  caches reads and writes every byte once, so bandwidth = 2 * nbytes / time. The input is
  donated, so the output reuses its buffer: a fresh 256 MB output would be first-touched
  page by page, and that measures page faults (about 2 GB/s here), not the memory.

  Returns dict(bytes_per_s (best repeat), median_bytes_per_s, megabytes).
  """
  add = jax.jit(lambda x: x + 1.0, donate_argnums=0)
  holder = [jax.random.normal(jax.random.PRNGKey(0), (megabytes * 2**20 // 4,))]

  def call():
    holder[0] = add(holder[0])
    return holder[0]

  timing = time_call(call, warmup=2, repeats=repeats)
  moved = 2 * holder[0].nbytes
  return dict(bytes_per_s=moved / timing["min"], median_bytes_per_s=moved / timing["median"],
              megabytes=megabytes)


def matvec_bandwidth(megabytes: int = 256, rows: int = 768, repeats: int = 5) -> dict:
  """The weight-read rate of XLA:CPU's own matrix-vector product: one jitted
  x float32[1, rows] @ W float32[rows, N] over a `megabytes` W, bytes of W / time. A decode
  step at batch 1 is such products, so this bounds it from what the compiler can do, next
  to what the memory can (copy_bandwidth).

  Returns dict(bytes_per_s (best repeat), median_bytes_per_s, megabytes).
  """
  w = jax.random.normal(jax.random.PRNGKey(0), (rows, megabytes * 2**20 // (4 * rows)))
  x = jnp.ones((1, rows), jnp.float32)
  timing = time_call(lambda: _dot(x, w), warmup=2, repeats=repeats)
  return dict(bytes_per_s=w.nbytes / timing["min"], median_bytes_per_s=w.nbytes
              / timing["median"], megabytes=megabytes)


def machine_info() -> dict:
  """CPU model, core count, memory, JAX version, devices, date and the load at start (other
  processes on the machine make timings noisy; the load average says how noisy)."""
  model = platform.processor() or "unknown"
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  try:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError):
    mem = None
  return dict(cpu=model, cores=os.cpu_count(), memory_bytes=mem, jax=jax.__version__,
              backend=jax.default_backend(), devices=len(jax.devices()),
              load_average=list(os.getloadavg()),
              date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


# --------------------------------------------------------------------------- results


def write_result(name: str, payload: Mapping[str, Any], *, quick: bool,
                 results_dir: str = RESULTS_DIR) -> str:
  """Writes bench/results/<name>.json with the machine's info; returns the path."""
  os.makedirs(results_dir, exist_ok=True)
  path = os.path.join(results_dir, f"{name}.json")
  data = dict(name=name, quick=quick, machine=machine_info(), **payload)
  with open(path, "w") as f:
    json.dump(data, f, indent=2, default=_json_default)
    f.write("\n")
  return path


def read_result(name: str, results_dir: str = RESULTS_DIR) -> dict | None:
  path = os.path.join(results_dir, f"{name}.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value)}")


def fmt(value, digits: int = 3) -> str:
  """A table cell: ints with separators, floats to `digits` significant digits."""
  if value is None:
    return "-"
  if isinstance(value, bool) or isinstance(value, str):
    return str(value)
  if isinstance(value, (int, np.integer)):
    return f"{int(value):,}"
  value = float(value)
  if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
    return f"{value:.{digits - 1}e}"
  return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:,.0f}"


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                   headers: Sequence[str] | None = None) -> str:
  """Rows of dicts -> a Markdown table of `columns` (cells through `fmt`)."""
  headers = list(headers or columns)
  lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
  for row in rows:
    lines.append("| " + " | ".join(fmt(row.get(c)) for c in columns) + " |")
  return "\n".join(lines)


def gflops(x: float) -> float:
  return x / 1e9


def gib(x: float) -> float:
  return x / 2**30
