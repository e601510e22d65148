"""CP-LLM as in the paper (papers/cp-llm.md, section 4.1, "Implementation Details").

SigLIP So400m/14 at 448x448 (frozen) as context encoder; a ViT-B/16 patch encoder on
K = 8 non-overlapping 224x224 patches of the frame fitted into 540x1080 (the paper uses
VideoPrism; its ViT-B backbone has the same shape); Gemma 2B with LoRA rank 4 on q, k, v;
M = 5 key frames; text length 512; Adam at 1e-4; batch 128; equal loss weights.

`configs/paper.py:gemma2` swaps in Gemma 2 2B. The data, checkpoint and tokenizer paths are
set on the command line, e.g. --config.data.data_dir=/data/tfds
--config.init.paligemma=/ckpt/pt_224.npz --config.tokenizer=/ckpt/tokenizer.model (see
README). The paper trains 500 epochs; `total_steps` is the budget in steps at batch 128.
"""

import ml_collections

# None until given: a placeholder is typed, so --config.x=/some/path can still set it.
path = lambda: ml_collections.config_dict.placeholder(str)


def get_config(arg: str | None = None):
  decoder_variant = {None: "gemma_2b", "": "gemma_2b", "gemma1": "gemma_2b",
                     "gemma2": "gemma2_2b"}[arg]
  config = ml_collections.ConfigDict()
  config.model = dict(
      ctx_encoder=dict(variant="So400m/14", scan=True, remat_policy="nothing_saveable"),
      pix_encoder=dict(variant="B/16", scan=True, remat_policy="nothing_saveable"),
      decoder=dict(variant=decoder_variant, lora_rank=4,
                   lora_targets=("q_einsum", "kv_einsum"), scan=True,
                   remat_policy="nothing_saveable"),
      ctx_res=448,
      ctx_pool=1,
      patch_size=224,
      num_patches=8,
      pix_box=(540, 1080),
      score_hidden=512,
      decoder_frames=1,
      level_token_ids=None,  # Set from the tokenizer: ids of " excellent", " good", ...
  )
  config.num_frames = 5
  config.text_len = 512
  config.seed = 0
  # LSVQ with its compression variants (build: data_builders/crf_variants over LSVQ).
  config.data = dict(name="crf_variants", data_dir=path(), train_split="train",
                     eval_split="test",
                     mix=dict(single=1.0, same_source=1.0, cross=1.0, ladder=0.0),
                     level_rate=0.3, reason_rate=0.0, augment=False,
                     low_contrast=ml_collections.config_dict.placeholder(float),
                     num_workers=8)  # reason_rate > 0 before GRPO
  config.tokenizer = path()  # Path to Gemma's tokenizer.model (sentencepiece); required.
  config.context_encoder = "frozen"  # frozen | head | all
  config.train_decoder_base = False  # LoRA only
  config.param_rules = None
  # Public checkpoints to start from (None: random init). Paths, not downloads.
  config.init = dict(siglip=path(), paligemma=path(), gemma=path(), pix_vit=path())
  config.loss_weights = dict(pair=1.0, reg=1.0, text=1.0, ladder=0.0)  # eq. 1-3 only
  config.ladder_margin = 0.0
  config.score_blind = ()  # every label is a real MOS of everything in the video
  config.order_only = ()  # and every label's size is measured, so every one is regressed

  config.batch_size = 128
  config.total_steps = 100_000
  config.lr = 1e-4
  config.schedule = "cosine"
  config.warmup_steps = 1000
  config.grad_clip = 1.0
  config.mesh = (-1, 1, 1)
  config.distributed = False  # True: jax.distributed.initialize() (every host of a pod)

  config.log_every = 50
  config.checkpoint_every = 1000
  config.keep_checkpoints = 3
  config.eval_every = 5000
  config.eval_batch_size = 128
  config.eval_describe = 16
  config.describe_tokens = 128
  return config
