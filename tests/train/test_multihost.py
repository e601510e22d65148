"""Two local processes of 4 CPU devices each (gloo collectives, coordinator on 127.0.0.1)
train the smoke config as one job; their losses, parameters and evaluation equal a
single-process run on 8 devices of the same global batches, and the checkpoint they wrote
together restores in one process. GRPO from the same supervised run, likewise."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import portpicker
import pytest

from cpllm import configs
from cpllm.train import grpo
from cpllm.train import trainer
from tests.train import e2e

STEPS = 4
RUN_FLAGS = dict(log_every=1, checkpoint_every=2, eval_every=STEPS)


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def restore_state(workdir, like=None):
  """The latest checkpoint of `workdir`, onto the shardings of the state `like` (default:
  those it was saved with)."""
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")))
  abstract = like and jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  return manager.restore(manager.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))["state"]


@pytest.fixture(scope="module")
def single(data_dir, tmp_path_factory):
  """(workdir, last evaluation) of the smoke run in this one process on 8 devices."""
  workdir = str(tmp_path_factory.mktemp("single") / "run")
  return workdir, trainer.main(e2e.smoke_config(data_dir, total_steps=STEPS, **RUN_FLAGS),
                               workdir)


def run_two_processes(args, log_dir):
  """Runs `args` (a cpllm.main command line) as processes 0 and 1 of one job; returns
  their logs."""
  port = portpicker.pick_unused_port()
  env = e2e.subprocess_env(4)
  procs, logs = [], []
  for process_id in range(2):
    logs.append(open(log_dir / f"process{process_id}.log", "w+"))
    procs.append(subprocess.Popen(
        args + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                f"--process_id={process_id}"],
        cwd=e2e.REPO, env=env, stdout=logs[-1], stderr=subprocess.STDOUT))
  texts = []
  for proc, log in zip(procs, logs):
    try:
      proc.wait(timeout=600)
    finally:
      proc.kill()
    log.seek(0)
    texts.append(log.read())
    assert proc.returncode == 0, texts[-1][-5000:]
  return texts


def test_two_processes_train_like_one(data_dir, single, tmp_path):
  single, want_eval = single
  multi = str(tmp_path / "multi")
  logs = run_two_processes(e2e.command(data_dir, multi, STEPS) + [
      f"--config.{k}={v}" for k, v in RUN_FLAGS.items()], tmp_path)
  assert "process 0 of 2 feeds block 0 of 2" in logs[0]
  assert "process 1 of 2 feeds block 1 of 2" in logs[1]

  # Only process 0 writes metrics: one row per step, not two.
  want_rows = [r for r in read_jsonl(os.path.join(single, "metrics.jsonl")) if "loss" in r]
  rows = [r for r in read_jsonl(os.path.join(multi, "metrics.jsonl")) if "loss" in r]
  assert [r["step"] for r in rows] == [r["step"] for r in want_rows] == list(
      range(1, STEPS + 1))
  for key in ("loss", "loss_pair", "loss_reg", "loss_text", "grad_norm"):
    np.testing.assert_allclose([r[key] for r in rows], [r[key] for r in want_rows],
                               rtol=2e-5, err_msg=key)

  # The checkpoint both processes wrote, restored here onto one process's 8 devices.
  want_state = restore_state(single)
  state = restore_state(multi, want_state)
  assert int(state["step"]) == STEPS
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, rtol=0),
               state["trainable"], want_state["trainable"])
  jax.tree.map(np.testing.assert_array_equal, state["frozen"], want_state["frozen"])

  # Evaluation gathered over both processes: every video once, the same numbers.
  metrics = json.load(open(os.path.join(multi, "eval", str(STEPS), "metrics.json")))
  assert metrics["n_videos"] == want_eval["n_videos"]
  for key in ("srcc", "plcc_raw", "rmse", "level_srcc"):
    np.testing.assert_allclose(metrics[key], want_eval[key], rtol=1e-4, atol=1e-5,
                               err_msg=key)


def test_two_processes_run_grpo_like_one(data_dir, single, tmp_path):
  """Rollouts sampled on both processes' devices, their texts all-gathered for the rewards,
  the update, and the answers of the evaluation. (The 4-step supervised model earns no
  reward yet, so what the update sees is the KL term; the sampled responses are what
  differs between processes, and they must be the same.)"""
  sft_dir, _ = single
  config = configs.load("configs/demo_grpo.py:smoke")
  config.data.data_dir, config.grpo.init_workdir = data_dir, sft_dir
  single_dir = str(tmp_path / "grpo_single")
  grpo.main(config, single_dir)
  multi = str(tmp_path / "grpo_multi")
  run_two_processes([sys.executable, "-m", "cpllm.main", "--config=configs/demo_grpo.py:smoke",
                     f"--workdir={multi}", f"--config.data.data_dir={data_dir}",
                     f"--config.grpo.init_workdir={sft_dir}"], tmp_path)
  rollout_rows = lambda d: [r for r in read_jsonl(os.path.join(d, "metrics.jsonl"))
                            if "reward_total" in r]
  want_rows, rows = rollout_rows(single_dir), rollout_rows(multi)
  assert [r["step"] for r in rows] == [r["step"] for r in want_rows] == [1, 2]
  for key in ("response_length", "parse_rate", "reward_total", "loss", "kl", "grad_norm"):
    np.testing.assert_allclose([r[key] for r in rows], [r[key] for r in want_rows],
                               rtol=1e-4, atol=1e-6, err_msg=key)
  for step in ("0", "2"):
    answers = lambda d: read_jsonl(os.path.join(d, "eval", step, "answers.jsonl"))
    assert answers(multi) == answers(single_dir)
