"""GRPO reasoning fine-tuning (papers/vqathinker.md) from a supervised CP-LLM run.

  python -m cpllm.main --config=configs/demo_grpo.py --workdir=runs/demo_grpo

Each step, for a batch of N videos and a temporally perturbed copy of each:

  1. rollouts: K responses per video to instructions.GRPO_PROMPT from the sampler, for the
     video and for its perturbed copy;
  2. rewards on the host (NumPy), per response: format + bell-shaped regression + pairwise
     fidelity ranking against the other videos of the global batch + temporal consistency
     (the perturbed copies' rewards are only compared with, never trained on);
  3. group advantages (r - mean) / (std + eps) over each video's K responses; old and
     reference log-probs from one teacher-forced pass each;
  4. `updates_per_rollout` PPO-clipped steps with the k3 KL to the reference policy,
     averaged per response over its tokens, then over responses.

Only decoder parameters train (the param rules must say so; with LoRA, the adapters). The
reference policy is the same model with the trainable parameters frozen at their starting
(supervised) values: the state holds a copy of the adapters, not of the decoder.

Scores come from the last <answer>...</answer>; a response without one gets 0 regression
and ranking reward and is counted (`parse_rate`), never given a made-up score.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from scipy import stats

from cpllm import configs
from cpllm import sharding
from cpllm.data import instructions
from cpllm.data import perturb
from cpllm.data import pipeline
from cpllm.data import tokenizer as tokenizer_lib
from cpllm.evals import evaluator
from cpllm.evals import metrics as metrics_lib
from cpllm.evals import plots
from cpllm.models import cpllm
from cpllm.models import sampler
from cpllm.train import trainer

REWARD_CURVES = ("reward_total", "reward_format", "reward_regression", "reward_ranking",
                 "reward_temporal", "parse_rate")
ANSWER_FORMAT = re.compile(r"\s*<think>.+?</think>\s*<answer>.+?</answer>\s*", re.DOTALL)

# --------------------------------------------------------------------------- rewards


@dataclasses.dataclass(frozen=True)
class Rewards:
  """Reward constants (paper: sigma 0.5, alpha 0.8, delta 0.3, tau 0.5).

  temporal_per_response: the paper's temporal bonus compares group means, so it is the same
  for all K responses of a video and cancels in the group advantage; True compares each
  response's own reward with the perturbed group's mean instead, which does reach the
  gradient. False is the paper's form.
  """
  sigma: float = 0.5
  alpha: float = 0.8
  delta: float = 0.3
  tau: float = 0.5
  temporal_per_response: bool = True
  eps: float = 1e-8


def format_reward(texts) -> np.ndarray:
  """float64[N]: 1 for '<think>...</think><answer>...</answer>' (whitespace around), else 0."""
  return np.array([float(ANSWER_FORMAT.fullmatch(t) is not None) for t in texts])


def regression_reward(scores, mos, *, sigma: float, alpha: float) -> np.ndarray:
  """alpha * exp(-(s - g)^2 / (2 sigma^2)) for scores [...] against mos (broadcast); 0 where
  the score is NaN (unparsable)."""
  scores = np.asarray(scores, np.float64)
  reward = alpha * np.exp(-(scores - np.asarray(mos, np.float64)) ** 2 / (2 * sigma ** 2))
  return np.where(np.isfinite(scores), reward, 0.0)


def ranking_reward(scores, mos, *, eps: float = 1e-8) -> np.ndarray:
  """Pairwise fidelity reward float64[V, K] of scores float[V, K] (NaN = unparsable) for
  videos with mos float[V] (VisualQuality-R1 / VQAThinker eq. 6-7).

  Response k of video i against every other video j with a parsed response:
    p = Phi((s_ik - mean_j) / sqrt(var_i + var_j + eps))   (means/variances over parsed
                                                            responses, ddof 0)
    r_j = sqrt(p * y + eps) + sqrt((1 - p) * (1 - y) + eps), y = 1 if g_i > g_j, 0 if
    g_i < g_j and 0.5 for a tie (equal quality: p = 0.5 earns the most).
  The reward is the mean of r_j over those j; 0 for an unparsable response or when no other
  video has a parsed response (e.g. a batch of one video).
  """
  scores = np.asarray(scores, np.float64)
  mos = np.asarray(mos, np.float64)
  parsed = np.isfinite(scores)
  count = parsed.sum(axis=1)
  filled = np.where(parsed, scores, 0.0)
  mean = filled.sum(axis=1) / np.maximum(count, 1)
  var = np.where(parsed, (filled - mean[:, None]) ** 2, 0.0).sum(axis=1) / np.maximum(count, 1)
  others = (count[None, :] > 0) & ~np.eye(len(mos), dtype=bool)  # [i, j]
  z = (filled[:, :, None] - mean[None, None, :]) / np.sqrt(
      var[:, None, None] + var[None, None, :] + eps)  # [i, k, j]
  p = stats.norm.cdf(z)
  y = (np.sign(mos[:, None] - mos[None, :]) + 1.0) / 2.0  # [i, j]: 1, 0.5 or 0
  fidelity = np.sqrt(p * y[:, None, :] + eps) + np.sqrt((1 - p) * (1 - y[:, None, :]) + eps)
  total = np.where(others[:, None, :], fidelity, 0.0).sum(axis=2)
  n_others = others.sum(axis=1)[:, None]
  return np.where(parsed & (n_others > 0), total / np.maximum(n_others, 1), 0.0)


def temporal_reward(original: Mapping[str, np.ndarray], perturbed: Mapping[str, np.ndarray],
                    *, delta: float, tau: float, per_response: bool) -> np.ndarray:
  """Temporal-consistency bonus float64[V, K] (VQAThinker eq. 8-9), summed over reward types.

  For each type t (e.g. 'regression', 'ranking') with rewards [V, K] on the videos and on
  their perturbed copies: delta where r >= mean_K(r_perturbed) and r > tau, with r the
  group mean of the original's rewards (paper) or each response's own (per_response).
  """
  total = 0.0
  for name, reward in original.items():
    reward = np.asarray(reward, np.float64)
    own = reward if per_response else np.broadcast_to(reward.mean(axis=1, keepdims=True),
                                                      reward.shape)
    baseline = np.asarray(perturbed[name], np.float64).mean(axis=1, keepdims=True)
    total = total + delta * ((own >= baseline) & (own > tau))
  return np.broadcast_to(total, np.shape(next(iter(original.values())))).astype(np.float64)


def group_advantages(rewards, eps: float = 1e-4) -> np.ndarray:
  """(r - mean) / (std + eps) over each row of rewards float[V, K] (std with ddof 0)."""
  rewards = np.asarray(rewards, np.float64)
  mean = rewards.mean(axis=1, keepdims=True)
  return (rewards - mean) / (rewards.std(axis=1, keepdims=True) + eps)


def score_responses(texts, perturbed_texts, mos, rewards: Rewards) -> dict[str, np.ndarray]:
  """Every reward of V x K responses (texts in row-major order, video-major) -> dict of
  float64[V, K]: format, regression, ranking, temporal, total, and scores (NaN =
  unparsable); plus the perturbed copies' scores as perturbed_scores."""
  mos = np.asarray(mos, np.float64)
  v = len(mos)
  shaped = lambda x: np.asarray(x).reshape(v, -1)
  out = dict(format=shaped(format_reward(texts)),
             scores=shaped(metrics_lib.answer_scores(texts)),
             perturbed_scores=shaped(metrics_lib.answer_scores(perturbed_texts)))
  per_type = {}
  for key, s in (("original", out["scores"]), ("perturbed", out["perturbed_scores"])):
    per_type[key] = dict(
        regression=regression_reward(s, mos[:, None], sigma=rewards.sigma,
                                     alpha=rewards.alpha),
        ranking=ranking_reward(s, mos, eps=rewards.eps))
  out.update(per_type["original"])
  out["temporal"] = temporal_reward(per_type["original"], per_type["perturbed"],
                                    delta=rewards.delta, tau=rewards.tau,
                                    per_response=rewards.temporal_per_response)
  out["total"] = out["format"] + out["regression"] + out["ranking"] + out["temporal"]
  return out


# --------------------------------------------------------------------------- loss


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, *, clip_eps: float,
              kl_beta: float):
  """PPO-clipped policy loss with the k3 KL to the reference, per response token-mean,
  then the mean over responses.

  Args:
    logp, old_logp, ref_logp: float32[B, N] log-probs of the response tokens under the
      policy being trained, the policy that sampled them, the reference.
    advantages: float32[B]; mask: [B, N], 1 on response tokens (EOS included).
  Returns (loss, dict(kl, policy_loss, clip_fraction)).

  per token: -min(rho * A, clip(rho, 1 - eps, 1 + eps) * A) + beta * (exp(d) - d - 1),
  rho = exp(logp - old_logp), d = ref_logp - logp.
  """
  mask = mask.astype(jnp.float32)
  ratio = jnp.exp(logp - old_logp)
  adv = advantages[:, None]
  policy = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
  diff = ref_logp - logp
  kl = jnp.exp(diff) - diff - 1
  response_mean = lambda x: jnp.mean(jnp.sum(x * mask, axis=1)
                                     / jnp.maximum(jnp.sum(mask, axis=1), 1.0))
  clipped = (jnp.abs(ratio - 1) > clip_eps).astype(jnp.float32)
  loss = response_mean(policy + kl_beta * kl)
  return loss, dict(kl=response_mean(kl), policy_loss=response_mean(policy),
                    clip_fraction=response_mean(clipped))


def response_logprobs(model: cpllm.CPLLM, params, prefix, tokens, temperature: float = 1.0):
  """Teacher-forced log-probs float32[B, N] of response tokens int[B, N] after `prefix`
  (x float[B, T, D], input_mask bool[B, T], mask_ar int[B, T] from `decoder_inputs`;
  padding may follow the prompt, as in the sampler). Logits are divided by `temperature`,
  the distribution the sampler draws from when it does no top-k / top-p filtering.

  Token 0 is predicted at the last real prefix position, token i > 0 at T + i - 1.
  """
  x, input_mask, mask_ar = prefix
  b, t = input_mask.shape
  n = tokens.shape[1]
  variables = {"params": params}
  embedded = model.apply(variables, tokens, method=model.embed_text)
  ones = jnp.ones((b, n), jnp.int32)
  hidden = model.apply(
      variables, jnp.concatenate([x, embedded.astype(x.dtype)], axis=1),
      jnp.concatenate([input_mask, ones.astype(bool)], axis=1),
      jnp.concatenate([mask_ar, ones], axis=1),
      method=lambda m, *a: m.llm(*a)[0])
  first = cpllm.last_true_index(input_mask)[:, None]
  positions = jnp.concatenate([first, t + jnp.arange(n - 1)[None].repeat(b, 0)], axis=1)
  picked = jnp.take_along_axis(hidden, positions[:, :, None], axis=1)
  logits = model.apply(variables, picked, method=lambda m, h: m.llm.logits(h))
  logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  return jnp.take_along_axis(logp, tokens[:, :, None], axis=2)[:, :, 0]


# --------------------------------------------------------------------------- rollouts


def prefix_for(model, params, rollout):
  """Decoder prefix (x, input_mask, mask_ar) of rollout rows: the video's tokens and the
  prompt (encoders ran once per rollout, outside any gradient)."""
  return model.apply({"params": params}, rollout["ctx_tokens"], rollout["pix_tokens"],
                     rollout["video_mask"], rollout["text"], rollout["input_mask"],
                     rollout["mask_ar"], method=model.decoder_inputs)


def make_rollout_fns(model: cpllm.CPLLM, config, eos_id: int):
  """Jitted (encode, sample, logprobs) for one GRPO config; see main()."""
  g = config.grpo
  encode = jax.jit(lambda p, batch: model.apply({"params": p}, batch, decode=False))
  generate = sampler.make_generate(
      model, max_new_tokens=g.max_new_tokens, eos_id=eos_id, temperature=g.temperature,
      top_k=g.get("top_k", 0), top_p=g.get("top_p", 1.0), num_samples=g.num_samples)

  def sample(params, rollout, rng):
    return generate({"params": params}, *prefix_for(model, params, rollout), rng)

  logprobs = jax.jit(lambda p, rollout: response_logprobs(
      model, p, prefix_for(model, p, rollout), rollout["tokens"], g.temperature))
  return encode, jax.jit(sample), logprobs


def video_rows(out, prompt, slot: int) -> dict:
  """Single-video decoder inputs for slot `slot` of each example.

  out: the encoders' 'ctx_tokens' [B, 2, M, T_h, D] and 'pix_tokens'; prompt: encoded
  arrays [1, L]. The chosen slot fills both video slots and the second is masked out, as
  in any single-video example.
  """
  b = out["ctx_tokens"].shape[0]
  take = lambda x: x[:, [slot, slot]]
  tile = lambda x: jnp.repeat(jnp.asarray(x), b, axis=0)
  return dict(ctx_tokens=take(out["ctx_tokens"]), pix_tokens=take(out["pix_tokens"]),
              video_mask=jnp.tile(jnp.array([[True, False]]), (b, 1)),
              text=tile(prompt["text"]), input_mask=tile(prompt["input_mask"]),
              mask_ar=tile(prompt["mask_ar"]))


def make_update_step(setup: trainer.Setup, config):
  """One jitted PPO update on a rollout: gradient of grpo_loss for the trainable params."""
  model, optimizer, g = setup.model, setup.optimizer, config.grpo

  def loss_fn(trainable, frozen, rollout):
    params = trainer.combine(trainable, frozen)
    logp = response_logprobs(model, params, prefix_for(model, params, rollout),
                             rollout["tokens"], g.temperature)
    # With one update per rollout the sampling policy is the one being trained: its
    # log-probs are these, held constant (no second forward pass to compute them).
    old_logp = rollout.get("old_logp", jax.lax.stop_gradient(logp))
    return grpo_loss(logp, old_logp, rollout["ref_logp"], rollout["advantages"],
                     rollout["mask"], clip_eps=g.clip_eps, kl_beta=g.kl_beta)

  def step(state, rollout):
    return trainer.guarded_update(optimizer, loss_fn, state, rollout)

  return jax.jit(step, donate_argnums=(0,))


# --------------------------------------------------------------------------- main


def main(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """GRPO from the supervised run in config.grpo.init_workdir; returns the last evaluation."""
  config = ml_collections.ConfigDict(config.to_dict())
  g = config.grpo
  workdir = configs.resolve_path(workdir)
  init_workdir = str(configs.resolve_path(g.init_workdir))
  sft_config = trainer.load_config(init_workdir)
  config.model = sft_config.model.to_dict()  # the checkpoint fixes the architecture
  config.model["level_token_ids"] = tuple(config.model["level_token_ids"])
  config.num_frames = sft_config.num_frames
  data_dir = str(configs.resolve_path(config.data.data_dir))
  tokenizer = tokenizer_lib.Tokenizer(os.path.join(init_workdir, trainer.TOKENIZER_FILE))
  trainer.write_run_files(config, workdir, tokenizer)
  trainer.log_line(f"GRPO workdir {workdir}, from {init_workdir}")

  mesh = sharding.make_mesh(config.get("mesh", (-1, 1, 1)))
  shard_index, shard_count = sharding.process_rows(
      sharding.batch_sharding(mesh, config.batch_size, "batch_size (videos per GRPO step)"),
      config.batch_size)
  (records, meta), (eval_records, eval_meta) = trainer.open_splits(config, data_dir)
  kinds = tuple(perturb.Perturbation(k) if isinstance(k, str) else k for k in g.perturbations)
  videos = iter(pipeline.grpo_dataset(
      records, meta, model_config=config.model, num_frames=config.num_frames,
      batch_size=config.batch_size // shard_count, seed=config.seed, kinds=kinds,
      strength=g.perturb_strength, num_workers=config.data.get("num_workers", 0),
      shard_index=shard_index, shard_count=shard_count))

  model = cpllm.CPLLM(**config.model)
  spec = pipeline.example_spec(config.model, config.num_frames, config.text_len,
                               config.batch_size)
  restored = {}

  def load_params(shardings):
    params, restored["step"] = trainer.restore_params(
        init_workdir, sft_config, model, step=g.get("init_step"), shardings=shardings)
    return params

  state, setup = trainer.create_state(config, model, spec, mesh,
                                      jax.random.PRNGKey(config.seed), load_params)
  outside = [k for k, m in setup.mults.items() if m > 0 and not k.startswith("llm/")]
  if outside:
    raise ValueError(f"GRPO trains decoder parameters only (the encoders run once per "
                     f"rollout, outside the gradient); param_rules train {outside[:5]}")
  # The reference policy: the trainable (adapter) values GRPO starts from, kept frozen.
  state["reference"] = jax.tree.map(jnp.copy, state["trainable"])
  n_train = sum(x.size for x in jax.tree.leaves(state["trainable"]))
  trainer.log_line(f"model from {init_workdir} step {restored['step']}; {n_train:,} "
                   f"parameters trained by GRPO; mesh {dict(mesh.shape)}")

  manager = trainer.checkpoint_manager(workdir, config)
  if manager.latest_step() is not None:
    shardings = dict(setup.state_shardings, reference=setup.state_shardings["trainable"])
    state = trainer.restore_latest(manager, state, shardings, videos)
    trainer.log_line(f"resumed from GRPO step {int(state['step'])}")
  writer = trainer.make_writer(workdir)
  params_of = lambda s: trainer.combine(s["trainable"], s["frozen"])
  eval_config = ml_collections.ConfigDict(dict(config.to_dict(),
                                               eval_answer_tokens=g.max_new_tokens))

  def evaluate(state, step):
    return evaluator.load_metrics(workdir, step) or evaluator.evaluate(
        params_of(state), step=step, model=model, records=eval_records, meta=eval_meta,
        tokenizer=tokenizer, config=eval_config, workdir=workdir, writer=writer, mesh=mesh)

  if int(state["step"]) == 0:
    before = evaluate(state, 0)
    trainer.log_line(f"before GRPO: answer parse rate {before['answer_parse_rate']:.3f}, "
                     f"answer SRCC {before['answer_srcc']}")

  encode, sample, logprobs = make_rollout_fns(model, config, tokenizer.eos_id)
  update = make_update_step(setup, config)
  rewards_config = Rewards(**g.rewards)
  prompt = sampler.encode_prompts(tokenizer, [instructions.GRPO_PROMPT])
  k = g.num_samples
  updates = g.get("updates_per_rollout", 1)
  rng = jax.random.PRNGKey(config.seed)
  eval_metrics = None
  try:
    for step in range(int(state["step"]) + 1, config.total_steps + 1):
      start = time.perf_counter()
      batch = sharding.global_batch(next(videos), setup.batch_sharding)
      params = params_of(state)
      out = encode(params, dict(ctx=batch["ctx"], patches=batch["patches"]))
      # Rows 0..N-1 the videos, N..2N-1 their perturbed copies; the sampler repeats each
      # K times, so response k of video i is row i * K + k.
      originals = video_rows(out, prompt, slot=0)
      both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), originals,
                          video_rows(out, prompt, slot=1))
      samples = sample(params, both, jax.random.fold_in(rng, step))
      tokens, lengths = sharding.to_host(samples["tokens"]), sharding.to_host(samples["lengths"])
      texts = evaluator.decode_tokens(tokenizer, tokens, lengths)
      half = len(texts) // 2
      mos = sharding.to_host(batch["mos"])
      scored = score_responses(texts[:half], texts[half:], mos, rewards_config)
      rollout_time = time.perf_counter() - start

      rollout = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), originals)
      rollout.update(
          tokens=samples["tokens"][:half],
          mask=jnp.arange(tokens.shape[1])[None] < samples["lengths"][:half, None],
          advantages=jnp.asarray(group_advantages(scored["total"]).reshape(-1), jnp.float32))
      if updates > 1:  # later updates need the sampling policy's log-probs fixed
        rollout["old_logp"] = logprobs(params, rollout)
      rollout["ref_logp"] = logprobs(trainer.combine(state["reference"], state["frozen"]),
                                     rollout)
      for _ in range(updates):
        state, metrics = update(state, rollout)
        if not bool(metrics["finite"]):
          raise FloatingPointError(
              f"GRPO step {step}: loss or gradients not finite (loss "
              f"{float(metrics['loss'])}); the last good checkpoint (step "
              f"{manager.latest_step()}) is intact in {workdir}/checkpoints")
      state["step"] = state["step"] + 1

      parsed = np.isfinite(scored["scores"])
      scalars = dict(
          loss=float(metrics["loss"]), kl=float(metrics["kl"]),
          policy_loss=float(metrics["policy_loss"]),
          clip_fraction=float(metrics["clip_fraction"]),
          grad_norm=float(metrics["grad_norm"]),
          parse_rate=float(parsed.mean()),
          perturbed_parse_rate=float(np.isfinite(scored["perturbed_scores"]).mean()),
          response_length=float(lengths[:half].mean()),
          **{f"reward_{name}": float(scored[name].mean()) for name in
             ("format", "regression", "ranking", "temporal", "total")},
          reward_std_in_group=float(scored["total"].std(axis=1).mean()),
          score_error=float(np.nanmean(np.abs(scored["scores"] - mos[:, None])))
          if parsed.any() else float("nan"),
          rollout_seconds=rollout_time, step_seconds=time.perf_counter() - start)
      writer.write_scalars(step, scalars)
      if step % config.log_every == 0 or step == 1:
        trainer.log_line(
            f"GRPO step {step}/{config.total_steps}  reward {scalars['reward_total']:.3f} "
            f"(format {scalars['reward_format']:.2f}, regression "
            f"{scalars['reward_regression']:.3f}, ranking {scalars['reward_ranking']:.3f}, "
            f"temporal {scalars['reward_temporal']:.3f})  parse {scalars['parse_rate']:.2f}"
            f"  kl {scalars['kl']:.4f}  length {scalars['response_length']:.0f}  "
            f"{scalars['step_seconds']:.1f}s/step")
      if step % config.checkpoint_every == 0 or step == config.total_steps:
        manager.save(step, args=trainer.checkpoint_args(state, videos))
      if step % config.eval_every == 0 or step == config.total_steps:
        eval_metrics = evaluate(state, step)
  finally:
    videos.close()
  manager.wait_until_finished()
  if eval_metrics is None and manager.latest_step() is not None:
    eval_metrics = evaluate(state, manager.latest_step())
  if jax.process_index() == 0:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    curves = plots.training_curves(rows, REWARD_CURVES, str(workdir / "rewards.png"),
                                   title="GRPO rewards (training rollouts)")
    writer.write_images(config.total_steps, {"grpo/rewards": curves.image[None]})
  writer.flush()
  return eval_metrics or {}
