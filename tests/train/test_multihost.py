"""Two local processes of 4 CPU devices each (gloo collectives, coordinator on 127.0.0.1)
train the smoke config as one job; their losses, parameters and evaluation equal the
shared single-process run on 8 devices of the same global batches (tests/train/conftest.py),
and the checkpoint they wrote together restores in one process. GRPO in two processes:
test_grpo_main.py."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.train import e2e

pytestmark = pytest.mark.slow  # end to end: `make test-fast` leaves it out

STEPS = e2e.SMOKE_RUN["total_steps"]


def restore_state(workdir, like=None):
  """The latest checkpoint of `workdir`, onto the shardings of the state `like` (default:
  those it was saved with)."""
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")))
  abstract = like and jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  return manager.restore(manager.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))["state"]


def test_two_processes_train_like_one(data_dir, trained, tmp_path):
  single, want_eval, _ = trained
  multi = str(tmp_path / "multi")
  logs = e2e.run_two_processes(e2e.command(data_dir, multi), tmp_path)
  assert "process 0 of 2 feeds block 0 of 2" in logs[0]
  assert "process 1 of 2 feeds block 1 of 2" in logs[1]

  # Only process 0 writes metrics: one row per step, not two.
  want_rows = [r for r in e2e.read_jsonl(os.path.join(single, "metrics.jsonl")) if "loss" in r]
  rows = [r for r in e2e.read_jsonl(os.path.join(multi, "metrics.jsonl")) if "loss" in r]
  assert [r["step"] for r in rows] == [r["step"] for r in want_rows] == list(
      range(1, STEPS + 1))
  for key in ("loss", "loss_pair", "loss_reg", "loss_text", "grad_norm"):
    np.testing.assert_allclose([r[key] for r in rows], [r[key] for r in want_rows],
                               rtol=2e-5, err_msg=key)

  # The checkpoint both processes wrote, restored here onto one process's 8 devices.
  want_state = restore_state(single)
  state = restore_state(multi, want_state)
  assert int(state["step"]) == STEPS
  # The all-reduce sums in another order; Adam divides each update by the gradient's
  # running RMS, so that round-off grows step by step: 5e-5 is 5% of one step at lr 1e-3.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=5e-5, rtol=0),
               state["trainable"], want_state["trainable"])
  jax.tree.map(np.testing.assert_array_equal, state["frozen"], want_state["frozen"])

  # Evaluation gathered over both processes: every video once, the same numbers.
  metrics = json.load(open(os.path.join(multi, "eval", str(STEPS), "metrics.json")))
  assert metrics["n_videos"] == want_eval["n_videos"]
  for key in ("srcc", "plcc_raw", "rmse", "level_srcc"):
    np.testing.assert_allclose(metrics[key], want_eval[key], rtol=1e-4, atol=1e-5,
                               err_msg=key)
