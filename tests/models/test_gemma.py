"""Gemma decoder tests, each against an independent reference (NumPy float64, a second
code path, or hand-written masks)."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpllm.models import gemma

# --------------------------------------------------------------------------- masks


def reference_mask(input_mask, mask_ar):
  """Loop version of the prefix-LM rule: tokens are grouped into blocks, each causal token
  (mask_ar 1) opening a new block; a token sees every real token of its block and earlier."""
  t = len(input_mask)
  block, blocks = 0, []
  for a in mask_ar:
    block += int(a)
    blocks.append(block)
  out = np.zeros((t, t), bool)
  for q in range(t):
    for k in range(t):
      out[q, k] = input_mask[q] and input_mask[k] and blocks[k] <= blocks[q]
  return out


HAND_WRITTEN = [
    # Prefix of 3, then 2 causal tokens (the docstring example).
    ([1, 1, 1, 1, 1], [0, 0, 0, 1, 1],
     [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]),
    # Fully causal.
    ([1, 1, 1], [1, 1, 1], [[1, 0, 0], [1, 1, 0], [1, 1, 1]]),
    # Full attention with a padding token at the end.
    ([1, 1, 0], [0, 0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]]),
    # Prefix with padding in the middle (a masked-out second video), then causal.
    ([1, 0, 1, 1], [0, 0, 0, 1], [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]]),
]


@pytest.mark.parametrize("input_mask,mask_ar,expected", HAND_WRITTEN)
def test_attn_mask_hand_written(input_mask, mask_ar, expected):
  got = gemma.make_attn_mask(jnp.array([input_mask], bool), jnp.array([mask_ar]))[0]
  np.testing.assert_array_equal(np.asarray(got), np.array(expected, bool))


def test_attn_mask_random_patterns():
  rng = np.random.default_rng(0)
  input_mask = rng.random((6, 9)) < 0.8
  mask_ar = (rng.random((6, 9)) < 0.5).astype(np.int32)
  got = np.asarray(gemma.make_attn_mask(jnp.asarray(input_mask), jnp.asarray(mask_ar)))
  for b in range(6):
    np.testing.assert_array_equal(got[b], reference_mask(input_mask[b], mask_ar[b]))


# --------------------------------------------------------------------------- helpers


def forward_logits(model, tokens, input_mask, mask_ar, cache=None):
  x, _, cache = model(model.embed_tokens(tokens), input_mask, mask_ar, cache)
  return model.logits(x), cache


def run_logits(model, params, *args):
  """model.apply(params, *args, method=forward_logits), compiled as one program (run op
  by op, each of its few hundred operations would be compiled on its own)."""
  return jax.jit(functools.partial(model.apply, method=forward_logits))(params, *args)


def init_params(model, seed=0, perturb=True, t=6):
  tokens = jnp.zeros((1, t), jnp.int32)
  params = nn.unbox(jax.jit(functools.partial(model.init, method=forward_logits))(
      jax.random.PRNGKey(seed), tokens, jnp.ones((1, t), bool), jnp.zeros((1, t), jnp.int32)))
  if not perturb:
    return params
  return _perturb(params, jax.random.PRNGKey(seed + 1))


@jax.jit
def _perturb(params, key):
  """Non-zero norm scales and LoRA B so that no term of the equations hides behind 0."""
  leaves, treedef = jax.tree.flatten_with_path(params)
  keys = jax.random.split(key, len(leaves))
  new = []
  for (path, leaf), key in zip(leaves, keys):
    name = jax.tree_util.keystr(path)
    if "scale" in name or "lora_b" in name:
      leaf = leaf + 0.3 * jax.random.normal(key, leaf.shape)
    new.append(leaf)
  return jax.tree.unflatten(treedef, new)


def make_model(variant, **kw):
  return gemma.Gemma(**gemma.VARIANTS[variant], **kw)


# --------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("variant", ["tiny", "tiny2", "tiny3"])
def test_cache_decoding_matches_full_forward(variant):
  """Prefill a prefix (with padding inside it), then extend one token at a time: the logits
  equal one full-sequence forward pass. tiny2's and tiny3's windows (8, 4) are shorter
  than the sequence."""
  model = make_model(variant, lora=gemma.LoRA(rank=2))
  params = init_params(model)
  b, prefix, total = 2, 7, 24
  assert total > 2 * model.sliding_window if model.sliding_window else True
  tokens = jax.random.randint(jax.random.PRNGKey(3), (b, total), 0, model.vocab_size)
  input_mask = np.ones((b, total), bool)
  input_mask[1, 4:7] = False  # Second sequence: shorter prompt padded inside the prefix.
  mask_ar = np.concatenate([np.zeros((b, prefix), np.int32),
                            np.ones((b, total - prefix), np.int32)], axis=1)
  full, _ = run_logits(model, params, tokens, input_mask, mask_ar)

  step = jax.jit(lambda p, *a: run_logits(model, p, *a))
  cache = gemma.init_cache(model, b, 32)
  logits, cache = step(params, tokens[:, :prefix], input_mask[:, :prefix],
                       mask_ar[:, :prefix], cache)
  valid = input_mask[:, :prefix]
  np.testing.assert_allclose(np.asarray(logits)[valid], np.asarray(full[:, :prefix])[valid],
                             atol=1e-4)
  for i in range(prefix, total):
    logits, cache = step(params, tokens[:, i:i + 1], input_mask[:, i:i + 1],
                         mask_ar[:, i:i + 1], cache)
    np.testing.assert_allclose(logits[:, 0], full[:, i], atol=1e-4, err_msg=f"step {i}")
  # Greedy choice per step agrees too.
  np.testing.assert_array_equal(np.argmax(logits[:, 0], -1), np.argmax(full[:, -1], -1))


def test_cache_extend_inside_while_loop():
  """The one-token extend step runs inside jax.lax.while_loop on a fixed-shape cache."""
  model = make_model("tiny2")
  params = init_params(model)
  prefix, steps = 5, 12
  tokens = jax.random.randint(jax.random.PRNGKey(4), (1, prefix + steps), 0, 256)
  ones = jnp.ones((1, prefix + steps), bool)
  ar = jnp.concatenate([jnp.zeros((1, prefix), jnp.int32),
                        jnp.ones((1, steps), jnp.int32)], 1)
  full, _ = run_logits(model, params, tokens, ones, ar)

  @jax.jit
  def decode(params):
    cache = gemma.init_cache(model, 1, prefix + steps)
    _, cache = run_logits(model, params, tokens[:, :prefix], ones[:, :prefix],
                          ar[:, :prefix], cache)
    out = jnp.zeros((steps, model.vocab_size))

    def body(state):
      i, cache, out = state
      tok = jax.lax.dynamic_slice_in_dim(tokens, prefix + i, 1, axis=1)
      logits, cache = run_logits(model, params, tok, jnp.ones((1, 1), bool),
                                 jnp.ones((1, 1), jnp.int32), cache)
      return i + 1, cache, out.at[i].set(logits[0, 0])

    return jax.lax.while_loop(lambda s: s[0] < steps, body, (0, cache, out))[2]

  np.testing.assert_allclose(decode(params), full[0, prefix:], atol=1e-4)


# --------------------------------------------------------------------------- float64 ref


def np_rmsnorm(x, scale):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6) * (1 + scale)


def np_rope(x, pos, base=10000.0):
  h = x.shape[-1] // 2
  freq = base ** (-2 * np.arange(h) / x.shape[-1])
  ang = pos[:, :, None, None] * freq  # [B, T, 1, H/2]
  x1, x2 = x[..., :h], x[..., h:]
  return np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang),
                         x2 * np.cos(ang) + x1 * np.sin(ang)], -1)


def np_gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def np_gemma_logits(p, cfg, tokens, input_mask, mask_ar):
  """Gemma in float64 NumPy, from the equations, over looped params `layers_{i}`.

  Which layers are global is written out here as Gemma 2's and Gemma 3's model cards state
  it (every second; every sixth, or `global_every`), not taken from gemma.layer_windows."""
  f64 = lambda a: np.asarray(a, np.float64)
  emb = f64(p["embedder"]["input_embedding"])
  x = emb[tokens] * np.sqrt(cfg["width"])
  pos = np.cumsum(input_mask, 1) - 1
  n, k, h = cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"]
  for i in range(cfg["depth"]):
    lp = jax.tree.map(f64, p[f"layers_{i}"])
    y = np_rmsnorm(x, lp["pre_attention_norm"]["scale"])
    q = np.einsum("btd,ndh->btnh", y, lp["attn"]["q_einsum"]["w"])
    kk = np.einsum("btd,kdh->btkh", y, lp["attn"]["kv_einsum"]["w"][0])
    vv = np.einsum("btd,kdh->btkh", y, lp["attn"]["kv_einsum"]["w"][1])
    is_global = (i + 1) % cfg.get("global_every", 2) == 0
    if cfg.get("qk_norm"):
      q = np_rmsnorm(q, lp["attn"]["_query_norm"]["scale"])
      kk = np_rmsnorm(kk, lp["attn"]["_key_norm"]["scale"])
    base = cfg.get("global_rope_base", 1e4) if is_global else 1e4
    rope_pos = pos / cfg.get("global_rope_scale", 1.0) if is_global else pos
    q, kk = np_rope(q, rope_pos, base) / np.sqrt(h), np_rope(kk, rope_pos, base)
    kk, vv = np.repeat(kk, n // k, axis=2), np.repeat(vv, n // k, axis=2)  # GQA groups
    logits = np.einsum("btnh,bsnh->bnts", q, kk)
    if cfg.get("attn_softcap"):
      logits = np.tanh(logits / cfg["attn_softcap"]) * cfg["attn_softcap"]
    allowed = np.zeros(logits.shape[:1] + logits.shape[2:], bool)
    window = None if is_global else cfg.get("sliding_window")
    for b in range(tokens.shape[0]):
      allowed[b] = reference_mask(input_mask[b], mask_ar[b])
      if window:
        allowed[b] &= np.abs(pos[b][:, None] - pos[b][None, :]) < window
    logits = np.where(allowed[:, None], logits, -np.inf)
    logits -= logits.max(-1, keepdims=True).clip(-1e300)
    probs = np.exp(logits)
    probs /= probs.sum(-1, keepdims=True).clip(1e-300)
    attn = np.einsum("bnts,bsnh,nhd->btd", probs, vv, lp["attn"]["attn_vec_einsum"]["w"])
    if cfg.get("post_norms"):
      attn = np_rmsnorm(attn, lp["post_attention_norm"]["scale"])
    x = x + attn
    y = np_rmsnorm(x, lp["pre_ffw_norm"]["scale"])
    gate = np.einsum("btd,df->btf", y, lp["mlp"]["gating_einsum"][0])
    up = np.einsum("btd,df->btf", y, lp["mlp"]["gating_einsum"][1])
    mlp = np.einsum("btf,fd->btd", np_gelu_tanh(gate) * up, lp["mlp"]["linear"])
    if cfg.get("post_norms"):
      mlp = np_rmsnorm(mlp, lp["post_ffw_norm"]["scale"])
    x = x + mlp
  x = np_rmsnorm(x, f64(p["final_norm"]["scale"]))
  logits = x @ emb.T
  if cfg.get("final_softcap"):
    logits = np.tanh(logits / cfg["final_softcap"]) * cfg["final_softcap"]
  return logits


@pytest.mark.parametrize("variant", ["tiny", "tiny2", "tiny3"])
def test_matches_float64_numpy(variant):
  cfg = gemma.VARIANTS[variant]
  model = make_model(variant, scan=False)
  params = init_params(model)
  b, t = 2, 19
  tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(5), (b, t), 0, 256))
  input_mask = np.ones((b, t), bool)
  input_mask[0, 3:5] = False
  mask_ar = np.zeros((b, t), np.int32)
  mask_ar[:, 9:] = 1
  got, _ = run_logits(model, params, tokens, input_mask, mask_ar)
  want = np_gemma_logits(params["params"], cfg, tokens, input_mask, mask_ar)
  np.testing.assert_allclose(np.asarray(got)[input_mask], want[input_mask], atol=1e-4,
                             rtol=1e-4)


# How each weight is used: (weight, activation axes, output axes), as in Attention and
# FeedForward.
WEIGHT_USES = [("q_einsum", "BTD", "BTNH"), ("kv_einsum", "BTD", "CBTKH"),
               ("qkv_einsum", "BTD", "CBTNH"), ("attn_vec_einsum", "BTNH", "BTD"),
               ("gating_einsum", "BTD", "CBTF"), ("linear", "BTF", "BTD")]
AXIS_SIZES = dict(B=2, C=2, K=2, N=3, D=8, H=5, F=7)


@pytest.mark.parametrize("name,x_axes,out_axes", WEIGHT_USES)
@pytest.mark.parametrize("t", [1, gemma.FEW_TOKENS])  # batched-matmul path, plain einsum
def test_weight_einsum_matches_float64(name, x_axes, out_axes, t):
  w_axes = gemma.WEIGHT_SPECS[name].w
  sizes = dict(AXIS_SIZES, T=t)
  rng = np.random.default_rng(0)
  x = rng.normal(size=[sizes[a] for a in x_axes])
  w = rng.normal(size=[sizes[a] for a in w_axes])
  cotangent = rng.normal(size=[sizes[a] for a in out_axes])
  f = lambda x, w: gemma.weight_einsum(x, x_axes, w, w_axes, out_axes)
  got = f(jnp.float32(x), jnp.float32(w))
  np.testing.assert_allclose(got, np.einsum(f"{x_axes},{w_axes}->{out_axes}", x, w),
                             rtol=1e-5, atol=1e-5)
  _, vjp = jax.vjp(f, jnp.float32(x), jnp.float32(w))
  dx, dw = vjp(jnp.float32(cotangent))
  np.testing.assert_allclose(dx, np.einsum(f"{out_axes},{w_axes}->{x_axes}", cotangent, w),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, np.einsum(f"{x_axes},{out_axes}->{w_axes}", x, cotangent),
                             rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_decode_step_never_copies_a_weight():
  """A one-token step of the looped decoder, compiled: no instruction other than the
  parameters may produce an array as large as a weight matrix (the transposed copies
  that weight_einsum avoids; an einsum over gating_einsum [2, D, F] makes one)."""
  model = gemma.Gemma(**dict(gemma.VARIANTS["tiny"], width=96, mlp_dim=384), scan=False)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 96)), jnp.ones((1, 1), bool),
                      jnp.ones((1, 1), jnp.int32))
  cache = gemma.init_cache(model, 1, 8)
  step = jax.jit(lambda p, x, c: model.apply(p, x, jnp.ones((1, 1), bool),
                                             jnp.ones((1, 1), jnp.int32), c)[0])
  hlo = step.lower(params, jnp.ones((1, 1, 96)), cache).compile().as_text()
  smallest_weight = 96 * 16 * 4  # q_einsum and attn_vec_einsum: N * H * D
  produced = re.findall(r"= f32\[([\d,]+)\]\S* ([\w-]+)\(", hlo)
  large = [(dims, op) for dims, op in produced
           if op not in ("parameter", "bitcast", "get-tuple-element")
           and np.prod([int(d) for d in dims.split(",")]) >= smallest_weight]
  assert not large, large


@pytest.mark.parametrize("variant", ["tiny2", "tiny3"])
def test_scanned_equals_looped(variant):
  """tiny3: each scanned layer gets its own window, RoPE base and RoPE scale."""
  looped = make_model(variant, scan=False)
  scanned = make_model(variant, scan=True)
  params = init_params(looped)
  p = params["params"]
  depth = gemma.VARIANTS[variant]["depth"]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[p[f"layers_{i}"] for i in range(depth)])
  scanned_params = {"params": {"embedder": p["embedder"], "final_norm": p["final_norm"],
                               "layers": stacked}}
  tokens = jnp.arange(12)[None] % 256
  args = (tokens, jnp.ones((1, 12), bool), jnp.ones((1, 12), jnp.int32))
  a, _ = run_logits(looped, params, *args)
  b, _ = run_logits(scanned, scanned_params, *args)
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_remat_and_bf16_run_close_to_float32():
  base = make_model("tiny2")
  params = init_params(base)
  tokens = jnp.arange(10)[None] % 256
  args = (tokens, jnp.ones((1, 10), bool), jnp.ones((1, 10), jnp.int32))
  want, _ = run_logits(base, params, *args)
  remat, _ = run_logits(make_model("tiny2", remat_policy="nothing_saveable"), params, *args)
  np.testing.assert_allclose(remat, want, atol=1e-5)
  bf16, _ = run_logits(make_model("tiny2", dtype=jnp.bfloat16), params, *args)
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(bf16, want, atol=0.15 * float(jnp.abs(want).max()))


# --------------------------------------------------------------------------- LoRA


@pytest.mark.slow
@pytest.mark.parametrize("variant,targets", [
    ("tiny", ("q_einsum", "kv_einsum")),
    ("tiny2", ("q_einsum", "kv_einsum", "attn_vec_einsum", "gating_einsum", "linear")),
    ("tiny3", ("q_einsum", "kv_einsum")),  # the paper's rank-4 q, k, v on Gemma 3
])
def test_lora_zero_b_is_base_and_merge_reproduces(variant, targets):
  base = make_model(variant, scan=False)
  adapted = make_model(variant, scan=False,
                       lora=gemma.LoRA(rank=3, alpha=6.0, targets=targets))
  params = init_params(adapted, perturb=False)
  tokens = jax.random.randint(jax.random.PRNGKey(6), (2, 11), 0, 256)
  args = (tokens, jnp.ones((2, 11), bool), (jnp.arange(11) >= 4)[None].repeat(2, 0))

  # Freshly initialised: B = 0, so the adapted model is the base model.
  lora_b = [v for k, v in jax.tree_util.tree_flatten_with_path(params)[0]
            if "lora_b" in jax.tree_util.keystr(k)]
  assert lora_b and all(float(jnp.abs(b).max()) == 0 for b in lora_b)
  base_params = gemma.merge_lora(params["params"], adapted.lora.scale)
  want, _ = run_logits(base, {"params": base_params}, *args)
  got, _ = run_logits(adapted, params, *args)
  np.testing.assert_allclose(got, want, atol=1e-6)

  # Trained-looking adapters: merging folds them into weights with the base names.
  params = init_params(adapted, perturb=True)
  got, _ = run_logits(adapted, params, *args)
  merged = gemma.merge_lora(params["params"], adapted.lora.scale)
  names = lambda tree: {jax.tree_util.keystr(k) for k, _ in
                        jax.tree_util.tree_flatten_with_path(tree)[0]}
  assert names(merged) == names(nn.unbox(jax.eval_shape(functools.partial(
      base.init, method=forward_logits), jax.random.PRNGKey(0), *args))["params"])
  merged_out, _ = run_logits(base, {"params": merged}, *args)
  np.testing.assert_allclose(merged_out, got, atol=1e-4)
  assert float(jnp.abs(merged_out - want).max()) > 1e-3  # The adapters did something.


def test_fused_qkv_when_kv_heads_equal_heads():
  cfg = dict(gemma.VARIANTS["tiny"], num_kv_heads=4)
  model = gemma.Gemma(**cfg, lora=gemma.LoRA(rank=2), scan=False)
  params = init_params(model)
  attn = params["params"]["layers_0"]["attn"]
  assert attn["qkv_einsum"]["w"].shape == (3, 4, 64, 16)
  assert attn["qkv_einsum"]["lora_b"].shape == (3, 2, 4, 16)
  # The fused weight is the q and kv weights of the unfused reference, stacked.
  ref = dict(params["params"])
  for i in range(cfg["depth"]):
    layer = dict(ref[f"layers_{i}"])
    merged = gemma.merge_lora({"attn": layer["attn"]}, model.lora.scale)["attn"]
    w = merged["qkv_einsum"]["w"]
    layer["attn"] = {"q_einsum": {"w": w[0]}, "kv_einsum": {"w": w[1:]},
                     "attn_vec_einsum": merged["attn_vec_einsum"]}
    ref[f"layers_{i}"] = layer
  tokens = np.arange(9)[None] % 256
  im, ar = np.ones((1, 9), bool), np.ones((1, 9), np.int32)
  got, _ = run_logits(model, params, tokens, im, ar)
  want = np_gemma_logits(ref, cfg, tokens, im, ar)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- sizes


def count_params(variant):
  model = make_model(variant)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), bool),
      jnp.zeros((1, 4), jnp.int32), method=forward_logits))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes)))


@pytest.mark.parametrize("variant,published", [
    ("gemma_2b", 2.506e9), ("gemma2_2b", 2.614e9),
    # Gemma 3's model cards: 270M (170M embedding, 100M in the blocks), 1B, 4B (3.88B
    # without the 417M-parameter SigLIP encoder of the published 4.3B).
    ("gemma3_270m", 268e6), ("gemma3_1b", 1.0e9), ("gemma3_4b", 3.88e9)])
def test_real_variant_sizes(variant, published):
  """Counts from eval_shape against the published sizes (0.5%) and a closed form:
  embed V*D + L * (attention + GeGLU + norms [+ QK-norms]) + final norm."""
  cfg = gemma.VARIANTS[variant]
  d, f, n, k, h = (cfg[x] for x in ("width", "mlp_dim", "num_heads", "num_kv_heads",
                                     "head_dim"))
  norms = 4 if cfg.get("post_norms") else 2
  per_layer = n * d * h + 2 * k * d * h + n * h * d + 2 * d * f + f * d + norms * d
  per_layer += 2 * h if cfg.get("qk_norm") else 0
  closed_form = cfg["vocab_size"] * d + cfg["depth"] * per_layer + d
  got = count_params(variant)
  assert got == closed_form
  assert abs(got - published) / published < 0.005
  if variant.startswith("gemma3"):
    return
  # The commonly quoted figures count 256,000 embedding rows rather than 256,128.
  quoted = {"gemma_2b": 2_506_172_416, "gemma2_2b": 2_614_341_888}[variant]
  assert got - 128 * d == quoted
