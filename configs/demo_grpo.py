"""GRPO on the demo: reasoning fine-tuning of the supervised demo model (runs/demo).

  python -m cpllm.main --config=configs/demo.py --workdir=runs/demo          # first
  python -m cpllm.main --config=configs/demo_grpo.py --workdir=runs/demo_grpo

The architecture, tokenizer and key-frame count come from the supervised run; only its
LoRA adapters train, and the reference policy is the same model with the adapters frozen at
their supervised values. Rewards and GRPO constants are the paper's (papers/vqathinker.md:
K = 4, beta 0.04, clip 0.2, sigma 0.5, alpha 0.8, delta 0.3, tau 0.5); the batch, the
number of steps and the learning rate are sized for a 2-core CPU. Evaluations at step 0
(before GRPO) and at the end write eval/<step>/metrics.json with the answer_* metrics.
`configs/demo_grpo.py:smoke` is a two-step version for tests (set grpo.init_workdir).
"""

import ml_collections

from cpllm.data import perturb

DATA_DIR = "runs/data"


def get_config(arg: str | None = None):
  smoke = arg == "smoke"
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = dict(name="demo_videos", data_dir=DATA_DIR, train_split="train",
                     eval_split="test", num_workers=0 if smoke else 1)
  config.text_len = 208  # for the state's shapes only; prompts are bucketed
  config.grpo = dict(
      init_workdir="runs/demo",
      num_samples=4,
      max_new_tokens=24 if smoke else 160,
      temperature=1.0,
      top_k=0,
      top_p=1.0,
      clip_eps=0.2,
      kl_beta=0.04,
      updates_per_rollout=1,
      perturbations=tuple(p.value for p in perturb.Perturbation),
      perturb_strength=0.5,
      rewards=dict(sigma=0.5, alpha=0.8, delta=0.3, tau=0.5, temporal_per_response=True),
  )
  config.param_rules = ((r"llm/.*lora_[ab]", 1.0), (r".*", 0.0))
  config.batch_size = 8  # videos per step; K responses each
  config.total_steps = 2 if smoke else 150
  config.lr = 2e-3
  config.schedule = "constant"
  config.warmup_steps = 0
  config.grad_clip = 1.0
  config.mesh = (-1, 1, 1)
  config.distributed = False  # True: jax.distributed.initialize() (every host of a pod)

  config.log_every = 1 if smoke else 10
  config.checkpoint_every = 2 if smoke else 50
  config.keep_checkpoints = 2
  config.eval_every = config.total_steps
  config.eval_batch_size = 8 if smoke else 32
  config.eval_describe = 2 if smoke else 4
  config.describe_tokens = 16 if smoke else 160
  return config
