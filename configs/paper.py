"""CP-LLM as in the paper (papers/cp-llm.md, section 4.1, "Implementation Details").

SigLIP So400m/14 at 448x448 (frozen) as context encoder; a ViT-B/16 patch encoder on
K = 8 non-overlapping 224x224 patches of the frame fitted into 540x1080 (the paper uses
VideoPrism; its ViT-B backbone has the same shape); Gemma 2B with LoRA rank 4 on q, k, v;
M = 5 key frames; text length 512; Adam at 1e-4; batch 128; equal loss weights.

`configs/paper.py:gemma2` swaps in Gemma 2 2B. Checkpoint and tokenizer paths are set on
the command line, e.g. --config.init.paligemma=/ckpt/pt_224.npz (see README).
"""

import ml_collections


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
  config.batch_size = 128
  config.lr = 1e-4
  config.loss_weights = dict(pair=1.0, reg=1.0, text=1.0)
  config.freeze_context_encoder = "frozen"  # frozen | head | all
  # Public checkpoints to start from (None: random init). Paths, not downloads.
  config.init = dict(siglip=None, paligemma=None, gemma=None, pix_vit=None)
  config.tokenizer = None  # Path to Gemma's tokenizer.model (sentencepiece).
  return config
