"""CP-LLM: a context (SigLIP) encoder and a pixel (patch) encoder feeding a score head and
a LoRA-adapted Gemma decoder (papers/cp-llm.md section 3.1).

Inputs are preprocessed by cpllm.data.video (one implementation for training, scoring and
export); pixel values are in [0, 255] and mapped to [-1, 1] here. Every example holds two
video slots, A and B (V = 2); a single-video example repeats A in B's slot and sets
video_mask[:, 1] = False, so B's tokens are invisible to the decoder (the paper's case II).

Decoder sequence per example (prefix-LM):

  [ A: frames f_1..f_d, each (u, v) | B: same | prompt | target ]
    input_mask: 1 ...                 video_mask[1]   text input_mask
    mask_ar:    0 ...                 0 ...           text mask_ar (0 prompt, 1 target)

with d = `decoder_frames` key frames chosen at segment centres of the M key frames.

Parameters: `img` (context ViT), `proj_ctx`, `pix` (patch ViT, or with
pix_encoder kind 'cnn' the MSCN CNN of cnn.py), `proj_pix`, `pix_norm`,
`score_head/{hidden,out}` (and optionally `score_weight`, `exposure_head`), `llm`
(Gemma), see DESIGN.md section 2.

The score head reads the mean of all visual tokens of a frame (`score_tokens='all'`, the
paper) or of the pixel tokens alone (`'pixel'`): a context encoder trained from scratch on
a few photos learns their content, which then leaks into the score of unseen content.
With `'patch'` (CNNIQA's pooling, Kang et al. 2014) the head scores every pixel patch
from its own tokens and the frame score is the mean of the K patch scores, which are
returned as 'patch_scores' so a loss can compare one patch position of two videos.
With `score_pool='weighted'` (WaDIQaM, Bosse et al. 2018) a second small MLP,
`score_weight`, gives each patch a positive weight and the frame score is the weighted
mean: a flat patch (a white wall, a clear sky) looks the same at CRF 13 and at CRF 45, so a
per-patch regression can only give it the average label, and the plain mean lets such
patches pull the frame towards the middle; weights learn to trust the patches that show
their quality.
e.g. patch scores [4.0, 2.0], weights [3.0, 1.0] -> (12 + 2) / 4 = 3.5 (mean: 3.0).
With `flat_contrast` c the frame score is instead the mean of the patch scores weighted by
each patch's contrast (`contrast_weights`): a fixed rule where `score_weight` learns one.
With `score_exposure` a small MLP, `exposure_head`, adds an offset to every frame score
from five statistics of the whole frame's luma (`exposure_statistics`): contrast
normalisation divides a gain out, so the patch scores alone see an underexposed frame as
pristine.
With `score_prenorm` the head reads the pixel tokens before `pix_norm`: the layer norm
that scales tokens for the decoder also divides out their magnitude, i.e. how much local
structure a distortion added or removed.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cpllm.data import video
from cpllm.models import cnn
from cpllm.models import gemma
from cpllm.models import vit

# Q-Align's weights for the level words, in the order of `level_token_ids`.
LEVELS = ("excellent", "good", "fair", "poor", "bad")
LEVEL_WEIGHTS = (5.0, 4.0, 3.0, 2.0, 1.0)


def build_vit(cfg: dict[str, Any], dtype) -> vit.ViT:
  """ViT from {'variant': name, **overrides} (overrides: scan, remat_policy, ...)."""
  cfg = dict(cfg)
  return vit.ViT(**{**vit.VARIANTS[cfg.pop("variant")], **cfg}, dtype=dtype)


def build_pixel_encoder(cfg: dict[str, Any], dtype) -> nn.Module:
  """The pixel path's encoder: {'kind': 'vit' (default) or 'cnn', 'variant', **overrides}."""
  cfg = dict(cfg)
  kind = cfg.pop("kind", "vit")
  if kind == "vit":
    return build_vit(cfg, dtype)
  if kind == "cnn":
    return cnn.PatchCNN(**{**cnn.VARIANTS[cfg.pop("variant")], **cfg}, dtype=dtype)
  raise ValueError(f"pix_encoder kind must be 'vit' or 'cnn', got {kind!r}")


def build_gemma(cfg: dict[str, Any], dtype) -> gemma.Gemma:
  """Gemma from {'variant': name, 'lora_rank', 'lora_alpha', 'lora_targets', **overrides}."""
  cfg = dict(cfg)
  lora = gemma.LoRA(rank=cfg.pop("lora_rank", 0), alpha=cfg.pop("lora_alpha", None),
                    targets=tuple(cfg.pop("lora_targets", ("q_einsum", "kv_einsum"))))
  return gemma.Gemma(**{**gemma.VARIANTS[cfg.pop("variant")], **cfg}, lora=lora,
                     dtype=dtype)


def decoder_frame_indices(num_frames: int, decoder_frames: int) -> np.ndarray:
  """Segment-centre picks: e.g. M=5, d=1 -> [2]; d=2 -> [1, 3]; d=5 -> [0..4]."""
  if not 1 <= decoder_frames <= num_frames:
    raise ValueError(f"decoder_frames={decoder_frames} must be in [1, M={num_frames}]")
  return video.segment_centres(num_frames, decoder_frames)


def last_prefix_index(input_mask, mask_ar):
  """Index of the last real prefix token per row: int[B] from bool[B, L], int[B, L].

  e.g. input_mask [1 1 1 0 1 1], mask_ar [0 0 0 0 1 1] -> 2.
  """
  return last_true_index(input_mask.astype(bool) & (jnp.cumsum(mask_ar, axis=1) == 0))


def last_true_index(mask):
  """Index of the last True per row: int[B] from bool[B, T]; e.g. [1 1 1 0 0] -> 2."""
  return mask.shape[1] - 1 - jnp.argmax(mask[:, ::-1].astype(bool), axis=1)


def target_positions(mask_loss, count: int):
  """The first `count` text positions whose logits predict a target token.

  Logits at position i predict text[:, i + 1], so position i is a target position where
  mask_loss[:, i + 1] = 1. Returns (int32[B, N] indices, bool[B, N] whether each is one),
  N = min(count, L - 1); rows with fewer targets are filled with non-target positions.

  e.g. mask_loss [0 0 1 1 0], count 3 -> [1, 2, 0], [True, True, False].
  """
  predicts = mask_loss[:, 1:].astype(bool)
  order = jnp.argsort(~predicts, axis=1, stable=True)[:, :count].astype(jnp.int32)
  return order, jnp.take_along_axis(predicts, order, axis=1)


def level_score(logits, level_token_ids):
  """Q-Align score from next-token logits float[B, V]: sum_i softmax(l_levels)_i * w_i.

  Returns (level_probs float32[B, 5], level_score float32[B]) on the 1..5 scale.
  """
  level_logits = logits[:, jnp.asarray(level_token_ids)]
  probs = jax.nn.softmax(level_logits.astype(jnp.float32), axis=-1)
  return probs, probs @ jnp.asarray(LEVEL_WEIGHTS, jnp.float32)


class ScoreHead(nn.Module):
  """Two-layer MLP with ReLU: float[..., D] -> float32[...]."""
  hidden: int

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(self.hidden, name="hidden",
                         kernel_init=nn.with_logical_partitioning(
                             nn.initializers.lecun_normal(), ("embed", "mlp")))(x))
    x = nn.Dense(1, name="out", kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ("mlp", None)))(x)
    return x[..., 0].astype(jnp.float32)


EXPOSURE_PERCENTILES = (1.0, 50.0, 99.0)
CRUSHED, CLIPPED = 4.0, 251.0  # luma code values at or beyond which detail is lost


def exposure_statistics(frames):
  """What a gain or a clipped exposure changes, from whole frames float[N, H, W, 3] in
  0..255 (the context path's): float32[N, 5], the luma's 1st, 50th and 99th percentiles
  / 255 and the shares of pixels crushed (<= CRUSHED) and clipped (>= CLIPPED).

  e.g. a frame of luma 0 on its left half and 255 on its right -> [0, 0.5, 1, 0.5, 0.5].
  """
  luma = jnp.asarray(frames, jnp.float32) @ jnp.asarray(cnn.LUMA, jnp.float32)
  luma = luma.reshape(luma.shape[0], -1)
  percentiles = jnp.percentile(luma, jnp.asarray(EXPOSURE_PERCENTILES), axis=1).T / 255.0
  return jnp.concatenate([percentiles, (luma <= CRUSHED).mean(axis=1, keepdims=True),
                          (luma >= CLIPPED).mean(axis=1, keepdims=True)], axis=1)


def contrast_weights(patches, contrast: float):
  """Weights of K patches in their frame's score from their luma's standard deviation s:
  (s^2 + 0.01) / (s^2 + contrast^2), float32[N, K] from patches float[N, K, P, P, 3].

  A flat patch (a clear sky, a white wall, a microscope's background) looks the same at
  CRF 13 and 45, so its score says little; a blocky or textured one counts fully. The
  0.01 keeps a frame with no contrast at all at the plain mean.
  e.g. contrast 3: s = 0 -> 0.001, s = 3 -> 0.5, s = 20 -> 0.98.
  """
  luma = jnp.asarray(patches, jnp.float32) @ jnp.asarray(cnn.LUMA, jnp.float32)
  var = luma.reshape(luma.shape[:2] + (-1,)).var(axis=-1)
  return (var + 0.01) / (var + contrast ** 2)


class ExposureHead(nn.Module):
  """An offset to the frame score from `exposure_statistics`: float[N, 5] -> float32[N].

  The patch scores read contrast-normalised luma, which divides a gain out, so an under-
  or overexposed frame looks pristine to them; these five numbers of the whole frame do
  not. The output layer starts at zero: the offset is 0 until training moves it.
  """
  hidden: int = 16

  @nn.compact
  def __call__(self, x):
    unsharded = lambda init: nn.with_logical_partitioning(init, (None, None))
    x = nn.relu(nn.Dense(self.hidden, name="hidden",
                         kernel_init=unsharded(nn.initializers.lecun_normal()))(x))
    x = nn.Dense(1, name="out", kernel_init=unsharded(nn.initializers.zeros))(x)
    return x[..., 0].astype(jnp.float32)


def _dense(features: int, name: str):
  return nn.Dense(features, name=name, kernel_init=nn.with_logical_partitioning(
      nn.initializers.lecun_normal(), (None, "embed")))


class CPLLM(nn.Module):
  """The CP-LLM model. Fields mirror `config.model` (see configs/)."""
  ctx_encoder: dict[str, Any]
  pix_encoder: dict[str, Any]
  decoder: dict[str, Any]
  ctx_res: int = 448
  ctx_pool: int = 1
  patch_size: int = 224
  num_patches: int = 8
  pix_box: tuple[int, int] | None = (540, 1080)
  score_patches: int | None = None  # read by video.preprocess when scoring one video
  score_hidden: int = 512
  score_tokens: str = "all"
  score_prenorm: bool = False
  score_pool: str = "mean"  # 'weighted': learned patch weights (score_tokens 'patch' only)
  score_exposure: bool = False  # add ExposureHead's offset to every frame score
  flat_contrast: float | None = None  # weigh patch scores by contrast_weights (8-bit units)
  decoder_frames: int = 1
  level_token_ids: tuple[int, ...] | None = None
  # Logits only at the first N target positions when the batch has `mask_loss` (training):
  # a 262k vocabulary makes full [B, L, V] logits most of a Gemma 3 step's cost (#16).
  max_targets: int | None = None
  dtype: Any = jnp.float32

  def setup(self):
    self.llm = build_gemma(self.decoder, self.dtype)
    width = self.llm.width
    self.img = build_vit(self.ctx_encoder, self.dtype)
    self.proj_ctx = _dense(width, "proj_ctx")
    self.pix = build_pixel_encoder(self.pix_encoder, self.dtype)
    self.proj_pix = _dense(width, "proj_pix")
    self.pix_norm = nn.LayerNorm(epsilon=1e-6, name="pix_norm")
    self.score_head = ScoreHead(self.score_hidden, name="score_head")
    if self.score_pool not in ("mean", "weighted"):
      raise ValueError(f"score_pool must be 'mean' or 'weighted', got {self.score_pool!r}")
    if self.score_pool == "weighted":
      if self.score_tokens != "patch":
        raise ValueError("score_pool='weighted' weighs patch scores: it needs "
                         f"score_tokens='patch', got {self.score_tokens!r}")
      self.score_weight = ScoreHead(self.score_hidden, name="score_weight")
    if self.score_exposure:
      self.exposure_head = ExposureHead(name="exposure_head")
    if self.flat_contrast is not None and (self.score_tokens, self.score_pool) != (
        "patch", "mean"):
      raise ValueError("flat_contrast weighs patch scores: it needs score_tokens='patch' "
                       f"and score_pool='mean', got {self.score_tokens!r}, "
                       f"{self.score_pool!r}")

  def encode_frames(self, ctx_frames, patches, *, train=False):
    """Both paths for N frames.

    Args:
      ctx_frames: float[N, R, R, 3] in [0, 255].
      patches: float[N, K, P, P, 3] in [0, 255].

    Returns:
      u float[N, T_h, D], v float[N, T_q, D], frame scores float32[N] and patch scores
      float32[N, K] (score_tokens 'patch') or None.
    """
    to_unit = lambda x: jnp.asarray(x, self.dtype) / 127.5 - 1.0
    u, _ = self.img(to_unit(ctx_frames), train=train)
    if self.ctx_pool > 1:
      n, t, c = u.shape
      side = int(round(t ** 0.5))
      u = nn.avg_pool(u.reshape(n, side, side, c), (self.ctx_pool,) * 2,
                      strides=(self.ctx_pool,) * 2).reshape(n, -1, c)
    u = self.proj_ctx(u)

    n, k = patches.shape[:2]
    h, _ = self.pix(to_unit(patches.reshape((n * k,) + patches.shape[2:])), train=train)
    h = self.proj_pix(h)
    per_patch = h.reshape((n, k) + h.shape[1:])  # float[N, K, T_q, D]
    v_raw = per_patch.mean(axis=1)
    v = self.pix_norm(v_raw)

    scores, patch_scores = self._frame_scores(u, v_raw, v, per_patch)
    if self.flat_contrast is not None:  # a weighted mean of the patch scores instead
      weights = contrast_weights(patches, self.flat_contrast)  # float32[N, K]
      scores = (weights * patch_scores).sum(axis=1) / weights.sum(axis=1)
    if self.score_exposure:
      scores = scores + self.exposure_head(exposure_statistics(ctx_frames))
    return u, v, scores, patch_scores

  def _frame_scores(self, u, v_raw, v, per_patch):
    """(frame scores float32[N], patch scores float32[N, K] or None) by `score_tokens`."""
    v_score = v_raw if self.score_prenorm else v
    if self.score_tokens == "all":  # the paper's head: both paths' tokens
      return self.score_head(jnp.concatenate([u, v_score], axis=1).mean(axis=1)), None
    if self.score_tokens == "pixel":
      return self.score_head(v_score.mean(axis=1)), None
    if self.score_tokens == "patch":
      patch_tokens = per_patch.mean(axis=2)  # float[N, K, D]
      head_in = patch_tokens if self.score_prenorm else self.pix_norm(patch_tokens)
      patch_scores = self.score_head(head_in)
      if self.score_pool == "mean":
        return patch_scores.mean(axis=1), patch_scores
      weights = jax.nn.softplus(self.score_weight(head_in)) + 1e-6  # float32[N, K] > 0
      self.sow("intermediates", "patch_weights", weights)  # apply(..., mutable=...) reads it
      return (weights * patch_scores).sum(axis=1) / weights.sum(axis=1), patch_scores
    raise ValueError("score_tokens must be 'all', 'pixel' or 'patch', got "
                     f"{self.score_tokens!r}")

  def decoder_inputs(self, ctx_tokens, pix_tokens, video_mask, text, input_mask, mask_ar):
    """The decoder's input sequence: visual tokens of A and B, then the text.

    Args:
      ctx_tokens, pix_tokens: float[B, 2, M, T_h, D], float[B, 2, M, T_q, D].
      video_mask: bool[B, 2].
      text, input_mask, mask_ar: int[B, L], bool[B, L], int[B, L].

    Returns:
      x float[B, S, D], input_mask bool[B, S], mask_ar int32[B, S] with
      S = 2 * d * (T_h + T_q) + L.
    """
    b, n_videos, m = ctx_tokens.shape[:3]
    picks = decoder_frame_indices(m, self.decoder_frames)
    visual = jnp.concatenate([ctx_tokens[:, :, picks], pix_tokens[:, :, picks]], axis=3)
    per_video = visual.shape[2] * visual.shape[3]
    visual = visual.reshape(b, n_videos * per_video, -1).astype(self.dtype)
    visual_mask = jnp.repeat(video_mask.astype(bool), per_video, axis=1)
    x = jnp.concatenate([visual, self.llm.embed_tokens(text)], axis=1)
    input_mask = jnp.concatenate([visual_mask, input_mask.astype(bool)], axis=1)
    mask_ar = jnp.concatenate([jnp.zeros(visual_mask.shape, jnp.int32),
                               mask_ar.astype(jnp.int32)], axis=1)
    return x, input_mask, mask_ar

  def embed_text(self, tokens):
    """int[B, T] -> float[B, T, D] decoder embeddings."""
    return self.llm.embed_tokens(tokens)

  def extend(self, x, input_mask, mask_ar, cache):
    """Decoder step on a KV cache (prefill or one-token extend); see gemma.Gemma.

    Returns (logits float32[B, T, V], updated cache).
    """
    hidden, _, cache = self.llm(x, input_mask, mask_ar, cache)
    return self.llm.logits(hidden), cache

  def __call__(self, batch, *, train=False, decode=True):
    """Scores both video slots and (if `decode`) runs the decoder on the text.

    Args:
      batch: dict with
        ctx:        float[B, 2, M, R, R, 3] context frames of videos A and B.
        patches:    float[B, 2, M, K, P, P, 3] pixel patches.
        video_mask: bool[B, 2]; [True, False] for a single-video example.
        text, input_mask, mask_ar: int[B, L], bool[B, L], int[B, L] (prompt + target).
      train: dropout switch.
      decode: False skips the decoder (score-only inference).

    Returns:
      out dict: 'ctx_tokens' float[B, 2, M, T_h, D], 'pix_tokens' float[B, 2, M, T_q, D],
      'frame_scores' float32[B, 2, M], 'score' float32[B, 2], with score_tokens 'patch'
      'patch_scores' float32[B, 2, M, K]; with `decode` also
      'decoder_mask' bool[B, S], 'logits' float32[B, L, V] (text positions: logits[:, i]
      predicts text[:, i + 1]) or, with `max_targets` N and `mask_loss` in the batch,
      'target_logits' float32[B, N, V] at `target_positions`, 'target_tokens' int[B, N]
      (what they predict), 'target_weight' bool[B, N] and 'targets_dropped' int[B] (target
      tokens beyond the first N, left out of the loss), and, if level_token_ids is set,
      'level_probs' float32[B, 5] and 'level_score' float32[B] read right after the prompt
      (meaningful when the prompt is the level prompt, e.g. "The quality of the video
      is").
    """
    ctx, patches = batch["ctx"], batch["patches"]
    b, n_videos, m = ctx.shape[:3]
    u, v, frame_scores, patch_scores = self.encode_frames(
        ctx.reshape((-1,) + ctx.shape[3:]), patches.reshape((-1,) + patches.shape[3:]),
        train=train)
    u = u.reshape((b, n_videos, m) + u.shape[1:])
    v = v.reshape((b, n_videos, m) + v.shape[1:])
    frame_scores = frame_scores.reshape(b, n_videos, m)
    out = dict(ctx_tokens=u, pix_tokens=v, frame_scores=frame_scores,
               score=frame_scores.mean(axis=-1))
    if patch_scores is not None:
      out["patch_scores"] = patch_scores.reshape(b, n_videos, m, -1)
    if not decode:
      return out

    text = batch["text"]
    x, input_mask, mask_ar = self.decoder_inputs(u, v, batch["video_mask"], text,
                                                 batch["input_mask"], batch["mask_ar"])
    hidden, _, _ = self.llm(x, input_mask, mask_ar)
    hidden = hidden[:, -text.shape[1]:]  # float[B, L, D], the text positions
    out["decoder_mask"] = input_mask
    if self.max_targets is None or "mask_loss" not in batch:
      out["logits"] = self.llm.logits(hidden)
    else:
      at, is_target = target_positions(batch["mask_loss"], self.max_targets)
      out["target_logits"] = self.llm.logits(
          jnp.take_along_axis(hidden, at[..., None], axis=1))
      out["target_tokens"] = jnp.take_along_axis(text[:, 1:], at, axis=1)
      out["target_weight"] = is_target
      out["targets_dropped"] = (batch["mask_loss"][:, 1:].astype(bool).sum(axis=1)
                                - is_target.sum(axis=1))
    if self.level_token_ids is not None:
      at = last_prefix_index(batch["input_mask"], batch["mask_ar"])
      out["level_probs"], out["level_score"] = level_score(
          self.llm.logits(jnp.take_along_axis(hidden, at[:, None, None], axis=1))[:, 0],
          self.level_token_ids)
    return out
