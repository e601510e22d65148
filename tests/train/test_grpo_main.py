"""GRPO end to end, from the trained smoke workdir (tests/train/conftest.py): rollouts,
rewards, updates of the LoRA adapters only, evaluations before and after, resume; and the
same run as two processes of one job."""

import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest

from cpllm import demo
from cpllm.train import grpo
from cpllm.train import trainer
from tests.train import e2e

pytestmark = pytest.mark.slow  # end to end: `make test-fast` leaves it out


def test_grpo_from_the_supervised_run_trains_adapters_only(trained, grpo_run, tmp_path):
  sft_dir = trained[0]
  workdir, metrics, printed, config = grpo_run
  assert "before GRPO: answer parse rate" in printed and "GRPO step 2/2" in printed

  for step in (0, 2):  # before the first GRPO step and at the end
    out = json.load(open(os.path.join(workdir, "eval", str(step), "metrics.json")))
    for key in ("srcc", "flip_rate", "level_srcc", "answer_parse_rate", "answer_srcc",
                "answer_plcc", "answer_flip_rate"):
      assert key in out, (step, key)
    answers = open(os.path.join(workdir, "eval", str(step), "answers.jsonl")).readlines()
    assert len(answers) == out["n_videos"]
  assert metrics["step"] == 2
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  train_rows = {r["step"]: r for r in rows if "reward_total" in r}
  assert set(train_rows) == {1, 2}
  for row in train_rows.values():
    for key in ("reward_format", "reward_regression", "reward_ranking", "reward_temporal",
                "parse_rate", "kl", "response_length", "loss"):
      assert np.isfinite(row[key]) or key == "score_error", key
    assert 1 <= row["response_length"] <= config.grpo.max_new_tokens
  # The first update starts at the reference: the k3 KL is exactly zero there.
  assert train_rows[1]["kl"] < 1e-6
  assert os.path.getsize(os.path.join(workdir, "rewards.png")) > 10_000

  sft_step, sft = e2e.final_params(sft_dir)
  step, state = e2e.final_params(workdir)
  assert step == 2
  flat = lambda tree: {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
                       for path, v in jax.tree_util.tree_leaves_with_path(tree)}
  sft_params = flat(trainer.combine(sft["trainable"], sft["frozen"]))
  trained_now, frozen_now, reference = (flat(state[k]) for k in
                                        ("trainable", "frozen", "reference"))
  assert trained_now and all("lora_" in k for k in trained_now)
  assert any(not np.array_equal(v, sft_params[k]) for k, v in trained_now.items())
  for name, value in frozen_now.items():  # everything else is the supervised model
    np.testing.assert_array_equal(value, sft_params[name], err_msg=name)
  for name, value in reference.items():  # the reference: the supervised adapters
    np.testing.assert_array_equal(value, sft_params[name], err_msg=name)

  # Finished: resumes and returns the last evaluation (on a copy: the run is shared).
  again = grpo.main(config, str(shutil.copytree(workdir, tmp_path / "run")))
  assert again["answer_parse_rate"] == metrics["answer_parse_rate"]
  table = demo.grpo_table(json.load(open(os.path.join(workdir, "eval", "0", "metrics.json"))),
                          again).splitlines()
  assert table[0] == "| metric | before (step 0) | after (step 2) |"
  assert any(line.startswith("| answer_flip_rate d=4 |") for line in table)


def test_two_processes_run_grpo_like_one(data_dir, trained, grpo_run, tmp_path):
  """Rollouts sampled on both processes' devices, their texts all-gathered for the rewards,
  the update, and the answers of the evaluation. (The 6-step supervised model earns no
  reward yet, so what the update sees is the KL term; the sampled responses are what
  differs between processes, and they must be the same.)"""
  sft_dir, single_dir = trained[0], grpo_run[0]
  multi = str(tmp_path / "grpo_multi")
  e2e.run_two_processes([sys.executable, "-m", "cpllm.main",
                         "--config=configs/demo_grpo.py:smoke", f"--workdir={multi}",
                         f"--config.data.data_dir={data_dir}",
                         f"--config.grpo.init_workdir={sft_dir}"], tmp_path)
  rollout_rows = lambda d: [r for r in e2e.read_jsonl(os.path.join(d, "metrics.jsonl"))
                            if "reward_total" in r]
  want_rows, rows = rollout_rows(single_dir), rollout_rows(multi)
  assert [r["step"] for r in rows] == [r["step"] for r in want_rows] == [1, 2]
  for key in ("response_length", "parse_rate", "reward_total", "loss", "kl", "grad_norm"):
    np.testing.assert_allclose([r[key] for r in rows], [r[key] for r in want_rows],
                               rtol=1e-4, atol=1e-6, err_msg=key)
  for step in ("0", "2"):
    answers = lambda d: e2e.read_jsonl(os.path.join(d, "eval", step, "answers.jsonl"))
    assert answers(multi) == answers(single_dir)
