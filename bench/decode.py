"""Decoding speed of the KV-cache sampler: `python -m bench.run decode [--quick]`.

tokens/s of `sampler.make_generate` (greedy; jitted prefill + lax.while_loop over the
preallocated cache) for NEW_TOKENS new tokens after a PREFIX-token prefix (the demo's
visual tokens of two videos and a prompt bucket), at batch 1 and 16, against
  (a) no cache: every new token recomputes the decoder over the whole sequence so far. Its
      time is the trapezoid over the sequence lengths of one full forward pass (last
      position's logits only), timed at the shortest and the longest length: exact when
      the cost grows linearly with length, which it nearly does at these lengths (the
      quadratic attention term is small);
  (b) the memory-bandwidth roofline: each step must read every decoder weight once
      (embedding included: the logits use the tied embedding) and the filled part of
      the KV cache, at the copy bandwidth measured in the same process.
      roofline_ratio = measured time per step / roofline time per step (1 = at the limit).
      matvec_ratio is the same with the bandwidth of XLA:CPU's own matrix-vector product
      (common.matvec_bandwidth): how far a step is from what this compiler can do.
eos_id is -1 (never sampled), so every run produces exactly NEW_TOKENS tokens.

The other `sampler` rows undo, in the same process, the two fixes that bench/ led to:
"scanned stack, einsum" is the sampler as first measured (the decoder's scanned layer
stack inside the token loop: sampler.looped_decoder replaced by the identity, and plain
einsums for every weight: gemma.FEW_TOKENS = 0); "looped stack, einsum" has the first fix
only.
"""

from __future__ import annotations

import contextlib
import functools
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from bench import common
from bench import workloads
from cpllm.models import cpllm
from cpllm.models import gemma
from cpllm.models import sampler
from cpllm.train import trainer

CONFIGS = {"demo": "configs/demo.py", "bench": "configs/bench.py",
           "gemma3_270m": "configs/demo.py:gemma3"}
PREFIX = 128
NEW_TOKENS = 256


@functools.cache
def decoder_variables(spec: str):
  """(model, variables) with random parameters from the trainer's state of a config file
  (one per file: the sampler does not donate them)."""
  state, setup = workloads.train_state(workloads.load(spec))
  params = trainer.combine(state["trainable"], state["frozen"])
  return setup.model, {"params": params}


def roofline_seconds(model: cpllm.CPLLM, params, batch: int, prefix: int, new: int,
                     bandwidth: float) -> dict:
  """Bytes and the bandwidth-bound time of `new` decode steps.

  Per step i (0-based) the decoder reads all its weights and the K and V cache of the
  prefix + i tokens already written: depth * batch * (prefix + i) * kv_heads * head_dim * 2
  values.
  """
  llm = cpllm.build_gemma(model.decoder, model.dtype)
  weight_bytes = common.tree_bytes(params["llm"])
  itemsize = np.dtype(model.dtype).itemsize
  per_slot = llm.depth * batch * llm.num_kv_heads * llm.head_dim * 2 * itemsize
  filled = prefix * new + new * (new - 1) / 2  # sum over steps of (prefix + i)
  total = new * weight_bytes + per_slot * filled
  return dict(weight_bytes=weight_bytes, cache_bytes_per_token_slot=per_slot,
              bytes=total, seconds=total / bandwidth)


def no_cache_forward(model: cpllm.CPLLM):
  """jitted (variables, x float[B, T, D]) -> next-token logits float32[B, V] by a full
  forward pass over the whole sequence (all prefix: mask_ar 0, no padding)."""
  def next_logits(module, x):
    b, t = x.shape[:2]
    hidden, _, _ = module.llm(x, jnp.ones((b, t), bool), jnp.zeros((b, t), jnp.int32))
    return module.llm.logits(hidden[:, -1:])[:, 0]
  return jax.jit(lambda variables, x: model.apply(variables, x, method=next_logits))


VARIANTS = ("sampler", "looped stack, einsum", "scanned stack, einsum")


def sampler_variant(variant: str) -> contextlib.ExitStack:
  """A context for tracing the sampler as it is ('sampler') or with fixes undone (see the
  module docstring)."""
  stack = contextlib.ExitStack()
  if variant != "sampler":
    stack.enter_context(mock.patch.object(gemma, "FEW_TOKENS", 0))
  if variant == "scanned stack, einsum":
    stack.enter_context(mock.patch.object(sampler, "looped_decoder",
                                          lambda model, variables: (model, variables)))
  return stack


def measure(name: str, spec: str, batch: int, *, repeats: int, bandwidth: float,
            matvec_bandwidth: float,
            no_cache_repeats: int, variant: str = "sampler", no_cache_memo=None) -> dict:
  model, variables = decoder_variables(spec)
  width = cpllm.build_gemma(model.decoder, model.dtype).width
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, PREFIX, width)).astype(np.float32))
  input_mask = jnp.ones((batch, PREFIX), bool)
  mask_ar = jnp.zeros((batch, PREFIX), jnp.int32)
  with sampler_variant(variant):
    generate = sampler.make_generate(model, max_new_tokens=NEW_TOKENS, eos_id=-1).lower(
        variables, x, input_mask, mask_ar).compile()
  timing = common.time_call(lambda: generate(variables, x, input_mask, mask_ar)["tokens"],
                            warmup=0, repeats=repeats)
  assert int(generate(variables, x, input_mask, mask_ar)["lengths"].min()) == NEW_TOKENS
  # Prefill is part of the measured call; time it alone to report decode steps apart.
  cache_size = PREFIX + NEW_TOKENS
  llm = cpllm.build_gemma(model.decoder, model.dtype)
  prefill = jax.jit(lambda v, x, m, a: model.apply(
      v, x, m, a, gemma.init_cache(llm, batch, cache_size), method=model.extend)[0])
  prefill_s = common.time_call(lambda: prefill(variables, x, input_mask, mask_ar),
                               repeats=repeats)["median"]
  decode_s = max(timing["median"] - prefill_s, 1e-9)

  # The no-cache baseline does not involve the sampler: measured once per (config, batch).
  memo = {} if no_cache_memo is None else no_cache_memo
  if (name, batch) not in memo:
    forward = no_cache_forward(model)
    memo[(name, batch)] = {}
    for length in (PREFIX, PREFIX + NEW_TOKENS - 1):
      xl = jnp.asarray(rng.normal(size=(batch, length, width)).astype(np.float32))
      compiled = forward.lower(variables, xl).compile()
      memo[(name, batch)][length] = common.time_call(
          lambda: compiled(variables, xl), warmup=1, repeats=no_cache_repeats)["median"]
  ends = memo[(name, batch)]
  no_cache_s = NEW_TOKENS * (ends[PREFIX] + ends[PREFIX + NEW_TOKENS - 1]) / 2

  roof = roofline_seconds(model, variables["params"], batch, PREFIX, NEW_TOKENS, bandwidth)
  tokens = batch * NEW_TOKENS
  return dict(
      config=name, batch=batch, sampler=variant,
      prefix=PREFIX, new_tokens=NEW_TOKENS,
      seconds=timing["median"], times=timing["times"], prefill_s=prefill_s,
      decode_s=decode_s, tokens_per_s=tokens / timing["median"],
      decode_tokens_per_s=tokens / decode_s, no_cache_s=no_cache_s,
      no_cache_forward_s=ends, no_cache_tokens_per_s=tokens / no_cache_s,
      speedup_vs_nocache=no_cache_s / timing["median"], roofline_s=roof["seconds"],
      roofline_tokens_per_s=tokens / roof["seconds"], roofline_bytes=roof["bytes"],
      weight_bytes=roof["weight_bytes"], roofline_ratio=decode_s / roof["seconds"],
      matvec_ratio=decode_s * matvec_bandwidth / roof["bytes"],
      ms_per_step=1e3 * decode_s / NEW_TOKENS)


def run(quick: bool = False) -> dict:
  bandwidth = common.copy_bandwidth(repeats=5)
  matvec = common.matvec_bandwidth(repeats=5)
  # (config, batch, sampler): quick runs batch 1 only, and not the before rows.
  cases = [("demo", 1, "sampler"), ("bench", 1, "sampler")]
  if not quick:
    cases += [("demo", 16, "sampler"), ("bench", 16, "sampler")]
    cases += [("bench", batch, variant) for variant in VARIANTS[1:] for batch in (1, 16)]
    cases += [("gemma3_270m", batch, "sampler") for batch in (1, 16)]
  memo = {}
  rows = [measure(name, CONFIGS[name], batch, repeats=2 if quick else 3,
                  bandwidth=bandwidth["bytes_per_s"], variant=variant, no_cache_memo=memo,
                  matvec_bandwidth=matvec["bytes_per_s"],
                  no_cache_repeats=1 if quick or batch > 1 else 3)
          for name, batch, variant in cases]
  print(f"copy bandwidth {bandwidth['bytes_per_s'] / 1e9:.2f} GB/s, matrix-vector weight "
        f"reads {matvec['bytes_per_s'] / 1e9:.2f} GB/s")
  print(common.markdown_table(rows, [
      "config", "sampler", "batch", "tokens_per_s", "ms_per_step", "no_cache_tokens_per_s",
      "speedup_vs_nocache", "roofline_tokens_per_s", "roofline_ratio", "matvec_ratio"], [
      "decoder", "sampler", "batch", "tokens/s", "ms/step", "no-cache tokens/s",
      "speedup vs no-cache", "roofline tokens/s", "time / roofline",
      "time / XLA matvec bound"]))
  key = lambda r: f"{r['config']}_b{r['batch']}"
  after = [r for r in rows if r["sampler"] == "sampler"]
  result = dict(speedup_vs_nocache={key(r): r["speedup_vs_nocache"] for r in after},
                roofline_ratio={key(r): r["roofline_ratio"] for r in after},
                bandwidth=bandwidth, matvec_bandwidth=matvec, rows=rows)
  common.write_result("decode", result, quick=quick)
  return result

