"""Skipping bad inputs in dataset builders: recorded, reported, and bounded.

A builder calls `skips.record(path, reason)` for every input it cannot use and goes on;
at the end `skips.finish(total)` writes `skipped_files.tsv` (path<TAB>reason) next to the
dataset, prints a summary, and raises `TooManySkipped` when more than `max_share` of the
inputs were skipped, so a wrong --manual_dir fails loudly instead of building an empty set.
"""

from __future__ import annotations

import collections
import logging
import os

log = logging.getLogger(__name__)


class TooManySkipped(RuntimeError):
  pass


class SkipLog:
  """Collects (path, reason) pairs for one split."""

  def __init__(self, name: str, max_share: float = 0.1):
    self.name = name
    self.max_share = max_share
    self.entries: list[tuple[str, str]] = []

  def record(self, path: str, reason: str) -> None:
    reason = " ".join(str(reason).split())  # one line per file in the report
    self.entries.append((str(path), reason))
    log.warning("%s: skipping %s: %s", self.name, path, reason)

  def finish(self, total: int, report_dir: str | None) -> str | None:
    """Writes the report (if any skips), prints a summary; raises past `max_share`."""
    report = None
    if self.entries and report_dir:
      os.makedirs(report_dir, exist_ok=True)
      report = os.path.join(report_dir, f"skipped_files_{self.name}.tsv")
      with open(report, "w") as f:
        f.write("path\treason\n")
        f.writelines(f"{p}\t{r}\n" for p, r in self.entries)
    kinds = collections.Counter(r.split(":")[0] for _, r in self.entries)
    summary = (f"{self.name}: used {total - len(self.entries)} of {total} inputs, skipped "
               f"{len(self.entries)}" + (f" ({dict(kinds)}); see {report}" if report else ""))
    print(summary, flush=True)
    if total and len(self.entries) > self.max_share * total:
      raise TooManySkipped(
          f"{summary}. More than {self.max_share:.0%} of the inputs were skipped, which "
          "usually means a wrong --manual_dir or label file; first reasons: "
          + "; ".join(f"{p}: {r}" for p, r in self.entries[:5]))
    return report
