"""crf_variants: every source video re-encoded with libx264 at a ladder of CRFs.

--manual_dir is a folder of source videos (.mp4 .mov .avi .mkv .webm .m4v ..., searched
recursively), optionally with `mos.csv` (columns `path`, `mos`; path relative to the folder,
with or without extension; MOS on 1..5) giving each source's MOS. Without mos.csv every
source counts as pristine with MOS 5.0. With it, a source that it does not list, or lists
with an empty / NaN / out-of-range MOS, is skipped (and reported), never guessed.

For each source, one record of the source itself and one per CRF of the ladder:

  source   crf = NO_CRF (-1); mos = its MOS (5.0 without mos.csv); mos_native = the
           mos.csv value (NaN without); is_original True only when mos.csv gave a MOS;
           VMAF / SSIM / PSNR NaN; bitrate of the source file; key frames of the source.
  variant  crf; `video.encode_x264(source, crf)` (yuv420p, preset `preset`); VMAF
           (vmaf_v0.6.1), SSIM, PSNR of the variant against the source
           (`video.quality_metrics`); bitrate of the encoded file; key frames read from
           the ENCODED variant (what the model must learn to see); is_original False;
           mos_native NaN; mos = pseudo-MOS (below).

All records of one source share `source_id` = the source's path relative to --manual_dir
without extension ('clips/beach'); `id` is source_id for the source and
'<source_id>@crf<NN>' for a variant. height / width are the source's displayed size (a
variant of an odd-sized source, padded to even size by the encoder, has its key frames
cropped back to it).

Pseudo-MOS: `features.pseudo_mos(source_mos, v)` = 1 + (source_mos - 1) * v / 100, where v
is the lowest VMAF at this CRF or any lower CRF of the ladder (a running minimum along the
ladder). VMAF itself is stored as measured; the running minimum only removes the small
non-monotone wiggles VMAF has near 100, so pseudo-MOS never rises with CRF: the paper's
assumption that a higher-CRF variant is not better than a lower-CRF one holds in the labels.

The ladder: default CRF 13, 15, ..., 51 (20 levels). libx264 (8-bit) takes CRF 0..51 and
clamps anything above 51 to 51 (CRF 53 gives byte-identical output to CRF 51), so the
paper's 15..53 ladder cannot be made with libx264; a ladder with a CRF outside 0..51 or a
repeated CRF is refused when the config is made. After encoding, the variants of each
source are compared byte for byte and the build fails if two are identical (a collapsed
ladder: the encoder ignored the CRF).

Splits: train / test by source (seeded shuffle of the usable sources, `test_share` of them,
at least one, to test; a source and all its variants are in one split only). With
test_share 0 or a single source there is only `train`.

Bad inputs — not a video, corrupt or truncated, audio only, zero or one frame, unreadable,
a missing or NaN MOS in mos.csv, a mos.csv row without a file — are skipped and listed with
the reason in `skipped_files_crf_variants.tsv` next to the built dataset (path<TAB>reason),
and so is a source whose reading, encoding or metrics fail in any other way (the reason
then names the exception's type); only a collapsed ladder and Ctrl-C stop the build.
The build fails once more than `max_skip_share` of the inputs are skipped (the report is
then written to <data_dir>/crf_variants/<config>/). Files with other extensions (.txt,
.json, images, ...) are not inputs; they are listed once in the log.

Encodes run in a temporary folder per source (under $TMPDIR), removed when the source is
done, also on failure. A progress bar counts sources.

Command line (the BuilderConfig fields crfs, num_frames (M, 8), test_share (0.1), seed (0),
max_skip_share (0.1), preset ('medium'), num_workers (1) are set with a JSON --config, whose
name must not be 'default' and names the output folder):

  tfds build data_builders/crf_variants --manual_dir=DIR
  tfds build data_builders/crf_variants --manual_dir=DIR \\
      --config='{"name": "short", "crfs": [18, 30, 45], "num_frames": 3}'
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import shutil
import tempfile

import numpy as np
import tensorflow_datasets as tfds

from cpllm.data import build_utils
from cpllm.data import features
from cpllm.data import video

DEFAULT_CRFS = tuple(range(13, 52, 2))  # 13, 15, ..., 51: 20 levels
MOS_FILE = "mos.csv"
PRISTINE_MOS = 5.0


class CollapsedLadder(RuntimeError):
  """Two CRFs of the ladder gave identical files."""


def check_ladder(crfs) -> tuple[int, ...]:
  """The ladder as a sorted tuple of ints; ValueError explaining what is wrong."""
  if isinstance(crfs, (str, bytes)) or not hasattr(crfs, "__iter__"):
    raise ValueError(f"crfs must be a list of integers, got {crfs!r}")
  crfs = list(crfs)
  if not crfs:
    raise ValueError("crfs is empty: give at least one CRF")
  for c in crfs:
    if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
      raise ValueError(f"CRF {c!r} is not an integer (crfs={crfs})")
  bad = [int(c) for c in crfs if not 0 <= c <= video.X264_MAX_CRF]
  if bad:
    raise ValueError(
        f"CRF {bad} outside libx264's range 0..{video.X264_MAX_CRF} (crfs={crfs}). libx264 "
        f"clamps any CRF above {video.X264_MAX_CRF} to {video.X264_MAX_CRF}: CRF 53 gives a "
        f"byte-identical file to CRF {video.X264_MAX_CRF}, so such a ladder collapses and "
        "its top variants would be duplicates labelled as different qualities. The paper's "
        "15..53 ladder cannot be made with libx264; use the default 13, 15, ..., 51 "
        "(also 20 levels).")
  dups = sorted({int(c) for c in crfs if crfs.count(c) > 1})
  if dups:
    raise ValueError(f"CRF {dups} repeated in crfs={crfs}: each level must be distinct, "
                     "or the ladder holds identical variants")
  return tuple(sorted(int(c) for c in crfs))


@dataclasses.dataclass(eq=False)
class CrfVariantsConfig(tfds.core.BuilderConfig):
  """A CRF ladder and build options; see the module docstring."""
  crfs: tuple[int, ...] = DEFAULT_CRFS
  num_frames: int = 8
  test_share: float = 0.1
  seed: int = 0
  max_skip_share: float = 0.1
  preset: str = "medium"
  num_workers: int = 1

  def __post_init__(self):
    self.crfs = check_ladder(self.crfs)
    if isinstance(self.num_frames, bool) or not isinstance(self.num_frames, int) \
        or self.num_frames < 1:
      raise ValueError(f"num_frames must be a positive int, got {self.num_frames!r}")
    if not 0.0 <= self.test_share < 1.0:
      raise ValueError(f"test_share must be in [0, 1), got {self.test_share!r}")
    if not 0.0 <= self.max_skip_share <= 1.0:
      raise ValueError(f"max_skip_share must be in [0, 1], got {self.max_skip_share!r}")
    if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) \
        or self.num_workers < 1:
      raise ValueError(f"num_workers must be a positive int, got {self.num_workers!r}")


@dataclasses.dataclass
class _Source:
  source_id: str
  path: str
  mos: float
  mos_native: float  # NaN without mos.csv
  info: video.VideoInfo


@dataclasses.dataclass
class _Variant:
  crf: int
  path: str
  vmaf: float
  ssim: float
  psnr: float
  kbps: float


@dataclasses.dataclass
class _Encoded:
  """What the background work for one source produced (see `_encode`)."""
  source: _Source
  frames: np.ndarray
  kbps: float
  variants: list
  tmp: str  # the folder holding the variants; removed by the consumer


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _fit(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """Key frames of a variant at the source's size: crop the encoder's even-size padding."""
  h, w = frames.shape[1:3]
  if (h, w) == (height, width):
    return frames
  if (h, w) == (height + height % 2, width + width % 2):
    return np.ascontiguousarray(frames[:, :height, :width])
  raise video.VideoError(f"variant frames are {w}x{h}, the source {width}x{height}")


class CrfVariants(tfds.core.GeneratorBasedBuilder):
  """libx264 CRF-ladder variants of source videos, scored with VMAF against the source."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  # One predefined config: `tfds build` without --config builds every predefined config.
  BUILDER_CONFIGS = [
      CrfVariantsConfig(name="default", description="CRF 13, 15, ..., 51 (20 levels), M=8."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Pass a folder of source videos (.mp4 .mov .avi .mkv .webm ..., sub-folders searched) as
  --manual_dir, optionally with mos.csv (path,mos on 1..5) giving their MOS; without it
  every source counts as pristine (MOS 5.0). See data_builders/README.md.
  """

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format, **kwargs)
    build_utils.use_array_record_by_default(self, file_format)
    self._final_dir, self._config_dir = build_utils.final_dirs(self)
    self._skips = None
    self._total = 0

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        features=features.video_features(cfg.num_frames),
        supervised_keys=None,
        description=(f"Sources and their libx264 variants at CRF {list(cfg.crfs)}, "
                     f"{cfg.num_frames} key frames each, VMAF/SSIM/PSNR against the source, "
                     "pseudo-MOS 1 + (source MOS - 1) * VMAF / 100 (running minimum of "
                     "VMAF along the ladder)."),
    )

  # ------------------------------------------------------------------------ inputs

  def _scan(self, manual_dir: str) -> list[_Source]:
    """Usable sources; every unusable input recorded in self._skips."""
    cfg = self.builder_config
    skips = self._skips
    media = build_utils.FileIndex(
        manual_dir, build_utils.VIDEO_EXTENSIONS + build_utils.AUDIO_EXTENSIONS)
    ignored = []
    for dirpath, dirnames, filenames in os.walk(manual_dir):
      dirnames[:] = [d for d in dirnames if not d.startswith(".")]
      for f in filenames:
        rel = os.path.relpath(os.path.join(dirpath, f), manual_dir).replace(os.sep, "/")
        ext = os.path.splitext(f)[1].lower()
        if not f.startswith(".") and rel != MOS_FILE and ext not in media.extensions:
          ignored.append(rel)
    if ignored:
      print(f"crf_variants: not inputs (extension not a video container): {len(ignored)} "
            f"file(s): {', '.join(sorted(ignored)[:10])}" + (" ..." if len(ignored) > 10
                                                             else ""), flush=True)
    self._total = len(media.files)

    # Source ids: path without extension, unless two files differ only in extension.
    stems = {}
    for rel in media.files:
      stems.setdefault(os.path.splitext(rel)[0], []).append(rel)
    source_ids = {rel: (stem if len(rels) == 1 else rel)
                  for stem, rels in stems.items() for rel in rels}

    mos_of = {}  # rel -> native MOS (NaN when the row's value is missing)
    flagged = set()  # files already recorded as skipped
    mos_path = os.path.join(manual_dir, MOS_FILE)
    has_mos = os.path.isfile(mos_path)
    if has_mos:
      rows, header = build_utils.read_table(mos_path)
      path_col = build_utils.pick_column(header, ["path"], mos_path, "path")
      mos_col = build_utils.pick_column(header, ["mos"], mos_path, "MOS")
      for i, row in enumerate(rows):
        where = f"{MOS_FILE} row {i + 2}"
        try:
          rel = media.lookup(row.get(path_col, ""))
        except ValueError as e:
          self._total += 1
          skips.record(f"{row.get(path_col, '')} ({where})", f"missing file: {e}")
          continue
        if rel in mos_of:
          if rel not in flagged:
            skips.record(media.path(rel), f"bad label: listed twice in {MOS_FILE} ({where})")
            flagged.add(rel)
          mos_of[rel] = math.nan
          continue
        mos_of[rel] = build_utils.parse_float(row.get(mos_col, ""))

    candidates = []  # (rel, native MOS, MOS) of the files whose label is fine
    for rel in media.files:
      path = media.path(rel)
      if has_mos:
        native = mos_of.get(rel)
        if native is None:
          skips.record(path, f"bad label: no MOS: not listed in {MOS_FILE}")
          continue
        if math.isnan(native):
          if rel not in flagged:
            skips.record(path, f"bad label: MOS missing or NaN in {MOS_FILE}")
          continue
        try:
          mos = features.to_unit_scale(native, features.MOS_RANGES["unit"])
        except ValueError as e:
          skips.record(path, f"bad label: {e} ({MOS_FILE})")
          continue
      else:
        native, mos = math.nan, PRISTINE_MOS
      candidates.append((rel, native, mos))

    sources = []
    bar = tfds.core.utils.tqdm(total=len(candidates), unit=" files",
                               desc="crf_variants: checking sources")
    probes = build_utils.map_ordered(lambda c: video.probe(media.path(c[0])), candidates,
                                     cfg.num_workers)  # any failure: that file's skip
    with bar, contextlib.closing(probes):
      for (rel, native, mos), info, error in probes:
        bar.update(1)
        path = media.path(rel)
        if error is not None:
          skips.record(path, f"unreadable video: {build_utils.failure_reason(error, path)}")
        elif info.num_frames < 2:
          skips.record(path, f"too short: {info.num_frames} frame; a compression ladder "
                             "needs a moving video")
        else:
          sources.append(_Source(source_ids[rel], path, mos, native, info))
    print(f"crf_variants: {len(sources)} usable sources of {len(media.files)} media files "
          f"in {manual_dir}" + (f" ({MOS_FILE}: yes)" if has_mos else
                                f" (no {MOS_FILE}: MOS {PRISTINE_MOS} each)"), flush=True)
    return sources

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    manual_dir = os.path.abspath(os.fspath(dl_manager.manual_dir))
    if not os.path.isdir(manual_dir):
      raise FileNotFoundError(f"--manual_dir {manual_dir} is not a folder")
    self._skips = build_utils.SkipLog("crf_variants", cfg.max_skip_share)
    sources = self._scan(manual_dir)
    if not self._total:
      raise FileNotFoundError(
          f"no video files in {manual_dir} (looked for "
          f"{', '.join(build_utils.VIDEO_EXTENSIONS)} in it and its sub-folders)")
    self._skips.check(self._total, self._config_dir)
    if not sources:
      self._skips.finish(self._total, None, self._config_dir)
      raise build_utils.TooManySkipped(f"no usable source video in {manual_dir}")
    by_id = {s.source_id: s for s in sources}
    train, test = build_utils.seeded_split(list(by_id), cfg.test_share, cfg.seed)
    print(f"crf_variants: {len(train)} train / {len(test)} test sources, ladder "
          f"{list(cfg.crfs)}: {len(sources) * (len(cfg.crfs) + 1)} records", flush=True)
    splits = {"train": [by_id[i] for i in train]}
    if test:
      splits["test"] = [by_id[i] for i in test]
    return {name: self._generate_examples(name, items) for name, items in splits.items()}

  # ---------------------------------------------------------------------- encoding

  def _encode(self, source: _Source) -> _Encoded:
    """All encodes and measurements of one source (runs in a worker thread).

    Everything that can fail on a bad input happens here, before anything is written, so
    a source is either complete (source + every variant) or skipped as a whole.
    """
    cfg = self.builder_config
    tmp = tempfile.mkdtemp(prefix="crf_variants_")
    try:
      frames, info = video.read_key_frames(source.path, cfg.num_frames)
      kbps = video.bitrate_kbps(source.path)
      digests = {}
      variants = []
      for crf in cfg.crfs:
        dst = os.path.join(tmp, f"crf{crf:02d}.mp4")
        video.encode_x264(source.path, dst, crf, preset=cfg.preset)
        digest = _sha256(dst)
        if digest in digests:
          raise CollapsedLadder(
              f"{source.path}: the ladder collapsed: CRF {digests[digest]} and CRF {crf} "
              "gave byte-identical files, so the encoder did not apply the CRF (libx264 "
              f"clamps CRF above {video.X264_MAX_CRF}; a wrapper or ffmpeg build may ignore "
              "-crf). Variants labelled with different qualities must differ; fix the "
              "encoder or the ladder.")
        digests[digest] = crf
        metrics = video.quality_metrics(source.path, dst)
        variants.append(_Variant(crf, dst, float(metrics["vmaf"]), float(metrics["ssim"]),
                                 float(metrics["psnr"]), video.bitrate_kbps(dst)))
      return _Encoded(source, frames, kbps, variants, tmp)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise

  def _examples(self, enc: _Encoded):
    """(key, example) of the source and of each variant, in CRF order."""
    cfg = self.builder_config
    src, info = enc.source, enc.source.info
    base = dict(source_id=src.source_id, fps=info.fps, duration=info.duration,
                height=info.height, width=info.width)
    example = features.empty_measurements()
    example.update(base, id=src.source_id, frames=enc.frames, mos=src.mos,
                   mos_native=src.mos_native, is_original=not math.isnan(src.mos_native),
                   bitrate_kbps=enc.kbps)
    yield src.source_id, example
    floor = math.inf
    for v in enc.variants:
      floor = min(floor, v.vmaf)
      try:
        frames, _ = video.read_key_frames(v.path, cfg.num_frames)
        frames = _fit(frames, info.height, info.width)
      except video.VideoError as e:  # our own x264 output: not a bad input but a bug
        raise RuntimeError(f"{src.path}: cannot read back its CRF {v.crf} variant: {e}") from e
      vid = f"{src.source_id}@crf{v.crf:02d}"
      example = features.empty_measurements()
      example.update(base, id=vid, frames=frames, mos=features.pseudo_mos(src.mos, floor),
                     is_original=False, crf=v.crf, vmaf=v.vmaf, ssim=v.ssim, psnr=v.psnr,
                     bitrate_kbps=v.kbps)
      yield vid, example

  def _generate_examples(self, split, sources):
    cfg = self.builder_config
    skips = self._skips
    count = 0
    bar = tfds.core.utils.tqdm(total=len(sources), unit=" sources",
                               desc=f"crf_variants {split} ({len(cfg.crfs)} CRFs each)")
    work = build_utils.map_ordered(
        self._encode, sources, cfg.num_workers,
        discard=lambda enc: shutil.rmtree(enc.tmp, ignore_errors=True))
    with bar, contextlib.closing(work):
      for source, enc, error in work:
        if isinstance(error, CollapsedLadder):  # the encoder's fault, not this source's
          raise error
        if error is not None:
          skips.record(source.path, "encode/metrics failed: "
                       + build_utils.failure_reason(error, source.path))
          bar.update(1)
          skips.check(self._total, self._config_dir)
          continue
        try:
          for key, example in self._examples(enc):
            count += 1
            yield key, example
        finally:
          shutil.rmtree(enc.tmp, ignore_errors=True)
        bar.update(1)
    if not count:
      raise build_utils.TooManySkipped(
          f"crf_variants: split {split!r} has no usable source: all {len(sources)} were "
          "skipped; last reasons: " + "; ".join(f"{p}: {r}" for p, r in skips.entries[-5:]))

  def _download_and_prepare(self, dl_manager, download_config=None):
    super()._download_and_prepare(dl_manager, download_config)
    if self._skips is not None:
      self._skips.finish(self._total, os.fspath(self.data_dir), self._config_dir)
      stale = os.path.join(self._config_dir, "skipped_files_crf_variants.tsv")
      if os.path.exists(stale):
        os.remove(stale)  # the report of an earlier, failed attempt
