"""What the end-to-end tests share: the tiny demo_videos build, the smoke config on it and
the command line that runs it. The fixtures built from these live in tests/train/conftest.py."""

import json
import os
import subprocess
import sys

import orbax.checkpoint as ocp
import portpicker

from cpllm import configs
from tests import conftest

TINY_DATA = dict(name="tiny", sources=("chelsea", "coins", "rocket", "coffee"), height=48,
                 width=64, clip_frames=8, num_frames=3, crfs=(23, 27, 33, 43),
                 blur_sigmas=(2.5,), noise_sigmas=(20.0,), exposure_gains=(),
                 stutter_strengths=(), drop_strengths=(), test_share=0.25, vocab_size=600)
REPO = str(configs.REPO_ROOT)
# The shared trained workdir's run (tests/train/conftest.py), which the SIGKILL and the
# two-process tests repeat as subprocesses: a row of metrics every step, checkpoints at 2, 4
# and 6, one evaluation at the end.
SMOKE_RUN = dict(total_steps=6, log_every=1, checkpoint_every=2, eval_every=6)


def smoke_overrides(data_dir):
  return {"data.data_dir": data_dir, "model.decoder.vocab_size": 600, "num_frames": 2,
          "batch_size": 8, "eval_batch_size": 8,
          "text_len": 176, "model.ctx_res": 32, "model.patch_size": 16,
          "model.pix_box": (48, 96), "describe_tokens": 8}


def smoke_config(data_dir, **over):
  config = configs.load("configs/demo.py:smoke")
  for key, value in dict(smoke_overrides(data_dir), **over).items():
    target, *path = key.split(".")
    if path:
      node = config[target]
      for part in path[:-1]:
        node = node[part]
      node[path[-1]] = value
    else:
      config[key] = value
  return config


def final_params(workdir):
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")))
  restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"]
  return manager.latest_step(), restored


def command(data_dir, workdir):
  """The command line of the shared trained workdir's run (SMOKE_RUN) into `workdir`."""
  args = [sys.executable, "-m", "cpllm.main", "--config=configs/demo.py:smoke",
          f"--workdir={workdir}"]
  for key, value in dict(smoke_overrides(data_dir), **SMOKE_RUN).items():
    args.append(f"--config.{key}={value if not isinstance(value, tuple) else list(value)}")
  return args


def subprocess_env(device_count: int) -> dict:
  """The environment of a subprocess with `device_count` host devices (the suite's XLA
  flags and compilation cache kept)."""
  return dict(os.environ, XLA_FLAGS=conftest.xla_flags(device_count), JAX_PLATFORMS="cpu")


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def run_two_processes(args, log_dir):
  """Runs `args` (a cpllm.main command line) as processes 0 and 1 of one job; returns
  their logs."""
  port = portpicker.pick_unused_port()
  env = subprocess_env(4)
  procs, logs = [], []
  for process_id in range(2):
    logs.append(open(log_dir / f"process{process_id}.log", "w+"))
    procs.append(subprocess.Popen(
        args + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                f"--process_id={process_id}"],
        cwd=REPO, env=env, stdout=logs[-1], stderr=subprocess.STDOUT))
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
