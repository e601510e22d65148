"""mos_videos: real subjective video-quality datasets read from --manual_dir.

One BuilderConfig per dataset; every record has the layout of cpllm/data/features.py
(`video_features(M)`): M key frames (PNG, uniform segment-centre sampling by
`video.read_key_frames`), `mos` on 1..5 (linear map of the native scale,
`features.to_unit_scale`), `mos_native`, `is_original` True, fps / duration / height /
width from the file, `bitrate_kbps` of the file's video stream, crf = NO_CRF, VMAF / SSIM /
PSNR / dimension scores NaN, description ''. `id` = `source_id` = the name the label file
gives, without extension (e.g. 'ia-batch1/xyz' for LSVQ, '3240926995' for KoNViD-1k).

Label files and columns (names are matched ignoring case, spaces and underscores, so
'MOS full' = 'mos_full'; the label file is looked for in --manual_dir and up to two folders
below, or given with `label_file`):

  lsvq     labels_train_test.csv (official PatchVQ release): `name` (no extension, may hold
           a sub-folder: 'ia-batch1/xyz', 'yfcc-batch1/123'), `mos` (0..100), `is_test`
           (True/False or 1/0); the other columns (p1..p3, height, width, mos_p1, ...,
           frame_number, is_valid) are ignored. labels_test_1080p.csv, same columns, if
           present. Splits (official): train (is_test False), test (is_test True),
           test_1080p (all of labels_test_1080p.csv). Videos <name>.mp4.
  konvid   KoNViD_1k_mos.csv: `flickr_id`, `mos` (1..5); or KoNViD_1k_attributes.csv with
           `flickr_id` (or `file_name`) and `MOS`. Videos <flickr_id>.mp4
           (KoNViD_1k_videos/).
  livevqc  a CSV export of data.mat: one of LIVE_VQC.csv, LIVE-VQC.csv, LIVEVQC.csv,
           livevqc.csv, data.csv, labels.csv, mos.csv with a name column (`video_list`,
           `File`, `file_name`, `filename`, `name`, `video` or `video_name`; 'A001.mp4' or
           'A001') and `mos` (0..100). Without a CSV, data.mat itself is read (scipy:
           variables `video_list`, `mos`; MATLAB v5 files, not v7.3/HDF5). Videos in Video/.
  ytugc    original_videos_MOS_for_YouTube_UGC_dataset.csv (the 'MOS' sheet of the
           official .xlsx saved as CSV): `vid` (e.g. 'Gaming_1080P-0ce6'), `MOS full`
           (1..5); the chunk columns are ignored. Videos <vid>.mkv (originals, preferred),
           <vid>.mp4 or <vid>_orig.mp4 (the H.264 copies), in any sub-folder layout
           (e.g. original_videos/<category>/<resolution>/).
  csv      a generic table: mos.csv or labels.csv (or the only .csv in --manual_dir, or
           `label_file`) with `path` (relative to --manual_dir or to any folder below it,
           or absolute; with or without extension) and `mos`. The native scale is 1..5
           unless given: per row by optional `mos_min`, `mos_max` columns, or for all rows
           by the config fields `mos_min`, `mos_max`. An optional `split` column
           (train / test / any lower-case name) assigns splits.

Splits: the official ones where they exist (LSVQ, or a `split` column); otherwise a single
`train` split, or, with `test_share` > 0, a seeded split by video into train / test
(`seed`; every record is its own source, so no source is in both splits).

A name in a label file is resolved to a file by `build_utils.FileIndex`: with or without
extension, in any sub-folder of --manual_dir (e.g. LSVQ's ia-batch*/ and yfcc-batch*/, or a
flattened copy), any of .mp4 .mkv .mov .avi .webm .m4v ... Rows whose file is missing or
unreadable (corrupt, truncated, audio only, a single frame, decoding past
`video.DECODE_TIMEOUT`, or any failure nobody anticipated: the reason names its type),
whose MOS is missing, NaN or outside the dataset's range, or that repeat an id are skipped
and listed with the reason in `skipped_files_mos_videos.tsv` next to the built dataset;
the build fails when more than `max_skip_share` of the rows are skipped (the report is then
written to the config folder, <data_dir>/mos_videos/<config>/), and otherwise only Ctrl-C
stops it.

Options (BuilderConfig fields) and the command line:

  tfds build data_builders/mos_videos --config=lsvq --manual_dir=/data/LSVQ
  tfds build data_builders/mos_videos --manual_dir=/data/LSVQ \\
      --config='{"name": "lsvq_m5", "dataset": "lsvq", "num_frames": 5, "max_skip_share": 0.02}'

A JSON --config makes a config on the fly; its name must differ from the predefined ones
(lsvq, konvid, livevqc, ytugc, csv) and names the output folder. Fields: dataset,
num_frames (M, default 8; the paper uses 5 for LSVQ, 19 for YouTube-UGC), max_skip_share
(0.1), test_share (0.0), seed (0), label_file (''), mos_min / mos_max (csv only),
num_workers (1: videos decoded in a background thread while the previous one is written).
Always pass --config: without it `tfds build` builds every config from the same folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from cpllm.data import build_utils
from cpllm.data import features
from cpllm.data import video

DATASETS = ("lsvq", "konvid", "livevqc", "ytugc", "csv")
_NATIVE_RANGE = {"lsvq": "lsvq", "konvid": "konvid", "livevqc": "livevqc", "ytugc": "ytugc",
                 "csv": "unit"}


@dataclasses.dataclass(eq=False)
class MosVideosConfig(tfds.core.BuilderConfig):
  """One subjective dataset; see the module docstring for the fields."""
  dataset: str = "csv"
  num_frames: int = 8
  max_skip_share: float = 0.1
  test_share: float = 0.0
  seed: int = 0
  label_file: str = ""
  mos_min: float | None = None
  mos_max: float | None = None
  num_workers: int = 1

  def __post_init__(self):
    if self.dataset not in DATASETS:
      raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
    if isinstance(self.num_frames, bool) or not isinstance(self.num_frames, int) \
        or self.num_frames < 1:
      raise ValueError(f"num_frames must be a positive int, got {self.num_frames!r}")
    if not 0.0 <= self.max_skip_share <= 1.0:
      raise ValueError(f"max_skip_share must be in [0, 1], got {self.max_skip_share!r}")
    if not 0.0 <= self.test_share < 1.0:
      raise ValueError(f"test_share must be in [0, 1), got {self.test_share!r}")
    if self.test_share and self.dataset == "lsvq":
      raise ValueError("LSVQ has official splits; test_share must stay 0")
    if (self.mos_min is None) != (self.mos_max is None) or (
        self.mos_min is not None and not self.mos_min < self.mos_max):
      raise ValueError(f"give both mos_min < mos_max or neither, got {self.mos_min!r}, "
                       f"{self.mos_max!r}")
    if self.mos_min is not None and self.dataset != "csv":
      raise ValueError(f"mos_min/mos_max apply to the csv config only; {self.dataset} has "
                       f"its official range {features.MOS_RANGES[_NATIVE_RANGE[self.dataset]]}")
    if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) \
        or self.num_workers < 1:
      raise ValueError(f"num_workers must be a positive int, got {self.num_workers!r}")


@dataclasses.dataclass
class _Entry:
  name: str  # as the label file gives it
  mos_native: float
  native_range: tuple[float, float]
  split: str
  where: str  # label file (and row) for the report


@dataclasses.dataclass
class _Item:
  id: str
  path: str
  mos: float
  mos_native: float


def _rows(path, name_cols, mos_cols, split_fn, native_range, extra=None):
  """_Entry per row of a label CSV."""
  rows, header = build_utils.read_table(path)
  name_col = build_utils.pick_column(header, name_cols, path, "video name")
  mos_col = build_utils.pick_column(header, mos_cols, path, "MOS")
  entries = []
  for i, row in enumerate(rows):
    rng = extra(row) if extra else native_range
    entries.append(_Entry(name=row.get(name_col, ""),
                          mos_native=build_utils.parse_float(row.get(mos_col, "")),
                          native_range=rng, split=split_fn(row),
                          where=f"{os.path.basename(path)} row {i + 2}"))
  return entries


def _label(cfg: MosVideosConfig, manual_dir: str, names, what: str) -> str:
  if cfg.label_file:
    path = cfg.label_file if os.path.isabs(cfg.label_file) else os.path.join(
        manual_dir, cfg.label_file)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"label_file {path} does not exist")
    return path
  return build_utils.find_label_file(manual_dir, names, what)


def _read_lsvq(cfg, manual_dir):
  rng = features.MOS_RANGES["lsvq"]
  main = _label(cfg, manual_dir, ["labels_train_test.csv"], "LSVQ label file")
  rows, header = build_utils.read_table(main)
  test_col = build_utils.pick_column(header, ["is_test"], main, "is_test")

  def split(row):
    return "test" if build_utils.parse_bool(row.get(test_col, ""), main, "is_test") \
        else "train"

  entries = _rows(main, ["name"], ["mos"], split, rng)
  extra = os.path.join(os.path.dirname(main), "labels_test_1080p.csv")
  if not os.path.isfile(extra):
    try:
      extra = build_utils.find_label_file(manual_dir, ["labels_test_1080p.csv"], "")
    except FileNotFoundError:
      extra = None
  if extra:
    entries += _rows(extra, ["name"], ["mos"], lambda row: "test_1080p", rng)
  else:
    print(f"mos_videos/lsvq: no labels_test_1080p.csv under {manual_dir}; building train "
          "and test only", flush=True)
  return entries, ("",), ()


def _read_konvid(cfg, manual_dir):
  path = _label(cfg, manual_dir, ["KoNViD_1k_mos.csv", "KoNViD_1k_attributes.csv"],
                "KoNViD-1k label file")
  return (_rows(path, ["flickr_id", "file_name", "filename", "name"], ["mos"],
                lambda row: "train", features.MOS_RANGES["konvid"]), ("",), (".mp4",))


def _read_livevqc(cfg, manual_dir):
  rng = features.MOS_RANGES["livevqc"]
  names = ["LIVE_VQC.csv", "LIVE-VQC.csv", "LIVEVQC.csv", "livevqc.csv", "data.csv",
           "labels.csv", "mos.csv"]
  try:
    path = _label(cfg, manual_dir, names, "LIVE-VQC label CSV")
  except FileNotFoundError as no_csv:
    try:
      mat = build_utils.find_label_file(manual_dir, ["data.mat"], "LIVE-VQC data.mat")
    except FileNotFoundError:
      raise no_csv from None
    return _read_livevqc_mat(mat, rng), ("",), (".mp4",)
  return (_rows(path, ["video_list", "File", "file_name", "filename", "name", "video",
                       "video_name"], ["mos"], lambda row: "train", rng), ("",), (".mp4",))


def _read_livevqc_mat(path, rng):
  import scipy.io  # pylint: disable=import-outside-toplevel
  try:
    mat = scipy.io.loadmat(path)
  except (NotImplementedError, ValueError) as e:  # v7.3 files are HDF5
    raise ValueError(f"{path}: cannot read ({e}); export video_list and mos to a CSV "
                     "(see the mos_videos docstring)") from e
  names = [str(np.asarray(v).ravel()[0]) for v in np.asarray(mat["video_list"]).ravel()]
  scores = np.asarray(mat["mos"], np.float64).ravel()
  if len(names) != len(scores):
    raise ValueError(f"{path}: {len(names)} names but {len(scores)} MOS values")
  return [_Entry(n, float(s), rng, "train", f"data.mat entry {i + 1}")
          for i, (n, s) in enumerate(zip(names, scores))]


def _read_ytugc(cfg, manual_dir):
  path = _label(cfg, manual_dir, ["original_videos_MOS_for_YouTube_UGC_dataset.csv"],
                "YouTube-UGC MOS CSV")
  return (_rows(path, ["vid"], ["MOS full", "mos"], lambda row: "train",
                features.MOS_RANGES["ytugc"]), ("", "_orig"), (".mkv", ".mp4"))


def _read_csv(cfg, manual_dir):
  try:
    path = _label(cfg, manual_dir, ["mos.csv", "labels.csv"], "label CSV")
  except FileNotFoundError:
    tables = sorted(f for f in os.listdir(manual_dir) if f.lower().endswith(".csv"))
    if len(tables) != 1:
      raise FileNotFoundError(
          f"no mos.csv or labels.csv in {manual_dir} and {len(tables)} other .csv files "
          f"({tables[:5]}); name the table with the config field label_file") from None
    path = os.path.join(manual_dir, tables[0])
  _, header = build_utils.read_table(path)
  lo = build_utils.pick_column(header, ["mos_min"], path, "", required=False)
  hi = build_utils.pick_column(header, ["mos_max"], path, "", required=False)
  if (lo is None) != (hi is None):
    raise ValueError(f"{path}: give both mos_min and mos_max columns or neither")
  split_col = build_utils.pick_column(header, ["split"], path, "", required=False)
  default = ((cfg.mos_min, cfg.mos_max) if cfg.mos_min is not None
             else features.MOS_RANGES["unit"])

  def native_range(row):
    if lo is None:
      return default
    low = build_utils.parse_float(row.get(lo, ""))
    high = build_utils.parse_float(row.get(hi, ""))
    return (low, high) if low < high else (math.nan, math.nan)  # NaN: the row is skipped

  def split(row):
    return (row.get(split_col) or "train").strip().lower() if split_col else "train"

  return (_rows(path, ["path", "file", "filename", "name", "video"], ["mos"], split,
                default, native_range), ("",), ())


_READERS = {"lsvq": _read_lsvq, "konvid": _read_konvid, "livevqc": _read_livevqc,
            "ytugc": _read_ytugc, "csv": _read_csv}


def _video_id(name: str) -> str:
  name = name.strip().replace("\\", "/")
  while name.startswith("./"):
    name = name[2:]
  root, ext = os.path.splitext(name.lstrip("/"))
  return root if ext.lower() in build_utils.VIDEO_EXTENSIONS else name.lstrip("/")


class MosVideos(tfds.core.GeneratorBasedBuilder):
  """Subjective video-quality datasets (LSVQ, KoNViD-1k, LIVE-VQC, YouTube-UGC, CSV)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      MosVideosConfig(name="lsvq", dataset="lsvq",
                      description="LSVQ (official train / test / test_1080p splits)."),
      MosVideosConfig(name="konvid", dataset="konvid", description="KoNViD-1k (train)."),
      MosVideosConfig(name="livevqc", dataset="livevqc", description="LIVE-VQC (train)."),
      MosVideosConfig(name="ytugc", dataset="ytugc", description="YouTube-UGC (train)."),
      MosVideosConfig(name="csv", dataset="csv",
                      description="Generic path,mos table (native scale 1..5 by default)."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put the dataset's videos and its label file in one folder and pass it as --manual_dir
  (sub-folders are searched). LSVQ: labels_train_test.csv (+ labels_test_1080p.csv) and
  the ia-batch*/ yfcc-batch* video folders. KoNViD-1k: KoNViD_1k_mos.csv and
  KoNViD_1k_videos/. LIVE-VQC: a CSV with video_list,mos (or data.mat) and Video/.
  YouTube-UGC: original_videos_MOS_for_YouTube_UGC_dataset.csv and the videos.
  csv: mos.csv with path,mos. See data_builders/README.md.
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
        homepage="https://github.com/baidut/PatchVQ",
        description=f"{cfg.dataset} subjective video quality, {cfg.num_frames} key frames "
                    "per video, MOS on 1..5.",
    )

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    manual_dir = os.fspath(dl_manager.manual_dir)
    if not os.path.isdir(manual_dir):
      raise FileNotFoundError(f"--manual_dir {manual_dir} is not a folder")
    entries, suffixes, prefer = _READERS[cfg.dataset](cfg, manual_dir)
    if not entries:
      raise ValueError(f"mos_videos/{cfg.name}: the label file lists no videos")
    index = build_utils.FileIndex(manual_dir, prefer=prefer)
    print(f"mos_videos/{cfg.name}: {len(entries)} labelled videos, {len(index.files)} video "
          f"files under {manual_dir}", flush=True)
    self._skips = skips = build_utils.SkipLog("mos_videos", cfg.max_skip_share)
    self._total = len(entries)
    by_split: dict[str, list[_Item]] = {}
    seen = {}
    for e in entries:
      label = f"{e.name or '<empty name>'} ({e.where})"
      vid = _video_id(e.name)
      if not vid:
        skips.record(label, "bad label: empty video name")
        continue
      try:
        mos = features.to_unit_scale(e.mos_native, e.native_range)
      except ValueError as err:
        skips.record(label, f"bad MOS: {'missing or NaN' if math.isnan(e.mos_native) else err}")
        continue
      if vid in seen:
        skips.record(label, f"duplicate: id {vid!r} already given by {seen[vid]}")
        continue
      if os.path.isabs(e.name) and os.path.isfile(e.name):
        path = e.name
      else:
        try:
          path = index.path(index.lookup(e.name, suffixes))
        except ValueError as err:
          skips.record(label, f"missing file: {err}")
          continue
      if not re.fullmatch(r"[a-z][a-z0-9_]*", e.split):
        skips.record(label, f"bad label: split name {e.split!r}")
        continue
      seen[vid] = e.where
      by_split.setdefault(e.split, []).append(_Item(vid, path, mos, e.mos_native))
    skips.check(self._total, self._config_dir)
    if cfg.test_share:
      if set(by_split) != {"train"}:
        raise ValueError(f"test_share applies to a dataset without splits; this one has "
                         f"{sorted(by_split)}")
      items = {it.id: it for it in by_split["train"]}
      train, test = build_utils.seeded_split(list(items), cfg.test_share, cfg.seed)
      by_split = {"train": [items[i] for i in train], "test": [items[i] for i in test]}
    return {split: self._generate_examples(split, items)
            for split, items in sorted(by_split.items()) if items}

  def _generate_examples(self, split, items):
    cfg = self.builder_config
    skips = self._skips

    def load(item: _Item):
      frames, info = video.read_key_frames(item.path, cfg.num_frames)
      try:
        kbps = video.bitrate_kbps(item.path)
      except video.VideoError:
        kbps = math.nan
      return frames, info, kbps

    count = 0
    bar = tfds.core.utils.tqdm(total=len(items), desc=f"mos_videos/{cfg.name} {split}",
                               unit=" videos", leave=False)
    work = build_utils.map_ordered(load, items, cfg.num_workers)  # any failure: a skip
    with bar, contextlib.closing(work):
      for item, result, error in work:
        bar.update(1)
        if error is not None:
          skips.record(item.path,
                       f"unreadable video: {build_utils.failure_reason(error, item.path)}")
          skips.check(self._total, self._config_dir)
          continue
        frames, info, kbps = result
        if info.num_frames < 2:
          skips.record(item.path, f"too short: {info.num_frames} frame, not a moving video")
          skips.check(self._total, self._config_dir)
          continue
        example = features.empty_measurements()
        example.update(
            id=item.id, source_id=item.id, frames=frames, mos=item.mos,
            mos_native=item.mos_native, is_original=True, bitrate_kbps=kbps,
            fps=info.fps, duration=info.duration, height=info.height, width=info.width)
        count += 1
        yield item.id, example
    if not count:
      raise build_utils.TooManySkipped(
          f"mos_videos/{cfg.name}: split {split!r} has no usable video: all {len(items)} "
          f"were skipped; first reasons: "
          + "; ".join(f"{p}: {r}" for p, r in skips.entries[-5:]))

  def _download_and_prepare(self, dl_manager, download_config=None):
    super()._download_and_prepare(dl_manager, download_config)
    if self._skips is not None:  # generation ran (not max_examples_per_split=0)
      self._skips.finish(self._total, os.fspath(self.data_dir), self._config_dir)
      stale = os.path.join(self._config_dir, "skipped_files_mos_videos.tsv")
      if os.path.exists(stale):
        os.remove(stale)  # the report of an earlier, failed attempt
