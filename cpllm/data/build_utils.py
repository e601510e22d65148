"""Shared pieces of the dataset builders: skipping bad inputs, finding files, label tables.

Skipping: a builder calls `skips.record(path, reason)` for every input it cannot use and
goes on; at the end `skips.finish(total, report_dir)` writes `skipped_files_<name>.tsv`
(path<TAB>reason) next to the dataset, prints a summary, and raises `TooManySkipped` when
more than `max_share` of the inputs were skipped, so a wrong --manual_dir fails loudly
instead of building an empty set. `skips.check(total)` raises as soon as the share is
already exceeded (skips only grow), so a long build fails early rather than after hours.
`failure_reason` words the reason for any exception of one file, anticipated or not.

Files: `FileIndex` resolves the names that label files use (with or without extension,
with or without a sub-folder, relative to some folder below --manual_dir) to the files
that are there. `read_table` reads a CSV label file with case-, space- and
underscore-insensitive column names.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import io
import logging
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence

from cpllm.data import video

log = logging.getLogger(__name__)

# Containers we try to read as video. Audio-only containers are listed separately: a
# builder that takes "every media file in a folder" treats them as (bad) inputs, so that
# they show up in the skipped-files report instead of being ignored silently.
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg",
                    ".ts", ".mts", ".m2ts", ".flv", ".wmv", ".3gp", ".ogv", ".mxf", ".nut",
                    ".y4m")
AUDIO_EXTENSIONS = (".m4a", ".mp3", ".wav", ".aac", ".flac", ".ogg", ".opus", ".wma")


class TooManySkipped(RuntimeError):
  pass


class SkipLog:
  """Collects (path, reason) pairs for one build (or one split)."""

  def __init__(self, name: str, max_share: float = 0.1):
    if not 0.0 <= max_share <= 1.0:
      raise ValueError(f"max_share must be in [0, 1], got {max_share!r}")
    self.name = name
    self.max_share = max_share
    self.entries: list[tuple[str, str]] = []

  def record(self, path: str, reason: str) -> None:
    reason = " ".join(str(reason).split())  # one line per file in the report
    self.entries.append((str(path), reason))
    log.warning("%s: skipping %s: %s", self.name, path, reason)

  def exceeded(self, total: int) -> bool:
    return bool(total) and len(self.entries) > self.max_share * total

  def write(self, report_dir: str | os.PathLike) -> str | None:
    """Writes `skipped_files_<name>.tsv` into report_dir; None (no file) without skips."""
    if not self.entries:
      return None
    report_dir = os.fspath(report_dir)
    os.makedirs(report_dir, exist_ok=True)
    report = os.path.join(report_dir, f"skipped_files_{self.name}.tsv")
    with open(report, "w") as f:
      f.write("path\treason\n")
      f.writelines(f"{p}\t{r}\n" for p, r in self.entries)
    return report

  def finish(self, total: int, report_dir: str | None,
             failed_report_dir: str | None = None) -> str | None:
    """Writes the report (if any skips), prints a summary; raises past `max_share`.

    failed_report_dir: where the report goes when the build fails (a TFDS build deletes
    its unfinished dataset folder, so the report must live outside it to survive).
    """
    failing = self.exceeded(total)
    target = failed_report_dir if failing and failed_report_dir else report_dir
    report = self.write(target) if target else None
    kinds = collections.Counter(r.split(":")[0] for _, r in self.entries)
    summary = (f"{self.name}: used {total - len(self.entries)} of {total} inputs, skipped "
               f"{len(self.entries)}" + (f" ({dict(kinds)}); see {report}" if report else ""))
    print(summary, flush=True)
    if failing:
      raise TooManySkipped(
          f"{summary}. More than {self.max_share:.0%} of the inputs were skipped, which "
          "usually means a wrong --manual_dir or label file; first reasons: "
          + "; ".join(f"{p}: {r}" for p, r in self.entries[:5]))
    return report

  def check(self, total: int, failed_report_dir: str | None = None) -> None:
    """Raises TooManySkipped now if the skips so far already exceed the share."""
    if self.exceeded(total):
      self.finish(total, None, failed_report_dir)


def failure_reason(error: BaseException, path) -> str:
  """Why `path` failed, for a report that has a path column: a VideoError's own words
  without the leading 'path: ', any other exception (one nobody anticipated) with its type,
  e.g. "KeyError: 'vmaf'"."""
  text = str(error)
  if not isinstance(error, video.VideoError):
    return f"{type(error).__name__}: {text}"
  prefix = f"{os.fspath(path)}: "
  return text[len(prefix):] if text.startswith(prefix) else text


def use_array_record_by_default(builder, file_format) -> None:
  """Call at the end of a builder's __init__(file_format=...): array_record unless asked.

  TFDS defaults to tfrecord, which `tfds.data_source` and grain cannot read randomly. A
  format given explicitly (`--file_format`) or restored from a built dataset is kept.
  """
  if file_format is None and not builder.is_prepared():
    builder.info.set_file_format("array_record", override=True)


def final_dirs(builder) -> tuple[str, str]:
  """(dataset dir, config dir) of a builder, e.g. (.../crf_variants/default/1.0.0,
  .../crf_variants/default). Call in __init__: during generation TFDS points data_dir at
  a temporary `.incomplete` folder (renamed at the end, deleted on failure)."""
  data_dir = os.fspath(builder.data_dir)
  return data_dir, os.path.dirname(data_dir)


# ------------------------------------------------------------------------- label tables

def norm_column(name: str) -> str:
  """'MOS full' -> 'mosfull', 'flickr_id' -> 'flickrid': how columns are matched."""
  return "".join(ch for ch in str(name).lower() if ch.isalnum())


def read_table(path) -> tuple[list[dict[str, str]], list[str]]:
  """(rows, header) of a CSV file; rows are dicts keyed by `norm_column` of the header.

  BOM, quoting and surrounding spaces are tolerated; ';' and tab separators are detected
  from the header line. Empty rows are dropped."""
  path = os.fspath(path)
  with open(path, newline="", encoding="utf-8-sig") as f:
    text = f.read()
  if not text.strip():
    raise ValueError(f"{path}: empty label file")
  first = text.splitlines()[0]
  delimiter = max([",", ";", "\t"], key=first.count)
  reader = csv.reader(io.StringIO(text), delimiter=delimiter)
  header = [norm_column(h) for h in next(reader)]
  rows = []
  for values in reader:
    if not any(v.strip() for v in values):
      continue
    rows.append({h: v.strip() for h, v in zip(header, values)})
  return rows, header


def pick_column(header: Sequence[str], candidates: Sequence[str], path, what: str,
                required: bool = True) -> str | None:
  """The first of `candidates` (compared with norm_column) present in `header`."""
  for c in candidates:
    if norm_column(c) in header:
      return norm_column(c)
  if required:
    raise ValueError(f"{os.fspath(path)}: no {what} column; expected one of "
                     f"{list(candidates)}, found columns {list(header)}")
  return None


def parse_float(text) -> float:
  """A label value as float; '' / 'nan' / 'NA' / garbage -> NaN (the caller skips it)."""
  text = str(text).strip()
  for candidate in (text, text.replace(",", ".", 1)):  # also a decimal comma: '3,25'
    try:
      return float(candidate)
    except ValueError:
      pass
  return math.nan


def parse_bool(text, path="", column="") -> bool:
  value = str(text).strip().lower()
  if value in ("1", "true", "t", "yes", "y", "1.0"):
    return True
  if value in ("0", "false", "f", "no", "n", "0.0", ""):
    return False
  raise ValueError(f"{path}: column {column}: not a boolean: {text!r}")


# ------------------------------------------------------------------------------- files

def _strip_ext(rel: str, extensions: Sequence[str]) -> str:
  root, ext = os.path.splitext(rel)
  return root if ext.lower() in extensions else rel


class FileIndex:
  """Resolves label-file names to the media files under `root`.

  Every file is indexed under each trailing part of its path relative to root, with and
  without its extension: 'videos/ia-batch1/xyz.mp4' answers to 'videos/ia-batch1/xyz.mp4',
  'ia-batch1/xyz.mp4', 'xyz.mp4' and the same without '.mp4'. So a label may give the name
  with or without extension, with or without sub-folder, relative to any folder on the way
  (the dataset's own layout or a flattened copy). The longest matching key wins; several
  files under the same key (same name in two folders, 'a.mp4' and 'a.mkv') are told apart
  by `prefer` (extension order), else the name is reported as ambiguous.
  """

  def __init__(self, root, extensions: Sequence[str] = VIDEO_EXTENSIONS,
               prefer: Sequence[str] = ()):
    self.root = os.path.abspath(os.fspath(root))
    self.extensions = tuple(e.lower() for e in extensions)
    self.prefer = tuple(e.lower() for e in prefer)
    self.files: list[str] = []  # relative posix paths, sorted
    for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
      for name in sorted(filenames):
        if name.startswith(".") or os.path.splitext(name)[1].lower() not in self.extensions:
          continue
        rel = os.path.relpath(os.path.join(dirpath, name), self.root)
        self.files.append(rel.replace(os.sep, "/"))
    self.files.sort()
    self._keys: dict[str, list[str]] = collections.defaultdict(list)
    for rel in self.files:
      parts = rel.split("/")
      for i in range(len(parts)):
        key = "/".join(parts[i:])
        self._keys[key].append(rel)
        stem = _strip_ext(key, self.extensions)
        if stem != key:
          self._keys[stem].append(rel)

  def path(self, rel: str) -> str:
    return os.path.join(self.root, *rel.split("/"))

  def lookup(self, name: str, suffixes: Sequence[str] = ("",)) -> str:
    """Relative path of the file a label names; ValueError saying why if none or several.

    suffixes: extra stems to try, e.g. ('', '_orig') finds 'x_orig.mp4' for name 'x'.
    """
    raw = str(name).strip().replace("\\", "/")
    while raw.startswith("./"):
      raw = raw[2:]
    raw = raw.lstrip("/")
    if not raw:
      raise ValueError("empty file name in the label file")
    stem = _strip_ext(raw, self.extensions)
    tries = [raw] + [stem + s for s in suffixes if stem + s != raw]
    for key in tries:
      found = self._keys.get(key)
      if found:
        return self._choose(name, found)
    raise ValueError(f"no video file for {name!r} under {self.root} (tried {tries} with "
                     f"extensions {', '.join(self.extensions[:6])}, ... in any sub-folder)")

  def _choose(self, name, found: list[str]) -> str:
    found = sorted(set(found))
    if len(found) == 1:
      return found[0]
    rank = lambda rel: (self.prefer.index(os.path.splitext(rel)[1].lower())
                        if os.path.splitext(rel)[1].lower() in self.prefer else len(self.prefer))
    best = min(rank(r) for r in found)
    top = [r for r in found if rank(r) == best]
    if len(top) == 1:
      return top[0]
    raise ValueError(f"ambiguous name {name!r}: matches {', '.join(top[:4])}"
                     + (" ..." if len(top) > 4 else ""))


def find_label_file(root, names: Sequence[str], what: str, max_depth: int = 2) -> str:
  """The first of `names` found in root or up to `max_depth` folders below (case-insensitive)."""
  root = os.fspath(root)
  wanted = [n.lower() for n in names]
  hits = []
  for dirpath, dirnames, filenames in os.walk(root):
    depth = os.path.relpath(dirpath, root).count(os.sep) + (dirpath != root)
    if depth >= max_depth:
      dirnames[:] = []
    dirnames.sort()
    for f in filenames:
      if f.lower() in wanted:
        hits.append((wanted.index(f.lower()), depth, os.path.join(dirpath, f)))
  if not hits:
    raise FileNotFoundError(f"no {what} in {root}: expected one of {list(names)} there or "
                            f"up to {max_depth} folder(s) below")
  return min(hits)[2]


def seeded_split(ids: Sequence[str], test_share: float, seed: int) -> tuple[list, list]:
  """(train, test): a seeded shuffle of the sorted ids; round(share * n) go to test, at
  least one (and at most n - 1) when share > 0 and n >= 2. Same ids and seed -> same split."""
  if not 0.0 <= test_share < 1.0:
    raise ValueError(f"test_share must be in [0, 1), got {test_share!r}")
  ids = sorted(ids)
  order = list(ids)
  random.Random(seed).shuffle(order)
  n_test = round(test_share * len(ids))
  if test_share > 0 and len(ids) >= 2:
    n_test = min(max(n_test, 1), len(ids) - 1)
  else:
    n_test = 0
  test = set(order[:n_test])
  return [i for i in ids if i not in test], [i for i in ids if i in test]


# --------------------------------------------------------------------------- execution

def map_ordered(fn: Callable, items: Iterable, num_workers: int = 1,
                errors: tuple[type[BaseException], ...] = (Exception,),
                discard: Callable | None = None,
                ) -> Iterator[tuple[object, object, BaseException | None]]:
  """Yields (item, fn(item), None) or (item, None, error) in input order.

  fn runs in `num_workers` threads, at most num_workers + 1 items ahead of the consumer
  (so memory holds a few results, not all). Exceptions of the `errors` types are handed
  to the consumer (to record a skip); any other exception is raised. The work overlaps
  with the consumer (PNG encoding, writing); ffmpeg and PyAV release the GIL.

  discard(result) is called for results computed ahead but never yielded (the consumer
  stopped or failed), e.g. to remove their temporary files.
  """
  if num_workers < 1:
    raise ValueError(f"num_workers must be >= 1, got {num_workers!r}")

  def call(item):
    try:
      return fn(item), None
    except errors as e:  # pylint: disable=broad-except
      return None, e

  items = iter(items)
  pool = concurrent.futures.ThreadPoolExecutor(num_workers, thread_name_prefix="build")
  pending = collections.deque()
  try:
    for item in items:
      pending.append((item, pool.submit(call, item)))
      if len(pending) > num_workers:
        break
    while pending:
      item, future = pending[0]
      result, error = future.result()
      pending.popleft()
      nxt = next(items, _END)
      if nxt is not _END:
        pending.append((nxt, pool.submit(call, nxt)))
      yield item, result, error
  finally:
    for _, future in pending:
      future.cancel()
    pool.shutdown(wait=True, cancel_futures=True)
    if discard is not None:
      for _, future in pending:
        if future.done() and not future.cancelled() and future.exception() is None:
          result, _ = future.result()
          if result is not None:
            discard(result)


_END = object()
