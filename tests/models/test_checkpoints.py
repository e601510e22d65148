"""Tests for cpllm.models.checkpoints.

The checkpoints are written here with NumPy / orbax in the *published* layouts (big_vision
SigLIP and PaliGemma npz, Gemma orbax `transformer/layer_i`), independently of the code under
test, and loaded into targets built from the real modules (vit.py, gemma.py).
"""
import functools
import logging
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cpllm.models import checkpoints as ckpt
from cpllm.models import gemma, vit

VIT = vit.VARIANTS["tiny"]  # width 32, depth 2, mlp 64, 2 heads, patch 8.
W, DEPTH, F_VIT, HEADS, P = (VIT[k] for k in ("width", "depth", "mlp_dim", "num_heads",
                                               "patch_size"))
LORA = gemma.LoRA(rank=2, targets=("q_einsum", "kv_einsum", "gating_einsum"))


# ---- targets from the real modules --------------------------------------------------------

def _gemma_logits(model, tokens, input_mask, mask_ar):
  x, _, _ = model(model.embed_tokens(tokens), input_mask, mask_ar)
  return model.logits(x)


def _gemma_model(variant, scan, **kw):
  return gemma.Gemma(**{**gemma.VARIANTS[variant], **kw}, lora=LORA, scan=scan)


def _gemma_args(t=5):
  return jnp.zeros((1, t), jnp.int32), jnp.ones((1, t), bool), jnp.zeros((1, t), jnp.int32)


# Targets take their names, shapes and dtypes from the real modules (`jax.eval_shape` of
# `init`, unboxed) and seeded random values: compiling each tiny init costs ~4 s on 2 cores,
# and the loaders depend only on names, shapes and dtypes (kept values are compared as given).
def _fill(abstract, seed, std=0.1):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: jnp.asarray((std * rng.normal(size=s.shape)).astype(s.dtype)), abstract)


@functools.lru_cache(maxsize=None)
def _gemma_params(variant, scan, seed=0):
  model = _gemma_model(variant, scan)
  abstract = jax.eval_shape(functools.partial(model.init, method=_gemma_logits),
                            jax.random.key(seed), *_gemma_args())
  return _fill(nn.unbox(abstract)["params"], seed)


@functools.lru_cache(maxsize=None)
def _vit_params(scan, image_size, seed=0):
  model = vit.ViT(**VIT, scan=scan)
  abstract = jax.eval_shape(model.init, jax.random.key(seed),
                            jnp.zeros((1, image_size, image_size, 3)))
  return _fill(nn.unbox(abstract)["params"], seed)


def make_target(vit_scan=True, llm_scan=True, variant="tiny", img_size=32, pix_size=16):
  """A CP-LLM-shaped tree: two real ViTs, a real Gemma with LoRA, and the small heads."""
  d = gemma.VARIANTS[variant]["width"]
  rng = np.random.default_rng(7)
  dense = lambda i, o: {"kernel": jnp.asarray(rng.normal(size=(i, o)), jnp.float32),
                        "bias": jnp.asarray(rng.normal(size=(o,)), jnp.float32)}
  return {
      "img": _vit_params(vit_scan, img_size, seed=1),
      "pix": _vit_params(vit_scan, pix_size, seed=2),
      "proj_ctx": dense(W, d), "proj_pix": dense(W, d),
      "pix_norm": {"scale": jnp.ones((d,)), "bias": jnp.zeros((d,))},
      "score_head": {"Dense_0": dense(2 * d, 16), "Dense_1": dense(16, 1)},
      "llm": _gemma_params(variant, llm_scan, seed=3),
  }


def flat(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ---- checkpoints in the published layouts, written with NumPy only ------------------------

def _rand(rng, shape, dtype=np.float32):
  return rng.normal(size=shape).astype(dtype)


def vit_block_shapes(d=W, f=F_VIT, n=HEADS):
  h = d // n
  shapes = {f"LayerNorm_{i}/{p}": (d,) for i in (0, 1) for p in ("scale", "bias")}
  for p in ("query", "key", "value"):
    shapes[f"MultiHeadDotProductAttention_0/{p}/kernel"] = (d, n, h)
    shapes[f"MultiHeadDotProductAttention_0/{p}/bias"] = (n, h)
  shapes["MultiHeadDotProductAttention_0/out/kernel"] = (n, h, d)
  shapes["MultiHeadDotProductAttention_0/out/bias"] = (d,)
  shapes.update({"MlpBlock_0/Dense_0/kernel": (d, f), "MlpBlock_0/Dense_0/bias": (f,),
                 "MlpBlock_0/Dense_1/kernel": (f, d), "MlpBlock_0/Dense_1/bias": (d,)})
  return shapes


def vit_tower(rng, grid, scanned, depth=DEPTH):
  """{name: array} of a big_vision ViT (no prefix) in the scanned or looped layout, plus the
  per-layer arrays (for building the expectation in the other layout)."""
  out = {"embedding/kernel": _rand(rng, (P, P, 3, W)), "embedding/bias": _rand(rng, (W,)),
         "pos_embedding": _rand(rng, (1, grid * grid, W)),
         "Transformer/encoder_norm/scale": _rand(rng, (W,)),
         "Transformer/encoder_norm/bias": _rand(rng, (W,))}
  layers = [{k: _rand(rng, s) for k, s in vit_block_shapes().items()} for _ in range(depth)]
  out.update(vit_blocks(layers, scanned))
  return out, layers


def vit_blocks(layers, scanned):
  if scanned:
    return {f"Transformer/encoderblock/{k}": np.stack([l[k] for l in layers])
            for k in layers[0]}
  return {f"Transformer/encoderblock_{i}/{k}": v for i, l in enumerate(layers)
          for k, v in l.items()}


def siglip_npz(path, rng, *, grid=4, scanned=True, prefix="", dtype=np.float32):
  """A big_vision SigLIP two-tower npz: img tower + MAP head + contrastive head, txt, t, b."""
  img, layers = vit_tower(rng, grid, scanned)
  entries = {f"img/{k}": v for k, v in img.items()}
  entries["img/MAPHead_0/probe"] = _rand(rng, (1, 1, W))
  for k, s in vit_block_shapes().items():
    if not k.startswith("LayerNorm_1"):
      entries[f"img/MAPHead_0/{k}"] = _rand(rng, s)
  entries.update({"img/head/kernel": _rand(rng, (W, 24)), "img/head/bias": _rand(rng, (24,)),
                  "txt/Embed_0/embedding": _rand(rng, (100, W)),
                  "txt/Transformer/encoderblock/LayerNorm_0/scale": _rand(rng, (DEPTH, W)),
                  "txt/head/kernel": _rand(rng, (W, 24)), "t": _rand(rng, (1,)),
                  "b": _rand(rng, (1,))})
  if dtype != np.float32:
    entries = {k: v.astype(dtype) for k, v in entries.items()}
  np.savez(path, **{prefix + k: v for k, v in entries.items()})
  return entries, layers


def gemma_layer_shapes(variant, gating="2DF"):
  c = gemma.VARIANTS[variant]
  d, f, n, k, h = (c[x] for x in ("width", "mlp_dim", "num_heads", "num_kv_heads",
                                   "head_dim"))
  shapes = {"attn/q_einsum/w": (n, d, h), "attn/kv_einsum/w": (2, k, d, h),
            "attn/attn_vec_einsum/w": (n, h, d),
            "mlp/gating_einsum": (2, d, f) if gating == "2DF" else (2, f, d),
            "mlp/linear": (f, d), "pre_attention_norm/scale": (d,),
            "pre_ffw_norm/scale": (d,)}
  if c.get("post_norms"):
    shapes.update({"post_attention_norm/scale": (d,), "post_ffw_norm/scale": (d,)})
  if c.get("qk_norm"):  # Gemma 3, named as in google-deepmind/gemma's Attention
    shapes.update({"attn/_query_norm/scale": (h,), "attn/_key_norm/scale": (h,)})
  return shapes


def gemma_layers(rng, variant, gating="2DF"):
  depth = gemma.VARIANTS[variant]["depth"]
  return [{k: _rand(rng, s) for k, s in gemma_layer_shapes(variant, gating).items()}
          for _ in range(depth)]


def expected_llm(layers, embedding, final_norm, scanned, gating="2DF", vocab=None):
  """Our layout of the given published Gemma arrays (the documented transposes/stacking)."""
  fix = lambda k, v: np.swapaxes(v, -1, -2) if (k == "mlp/gating_einsum" and gating == "2FD") \
      else v
  out = {"llm/embedder/input_embedding": embedding[:vocab],
         "llm/final_norm/scale": final_norm}
  for i, layer in enumerate(layers):
    for k, v in layer.items():
      if scanned:
        out.setdefault(f"llm/layers/{k}", []).append(fix(k, v))
      else:
        out[f"llm/layers_{i}/{k}"] = fix(k, v)
  return {k: np.stack(v) if isinstance(v, list) else v for k, v in out.items()}


def assert_kept(got, target, pattern):
  """Every target leaf whose name matches `pattern` is unchanged."""
  t = flat(target)
  names = [n for n in t if re.fullmatch(pattern, n)]
  assert names, pattern
  for n in names:
    np.testing.assert_array_equal(got[n], t[n], err_msg=n)


# ---- paths and layouts --------------------------------------------------------------------

def test_flatten_unflatten_and_layout_roundtrip():
  target = make_target(vit_scan=True, llm_scan=True)
  f = ckpt.flatten(target)
  assert "img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel" in f
  assert "llm/layers/attn/q_einsum/lora_a" in f
  for k, v in flat(ckpt.unflatten(f)).items():
    np.testing.assert_array_equal(v, flat(target)[k])

  looped = ckpt.to_looped(target)
  lf = flat(looped)
  assert ckpt.stack_layouts(lf) == {"img/Transformer/encoderblock": "looped",
                                    "pix/Transformer/encoderblock": "looped",
                                    "llm/layers": "looped"}
  sf = flat(target)
  for i in range(2):
    np.testing.assert_array_equal(lf[f"llm/layers_{i}/mlp/gating_einsum_lora_a"],
                                  sf["llm/layers/mlp/gating_einsum_lora_a"][i])
    np.testing.assert_array_equal(
        lf[f"img/Transformer/encoderblock_{i}/MlpBlock_0/Dense_1/bias"],
        sf["img/Transformer/encoderblock/MlpBlock_0/Dense_1/bias"][i])
  back = flat(ckpt.to_scanned(looped))
  assert back.keys() == sf.keys()
  for k in sf:
    np.testing.assert_array_equal(back[k], sf[k])
  # The real looped modules have exactly these names and shapes.
  real = flat(make_target(vit_scan=False, llm_scan=False))
  assert {k: v.shape for k, v in lf.items()} == {k: v.shape for k, v in real.items()}


def test_gemma_forward_identical_scanned_and_looped():
  """Second code path: the looped model on converted params gives the scanned model's output."""
  scanned_model, looped_model = (_gemma_model("tiny2", s) for s in (True, False))
  params = _gemma_params("tiny2", True)  # LoRA B and norm scales are non-zero too.
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, 256, (2, 11)))
  input_mask = jnp.ones((2, 11), bool).at[1, 8:].set(False)
  mask_ar = jnp.asarray(np.r_[[0] * 4, [1] * 7])[None].repeat(2, 0)
  run = lambda model, p: jax.jit(functools.partial(model.apply, method=_gemma_logits))(
      {"params": p}, tokens, input_mask, mask_ar)
  want = run(scanned_model, params)
  looped = ckpt.to_looped(params)
  assert "layers_2" in looped and "layers" not in looped
  got = run(looped_model, looped)
  # Scan and loop compile to different XLA fusions: equal up to float32 rounding (~1e-6).
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=2e-5)
  # ... which is far below what a wrong conversion (two layers swapped) would change.
  swapped = dict(looped, layers_0=looped["layers_1"], layers_1=looped["layers_0"])
  assert float(jnp.abs(run(looped_model, swapped) - want).max()) > 1e-2


# ---- SigLIP -------------------------------------------------------------------------------

@pytest.mark.parametrize("ckpt_scanned,target_scanned,prefix,dtype", [
    (True, True, "", np.float32),
    (True, False, "params/", ml_dtypes.bfloat16),
    (False, True, "params/", np.float32),
    (False, False, "", np.float32),
])
def test_siglip_npz_loads_exactly(tmp_path, caplog, ckpt_scanned, target_scanned, prefix,
                                  dtype):
  rng = np.random.default_rng(0)
  path = str(tmp_path / "siglip.npz")
  entries, layers = siglip_npz(path, rng, scanned=ckpt_scanned, prefix=prefix, dtype=dtype)
  target = make_target(vit_scan=target_scanned)
  with caplog.at_level(logging.INFO, logger=ckpt.__name__):
    got = flat(ckpt.load_siglip_npz(path, target))
  assert re.search(r"loaded \d+ tensors.*kept \d+ from init", caplog.text), caplog.text

  tower = {k[4:]: v for k, v in entries.items()
           if k.startswith("img/") and not k.startswith(("img/MAPHead_0", "img/head"))}
  tower = {k: v for k, v in tower.items() if "encoderblock" not in k}
  tower.update(vit_blocks([{k: v.astype(dtype) for k, v in l.items()} for l in layers],
                          target_scanned))
  t = flat(target)
  assert {n for n in t if n.startswith("img/")} == {f"img/{k}" for k in tower}
  for k, v in tower.items():
    assert got[f"img/{k}"].dtype == np.float32
    np.testing.assert_array_equal(got[f"img/{k}"], np.asarray(v, np.float32), err_msg=k)
  # Out of scope (pix, heads, the whole LLM with its LoRA factors) keeps its init values.
  assert_kept(got, target, r"(pix|proj_ctx|proj_pix|pix_norm|score_head|llm)/.*")
  assert got.keys() == t.keys()


def test_siglip_npz_into_pix_resamples_posemb(tmp_path, caplog):
  rng = np.random.default_rng(1)
  path = str(tmp_path / "siglip.npz")
  entries, _ = siglip_npz(path, rng, grid=4)
  target = make_target(pix_size=16)  # pix grid 2x2, checkpoint grid 4x4.
  with caplog.at_level(logging.INFO, logger=ckpt.__name__):
    got = flat(ckpt.load_siglip_npz(path, target, dest="pix"))
  assert "resampled pix/pos_embedding from a 4x4 to a 2x2 grid" in caplog.text
  assert got["pix/pos_embedding"].shape == (1, 4, W)
  # Align corners: a 4x4 -> 2x2 grid keeps exactly the four corner embeddings.
  grid = entries["img/pos_embedding"].reshape(4, 4, W)
  np.testing.assert_allclose(got["pix/pos_embedding"].reshape(2, 2, W),
                             grid[[0, 0, 3, 3], [0, 3, 0, 3]].reshape(2, 2, W), atol=1e-6)
  np.testing.assert_array_equal(got["pix/embedding/kernel"], entries["img/embedding/kernel"])
  assert_kept(got, make_target(pix_size=16), r"(img|llm|proj_ctx|score_head)/.*")


def test_plain_vit_npz_reads_as_image_tower(tmp_path):
  """A big_vision ViT classifier npz (no img/ prefix; its `head` is a classifier)."""
  rng = np.random.default_rng(9)
  tower, _ = vit_tower(rng, 4, scanned=False)
  path = str(tmp_path / "vit.npz")
  np.savez(path, **tower, **{"head/kernel": _rand(rng, (W, 10)), "head/bias": _rand(rng, (10,))})
  got = flat(ckpt.load_siglip_npz(path, make_target()))
  np.testing.assert_array_equal(
      got["img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"][1],
      tower["Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel"])


def test_posemb_resampling_linear_ramp_and_constant(tmp_path):
  """Independent check: bilinear resampling of a linear ramp is the ramp sampled on the new
  grid (corners aligned); a constant stays constant."""
  go, gn = 4, 6
  a, b, c = np.linspace(-1, 1, W), np.linspace(2, 0, W), np.linspace(0, 3, W)
  i, j = np.meshgrid(np.arange(go), np.arange(go), indexing="ij")
  ramp = (a * i[..., None] + b * j[..., None] + c).reshape(1, go * go, W).astype(np.float32)
  got = ckpt.resample_posemb(ramp, gn * gn)
  s = (go - 1) / (gn - 1)
  i, j = np.meshgrid(np.arange(gn), np.arange(gn), indexing="ij")
  want = (a * s * i[..., None] + b * s * j[..., None] + c).reshape(1, gn * gn, W)
  np.testing.assert_allclose(got, want, atol=1e-5)
  const = np.full((1, go * go, W), 0.25, np.float32)
  np.testing.assert_allclose(ckpt.resample_posemb(const, 9), np.full((1, 9, W), 0.25),
                             atol=1e-7)
  with pytest.raises(ValueError, match="square"):
    ckpt.resample_posemb(ramp[:, :15], 36)

  # Through the loader: a 48x48 context encoder (6x6 grid) from a 4x4 checkpoint.
  rng = np.random.default_rng(2)
  path = str(tmp_path / "siglip.npz")
  entries, _ = siglip_npz(path, rng, grid=go)
  with np.load(path) as npz:
    data = dict(npz)
  data["img/pos_embedding"] = ramp
  np.savez(path, **data)
  got = flat(ckpt.load_siglip_npz(path, make_target(img_size=48)))
  assert got["img/pos_embedding"].shape == (1, 36, W)
  np.testing.assert_allclose(got["img/pos_embedding"], want, atol=1e-5)


def test_mismatch_error_lists_missing_unexpected_and_misshaped(tmp_path):
  rng = np.random.default_rng(3)
  path = str(tmp_path / "siglip.npz")
  siglip_npz(path, rng)
  with np.load(path) as npz:
    data = dict(npz)
  bad = "img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"
  data[bad] = _rand(rng, (DEPTH, W, F_VIT + 1))
  del data["img/Transformer/encoder_norm/bias"]
  data["img/Transformer/extra/kernel"] = _rand(rng, (3, 5))
  np.savez(path, **data)
  target = make_target()
  with pytest.raises(ckpt.CheckpointMismatchError) as e:
    ckpt.load_siglip_npz(path, target)
  assert isinstance(e.value, ValueError)
  msg = str(e.value)
  assert "img/Transformer/encoder_norm/bias [32]" in msg
  assert "img/Transformer/extra/kernel [3, 5]" in msg
  assert f"{bad}: checkpoint [2, 32, 65] vs target [2, 32, 64]" in msg
  assert e.value.missing == ["img/Transformer/encoder_norm/bias"]
  assert e.value.unexpected == ["img/Transformer/extra/kernel"]
  assert e.value.mismatched == {bad: ((2, 32, 65), (2, 32, 64))}
  # Looped target: the mis-shaped tensor is named per layer.
  with pytest.raises(ckpt.CheckpointMismatchError) as e:
    ckpt.load_siglip_npz(path, make_target(vit_scan=False))
  assert set(e.value.mismatched) == {
      f"img/Transformer/encoderblock_{i}/MlpBlock_0/Dense_0/kernel" for i in range(DEPTH)}
  # Ignoring the MAP head is a default, not magic: with ignore=() it is reported.
  siglip_npz(path, rng)
  with pytest.raises(ckpt.CheckpointMismatchError, match="img/MAPHead_0/probe") as e:
    ckpt.load_siglip_npz(path, target, ignore=(r"txt/.*", "t", "b"))
  assert "img/head/kernel" in e.value.unexpected and not e.value.missing


# ---- PaliGemma ----------------------------------------------------------------------------

def paligemma_npz(path, rng, vocab, variant="tiny"):
  img, vit_layers = vit_tower(rng, 4, scanned=True)
  d = gemma.VARIANTS[variant]["width"]
  entries = {f"img/{k}": v for k, v in img.items()}
  entries.update({"img/head/kernel": _rand(rng, (W, d)), "img/head/bias": _rand(rng, (d,))})
  layers = gemma_layers(rng, variant)
  embedding, final_norm = _rand(rng, (vocab, d)), _rand(rng, (d,))
  entries["llm/embedder/input_embedding"] = embedding
  entries["llm/final_norm/scale"] = final_norm
  for k in layers[0]:  # big_vision: scanned, MLP weights without '/w'.
    entries[f"llm/layers/{k}"] = np.stack([l[k] for l in layers])
  np.savez(path, **entries)
  return entries, vit_layers, layers, embedding, final_norm


@pytest.mark.parametrize("vit_scan,llm_scan", [(True, True), (False, False)])
def test_paligemma_npz_loads_exactly(tmp_path, caplog, vit_scan, llm_scan):
  rng = np.random.default_rng(4)
  path = str(tmp_path / "pg.npz")
  entries, vit_layers, layers, emb, fnorm = paligemma_npz(path, rng, vocab=300)
  target = make_target(vit_scan, llm_scan)
  target["llm"] = jax.tree.map(lambda x: x.astype(jnp.bfloat16), target["llm"])
  with caplog.at_level(logging.INFO, logger=ckpt.__name__):
    got = flat(ckpt.load_paligemma_npz(path, target))
  assert "trimmed llm/embedder/input_embedding from 300 to its first 256 rows" in caplog.text

  want = {k: v for k, v in entries.items() if k.startswith("img/")
          and "encoderblock" not in k and not k.startswith("img/head")}
  want.update({f"img/{k}": v for k, v in vit_blocks(vit_layers, vit_scan).items()})
  want["proj_ctx/kernel"] = entries["img/head/kernel"]
  want["proj_ctx/bias"] = entries["img/head/bias"]
  want.update(expected_llm(layers, emb, fnorm, llm_scan, vocab=256))
  t = flat(target)
  for k, v in want.items():
    dtype = t[k].dtype
    assert got[k].dtype == dtype, k
    np.testing.assert_array_equal(got[k], v.astype(dtype), err_msg=k)
  # Everything else is exactly the LoRA factors and the parts PaliGemma does not have.
  rest = set(t) - set(want)
  assert all(re.fullmatch(r"llm/.*lora_[ab]|(pix|proj_pix|pix_norm|score_head)/.*", n)
             for n in rest), rest
  assert any("lora" in n for n in rest)
  assert_kept(got, target, r".*lora_[ab]|(pix|proj_pix|pix_norm|score_head)/.*")

  # keep_init is explicit: without LoRA in it, the LoRA factors are reported missing.
  with pytest.raises(ckpt.CheckpointMismatchError) as e:
    ckpt.load_paligemma_npz(path, target, keep_init=())
  assert e.value.missing and all("lora_" in n for n in e.value.missing)


def test_vocab_extend_keeps_rows_and_adds_init_rows(tmp_path, caplog):
  rng = np.random.default_rng(5)
  path = str(tmp_path / "pg.npz")
  _, _, _, emb, _ = paligemma_npz(path, rng, vocab=200)
  target = make_target()
  with caplog.at_level(logging.INFO, logger=ckpt.__name__):
    got = flat(ckpt.load_paligemma_npz(path, target))
  assert "extended llm/embedder/input_embedding from 200 to 256 rows" in caplog.text
  table = got["llm/embedder/input_embedding"]
  assert table.shape == (256, 64)
  np.testing.assert_array_equal(table[:200], emb)
  np.testing.assert_array_equal(table[200:],
                                flat(target)["llm/embedder/input_embedding"][200:])
  # Without target values (eval_shape structs), new rows are drawn like the init: N(0, 1/D).
  ext = ckpt.resize_vocab(emb, 4000)
  np.testing.assert_array_equal(ext[:200], emb)
  assert abs(ext[200:].std() - 1 / 8) < 0.01 and abs(ext[200:].mean()) < 0.01
  np.testing.assert_array_equal(ckpt.resize_vocab(emb, 10), emb[:10])


# ---- Gemma orbax --------------------------------------------------------------------------

def gemma_orbax(path, rng, variant, *, vocab, gating="2DF", nested=False):
  """The published Gemma Flax checkpoint: {'transformer/layer_i/attn/q_einsum': {'w': ..}}."""
  layers = gemma_layers(rng, variant, gating)
  d = gemma.VARIANTS[variant]["width"]
  embedding, final_norm = _rand(rng, (vocab, d)), _rand(rng, (d,))
  tree = {"transformer/embedder": {"input_embedding": embedding},
          "transformer/final_norm": {"scale": final_norm}}
  for i, layer in enumerate(layers):
    for k, v in layer.items():
      # Published: 'mlp/gating_einsum' -> {'w': ...}; 'attn/q_einsum/w' -> {'w': ...}.
      module, leaf = (k, "w") if k.startswith("mlp/") else k.rsplit("/", 1)
      tree.setdefault(f"transformer/layer_{i}/{module}", {})[leaf] = v
  if nested:
    nest = {}
    for key, leaves in tree.items():
      node = nest
      for part in key.split("/"):
        node = node.setdefault(part, {})
      node.update(leaves)
    tree = nest
    with ocp.StandardCheckpointer() as checkpointer:  # Async: leaving the block waits.
      checkpointer.save(path, tree)
  else:
    ocp.PyTreeCheckpointer().save(path, tree)
  return tree, layers, embedding, final_norm


@pytest.mark.parametrize("nested,scan,gating,variant", [
    (False, True, "2DF", "tiny2"), (True, False, "2DF", "tiny2"), (False, False, "2FD", "tiny2"),
    (True, True, "2FD", "tiny2"),
    (False, True, "2FD", "tiny3"), (True, False, "2FD", "tiny3")])  # Gemma 3's layout
def test_gemma_orbax_loads_exactly(tmp_path, caplog, nested, scan, gating, variant):
  rng = np.random.default_rng(6)
  path = str(tmp_path / "gemma")
  tree, layers, emb, fnorm = gemma_orbax(path, rng, variant, vocab=260, gating=gating,
                                         nested=nested)
  if not nested:
    assert "transformer/layer_0/mlp/gating_einsum" in tree
    assert set(tree["transformer/layer_0/mlp/gating_einsum"]) == {"w"}
    assert tree["transformer/layer_0/attn/q_einsum"]["w"].shape == (4, 64, 16)
  target = make_target(llm_scan=scan, variant=variant)
  with caplog.at_level(logging.INFO, logger=ckpt.__name__):
    got = flat(ckpt.load_gemma(path, target))
  assert ("transposed llm/" in caplog.text) == (gating == "2FD")
  assert "trimmed llm/embedder/input_embedding from 260" in caplog.text
  want = expected_llm(layers, emb, fnorm, scan, gating=gating, vocab=256)
  t = flat(target)
  llm_names = {n for n in t if n.startswith("llm/")}
  assert llm_names - set(want) == {n for n in llm_names if re.fullmatch(r".*lora_[ab]", n)}
  for k, v in want.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)
  assert_kept(got, target, r".*lora_[ab]|(img|pix|proj_ctx|proj_pix|pix_norm|score_head)/.*")


def test_gemma_into_abstract_target(tmp_path, caplog):
  """Sharded-init flow: the target is `jax.eval_shape` structs; loaded leaves become arrays,
  the rest stay structs for a later jitted init; new vocabulary rows are drawn N(0, 1/D)."""
  rng = np.random.default_rng(10)
  path = str(tmp_path / "gemma")
  _, layers, emb, _ = gemma_orbax(path, rng, "tiny", vocab=250)
  model = _gemma_model("tiny", True)
  abstract = nn.unbox(jax.eval_shape(functools.partial(model.init, method=_gemma_logits),
                                     jax.random.key(0), *_gemma_args()))["params"]
  with caplog.at_level(logging.INFO, logger=ckpt.__name__):
    got = ckpt.load_gemma(path, {"llm": abstract})["llm"]
  assert "rows 250..255 from N(0, 1/D)" in caplog.text
  assert isinstance(got["layers"]["attn"]["q_einsum"]["lora_a"], jax.ShapeDtypeStruct)
  assert isinstance(got["layers"]["attn"]["q_einsum"]["w"], jax.Array)
  np.testing.assert_array_equal(got["layers"]["mlp"]["linear"][1], layers[1]["mlp/linear"])
  table = np.asarray(got["embedder"]["input_embedding"])
  np.testing.assert_array_equal(table[:250], emb)
  assert table.shape == (256, 64) and np.all(np.isfinite(table[250:]))
  assert 0 < table[250:].std() < 0.5


def test_gemma_depth_mismatch_names_every_problem(tmp_path):
  """A 3-layer checkpoint into the 2-layer `tiny` target, with a wrong MLP width."""
  rng = np.random.default_rng(8)
  path = str(tmp_path / "gemma")
  gemma_orbax(path, rng, "tiny2", vocab=256)  # tiny2: 3 layers, GQA, post-norms.
  with pytest.raises(ckpt.CheckpointMismatchError) as e:
    ckpt.load_gemma(path, make_target(llm_scan=False, variant="tiny"))
  err = e.value
  assert "llm/layers_2/attn/q_einsum/w" in err.unexpected
  assert "llm/layers_0/post_ffw_norm/scale" in err.unexpected
  assert err.mismatched["llm/layers_0/attn/kv_einsum/w"] == ((2, 2, 64, 16), (2, 1, 64, 16))
  assert not err.missing
  assert "llm/layers_1/attn/kv_einsum/w: checkpoint [2, 2, 64, 16] vs target [2, 1, 64, 16]" \
      in str(err)


# ---- our own npz --------------------------------------------------------------------------

def test_save_npz_roundtrip_across_layouts(tmp_path):
  params = make_target(vit_scan=True, llm_scan=True)
  params = jax.tree.map(lambda x: x + 1.0, params)  # Distinguishable from any init.
  params["llm"] = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params["llm"])
  path = str(tmp_path / "out" / "params.npz")
  ckpt.save_npz(params, path)
  stored = ckpt.load_npz(path)
  assert stored["llm/final_norm/scale"].dtype == ml_dtypes.bfloat16
  assert "img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel" in stored
  target = make_target(vit_scan=False, llm_scan=False)
  got = flat(ckpt.load_params_npz(path, target))
  want = flat(ckpt.to_looped(params))
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], np.asarray(want[k], np.float32), err_msg=k)


def test_load_pretrained_applies_config_init_in_order(tmp_path):
  rng = np.random.default_rng(11)
  pg_path, pix_path = str(tmp_path / "pg.npz"), str(tmp_path / "vit.npz")
  entries, *_ = paligemma_npz(pg_path, rng, vocab=256)
  siglip, _ = siglip_npz(pix_path, rng, grid=2)
  target = make_target()
  got = flat(ckpt.load_pretrained(target, paligemma=pg_path, pix_vit=pix_path))
  np.testing.assert_array_equal(got["proj_ctx/kernel"], entries["img/head/kernel"])
  np.testing.assert_array_equal(got["llm/embedder/input_embedding"],
                                entries["llm/embedder/input_embedding"])
  np.testing.assert_array_equal(got["pix/embedding/kernel"], siglip["img/embedding/kernel"])
  np.testing.assert_array_equal(got["score_head/Dense_0/kernel"],
                                flat(target)["score_head/Dense_0/kernel"])
  assert ckpt.load_pretrained(target) == target
