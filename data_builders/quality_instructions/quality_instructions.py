"""quality_instructions: instruction / answer pairs about video quality.

Records: id (the video's id), kind, prompt, answer, other_id (the second video of a
comparison, '' otherwise). Three sources, all optional but at least one must give records:

(a) SIG text generated over a built video dataset (default: demo_videos/default in the same
    --data_dir, newest version), from each record's `mos` and `dimensions` (NaN dimensions
    are left out): per video one record of each kind (demo_clips.sig_instructions)
      describe  open question -> hierarchical chain of thought (dimensions -> overall)
      yes_no    is this dimension's defect present? (needs a dimension score)
      weakest   which dimension is worst? (needs two or more)
      compare   two videos -> which is better and why; other_id names the second video, a
                same-source variant for every other video, else any video of the split
      level     instructions.LEVEL_PROMPT -> ' fair.' (the level-token target)
      grpo      instructions.GRPO_PROMPT -> '<think>...</think><answer>3.42</answer>'
    The splits are the video dataset's splits, and comparisons stay inside a split.
(b) --manual_dir/**/*.jsonl: annotations, one {"id": ..., "text": ...} per line (e.g. a
    three-sentence content / style / quality summary), kind 'annotation' with the paper's
    prompt (demo_clips.ANNOTATION_PROMPT).
(c) --manual_dir/**/*.json: LLaVA-style conversations, [{"id" | "video" | "image": ...,
    "conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...},
    ...]}, ...]; every human turn with its gpt answer is one record of kind 'llava'.
Imported records go to the split of the video with that id; ids the video dataset does not
have go to `train` (their count is printed). Malformed lines / records (bad JSON or UTF-8,
missing id or text, a human turn without answer, ...) are skipped and listed with
file:line (or file record [i]) and reason in `skipped_files_quality_instructions.tsv`
next to the dataset; more than `max_skip_share` of them fails the build.

Command line (a JSON --config needs a name other than 'default'):

  tfds build data_builders/demo_videos            # first: the videos SIG describes
  tfds build data_builders/quality_instructions [--manual_dir=DIR]
  tfds build data_builders/quality_instructions --manual_dir=DIR \\
      --config='{"name": "imports_only", "video_builder": ""}'
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re

from etils import epath
import tensorflow_datasets as tfds

from cpllm.data import build_utils
from cpllm.data import demo_clips
from cpllm.data import features
from cpllm.data import instructions


@dataclasses.dataclass(eq=False)
class QualityInstructionsConfig(tfds.core.BuilderConfig):
  """Where the videos come from and how strict the imports are."""
  video_builder: str = "demo_videos"  # '' for none: only the --manual_dir imports
  video_config: str = "default"
  video_version: str = ""  # '' for the newest built version
  video_data_dir: str = ""  # '' for this build's --data_dir
  seed: int = 0
  max_skip_share: float = 0.1

  def __post_init__(self):
    if not 0.0 <= self.max_skip_share <= 1.0:
      raise ValueError(f"max_skip_share must be in [0, 1], got {self.max_skip_share!r}")


def video_dataset_dir(data_dir, name: str, config: str, version: str = "") -> str:
  """<data_dir>/<name>/<config>/<version> of a built dataset (newest version if '')."""
  config_dir = epath.Path(data_dir) / name / config
  if not version:
    def key(p):
      try:
        return tuple(int(x) for x in p.name.split("."))
      except ValueError:
        return None
    built = [p for p in (config_dir.iterdir() if config_dir.exists() else [])
             if key(p) is not None and (p / "dataset_info.json").exists()]
    if not built:
      raise FileNotFoundError(
          f"no built {name}/{config} under {data_dir}; build it first (e.g. `tfds build "
          f"data_builders/{name} --data_dir={data_dir}`) or set video_builder to '' in a "
          "JSON --config to import --manual_dir files only")
    return os.fspath(max(built, key=key))
  path = config_dir / version
  if not (path / "dataset_info.json").exists():
    raise FileNotFoundError(f"{path} is not a built dataset")
  return os.fspath(path)


def read_video_labels(dataset_dir: str) -> dict[str, list[demo_clips.LabelledVideo]]:
  """{split: [LabelledVideo]} of a built video dataset; key frames are not decoded."""
  builder = tfds.builder_from_directory(dataset_dir)
  out = {}
  for split in builder.info.splits:
    source = builder.as_data_source(
        split, deserialize_method=tfds.decode.DeserializeMethod.DESERIALIZE_NO_DECODE)
    videos = []
    for i in range(len(source)):
      example = source[i]
      if hasattr(example, "features"):  # a tf.train.Example: read the label fields only
        f = example.features.feature
        record = dict(id=f["id"].bytes_list.value[0], source_id=f["source_id"].bytes_list.value[0],
                      mos=f["mos"].float_list.value[0],
                      dimensions=list(f["dimensions"].float_list.value))
      else:
        record = builder.as_data_source(split)[i]
      if len(record["dimensions"]) != len(features.DIMENSIONS):
        raise ValueError(f"{dataset_dir}: record {i} of {split} has "
                         f"{len(record['dimensions'])} dimension scores, expected "
                         f"{len(features.DIMENSIONS)} ({features.DIMENSIONS})")
      video = demo_clips.LabelledVideo.from_record(record)
      if not 1.0 <= video.mos <= 5.0:  # also NaN
        raise ValueError(f"{dataset_dir}: video {video.id} has mos {video.mos}, not 1..5")
      videos.append(video)
    out[split] = videos
  return out


_LINE = re.compile(r"^:(\d+): (.*)$", re.S)
_RECORD = re.compile(r"^: (record \[\d+\]): (.*)$", re.S)


def _record_errors(skips: build_utils.SkipLog, path: str, errors: list[str]) -> None:
  """'path:12: reason' / 'path: record [3]: reason' -> skips.record('path:12', reason)."""
  for error in errors:
    rest = error[len(path):] if error.startswith(path) else error
    m = _LINE.match(rest) or _RECORD.match(rest)
    if m:
      where = f"{path}:{m.group(1)}" if m.re is _LINE else f"{path} {m.group(1)}"
      skips.record(where, m.group(2))
    else:
      skips.record(path, rest.lstrip(": "))


def read_imports(manual_dir: str, skips: build_utils.SkipLog
                 ) -> tuple[list[demo_clips.Instruction], int]:
  """(records, number of input lines / records) from the annotation JSONL and LLaVA JSON
  files under manual_dir; malformed ones are recorded in `skips`."""
  out, total = [], 0
  files = []
  for dirpath, dirnames, filenames in os.walk(manual_dir):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    files += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
  for path in files:
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".jsonl":
      errors = []
      pairs = instructions.read_annotations_jsonl(path, errors)
      total += len(pairs) + len(errors)
      out += [demo_clips.Instruction(vid, "annotation", demo_clips.ANNOTATION_PROMPT, text)
              for vid, text in pairs]
      _record_errors(skips, path, errors)
    elif suffix == ".json":
      try:
        with open(path, encoding="utf-8") as f:
          n = len(json.load(f))
      except (ValueError, TypeError):
        n = 1  # not a list: read_llava_json names the reason
      total += n
      errors = []
      try:
        triples = instructions.read_llava_json(path, errors)
      except ValueError as e:
        _record_errors(skips, path, [str(e)])
        continue
      out += [demo_clips.Instruction(vid, "llava", prompt, answer)
              for vid, prompt, answer in triples]
      _record_errors(skips, path, errors)
  return out, total


class QualityInstructions(tfds.core.GeneratorBasedBuilder):
  """Instruction / answer pairs: SIG over a video dataset, annotation and LLaVA imports."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [QualityInstructionsConfig(
      name="default", description="SIG over demo_videos/default plus --manual_dir imports.")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Optional. --manual_dir may hold annotation files (*.jsonl, one {"id", "text"} per line)
  and LLaVA-style conversation files (*.json); see data_builders/README.md.
  """

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format, **kwargs)
    build_utils.use_array_record_by_default(self, file_format)
    self._final_dir, self._config_dir = build_utils.final_dirs(self)

  def _info(self) -> tfds.core.DatasetInfo:
    text = lambda doc: tfds.features.Text(doc=doc)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "id": text("id of the video the instruction is about"),
            "kind": text(f"one of {demo_clips.INSTRUCTION_KINDS}"),
            "prompt": text("instruction / question"),
            "answer": text("target response"),
            "other_id": text("the second video of a 'compare' record, '' otherwise"),
        }),
        supervised_keys=("prompt", "answer"),
        description="Quality instruction / answer pairs (SIG text, annotations, LLaVA).",
    )

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    splits: dict[str, list[demo_clips.Instruction]] = collections.defaultdict(list)
    split_of: dict[str, str] = {}
    if cfg.video_builder:
      dataset_dir = video_dataset_dir(cfg.video_data_dir or self.data_dir_root,
                                      cfg.video_builder, cfg.video_config, cfg.video_version)
      for split, videos in read_video_labels(dataset_dir).items():
        split_of.update((v.id, split) for v in videos)
        splits[split] += demo_clips.sig_instructions(videos, cfg.seed)
      print(f"quality_instructions: SIG over {len(split_of)} videos of {dataset_dir}",
            flush=True)

    manual_dir = self._manual_dir(dl_manager)
    skips = build_utils.SkipLog("quality_instructions", cfg.max_skip_share)
    imported, total = read_imports(manual_dir, skips) if manual_dir else ([], 0)
    unknown = 0
    for inst in imported:
      if inst.id not in split_of:
        unknown += 1
      splits[split_of.get(inst.id, "train")].append(inst)
    if manual_dir:
      print(f"quality_instructions: imported {len(imported)} records from {manual_dir}"
            + (f"; {unknown} name videos that {cfg.video_builder or 'no video dataset'} "
               "does not have and go to train" if unknown else ""), flush=True)
    if manual_dir:
      # The report lands in the dataset folder (TFDS renames it at the end); on failure in
      # the config folder, which survives.
      skips.finish(total, self.data_dir, self._config_dir)
    if not any(splits.values()):
      raise ValueError("quality_instructions: no records: build a video dataset first, or "
                       "give --manual_dir with annotation (*.jsonl) / LLaVA (*.json) files")
    counts = {s: collections.Counter(i.kind for i in items) for s, items in splits.items()}
    print(f"quality_instructions: records per split and kind: "
          f"{ {s: dict(c) for s, c in counts.items()} }", flush=True)
    return {split: self._generate_examples(items) for split, items in splits.items()}

  def _manual_dir(self, dl_manager) -> str | None:
    """--manual_dir, or None when none was given (or it is empty); a given folder that
    does not exist is an error, not a silent 'nothing to import'."""
    try:
      return os.fspath(dl_manager.manual_dir)
    except AssertionError:
      given = getattr(dl_manager, "_manual_dir", None)
      default = epath.Path(self.data_dir_root) / "downloads" / "manual"
      if given and epath.Path(given) != default and not epath.Path(given).exists():
        raise FileNotFoundError(f"--manual_dir {given} does not exist") from None
      return None

  def _generate_examples(self, items):
    for n, inst in enumerate(items):
      yield f"{n:08d}", dataclasses.asdict(inst)
