"""grain input pipelines over video records (cpllm/data/features.py).

Training (`train_dataset`):

  records --(this host's shard)--> shuffle(seed, reshuffled every epoch) --> repeat
    --> plan: pick the partner video and the text task (seeded per position)
    --> load: decode both videos' key frames, preprocess (cpllm.data.video), tokenize
    --> batch --> prefetch in worker processes

Pairs (the paper's Single / Pairwise / Mix is the `mix` weights):
  single       video A alone; B's slot repeats A and video_mask = [True, False].
  same_source  two variants of one source with different CRFs.
  cross        two videos of different sources.
  ladder       two CRF variants of one source at most LADDER_SPAN apart (an anchor that
               is not a CRF variant is replaced by a random one of its source): the
               neighbouring rungs whose order the flip rate measures, for the ladder hinge
               of cpllm/train/losses.py.
Which slot of a pair holds the better video is a fair coin per example, so the decoder
cannot learn "A is better" from the slots: the pairwise hinge reads each slot's own MOS,
and the SIG comparison names the slot with the higher MOS (first or second).
A pair kind that is impossible for an anchor (a source without other variants, a
one-source dataset) falls back to the next kind in the order ladder -> same_source ->
cross -> single; the kind actually produced is each example's `pair_kind`.

Augmentation (`augment=True`, training only): a horizontal flip with probability 1/2 and
patches at uniformly random positions instead of the fixed grid; both videos of a pair get
the same flip and positions (one `view_seed` per example), so a same-source pair differs
in its distortion only, not in what the patches show. With `low_contrast` L as well, half
the examples have both videos' contrast scaled by one factor, log-uniform in [L, 1]
(`scale_contrast`), their labels unchanged: a contrast-normalised pixel path otherwise
reads faint content (a microscope image, a dark street) as blurred or compressed.

Text tasks: a single video with dimension scores gets, with probability `reason_rate`, the
GRPO prompt with its SIG chain-of-thought target ('<think>...</think><answer>3.42</answer>',
the quality_instructions builder's 'grpo' kind), which teaches the format GRPO starts from;
otherwise the level prompt (target " <level>.", with probability `level_rate`, or when it
has no description) or the description prompt with its description. A pair of videos with
dimension scores gets the SIG comparison, otherwise the single-video text of slot A
(either video of the pair, by the coin).

GRPO (`grpo_dataset`): single videos, each with a temporally perturbed copy of its key
frames (cpllm.data.perturb) in slot B, for the temporal-consistency reward.

Everything random is a function of (seed, position), so the iterator state saved with a
checkpoint (`iterator.get_state()`) restores exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np
from etils import epath

from cpllm.data import features
from cpllm.data import instructions
from cpllm.data import perturb
from cpllm.data import tokenizer as tokenizer_lib
from cpllm.data import video

DESCRIBE_PROMPT = ("Based on the provided video frames, create a three-sentence summary. "
                   "First, describe the visual content of the video in detail. Second, "
                   "identify the style of the video. Third, assess the technical quality.")
METADATA_FIELDS = ("id", "source_id", "mos", "is_original", "crf", "dimensions",
                   "description")


class PairKind(enum.IntEnum):
  SINGLE = 0
  SAME_SOURCE = 1
  CROSS = 2
  LADDER = 3


LADDER_SPAN = 10  # CRF units: ladder pairs are 2 to 10 apart on a step-2 ladder


class Task(enum.IntEnum):
  LEVEL = 0
  DESCRIBE = 1
  COMPARE = 2
  REASON = 3


@dataclasses.dataclass(frozen=True)
class Mix:
  """Relative weights of the pair kinds; Single = (1, 0, 0), Pairwise = (0, .5, .5)."""
  single: float = 1.0
  same_source: float = 1.0
  cross: float = 1.0
  ladder: float = 0.0

  def probabilities(self) -> np.ndarray:
    """In PairKind order."""
    weights = np.array([self.single, self.same_source, self.cross, self.ladder], np.float64)
    if (weights < 0).any() or weights.sum() <= 0:
      raise ValueError(f"mix weights must be >= 0 with a positive sum, got {self}")
    return weights / weights.sum()


@dataclasses.dataclass(frozen=True)
class Metadata:
  """Per-record fields needed to plan pairs and texts (no pixels), arrays of length N."""
  ids: np.ndarray
  source_ids: np.ndarray
  mos: np.ndarray
  is_original: np.ndarray
  crf: np.ndarray
  dimensions: np.ndarray  # float32[N, len(features.DIMENSIONS)], NaN if unknown
  descriptions: np.ndarray

  def __len__(self):
    return len(self.ids)

  @functools.cached_property
  def by_source(self) -> dict[str, np.ndarray]:
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(self.source_ids):
      groups.setdefault(s, []).append(i)
    return {s: np.array(v) for s, v in groups.items()}


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def read_metadata(source: Sequence[Mapping[str, Any]]) -> Metadata:
  """Reads the planning fields of every record. Pass a source that skips frame decoding
  (see `open_split`) for large datasets; any record sequence works."""
  rows = [source[i] for i in range(len(source))]
  bad = [(_text(r["id"]), r["mos"]) for r in rows if not math.isfinite(float(r["mos"]))]
  if bad:
    raise ValueError(f"records without a finite MOS (id, mos): {bad[:5]}")
  return Metadata(
      ids=np.array([_text(r["id"]) for r in rows]),
      source_ids=np.array([_text(r["source_id"]) for r in rows]),
      mos=np.array([r["mos"] for r in rows], np.float32),
      is_original=np.array([r["is_original"] for r in rows], bool),
      crf=np.array([r["crf"] for r in rows], np.int32),
      dimensions=np.array([r["dimensions"] for r in rows], np.float32).reshape(
          len(rows), len(features.DIMENSIONS)),
      descriptions=np.array([_text(r["description"]) for r in rows], dtype=object))


def dataset_dir(name: str, data_dir: str) -> str:
  """The newest built version directory of dataset `name` under data_dir (local or gs://).

  TFDS lays builds out as name/version/ or name/config/version/.
  """
  root = epath.Path(data_dir) / name
  infos = sorted(str(p) for pattern in ("*/dataset_info.json", "*/*/dataset_info.json")
                 for p in root.glob(pattern))
  if not infos:
    raise FileNotFoundError(f"no built dataset '{name}' under {data_dir} (build it with "
                            f"`tfds build data_builders/{name} --data_dir={data_dir}`)")
  return str(epath.Path(infos[-1]).parent)


def dataset_tokenizer(name: str, data_dir: str) -> str:
  """Path of the tokenizer.model a dataset build stored beside its records (the demo's)."""
  path = epath.Path(dataset_dir(name, data_dir)) / "tokenizer.model"
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist: dataset '{name}' ships no tokenizer; "
                            "set config.tokenizer to a sentencepiece model")
  return str(path)


def _label_fields(example) -> dict[str, Any]:
  """METADATA_FIELDS of a serialized record (a tf.train.Example), frames left undecoded."""
  out = {}
  for name in METADATA_FIELDS:
    feature = example.features.feature[name]
    values = getattr(feature, feature.WhichOneof("kind")).value
    out[name] = list(values) if name == "dimensions" else values[0]
  return out


def open_split(name: str, split: str, data_dir: str):
  """(records, metadata) of a split of a built dataset under data_dir."""
  import tensorflow_datasets as tfds  # Heavy (TensorFlow); only built datasets need it.
  builder = tfds.builder_from_directory(dataset_dir(name, data_dir))
  records = builder.as_data_source(split=split)
  # Planning reads every record's labels; skip decoding the PNG frames for that.
  raw = builder.as_data_source(
      split=split, deserialize_method=tfds.decode.DeserializeMethod.DESERIALIZE_NO_DECODE)
  return records, read_metadata([_label_fields(raw[i]) for i in range(len(raw))])


def example_spec(model_config: Mapping[str, Any], num_frames: int, text_len: int,
                 batch_size: int) -> dict[str, Any]:
  """Shapes and dtypes of a batch as the pipelines produce it (ShapeDtypeStructs)."""
  import jax  # Only for ShapeDtypeStruct; the pipeline itself runs in NumPy.
  b, m, l = batch_size, num_frames, text_len
  r, k, p = model_config["ctx_res"], model_config["num_patches"], model_config["patch_size"]
  shapes = dict(
      ctx=((b, 2, m, r, r, 3), np.uint8), patches=((b, 2, m, k, p, p, 3), np.uint8),
      video_mask=((b, 2), np.bool_), mos=((b, 2), np.float32),
      is_original=((b, 2), np.bool_), crf=((b, 2), np.int32), index=((b, 2), np.int32),
      dims=((b, 2, len(features.DIMENSIONS)), np.float32), pair_kind=((b,), np.int32),
      task=((b,), np.int32), truncated=((b,), np.bool_),
      valid=((b,), np.bool_), text=((b, l), np.int32), input_mask=((b, l), np.bool_),
      mask_ar=((b, l), np.int32), mask_loss=((b, l), np.int32))
  return {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in shapes.items()}


class PlanPair(grain.transforms.RandomMap):
  """anchor index -> plan dict(a, b, kind, task, text_seed)."""

  def __init__(self, meta: Metadata, mix: Mix, level_rate: float, reason_rate: float = 0.0):
    self.meta = meta
    self.probabilities = mix.probabilities()
    self.level_rate = level_rate
    self.reason_rate = reason_rate

  def random_map(self, anchor, rng: np.random.Generator):
    meta = self.meta
    anchor = int(anchor)
    kind = PairKind(int(rng.choice(len(PairKind), p=self.probabilities)))
    if kind == PairKind.LADDER:
      anchor, b = self._ladder_pair(anchor, rng)
      kind = PairKind.LADDER if b is not None else PairKind.SAME_SOURCE
    a, b = anchor, anchor if kind != PairKind.LADDER else b
    if kind == PairKind.SAME_SOURCE:
      others = meta.by_source[meta.source_ids[anchor]]
      others = others[meta.crf[others] != meta.crf[anchor]]
      if len(others):
        b = int(rng.choice(others))
      else:
        kind = PairKind.CROSS
    if kind == PairKind.CROSS:
      others = np.flatnonzero(meta.source_ids != meta.source_ids[anchor])
      if len(others):
        b = int(rng.choice(others))
      else:
        kind = PairKind.SINGLE
    # A fair coin per pair decides which slot the anchor takes: the draws above do not make
    # "the better video is in A" a 50/50 event (an unprocessed source as anchor is better
    # than every partner), and a decoder would learn the slot instead of the videos.
    if kind != PairKind.SINGLE and rng.random() < 0.5:
      a, b = b, a
    if (kind == PairKind.SINGLE and self.reason_rate
        and np.isfinite(meta.dimensions[a]).any() and rng.random() < self.reason_rate):
      task = Task.REASON
    elif kind == PairKind.SINGLE:
      has_description = bool(meta.descriptions[a])
      task = Task.DESCRIBE if has_description and rng.random() >= self.level_rate \
          else Task.LEVEL
    elif np.isfinite(meta.dimensions[[a, b]]).all():
      task = Task.COMPARE
    else:
      task = Task.DESCRIBE if meta.descriptions[a] else Task.LEVEL
    return dict(a=a, b=b, kind=int(kind), task=int(task),
                text_seed=int(rng.integers(2**31)), view_seed=int(rng.integers(2**31)))

  def _ladder_pair(self, anchor: int, rng: np.random.Generator):
    """(anchor, partner) of a ladder pair, or (anchor, None) when its source has no two
    CRF variants within LADDER_SPAN."""
    crf = self.meta.crf
    rungs = self.meta.by_source[self.meta.source_ids[anchor]]
    rungs = rungs[crf[rungs] >= 0]
    if crf[anchor] < 0 and len(rungs):
      anchor = int(rng.choice(rungs))
    near = rungs[(crf[rungs] != crf[anchor]) & (np.abs(crf[rungs] - crf[anchor]) <= LADDER_SPAN)]
    if crf[anchor] < 0 or not len(near):
      return anchor, None
    return anchor, int(rng.choice(near))


def example_text(meta: Metadata, plan: Mapping[str, int]) -> tuple[str, str]:
  """(prompt, target) of a plan."""
  a, b, task = plan["a"], plan["b"], Task(plan["task"])
  if task == Task.LEVEL:
    return instructions.LEVEL_PROMPT, instructions.level_answer(float(meta.mos[a]))
  if task == Task.DESCRIBE:
    return DESCRIBE_PROMPT, meta.descriptions[a]
  dims = lambda i: {name: value for name, value in zip(features.DIMENSIONS,
                                                       meta.dimensions[i].tolist())
                    if math.isfinite(value)}
  if task == Task.REASON:
    return instructions.GRPO_PROMPT, instructions.grpo_target(
        dims(a), float(meta.mos[a]), rng=np.random.default_rng(plan["text_seed"]))
  return instructions.compare(dims(a), float(meta.mos[a]), dims(b), float(meta.mos[b]),
                              rng=np.random.default_rng(plan["text_seed"]))


def frame_picks(stored: int, wanted: int) -> np.ndarray:
  """Segment-centre subset of the stored key frames, e.g. 8 stored, 5 wanted -> [0 2 4 5 7]."""
  if wanted > stored:
    raise ValueError(f"the dataset stores {stored} key frames per video; the config asks "
                     f"for {wanted}. Rebuild the dataset with more key frames.")
  return video.segment_centres(stored, wanted)


def scale_contrast(frames: np.ndarray, factor: float) -> np.ndarray:
  """uint8 frames [M, H, W, 3] with each frame's deviation from its channel means times
  `factor`, rounded: the same scene with less contrast (a hazy day, a microscope).

  e.g. a frame of values 100 and 200, factor 0.5 -> 125 and 175.
  """
  x = frames.astype(np.float32)
  mean = x.mean(axis=(1, 2), keepdims=True)
  return np.clip(np.rint(mean + factor * (x - mean)), 0, 255).astype(np.uint8)


class LoadExample(grain.transforms.Map):
  """plan -> model example: frames preprocessed for both paths, text tokenized."""

  def __init__(self, records, meta: Metadata, tokenizer: tokenizer_lib.Tokenizer,
               model_config: Mapping[str, Any], num_frames: int, text_len: int,
               augment: bool = False, low_contrast: float | None = None):
    self.records = records
    self.meta = meta
    self.tokenizer = tokenizer
    self.model_config = dict(model_config)
    self.num_frames = num_frames
    self.text_len = text_len
    self.augment = augment
    self.low_contrast = low_contrast

  def _video(self, index: int, view_seed: int | None):
    frames = np.asarray(self.records[index]["frames"])
    frames = frames[frame_picks(len(frames), self.num_frames)]
    view_rng = np.random.default_rng(view_seed) if self.augment else None
    if self.augment and self.low_contrast is not None:
      # Its own stream, so that the flips and positions are those of augment alone.
      contrast_rng = np.random.default_rng([view_seed, 1])
      if contrast_rng.random() < 0.5:
        frames = scale_contrast(frames, np.exp(contrast_rng.uniform(
            np.log(self.low_contrast), 0.0)))
    ctx, patches = video.preprocess(frames, self.model_config, view_rng)
    return np.asarray(ctx), np.asarray(patches)

  def map(self, plan):
    a, b = plan["a"], plan["b"]
    view_seed = plan.get("view_seed")
    ctx_a, patches_a = self._video(a, view_seed)
    ctx_b, patches_b = (ctx_a, patches_a) if b == a else self._video(b, view_seed)
    prompt, target = example_text(self.meta, plan)
    text, truncated = tokenizer_lib.encode_example(self.tokenizer, prompt, target,
                                                   self.text_len)
    meta = self.meta
    return dict(
        ctx=np.stack([ctx_a, ctx_b]), patches=np.stack([patches_a, patches_b]),
        video_mask=np.array([True, plan["kind"] != PairKind.SINGLE]),
        mos=meta.mos[[a, b]], is_original=meta.is_original[[a, b]], crf=meta.crf[[a, b]],
        index=np.array([a, b], np.int32), dims=meta.dimensions[[a, b]],
        pair_kind=np.int32(plan["kind"]),
        task=np.int32(plan["task"]), truncated=np.bool_(truncated),
        valid=np.bool_(plan.get("valid", True)),
        **text)


def _check_shard(shard_index: int, shard_count: int) -> None:
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard {shard_index} of {shard_count}")


# Batches read ahead by threads in each process that reads. grain's default (500 batches on
# 16 threads) loads hundreds of batches a run never uses and takes the cores from the train
# step while it fills (bench/pipeline.py measures both); a few in flight keep a step fed.
READ_AHEAD = grain.ReadOptions(num_threads=4, prefetch_buffer_size=4)


def _host_batches(ds: grain.MapDataset, batch_size: int, shard_index: int,
                  shard_count: int,
                  read_ahead: grain.ReadOptions = READ_AHEAD) -> grain.IterDataset:
  """This host's rows of every global batch of an endless per-example stream.

  Host p of P gets rows [p * b, (p + 1) * b) of each global batch of P * b examples, so
  the global batches do not depend on how many hosts share them (a 2-process run sees
  exactly the batches of a 1-process run). Grain datasets are lazy: a host loads only its
  own rows.
  """
  _check_shard(shard_index, shard_count)
  return ds.batch(batch_size)[shard_index::shard_count].to_iter_dataset(read_ahead)


def _prefetch(ds: grain.IterDataset, num_workers: int) -> grain.IterDataset:
  if num_workers <= 0:
    return ds
  return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))


def train_dataset(records, meta: Metadata, tokenizer, *, model_config, num_frames: int,
                  text_len: int, batch_size: int, seed: int, mix: Mix = Mix(),
                  level_rate: float = 0.3, reason_rate: float = 0.0, augment: bool = False,
                  low_contrast: float | None = None,
                  num_workers: int = 0, shard_index: int = 0, shard_count: int = 1,
                  read_ahead: grain.ReadOptions = READ_AHEAD) -> grain.IterDataset:
  """Endless, shuffled, batched training examples: this host's `batch_size` rows of each
  global batch of `batch_size * shard_count` (see _host_batches); `augment`: random flips
  and patch positions (module docstring)."""
  ds = grain.MapDataset.range(len(meta)).shuffle(seed=seed).repeat()
  ds = ds.random_map(PlanPair(meta, mix, level_rate, reason_rate), seed=seed)
  ds = ds.map(LoadExample(records, meta, tokenizer, model_config, num_frames, text_len,
                          augment, low_contrast))
  return _prefetch(_host_batches(ds, batch_size, shard_index, shard_count, read_ahead),
                   num_workers)


def _pad_batch(batch, batch_size: int):
  """Pads a final short batch to batch_size with copies of its first row, valid = False."""
  n = len(batch["valid"])
  if n == batch_size:
    return batch
  pad = lambda x: np.concatenate([x, np.repeat(x[:1], batch_size - n, axis=0)])
  batch = {k: pad(v) for k, v in batch.items()}
  batch["valid"][n:] = False
  return batch


def eval_dataset(records, meta: Metadata, tokenizer, *, model_config, num_frames: int,
                 text_len: int, batch_size: int, num_workers: int = 0, shard_index: int = 0,
                 shard_count: int = 1) -> grain.IterDataset:
  """Every record of this host's shard once, in order, as a single video with the level
  prompt (so the level-token score is read). `valid` marks real rows: the last batch is
  padded, and so is a shard one record short of the others, so that every host runs the
  same number of batches (the evaluation's collectives need all of them)."""
  _check_shard(shard_index, shard_count)
  n = len(meta)
  per_host = -(-n // shard_count)
  ds = grain.MapDataset.range(per_host * shard_count)[shard_index::shard_count]
  ds = ds.map(lambda i: dict(a=min(int(i), n - 1), b=min(int(i), n - 1),
                             kind=int(PairKind.SINGLE), task=int(Task.LEVEL), text_seed=0,
                             valid=int(i) < n))
  ds = ds.map(LoadExample(records, meta, tokenizer, model_config, num_frames, text_len))
  ds = ds.to_iter_dataset().batch(batch_size, drop_remainder=False)
  ds = ds.map(functools.partial(_pad_batch, batch_size=batch_size))
  return _prefetch(ds, num_workers)


class LoadPerturbedPair(grain.transforms.RandomMap):
  """record index -> the video in slot A and a temporally perturbed copy in slot B.

  The perturbation (one of `kinds`, at `strength`) permutes the M picked key frames, so
  both slots show the same content and differ in time only.
  """

  def __init__(self, records, meta: Metadata, model_config: Mapping[str, Any],
               num_frames: int, kinds: Sequence[perturb.Perturbation], strength: float):
    if not kinds:
      raise ValueError("GRPO needs at least one perturbation kind for the temporal reward")
    self.records = records
    self.meta = meta
    self.model_config = dict(model_config)
    self.num_frames = num_frames
    self.kinds = tuple(kinds)
    self.strength = strength

  def random_map(self, index, rng: np.random.Generator):
    index = int(index)
    frames = np.asarray(self.records[index]["frames"])
    frames = frames[frame_picks(len(frames), self.num_frames)]
    kind = int(rng.integers(len(self.kinds)))
    ctx, patches = (np.asarray(x) for x in video.preprocess(frames, self.model_config))
    # Perturbing preprocessed frames equals preprocessing perturbed ones (per-frame ops).
    _, order = perturb.perturb(np.arange(self.num_frames), self.kinds[kind], rng,
                               self.strength)
    return dict(ctx=np.stack([ctx, ctx[order]]), patches=np.stack([patches, patches[order]]),
                mos=self.meta.mos[index],
                index=np.int32(index), perturbation=np.int32(kind),
                perturbed_order=order.astype(np.int32))


def grpo_dataset(records, meta: Metadata, *, model_config, num_frames: int,
                 batch_size: int, seed: int, kinds: Sequence[perturb.Perturbation],
                 strength: float, num_workers: int = 0, shard_index: int = 0,
                 shard_count: int = 1) -> grain.IterDataset:
  """Endless, shuffled batches of (video, perturbed video) for GRPO rollouts (per host).

  Batch: ctx uint8[B, 2, M, R, R, 3], patches uint8[B, 2, M, K, P, P, 3] (slot 1 holds
  the perturbed frames), mos float32[B], index int32[B], perturbation int32[B] (index into
  `kinds`), perturbed_order int32[B, M] (which key frame each perturbed slot shows).
  """
  ds = grain.MapDataset.range(len(meta)).shuffle(seed=seed).repeat()
  ds = ds.random_map(LoadPerturbedPair(records, meta, model_config, num_frames, kinds,
                                       strength), seed=seed)
  return _prefetch(_host_batches(ds, batch_size, shard_index, shard_count), num_workers)
