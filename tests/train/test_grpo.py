"""GRPO rewards and loss against hand-computed values; teacher-forced log-probs against the
sampler's (a second code path)."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpllm import configs
from cpllm.models import cpllm
from cpllm.evals import metrics
from cpllm.train import grpo
from cpllm.models import sampler
from tests.models.test_cpllm import make_batch

EPS = 1e-8
ROOT_EPS = 1e-4  # sqrt(EPS): the floor each fidelity term keeps


def phi(x):  # standard normal CDF, written out (the code uses scipy.stats.norm)
  return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_format_reward():
  texts = ["<think>a</think><answer>3</answer>",
           " <think>x\ny</think>\n<answer>2.5</answer> ",
           "<answer>3</answer>",  # no reasoning
           "<think></think><answer>3</answer>",  # empty reasoning
           "<think>a</think><answer>3</answer> and more",
           "<answer>3</answer><think>a</think>"]
  np.testing.assert_array_equal(grpo.format_reward(texts), [1, 1, 0, 0, 0, 0])


def test_answer_scores_and_regression_reward():
  scores = metrics.answer_scores(["<answer>3</answer>", "<answer>3.5</answer>",
                               "<answer>good</answer>", "3.0"])
  np.testing.assert_array_equal(np.isnan(scores), [False, False, True, True])
  reward = grpo.regression_reward(scores, 3.0, sigma=0.5, alpha=0.8)
  # 0.8 exp(-(0.5)^2 / (2 * 0.25)) = 0.8 exp(-0.5)
  np.testing.assert_allclose(reward, [0.8, 0.8 * 0.6065306597, 0.0, 0.0], rtol=1e-9)


def test_ranking_reward_hand_computed():
  # Video 0 (MOS 4): responses 3 and 4 -> mean 3.5, variance 0.25; video 1 (MOS 3): 3.5
  # twice -> mean 3.5, variance 0.
  reward = grpo.ranking_reward([[3.0, 4.0], [3.5, 3.5]], [4.0, 3.0], eps=EPS)
  p00, p01 = phi(-1.0), phi(1.0)  # (3 - 3.5) / 0.5, (4 - 3.5) / 0.5; g0 > g1
  want = [[math.sqrt(p00 + EPS) + ROOT_EPS, math.sqrt(p01 + EPS) + ROOT_EPS],
          # (3.5 - 3.5) / 0.5 = 0 -> p = 0.5; g1 < g0 so the (1 - p) term pays
          [ROOT_EPS + math.sqrt(0.5 + EPS)] * 2]
  np.testing.assert_allclose(reward, want, rtol=1e-7)


def test_ranking_reward_ties_unparsed_and_lone_videos():
  # Equal MOS: p = 0.5 earns sqrt(0.25) + sqrt(0.25) = 1, the most a tie can get.
  tie = grpo.ranking_reward([[3.0, 3.0], [3.0, 3.0]], [3.0, 3.0], eps=EPS)
  np.testing.assert_allclose(tie, np.ones((2, 2)), rtol=1e-6)
  # Video 1 has one parsed response (2.0); video 2 none, so it is nobody's opponent.
  nan = float("nan")
  reward = grpo.ranking_reward([[4.0, 4.0], [2.0, nan], [nan, nan]], [4.5, 2.0, 1.0],
                               eps=EPS)
  np.testing.assert_allclose(reward[0], 1 + ROOT_EPS, rtol=1e-6)  # p = 1, right order
  np.testing.assert_allclose(reward[1, 0], 1 + ROOT_EPS, rtol=1e-6)  # p = 0, right order
  assert reward[1, 1] == 0 and (reward[2] == 0).all()
  # One video in the batch: no opponent, no reward, no division by zero.
  np.testing.assert_array_equal(grpo.ranking_reward([[3.0, 4.0]], [3.0]), [[0.0, 0.0]])


def test_temporal_reward_per_response_and_paper_form():
  original = dict(regression=np.array([[0.8, 0.2]]), ranking=np.array([[0.9, 0.6]]))
  perturbed = dict(regression=np.array([[0.4, 0.4]]), ranking=np.array([[0.7, 0.7]]))
  per_response = grpo.temporal_reward(original, perturbed, delta=0.3, tau=0.5,
                                      per_response=True)
  # regression: 0.8 >= 0.4 and > 0.5 -> 0.3; 0.2 -> 0. ranking: 0.9 -> 0.3; 0.6 < 0.7 -> 0.
  np.testing.assert_allclose(per_response, [[0.6, 0.0]])
  paper = grpo.temporal_reward(original, perturbed, delta=0.3, tau=0.5, per_response=False)
  # group means: regression 0.5 (not > tau) -> 0; ranking 0.75 >= 0.7 and > 0.5 -> 0.3.
  np.testing.assert_allclose(paper, [[0.3, 0.3]])


def test_group_advantages():
  adv = grpo.group_advantages([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]])
  std = math.sqrt(1.25)
  np.testing.assert_allclose(adv[0], np.array([-1.5, -0.5, 0.5, 1.5]) / (std + 1e-4))
  np.testing.assert_array_equal(adv[1], 0.0)


def test_score_responses_sums_the_components():
  texts = ["<think>a</think><answer>4</answer>", "<answer>3</answer>",
           "<think>b</think><answer>2</answer>", "no answer"]
  perturbed = ["<think>a</think><answer>4</answer>"] * 4
  out = grpo.score_responses(texts, perturbed, [4.0, 2.0], grpo.Rewards())
  assert out["total"].shape == (2, 2)
  np.testing.assert_array_equal(out["format"], [[1, 0], [1, 0]])
  np.testing.assert_allclose(out["regression"], [[0.8, 0.8 * math.exp(-2)], [0.8, 0.0]])
  np.testing.assert_allclose(out["total"], out["format"] + out["regression"] +
                             out["ranking"] + out["temporal"])
  assert out["ranking"][1, 1] == 0
  # Response 0 of video 0 beats its perturbed group on both types: regression 0.8 >= 0.8,
  # ranking ~1 (4 vs 2, p ~ 1) >= 0.707 (perturbed copies all say 4: p = 0.5).
  assert out["temporal"][0, 0] == pytest.approx(0.6)


def test_grpo_loss_hand_computed():
  logp = jnp.array([[-1.0, -2.0], [-0.5, -1.0], [-1.0, -1.0]])
  old = jnp.array([[-1.0, -2.5], [-0.5, -1.0], [-1.0 - math.log(1.5), -1.0]])
  ref = jnp.array([[-1.2, -2.0], [-0.5, -0.7], [-1.0, -1.0]])
  adv = jnp.array([1.0, -2.0, -1.0])
  mask = jnp.array([[1, 1], [1, 0], [1, 0]])
  loss, aux = grpo.grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, kl_beta=0.04)
  kl = math.exp(-0.2) + 0.2 - 1  # k3 at d = ref - logp = -0.2
  # row 0: ratios 1 and e^0.5 (clipped to 1.2 for A = +1) -> policy (-1 - 1.2) / 2
  row0 = (-1.0 - 1.2) / 2 + 0.04 * kl / 2
  row1 = 2.0  # ratio 1, A = -2; the second token is masked out
  row2 = 1.5  # ratio 1.5, A = -1: min picks the unclipped -1.5 (pessimistic bound)
  np.testing.assert_allclose(loss, (row0 + row1 + row2) / 3, rtol=1e-6)
  np.testing.assert_allclose(aux["kl"], kl / 2 / 3, rtol=1e-5)
  np.testing.assert_allclose(aux["clip_fraction"], (0.5 + 0 + 1) / 3, rtol=1e-6)


@pytest.mark.slow
def test_teacher_forced_logprobs_equal_the_samplers():
  cfg = configs.load("configs/tiny.py:gemma2")
  model = cpllm.CPLLM(**cfg.model)
  prompt = 6
  batch = make_batch(cfg, [[True, False], [True, True]], seed=9)
  batch["input_mask"][0, 4:prompt] = False  # padding after a shorter prompt
  variables = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(1), batch))
  out = jax.jit(functools.partial(model.apply, decode=False))(variables, batch)
  prefix = jax.jit(functools.partial(model.apply, method=model.decoder_inputs))(
      variables, out["ctx_tokens"], out["pix_tokens"], batch["video_mask"],
      batch["text"][:, :prompt], batch["input_mask"][:, :prompt], batch["mask_ar"][:, :prompt])
  sampled = sampler.make_generate(model, max_new_tokens=7, eos_id=-1, temperature=1.0,
                                  num_samples=2)(variables, *prefix, jax.random.PRNGKey(5))
  repeated = tuple(jnp.repeat(a, 2, axis=0) for a in prefix)
  response_logprobs = jax.jit(functools.partial(grpo.response_logprobs, model))
  logp = response_logprobs(variables["params"], repeated, sampled["tokens"])
  np.testing.assert_allclose(logp, sampled["logprobs"], atol=1e-4)
  # Temperature 2 halves the logits: a different, still normalised distribution.
  hot = response_logprobs(variables["params"], repeated, sampled["tokens"], temperature=2.0)
  assert not np.allclose(hot, logp, atol=1e-3)
