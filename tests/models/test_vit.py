"""Tests for cpllm.models.vit: numerics against a float64 NumPy reference, layouts, counts."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpllm.models import vit

TINY = vit.VARIANTS["tiny"]


# NumPy randomness and a jitted init: op-by-op JAX would compile every small op (slow on CPU).
def _images(shape, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _perturbed_params(model, images, seed=1):
  """Unboxed params with every leaf moved off its init (zero biases, unit scales, zero head)."""
  params = nn.unbox(jax.jit(model.init)(jax.random.key(seed), images))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: np.asarray(x + 0.2 * rng.normal(size=x.shape), np.float32), params)


# ---- float64 NumPy reference, written from the equations ---------------------------------

def _np(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _ref_layer_norm(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _ref_gelu(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _ref_attention(x, p):
  q, k, v = (np.einsum("btd,dnh->btnh", x, p[n]["kernel"]) + p[n]["bias"]
             for n in ("query", "key", "value"))
  logits = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1])
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  o = np.einsum("bnqk,bknh->bqnh", probs, v)
  return np.einsum("bqnh,nhd->bqd", o, p["out"]["kernel"]) + p["out"]["bias"]


def _ref_mlp(x, p):
  h = _ref_gelu(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
  return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


def _ref_vit(params, images, patch_size, depth):
  """Returns the intermediates of the forward pass in float64, keyed like the model's out."""
  params, x = _np(params), np.asarray(images, np.float64)
  b, hh, ww, c = x.shape
  p, h, w = patch_size, hh // patch_size, ww // patch_size
  # A stride-p VALID conv is a matmul on flattened (row, col, channel) patches.
  patches = x.reshape(b, h, p, w, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h * w, -1)
  emb = params["embedding"]
  x = patches @ emb["kernel"].reshape(p * p * c, -1) + emb["bias"]
  out = {"stem": x.reshape(b, h, w, -1)}
  x = out["with_posemb"] = x + params["pos_embedding"]
  for i in range(depth):
    blk = params["Transformer"][f"encoderblock_{i}"]
    x = x + _ref_attention(_ref_layer_norm(x, blk["LayerNorm_0"]),
                           blk["MultiHeadDotProductAttention_0"])
    x = x + _ref_mlp(_ref_layer_norm(x, blk["LayerNorm_1"]), blk["MlpBlock_0"])
    out[f"block{i:02d}"] = x
  x = out["encoded"] = _ref_layer_norm(x, params["Transformer"]["encoder_norm"])
  if "head" in params:
    x = x @ params["head"]["kernel"] + params["head"]["bias"]
  out["logits"] = x
  return out


@pytest.mark.parametrize("stem_scale", [1.0, 1e-3])
def test_matches_numpy_reference_non_square(stem_scale):
  """stem_scale 1e-3 makes the first LayerNorm's input variance ~eps, so eps must match."""
  model = vit.ViT(**TINY, num_classes=5)
  images = _images((2, 24, 40, 3))
  params = _perturbed_params(model, images)
  params["embedding"] = jax.tree.map(lambda x: x * stem_scale, params["embedding"])
  params["pos_embedding"] = params["pos_embedding"] * stem_scale
  tokens, out = jax.jit(model.apply)({"params": params}, images)
  ref = _ref_vit(params, images, TINY["patch_size"], TINY["depth"])

  assert tokens.shape == (2, 3 * 5, 5) and tokens.dtype == jnp.float32
  assert out["stem"].shape == (2, 3, 5, 32)
  np.testing.assert_array_equal(out["logits"], tokens)
  for name, want in ref.items():
    np.testing.assert_allclose(out[name], want, atol=1e-4, rtol=0, err_msg=name)
  assert np.abs(ref["logits"]).max() > 0.5  # The comparison is not between near-zeros.


def test_scan_matches_unscanned():
  images = _images((2, 16, 24, 3))
  scanned = vit.ViT(**TINY, scan=True)
  params = _perturbed_params(scanned, images)
  tokens, out = jax.jit(scanned.apply)({"params": params}, images)

  stacked = params["Transformer"]["encoderblock"]
  unstacked = dict(params, Transformer={
      "encoder_norm": params["Transformer"]["encoder_norm"],
      **{f"encoderblock_{i}": jax.tree.map(lambda a, i=i: a[i], stacked)
         for i in range(TINY["depth"])}})
  tokens_u, out_u = jax.jit(vit.ViT(**TINY).apply)({"params": unstacked}, images)

  np.testing.assert_allclose(tokens, tokens_u, atol=1e-5, rtol=0)
  for i in range(TINY["depth"]):
    np.testing.assert_allclose(out[f"block{i:02d}"], out_u[f"block{i:02d}"], atol=1e-5)
  restacked = jax.tree.map(lambda *a: np.stack(a), *(
      unstacked["Transformer"][f"encoderblock_{i}"] for i in range(TINY["depth"])))
  jax.tree.map(np.testing.assert_array_equal, restacked, stacked)


def _block_shapes(d, f, n):
  hd = d // n
  attn = {f"MultiHeadDotProductAttention_0/{m}/{k}": s
          for m in ("query", "key", "value")
          for k, s in (("kernel", (d, n, hd)), ("bias", (n, hd)))}
  return {
      "LayerNorm_0/scale": (d,), "LayerNorm_0/bias": (d,),
      **attn,
      "MultiHeadDotProductAttention_0/out/kernel": (n, hd, d),
      "MultiHeadDotProductAttention_0/out/bias": (d,),
      "LayerNorm_1/scale": (d,), "LayerNorm_1/bias": (d,),
      "MlpBlock_0/Dense_0/kernel": (d, f), "MlpBlock_0/Dense_0/bias": (f,),
      "MlpBlock_0/Dense_1/kernel": (f, d), "MlpBlock_0/Dense_1/bias": (d,),
  }


def _flat_shapes(tree):
  return {"/".join(k.key for k in path): tuple(x.shape)
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("num_classes", [0, 7])
def test_param_names_and_shapes(scan, num_classes):
  model = vit.ViT(**TINY, scan=scan, num_classes=num_classes)
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jax.ShapeDtypeStruct((1, 24, 40, 3), jnp.float32))
  assert set(variables) == {"params"}

  d, depth, f, n, p = (TINY[k] for k in ("width", "depth", "mlp_dim", "num_heads",
                                         "patch_size"))
  want = {"embedding/kernel": (p, p, 3, d), "embedding/bias": (d,),
          "pos_embedding": (1, 15, d),
          "Transformer/encoder_norm/scale": (d,), "Transformer/encoder_norm/bias": (d,)}
  blocks = ({"encoderblock": (depth,)} if scan else
            {f"encoderblock_{i}": () for i in range(depth)})
  for block, lead in blocks.items():
    want.update({f"Transformer/{block}/{k}": lead + s
                 for k, s in _block_shapes(d, f, n).items()})
  if num_classes:
    want.update({"head/kernel": (d, num_classes), "head/bias": (num_classes,)})
  assert _flat_shapes(nn.unbox(variables["params"])) == want


SO400M_BLOCK = 4 * 1152 ** 2 + 4 * 1152 + 2 * 1152 * 4304 + 4304 + 1152 + 4 * 1152


@pytest.mark.parametrize("scan,size,want", [
    (True, 224, 412_442_352),
    (False, 224, 412_442_352),
    (True, 448, 413_327_088),
])
def test_so400m_param_count(scan, size, want):
  d, t = 1152, (size // 14) ** 2
  closed_form = 27 * SO400M_BLOCK + (14 * 14 * 3 * d + d) + t * d + 2 * d
  assert SO400M_BLOCK == 15_239_504 and closed_form == want

  model = vit.ViT(**vit.VARIANTS["So400m/14"], scan=scan)
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  leaves = jax.tree.leaves(nn.unbox(variables))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  assert sum(math.prod(x.shape) for x in leaves) == want
  # DESIGN quotes ~4.0e8-4.3e8 for the tower; published ones add a 15.2M MAP head.
  assert 4.0e8 < want + 15_238_352 < 4.3e8


@pytest.mark.slow
@pytest.mark.parametrize("scan", [False, True])
def test_remat_same_output_and_grads(scan):
  images = _images((2, 16, 16, 3))
  kw = dict(TINY, scan=scan, dropout=0.1)
  params = _perturbed_params(vit.ViT(**kw), images)
  cotangent = np.random.default_rng(3).normal(size=(2, 4, TINY["width"]))

  def loss_and_grads(model):
    def loss(params):
      tokens, _ = model.apply({"params": params}, images, train=True,
                              rngs={"dropout": jax.random.key(4)})
      return jnp.sum(tokens * cotangent)
    # The recomputation must really be there, or the comparison proves nothing.
    has_remat = "remat" in str(jax.make_jaxpr(loss)(params))  # Primitive `remat2`.
    assert has_remat == (model.remat_policy is not None)
    return jax.jit(jax.value_and_grad(loss))(params)

  loss, grads = loss_and_grads(vit.ViT(**kw))
  loss_r, grads_r = loss_and_grads(vit.ViT(**kw, remat_policy="nothing_saveable"))
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
               grads_r, grads)


def test_unknown_remat_policy():
  with pytest.raises(ValueError, match="not_a_policy"):
    vit.ViT(**TINY, remat_policy="not_a_policy").init(jax.random.key(0),
                                                       jnp.zeros((1, 8, 8, 3)))


@pytest.mark.parametrize("scan", [False, True])
def test_partition_specs(scan):
  model = vit.ViT(**TINY, scan=scan, num_classes=3)
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
  specs = nn.get_partition_spec(variables)["params"]
  lyr = ("layers",) if scan else ()
  blk = specs["Transformer"]["encoderblock" if scan else "encoderblock_1"]
  attn = blk["MultiHeadDotProductAttention_0"]
  P = jax.sharding.PartitionSpec
  assert attn["query"]["kernel"] == P(*lyr, "embed", "heads", "kv")
  assert attn["value"]["bias"] == P(*lyr, "heads", "kv")
  assert attn["out"]["kernel"] == P(*lyr, "heads", "kv", "embed")
  assert blk["MlpBlock_0"]["Dense_0"]["kernel"] == P(*lyr, "embed", "mlp")
  assert blk["LayerNorm_1"]["scale"] == P(*lyr, "embed")
  assert specs["embedding"]["kernel"] == P(None, None, None, "embed")
  assert specs["pos_embedding"] == P(None, None, "embed")
  assert specs["head"]["kernel"] == P("embed", None)
  # Every parameter is annotated, one name per axis.
  boxes = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert all(isinstance(b, nn.LogicallyPartitioned) and len(b.names) == b.value.ndim
             for b in boxes)


def test_sharded_init_and_apply_under_mesh():
  """Jitted init with out_shardings under a mesh (DenseGeneral's flat init, flax#3676)."""
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS)")
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  rules = (("batch", "data"), ("embed", "fsdp"), ("heads", "tensor"), ("mlp", "tensor"),
           ("kv", None), ("seq", None), ("layers", None))
  model = vit.ViT(**TINY, scan=True)
  images = _images((4, 16, 16, 3))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract = jax.eval_shape(model.init, jax.random.key(0), images)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
    variables = jax.jit(model.init, out_shardings=shardings)(jax.random.key(0), images)
    tokens, _ = jax.jit(model.apply)(variables, images)
  query = nn.unbox(variables)["params"]["Transformer"]["encoderblock"][
      "MultiHeadDotProductAttention_0"]["query"]["kernel"]
  assert query.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  want, _ = jax.jit(model.apply)(jax.device_get(nn.unbox(variables)), images)
  np.testing.assert_allclose(tokens, want, atol=1e-5)


def test_bfloat16_compute_keeps_float32_outputs():
  images = _images((2, 16, 16, 3))
  params = _perturbed_params(vit.ViT(**TINY), images)
  want, _ = jax.jit(vit.ViT(**TINY).apply)({"params": params}, images)
  got, out = jax.jit(vit.ViT(**TINY, dtype=jnp.bfloat16).apply)({"params": params}, images)
  assert got.dtype == out["encoded"].dtype == jnp.float32
  np.testing.assert_allclose(got, want, atol=0.1)


def test_rejects_size_not_multiple_of_patch():
  with pytest.raises(ValueError, match="not a multiple of patch size 8"):
    vit.ViT(**TINY).init(jax.random.key(0), jnp.zeros((1, 20, 16, 3)))
