"""Sampler: greedy continuation equals the argmax of a full forward pass step by step; EOS
stops a row; sampling is reproducible for a seed; top-k = 1 is greedy."""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from cpllm import configs
from cpllm.models import cpllm
from cpllm.models import sampler
from tests.models.test_cpllm import make_batch

PROMPT = 6


@pytest.fixture(scope="module")
def setup():
  cfg = configs.load("configs/tiny.py:gemma2")
  model = cpllm.CPLLM(**cfg.model)
  batch = make_batch(cfg, [[True, True], [True, False], [True, False]], seed=5)
  batch["input_mask"][1, 4:PROMPT] = False  # a shorter prompt, padded
  variables = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(2), batch))
  out = jax.jit(functools.partial(model.apply, decode=False))(variables, batch)
  prefix = jax.jit(functools.partial(model.apply, method=model.decoder_inputs))(
      variables, out["ctx_tokens"], out["pix_tokens"], batch["video_mask"],
      batch["text"][:, :PROMPT], batch["input_mask"][:, :PROMPT], batch["mask_ar"][:, :PROMPT])
  return model, variables, batch, prefix


def full_forward_logits(model, variables, batch, tokens):
  text = np.concatenate([batch["text"][:, :PROMPT], tokens], 1)
  mask = np.concatenate([batch["input_mask"][:, :PROMPT], np.ones_like(tokens, bool)], 1)
  ar = np.concatenate([np.zeros((len(tokens), PROMPT), np.int32), np.ones_like(tokens)], 1)
  return np.asarray(jax.jit(model.apply)(variables, dict(batch, text=text, input_mask=mask,
                                                         mask_ar=ar))["logits"])


def test_greedy_matches_full_forward_argmax(setup):
  model, variables, batch, prefix = setup
  out = sampler.make_generate(model, max_new_tokens=6, eos_id=-1)(variables, *prefix)
  tokens = np.asarray(out["tokens"])
  logits = full_forward_logits(model, variables, batch, tokens)
  # Row 1's prompt ends at index 3 (two padding tokens after it).
  for row, last in enumerate([PROMPT - 1, 3, PROMPT - 1]):
    steps = np.concatenate([logits[row, last:last + 1], logits[row, PROMPT:-1]])
    np.testing.assert_array_equal(steps.argmax(-1), tokens[row], err_msg=f"row {row}")
    logp = steps - np.log(np.exp(steps - steps.max(-1, keepdims=True)).sum(-1,
                                                                            keepdims=True)) \
        - steps.max(-1, keepdims=True)
    np.testing.assert_allclose(out["logprobs"][row], logp[np.arange(6), tokens[row]],
                               atol=1e-4)
  np.testing.assert_array_equal(out["lengths"], [6, 6, 6])


@pytest.mark.slow
def test_eos_stops_rows_and_sampling_is_seeded(setup):
  model, variables, batch, prefix = setup
  greedy = np.asarray(sampler.make_generate(model, max_new_tokens=5, eos_id=-1)(
      variables, *prefix)["tokens"])
  eos = int(greedy[0, 2])  # row 0 emits this token at step 2
  out = sampler.make_generate(model, max_new_tokens=5, eos_id=eos)(variables, *prefix)
  assert int(out["lengths"][0]) <= 3
  assert (np.asarray(out["tokens"][0, int(out["lengths"][0]):]) == eos).all()
  assert (np.asarray(out["logprobs"][0, int(out["lengths"][0]):]) == 0).all()

  key = jax.random.PRNGKey(3)
  sample = lambda k, **kw: np.asarray(sampler.make_generate(
      model, max_new_tokens=5, eos_id=-1, temperature=1.0, **kw)(variables, *prefix, k)[
          "tokens"])
  np.testing.assert_array_equal(sample(key), sample(key))
  assert not np.array_equal(sample(key), sample(jax.random.PRNGKey(4)))
  np.testing.assert_array_equal(sample(key, top_k=1), greedy)
  np.testing.assert_array_equal(sample(key, top_p=1e-6), greedy)


def log_softmax(logits):
  logits = logits.astype(np.float64)
  top = logits.max(-1, keepdims=True)
  return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


def test_sampled_logprobs_equal_full_forward_and_groups(setup):
  model, variables, batch, prefix = setup
  k, n = 3, 5
  out = sampler.make_generate(model, max_new_tokens=n, eos_id=-1, temperature=1.0,
                              num_samples=k)(variables, *prefix, jax.random.PRNGKey(7))
  tokens = np.asarray(out["tokens"])
  assert tokens.shape == (3 * k, n)
  assert len({tuple(t) for t in tokens}) > 3  # the K draws of a prefix differ
  # Rows b*K..b*K+K-1 continue prefix b: score every row by a full forward pass of its
  # own prefix (from the batch, not the sampler) followed by its sampled tokens.
  repeated = {key: np.repeat(value, k, axis=0) for key, value in batch.items()}
  logits = full_forward_logits(model, variables, repeated, tokens)
  for row in range(3 * k):
    last = 3 if row // k == 1 else PROMPT - 1
    steps = np.concatenate([logits[row, last:last + 1], logits[row, PROMPT:-1]])
    expected = log_softmax(steps)[np.arange(n), tokens[row]]
    np.testing.assert_allclose(out["logprobs"][row], expected, atol=1e-4,
                               err_msg=f"row {row}")
  greedy = sampler.make_generate(model, max_new_tokens=n, eos_id=-1, num_samples=2)(
      variables, *prefix)
  single = sampler.make_generate(model, max_new_tokens=n, eos_id=-1)(variables, *prefix)
  np.testing.assert_array_equal(np.asarray(greedy["tokens"]),
                                np.repeat(np.asarray(single["tokens"]), 2, axis=0))


def test_prompt_buckets():
  assert sampler.bucket_length(1) == 16
  assert sampler.bucket_length(16) == 16
  assert sampler.bucket_length(17) == 32
  assert sampler.bucket_length(40, buckets=(48, 24)) == 48
  with pytest.raises(ValueError, match="exceeds the largest bucket 48"):
    sampler.bucket_length(49, buckets=(48, 24))
