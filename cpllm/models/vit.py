"""Vision Transformer with big_vision / SigLIP parameter layout, returning tokens.

Both CP-LLM encoders use it: the frozen context encoder (SigLIP So400m/14 at 448x448) and
the trainable pixel encoder applied to each P x P patch. There is no pooling: callers get
one token per patch, `float32[B, (H/p) * (W/p), width]`.

Parameter names and shapes are exactly big_vision's, so the `img/` subtree of public SigLIP
and PaliGemma checkpoints loads unchanged:

  embedding/{kernel [p, p, 3, D], bias [D]}
  pos_embedding [1, T, D]
  Transformer/encoderblock{,_i}/LayerNorm_0, LayerNorm_1 {scale, bias}
  Transformer/encoderblock{,_i}/MultiHeadDotProductAttention_0/{query,key,value}
      {kernel [D, N, D/N], bias [N, D/N]}, out {kernel [N, D/N, D], bias [D]}
  Transformer/encoderblock{,_i}/MlpBlock_0/Dense_0 [D, F], Dense_1 [F, D]
  Transformer/encoder_norm/{scale, bias}
  head/{kernel, bias}                                     (only when num_classes > 0)

With `scan=True` the blocks are one `encoderblock` with a leading depth axis on every leaf
(the layout of published checkpoints); otherwise `encoderblock_0 ... encoderblock_{depth-1}`.

Parameter count. A block has 4 D^2 + 4 D (attention) + 2 D F + F + D (MLP) + 4 D (two
LayerNorms) = 4 D^2 + 2 D F + 9 D + F parameters; the whole model adds the stem
(3 p^2 D + D), the position embedding (T D) and the final norm (2 D). For So400m/14
(D=1152, F=4304, depth 27, p=14) a block has 15,239,504 parameters and:

  224 x 224 (T=256):  411,466,608 + 678,528 + 294,912 + 2,304   = 412,442,352
  448 x 448 (T=1024): 411,466,608 + 678,528 + 1,179,648 + 2,304 = 413,327,088

Published So400m vision towers also carry a MAP pooling head (`img/MAPHead_0`, 15,238,352
parameters, i.e. ~427.7M in total at 224) that this token-output ViT has no use for;
loaders drop it.

Every parameter is created with logical axis names ('embed', 'heads', 'kv', 'mlp', None;
plus 'layers' for scanned stacks), so `nn.get_partition_spec` and the sharding rules in
cpllm/sharding.py apply to it. `init` returns `nn.Partitioned` boxes; `nn.unbox` strips them.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

VARIANTS: dict[str, dict[str, int]] = {
    "tiny": dict(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=8),
    "B/16": dict(width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=16),
    "So400m/14": dict(width=1152, depth=27, mlp_dim=4304, num_heads=16, patch_size=14),
}

_ACT = ("batch", "seq", "embed")  # Logical axes of the residual stream.


def _init(init, *names):
  return nn.with_logical_partitioning(init, names)


def _init_reshaped(init, shape, *names):
  """Like `_init`, for DenseGeneral kernels and biases of more than one feature axis.

  DenseGeneral asks its initializer for a flattened 2-D kernel and unboxes (applying the
  sharding constraint) before reshaping; under a mesh the N-D names then fail on the 2-D
  value (flax#3676). Initialising flat and reshaping here keeps flax's fan computation and
  makes DenseGeneral's reshape a no-op.
  """
  return _init(lambda key, flat, dtype=jnp.float32: init(key, flat, dtype).reshape(shape),
               *names)


def _layer_norm(name=None):
  # epsilon 1e-6 as in big_vision; flax's default 1e-5 would shift pre-trained outputs.
  return nn.LayerNorm(epsilon=1e-6, scale_init=_init(nn.initializers.ones, "embed"),
                      bias_init=_init(nn.initializers.zeros, "embed"), name=name)


class MlpBlock(nn.Module):
  """Dense -> tanh-GELU -> dropout -> Dense: `float32[B, T, D]` -> `dtype[B, T, D]`."""
  mlp_dim: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    # big_vision's init, so from-scratch runs follow its recipes.
    xavier, near_zero = nn.initializers.xavier_uniform(), nn.initializers.normal(1e-6)
    d = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=_init(xavier, "embed", "mlp"),
                 bias_init=_init(near_zero, "mlp"))(x)
    x = nn.gelu(x)
    x = nn.Dropout(rate=self.dropout)(x, deterministic=not train)
    return nn.Dense(d, dtype=self.dtype, kernel_init=_init(xavier, "mlp", "embed"),
                    bias_init=_init(near_zero, "embed"))(x)


class Encoder1DBlock(nn.Module):
  """Pre-norm transformer block: `float32[B, T, D]` -> (`float32[B, T, D]`, same).

  Returns the output twice so that it can serve directly as an `nn.scan` body (carry, y).
  """
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.with_logical_constraint(x, _ACT)
    xavier, zeros = nn.initializers.xavier_uniform(), nn.initializers.zeros
    d, n = x.shape[-1], self.num_heads
    y = _layer_norm()(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=n, dtype=self.dtype, deterministic=True,
        kernel_init=_init_reshaped(xavier, (d, n, d // n), "embed", "heads", "kv"),
        bias_init=_init_reshaped(zeros, (n, d // n), "heads", "kv"),
        out_kernel_init=_init_reshaped(xavier, (n, d // n, d), "heads", "kv", "embed"),
        out_bias_init=_init(zeros, "embed"))(y)
    x = x + nn.Dropout(rate=self.dropout)(y, deterministic=not train)
    y = MlpBlock(self.mlp_dim, self.dropout, self.dtype)(_layer_norm()(x), train)
    x = x + nn.Dropout(rate=self.dropout)(y, deterministic=not train)
    x = nn.with_logical_constraint(x, _ACT)
    return x, x


class Encoder(nn.Module):
  """Stack of blocks plus final norm: `float32[B, T, D]` -> (`float32[B, T, D]`, out)."""
  depth: int
  mlp_dim: int
  num_heads: int
  scan: bool = False
  remat_policy: str | None = None
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    block = Encoder1DBlock
    if self.remat_policy is not None:
      policy = getattr(jax.checkpoint_policies, self.remat_policy, None)
      if policy is None:
        raise ValueError(f"remat_policy {self.remat_policy!r} is not an attribute of "
                         "jax.checkpoint_policies")
      # static_argnums: `train` (argument 2, counting self) selects Python control flow.
      # A scan's loop already keeps XLA from merging the recomputation back into the
      # forward pass; only unscanned blocks need remat's own CSE barrier.
      block = nn.remat(block, policy=policy, static_argnums=(2,), prevent_cse=not self.scan)
    kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads, dropout=self.dropout,
              dtype=self.dtype)

    out = {}
    if self.scan:
      x, ys = nn.scan(
          block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
          in_axes=nn.broadcast, length=self.depth,
          metadata_params={nn.PARTITION_NAME: "layers"},
      )(name="encoderblock", **kw)(x, train)
      for i in range(self.depth):
        out[f"block{i:02d}"] = ys[i]
    else:
      for i in range(self.depth):
        x, out[f"block{i:02d}"] = block(name=f"encoderblock_{i}", **kw)(x, train)
    out["pre_norm"] = x
    return _layer_norm(name="encoder_norm")(x), out


class ViT(nn.Module):
  """SigLIP-compatible ViT without pooling; see the module docstring for the layout.

  `dtype` is the matmul (conv, dense, attention) dtype. The residual stream, norms and
  returned tokens stay float32, as in big_vision, so bfloat16 compute keeps float32 outputs.
  """
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: int
  num_classes: int = 0
  scan: bool = False
  remat_policy: str | None = None
  dtype: Any = jnp.float32
  dropout: float = 0.0

  @nn.compact
  def __call__(self, images, *, train=False):
    """Encodes images into tokens.

    Args:
      images: `float32[B, H, W, 3]` in [-1, 1]; H and W multiples of `patch_size`.
      train: enables dropout (needs a 'dropout' rng when `dropout > 0`).

    Returns:
      tokens: `float32[B, T, width]` (`[B, T, num_classes]` with a head), T = H/p * W/p,
        in row-major patch order.
      out: named intermediates: 'stem' `[B, H/p, W/p, width]`, 'with_posemb',
        'block00'... (each block's output), 'pre_norm', 'encoded' `[B, T, width]`,
        'logits' (the tokens).
    """
    p = self.patch_size
    b, h, w, _ = images.shape
    if h % p or w % p:
      # A VALID conv would silently drop the border pixels instead.
      raise ValueError(f"image size {h}x{w} is not a multiple of patch size {p}")
    out = {}

    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                kernel_init=_init(nn.initializers.lecun_normal(), None, None, None, "embed"),
                bias_init=_init(nn.initializers.zeros, "embed"), name="embedding")(images)
    out["stem"] = x
    x = jnp.reshape(x, (b, -1, self.width)).astype(jnp.float32)

    posemb = self.param(
        "pos_embedding",
        _init(nn.initializers.normal(stddev=1 / np.sqrt(self.width)), None, None, "embed"),
        (1, x.shape[1], self.width), jnp.float32)
    x = out["with_posemb"] = x + posemb
    x = nn.Dropout(rate=self.dropout)(x, deterministic=not train)

    x, encoder_out = Encoder(
        depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads, scan=self.scan,
        remat_policy=self.remat_policy, dropout=self.dropout, dtype=self.dtype,
        name="Transformer")(x, train)
    out.update(encoder_out)
    out["encoded"] = x

    if self.num_classes:
      # Zero init (big_vision's default): a fresh head starts from "no opinion".
      x = nn.Dense(self.num_classes, dtype=self.dtype, name="head",
                   kernel_init=_init(nn.initializers.zeros, "embed", None),
                   bias_init=_init(nn.initializers.zeros, None))(x).astype(jnp.float32)
    out["logits"] = x
    return x, out
