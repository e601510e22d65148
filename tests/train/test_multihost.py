"""Two local processes of 4 CPU devices each (gloo collectives, coordinator on 127.0.0.1)
train the smoke config as one job; their losses, parameters and evaluation equal a
single-process run on 8 devices of the same global batches, and the checkpoint they wrote
together restores in one process."""

import json
import os
import subprocess

import jax
import numpy as np
import orbax.checkpoint as ocp
import portpicker

from cpllm.train import trainer
from tests.train.test_main import REPO
from tests.train.test_main import command
from tests.train.test_main import data_dir  # noqa: F401 (the fixture)
from tests.train.test_main import smoke_config

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


def test_two_processes_train_like_one(data_dir, tmp_path):  # noqa: F811
  single = str(tmp_path / "single")
  want_eval = trainer.main(smoke_config(data_dir, total_steps=STEPS, **RUN_FLAGS), single)

  multi = str(tmp_path / "multi")
  port = portpicker.pick_unused_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  procs, logs = [], []
  for process_id in range(2):
    args = command(data_dir, multi, STEPS) + [
        f"--config.{k}={v}" for k, v in RUN_FLAGS.items()] + [
        f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
        f"--process_id={process_id}"]
    logs.append(open(tmp_path / f"process{process_id}.log", "w+"))
    procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=logs[-1],
                                  stderr=subprocess.STDOUT))
  for proc, log in zip(procs, logs):
    try:
      proc.wait(timeout=600)
    finally:
      proc.kill()
    log.seek(0)
    assert proc.returncode == 0, log.read()[-5000:]
  log0 = open(tmp_path / "process0.log").read()
  assert "process 0 of 2 feeds block 0 of 2" in log0
  assert "process 1 of 2 feeds block 1 of 2" in open(tmp_path / "process1.log").read()

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
