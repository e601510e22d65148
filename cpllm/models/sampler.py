"""Autoregressive sampling from CP-LLM's decoder on the preallocated KV cache.

One jitted function: prefill the prefix (visual tokens + prompt), then a
`jax.lax.while_loop` that samples a token, appends it to the cache and stops when every
sequence has produced EOS or `max_new_tokens` are out. Greedy when temperature == 0.
`num_samples` = K draws K continuations of every prefix in one batch (GRPO's group).

Every distinct prefix length is one compilation, so prompts are padded to a few bucket
lengths (`bucket_length`, `encode_prompts`); the padding sits after the prompt and the
continuation follows its last real token.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cpllm.data import tokenizer as tokenizer_lib
from cpllm.models import checkpoints
from cpllm.models import cpllm
from cpllm.models import gemma

PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024)


def bucket_length(length: int, buckets=PROMPT_BUCKETS) -> int:
  """The smallest bucket >= length: e.g. 40 -> 64 with the default buckets."""
  for bucket in sorted(buckets):
    if bucket >= length:
      return bucket
  raise ValueError(f"a prompt of {length} tokens exceeds the largest bucket {max(buckets)}")


def encode_prompts(tokenizer: tokenizer_lib.Tokenizer, prompts, buckets=PROMPT_BUCKETS):
  """`tokenizer.encode_prompts` padded to the bucket of the longest prompt (with bos)."""
  longest = max(len(tokenizer.encode(p)) + 1 for p in prompts)
  return tokenizer_lib.encode_prompts(tokenizer, prompts, bucket_length(longest, buckets))


def _filter_logits(logits, temperature: float, top_k: int, top_p: float):
  """Temperature, then top-k, then nucleus (top-p) filtering of float32[B, V]."""
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # The smallest set whose mass reaches top_p: keep a token if the mass before it < top_p.
    keep_sorted = (cumulative - jax.nn.softmax(sorted_logits, axis=-1)) < top_p
    threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1,
                        keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def looped_decoder(model: cpllm.CPLLM, variables):
  """(model, variables) with the decoder's layer stack looped (`layers_{i}`), same weights.

  Inside a scanned stack every layer's weights are sliced out of the stacked arrays, and
  XLA copies those slices on each decode step; a decode step reads every weight once and is
  bound by memory bandwidth, so the copies triple its traffic (bench/decode.py: 2-3x slower
  steps). Unstacking once per call, before the token loop, costs one copy of the weights.
  """
  if not cpllm.build_gemma(model.decoder, model.dtype).scan:
    return model, variables
  params = dict(variables["params"])
  params["llm"] = checkpoints.to_looped(params["llm"])
  return (model.clone(decoder={**model.decoder, "scan": False}),
          {**variables, "params": params})


def make_generate(model: cpllm.CPLLM, *, max_new_tokens: int, eos_id: int,
                  temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                  num_samples: int = 1):
  """A jitted `generate(variables, x, input_mask, mask_ar, rng=None)` for these settings
  (temperature 0 = greedy); see `generate`."""
  return jax.jit(functools.partial(
      generate, model, max_new_tokens=max_new_tokens, eos_id=eos_id,
      temperature=temperature, top_k=top_k, top_p=top_p, num_samples=num_samples))


def generate(model: cpllm.CPLLM, variables, x, input_mask, mask_ar, rng=None, *,
             max_new_tokens: int, eos_id: int, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, num_samples: int = 1):
  """Continues the prefix embeddings (call under jit, e.g. through `make_generate`).

  Args:
    model, variables: the CP-LLM and its variables.
    x, input_mask, mask_ar: the prefix, float[B, T, D], bool[B, T], int[B, T] (from
      `model.decoder_inputs`); padding may sit anywhere, the continuation follows the last
      real token.
    rng: PRNG key, needed when temperature > 0.
    max_new_tokens, eos_id, temperature, top_k, top_p: sampling settings.
    num_samples: K continuations per prefix; row b * K + k of the outputs is sample k of
      prefix b (the prefix is repeated before prefill, so the K rows share one batch).

  Returns:
    dict(tokens int32[B*K, N] (eos_id after the end), logprobs float32[B*K, N] (log-softmax
    of the unfiltered logits at the chosen token, 0 after the end), lengths int32[B*K]
    (tokens up to and including EOS)).
  """
  if num_samples > 1:
    x, input_mask, mask_ar = (jnp.repeat(a, num_samples, axis=0)
                              for a in (x, input_mask, mask_ar))
  b, t = input_mask.shape
  model, variables = looped_decoder(model, variables)
  llm = cpllm.build_gemma(model.decoder, model.dtype)
  cache = gemma.init_cache(llm, b, t + max_new_tokens, dtype=model.dtype)
  extend = lambda *args: model.apply(variables, *args, method=model.extend)
  logits, cache = extend(x, input_mask, mask_ar, cache)
  last = jnp.take_along_axis(logits, cpllm.last_true_index(input_mask)[:, None, None], axis=1)[:, 0]
  rng = jax.random.PRNGKey(0) if rng is None else rng

  def cond(state):
    i, _, _, _, done, _, _ = state
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(state):
    i, cache, tokens, logprobs, done, last, rng = state
    rng, key = jax.random.split(rng)
    if temperature == 0.0:
      token = jnp.argmax(last, axis=-1)
    else:
      token = jax.random.categorical(key, _filter_logits(last, temperature, top_k, top_p))
    token = jnp.where(done, eos_id, token).astype(jnp.int32)
    logprob = jnp.take_along_axis(jax.nn.log_softmax(last), token[:, None], axis=1)[:, 0]
    tokens = tokens.at[:, i].set(token)
    logprobs = logprobs.at[:, i].set(jnp.where(done, 0.0, logprob))
    done = done | (token == eos_id)
    embedded = model.apply(variables, token[:, None], method=model.embed_text)
    ones = jnp.ones((b, 1), jnp.int32)
    step_logits, cache = extend(embedded, ones.astype(bool), ones, cache)
    return i + 1, cache, tokens, logprobs, done, step_logits[:, 0], rng

  state = (jnp.int32(0), cache, jnp.full((b, max_new_tokens), eos_id, jnp.int32),
           jnp.zeros((b, max_new_tokens), jnp.float32), jnp.zeros((b,), bool), last, rng)
  _, _, tokens, logprobs, _, _, _ = jax.lax.while_loop(cond, body, state)
  is_eos = tokens == eos_id
  lengths = jnp.where(is_eos.any(axis=1), jnp.argmax(is_eos, axis=1) + 1, max_new_tokens)
  return dict(tokens=tokens, logprobs=logprobs, lengths=lengths.astype(jnp.int32))
