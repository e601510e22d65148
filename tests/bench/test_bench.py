"""bench/ helpers on tiny inputs: FLOP and byte accounting against hand counts, the memory
lower bound against a hand count, the roofline bytes, the report renderer. No timing is
asserted anywhere (speed is only measured by the benchmarks themselves)."""

import json
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bench import common
from bench import decode
from bench import report
from bench import scaling
from bench import score_speed
from bench import workloads
from cpllm.data import video
from cpllm.evals import baselines as baselines_lib
from cpllm.models import cpllm


def test_matmul_flops_match_xla_cost_analysis():
  m, k, n = 8, 16, 4
  assert common.matmul_flops(m, k, n) == 2 * 8 * 16 * 4
  compiled = jax.jit(jnp.dot).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
  assert common.cost(compiled)["flops"] == common.matmul_flops(m, k, n)


def test_cost_counts_a_scanned_body_once_and_unrolled_fixes_it():
  """Why FLOPs are counted on unrolled twins: XLA counts a while loop's body once."""
  x, w = jnp.ones((4, 8)), jnp.ones((3, 8, 8))
  scanned = lambda x, w: jax.lax.scan(lambda c, wi: (c @ wi, None), x, w)[0]
  looped = lambda x, w: x @ w[0] @ w[1] @ w[2]
  one = common.matmul_flops(4, 8, 8)
  # (+ a few FLOPs of loop counter arithmetic)
  assert common.cost(jax.jit(scanned).lower(x, w).compile())["flops"] == pytest.approx(
      one, abs=8)
  assert common.cost(jax.jit(looped).lower(x, w).compile())["flops"] == 3 * one
  config = workloads.load("configs/tiny.py")
  model = common.unrolled(config.model)
  assert all(model[p]["scan"] is False for p in ("ctx_encoder", "pix_encoder", "decoder"))
  assert "scan" not in config.model["decoder"]  # the original is left alone


def test_tree_bytes_and_memory_stats():
  tree = dict(a=np.zeros((2, 3), np.float32), b=[jax.ShapeDtypeStruct((5,), jnp.int8)])
  assert common.tree_bytes(tree) == 2 * 3 * 4 + 5
  assert common.tree_size(tree) == 11
  compiled = jax.jit(lambda x: x * 2, donate_argnums=0).lower(
      jax.ShapeDtypeStruct((256,), jnp.float32)).compile()
  stats = common.memory(compiled)
  assert stats["peak"] == stats["argument"] + stats["output"] - stats["alias"] + stats["temp"]
  assert stats["argument"] == 1024


def tiny_config():
  config = workloads.load("configs/tiny.py")
  config.loss_weights = dict(pair=1.0, reg=1.0, text=1.0)
  config.context_encoder = "frozen"
  config.lr, config.total_steps = 1e-3, 10
  return config


def test_memory_lower_bound_by_hand():
  config = tiny_config()
  state, _ = workloads.train_state(config, abstract=True)
  bound = workloads.memory_lower_bound(state, config)
  # tiny: ViTs width 32, depth 2, patch 8; Gemma width 64, depth 2; batch 2, M = 3,
  # text 16; context 32 x 32 -> 16 tokens (frozen: no activations); pixel patches 16 x 16
  # -> 4 tokens, K = 4; decoder S = 2 * (16 + 4) + 16 = 56.
  assert workloads.sequence_lengths(config.model, config.text_len) == dict(
      T_ctx=16, T_h=16, T_q=4, S=56)
  frames = 2 * 2 * 3  # batch x videos x M
  acts = bound["activations_by_stack"]
  assert acts["ctx"] == 0
  assert acts["pix"] == (2 + 1) * frames * 4 * 4 * 32 * 4
  assert acts["decoder"] == (2 + 1) * 2 * 56 * 64 * 4
  n_trainable = common.tree_size(state["trainable"])
  assert bound["trainable"] == 4 * n_trainable
  # Adam: mu and nu per trainable parameter, plus int32 step counters.
  assert 2 * 4 * n_trainable <= bound["optimizer"] <= 2 * 4 * n_trainable + 64
  assert bound["frozen"] == 4 * common.tree_size(state["frozen"]) > 0
  assert bound["total"] == (bound["trainable"] + bound["optimizer"] + bound["frozen"]
                            + bound["activations"] + bound["batch"])


def test_the_demo_cnn_pixel_path_counts_by_hand():
  """The demo's CNN pixel encoder (space-to-depth 2, 3x3 convolutions of 32 and 64 features
  with strides 2 and 1, a 2 x 2 token grid) on its 32-pixel patches."""
  config = workloads.load("configs/demo.py")
  assert workloads.sequence_lengths(config.model, config.text_len)["T_q"] == 4
  encoder = cpllm.build_pixel_encoder(config.model["pix_encoder"], jnp.float32)
  # Conv_0 reads 16 x 16 x 4 values, Conv_1 8 x 8 x 32, and 8 x 8 x 64 leave it.
  assert workloads.cnn_layer_inputs(encoder, 32) == 16 * 16 * 4 + 8 * 8 * 32 + 8 * 8 * 64
  assert "scan" not in common.unrolled(config.model)["pix_encoder"]
  assert common.unrolled(config.model)["decoder"]["scan"] is False


def test_roofline_bytes_by_hand():
  config = tiny_config()
  model = cpllm.CPLLM(**config.model)
  params = dict(llm=dict(w=np.zeros((10, 10), np.float32)))  # 400 bytes of weights
  roof = decode.roofline_seconds(model, params, batch=2, prefix=3, new=2, bandwidth=100.0)
  # tiny decoder: depth 2, one KV head of 16: per cache slot 2 * 2 * 1 * 16 * 2 * 4 bytes.
  per_slot = 2 * 2 * 16 * 2 * 4
  assert roof["cache_bytes_per_token_slot"] == per_slot
  assert roof["bytes"] == 2 * 400 + per_slot * (3 + 4)  # steps read 3, then 4 slots
  assert roof["seconds"] == pytest.approx(roof["bytes"] / 100.0)


def test_synthetic_batch_matches_the_pipeline_spec():
  config = tiny_config()
  batch = workloads.synthetic_batch(config)
  spec = workloads.batch_spec(config)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      k: (s.shape, s.dtype) for k, s in spec.items()}
  assert batch["mask_loss"].sum() > 0 and batch["mask_ar"][0, 0] == 0


def test_log_slope():
  assert scaling.log_slope([1, 2, 4], [3, 6, 12]) == pytest.approx(1.0)
  assert scaling.log_slope([1, 2, 4], [5, 5, 5]) == pytest.approx(0.0, abs=1e-12)


def test_markdown_table_and_fmt():
  table = common.markdown_table([dict(a=1234567, b=0.51234), dict(a=3, b=None)], ["a", "b"],
                                ["A", "B"])
  assert table.splitlines() == ["| A | B |", "| --- | --- |", "| 1,234,567 | 0.512 |",
                                "| 3 | - |"]
  assert common.fmt(2.5e11) == "2.50e+11"


def fake_results():
  machine = dict(date="2026-01-01T00:00:00+00:00", load_average=[1.0, 1.0, 1.0], cpu="x",
                 cores=2, jax="0.10.2")
  return dict(train_step=dict(quick=True, machine=machine, configs=dict(demo=dict(
      params=10, trainable=5, batch_size=2, decoder_seq=8, flops=2e9, step_s=0.5,
      flops_per_s=4e9, peak_flops_per_s=8e9, mfu=0.5))))


def test_report_rewrites_only_marked_blocks(tmp_path):
  text = ("intro\n<!-- bench:machine -->\nold\n<!-- /bench:machine -->\nprose\n"
          "<!-- bench:train_step -->\nold table\n<!-- /bench:train_step -->\nend\n")
  out = report.render(text, fake_results())
  assert out.startswith("intro\n<!-- bench:machine -->\n| result |")
  assert "old" not in out and "\nprose\n" in out and out.endswith("end\n")
  assert "| demo | 10 | 5 | 2 | 8 | 2 | 0.5 | 4 | 8 | 0.5 |" in out
  assert report.render(out, fake_results()) == out  # idempotent
  with pytest.raises(KeyError, match="bench:decode"):
    report.replace_block(text, "decode", "x")


def test_write_and_read_result(tmp_path):
  path = common.write_result("x", dict(mfu=dict(demo=np.float32(0.5))), quick=True,
                             results_dir=str(tmp_path))
  data = json.load(open(path))
  assert data["mfu"] == dict(demo=0.5) and data["quick"] is True
  assert {"cpu", "cores", "jax", "date", "load_average"} <= set(data["machine"])
  assert common.read_result("x", str(tmp_path))["name"] == "x"
  assert common.read_result("missing", str(tmp_path)) is None


class StubScorer:
  """score.Scorer's reading (the real key-frame decoder) without a model: the score is the
  mean pixel and the description three words (the model is timed by the benchmark only)."""
  config = ml_collections.ConfigDict(dict(num_frames=3, describe_tokens=3))
  tokenizer = types.SimpleNamespace(encode=str.split)
  step = 0

  def read(self, path):
    return video.read_key_frames(path, self.config.num_frames)[0]

  def score_frames(self, frames, describe=True):
    out = dict(score=1 + 4 * float(frames.mean()) / 255)
    return dict(out, description="fair and sharp") if describe else out


def test_score_speed_rows_and_report(tmp_path):
  """One 256x200 video (NIQE needs 194 pixels a side), the real BRISQUE and NIQE beside a
  stub scorer: a row per video with every scorer's repeats and first call, seconds per
  video = decode + own time, the ratio to BRISQUE, and the report renders it."""
  paths = score_speed.make_videos(str(tmp_path), sizes=((256, 200),), seconds=0.4)
  assert list(paths) == ["256x200"]
  assert video.probe(paths["256x200"]).width == 256
  scorer, baselines = StubScorer(), baselines_lib.load(["brisque", "niqe"])
  (row,) = score_speed.measure(scorer, baselines, paths, repeats=2)
  assert row["video"] == "256x200" and row["kbps"] > 0 and row["description_tokens"] == 3
  assert len(row["decode_times"]) == 2
  for name in score_speed.SCORERS:
    assert len(row[f"{name}_times"]) == 2 and row[f"{name}_first_s"] > 0
    assert row[f"{name}_s"] == row["decode_s"] + row[f"{name}_own_s"]
  assert row["ratio"] == row["cpllm_s"] / row["brisque_s"]
  result = score_speed.summarise([row], scorer, "a stub", baselines, 2,
                                 dict(scorer=1.0, baselines=0.5))
  assert result["key_frames"] == 3 and result["ratio"] == {"256x200": row["ratio"]}
  common.write_result("score_speed", result, quick=True, results_dir=str(tmp_path))
  text = report.render("<!-- bench:machine -->\n<!-- /bench:machine -->\n"
                       "<!-- bench:score_speed -->\n<!-- /bench:score_speed -->\n",
                       dict(score_speed=common.read_result("score_speed", str(tmp_path))))
  assert f"| 256x200 | {common.fmt(row['kbps'])} | {common.fmt(row['cpllm_s'])} |" in text
  assert "| score_speed |" in text and "cpllm: a stub, 3 key frames" in text


def test_trained_needs_a_config_and_a_numbered_checkpoint(tmp_path):
  assert not score_speed.trained(str(tmp_path))
  (tmp_path / "config.json").write_text("{}")
  (tmp_path / "checkpoints" / "tmp").mkdir(parents=True)
  assert not score_speed.trained(str(tmp_path))
  (tmp_path / "checkpoints" / "600").mkdir()
  assert score_speed.trained(str(tmp_path))
