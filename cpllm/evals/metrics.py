"""Evaluation metrics on gathered predictions (NumPy/SciPy on the host, not JAX).

Inputs are 1-D sequences of length N, one entry per video; results hold only Python floats,
ints, strings and None, so they go straight into `json.dumps(..., allow_nan=False)`:

  >>> correlations([1.0, 2.0, 3.0, 4.0, 5.0], [1.1, 1.9, 3.2, 3.9, 4.8])
  {'srcc': 1.0, 'krcc': 1.0, 'plcc': 0.997, 'plcc_raw': 0.996, 'rmse': 0.099, 'n': 5,
   'mapping': 'logistic'}  (rounded here)

Two kinds of trouble are told apart. Bad data (fewer than 3 videos, NaN or inf, mismatched
lengths) raises ValueError naming the metric. A model whose output leaves a metric undefined
(constant predictions, no parsable answer) gets None for that metric, so one collapsed
checkpoint is recorded as such instead of stopping the evaluation run.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import optimize, special, stats

from cpllm.data import instructions
from cpllm.data.features import NO_CRF

DIFFS = (2, 4, 6, 8, 10, 20)  # CRF differences of the paper's flip-rate table
CORRELATION_KEYS = ("srcc", "krcc", "plcc", "plcc_raw", "rmse", "n", "mapping")


def logistic4(x, b1, b2, b3, b4):
  """VQEG 4-parameter logistic b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|)).

  b1 is the limit as x -> inf, b2 as x -> -inf, b3 the midpoint, |b4| the width:
  logistic4(0.0, 5, 1, 0, 1) -> 3.0. expit keeps exp from overflowing during the fit.
  """
  return b2 + (b1 - b2) * special.expit((np.asarray(x) - b3) / np.abs(b4))


@dataclasses.dataclass(frozen=True)
class Fit:
  """A monotonic map of predictions onto the MOS scale, as fitted by `fit_logistic`.

  kind: 'logistic' (params b1..b4), 'linear' (slope, intercept; the logistic fit failed and
  `message` says why) or 'constant' (mean MOS; the predictions are all equal).
  """
  kind: str
  params: tuple[float, ...]
  message: str = ""

  def __call__(self, x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if self.kind == "logistic":
      return logistic4(x, *self.params)
    if self.kind == "linear":
      return self.params[0] * x + self.params[1]
    return np.full_like(x, self.params[0])


def fit_logistic(pred, mos, *, maxfev: int = 10_000) -> Fit:
  """Least-squares logistic4 from pred [N] to mos [N], started at the VQEG initial values
  (max(mos), min(mos), mean(pred), std(pred)).

  e.g. pred = x, mos = logistic4(x, 4.6, 1.3, 0.4, 0.7) -> Fit('logistic', (4.6, 1.3, 0.4,
  0.7)). When least squares does not converge within `maxfev` calls, or converges to a
  curve that fits worse than the best line, the result is the linear least-squares fit with
  kind 'linear' and the reason in `message`, never an exception.
  """
  pred, mos = _check("fit_logistic", pred=pred, mos=mos)
  if np.ptp(pred) == 0:  # no slope or width can be fitted; the best map is the mean
    return Fit("constant", (float(mos.mean()),), "predictions are constant")
  p0 = (mos.max(), mos.min(), pred.mean(), pred.std())
  line = None
  try:
    with warnings.catch_warnings():
      # Raised when the covariance of the parameters cannot be estimated; it is not used.
      warnings.simplefilter("ignore", optimize.OptimizeWarning)
      params, _ = optimize.curve_fit(logistic4, pred, mos, p0=p0, maxfev=maxfev)
    reason = "non-finite parameters"
    if np.all(np.isfinite(params)):
      fit = Fit("logistic", tuple(float(p) for p in params))
      # A logistic contains (nearly) every line, so a least-squares optimum never fits worse
      # than the best line; when it does, curve_fit stopped in a poor local minimum
      # (e.g. flat on the data, which leaves PLCC undefined).
      line = _linear(pred, mos)
      if _sse(fit, pred, mos) <= _sse(line, pred, mos) * (1 + 1e-6):
        return fit
      reason = "stopped in a local minimum worse than a line"
  except RuntimeError as e:  # curve_fit's way of saying it did not converge
    reason = str(e)
  if line is None:
    line = _linear(pred, mos)
  return dataclasses.replace(
      line, message=f"logistic fit failed ({reason}); fell back to a linear fit")


def _linear(pred, mos) -> Fit:
  line = stats.linregress(pred, mos)
  return Fit("linear", (float(line.slope), float(line.intercept)))


def _sse(fit: Fit, pred, mos) -> float:
  return float(np.sum((fit(pred) - mos) ** 2))


def correlations(pred, mos) -> dict:
  """SRCC and KRCC of raw pred [N] against mos [N]; PLCC and RMSE after the fitted
  logistic; PLCC of the raw predictions too; n; `mapping` is the Fit's kind.

  A correlation that is undefined because either side is constant is None.
  """
  return _correlations("correlations", pred, mos)


def prefixed(metrics: dict, prefix: str) -> dict:
  """Namespaced keys: prefixed({'srcc': 0.8}, 'level') -> {'level_srcc': 0.8}."""
  return {f"{prefix}_{k}": v for k, v in metrics.items()}


def flip_rate(pred, source_ids, crf, diffs: Sequence[int] = DIFFS) -> dict:
  """Flip rate (the paper's FR): among pairs of variants of one source whose CRFs differ by
  exactly d, the fraction where the higher-CRF (more compressed) variant is predicted above
  the lower-CRF one. Lower is better; 0.5 is chance.

  pred [N], source_ids [N] (any hashable), crf [N] ints; records with crf == NO_CRF are not
  compression variants and are left out. Ties count one half in `flip_rate` and their share
  is reported in `flip_ties`; `flip_pairs` counts the pairs. Each dict is keyed by str(d) and
  'overall' (all pairs with a difference in `diffs`); a d without pairs gives None.

  e.g. one source with crf (20, 22, 24) predicted (4.0, 4.2, 4.2) -> pairs at d=2: (22 over
  20: flip), (24 vs 22: tie) -> flip_rate['2'] = 0.75, flip_ties['2'] = 0.5; d=4: (24 over
  20: flip) -> 1.0; d=6: None.
  """
  (pred,) = _check("flip_rate", pred=pred, min_n=0)
  source_ids, crf = np.asarray(source_ids), np.asarray(crf)
  _same_length("flip_rate", pred=pred, source_ids=source_ids, crf=crf)
  if any(d <= 0 for d in diffs):
    raise ValueError(f"flip_rate: CRF differences must be positive; got {tuple(diffs)}")
  keep = crf != NO_CRF
  pred, source_ids, crf = pred[keep], source_ids[keep], crf[keep]
  # Ordered pairs (hi, lo) within each source, hi the more compressed: its CRF difference
  # and the sign of pred[hi] - pred[lo] (+1 flip, 0 tie).
  gaps, signs = [np.zeros(0, crf.dtype)], [np.zeros(0)]
  _, group = np.unique(source_ids, return_inverse=True)
  order = np.argsort(group, kind="stable")
  for idx in np.split(order, np.flatnonzero(np.diff(group[order])) + 1):
    c, p = crf[idx], pred[idx]
    hi, lo = np.nonzero(c[:, None] > c[None, :])
    gaps.append(c[hi] - c[lo])
    signs.append(np.sign(p[hi] - p[lo]))
  gap, sign = np.concatenate(gaps), np.concatenate(signs)

  out = dict(flip_rate={}, flip_ties={}, flip_pairs={})
  for key, mask in [(str(d), gap == d) for d in diffs] + [("overall", np.isin(gap, diffs))]:
    n, flips, ties = int(mask.sum()), int((sign[mask] > 0).sum()), int((sign[mask] == 0).sum())
    out["flip_rate"][key] = (flips + ties / 2) / n if n else None
    out["flip_ties"][key] = ties / n if n else None
    out["flip_pairs"][key] = n
  return out


def dmos_correlations(pred, mos, source_ids, is_source) -> dict:
  """Correlations of predicted DMOS pred(source) - pred(variant) with DMOS = MOS(source) -
  MOS(variant), over every variant (a record with is_source False) whose source has a
  record (is_source True) with the same source id.

  pred, mos, source_ids, is_source [N]. Variants without a source record are skipped and
  counted in `skipped_sources` / `skipped_variants`. e.g. source 'a' (mos 4.5, pred 4.0)
  with variants (3.5, 3.75) and (2.5, 2.0) gives DMOS (1.0, 2.0), predicted (0.25, 2.0).
  """
  pred, mos = _check("dmos_correlations", pred=pred, mos=mos, min_n=0)
  ids = np.asarray(source_ids).tolist()  # Python str / int, hashable and readable in errors
  is_source = np.asarray(is_source, bool)
  _same_length("dmos_correlations", pred=pred, source_ids=ids, is_source=is_source)
  ref = {}
  for i in np.flatnonzero(is_source):
    if ids[i] in ref:
      raise ValueError(f"dmos_correlations: source {ids[i]!r} has more than one source "
                       "record (is_source True)")
    ref[ids[i]] = i
  variants = np.flatnonzero(~is_source)
  found = np.array([ids[i] in ref for i in variants], bool)
  v = variants[found]
  r = np.array([ref[ids[i]] for i in v], np.int64)
  out = _correlations("dmos_correlations", pred[r] - pred[v], mos[r] - mos[v])
  out["skipped_sources"] = len({ids[i] for i in variants[~found]})
  out["skipped_variants"] = int((~found).sum())
  return out


def answer_metrics(texts: Sequence[str], mos) -> dict:
  """How often a text [N] states an overall level ('... the quality of the video is fair.',
  read by instructions.stated_level) and how often it is score_to_level(mos) [N].

  Both rates are over all N texts, so an unparsed text counts as wrong: texts ('... is
  fair.', 'no level') with mos (3.0, 3.0) -> parse_rate 0.5, level_accuracy 0.5, n 2.
  """
  (mos,) = _check("answer_metrics", mos=mos, min_n=1)
  _same_length("answer_metrics", texts=texts, mos=mos)
  stated = [instructions.stated_level(t) for t in texts]
  correct = sum(s == instructions.score_to_level(m) for s, m in zip(stated, mos))
  n = len(stated)
  return dict(parse_rate=sum(s is not None for s in stated) / n, level_accuracy=correct / n,
              n=n)


_ANSWER_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")


def parse_answer_score(text: str) -> float | None:
  """The first number inside the last complete <answer>...</answer> block, or None.

  '<answer>2</answer> ... <answer>score 3.42 of 5</answer>' -> 3.42; '<answer>-1</answer>'
  -> -1.0; '<answer>good</answer>', '3.42' (no tags), '<answer>3.42' (unclosed) -> None.
  The block opens at the last '<answer>' before the last '</answer>', so '<answer>1
  <answer>4</answer>' -> 4.0. Never guesses: None is the only failure value.
  """
  end = text.rfind("</answer>")
  start = text.rfind("<answer>", 0, end) if end >= 0 else -1
  if start < 0:
    return None
  match = _ANSWER_NUMBER.search(text, start + len("<answer>"), end)
  if match is None:
    return None
  score = float(match.group())
  return score if np.isfinite(score) else None  # a long digit string overflows to inf


def answer_scores(texts: Sequence[str]) -> np.ndarray:
  """float64[N]: parse_answer_score of each text, NaN where it finds none."""
  scores = [parse_answer_score(t) for t in texts]
  return np.array([np.nan if s is None else s for s in scores], np.float64)


def answer_score_metrics(texts: Sequence[str], mos) -> dict:
  """parse_rate of parse_answer_score over texts [N], and correlations of the parsed scores
  with mos over the parsed subset (its size is `n`).

  With fewer than 3 parsed answers the correlations are None, so a model that has not
  learned the format yet still gets its parse rate logged.
  """
  (mos,) = _check("answer_score_metrics", mos=mos, min_n=1)
  _same_length("answer_score_metrics", texts=texts, mos=mos)
  scores = answer_scores(texts)
  ok = np.isfinite(scores)
  if ok.sum() >= 3:
    corr = _correlations("answer_score_metrics", scores[ok], mos[ok])
  else:
    corr = dict.fromkeys(CORRELATION_KEYS, None) | dict(n=int(ok.sum()))
  return dict(parse_rate=float(ok.mean()), **corr)


def evaluate_predictions(pred, mos, source_ids, crf, *, is_source=None, level_score=None,
                         texts=None, answer_texts=None, diffs: Sequence[int] = DIFFS) -> dict:
  """Every metric of one evaluation, as one flat JSON-ready dict.

  pred, mos, source_ids, crf [N] always: srcc, krcc, plcc, plcc_raw, rmse, mapping,
  n_videos, flip_rate / flip_ties / flip_pairs (dicts keyed '2', '4', ..., 'overall').
  Optional inputs [N] add namespaced keys: is_source -> dmos_*, level_score (the level-token
  score) -> level_*, texts (described answers) -> text_parse_rate, text_level_accuracy,
  text_n, answer_texts (GRPO '<answer>' responses) -> answer_parse_rate, answer_srcc, ...,
  answer_flip_rate / answer_flip_ties / answer_flip_pairs over the parsed answers.
  """
  out = correlations(pred, mos)
  out["n_videos"] = out.pop("n")
  out.update(flip_rate(pred, source_ids, crf, diffs))
  if is_source is not None:
    out.update(prefixed(dmos_correlations(pred, mos, source_ids, is_source), "dmos"))
  if level_score is not None:
    out.update(prefixed(_correlations("level_score", level_score, mos), "level"))
  if texts is not None:
    out.update(prefixed(answer_metrics(texts, mos), "text"))
  if answer_texts is not None:
    out.update(prefixed(answer_score_metrics(answer_texts, mos), "answer"))
    answers = answer_scores(answer_texts)
    ok = np.isfinite(answers)
    out.update(prefixed(flip_rate(answers[ok], np.asarray(source_ids)[ok],
                                  np.asarray(crf)[ok], diffs), "answer"))
  return out


def _correlations(metric: str, pred, mos) -> dict:
  pred, mos = _check(metric, pred=pred, mos=mos)
  fit = fit_logistic(pred, mos)
  mapped = fit(pred)
  return dict(srcc=_corr(stats.spearmanr, pred, mos), krcc=_corr(stats.kendalltau, pred, mos),
              plcc=_corr(stats.pearsonr, mapped, mos), plcc_raw=_corr(stats.pearsonr, pred, mos),
              rmse=float(np.sqrt(np.mean((mapped - mos) ** 2))), n=len(pred), mapping=fit.kind)


def _corr(fn, x: np.ndarray, y: np.ndarray) -> float | None:
  if np.ptp(x) == 0 or np.ptp(y) == 0:  # scipy would warn and return NaN
    return None
  return float(fn(x, y).statistic)


def _check(metric: str, min_n: int = 3, **arrays) -> list[np.ndarray]:
  """The named arrays as float64 [N], checked to be 1-D, finite, of one length >= min_n."""
  out = []
  for name, a in arrays.items():
    a = np.asarray(a, np.float64)
    if a.ndim != 1:
      raise ValueError(f"{metric}: {name} must be 1-D, got shape {a.shape}")
    bad = int((~np.isfinite(a)).sum())
    if bad:
      raise ValueError(f"{metric}: {name} has {bad} NaN or inf values out of {len(a)}")
    out.append(a)
  _same_length(metric, **dict(zip(arrays, out)))
  if len(out[0]) < min_n:
    raise ValueError(f"{metric} needs at least {min_n} videos, got {len(out[0])}")
  return out


def _same_length(metric: str, **arrays):
  lengths = {name: len(a) for name, a in arrays.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"{metric}: inputs differ in length: {lengths}")
