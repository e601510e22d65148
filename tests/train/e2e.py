"""What the end-to-end tests share: the tiny demo_videos build, the smoke config on it and
the command line that runs it. The fixtures built from these live in tests/train/conftest.py."""

import os
import sys

import orbax.checkpoint as ocp

from cpllm import configs
from tests import conftest

TINY_DATA = dict(name="tiny", sources=("chelsea", "coins", "rocket", "coffee"), height=48,
                 width=64, clip_frames=8, num_frames=3, crfs=(23, 27, 33, 43),
                 blur_sigmas=(2.5,), noise_sigmas=(20.0,), exposure_gains=(),
                 stutter_strengths=(), drop_strengths=(), test_share=0.25, vocab_size=600)
REPO = str(configs.REPO_ROOT)
SMOKE_STEPS = 6  # the shared trained workdir's run


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


def command(data_dir, workdir, steps):
  args = [sys.executable, "-m", "cpllm.main", "--config=configs/demo.py:smoke",
          f"--workdir={workdir}", f"--config.total_steps={steps}",
          "--config.checkpoint_every=2", "--config.eval_every=1000"]
  for key, value in smoke_overrides(data_dir).items():
    args.append(f"--config.{key}={value if not isinstance(value, tuple) else list(value)}")
  return args


def subprocess_env(device_count: int) -> dict:
  """The environment of a subprocess with `device_count` host devices (the suite's XLA
  flags and compilation cache kept)."""
  return dict(os.environ, XLA_FLAGS=conftest.xla_flags(device_count), JAX_PLATFORMS="cpu")
