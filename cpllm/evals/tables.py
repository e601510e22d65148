"""Tables of finished runs' last evaluations (the ablation's, a sweep's): Markdown + CSV."""

from __future__ import annotations

import csv
import io
from typing import Sequence

from etils import epath

COLUMNS = ("srcc", "plcc", "krcc", "rmse", "flip_rate 2", "flip_rate 4", "flip_rate 10",
           "flip_rate 20", "text_level_accuracy")


def row_values(metrics: dict, columns: Sequence[str] = COLUMNS) -> dict[str, float | None]:
  """The table's columns of one evaluation ('flip_rate 4' reads metrics['flip_rate']['4'])."""
  values = {}
  for column in columns:
    key, _, difference = column.partition(" ")
    value = metrics.get(key)
    values[column] = value.get(difference) if difference and value is not None else value
  return values


def table(results: dict[str, dict], labels: dict[str, dict] | None = None,
          columns: Sequence[str] = COLUMNS) -> tuple[list[str], list[list]]:
  """Header and rows of a results table, values as they are (None where missing).

  `results` maps a run's name to its evaluation metrics; `labels` (optional) maps it to
  what sets the run apart, e.g. a sweep's overrides: one column per key, blank where a run
  does not have it. Columns: run, the label keys, step, then `columns`.
  """
  labels = labels or {}
  keys = list(dict.fromkeys(key for name in results for key in labels.get(name, {})))
  rows = [[name, *(labels.get(name, {}).get(key, "") for key in keys), metrics.get("step"),
           *row_values(metrics, columns).values()] for name, metrics in results.items()]
  return ["run", *keys, "step", *columns], rows


def markdown(results: dict[str, dict], labels: dict[str, dict] | None = None,
             columns: Sequence[str] = COLUMNS) -> str:
  """The table as Markdown: metrics to 3 decimals, 'n/a' where missing."""
  header, rows = table(results, labels, columns)
  first_metric = len(header) - len(columns)
  fmt = lambda i, v: ("n/a" if v is None else f"{v:.3f}" if i >= first_metric else str(v))
  lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
  lines += ["| " + " | ".join(fmt(i, v) for i, v in enumerate(row)) + " |" for row in rows]
  return "\n".join(lines)


def write_tables(directory: str, results: dict[str, dict],
                 labels: dict[str, dict] | None = None,
                 columns: Sequence[str] = COLUMNS) -> str:
  """Writes directory/table.md and table.csv (local or gs://); returns the Markdown."""
  header, rows = table(results, labels, columns)
  csv_text = io.StringIO()
  csv.writer(csv_text, lineterminator="\n").writerows([header, *rows])
  text = markdown(results, labels, columns)
  directory = epath.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "table.md").write_text(text + "\n")
  (directory / "table.csv").write_text(csv_text.getvalue())
  return text
