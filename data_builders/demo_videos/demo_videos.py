"""demo_videos: the embedded default dataset, made from photos inside scikit-image's wheel.

Nothing is downloaded. Each photo (cpllm.data.demo_clips.PHOTOS: astronaut, chelsea,
coffee, rocket, motorcycle_left, hubble_deep_field, immunohistochemistry, retina and nine
grayscale ones as RGB) becomes a short clip with a seeded pan + zoom + shake (sub-pixel,
cubic interpolation) of a window of the photo at its native scale (photos with a short
side above 480 pixels shrunk to it, demo_clips.photo_scale): 160x120 landscape, 120x160
portrait for `rocket` and `astronaut`, 24 frames at 24 fps. Every distortion with a KNOWN
parameter is one record of that source:

  pristine    the clip itself (FFV1, lossless)
  crf         libx264 at CRF 13, 15, ..., 51 (steps of 2, so same-source pairs exist at
              CRF differences 2, 4, 6, 8, 10, 20, ...)
  blur        Gaussian blur, sigma 0.8 / 1.6 / 3.2 px
  noise       Gaussian noise, sigma 5 / 10 / 20 code values
  exposure    gain 0.5 / 0.7 (under), 1.4 / 2.0 (over) on the code values, clipped
  stutter     frame repetition (perturb.repeat_frames), strength 0.15 / 0.3
  drop        frame drops (perturb.drop_frames), strength 0.15 / 0.3
  grainy crf  only with `grain_sigma` S (default None): libx264 at `grain_crfs` (13, 17,
              ..., 49) of the noise-S clip, VMAF against that clip, source_id
              '<photo>+noiseS' (real sources carry grain that compression smooths away,
              and that must still count as a loss)

Non-compression variants are stored losslessly (FFV1) before measuring, so the named
distortion is the only one. Per record (features.video_features layout):
  frames      M key frames (segment centres) read back from the FINAL distorted file, PNG
  vmaf/ssim/psnr  against the pristine clip (libvmaf vmaf_v0.6.1)
  mos         pseudo-MOS on 1..5: 1 + 4 * VMAF / 100 (features.pseudo_mos with the
              pristine clip at 5.0) for compression and blur; for exposure, noise,
              stutter and drops, which VMAF misjudges, the score of the affected
              dimension. Rule, reasons and measurements: demo_clips.mos_labels.
  mos_native  NaN (a pseudo-MOS has no native scale)
  dimensions  1..5 for features.DIMENSIONS from the known parameter
              (demo_clips.dimension_scores); untouched dimensions are 5.0
  description instructions.chain_of_thought(dimensions, mos), seeded per record
  is_original True for EVERY record: in the demo each video is rated with a known,
              trusted label; there are no derived pairs without one. `crf` is set for the
              compression variants (NO_CRF otherwise), so same-source CRF pairs and flip
              rates still work.
  source_id   the photo name ('<photo>+noise5' on the grainy ladder); id =
              '<photo>/<variant>', e.g. 'chelsea/crf31', 'chelsea/noise5_crf21'.

Splits by source (build_utils.seeded_split): ~25 % of the photos are `test`, the rest
`train`; no source is in both. `train_only` sources (e.g. demo_clips.SMOOTH_PHOTOS) join
`train` without changing that split.

The build also trains the demo's sentencepiece tokenizer (tokenizer.train_sentencepiece,
BPE, `vocab_size` pieces) on every text the demo produces (descriptions, SIG Q&A and
comparisons, the level prompt with its answers, the GRPO prompt and targets, the
annotation prompt) and stores it as `tokenizer.model` in the dataset's version directory;
`demo_clips.tokenizer_path(data_dir)` finds it. The settings, the sources of each split
and the label rule are in the dataset's metadata.json.

Command line (BuilderConfig fields: see DemoVideosConfig; a JSON --config needs a name
other than 'default', which names the output folder):

  tfds build data_builders/demo_videos [--data_dir=DIR]
  tfds build data_builders/demo_videos --config='{"name": "m4", "num_frames": 4}'
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow_datasets as tfds

from cpllm.data import build_utils
from cpllm.data import demo_clips
from cpllm.data import features
from cpllm.data import tokenizer

TOKENIZER_FILE = demo_clips.TOKENIZER_FILE
tokenizer_path = demo_clips.tokenizer_path
_SPEC = demo_clips.ClipSpec  # defaults


@dataclasses.dataclass(eq=False)
class DemoVideosConfig(tfds.core.BuilderConfig):
  """Clip, distortion, split and tokenizer settings (defaults: demo_clips.ClipSpec)."""
  sources: tuple[str, ...] = _SPEC.sources
  portrait: tuple[str, ...] = _SPEC.portrait
  height: int = _SPEC.height
  width: int = _SPEC.width
  clip_frames: int = _SPEC.clip_frames
  fps: float = _SPEC.fps
  num_frames: int = _SPEC.num_frames  # M key frames
  scene_short: int | None = _SPEC.scene_short
  crfs: tuple[int, ...] = _SPEC.crfs
  blur_sigmas: tuple[float, ...] = _SPEC.blur_sigmas
  noise_sigmas: tuple[float, ...] = _SPEC.noise_sigmas
  exposure_gains: tuple[float, ...] = _SPEC.exposure_gains
  stutter_strengths: tuple[float, ...] = _SPEC.stutter_strengths
  drop_strengths: tuple[float, ...] = _SPEC.drop_strengths
  grain_sigma: float | None = _SPEC.grain_sigma
  grain_crfs: tuple[int, ...] = _SPEC.grain_crfs
  test_share: float = _SPEC.test_share
  seed: int = _SPEC.seed
  train_only: tuple[str, ...] = _SPEC.train_only
  vocab_size: int = 1024
  num_workers: int = 0  # threads over sources; 0: one per CPU core

  def __post_init__(self):
    for f in dataclasses.fields(demo_clips.ClipSpec):  # JSON --config gives lists
      value = getattr(self, f.name)
      if isinstance(value, list):
        setattr(self, f.name, tuple(value))
    self.spec()  # validates

  def spec(self) -> demo_clips.ClipSpec:
    return demo_clips.ClipSpec(**{f.name: getattr(self, f.name)
                                  for f in dataclasses.fields(demo_clips.ClipSpec)})


class DemoVideos(tfds.core.GeneratorBasedBuilder):
  """Synthetic clips from scikit-image's photos with known distortions and labels."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": ("Clips are windows of the photo at a video's scale (scene_short=480) "
                "instead of the whole photo shrunk into 160x120; CRF ladder from 13."),
  }
  # One predefined config: `tfds build` without --config builds every predefined config.
  BUILDER_CONFIGS = [DemoVideosConfig(
      name="default", description="17 photos, 35 variants each, M=8, 1024-piece tokenizer.")]

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format, **kwargs)
    build_utils.use_array_record_by_default(self, file_format)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        features=features.video_features(cfg.num_frames),
        supervised_keys=None,
        description=("Synthetic clips (pan, zoom, shake) of the photos in scikit-image's "
                     "wheel with known distortions (libx264 CRF ladder, blur, noise, "
                     "exposure, stutter, frame drops), VMAF/SSIM/PSNR against the "
                     "pristine clip, pseudo-MOS, dimension scores and SIG descriptions."),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    cfg = self.builder_config
    spec = cfg.spec()
    train, test = spec.split()
    sources = list(spec.sources) + list(spec.train_only)
    workers = cfg.num_workers or os.cpu_count() or 1
    n_variants = len(spec.distortions())
    print(f"demo_videos: {len(sources)} sources ({len(train)} train, {len(test)} test) "
          f"x {n_variants} variants, {workers} worker(s)", flush=True)
    records = {}
    with tempfile.TemporaryDirectory(prefix="demo_videos_") as tmp:
      make = lambda s: demo_clips.source_records(s, spec, os.path.join(tmp, s))
      bar = tfds.core.utils.tqdm(total=len(sources), unit=" sources",
                                 desc="demo_videos: synthesising, encoding, scoring")
      for source, result, _ in build_utils.map_ordered(make, sources, workers,
                                                       errors=()):
        records[source] = result
        shutil.rmtree(os.path.join(tmp, source), ignore_errors=True)
        bar.update(1)
      bar.close()
    all_records = [r for s in sources for r in records[s]]
    self._write_tokenizer(all_records, spec.seed, cfg.vocab_size)
    mos = np.array([r["mos"] for r in all_records])
    self.info.metadata.update(
        settings=json.loads(json.dumps(dataclasses.asdict(spec))),
        split_sources={"train": train, "test": test},
        tokenizer=TOKENIZER_FILE, vocab_size=cfg.vocab_size,
        mos_rule=demo_clips.MOS_RULE,
        mos_quantiles={q: round(float(np.quantile(mos, q / 100)), 3)
                       for q in (0, 25, 50, 75, 100)},
    )
    splits = {"train": train, "test": test}
    return {name: self._generate_examples([r for s in names for r in records[s]])
            for name, names in splits.items() if names}

  def _write_tokenizer(self, records, seed: int, vocab_size: int) -> None:
    """Trains the demo tokenizer and puts it in the (still temporary) dataset folder,
    which TFDS renames to the final version directory when the build succeeds."""
    with tempfile.TemporaryDirectory(prefix="demo_tokenizer_") as tmp:
      model = tokenizer.train_sentencepiece(demo_clips.demo_texts(records, seed),
                                            os.path.join(tmp, "demo"), vocab_size)
      tokenizer.Tokenizer(model).level_token_ids()  # every level word one piece, or raise
      (self.data_path / TOKENIZER_FILE).write_bytes(open(model, "rb").read())
    print(f"demo_videos: tokenizer ({vocab_size} pieces) -> {self.data_path / TOKENIZER_FILE}",
          flush=True)

  def _generate_examples(self, records):
    for record in records:
      yield record["id"], record
