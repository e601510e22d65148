"""Evaluation of a CP-LLM on held-out videos: scores, level-token scores and descriptions.

`evaluate(params, step=..., ...)` runs every evaluation record once (each host feeds its
shard's rows of each global batch, sharded over the mesh like training batches), gathers
the predictions on every host, computes the metrics of cpllm.evals.metrics and writes

  workdir/eval/<step>/metrics.json     all metrics (JSON)
  workdir/eval/<step>/scatter.png      predicted score vs MOS with the fitted logistic
  workdir/eval/<step>/flip_rate.png    flip rate per CRF difference
  workdir/eval/<step>/descriptions.jsonl  the generated descriptions
  workdir/eval/<step>/answers.jsonl  with `config.eval_answer_tokens` > 0: every video's
                                     greedy response to the GRPO prompt (answer_* metrics)

and logs the scalars and both plots to TensorBoard.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
from etils import epath

from cpllm import sharding
from cpllm.data import features
from cpllm.data import instructions
from cpllm.data import pipeline
from cpllm.evals import metrics as metrics_lib
from cpllm.evals import plots
from cpllm.models import sampler


def reference_records(meta: pipeline.Metadata) -> np.ndarray:
  """bool[N]: the record each compression variant is compared with for DMOS.

  Per source, the non-variant record (crf == NO_CRF) with the highest MOS: the source video
  itself in crf_variants, the pristine clip in demo_videos (whose other distortions also
  have no CRF and are neither reference nor variant). Records with a CRF are variants.
  """
  is_ref = np.zeros(len(meta), bool)
  for indices in meta.by_source.values():
    candidates = indices[meta.crf[indices] == features.NO_CRF]
    if len(candidates):
      is_ref[candidates[np.argmax(meta.mos[candidates])]] = True
  return is_ref


def generate_tokens(model, params, out, video_mask, generate, prompts):
  """Greedy continuations of `prompts` (encoded arrays, one row per example) about the
  first video of each row -> (tokens int32[B, N], lengths int32[B]) as NumPy on every
  host.

  `generate` is a `sampler.make_generate` function, built once per evaluation so it
  compiles once.
  """
  prefix = model.apply({"params": params}, out["ctx_tokens"], out["pix_tokens"], video_mask,
                       prompts["text"], prompts["input_mask"], prompts["mask_ar"],
                       method=model.decoder_inputs)
  result = generate({"params": params}, *prefix)
  return sharding.to_host(result["tokens"]), sharding.to_host(result["lengths"])


def decode_tokens(tokenizer, tokens, lengths) -> list[str]:
  """Texts of sampled rows: each row's first `length` tokens, EOS removed."""
  return [tokenizer.decode(row[:n][row[:n] != tokenizer.eos_id].tolist())
          for row, n in zip(tokens, lengths)]


def load_metrics(workdir: str, step: int) -> dict | None:
  path = epath.Path(workdir) / "eval" / str(step) / "metrics.json"
  return json.loads(path.read_text()) if path.exists() else None


def evaluate(params, *, step: int, model, records, meta: pipeline.Metadata, tokenizer,
             config, workdir: str, writer, mesh) -> dict[str, Any]:
  """Evaluates `params` on the evaluation split; returns the metrics dict (on every host).

  `config.eval_batch_size` is global, like `config.batch_size`.
  """
  batch_size = config.get("eval_batch_size", config.batch_size)
  batch_sharding = sharding.batch_sharding(mesh, batch_size, "eval_batch_size")
  shard_index, shard_count = sharding.process_rows(batch_sharding, batch_size)
  dataset = pipeline.eval_dataset(
      records, meta, tokenizer, model_config=config.model, num_frames=config.num_frames,
      text_len=config.text_len, batch_size=batch_size // shard_count,
      num_workers=config.data.get("num_workers", 0), shard_index=shard_index,
      shard_count=shard_count)
  apply = jax.jit(lambda p, b: model.apply({"params": p}, b))
  describe_left = config.get("eval_describe", 8)
  generate = sampler.make_generate(model, max_new_tokens=config.get("describe_tokens", 64),
                                   eos_id=tokenizer.eos_id)
  describe_prompts = sampler.encode_prompts(tokenizer, [pipeline.DESCRIBE_PROMPT] * batch_size)
  answer_len = config.get("eval_answer_tokens", 0)
  if answer_len:
    generate_answer = sampler.make_generate(model, max_new_tokens=answer_len,
                                            eos_id=tokenizer.eos_id)
    answer_prompts = sampler.encode_prompts(tokenizer,
                                            [instructions.GRPO_PROMPT] * batch_size)
  indices, scores, level_scores, texts, text_indices = [], [], [], [], []
  answer_rows, answer_lengths = [], []
  batches = iter(dataset)
  for host_batch in batches:
    batch = sharding.global_batch(host_batch, batch_sharding)
    out = apply(params, batch)
    valid, index = sharding.to_host(batch["valid"]), sharding.to_host(batch["index"])
    indices.append(index[valid, 0])
    scores.append(sharding.to_host(out["score"])[valid, 0])
    level_scores.append(sharding.to_host(out["level_score"])[valid])
    if answer_len:
      tokens, lengths = generate_tokens(model, params, out, batch["video_mask"],
                                        generate_answer, answer_prompts)
      answer_rows.append(tokens[valid])
      answer_lengths.append(lengths[valid])
    if describe_left > 0:
      described = decode_tokens(tokenizer, *generate_tokens(
          model, params, out, batch["video_mask"], generate, describe_prompts))
      keep = np.flatnonzero(valid)[:describe_left]
      texts += [described[i] for i in keep]
      text_indices += index[keep, 0].tolist()
      describe_left -= len(keep)
  batches.close()  # frees the prefetch workers' shared memory now, not at exit

  index = np.concatenate(indices)
  order = np.argsort(index)
  index = index[order]
  pred = np.concatenate(scores)[order]
  level = np.concatenate(level_scores)[order]
  mos = meta.mos[index]
  answer_texts = None
  if answer_len:
    answer_texts = decode_tokens(tokenizer, np.concatenate(answer_rows)[order],
                                 np.concatenate(answer_lengths)[order])
  result = metrics_lib.evaluate_predictions(
      pred, mos, meta.source_ids[index], meta.crf[index],
      is_source=reference_records(meta)[index], level_score=level,
      answer_texts=answer_texts)
  blind = tuple(config.get("score_blind", ()))
  if blind:  # the videos whose labels trained the score head: what it can be asked to see
    seen = features.intact(meta.dimensions[index], blind)
    result["seen"] = metrics_lib.evaluate_predictions(pred[seen], mos[seen],
                                                      meta.source_ids[index][seen],
                                                      meta.crf[index][seen])
  if texts:  # Descriptions of the first `eval_describe` videos only (sampling is slow).
    result.update(metrics_lib.prefixed(
        metrics_lib.answer_metrics(texts, meta.mos[text_indices]), "text"))
  result["step"] = step

  if jax.process_index() == 0:
    out_dir = epath.Path(workdir) / "eval" / str(step)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    with (out_dir / "descriptions.jsonl").open("w") as f:
      for i, text in zip(text_indices, texts):
        f.write(json.dumps(dict(id=str(meta.ids[i]), mos=float(meta.mos[i]),
                                description=text)) + "\n")
    if answer_texts is not None:
      with (out_dir / "answers.jsonl").open("w") as f:
        for i, text in zip(index, answer_texts):
          f.write(json.dumps(dict(id=str(meta.ids[i]), mos=float(meta.mos[i]),
                                  answer=metrics_lib.parse_answer_score(text),
                                  response=text)) + "\n")
    scatter = plots.scatter_with_logistic(
        pred, mos, str(out_dir / "scatter.png"),
        title=f"Predicted score vs MOS, step {step}")
    flips = plots.flip_rate_plot(result["flip_rate"], str(out_dir / "flip_rate.png"),
                                 ties=result["flip_ties"],
                                 title=f"Flip rate vs CRF difference, step {step}")
    writer.write_scalars(step, {f"eval/{k}": v for k, v in _scalars(result).items()})
    writer.write_images(step, {"eval/scatter": scatter.image[None],
                               "eval/flip_rate": flips.image[None]})
  return result


def _scalars(result: dict) -> dict[str, float]:
  """Numeric entries, with the per-difference flip rates flattened ('flip_rate_4')."""
  out = {}
  for key, value in result.items():
    if isinstance(value, dict):
      out.update({f"{key}_{k}": v for k, v in value.items() if isinstance(v, (int, float))})
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      out[key] = value
  return out
