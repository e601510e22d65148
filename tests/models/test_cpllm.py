"""CP-LLM assembly tests: masking of the second video slot, the score path against a
second computation, the level-token score, and the paper config's shapes."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpllm import configs
from cpllm.models import cpllm

L = 16


def make_batch(cfg, video_mask, seed=0):
  rng = np.random.default_rng(seed)
  b, m, model = len(video_mask), cfg.num_frames, cfg.model
  k, p, r = model["num_patches"], model["patch_size"], model["ctx_res"]
  return dict(
      ctx=rng.uniform(0, 255, (b, 2, m, r, r, 3)).astype(np.float32),
      patches=rng.uniform(0, 255, (b, 2, m, k, p, p, 3)).astype(np.float32),
      video_mask=np.array(video_mask, bool),
      text=rng.integers(0, 256, (b, L)).astype(np.int32),
      input_mask=np.ones((b, L), bool),
      mask_ar=np.broadcast_to((np.arange(L) >= 6).astype(np.int32), (b, L)).copy())


@pytest.fixture(scope="module")
def tiny():
  cfg = configs.load("configs/tiny.py:gemma2")
  model = cpllm.CPLLM(**cfg.model)
  batch = make_batch(cfg, [[True, True], [True, False]])
  params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), batch))
  # Non-zero LoRA B and norm offsets so every path carries signal.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.1 if "lora_b" in jax.tree_util.keystr(path) else x, params)
  return cfg, model, params, jax.jit(model.apply, static_argnames=("decode",))


def test_masked_second_video_changes_nothing(tiny):
  cfg, model, params, apply = tiny
  batch = make_batch(cfg, [[True, False], [True, False]])
  out = apply(params, batch)
  changed = dict(batch, ctx=batch["ctx"].copy(), patches=batch["patches"].copy())
  changed["ctx"][:, 1] = 255 - changed["ctx"][:, 1]
  changed["patches"][:, 1] = np.random.default_rng(9).uniform(
      0, 255, changed["patches"][:, 1].shape)
  out2 = apply(params, changed)
  np.testing.assert_allclose(out2["logits"], out["logits"], atol=1e-5)
  np.testing.assert_allclose(out2["score"][:, 0], out["score"][:, 0], atol=1e-6)
  np.testing.assert_allclose(out2["level_score"], out["level_score"], atol=1e-6)
  # With B visible, the same change does reach the decoder (the mask is what hides it).
  pair = dict(batch, video_mask=np.ones((2, 2), bool))
  pair2 = dict(changed, video_mask=np.ones((2, 2), bool))
  assert np.abs(apply(params, pair)["logits"] - apply(params, pair2)["logits"]).max() > 1e-3


def test_single_example_equals_decoder_on_video_a_alone(tiny):
  """Second code path: run the Gemma module directly on [A's tokens, text]."""
  cfg, model, params, apply = tiny
  batch = make_batch(cfg, [[True, False], [True, False]], seed=1)
  out = apply(params, batch)
  pick = cpllm.decoder_frame_indices(cfg.num_frames, model.decoder_frames)
  a_tokens = jnp.concatenate([out["ctx_tokens"][:, 0, pick], out["pix_tokens"][:, 0, pick]],
                             axis=2).reshape(2, -1, 64)
  llm = cpllm.build_gemma(cfg.model["decoder"], jnp.float32)

  def run(llm):
    x = jnp.concatenate([a_tokens, llm.embed_tokens(batch["text"])], axis=1)
    n = a_tokens.shape[1]
    mask = jnp.concatenate([jnp.ones((2, n), bool), batch["input_mask"]], axis=1)
    ar = jnp.concatenate([jnp.zeros((2, n), jnp.int32), batch["mask_ar"]], axis=1)
    h, _, _ = llm(x, mask, ar)
    return llm.logits(h[:, -L:])

  want = nn.apply(run, llm)({"params": params["params"]["llm"]})
  np.testing.assert_allclose(out["logits"], want, atol=1e-4)


def np_layer_norm(x, scale, bias):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * scale + bias


def np_score_head(x, p, name="score_head"):
  hidden = np.maximum(x @ p[name]["hidden"]["kernel"] + p[name]["hidden"]["bias"], 0)
  return hidden @ p[name]["out"]["kernel"][:, 0] + p[name]["out"]["bias"][0]


@pytest.mark.parametrize("score_tokens,prenorm,pool", [
    ("all", False, "mean"), ("pixel", False, "mean"), ("pixel", True, "mean"),
    ("all", True, "mean"), ("patch", False, "mean"), ("patch", True, "mean"),
    ("patch", False, "weighted")])
def test_scores_match_independent_computation(tiny, score_tokens, prenorm, pool):
  """Pixel path per patch through the ViT alone, then NumPy: projection, mean over K,
  LayerNorm, token-mean of concat(u, v) (or of v alone; with score_prenorm the head reads
  v before the LayerNorm), ReLU MLP, mean over frames. With 'patch' the MLP scores each
  patch's token-mean (LayerNorm'd unless prenorm) and the frame score is their mean, or
  with score_pool 'weighted' their mean weighted by softplus(second MLP) + 1e-6."""
  cfg, model, params, apply = tiny
  batch = make_batch(cfg, [[True, True], [True, False]], seed=2)
  if (score_tokens, prenorm, pool) != ("all", False, "mean"):
    model = model.clone(score_tokens=score_tokens, score_prenorm=prenorm, score_pool=pool)
    apply = jax.jit(model.apply, static_argnames=("decode",))
  if pool == "weighted":  # the same parameters plus score_weight, not zero
    extra = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(1), batch))["params"]
    params = {"params": dict(params["params"], score_weight=extra["score_weight"])}
  out = apply(params, batch, decode=False)
  assert "logits" not in out
  assert ("patch_scores" in out) == (score_tokens == "patch")
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params["params"])
  pix = cpllm.build_vit(cfg.model["pix_encoder"], jnp.float32)
  b, m, k = 2, cfg.num_frames, cfg.model["num_patches"]
  # The ViT alone, each patch an image of its own batch of one (no patch sees another).
  encode_one = jax.jit(lambda image: pix.apply({"params": params["params"]["pix"]},
                                               image[None] / 127.5 - 1)[0][0])
  for i in range(b):
    for video in range(2):
      frame_scores = []
      for f in range(m):
        feats = [np.asarray(encode_one(batch["patches"][i, video, f, j]), np.float64)
                 for j in range(k)]
        h = np.stack(feats) @ p["proj_pix"]["kernel"] + p["proj_pix"]["bias"]
        v = np_layer_norm(h.mean(0), p["pix_norm"]["scale"], p["pix_norm"]["bias"])
        np.testing.assert_allclose(out["pix_tokens"][i, video, f], v, atol=1e-4)
        u = np.asarray(out["ctx_tokens"][i, video, f], np.float64)
        if score_tokens == "patch":
          per_patch = h.mean(1)  # [K, D]
          if not prenorm:
            per_patch = np_layer_norm(per_patch, p["pix_norm"]["scale"], p["pix_norm"]["bias"])
          patch_scores = np_score_head(per_patch, p)
          np.testing.assert_allclose(out["patch_scores"][i, video, f], patch_scores,
                                     atol=1e-4)
          weights = np.ones(k)
          if pool == "weighted":
            weights = np.logaddexp(0, np_score_head(per_patch, p, "score_weight")) + 1e-6
          frame_scores.append((weights * patch_scores).sum() / weights.sum())
          continue
        v_score = h.mean(0) if prenorm else v
        pooled = (np.concatenate([u, v_score]) if score_tokens == "all" else v_score).mean(0)
        frame_scores.append(np_score_head(pooled, p))
      np.testing.assert_allclose(out["frame_scores"][i, video], frame_scores, atol=1e-4)
      np.testing.assert_allclose(out["score"][i, video], np.mean(frame_scores), atol=1e-4)


def test_exposure_offset_is_numpy_statistics_through_the_head(tiny):
  """score_exposure: every frame score is the model's without it plus an MLP (NumPy here)
  of the context frame's luma percentiles and crushed / clipped shares (NumPy's
  percentile), and the hand example of exposure_statistics' docstring holds."""
  cfg, model, params, _ = tiny
  batch = make_batch(cfg, [[True, True], [True, False]], seed=5)
  batch["ctx"][0, 0, 0, :, :8] = 255.0  # a clipped band
  batch["ctx"][1, 0, 1] *= 0.2  # underexposed
  exposed = model.clone(score_exposure=True)
  extra = nn.unbox(jax.jit(exposed.init)(jax.random.PRNGKey(2), batch))["params"]
  head = jax.tree.map(lambda x: x + 0.3, extra["exposure_head"])  # out starts at zero
  p = {"params": dict(params["params"], exposure_head=head)}
  plain = jax.jit(functools.partial(model.apply, decode=False))(params, batch)
  out = jax.jit(functools.partial(exposed.apply, decode=False))(p, batch)
  luma = np.asarray(batch["ctx"], np.float64) @ [0.299, 0.587, 0.114]  # [B, 2, M, R, R]
  luma = luma.reshape(luma.shape[:3] + (-1,))
  stats = np.concatenate([np.moveaxis(np.percentile(luma, [1, 50, 99], axis=-1), 0, -1) / 255,
                          (luma <= 4).mean(-1, keepdims=True),
                          (luma >= 251).mean(-1, keepdims=True)], axis=-1)
  h = jax.tree.map(lambda x: np.asarray(x, np.float64), head)
  offset = (np.maximum(stats @ h["hidden"]["kernel"] + h["hidden"]["bias"], 0)
            @ h["out"]["kernel"][:, 0] + h["out"]["bias"][0])
  assert stats[0, 0, 0, 4] == pytest.approx(0.25) and np.ptp(offset) > 0.01
  np.testing.assert_allclose(out["frame_scores"], plain["frame_scores"] + offset, atol=1e-4)
  half = np.concatenate([np.zeros((1, 4, 2, 3)), np.full((1, 4, 2, 3), 255.0)], axis=2)
  np.testing.assert_allclose(cpllm.exposure_statistics(half), [[0, 0.5, 1, 0.5, 0.5]],
                             atol=1e-5)


def test_flat_contrast_weighs_patch_scores_by_numpy_contrast(tiny):
  """flat_contrast: the frame score is the mean of the same patch scores weighted by
  (s^2 + 0.01) / (s^2 + c^2) of each patch's luma standard deviation s (NumPy here); a
  flat patch counts ~nothing, and a wrong pooling is refused."""
  cfg, model, params, _ = tiny
  batch = make_batch(cfg, [[True, True], [True, False]], seed=6)
  batch["patches"][0, 0, 0, 0] = 90.0  # one flat patch
  plain = model.clone(score_tokens="patch")
  weighted = plain.clone(flat_contrast=3.0)
  ref = jax.jit(functools.partial(plain.apply, decode=False))(params, batch)
  out = jax.jit(functools.partial(weighted.apply, decode=False))(params, batch)
  np.testing.assert_allclose(out["patch_scores"], ref["patch_scores"], atol=1e-6)
  luma = np.asarray(batch["patches"], np.float64) @ [0.299, 0.587, 0.114]
  var = luma.reshape(luma.shape[:4] + (-1,)).var(-1)  # [B, 2, M, K]
  w = (var + 0.01) / (var + 9.0)
  assert w[0, 0, 0, 0] == pytest.approx(0.01 / 9) and w.max() > 0.99
  want = (w * np.asarray(ref["patch_scores"], np.float64)).sum(-1) / w.sum(-1)
  np.testing.assert_allclose(out["frame_scores"], want, atol=1e-5)
  with pytest.raises(ValueError, match="flat_contrast weighs patch scores"):
    model.clone(score_tokens="pixel", flat_contrast=3.0).init(jax.random.PRNGKey(0), batch)


def test_level_score_is_q_align_expectation(tiny):
  cfg, model, params, apply = tiny
  batch = make_batch(cfg, [[True, False], [True, False]], seed=3)
  batch["input_mask"][1, 4:6] = False  # shorter prompt padded at its end
  out = apply(params, batch)
  logits = np.asarray(out["logits"], np.float64)
  for i, last in enumerate([5, 3]):
    level_logits = logits[i, last, list(cfg.model["level_token_ids"])]
    probs = np.exp(level_logits - level_logits.max())
    probs /= probs.sum()
    np.testing.assert_allclose(out["level_probs"][i], probs, atol=1e-6)
    np.testing.assert_allclose(out["level_score"][i], probs @ [5, 4, 3, 2, 1], atol=1e-5)


def test_target_logits_are_the_full_logits_at_target_positions(tiny):
  """max_targets: a second code path (the full [B, L, V] logits, gathered by hand) gives
  the same logits, and the same text loss through losses.total_loss."""
  from cpllm.train import losses  # pylint: disable=import-outside-toplevel
  cfg, model, params, apply = tiny
  batch = make_batch(cfg, [[True, False], [True, True]], seed=4)
  mask_loss = np.zeros((2, L), np.int32)
  mask_loss[0, 7:12] = 1  # 5 targets: positions 6..10 predict them
  mask_loss[1, 9:16] = 1  # 7 targets, 1 more than max_targets: positions 8..13 kept
  batch["mask_loss"] = mask_loss
  full = apply(params, batch)
  short = jax.jit(cpllm.CPLLM(**dict(cfg.model, max_targets=6)).apply)(params, batch)
  assert "logits" not in short and short["target_logits"].shape[:2] == (2, 6)
  want_at = [[6, 7, 8, 9, 10, 0], [8, 9, 10, 11, 12, 13]]
  np.testing.assert_array_equal(short["target_weight"], [[1] * 5 + [0], [1] * 6])
  np.testing.assert_array_equal(short["targets_dropped"], [0, 1])
  for i, at in enumerate(want_at):
    np.testing.assert_array_equal(short["target_tokens"][i], batch["text"][i, np.add(at, 1)])
    np.testing.assert_allclose(short["target_logits"][i], full["logits"][i, at], atol=1e-5)
  np.testing.assert_allclose(short["level_score"], full["level_score"], atol=1e-6)
  # The loss: row 1's last target (position 14) is the one left out.
  batch = dict(batch, valid=np.ones(2, bool), dims=np.full((2, 2, 6), 5.0, np.float32),
               mos=np.full((2, 2), 3.0, np.float32), crf=np.full((2, 2), -1, np.int32),
               is_original=np.ones((2, 2), np.int32), pair_kind=np.zeros(2, np.int32))
  kept = dict(batch, mask_loss=mask_loss.copy())
  kept["mask_loss"][1, 15] = 0
  weights = dict(pair=0.0, reg=0.0, text=1.0)
  _, got = losses.total_loss(short, batch, weights)
  _, ref = losses.total_loss(full, kept, weights)
  np.testing.assert_allclose(got["loss_text"], ref["loss_text"], rtol=1e-5)
  assert int(got["n_target_tokens"]) == 11 and int(got["n_targets_dropped"]) == 1
  np.testing.assert_array_equal(
      cpllm.target_positions(jnp.array([[0, 0, 1, 1, 0]]), 3)[0], [[1, 2, 0]])


def test_weighted_pool_needs_patch_scores():
  with pytest.raises(ValueError, match="needs score_tokens='patch'"):
    cpllm.CPLLM(**dict(configs.load("configs/tiny.py:gemma2").model, score_pool="weighted",
                       score_tokens="pixel")).init(jax.random.PRNGKey(0), make_batch(
                           configs.load("configs/tiny.py:gemma2"), [[True, False]]))


def test_helpers_on_small_examples():
  np.testing.assert_array_equal(cpllm.decoder_frame_indices(5, 1), [2])
  np.testing.assert_array_equal(cpllm.decoder_frame_indices(5, 2), [1, 3])
  np.testing.assert_array_equal(cpllm.decoder_frame_indices(5, 5), [0, 1, 2, 3, 4])
  with pytest.raises(ValueError, match="decoder_frames"):
    cpllm.decoder_frame_indices(3, 4)
  got = cpllm.last_prefix_index(jnp.array([[1, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1]], bool),
                                jnp.array([[0, 0, 0, 0, 1, 1], [0, 1, 1, 1, 1, 1]]))
  np.testing.assert_array_equal(got, [2, 0])


def test_context_pooling_and_all_decoder_frames():
  cfg = configs.load("configs/tiny.py")
  model_cfg = dict(cfg.model, ctx_pool=2, decoder_frames=cfg.num_frames)
  model = cpllm.CPLLM(**model_cfg)
  batch = make_batch(cfg, [[True, False]])
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), batch)
  out, inter = jax.jit(functools.partial(model.apply, capture_intermediates=True))(
      variables, batch)
  # 32x32 at patch 8 is a 4x4 grid; 2x2 pooling leaves 4 context tokens per frame.
  assert out["ctx_tokens"].shape[3] == 4
  raw = np.asarray(inter["intermediates"]["img"]["__call__"][0][0])  # [N, 16, C]
  want = raw.reshape(-1, 2, 2, 2, 2, raw.shape[-1]).mean((2, 4)).reshape(-1, 4, raw.shape[-1])
  proj = nn.unbox(variables)["params"]["proj_ctx"]
  np.testing.assert_allclose(out["ctx_tokens"].reshape(-1, 4, 64),
                             want @ proj["kernel"] + proj["bias"], atol=1e-5)
  per_video = cfg.num_frames * (4 + out["pix_tokens"].shape[3])
  assert out["decoder_mask"].shape[1] == 2 * per_video + L
  np.testing.assert_array_equal(out["decoder_mask"][0, per_video:2 * per_video], False)


def test_paper_config_shapes_without_allocating():
  cfg = configs.load("configs/paper.py")
  model = cpllm.CPLLM(**cfg.model)
  b, m = 1, cfg.num_frames
  batch = dict(
      ctx=jax.ShapeDtypeStruct((b, 2, m, 448, 448, 3), jnp.uint8),
      patches=jax.ShapeDtypeStruct((b, 2, m, 8, 224, 224, 3), jnp.uint8),
      video_mask=jax.ShapeDtypeStruct((b, 2), bool),
      text=jax.ShapeDtypeStruct((b, cfg.text_len), jnp.int32),
      input_mask=jax.ShapeDtypeStruct((b, cfg.text_len), bool),
      mask_ar=jax.ShapeDtypeStruct((b, cfg.text_len), jnp.int32))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)
  counts = {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v))
            for k, v in nn.unbox(variables)["params"].items()}
  # So400m/14 at 448 (1024 position embeddings), ViT-B/16 at 224, Gemma 2B + LoRA.
  assert 4.0e8 < counts["img"] < 4.3e8
  assert 8.5e7 < counts["pix"] < 8.7e7
  lora = 18 * (2048 * 4 + 4 * 8 * 256 + 2 * (2048 * 4 + 4 * 1 * 256))
  assert counts["llm"] == 2_506_434_560 + lora
  out = jax.eval_shape(model.apply, variables, batch)
  assert out["ctx_tokens"].shape == (b, 2, m, 1024, 2048)
  assert out["pix_tokens"].shape == (b, 2, m, 196, 2048)
  assert out["logits"].shape == (b, 512, 256128)
  assert out["decoder_mask"].shape == (b, 2 * (1024 + 196) + 512)


def test_cached_greedy_decoding_matches_full_forward(tiny):
  """Tokens decoded through `extend` on the KV cache are the argmax of one full forward
  pass over prompt + those tokens (a second code path)."""
  from cpllm.models import sampler
  cfg, model, params, apply = tiny
  batch = make_batch(cfg, [[True, True], [True, False]], seed=4)
  prompt_len, steps = 6, 5
  out = apply(params, batch, decode=False)
  x, input_mask, mask_ar = model.apply(
      params, out["ctx_tokens"], out["pix_tokens"], batch["video_mask"],
      batch["text"][:, :prompt_len], batch["input_mask"][:, :prompt_len],
      batch["mask_ar"][:, :prompt_len], method=model.decoder_inputs)
  tokens = np.asarray(sampler.make_generate(model, max_new_tokens=steps, eos_id=-1)(
      params, x, input_mask, mask_ar)["tokens"])
  full = dict(batch, text=np.concatenate([batch["text"][:, :prompt_len], tokens], 1),
              input_mask=np.ones((2, prompt_len + steps), bool),
              mask_ar=(np.arange(prompt_len + steps) >= prompt_len)[None].repeat(2, 0))
  logits = apply(params, full)["logits"]
  np.testing.assert_array_equal(np.argmax(logits[:, prompt_len - 1:-1], -1), tokens)


@pytest.mark.slow
def test_smoke_run_prints_every_stage(capsys):
  from cpllm import smoke
  smoke.main()
  printed = capsys.readouterr().out
  for needle in ("forward pass only", "out['level_score']", "greedy tokens", "done in"):
    assert needle in printed


def test_paper_config_has_every_training_field_of_the_demo():
  """The trainer reads the same fields from both; paper.py must not lack one."""
  flat = lambda c: set(c.to_dict()) | {f"data.{k}" for k in c.data}
  paper, demo = configs.load("configs/paper.py"), configs.load("configs/demo.py")
  assert flat(demo) <= flat(paper)
  assert paper.context_encoder == "frozen" and not paper.train_decoder_base
