"""Training entry point.

  python -m cpllm.main --config=configs/demo.py --workdir=runs/demo [--config.lr=3e-4]

Re-running the same command resumes from the latest checkpoint in the workdir. A config
with a `grpo` section runs GRPO (cpllm.train.grpo) from the supervised run it names;
otherwise supervised training (cpllm.train.trainer).

Multi-process (every host of a TPU pod runs the same command): `--config.distributed=True`
joins the job with `jax.distributed.initialize()`, which finds the pod by itself on Cloud
TPU VMs. Elsewhere name the job, e.g. two local processes:

  python -m cpllm.main ... --coordinator_address=127.0.0.1:12345 --num_processes=2 \
      --process_id=0   (and --process_id=1 in the other)

Giving --coordinator_address (or setting JAX_COORDINATOR_ADDRESS) asks for it as well.
"""

import os


from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from cpllm import sharding
from cpllm.train import grpo
from cpllm.train import trainer

config_flags.DEFINE_config_file("config", None, "Config file: configs/<name>.py[:arg].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and evaluations go.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
flags.DEFINE_integer("num_processes", None, "Processes in the job (multi-process).")
flags.DEFINE_integer("process_id", None, "This process's index in the job (multi-process).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  config, f = flags.FLAGS.config, flags.FLAGS
  if (config.get("distributed") or f.coordinator_address
      or os.environ.get("JAX_COORDINATOR_ADDRESS")):
    sharding.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
  run = grpo.main if config.get("grpo") else trainer.main
  run(config, flags.FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
