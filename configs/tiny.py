"""Tiny CP-LLM for tests and the forward-pass smoke run (seconds on a CPU).

`--config=configs/tiny.py` uses the Gemma-1-like tiny decoder; `configs/tiny.py:gemma2`
the Gemma-2-like one (GQA, soft-capping, sliding window, post-norms).
"""

import ml_collections


def get_config(arg: str | None = None):
  decoder_variant = {None: "tiny", "": "tiny", "gemma1": "tiny", "gemma2": "tiny2"}[arg]
  config = ml_collections.ConfigDict()
  config.model = dict(
      ctx_encoder=dict(variant="tiny", scan=True),
      pix_encoder=dict(variant="tiny", scan=True),
      decoder=dict(variant=decoder_variant, lora_rank=4,
                   lora_targets=("q_einsum", "kv_einsum")),
      ctx_res=32,
      ctx_pool=1,
      patch_size=16,
      num_patches=4,
      pix_box=(48, 96),
      score_hidden=32,
      decoder_frames=1,
      level_token_ids=(10, 11, 12, 13, 14),
  )
  config.num_frames = 3  # M key frames per video.
  config.text_len = 16
  config.batch_size = 2
  return config
