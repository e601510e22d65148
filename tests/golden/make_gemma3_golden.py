"""Golden logits of Gemma 3 270M from Google's official `gemma` library.

An independent reference for cpllm/models/gemma.py: the real Gemma 3 270M weights (the GGUF
file read by `gguf_checkpoint.gemma_tensors`) are put into the official model class
`gemma.gm.nn.Gemma3_270M` (PyPI `gemma` 3.3.0, its last release for Python 3.11), which
runs them in float32 on two prompts given as token ids (bos first). Only the official code
computes the logits here; the same tensors in our model should give the same numbers.

Writes gemma3_270m_logits.npz next to this script, per prompt p in (a, b):
  {p}_tokens       int32[T]        the token ids
  {p}_top_ids      int32[T, 20]    the 20 largest logits' ids at each position, largest first
  {p}_top_logits   float32[T, 20]  those logits
  {p}_logsumexp    float32[T]      logsumexp over the whole vocabulary (float64 sums)

The official library pulls kauldron, tensorflow and many more, so it is installed apart
from the project's venv, without dependencies (numpy, jax and flax stay the venv's), with
only the packages the venv lacks:

  .venv/bin/python -m pip install --no-deps --target /tmp/golden/site gemma==3.3.0 \
      kauldron==1.4.2 grain==0.2.18 jaxtyping==0.3.11 wadler-lindig==0.1.8 lark==1.3.1 \
      chex==0.1.92 mediapy==1.2.7 tabulate==0.10.0 typeguard==4.6.1 ipython==9.18.1 \
      traitlets==5.16.1 toolz==1.2.0
  .venv/bin/python tests/golden/make_gemma3_golden.py [--site=/tmp/golden/site]

`--site` is appended to sys.path, after the venv's site-packages. Two shims make gemma
3.3.0 import with the venv's packages:
  1. `sentencepiece.sentencepiece_model_pb2` (imported by gemma's tokenizer module) is
     generated for protobuf 7 and refuses protobuf 6.33: an empty module stands in for it
     (the tokenizer is not used: the prompts are token ids).
  2. kauldron 1.4's `checkpoints` module lacks `AbstractPartialLoader`, a base class of
     gemma's checkpoint loaders (not used either: the weights come from the GGUF file): a
     dummy class stands in for it.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from cpllm.data.tokenizer import Tokenizer
from cpllm.models import gguf_checkpoint

_SITE = flags.DEFINE_string("site", "/tmp/golden/site",
                            "Folder holding the official gemma library and its extra deps.")
_OUTPUT = flags.DEFINE_string(
    "output", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "gemma3_270m_logits.npz"), "Where to write the golden logits.")

BOS = 2
# Token ids after bos, checked against our tokenizer's encoding of the text.
PROMPTS = {
    "a": ("1, 2, 3, 4, 5,", [236770, 236764, 236743, 236778, 236764, 236743, 236800, 236764,
                             236743, 236812, 236764, 236743, 236810, 236764]),
    "b": ("Monday, Tuesday, Wednesday,", [49381, 236764, 9863, 236764, 10119, 236764]),
}
TOP_K = 20


def import_official_gemma(site: str):
  """The official library's `gm` module, imported from `site` with the two shims."""
  sys.path.append(site)
  sys.modules["sentencepiece.sentencepiece_model_pb2"] = types.ModuleType(
      "sentencepiece.sentencepiece_model_pb2")
  from kauldron import checkpoints  # pylint: disable=import-outside-toplevel
  if hasattr(checkpoints, "AbstractPartialLoader"):
    raise RuntimeError("kauldron has AbstractPartialLoader: drop the shim")
  checkpoints.AbstractPartialLoader = type("AbstractPartialLoader", (), {})
  from gemma import gm  # pylint: disable=import-outside-toplevel
  return gm


def official_params(tensors: dict[str, np.ndarray], abstract) -> dict:
  """Our looped tensors as the official param tree, checked name by name and shape by shape
  against `abstract` (the official model's eval_shape'd params)."""
  flat = {}
  for name, value in tensors.items():
    name = re.sub(r"^layers_(\d+)/", r"layer_\1/", name)
    if name.endswith("/mlp/gating_einsum"):  # ours [2, D, F]; transpose_gating_einsum
      value = value.transpose(0, 2, 1)
    flat[name] = value
  expected = {"/".join(key.key for key in path): leaf
              for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  problems = [f"missing in ours: {name}" for name in sorted(set(expected) - set(flat))]
  problems += [f"not in the official model: {name}"
               for name in sorted(set(flat) - set(expected))]
  problems += [f"{name}: ours {flat[name].shape}, official {leaf.shape}"
               for name, leaf in expected.items()
               if name in flat and flat[name].shape != leaf.shape]
  if problems:
    raise ValueError("official and our Gemma 3 trees differ:\n  " + "\n  ".join(problems))
  out = {}
  for name, value in flat.items():
    node = out
    *parents, leaf = name.split("/")
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = jnp.asarray(value, expected[name].dtype)
  return out


def check_prompts(path: str) -> None:
  """Fails unless our tokenizer encodes each prompt's text to its token ids."""
  with tempfile.TemporaryDirectory() as tmp:
    tokenizer = Tokenizer(gguf_checkpoint.write_tokenizer(path, os.path.join(tmp, "t.model")))
    if tokenizer.bos_id != BOS:
      raise ValueError(f"bos is {tokenizer.bos_id}, not {BOS}")
    for key, (text, ids) in PROMPTS.items():
      got = list(tokenizer.encode(text))
      if got != ids:
        raise ValueError(f"prompt {key} {text!r}: tokenizer gives {got}, not {ids}")


def main(argv):
  del argv
  jax.config.update("jax_default_matmul_precision", "highest")
  gm = import_official_gemma(_SITE.value)
  path = gguf_checkpoint.gemma3_270m()
  check_prompts(path)
  model = gm.nn.Gemma3_270M(dtype=jnp.float32)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
  params = official_params(gguf_checkpoint.gemma_tensors(path), abstract["params"])
  forward = jax.jit(lambda p, tokens: model.apply({"params": p}, tokens,
                                                  return_last_only=False).logits)
  out = {}
  for key, (_, ids) in PROMPTS.items():
    tokens = np.array([BOS] + ids, np.int32)
    logits = np.asarray(forward(params, tokens[None]))[0].astype(np.float64)
    top_ids = np.argsort(-logits, axis=-1, kind="stable")[:, :TOP_K]
    peak = logits.max(axis=-1)
    out[f"{key}_tokens"] = tokens
    out[f"{key}_top_ids"] = top_ids.astype(np.int32)
    out[f"{key}_top_logits"] = np.take_along_axis(logits, top_ids, -1).astype(np.float32)
    out[f"{key}_logsumexp"] = (peak + np.log(np.exp(logits - peak[:, None]).sum(-1))).astype(
        np.float32)
  np.savez(_OUTPUT.value, **out)
  print(f"wrote {_OUTPUT.value} ({os.path.getsize(_OUTPUT.value)} bytes)")


if __name__ == "__main__":
  app.run(main)
