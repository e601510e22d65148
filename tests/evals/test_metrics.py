"""Metrics against scipy.stats and hand-worked examples."""

import json

import numpy as np
import pytest
from scipy import stats

from cpllm.data.features import NO_CRF
from cpllm.evals import metrics as M


def test_correlations_match_scipy():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=200)
  mos = 3 + pred + rng.normal(size=200)
  out = M.correlations(pred, mos)
  fit = M.fit_logistic(pred, mos)
  assert out["srcc"] == pytest.approx(stats.spearmanr(pred, mos).statistic)
  assert out["krcc"] == pytest.approx(stats.kendalltau(pred, mos).statistic)
  assert out["plcc_raw"] == pytest.approx(stats.pearsonr(pred, mos).statistic)
  assert out["plcc"] == pytest.approx(stats.pearsonr(fit(pred), mos).statistic)
  assert out["rmse"] == pytest.approx(np.sqrt(np.mean((fit(pred) - mos) ** 2)))
  assert out["n"] == 200 and out["mapping"] == "logistic"
  assert out["plcc"] >= out["plcc_raw"] - 1e-3  # the fit can only help, up to noise


def test_logistic_fit_recovers_known_curve():
  rng = np.random.default_rng(1)
  x = rng.uniform(-3, 3, 400)
  truth = (4.6, 1.3, 0.4, 0.7)
  mos = M.logistic4(x, *truth) + rng.normal(0, 0.02, 400)
  fit = M.fit_logistic(x, mos)
  assert fit.kind == "logistic" and fit.message == ""
  b1, b2, b3, b4 = fit.params
  np.testing.assert_allclose((b1, b2, b3, abs(b4)), truth, atol=0.05)
  out = M.correlations(x, mos)
  assert out["plcc"] > 0.999 and out["rmse"] == pytest.approx(0.02, abs=0.005)


def test_logistic4_values():
  assert M.logistic4(0.0, 5, 1, 0, 1) == 3.0
  x = np.linspace(-50, 50, 11)  # far tails: expit must not overflow
  np.testing.assert_allclose(M.logistic4(x, 5, 1, 0, 1), M.logistic4(x, 5, 1, 0, -1))
  assert M.logistic4(-50.0, 5, 1, 0, 1) == pytest.approx(1) and M.logistic4(50.0, 5, 1, 0, 1) == 5


def test_linear_relation_gives_plcc_one():
  pred = np.linspace(0, 1, 30)
  out = M.correlations(pred, 2 * pred + 1)
  assert out["plcc_raw"] == pytest.approx(1, abs=1e-12)
  assert out["plcc"] == pytest.approx(1, abs=1e-9)
  assert out["srcc"] == pytest.approx(1) and out["krcc"] == pytest.approx(1)


def test_rmse_by_hand():
  # Constant predictions: the best map is the mean MOS 3, errors (-2, -1, 1, 2).
  out = M.correlations([3.0, 3.0, 3.0, 3.0], [1.0, 2.0, 4.0, 5.0])
  assert out["rmse"] == pytest.approx(np.sqrt(2.5))
  assert out["mapping"] == "constant" and out["n"] == 4
  assert out["srcc"] is None and out["krcc"] is None and out["plcc"] is None
  # Points exactly on a logistic are mapped exactly.
  x = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0])
  assert M.correlations(x, M.logistic4(x, 4.5, 1.5, 0.5, 0.8))["rmse"] < 1e-6


def test_fit_falls_back_to_linear():
  pred = np.linspace(0, 1, 20)
  mos = 1 + 3 * pred ** 2
  fit = M.fit_logistic(pred, mos, maxfev=3)
  line = stats.linregress(pred, mos)
  assert fit.kind == "linear" and "maxfev" in fit.message and "linear" in fit.message
  np.testing.assert_allclose(fit.params, (line.slope, line.intercept))
  np.testing.assert_allclose(fit(pred), line.slope * pred + line.intercept)


def test_fit_refuses_a_local_minimum_worse_than_a_line():
  # Weakly correlated data on which curve_fit, from the VQEG start, converges to a step
  # that is flat on every point (as the demo's predictions once did): PLCC would be
  # undefined. The line fits better, so it is used.
  rng = np.random.default_rng(83)
  n = int(rng.integers(8, 130))
  pred = rng.normal(3, rng.uniform(0.05, 1), n)
  mos = np.clip(3 + rng.uniform(-0.5, 0.5) * (pred - 3) + rng.normal(0, 1, n), 1, 5)
  fit = M.fit_logistic(pred, mos)
  line = stats.linregress(pred, mos)
  assert fit.kind == "linear" and "local minimum" in fit.message
  np.testing.assert_allclose(fit.params, (line.slope, line.intercept))
  assert M.correlations(pred, mos)["plcc"] == pytest.approx(abs(line.rvalue))


@pytest.mark.parametrize("pred,mos,match", [
    ([1.0, np.nan, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0],
     "correlations: pred has 1 NaN or inf values out of 4"),
    ([1.0, 2.0, 3.0], [1.0, np.inf, np.nan], "correlations: mos has 2 NaN or inf"),
    ([1.0, 2.0], [1.0, 2.0], "correlations needs at least 3 videos, got 2"),
    ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0], "correlations: inputs differ in length"),
    ([[1.0, 2.0, 3.0]], [[1.0, 2.0, 3.0]], r"correlations: pred must be 1-D, got shape \(1, 3\)"),
])
def test_correlations_reject_bad_data(pred, mos, match):
  with pytest.raises(ValueError, match=match):
    M.correlations(pred, mos)


def test_flip_rate_hand_worked():
  # Source a: crf 20 -> 4.0, 22 -> 4.2, 24 -> 3.5, 30 -> 3.5. Pairs (higher crf first):
  #   d=2: 22/20 flip, 24/22 ok; d=4: 24/20 ok; d=6: 30/24 tie; d=8: 30/22 ok; d=10: 30/20 ok.
  # Source b: crf 20 -> 3.0, 22 -> 3.0, 24 -> 3.1, plus its source (NO_CRF) -> 1.0.
  #   d=2: 22/20 tie, 24/22 flip; d=4: 24/20 flip.
  # Cross-source pairs (a's 22 above b's 20, ...) must not count. Records are interleaved.
  records = [("a", 24, 3.5), ("b", 22, 3.0), ("a", 20, 4.0), ("b", NO_CRF, 1.0),
             ("a", 30, 3.5), ("b", 20, 3.0), ("a", 22, 4.2), ("b", 24, 3.1)]
  ids, crf, pred = zip(*records)
  out = M.flip_rate(pred, ids, crf)
  assert out["flip_pairs"] == {"2": 4, "4": 2, "6": 1, "8": 1, "10": 1, "20": 0, "overall": 9}
  assert out["flip_rate"] == {"2": 2.5 / 4, "4": 0.5, "6": 0.5, "8": 0.0, "10": 0.0,
                              "20": None, "overall": 4 / 9}
  assert out["flip_ties"] == {"2": 0.25, "4": 0.0, "6": 1.0, "8": 0.0, "10": 0.0,
                              "20": None, "overall": 2 / 9}
  json.dumps(out, allow_nan=False)


def test_flip_rate_excludes_no_crf_and_takes_diffs():
  # With NO_CRF = -1 counted as a CRF, (-1, 1) would be a flipped pair at d = 2.
  out = M.flip_rate([1.0, 2.0, 2.5], ["s", "s", "s"], [NO_CRF, 1, 4], diffs=(2, 3))
  assert out["flip_pairs"] == {"2": 0, "3": 1, "overall": 1}
  assert out["flip_rate"] == {"2": None, "3": 1.0, "overall": 1.0}
  with pytest.raises(ValueError, match="positive"):
    M.flip_rate([1.0], ["s"], [20], diffs=(0,))
  with pytest.raises(ValueError, match="flip_rate: pred has 1 NaN"):
    M.flip_rate([np.nan], ["s"], [20])


def test_dmos_hand_worked():
  #            source  is_source  mos   pred
  records = [("s1", True, 4.5, 4.0), ("s1", False, 3.5, 3.75), ("s1", False, 2.5, 2.0),
             ("s2", False, 3.0, 4.0), ("s2", True, 4.0, 4.5), ("s2", False, 1.5, 2.5),
             ("s3", False, 3.0, 3.0), ("s3", False, 2.0, 2.0)]  # s3 has no source record
  ids, is_source, mos, pred = zip(*records)
  dmos = [1.0, 2.0, 1.0, 2.5]  # s1: 4.5 - 3.5, 4.5 - 2.5; s2: 4.0 - 3.0, 4.0 - 1.5
  dmos_pred = [0.25, 2.0, 0.5, 2.0]  # binary fractions, so the tie at 2.0 is exact
  out = M.dmos_correlations(pred, mos, ids, is_source)
  expected = M.correlations(dmos_pred, dmos)
  assert {k: out[k] for k in expected} == pytest.approx(expected)
  assert out["srcc"] == pytest.approx(stats.spearmanr(dmos_pred, dmos).statistic)
  assert out["n"] == 4 and out["skipped_sources"] == 1 and out["skipped_variants"] == 2
  with pytest.raises(ValueError, match="'s1' has more than one source record"):
    M.dmos_correlations(pred, mos, ids, [True, True] + [False] * 6)


@pytest.mark.parametrize("text,score", [
    ("<think>2 issues</think><answer>3.42</answer>", 3.42),
    ("<answer>2</answer> on reflection <answer>4</answer>", 4.0),
    ("<answer>-1</answer>", -1.0),
    ("<answer>+2.5</answer>", 2.5),
    ("<answer>.5</answer>", 0.5),
    ("<answer>Score: 3.42 out of 5</answer>", 3.42),
    ("<answer>\n 4.10\n</answer>", 4.1),
    ("<answer>excellent</answer>", None),
    ("<answer></answer>", None),
    ("3.42", None),
    ("The score is 3.42.", None),
    ("<answer>3.42", None),  # never closed
    ("3.42</answer>", None),  # never opened
    ("</answer>3.42<answer>", None),  # tags in the wrong order
    ("<answer>1 <answer>4</answer>", 4.0),  # the innermost opening before the close
    ("<answer>2</answer><answer>5", 2.0),  # the last complete block
    ("<answer><think>3</think></answer>", 3.0),
    ("<Answer>3</Answer>", None),  # tags are case-sensitive, like the prompt's
    ("<answer>" + "9" * 400 + "</answer>", None),  # overflows to inf
])
def test_parse_answer_score(text, score):
  assert M.parse_answer_score(text) == score


def test_answer_metrics():
  texts = ["Sharp frames. Overall, the quality of the video is fair.",  # 3.0 -> fair: right
           "Overall, the quality of the video is good.",  # 2.0 -> poor: wrong
           "I cannot tell.",  # no stated level
           "Noise: bad. Overall, the quality of the video is excellent."]  # 4.5: right (last)
  out = M.answer_metrics(texts, [3.0, 2.0, 3.0, 4.5])
  assert out == {"parse_rate": 0.75, "level_accuracy": 0.5, "n": 4}
  with pytest.raises(ValueError, match="answer_metrics: inputs differ in length"):
    M.answer_metrics(texts, [3.0])


def test_answer_score_metrics():
  scores = [1.5, 2.0, None, 4.25, 3.0, None]
  texts = [f"<think>..</think><answer>{s}</answer>" if s else "no answer" for s in scores]
  mos = np.array([1.0, 2.5, 3.0, 4.0, 3.5, 2.0])
  out = M.answer_score_metrics(texts, mos)
  parsed = np.array([1.5, 2.0, 4.25, 3.0])
  assert out["parse_rate"] == pytest.approx(4 / 6) and out["n"] == 4
  assert out["srcc"] == pytest.approx(stats.spearmanr(parsed, mos[[0, 1, 3, 4]]).statistic)
  none = M.answer_score_metrics(["<answer>x</answer>", "3.0"], [3.0, 4.0])
  assert none["parse_rate"] == 0.0 and none["n"] == 0 and none["srcc"] is None
  assert set(none) == set(out)


def test_prefixed():
  assert M.prefixed({"srcc": 0.8, "n": 3}, "level") == {"level_srcc": 0.8, "level_n": 3}


def test_evaluate_predictions_is_json_ready():
  rng = np.random.default_rng(2)
  n_src, crfs = 6, (20, 22, 24, 26, 28, 30, 40)
  ids = np.repeat([f"v{i}" for i in range(n_src)], len(crfs) + 1)
  crf = np.tile((NO_CRF,) + crfs, n_src)
  is_source = crf == NO_CRF
  mos = np.clip(np.where(is_source, 4.5, 4.6 - 0.08 * (crf - 20)) + rng.normal(0, 0.2, len(ids)),
                1, 5)
  pred = mos + rng.normal(0, 0.3, len(ids))
  texts = [f"Overall, the quality of the video is {'good' if m > 3.4 else 'fair'}." for m in mos]
  answers = [f"<answer>{p:.2f}</answer>" for p in pred]
  out = M.evaluate_predictions(pred, mos, ids, crf, is_source=is_source,
                               level_score=pred + 0.1, texts=texts, answer_texts=answers)
  for key in ("srcc", "krcc", "plcc", "plcc_raw", "rmse", "mapping", "n_videos", "flip_rate",
              "flip_ties", "flip_pairs", "dmos_srcc", "dmos_plcc", "dmos_n", "level_srcc",
              "level_plcc", "text_parse_rate", "text_level_accuracy", "answer_parse_rate",
              "answer_srcc"):
    assert key in out, key
  assert out["n_videos"] == len(ids) and out["dmos_n"] == n_src * len(crfs)
  assert set(out["flip_rate"]) == {"2", "4", "6", "8", "10", "20", "overall"}
  assert out["flip_pairs"]["2"] == n_src * 5 and out["flip_pairs"]["20"] == n_src
  assert out["text_parse_rate"] == 1.0 and out["answer_parse_rate"] == 1.0
  assert json.loads(json.dumps(out, allow_nan=False)) == out
  assert all(type(v) in (int, float, str, dict) for v in out.values())
  bare = M.evaluate_predictions(pred, mos, ids, crf)
  assert not any(k.startswith(("dmos_", "level_", "text_", "answer_")) for k in bare)


def test_answer_flip_rate_counts_parsed_answers_only():
  # Source s, CRF 20 / 24 / 28: the CRF-24 answer is unparsable, so its only pair left is
  # (28 over 20) at d = 8, answered 3.10 > 3.00: a flip. Source t (CRF 20 / 28), no flip.
  crf = [20, 24, 28, 20, 28]
  answers = ["<answer>3.00</answer>", "<answer>n/a</answer>", "<answer>3.10</answer>",
             "<answer>4</answer>", "<answer>2</answer>"]
  out = M.evaluate_predictions([3.0, 2.9, 2.8, 4.1, 2.2], [4.0, 3.5, 3.0, 4.2, 2.0],
                               ["s", "s", "s", "t", "t"], crf, answer_texts=answers)
  assert out["answer_flip_rate"]["8"] == 0.5 and out["answer_flip_pairs"]["8"] == 2
  assert out["answer_flip_pairs"]["4"] == 0 and out["answer_flip_rate"]["4"] is None
  assert out["flip_rate"]["4"] == 0.0  # the score head's pairs are all there
  assert out["answer_parse_rate"] == pytest.approx(4 / 5)
