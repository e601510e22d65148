"""The benchmark config: configs/demo.py widened until matmuls dominate (bench/, issue 8).

73,708,929 parameters (`python -m bench.run train_step` prints the count from the state):
  decoder  Gemma-1-like, width 768, depth 6, MLP 3072 (GeGLU), 12 query heads and one KV
           head (MQA, as Gemma 2B), head_dim 64, vocabulary 1024 (the demo tokenizer's):
           50.3M with LoRA rank 4 on q and kv;
  encoders two ViTs of width 384, depth 6, MLP 1536, 6 heads, patch 16: 10.7M each
           (context at 112 x 112 = 49 tokens; pixel on 4 patches of 64 = 16 tokens each).
Everything trains (as in the demo: context encoder 'all', decoder base weights too), so
every layer has its weight gradients. Batch 2, M = 4 key frames, text length 128: the
decoder sees 2 * (49 + 16) + 128 = 258 tokens per example.

Only the train-step, memory and decode benchmarks build it; there is no dataset for it
(`data` is the demo's, for the pipeline's shapes).
"""

from cpllm import configs

VIT = dict(variant="tiny", width=384, depth=6, mlp_dim=1536, num_heads=6, patch_size=16,
           scan=True)


def get_config(arg: str | None = None):
  del arg
  config = configs.load("configs/demo.py")
  config.model = dict(
      ctx_encoder=dict(VIT),
      pix_encoder=dict(VIT),
      decoder=dict(variant="tiny", width=768, depth=6, mlp_dim=3072, num_heads=12,
                   num_kv_heads=1, head_dim=64, vocab_size=1024, lora_rank=4,
                   lora_targets=("q_einsum", "kv_einsum")),
      ctx_res=112,
      ctx_pool=1,
      patch_size=64,
      num_patches=4,
      pix_box=(120, 240),
      score_hidden=256,
      decoder_frames=1,
      level_token_ids=(10, 11, 12, 13, 14),
  )
  config.num_frames = 4
  config.text_len = 128
  config.batch_size = 2
  return config
