"""Loading published checkpoints into the CP-LLM parameter tree, and saving ours.

Our tree (plain nested dicts, unboxed) keeps big_vision's names (DESIGN.md section 2):
`img/...` (context ViT), `pix/...` (pixel ViT), `proj_ctx`, `proj_pix`, `pix_norm`,
`score_head`, `llm/...` (Gemma; see gemma.py). Loaders take a *target* (the initialised
tree, or `jax.eval_shape` structs) and return a NEW tree: the target with the checkpoint's
tensors put in, cast to the target's dtype (and placed on the target leaf's sharding when
it has one). Nothing is loaded partially or silently:

* Every target name must be provided by the checkpoint unless it matches `keep_init`
  (regexes, `re.fullmatch` on '/'-joined names; LoRA factors by default) or lies outside
  the loader's scope (`img/` for SigLIP, `img/`+`llm/`+`proj_ctx/` for PaliGemma, `llm/`
  for Gemma). Every checkpoint tensor must land in the target unless it matches `ignore`
  (regexes on the checkpoint's own names). Every shape must agree after the documented
  adaptations. Otherwise one `CheckpointMismatchError` lists all missing, unexpected and
  mis-shaped names (with both shapes).
* Adaptations, each logged: scanned <-> looped stacks (`encoderblock` <-> `encoderblock_{i}`,
  `layers` <-> `layers_{i}`) follow the target's layout; `pos_embedding` [1, g*g, W] is
  resampled to the target grid with align-corners bilinear interpolation, exactly as
  big_vision's `resample_posemb` (scipy.ndimage.zoom, order=1; big_vision/models/vit.py);
  `embedder/input_embedding` [V, D] is trimmed (first rows kept) or extended with rows taken
  from the target's own initialisation (or drawn like Gemma's init, N(0, 1/D), when the
  target holds no values).

Published layouts (read from the sources, not guessed):

* big_vision SigLIP npz: flat '/'-joined keys `img/...` (ViT, scanned `encoderblock` in the
  So400m release), `img/MAPHead_0/...` (MAP pooling), `img/head/...` (contrastive head after
  pooling), `txt/...`, `t`, `b`. Training checkpoints nest everything under `params/`
  (`big_vision/utils.py: load_params`), which is stripped. bfloat16 arrays come back from npz
  as 2-byte void and are viewed as bfloat16 again (as big_vision's `recover_dtype`).
* big_vision PaliGemma npz: `img/...` (So400m/14, `img/head` = Dense from the ViT width to
  the Gemma width, which is our `proj_ctx`) and `llm/...` in big_vision's Gemma layout
  (`big_vision/models/ppp/gemma.py`): scanned `llm/layers/...`, `mlp/gating_einsum`
  [L, 2, D, F] and `mlp/linear` [L, F, D] stored directly (no `/w`), vocabulary 257152.
* Gemma Flax checkpoints (orbax PyTree, `gemma/params.py: load_params` restores them with
  `PyTreeCheckpointer().restore`): a semi-flat dict such as
  `{'transformer/layer_0/attn/q_einsum': {'w': ...}, 'transformer/layer_0/mlp/gating_einsum':
  {'w': ...}, 'transformer/embedder': {'input_embedding': ...}, 'transformer/final_norm':
  {'scale': ...}}` (`gemma/params.py: flatten_and_remap_params` documents the `/w` on the MLP
  weights); nested dicts of the same names load the same way. Layers `layer_{i}` become our
  `layers_{i}` and are stacked into `layers` for a scanned target (as big_vision's
  `ppp/gemma.py: _load_orbax` does). Vocabulary 256128.
* MLP layout, from google-deepmind/gemma `gemma/gm/nn/_modules.py: FeedForward` and the model
  configs in `gemma/transformer.py` / `gemma/gm/nn/_gemma.py`: with
  `transpose_gating_einsum=False` (Gemma 1 2B/7B, Gemma 2 2B) `gating_einsum` is
  [2, D, F] ('features, hidden_dim'), identical to big_vision's and ours; with
  `transpose_gating_einsum=True` (Gemma 2 9B and 27B, all Gemma 3) it is [2, F, D]. `linear`
  is [F, D] in every version. `gating_layout='auto'` transposes a [.., 2, F, D] tensor to our
  [.., 2, D, F] when the shapes say so; when D == F the shapes cannot tell and it assumes
  [2, D, F] with a warning (pass '2FD' explicitly for transposed checkpoints then).

`save_npz` writes our tree as a big_vision-style npz ('/'-joined keys); `load_params_npz`
reads one back into a target with the same checks.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import re
import tempfile
from typing import Any, Callable, Iterable, Mapping, Sequence

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import scipy.ndimage

log = logging.getLogger(__name__)

# LoRA factors (`q_einsum/lora_a`, `mlp/gating_einsum_lora_b`, ...) exist only in our tree.
LORA = r".*lora_[ab]"

# Published SigLIP npz entries with no place in a token-output ViT.
SIGLIP_IGNORE = (r"img/MAPHead_0/.*", r"img/head/.*", r"txt/.*", r"t", r"b")

# Names of stacked blocks: `<base>/...` with a leading depth axis (scanned) or
# `<base>_{i}/...` (looped).
STACK_NAMES = ("encoderblock", "layers")
_STACK_RE = re.compile(
    r"^(?P<base>(?:.*/)?(?:%s))(?:_(?P<idx>\d+))?/(?P<rest>.+)$" % "|".join(STACK_NAMES))

GATING_LAYOUTS = ("auto", "2DF", "2FD")


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the target; lists every problem at once.

  Attributes:
    missing: target names the checkpoint should provide but does not.
    unexpected: checkpoint names (after renaming) that the target has no place for.
    mismatched: {name: (checkpoint shape, target shape)}.
  """

  def __init__(self, source: str, missing: Sequence[str] = (),
               unexpected: Mapping[str, tuple[int, ...]] | Sequence[str] = (),
               mismatched: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]] | None = None,
               *, target_shapes: Mapping[str, tuple[int, ...]] | None = None,
               notes: Sequence[str] = ()):
    self.missing = sorted(missing)
    self.unexpected = sorted(unexpected)
    self.mismatched = dict(sorted((mismatched or {}).items()))
    target_shapes = target_shapes or {}
    unexpected_shapes = unexpected if isinstance(unexpected, Mapping) else {}
    lines = [f"{source} does not match the target parameters "
             f"({len(self.missing)} missing, {len(self.unexpected)} unexpected, "
             f"{len(self.mismatched)} mis-shaped):"]
    if self.missing:
      lines.append("  missing (target names the checkpoint does not provide):")
      lines += [f"    {n} {_fmt_shape(target_shapes.get(n))}" for n in self.missing]
    if self.unexpected:
      lines.append("  unexpected (checkpoint names with no place in the target):")
      lines += [f"    {n} {_fmt_shape(unexpected_shapes.get(n))}" for n in self.unexpected]
    if self.mismatched:
      lines.append("  mis-shaped:")
      lines += [f"    {n}: checkpoint {_fmt_shape(c)} vs target {_fmt_shape(t)}"
                for n, (c, t) in self.mismatched.items()]
    lines += [f"  note: {n}" for n in notes]
    super().__init__("\n".join(lines))


def _fmt_shape(shape) -> str:
  return "" if shape is None else "[" + ", ".join(str(int(s)) for s in shape) + "]"


# ---- Paths ---------------------------------------------------------------------------------

def flatten(tree: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
  """Nested dicts -> {'a/b/c': leaf}. Keys that already contain `sep` are kept joined."""
  return flax.traverse_util.flatten_dict(tree, sep=sep)


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
  """{'a/b/c': leaf} -> nested dicts."""
  return flax.traverse_util.unflatten_dict(dict(flat), sep=sep)


def _matches(name: str, patterns: Iterable[str]) -> bool:
  return any(re.fullmatch(p, name) for p in patterns)


def _shape(x) -> tuple[int, ...]:
  return tuple(int(s) for s in np.shape(x))  # Arrays and jax.ShapeDtypeStruct alike.


# ---- Scanned <-> looped --------------------------------------------------------------------

def _split_stack(name: str):
  """'llm/layers_3/attn/q_einsum/w' -> ('llm/layers', 3, 'attn/q_einsum/w'); None if no stack."""
  m = _STACK_RE.match(name)
  if not m:
    return None
  idx = m.group("idx")
  return m.group("base"), (None if idx is None else int(idx)), m.group("rest")


def stack_layouts(names: Iterable[str]) -> dict[str, str]:
  """{stack base: 'scanned' | 'looped' | 'mixed'} for the stacks among `names`."""
  seen = collections.defaultdict(set)
  for name in names:
    if (s := _split_stack(name)) is not None:
      seen[s[0]].add("scanned" if s[1] is None else "looped")
  return {base: kinds.pop() if len(kinds) == 1 else "mixed" for base, kinds in seen.items()}


def _unstack(flat: Mapping[str, Any], base: str) -> dict[str, Any]:
  out = {}
  for name, value in flat.items():
    s = _split_stack(name)
    if s is not None and s[0] == base and s[1] is None:
      for i in range(_shape(value)[0]):
        out[f"{base}_{i}/{s[2]}"] = value[i]
    else:
      out[name] = value
  return out


def _stack(flat: Mapping[str, Any], base: str) -> dict[str, Any]:
  """Stacks `base_{i}/rest` into `base/rest`; leaves a rest-name looped (so that it is
  reported) when some layer lacks it or the layers' shapes differ."""
  groups = collections.defaultdict(dict)
  out = {}
  for name, value in flat.items():
    s = _split_stack(name)
    if s is not None and s[0] == base and s[1] is not None:
      groups[s[2]][s[1]] = value
    else:
      out[name] = value
  depth = 1 + max((i for by_idx in groups.values() for i in by_idx), default=-1)
  for rest, by_idx in groups.items():
    values = [by_idx.get(i) for i in range(depth)]
    if any(v is None for v in values) or len({_shape(v) for v in values}) != 1:
      out.update({f"{base}_{i}/{rest}": v for i, v in by_idx.items()})
      continue
    if all(isinstance(v, np.ndarray) for v in values):
      out[f"{base}/{rest}"] = np.stack(values)
    else:
      out[f"{base}/{rest}"] = jnp.stack([jnp.asarray(v) for v in values])
  return out


def _convert_flat(flat: Mapping[str, Any], want: Mapping[str, str],
                  what: str = "") -> dict[str, Any]:
  """Converts the stacks of `flat` to the layouts in `want` ({base: 'scanned'|'looped'})."""
  flat = dict(flat)
  for base, have in stack_layouts(flat).items():
    target = want.get(base)
    if target is None or target == have or target == "mixed":
      continue
    if target == "looped" and have in ("scanned", "mixed"):
      flat = _unstack(flat, base)
    elif target == "scanned" and have in ("looped", "mixed"):
      flat = _stack(flat, base)
    else:
      continue
    if what:
      log.info("%s: converted %s from %s to %s layout", what, base, have, target)
  return flat


def to_looped(params: Mapping[str, Any]) -> dict[str, Any]:
  """Every scanned stack (`encoderblock/...`, `layers/...`) -> `encoderblock_{i}`/`layers_{i}`."""
  flat = flatten(params)
  return unflatten(_convert_flat(flat, {b: "looped" for b in stack_layouts(flat)}))


def to_scanned(params: Mapping[str, Any]) -> dict[str, Any]:
  """Every looped stack (`encoderblock_{i}`, `layers_{i}`) -> one stack with a depth axis."""
  flat = flatten(params)
  return unflatten(_convert_flat(flat, {b: "scanned" for b in stack_layouts(flat)}))


def convert_layout(params: Mapping[str, Any], like: Mapping[str, Any]) -> dict[str, Any]:
  """`params` with each stack in the layout `like` uses (stacks `like` lacks are untouched)."""
  return unflatten(_convert_flat(flatten(params), stack_layouts(flatten(like))))


# ---- Adaptations ---------------------------------------------------------------------------

def resample_posemb(posemb, num_tokens: int) -> np.ndarray:
  """Bilinearly resamples a square grid of position embeddings [1, g*g, W] to num_tokens.

  Align-corners interpolation (scipy.ndimage.zoom, order=1), as big_vision's
  `resample_posemb`: the corner embeddings are kept and a linear ramp stays a linear ramp.
  """
  posemb = np.asarray(posemb)
  if posemb.ndim != 3 or posemb.shape[0] != 1:
    raise ValueError(f"expected a position embedding [1, T, W], got {posemb.shape}")
  old, new = math.isqrt(posemb.shape[1]), math.isqrt(num_tokens)
  if old * old != posemb.shape[1] or new * new != num_tokens:
    raise ValueError(f"can only resample square grids: {posemb.shape[1]} -> {num_tokens} "
                     "tokens")
  grid = posemb.reshape(old, old, -1).astype(np.float64)
  grid = scipy.ndimage.zoom(grid, (new / old, new / old, 1), order=1)
  assert grid.shape[:2] == (new, new), grid.shape
  return grid.reshape(1, new * new, -1).astype(posemb.dtype)


def resize_vocab(embedding, vocab_size: int, init=None, *, seed: int = 0) -> np.ndarray:
  """Trims [V, D] to its first `vocab_size` rows, or extends it.

  New rows are `init[V:vocab_size]` (the target's own initialisation) when `init` is given,
  else drawn like Gemma's embedder init, N(0, 1/D), from a seeded generator.
  """
  embedding = np.asarray(embedding)
  v, d = embedding.shape
  if vocab_size <= v:
    return embedding[:vocab_size]
  if init is not None:  # In init's dtype, so that the new rows are exactly the init's.
    init = np.asarray(init)
    return np.concatenate([embedding.astype(init.dtype), init[v:vocab_size]], axis=0)
  rng = np.random.default_rng(seed)
  new_rows = (rng.standard_normal((vocab_size - v, d)) / np.sqrt(d)).astype(embedding.dtype)
  return np.concatenate([embedding, new_rows], axis=0)


def _has_values(x) -> bool:
  return isinstance(x, (np.ndarray, jax.Array))


def _adapt(name: str, value, like, gating_layout: str, events: list[str]):
  """Returns `value` adapted to `like`'s shape where a documented rule applies (else as is).

  Each adaptation is logged and its kind appended to `events`.
  """
  vshape, tshape = _shape(value), _shape(like)
  if name.endswith("mlp/gating_einsum") and len(vshape) >= 3:
    swapped = vshape[:-2] + (vshape[-1], vshape[-2])
    if gating_layout == "2FD" or (gating_layout == "auto" and vshape != tshape
                                  and swapped == tshape):
      log.info("transposed %s %s -> %s (published [2, F, D] layout -> our [2, D, F])",
               name, _fmt_shape(vshape), _fmt_shape(swapped))
      events.append("transposed")
      return np.swapaxes(np.asarray(value), -1, -2)
    if gating_layout == "auto" and vshape == tshape and vshape[-1] == vshape[-2]:
      log.warning("%s: D == F, cannot tell [2, D, F] from [2, F, D]; assuming [2, D, F] "
                  "(pass gating_layout='2FD' for Gemma 2 9B/27B or Gemma 3 checkpoints)", name)
    return value
  if vshape == tshape:
    return value
  if (name.endswith("pos_embedding") and len(vshape) == len(tshape) == 3
      and vshape[0] == tshape[0] == 1 and vshape[2] == tshape[2]):
    try:
      out = resample_posemb(value, tshape[1])
    except ValueError:
      return value  # Reported as mis-shaped.
    g0, g1 = math.isqrt(vshape[1]), math.isqrt(tshape[1])
    msg = (f"resampled {name} from a {g0}x{g0} to a {g1}x{g1} grid "
           f"({_fmt_shape(vshape)} -> {_fmt_shape(tshape)}, bilinear, align corners)")
    log.info(msg)
    events.append("resampled")
    return out
  if (name.endswith("embedder/input_embedding") and len(vshape) == len(tshape) == 2
      and vshape[1] == tshape[1]):
    init = like if _has_values(like) else None
    out = resize_vocab(value, tshape[0], init)
    if tshape[0] < vshape[0]:
      msg = f"trimmed {name} from {vshape[0]} to its first {tshape[0]} rows"
    else:
      source = "the target's initialisation" if init is not None else "N(0, 1/D)"
      msg = (f"extended {name} from {vshape[0]} to {tshape[0]} rows "
             f"(rows {vshape[0]}..{tshape[0] - 1} from {source})")
    log.info(msg)
    events.append("vocabulary resized")
    return out
  return value


def _place(value, like):
  """`value` cast to `like`'s dtype, on `like`'s sharding when it has one."""
  value = np.asarray(value)
  dtype = np.dtype(like.dtype)
  if value.dtype != dtype:
    value = value.astype(dtype)
  sharding = getattr(like, "sharding", None)
  if sharding is not None:
    return jax.device_put(value, sharding)
  return jnp.asarray(value)


# ---- The merge every loader ends with ------------------------------------------------------

def merge_params(target: Mapping[str, Any], loaded: Mapping[str, Any], *,
                 keep_init: Sequence[str] = (LORA,), source: str = "checkpoint",
                 gating_layout: str = "auto") -> dict[str, Any]:
  """Returns `target` with the tensors of `loaded` (flat, our names) put in.

  Args:
    target: nested params (arrays or `jax.ShapeDtypeStruct`s) giving names, shapes, dtypes.
    loaded: {'/'-joined name: array} already renamed to our layout (either stack layout).
    keep_init: regexes (fullmatch) of target names allowed to keep their target value.
    source: how to name the checkpoint in messages.
    gating_layout: 'auto', '2DF' or '2FD', see the module docstring.

  Raises:
    CheckpointMismatchError: listing every missing, unexpected and mis-shaped name.
  """
  if gating_layout not in GATING_LAYOUTS:
    raise ValueError(f"gating_layout must be one of {GATING_LAYOUTS}, got {gating_layout!r}")
  tflat = flatten(target)
  lflat = _convert_flat(loaded, stack_layouts(tflat), what=source)

  events: list[str] = []
  adapted, unexpected, mismatched = {}, {}, {}
  for name, value in lflat.items():
    if name not in tflat:
      unexpected[name] = _shape(value)
      continue
    like = tflat[name]
    value = _adapt(name, value, like, gating_layout, events)
    if _shape(value) != _shape(like):
      mismatched[name] = (_shape(value), _shape(like))
    else:
      adapted[name] = value
  missing = [n for n in tflat
             if n not in lflat and not _matches(n, keep_init)]
  if missing or unexpected or mismatched:
    notes = [f"target names allowed to keep their initial values: keep_init={tuple(keep_init)}"]
    if any(_split_stack(n) for n in list(unexpected) + missing):
      notes.append(f"stack layouts: checkpoint {stack_layouts(loaded)}, "
                   f"target {stack_layouts(tflat)}")
    raise CheckpointMismatchError(
        source, missing, unexpected, mismatched,
        target_shapes={n: _shape(v) for n, v in tflat.items()}, notes=notes)

  out = {n: (_place(adapted[n], v) if n in adapted else v) for n, v in tflat.items()}
  kept = collections.Counter(n.split("/", 1)[0] for n in tflat if n not in adapted)
  kept_lora = sum(1 for n in tflat if n not in adapted and _matches(n, (LORA,)))
  log.info("%s: loaded %d tensors (%s); kept %d from init (%s; %d LoRA factors)",
           source, len(adapted),
           ", ".join(f"{c} {k}" for k, c in collections.Counter(events).items()) or "as stored",
           sum(kept.values()), ", ".join(f"{k}: {c}" for k, c in sorted(kept.items())) or "-",
           kept_lora)
  return unflatten(out)


def outside(prefixes: Sequence[str]) -> str:
  """Regex matching every name not under one of `prefixes`."""
  return r"(?!(?:%s)/).*" % "|".join(re.escape(p) for p in prefixes)


# ---- npz -----------------------------------------------------------------------------------

def _recover_dtype(x: np.ndarray) -> np.ndarray:
  """npz stores bfloat16 as 2-byte void; view it as bfloat16 again."""
  if x.dtype.kind == "V" and x.dtype.itemsize == 2:
    return x.view(ml_dtypes.bfloat16)
  return x


def _strip_prefix(names: Sequence[str]) -> dict[str, str]:
  """{stored name: name}: drops a common 'params/' (or old 'opt/target/') prefix."""
  for prefix in ("params/", "opt/target/"):
    if names and all(n.startswith(prefix) for n in names):
      return {n: n[len(prefix):] for n in names}
  if names and any(n.startswith("params/") for n in names):
    # Full training checkpoints: params plus optimiser state; only the params matter.
    return {n: n[len("params/"):] for n in names if n.startswith("params/")}
  return {n: n for n in names}


def load_npz(path: str, include: Callable[[str], bool] | None = None) -> dict[str, np.ndarray]:
  """Reads a big_vision-style npz into {'/'-joined name: array}.

  A common `params/` prefix is stripped; `include(name)` (on stripped names) selects which
  arrays are read at all, so unwanted towers never leave the file.
  """
  with np.load(path, allow_pickle=False) as npz:
    names = _strip_prefix(list(npz.keys()))
    return {name: _recover_dtype(npz[stored]) for stored, name in names.items()
            if include is None or include(name)}


def save_npz(params: Mapping[str, Any], path: str) -> None:
  """Writes `params` as an npz with '/'-joined keys (big_vision style), atomically."""
  flat = {k: np.asarray(v) for k, v in flatten(params).items()}
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=".npz.tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **flat)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def load_params_npz(path: str, target: Mapping[str, Any], *,
                    keep_init: Sequence[str] = ()) -> dict[str, Any]:
  """Loads an npz written by `save_npz` (our names, either stack layout) into `target`."""
  return merge_params(target, load_npz(path), keep_init=keep_init, source=f"npz {path}")


def _gemma_name(name: str) -> str:
  """Big_vision / Gemma MLP weights: 'mlp/gating_einsum/w' -> 'mlp/gating_einsum'."""
  return re.sub(r"(^|/)mlp/(gating_einsum|linear)/w$", r"\1mlp/\2", name)


def load_siglip_npz(path: str, target: Mapping[str, Any], *, dest: str = "img",
                    keep_init: Sequence[str] = (LORA,),
                    ignore: Sequence[str] = SIGLIP_IGNORE) -> dict[str, Any]:
  """Loads the image tower of a big_vision SigLIP npz into `target[dest]`.

  Takes `img/...`; `ignore` (regexes on the checkpoint's names, default: the MAP head, the
  contrastive `img/head`, the text tower, `t` and `b`) is skipped without being read. Target
  names outside `dest/` keep their values; inside, only names matching `keep_init` may.
  A plain big_vision ViT npz (no `img/` prefix) is read as the image tower.
  """
  flat = {}
  with np.load(path, allow_pickle=False) as npz:
    names = _strip_prefix(list(npz.keys()))
    if not any(n.startswith("img/") for n in names.values()) and any(
        n.startswith(("embedding/", "Transformer/")) for n in names.values()):
      log.info("SigLIP npz %s has no img/ tower; reading it as a plain ViT checkpoint", path)
      names = {s: f"img/{n}" for s, n in names.items()}
    for stored, name in names.items():
      if not _matches(name, ignore):  # Ignored arrays are never read.
        flat[name] = _recover_dtype(npz[stored])
  loaded = {(f"{dest}/{n[4:]}" if n.startswith("img/") else n): v for n, v in flat.items()}
  return merge_params(target, loaded, keep_init=tuple(keep_init) + (outside([dest]),),
                      source=f"SigLIP npz {path} (img -> {dest})")


def load_paligemma_npz(path: str, target: Mapping[str, Any], *,
                       keep_init: Sequence[str] = (LORA,), ignore: Sequence[str] = (),
                       gating_layout: str = "auto") -> dict[str, Any]:
  """Loads a big_vision PaliGemma npz: `img/` -> `img/`, `img/head` -> `proj_ctx`, `llm/`.

  The vocabulary (257152 rows in PaliGemma) is trimmed or extended to the target's.
  Target names outside img/, llm/ and proj_ctx/ keep their values.
  """
  flat = load_npz(path, include=lambda n: not _matches(n, ignore))
  loaded = {}
  for name, value in flat.items():
    if name.startswith("img/head/"):
      name = "proj_ctx/" + name[len("img/head/"):]
    elif name.startswith("llm/"):
      name = _gemma_name(name)
    loaded[name] = value
  return merge_params(target, loaded,
                      keep_init=tuple(keep_init) + (outside(["img", "llm", "proj_ctx"]),),
                      source=f"PaliGemma npz {path}", gating_layout=gating_layout)


def _restore_orbax(path: str) -> Mapping[str, Any]:
  """Restores an orbax PyTree checkpoint as NumPy arrays, whatever sharding it was saved with."""
  import orbax.checkpoint as ocp  # Imported here: heavy, and only this loader needs it.
  checkpointer = ocp.PyTreeCheckpointer()
  path = os.path.abspath(path)
  try:
    meta = checkpointer.metadata(path)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  except Exception as e:  # pylint: disable=broad-except  # Older formats: plain restore.
    log.info("orbax metadata of %s unavailable (%s); restoring without restore_args", path, e)
    return checkpointer.restore(path)
  return checkpointer.restore(path, restore_args=restore_args)


def load_gemma(path: str | Mapping[str, Any], target: Mapping[str, Any], *,
               dest: str = "llm", keep_init: Sequence[str] = (LORA,),
               ignore: Sequence[str] = (), gating_layout: str = "auto") -> dict[str, Any]:
  """Loads a published Gemma Flax checkpoint (orbax directory, or its restored dict).

  `transformer/layer_{i}/...` -> `{dest}/layers_{i}/...`, stacked into `{dest}/layers` for
  a scanned target; `mlp/{gating_einsum,linear}/w` lose their `/w`; `gating_einsum` in the
  [2, F, D] layout (Gemma 2 9B/27B, Gemma 3) is transposed; the vocabulary is trimmed or
  extended. `ignore` applies to the checkpoint's flattened names ('transformer/...').
  """
  tree = path if isinstance(path, Mapping) else _restore_orbax(path)
  source = "Gemma checkpoint" + ("" if isinstance(path, Mapping) else f" {path}")
  loaded = {}
  for name, value in flatten(tree).items():
    if _matches(name, ignore):
      continue
    ours = name[len("params/"):] if name.startswith("params/") else name
    ours = ours[len("transformer/"):] if ours.startswith("transformer/") else ours
    ours = re.sub(r"^layer_(\d+)/", r"layers_\1/", ours)
    loaded[f"{dest}/{_gemma_name(ours)}"] = np.asarray(value)
  return merge_params(target, loaded, keep_init=tuple(keep_init) + (outside([dest]),),
                      source=source, gating_layout=gating_layout)


def load_pretrained(params: Mapping[str, Any], *, paligemma: str | None = None,
                    siglip: str | None = None, gemma: str | None = None,
                    pix_vit: str | None = None) -> dict[str, Any]:
  """Applies a config's `init` paths (each optional) in a fixed order.

  PaliGemma npz first (img, proj_ctx, llm), then a SigLIP npz into img, a Gemma
  checkpoint into llm (an orbax directory, or a `.gguf` file read by gguf_checkpoint),
  and a SigLIP/ViT npz into the pixel encoder `pix`, so a later, more specific source
  overrides an earlier one.
  """
  if paligemma:
    params = load_paligemma_npz(paligemma, params)
  if siglip:
    params = load_siglip_npz(siglip, params, dest="img")
  if gemma and gemma.endswith(".gguf"):
    # gguf_checkpoint builds on this module; imported here, where a GGUF is asked for.
    from cpllm.models import gguf_checkpoint  # pylint: disable=import-outside-toplevel
    params = gguf_checkpoint.load_gemma_gguf(gemma, params)
  elif gemma:
    params = load_gemma(gemma, params)
  if pix_vit:
    params = load_siglip_npz(pix_vit, params, dest="pix")
  return dict(params)
