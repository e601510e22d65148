"""CP-LLM's multi-task loss (papers/cp-llm.md, eq. 1-3), plus a CRF-ladder hinge.

  L = w_pair * L_pair + w_reg * L_reg + w_text * L_text + w_ladder * L_ladder

L_ladder (ours, weight 0 unless configured) orders two CRF variants of one source by
their CRF with a margin per CRF unit. Eq. 1 cannot do that where the ladder matters most:
between neighbouring low CRFs the MOS differs by ~0.01, so its gradient vanishes, while
the order itself is certain (same content, same encoder, more quantisation).

Each term is a masked mean whose denominator is the number of contributing items (at
least 1), so a batch without pairs or without originals contributes 0, not NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from cpllm.data import features
from cpllm.data.pipeline import PairKind


def pairwise_hinge(pred, mos, is_pair):
  """Eq. 1 over pairs: mean of max(0, -(q1 - q2)(q1_hat - q2_hat)).

  Args:
    pred, mos: float[B, 2] predicted and true scores of the two video slots.
    is_pair: bool[B], False for single-video examples (and padding rows).

  e.g. mos [[4, 2]], pred [[1, 3]] -> (4-2)(1-3) = -4 -> loss 4; pred [[3, 1]] -> 0.
  """
  product = (mos[:, 0] - mos[:, 1]) * (pred[:, 0] - pred[:, 1])
  weight = is_pair.astype(jnp.float32)
  return jnp.sum(jax.nn.relu(-product) * weight) / jnp.maximum(weight.sum(), 1.0)


def ladder_hinge(pred, crf, same_source, margin_per_crf):
  """Mean over same-source pairs with two CRFs of max(0, m |c1 - c2| - sign(c2 - c1)(s1 - s2)).

  Args:
    pred: float[B, 2] predicted scores, or float[B, 2, P] scores of P positions that the
      two slots share (patch scores of one view): the hinge is then taken per position and
      averaged over the P positions of a pair.
    crf: int[B, 2] (< 0: not a CRF variant).
    same_source: bool[B], True where both slots hold variants of one source.
    margin_per_crf: m, score units per CRF unit.

  e.g. m 0.02, crf [[21, 31]], pred [[3.0, 2.9]] -> 0.2 - 0.1 = 0.1; pred [[3.0, 2.7]] -> 0;
  pred [[[3.0, 3.0], [2.9, 2.7]]] -> (0.1 + 0) / 2 = 0.05.
  """
  crf = crf.astype(jnp.float32)
  weight = (same_source & (crf[:, 0] >= 0) & (crf[:, 1] >= 0)
            & (crf[:, 0] != crf[:, 1])).astype(jnp.float32)
  pred = pred.reshape(pred.shape[:2] + (-1,))  # float[B, 2, P], P = 1 for video scores
  lead = jnp.sign(crf[:, 1] - crf[:, 0])[:, None] * (pred[:, 0] - pred[:, 1])
  shortfall = jax.nn.relu(margin_per_crf * jnp.abs(crf[:, 0] - crf[:, 1])[:, None] - lead)
  return jnp.sum(shortfall.mean(axis=1) * weight) / jnp.maximum(weight.sum(), 1.0), weight.sum()


def regression(pred, mos, is_original):
  """Eq. 2: squared error of the first video, over examples whose first video is an
  original with a real MOS. pred, mos: float[B]; is_original: bool[B]."""
  weight = is_original.astype(jnp.float32)
  return jnp.sum((pred - mos) ** 2 * weight) / jnp.maximum(weight.sum(), 1.0)


def text_cross_entropy(logits, text, mask_loss):
  """Eq. 3: token cross-entropy over target tokens / number of target tokens in the batch.

  Args:
    logits: float[B, L, V] where logits[:, i] predicts text[:, i + 1].
    text: int[B, L]; mask_loss: int[B, L], 1 on target tokens.

  Returns (loss, number of target tokens).
  """
  return target_cross_entropy(logits[:, :-1], text[:, 1:], mask_loss[:, 1:])


def target_cross_entropy(logits, targets, weight):
  """Eq. 3 on logits already aligned with what they predict.

  Args:
    logits: float[B, N, V]; targets: int[B, N]; weight: [B, N], 1 where targets[b, n]
      is a target token (e.g. CPLLM's 'target_logits', 'target_tokens', 'target_weight').

  Returns (mean cross-entropy over the weighted tokens, their number).
  """
  weight = weight.astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  count = weight.sum()
  return jnp.sum(ce * weight) / jnp.maximum(count, 1.0), count


def total_loss(out, batch, weights, ladder_margin: float = 0.0,
               score_blind: Sequence[str] = (), order_only: Sequence[str] = ()):
  """Weighted sum of the losses for a batch; returns (loss, dict of the terms).

  `weights` has pair, reg, text and optionally ladder (0 when absent); `batch['valid']`
  (False on padding rows) masks every term.

  `score_blind` names dimensions (features.DIMENSIONS) the score head cannot see: a video
  known to be degraded in one of them is left out of the score terms (pair, ladder, reg),
  not the text, since its overall label mixes in what the head cannot see and fitting it
  would pull down the score of clean-looking videos.

  `order_only` names dimensions whose degraded videos leave only the regression: the score
  learns where they rank (eq. 1's hinge, which stops pulling once a pair is in order) but
  not the size of their label, e.g. a noise label's size is a convention of the data, and
  fitting it teaches the head to read any fine grain as a large loss (README, #15).
  """
  valid = batch["valid"].astype(bool)
  labelled = features.intact(batch["dims"], score_blind) if score_blind else None
  is_pair = batch["video_mask"][:, 1].astype(bool) & valid
  score_pair = is_pair if labelled is None else is_pair & labelled.all(axis=1)
  l_pair = pairwise_hinge(out["score"], batch["mos"], score_pair)
  same_source = score_pair & ((batch["pair_kind"] == PairKind.SAME_SOURCE)
                           | (batch["pair_kind"] == PairKind.LADDER))
  # With patch scores the hinge orders each patch position (both slots share one view).
  ladder_pred = out.get("patch_scores", out["score"])
  l_ladder, n_ladder = ladder_hinge(ladder_pred, batch["crf"], same_source, ladder_margin)
  regressed = batch["is_original"][:, 0].astype(bool) & valid
  if labelled is not None:
    regressed = regressed & labelled[:, 0]
  if order_only:
    regressed = regressed & features.intact(batch["dims"][:, 0], order_only)
  l_reg = regression(out["score"][:, 0], batch["mos"][:, 0], regressed)
  if "target_logits" in out:  # CPLLM with max_targets: logits at target positions only
    l_text, n_tokens = target_cross_entropy(out["target_logits"], out["target_tokens"],
                                            out["target_weight"] & valid[:, None])
    dropped = jnp.sum(out["targets_dropped"] * valid)
  else:
    mask_loss = batch["mask_loss"] * valid[:, None]
    l_text, n_tokens = text_cross_entropy(out["logits"], batch["text"], mask_loss)
    dropped = jnp.zeros((), jnp.int32)
  loss = (weights["pair"] * l_pair + weights["reg"] * l_reg + weights["text"] * l_text
          + weights.get("ladder", 0.0) * l_ladder)
  return loss, dict(loss_pair=l_pair, loss_reg=l_reg, loss_text=l_text,
                    loss_ladder=l_ladder, n_pairs=is_pair.sum(), n_ladder_pairs=n_ladder,
                    n_target_tokens=n_tokens, n_targets_dropped=dropped)
