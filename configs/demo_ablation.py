"""The paper's Table 4 ablations on the demo: one switch of configs/demo.py per run.

  python -m cpllm.main --config=configs/demo_ablation.py:single --workdir=runs/ablation/single
  python -m cpllm.ablation   # every row below, then the table (runs/ablation/table.md)

Input pipeline (Table 4a/b), context encoder trained as in the demo ('all'):
  single    single videos only: regression and text losses, no pairs
  pairwise  same-source CRF pairs and cross-video pairs only
  mix       the demo's mix of all three (= configs/demo.py)
Context encoder (Table 4c/d), with the mix:
  frozen    the context ViT and its projection fixed
  head      only the projection `proj_ctx` trained
  all       everything trained (= configs/demo.py; reported once, as 'mix')
Pixel path (#15), with the mix:
  vit_pixels  the demo before #15: the tiny ViT on raw RGB patches, frames fitted into
              120x240 before patches are cut, the score head on both paths' tokens
  score_all   the MSCN CNN at native scale, the score head on both paths' tokens
  pixel_pool  the score head on the mean of the pixel tokens (the demo before patch scores)
  faint_mscn  MSCN's constant 0.25 instead of BRISQUE's 1 (code values): faint texture is
              normalised up instead of read as smoothed (held-out `cell` scored 2.0)
  deep_cnn    a third 3x3 convolution of 64 channels on the CNN (receptive field ~28 px
              instead of ~16; 2.5x the pixel path's multiply-adds)
  weighted_pool  the frame score a learned weighted mean of the patch scores (WaDIQaM)
  no_flat_contrast  the plain mean of the patch scores (the demo before flat_contrast)
  exposure     an offset to every frame score from whole-frame luma statistics
               (score_exposure), so exposure variants train the score too
(Frames fitted into 120x240 with the MSCN CNN need no row: the demo's 120x160 clips fit that
box unchanged, so training is the demo's; only scoring differs, see the README.)
Training signal and data (#15), each one change of the demo:
  no_ladder    no ladder pairs and no ladder hinge (pairs and losses as before #15)
  no_augment   patches at the fixed grid, no flips
  see_all      no score_blind: exposure and smoothness distortions train the score too
  order_noise  noise variants leave the regression (order_only): the score learns their
               rank through the pair hinge, not the size of their label
  low_contrast half the examples' contrast scaled by a factor in [0.25, 1], labels kept
  big_clips    clips of 320x240 (4x the pixels of each photo) at the same native scale;
               needs its dataset first:
                 tfds build data_builders/demo_videos --data_dir=runs/data_big \
                   --config='{"name": "big", "height": 240, "width": 320}'
  whole_photo  clips of the whole photo shrunk into 160x120 (demo_videos 1.0.0's layout);
               needs its dataset first:
                 tfds build data_builders/demo_videos --data_dir=runs/data_whole_photo \
                   --config='{"name": "whole_photo", "scene_short": null}'
  smooth       two smooth images (demo_clips.SMOOTH_PHOTOS: colour wheel, Shepp-Logan
               phantom) added to the training sources, the split unchanged; needs:
                 tfds build data_builders/demo_videos --data_dir=runs/data_smooth \
                   --config='{"name": "smooth", "train_only": ["colorwheel", "phantom"]}'
  grain        a second CRF ladder per photo, encoded from its noise-5 clip (CRF 13, 17,
               ..., 49, scored against that clip; data_builders/demo_videos); needs:
                 tfds build data_builders/demo_videos --data_dir=runs/data_grain \
                   --config='{"name": "grain", "grain_sigma": 5.0}'
No pretrained SigLIP exists here, so 'frozen' and 'head' keep a *random* context tower:
the comparison says how much the demo leans on a trained context path, not what the
paper's frozen SigLIP gives.
"""

from cpllm import configs

ABLATIONS = {
    "single": dict(mix=dict(single=1.0, same_source=0.0, cross=0.0)),
    "pairwise": dict(mix=dict(single=0.0, same_source=1.0, cross=1.0, ladder=1.0)),
    "mix": dict(),
    "frozen": dict(context_encoder="frozen"),
    "head": dict(context_encoder="head"),
    "vit_pixels": dict(model=dict(pix_encoder=dict(variant="tiny", scan=True),
                                  pix_box=(120, 240), score_tokens="all")),
    "score_all": dict(model=dict(score_tokens="all")),
    "pixel_pool": dict(model=dict(score_tokens="pixel")),
    "deep_cnn": dict(model=dict(pix_encoder=dict(kind="cnn", variant="small",
                                                 features=(32, 64, 64), strides=(2, 1, 1)))),
    "faint_mscn": dict(model=dict(pix_encoder=dict(kind="cnn", variant="small",
                                                   mscn_c=0.25))),
    "no_ladder": dict(mix=dict(single=1.0, same_source=1.0, cross=1.0),
                      loss_weights=dict(ladder=0.0)),
    "no_augment": dict(data=dict(augment=False)),
    "weighted_pool": dict(model=dict(score_pool="weighted")),
    "no_flat_contrast": dict(model=dict(flat_contrast=None)),
    "exposure": dict(model=dict(score_exposure=True), score_blind=("smoothness",)),
    "low_contrast": dict(data=dict(low_contrast=0.25)),
    "big_clips": dict(data=dict(data_dir="runs/data_big")),
    "see_all": dict(score_blind=()),
    "order_noise": dict(order_only=("noise",)),
    "whole_photo": dict(data=dict(data_dir="runs/data_whole_photo")),
    "smooth": dict(data=dict(data_dir="runs/data_smooth")),
    "grain": dict(data=dict(data_dir="runs/data_grain")),
}


def get_config(arg: str | None = None):
  if arg not in ABLATIONS:
    raise ValueError(f"configs/demo_ablation.py needs one of {sorted(ABLATIONS)}, got {arg!r}")
  config = configs.load("configs/demo.py")
  change = ABLATIONS[arg]
  if "mix" in change:
    config.data.mix = change["mix"]
  for key in ("context_encoder", "score_blind", "order_only"):
    if key in change:
      config[key] = change[key]
  for group in ("model", "data", "loss_weights"):
    for key, value in change.get(group, {}).items():
      config[group][key] = value
  return config
