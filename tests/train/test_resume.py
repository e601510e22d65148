"""A run that fails or is killed loses nothing: a non-finite loss stops training with the
step and keeps the last checkpoint; a run killed with SIGKILL and resumed ends with exactly
the parameters of an uninterrupted run."""

import os
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from flax import traverse_util

from cpllm.train import trainer
from tests.train import e2e

pytestmark = pytest.mark.slow  # end to end: `make test-fast` leaves it out


def test_non_finite_loss_stops_with_step_and_keeps_checkpoint(data_dir, trained, tmp_path):
  """The trained run, continued on a copy with a NaN loss weight, stops at its first step
  and leaves the last checkpoint as it was."""
  workdir = str(tmp_path / "run")
  shutil.copytree(trained[0], workdir)
  steps = e2e.SMOKE_RUN["total_steps"]
  bad = e2e.smoke_config(data_dir, **dict(e2e.SMOKE_RUN, total_steps=steps + 2),
                         loss_weights=dict(pair=1.0, reg=float("nan"), text=1.0))
  with pytest.raises(FloatingPointError, match=rf"step {steps + 1}: .*step {steps}\) is "
                                               "intact"):
    trainer.main(bad, workdir)
  step, state = e2e.final_params(workdir)
  assert step == steps
  _, before = e2e.final_params(trained[0])
  jax.tree.map(np.testing.assert_array_equal, state, before)


def test_sigkill_and_resume_give_identical_parameters(data_dir, trained, tmp_path):
  """The shared trained run is the uninterrupted one: the same run as a command line on the
  same 8 host devices, killed once its step-4 checkpoint is committed and run again, ends
  bit for bit where it ended."""
  steps = e2e.SMOKE_RUN["total_steps"]
  env = e2e.subprocess_env(8)
  killed = str(tmp_path / "killed")
  proc = subprocess.Popen(e2e.command(data_dir, killed), cwd=e2e.REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  ckpt = os.path.join(killed, "checkpoints", "4", "commit_success.txt")
  while not os.path.exists(ckpt) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert os.path.exists(ckpt), "the run ended before its step-4 checkpoint"
  assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  assert not os.path.exists(os.path.join(killed, "checkpoints", str(steps)))
  resumed = subprocess.run(e2e.command(data_dir, killed), cwd=e2e.REPO, env=env, check=True,
                           capture_output=True, text=True, timeout=600)
  assert "resumed from step 4" in resumed.stdout

  (step_a, a), (step_b, b) = e2e.final_params(trained[0]), e2e.final_params(killed)
  assert step_a == step_b == steps
  flat = lambda tree: {k: np.asarray(v) for k, v in traverse_util.flatten_dict(
      tree, sep="/").items()}
  fa, fb = flat(a["trainable"]), flat(b["trainable"])
  assert fa.keys() == fb.keys()
  for key in fa:
    np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)
