"""Gemma decoder (Gemma 1, 2 and 3) with prefix-LM masking, a KV cache and LoRA.

Parameter names follow big_vision's PaliGemma layout so public checkpoints load
unchanged (see checkpoints.py):

  embedder/input_embedding                 [V, D]
  layers/attn/q_einsum/w                   [L, N, D, H]   (when K != N)
  layers/attn/kv_einsum/w                  [L, 2, K, D, H]
  layers/attn/qkv_einsum/w                 [L, 3, N, D, H] (when K == N)
  layers/attn/attn_vec_einsum/w            [L, N, H, D]
  layers/mlp/gating_einsum                 [L, 2, D, F]
  layers/mlp/linear                        [L, F, D]
  layers/{pre_attention_norm,pre_ffw_norm}/scale            [L, D]
  layers/{post_attention_norm,post_ffw_norm}/scale          [L, D] (Gemma 2 and 3)
  layers/attn/{_query_norm,_key_norm}/scale                 [L, H] (Gemma 3)
  final_norm/scale                         [D]

With `scan=False` the stack is `layers_0 ... layers_{L-1}` without the leading L axis.
LoRA factors sit beside the weight they adapt: `q_einsum/lora_a`, `q_einsum/lora_b` and,
for the MLP, `mlp/gating_einsum_lora_a`, `mlp/gating_einsum_lora_b`.

Masks (big_vision's conventions): `input_mask` bool[B, T] is True on real tokens,
`mask_ar` int[B, T] is 0 on the full-attention prefix and 1 on causal tokens. Token q may
attend token k iff both are real and cumsum(mask_ar)[k] <= cumsum(mask_ar)[q]. Example:

  mask_ar = [0 0 0 1 1]   ->  q\\k 0 1 2 3 4
                               0   1 1 1 0 0
                               1   1 1 1 0 0
                               2   1 1 1 0 0
                               3   1 1 1 1 0
                               4   1 1 1 1 1

RoPE positions are cumsum(input_mask) - 1, so padding inside a sequence does not shift
the positions of later tokens. Sliding-window layers additionally require
|pos_q - pos_k| < window. Which layers are local: every layer but each
`global_every`-th one (Gemma 2: local, global, ...; Gemma 3: five local, then one global).
Gemma 3 also norms queries and keys per head (QK-norm) before RoPE, and rotates local
and global layers with different RoPE bases (10,000 and 1,000,000; the 4B divides global
positions by 8).

Parameter counts (from `jax.eval_shape`, tests/models/test_gemma.py): gemma_2b has
2,506,434,560 parameters with the published 256,128-row embedding (2,506,172,416 with the
256,000 rows usually quoted); gemma2_2b has 2,614,636,800 (2,614,341,888 with 256,000 rows);
gemma3_270m 268,098,176, gemma3_1b 999,885,952 and gemma3_4b (text) 3,880,099,328.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

VARIANTS: dict[str, dict[str, Any]] = {
    "gemma_2b": dict(width=2048, depth=18, mlp_dim=16384, num_heads=8, num_kv_heads=1,
                     head_dim=256, vocab_size=256128),
    "gemma2_2b": dict(width=2304, depth=26, mlp_dim=9216, num_heads=8, num_kv_heads=4,
                      head_dim=256, vocab_size=256128, post_norms=True, attn_softcap=50.0,
                      final_softcap=30.0, sliding_window=4096),
    "gemma3_270m": dict(width=640, depth=18, mlp_dim=2048, num_heads=4, num_kv_heads=1,
                        head_dim=256, vocab_size=262144, post_norms=True, qk_norm=True,
                        sliding_window=512, global_every=6, global_rope_base=1e6),
    "gemma3_1b": dict(width=1152, depth=26, mlp_dim=6912, num_heads=4, num_kv_heads=1,
                      head_dim=256, vocab_size=262144, post_norms=True, qk_norm=True,
                      sliding_window=512, global_every=6, global_rope_base=1e6),
    "gemma3_4b": dict(width=2560, depth=34, mlp_dim=10240, num_heads=8, num_kv_heads=4,
                      head_dim=256, vocab_size=262144, post_norms=True, qk_norm=True,
                      sliding_window=1024, global_every=6, global_rope_base=1e6,
                      global_rope_scale=8.0),
    # Tiny variants for tests and the demo; `tiny` is Gemma-1-like (MQA), `tiny2`
    # Gemma-2-like (GQA, soft-capping, alternating sliding window, post-norms).
    "tiny": dict(width=64, depth=2, mlp_dim=128, num_heads=4, num_kv_heads=1, head_dim=16,
                 vocab_size=256),
    "tiny2": dict(width=64, depth=3, mlp_dim=128, num_heads=4, num_kv_heads=2, head_dim=16,
                  vocab_size=256, post_norms=True, attn_softcap=50.0, final_softcap=30.0,
                  sliding_window=8),
    "tiny3": dict(width=64, depth=6, mlp_dim=128, num_heads=4, num_kv_heads=1, head_dim=16,
                  vocab_size=256, post_norms=True, qk_norm=True, sliding_window=4,
                  global_every=3, global_rope_base=1e6, global_rope_scale=2.0),
}

# Large negative logit for masked attention entries (finite, so fully masked rows of
# padding queries give a uniform softmax instead of NaN).
_MASKED = -2.3819763e38

# Logical axis names of the letters used in weight specs below.
_AXIS_NAMES = {"N": "heads", "K": None, "D": "embed", "H": "kv", "F": "mlp", "C": None,
               "r": None, "L": "layers"}


@dataclasses.dataclass(frozen=True)
class WeightSpec:
  """How one adaptable weight is laid out.

  `w` is the weight's axes in storage order, `inputs` the axes it contracts with the
  activation, `stack` leading axes that index independent weights (the 2 of k/v or of
  gate/up). LoRA factors are lora_a[stack, inputs, r] and lora_b[stack, r, outputs].
  """
  w: str
  inputs: str
  stack: str = ""

  @property
  def outputs(self) -> str:
    return "".join(a for a in self.w if a not in self.inputs + self.stack)

  @property
  def lora_a(self) -> str:
    return self.stack + self.inputs + "r"

  @property
  def lora_b(self) -> str:
    return self.stack + "r" + self.outputs


WEIGHT_SPECS = {
    "q_einsum": WeightSpec("NDH", "D"),
    "kv_einsum": WeightSpec("CKDH", "D", "C"),
    "qkv_einsum": WeightSpec("CNDH", "D", "C"),
    "attn_vec_einsum": WeightSpec("NHD", "NH"),
    "gating_einsum": WeightSpec("CDF", "D", "C"),
    "linear": WeightSpec("FD", "F"),
}


def lora_delta(spec: WeightSpec, lora_a, lora_b, scale: float):
  """The low-rank update scale * A @ B laid out like the weight (leading layer axes kept)."""
  extra = lora_a.ndim - len(spec.lora_a)
  lead = "".join(chr(ord("a") + i) for i in range(extra))
  return scale * jnp.einsum(f"{lead}{spec.lora_a},{lead}{spec.lora_b}->{lead}{spec.w}",
                            lora_a, lora_b)


def merge_lora(params, lora_scale: float):
  """Folds every LoRA pair into the weight beside it and drops the factors.

  Works on scanned and looped parameter trees (plain nested dicts, unboxed). The merged
  tree has exactly the base model's names, as needed for export.
  """
  def merge(tree):
    if not isinstance(tree, dict):
      return tree
    out = {k: merge(v) for k, v in tree.items() if "lora_" not in k}
    for name, spec in WEIGHT_SPECS.items():
      if f"{name}_lora_a" in tree:  # MLP weights: params directly in the module.
        out[name] = tree[name] + lora_delta(spec, tree[f"{name}_lora_a"],
                                            tree[f"{name}_lora_b"], lora_scale)
      sub = tree.get(name)
      if isinstance(sub, dict) and "lora_a" in sub:
        out[name] = {"w": sub["w"] + lora_delta(spec, sub["lora_a"], sub["lora_b"],
                                                lora_scale)}
    return out
  return merge(params)


def _init(spec: str, in_axes: str, zeros: bool = False):
  """Fan-in scaled init for a weight with axes `spec`, annotated with logical names."""
  if zeros:
    init = nn.initializers.zeros_init()
  else:
    in_axis = tuple(spec.index(a) for a in in_axes)
    out_axis = tuple(i for i, a in enumerate(spec) if a not in in_axes)
    init = nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis)
  return nn.with_logical_partitioning(init, tuple(_AXIS_NAMES[a] for a in spec))


@dataclasses.dataclass(frozen=True)
class LoRA:
  """LoRA settings: `targets` name weights of WEIGHT_SPECS; rank 0 disables LoRA."""
  rank: int = 0
  alpha: float | None = None  # None: alpha = rank, i.e. scale 1.
  targets: tuple[str, ...] = ("q_einsum", "kv_einsum")

  @property
  def scale(self) -> float:
    return (self.alpha if self.alpha is not None else self.rank) / max(self.rank, 1)

  def applies_to(self, name: str) -> bool:
    if self.rank <= 0:
      return False
    if name == "qkv_einsum":  # Fused layout: adapting q or k/v adapts the fused weight.
      return bool({"qkv_einsum", "q_einsum", "kv_einsum"} & set(self.targets))
    return name in self.targets


FEW_TOKENS = 64


def weight_einsum(x, x_axes: str, w, w_axes: str, out_axes: str):
  """einsum(x, w) that, for few tokens, never moves the weight in memory.

  XLA's CPU dot wants each operand as [batch, rows, contraction]; for a weight such as
  gating_einsum [C, D, F] contracted over the middle D it copies the transposed weight on
  every call. With many tokens that copy is amortised, but a decode step (B * T <= FEW_TOKENS)
  reads each weight once, and the copy triples its memory traffic. There the leading output
  axes of the weight (C, or q's heads N) become batch axes of a batched matmul, the small
  activation is broadcast along them, and the optimisation barrier stops XLA from folding
  the activation's transpose back into the weight.
  """
  contract = [a for a in w_axes if a in x_axes and a not in out_axes]
  first = w_axes.index(contract[0])
  stack, rest = w_axes[:first], w_axes[first + len(contract):]
  # A symbolic (export-time) batch size counts as one: serving batches are small.
  tokens = int(np.prod([n for a, n in zip(x_axes, x.shape)
                        if a not in contract and isinstance(n, int)]))
  if (tokens > FEW_TOKENS or w_axes[first:first + len(contract)] != "".join(contract)
      or any(a in x_axes for a in stack + rest)):
    return jnp.einsum(f"{x_axes},{w_axes}->{out_axes}", x, w)
  rows = "".join(a for a in x_axes if a not in contract)
  sizes = dict(zip(x_axes, x.shape)) | dict(zip(w_axes, w.shape))
  prod = lambda axes: math.prod(sizes[a] for a in axes)
  x2 = jnp.einsum(f"{x_axes}->{rows}{''.join(contract)}", x).reshape(-1, prod(contract))
  x3 = jax.lax.optimization_barrier(jnp.broadcast_to(x2, (prod(stack), *x2.shape)))
  w3 = w.reshape(prod(stack), prod(contract), prod(rest))
  y = jax.lax.dot_general(x3, w3, (((2,), (1,)), ((0,), (0,))))
  y = y.reshape([sizes[a] for a in stack + rows + rest])
  return jnp.einsum(f"{stack}{rows}{rest}->{out_axes}", y)


def adapted_einsum(module: nn.Module, name: str, shape, x, x_axes: str, out_axes: str,
                   lora: LoRA, dtype, *, param_prefix: str = ""):
  """einsum(x, w) plus the LoRA path when `name` is a LoRA target.

  `param_prefix` is '' inside a dedicated submodule (params `w`, `lora_a`, `lora_b`) and
  f'{name}' for weights that live directly in their module (`gating_einsum`,
  `gating_einsum_lora_a`, ...), matching the published layouts.
  """
  spec = WEIGHT_SPECS[name]
  w_name = param_prefix or "w"
  w = module.param(w_name, _init(spec.w, spec.inputs), shape)
  y = weight_einsum(x.astype(dtype), x_axes, w.astype(dtype), spec.w, out_axes)
  if lora.applies_to(name):
    sizes = dict(zip(spec.w, shape), r=lora.rank)
    prefix = f"{param_prefix}_" if param_prefix else ""
    a = module.param(f"{prefix}lora_a", _init(spec.lora_a, spec.inputs),
                     tuple(sizes[c] for c in spec.lora_a))
    b = module.param(f"{prefix}lora_b", _init(spec.lora_b, "r", zeros=True),
                     tuple(sizes[c] for c in spec.lora_b))
    y = y + lora.scale * jnp.einsum(f"{x_axes},{spec.lora_a},{spec.lora_b}->{out_axes}",
                                    x.astype(dtype), a.astype(dtype), b.astype(dtype))
  return y


def make_attn_mask(input_mask, mask_ar):
  """Prefix-LM attention mask: bool[B, T, T] from input_mask bool[B, T], mask_ar int[B, T]."""
  seg = jnp.cumsum(mask_ar, axis=1)
  valid = input_mask[:, None, :] & input_mask[:, :, None]
  return (seg[:, None, :] <= seg[:, :, None]) & valid


def apply_rope(x, positions, max_wavelength=10_000.0, scale=1.0):
  """Rotary embedding on x float[B, T, N, H] at positions int[B, T] / `scale` (half-split
  layout); `max_wavelength` and `scale` may be traced scalars (one per scanned layer)."""
  half = x.shape[-1] // 2
  timescale = max_wavelength ** (2 * jnp.arange(half, dtype=jnp.float32) / x.shape[-1])
  angle = positions[..., None, None].astype(jnp.float32) / scale / timescale
  sin, cos = jnp.sin(angle), jnp.cos(angle)
  first, second = x[..., :half], x[..., half:]
  return jnp.concatenate([first * cos - second * sin, second * cos + first * sin],
                         axis=-1).astype(x.dtype)


class RMSNorm(nn.Module):
  """x / rms(x) * (1 + scale), computed in float32; scale is zero-initialised. `axis`:
  the weight-spec letter of the normed axis (D, or H for Gemma 3's per-head QK-norm)."""
  axis: str = "D"

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", _init(self.axis, self.axis, zeros=True), (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + 1e-6)
    return (normed * (1 + scale)).astype(x.dtype)


class Einsum(nn.Module):
  """A named attention weight (`.../<name>/w`) with optional LoRA factors beside it."""
  shape: tuple[int, ...]
  lora: LoRA
  dtype: Any

  @nn.compact
  def __call__(self, x, x_axes: str, out_axes: str):
    return adapted_einsum(self, self.name, self.shape, x, x_axes, out_axes, self.lora,
                          self.dtype)


class Attention(nn.Module):
  """Multi-head / multi-query / grouped-query attention with RoPE and soft-capping."""
  num_heads: int
  num_kv_heads: int
  head_dim: int
  width: int
  attn_softcap: float | None
  qk_norm: bool
  lora: LoRA
  dtype: Any

  @nn.compact
  def __call__(self, x, kv_cache, layer, ctx):
    """x float[B, T, D]; kv_cache None or (k, v) float[B, S, K, H]; layer: this layer's
    window int[] (0 = global), rope_base float[] and rope_scale float[].

    Returns (float[B, T, D], updated (k, v) or None).
    """
    n, k_heads, h, d = self.num_heads, self.num_kv_heads, self.head_dim, self.width
    if n == k_heads:
      q, k, v = Einsum((3, n, d, h), self.lora, self.dtype, name="qkv_einsum")(
          x, "BTD", "CBTNH")
    else:
      q = Einsum((n, d, h), self.lora, self.dtype, name="q_einsum")(x, "BTD", "BTNH")
      k, v = Einsum((2, k_heads, d, h), self.lora, self.dtype, name="kv_einsum")(
          x, "BTD", "CBTKH")
    if self.qk_norm:
      q, k = RMSNorm("H", name="_query_norm")(q), RMSNorm("H", name="_key_norm")(k)
    q = apply_rope(q, ctx["q_pos"], layer["rope_base"], layer["rope_scale"]) * h**-0.5
    k = apply_rope(k, ctx["q_pos"], layer["rope_base"], layer["rope_scale"])

    if kv_cache is not None:
      index = ctx["write_index"]
      k = jax.lax.dynamic_update_slice_in_dim(kv_cache[0], k.astype(kv_cache[0].dtype),
                                              index, axis=1)
      v = jax.lax.dynamic_update_slice_in_dim(kv_cache[1], v.astype(kv_cache[1].dtype),
                                              index, axis=1)
      kv_cache = (k, v)

    b, t = q.shape[:2]
    q = q.reshape(b, t, k_heads, n // k_heads, h)
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k.astype(q.dtype)).astype(jnp.float32)
    if self.attn_softcap:
      logits = jnp.tanh(logits / self.attn_softcap) * self.attn_softcap
    rel = ctx["q_pos"][:, :, None] - ctx["k_pos"][:, None, :]
    window = layer["window"]
    in_window = (window <= 0) | (jnp.abs(rel) < window)
    mask = ctx["mask"] & in_window  # [B, T, S]
    logits = jnp.where(mask[:, None, None], logits, _MASKED)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    encoded = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v.astype(self.dtype))
    encoded = encoded.reshape(b, t, n, h)
    out = Einsum((n, h, d), self.lora, self.dtype, name="attn_vec_einsum")(
        encoded, "BTNH", "BTD")
    return out, kv_cache


class FeedForward(nn.Module):
  """GeGLU MLP: linear(gelu(x W_gate) * (x W_up)); weights stored as published."""
  width: int
  mlp_dim: int
  lora: LoRA
  dtype: Any

  @nn.compact
  def __call__(self, x):
    gate, up = adapted_einsum(self, "gating_einsum", (2, self.width, self.mlp_dim), x,
                              "BTD", "CBTF", self.lora, self.dtype,
                              param_prefix="gating_einsum")
    hidden = nn.gelu(gate) * up
    return adapted_einsum(self, "linear", (self.mlp_dim, self.width), hidden, "BTF", "BTD",
                          self.lora, self.dtype, param_prefix="linear")


class Block(nn.Module):
  """Pre-norm transformer block; Gemma 2 and 3 add norms after attention and MLP."""
  num_heads: int
  num_kv_heads: int
  head_dim: int
  width: int
  mlp_dim: int
  post_norms: bool
  attn_softcap: float | None
  qk_norm: bool
  lora: LoRA
  dtype: Any

  @nn.compact
  def __call__(self, x, kv_cache, layer, ctx):
    x = nn.with_logical_constraint(x, ("batch", "seq", "embed"))
    attn_out, kv_cache = Attention(
        self.num_heads, self.num_kv_heads, self.head_dim, self.width, self.attn_softcap,
        self.qk_norm, self.lora, self.dtype, name="attn")(
            RMSNorm(name="pre_attention_norm")(x), kv_cache, layer, ctx)
    if self.post_norms:
      attn_out = RMSNorm(name="post_attention_norm")(attn_out)
    x = x + attn_out
    mlp_out = FeedForward(self.width, self.mlp_dim, self.lora, self.dtype, name="mlp")(
        RMSNorm(name="pre_ffw_norm")(x))
    if self.post_norms:
      mlp_out = RMSNorm(name="post_ffw_norm")(mlp_out)
    return x + mlp_out, kv_cache


def layer_windows(depth: int, sliding_window: int | None, global_every: int = 2):
  """Per-layer attention window (0 = global): each `global_every`-th layer is global.

  >>> layer_windows(4, 8)        # Gemma 2: local, global, ...
  array([8, 0, 8, 0], dtype=int32)
  >>> layer_windows(7, 512, 6)   # Gemma 3: five local, then one global
  array([512, 512, 512, 512, 512,   0, 512], dtype=int32)
  """
  if not sliding_window:
    return np.zeros((depth,), np.int32)
  return np.array([0 if (i + 1) % global_every == 0 else sliding_window
                   for i in range(depth)], np.int32)


def init_cache(model: "Gemma", batch_size: int, cache_size: int, dtype=jnp.float32):
  """An empty KV cache for `model`.

  k, v: float[L, B, S, K, H]; pos, seg: int32[B, S] (RoPE position and prefix-LM segment
  of each slot); valid: bool[B, S]; next_pos, next_seg: int32[B]; index: int32[] (next slot).
  """
  shape = (model.depth, batch_size, cache_size, model.num_kv_heads, model.head_dim)
  zeros_bs = jnp.zeros((batch_size, cache_size), jnp.int32)
  return dict(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), pos=zeros_bs,
              seg=zeros_bs, valid=jnp.zeros((batch_size, cache_size), bool),
              next_pos=jnp.zeros((batch_size,), jnp.int32),
              next_seg=jnp.zeros((batch_size,), jnp.int32),
              index=jnp.zeros((), jnp.int32))


class Gemma(nn.Module):
  """Gemma decoder over embeddings (text and visual tokens alike).

  Use `embed_tokens` for text, then `__call__` on the concatenated embeddings, then
  `logits` on the positions whose next-token distribution is needed.
  """
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  vocab_size: int
  post_norms: bool = False
  attn_softcap: float | None = None
  final_softcap: float | None = None
  sliding_window: int | None = None
  global_every: int = 2
  qk_norm: bool = False
  local_rope_base: float = 10_000.0
  global_rope_base: float = 10_000.0
  global_rope_scale: float = 1.0
  lora: LoRA = LoRA()
  scan: bool = True
  remat_policy: str | None = None
  dtype: Any = jnp.float32

  def setup(self):
    self.embedder = Embedder(self.vocab_size, self.width, self.dtype, name="embedder")
    block_kwargs = dict(num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                        head_dim=self.head_dim, width=self.width, mlp_dim=self.mlp_dim,
                        post_norms=self.post_norms, attn_softcap=self.attn_softcap,
                        qk_norm=self.qk_norm, lora=self.lora, dtype=self.dtype)
    block = Block
    if self.remat_policy:
      block = nn.remat(Block, policy=getattr(jax.checkpoint_policies, self.remat_policy),
                       prevent_cse=not self.scan)
    if self.scan:
      self.layers = nn.scan(
          block, variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=(0, 0, nn.broadcast), length=self.depth,
          metadata_params={nn.PARTITION_NAME: "layers"})(**block_kwargs, name="layers")
    else:
      self.blocks = [block(**block_kwargs, name=f"layers_{i}") for i in range(self.depth)]
    self.final_norm = RMSNorm(name="final_norm")

  def embed_tokens(self, tokens):
    """int[B, T] -> float[B, T, D], scaled by sqrt(D) as Gemma does for text tokens."""
    return self.embedder.encode(tokens)

  def logits(self, x):
    """Final-normed activations float[B, T, D] -> float32[B, T, V] (tied embedding)."""
    logits = self.embedder.decode(x)
    if self.final_softcap:
      logits = jnp.tanh(logits / self.final_softcap) * self.final_softcap
    return logits

  def __call__(self, x, input_mask, mask_ar, cache=None):
    """Runs the stack.

    Args:
      x: float[B, T, D] input embeddings.
      input_mask: bool[B, T], True on real tokens.
      mask_ar: int[B, T], 0 for full-attention prefix tokens, 1 for causal tokens.
      cache: None for a plain forward pass, or a cache from `init_cache` (prefill or
        extend: the T tokens are written at cache['index'] and attend the whole cache).

    Returns:
      (x float[B, T, D] after the final norm, out dict, updated cache or None).
    """
    input_mask = input_mask.astype(bool)
    mask_ar = mask_ar.astype(jnp.int32)
    t = x.shape[1]
    if cache is None:
      q_pos = jnp.cumsum(input_mask, axis=1) - 1
      ctx = dict(q_pos=q_pos, k_pos=q_pos, mask=make_attn_mask(input_mask, mask_ar))
    else:
      q_pos = cache["next_pos"][:, None] + jnp.cumsum(input_mask, axis=1) - 1
      q_seg = cache["next_seg"][:, None] + jnp.cumsum(mask_ar, axis=1)
      index = cache["index"]
      write = lambda buf, new: jax.lax.dynamic_update_slice_in_dim(buf, new, index, axis=1)
      k_pos, k_seg = write(cache["pos"], q_pos), write(cache["seg"], q_seg)
      k_valid = write(cache["valid"], input_mask)
      mask = (k_seg[:, None, :] <= q_seg[:, :, None]) & k_valid[:, None, :]
      ctx = dict(q_pos=q_pos, k_pos=k_pos, write_index=index,
                 mask=mask & input_mask[:, :, None])
    windows = layer_windows(self.depth, self.sliding_window, self.global_every)
    is_local = windows > 0
    layers = dict(window=jnp.asarray(windows),
                  rope_base=jnp.asarray(np.where(is_local, self.local_rope_base,
                                                 self.global_rope_base), jnp.float32),
                  rope_scale=jnp.asarray(np.where(is_local, 1.0, self.global_rope_scale),
                                         jnp.float32))

    out = {}
    kv = None if cache is None else (cache["k"], cache["v"])
    if self.scan:
      x, new_kv = self.layers(x, kv, layers, ctx)
    else:
      new_k, new_v = [], []
      for i, block in enumerate(self.blocks):
        layer_kv = None if kv is None else (kv[0][i], kv[1][i])
        x, layer_kv = block(x, layer_kv, jax.tree.map(lambda a: a[i], layers), ctx)
        out[f"block{i:02d}"] = x
        if layer_kv is not None:
          new_k.append(layer_kv[0])
          new_v.append(layer_kv[1])
      new_kv = None if kv is None else (jnp.stack(new_k), jnp.stack(new_v))
    x = self.final_norm(x)
    out["pre_logits"] = x

    new_cache = None
    if cache is not None:
      new_cache = dict(k=new_kv[0], v=new_kv[1], pos=k_pos, seg=k_seg, valid=k_valid,
                       next_pos=cache["next_pos"] + input_mask.sum(axis=1, dtype=jnp.int32),
                       next_seg=cache["next_seg"] + mask_ar.sum(axis=1),
                       index=cache["index"] + t)
    return x, out, new_cache


def param_shapes(model: Gemma):
  """The unboxed parameter tree of `model` as jax.ShapeDtypeStructs (nothing allocated): a
  loader's target, e.g. gguf_checkpoint.load_gemma_gguf(path, param_shapes(model), dest='')."""
  def forward(module, tokens):
    x, _, _ = module(module.embed_tokens(tokens), tokens > 0, tokens)
    return module.logits(x)
  return jax.eval_shape(lambda: nn.unbox(model.init(
      jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.int32), method=forward)))["params"]


class Embedder(nn.Module):
  """Token embedding shared by the input and the output projection (tied weights)."""
  vocab_size: int
  width: int
  dtype: Any

  def setup(self):
    self.input_embedding = self.param(
        "input_embedding",
        nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=1,
                                             out_axis=0), ("vocab", "embed")),
        (self.vocab_size, self.width))

  def encode(self, tokens):
    x = jnp.take(self.input_embedding, tokens, axis=0).astype(self.dtype)
    return x * jnp.sqrt(jnp.asarray(self.width, self.dtype))

  def decode(self, x):
    return jnp.einsum("BTD,VD->BTV", x.astype(self.dtype),
                      self.input_embedding.astype(self.dtype)).astype(jnp.float32)
