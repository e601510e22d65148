"""The ablation configs change exactly one switch of the demo, and the table reads them."""

import pytest

from cpllm import configs
from cpllm.evals import tables
from cpllm.data import pipeline
from cpllm.train import trainer


def test_each_ablation_changes_one_switch_of_the_demo():
  demo = configs.load("configs/demo.py").to_dict()
  rows = configs.load_module("configs/demo_ablation.py").ABLATIONS
  assert set(rows) == {"single", "pairwise", "mix", "frozen", "head", "vit_pixels",
                       "score_all", "pixel_pool", "deep_cnn", "weighted_pool", "no_ladder",
                       "no_augment", "see_all", "order_noise", "whole_photo", "grain",
                       "no_flat_contrast", "exposure", "low_contrast", "big_clips",
                       "faint_mscn", "smooth"}
  changed = {}
  for name in rows:
    config = configs.load(f"configs/demo_ablation.py:{name}").to_dict()
    changed[name] = {k for k in demo if config[k] != demo[k]}
  assert changed == {"single": {"data"}, "pairwise": {"data"}, "mix": set(),
                     "frozen": {"context_encoder"}, "head": {"context_encoder"},
                     "vit_pixels": {"model"}, "score_all": {"model"},
                     "pixel_pool": {"model"}, "deep_cnn": {"model"},
                     "weighted_pool": {"model"}, "see_all": {"score_blind"},
                     "order_noise": {"order_only"},
                     "no_ladder": {"data", "loss_weights"}, "no_augment": {"data"},
                     "whole_photo": {"data"}, "grain": {"data"},
                     "no_flat_contrast": {"model"}, "exposure": {"model", "score_blind"},
                     "low_contrast": {"data"}, "big_clips": {"data"},
                     "faint_mscn": {"model"}, "smooth": {"data"}}
  exposure = configs.load("configs/demo_ablation.py:exposure")
  assert exposure.model.score_exposure and tuple(exposure.score_blind) == ("smoothness",)
  assert configs.load("configs/demo_ablation.py:no_flat_contrast").model.flat_contrast is None
  assert configs.load("configs/demo_ablation.py:low_contrast").data.low_contrast == 0.25
  vit_pixels = configs.load("configs/demo_ablation.py:vit_pixels").model
  assert vit_pixels.pix_encoder.to_dict() == {"variant": "tiny", "scan": True}
  assert tuple(vit_pixels.pix_box) == (120, 240) and vit_pixels.score_tokens == "all"
  assert configs.load("configs/demo_ablation.py:score_all").model.score_tokens == "all"
  assert configs.load("configs/demo_ablation.py:pixel_pool").model.score_tokens == "pixel"
  deep_cnn = configs.load("configs/demo_ablation.py:deep_cnn").model
  assert deep_cnn.pix_encoder.to_dict() == {"kind": "cnn", "variant": "small",
                                            "features": (32, 64, 64), "strides": (2, 1, 1)}
  assert deep_cnn.to_dict() == dict(configs.load("configs/demo.py").model.to_dict(),
                                    pix_encoder=deep_cnn.pix_encoder.to_dict())
  faint = configs.load("configs/demo_ablation.py:faint_mscn").model
  assert faint.to_dict() == dict(configs.load("configs/demo.py").model.to_dict(),
                                 pix_encoder={"kind": "cnn", "variant": "small",
                                              "mscn_c": 0.25})
  assert tuple(configs.load("configs/demo_ablation.py:see_all").score_blind) == ()
  assert configs.load("configs/demo_ablation.py:weighted_pool").model.score_pool == "weighted"
  assert tuple(configs.load("configs/demo_ablation.py:order_noise").order_only) == ("noise",)
  single = configs.load("configs/demo_ablation.py:single")
  assert pipeline.Mix(**single.data.mix).probabilities().tolist() == [1.0, 0.0, 0.0, 0.0]
  pairwise = configs.load("configs/demo_ablation.py:pairwise")
  assert pipeline.Mix(**pairwise.data.mix).probabilities().tolist() == [0, 1 / 3, 1 / 3,
                                                                         1 / 3]
  no_ladder = configs.load("configs/demo_ablation.py:no_ladder")
  assert pipeline.Mix(**no_ladder.data.mix).probabilities().tolist() == [1 / 3] * 3 + [0]
  assert no_ladder.loss_weights.ladder == 0.0 and no_ladder.loss_weights.pair == 1.0
  assert configs.load("configs/demo_ablation.py:no_augment").data.augment is False
  assert configs.load("configs/demo_ablation.py:whole_photo").data.data_dir == (
      "runs/data_whole_photo")
  # 'frozen' trains neither the context tower nor its projection, 'head' the projection only.
  rules = lambda name: dict(trainer.param_rules(configs.load(f"configs/demo_ablation.py:"
                                                             f"{name}")))
  assert rules("frozen")["img/.*"] == rules("frozen")["proj_ctx/.*"] == 0.0
  assert rules("head")["img/.*"] == 0.0 and rules("head")["proj_ctx/.*"] == 1.0
  with pytest.raises(ValueError, match="needs one of"):
    configs.load("configs/demo_ablation.py:bogus")


def test_table_rows_read_nested_flip_rates_and_mark_missing_values():
  metrics = dict(step=600, srcc=0.5, plcc=0.25, krcc=0.125, rmse=1.0,
                 flip_rate={"2": 0.5, "4": 0.375, "10": None, "20": 0.0})
  values = tables.row_values(metrics)
  assert values["flip_rate 4"] == 0.375 and values["flip_rate 20"] == 0.0
  assert values["flip_rate 10"] is None and values["text_level_accuracy"] is None
  table = tables.markdown({"mix": metrics})
  assert table.splitlines()[2] == ("| mix | 600 | 0.500 | 0.250 | 0.125 | 1.000 | 0.500 | "
                                   "0.375 | n/a | 0.000 | n/a |")
