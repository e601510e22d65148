"""Training entry point.

  python -m cpllm.main --config=configs/demo.py --workdir=runs/demo [--config.lr=3e-4]

Re-running the same command resumes from the latest checkpoint in the workdir. A config
with a `grpo` section runs GRPO (cpllm.train.grpo) from the supervised run it names;
otherwise supervised training (cpllm.train.trainer).
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from cpllm.train import grpo
from cpllm.train import trainer

config_flags.DEFINE_config_file("config", None, "Config file: configs/<name>.py[:arg].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and evaluations go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  config = flags.FLAGS.config
  run = grpo.main if config.get("grpo") else trainer.main
  run(config, flags.FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
