"""Evaluation of a CP-LLM on held-out videos: scores, level-token scores and descriptions.

`evaluate(params, step=..., ...)` runs every evaluation record once (each host its shard),
gathers the predictions, computes the metrics of cpllm.evals.metrics and writes

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
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from cpllm.data import features
from cpllm.data import instructions
from cpllm.data import pipeline
from cpllm.evals import metrics as metrics_lib
from cpllm.evals import plots
from cpllm.train import sampler


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
  first video of each row -> (tokens int32[B, N], lengths int32[B]) as NumPy.

  `generate` is a `sampler.make_generate` function, built once per evaluation so it
  compiles once.
  """
  prefix = model.apply({"params": params}, out["ctx_tokens"], out["pix_tokens"], video_mask,
                       prompts["text"], prompts["input_mask"], prompts["mask_ar"],
                       method=model.decoder_inputs)
  result = jax.device_get(generate({"params": params}, *prefix))
  return np.asarray(result["tokens"]), np.asarray(result["lengths"])


def decode_tokens(tokenizer, tokens, lengths) -> list[str]:
  """Texts of sampled rows: each row's first `length` tokens, EOS removed."""
  return [tokenizer.decode(row[:n][row[:n] != tokenizer.eos_id].tolist())
          for row, n in zip(tokens, lengths)]


def _gather(values: np.ndarray) -> np.ndarray:
  if jax.process_count() == 1:
    return values
  return np.asarray(multihost_utils.process_allgather(values)).reshape(
      (-1,) + values.shape[1:])


def load_metrics(workdir: str, step: int) -> dict | None:
  path = os.path.join(workdir, "eval", str(step), "metrics.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def evaluate(params, *, step: int, model, records, meta: pipeline.Metadata, tokenizer,
             config, workdir: str, writer, mesh) -> dict[str, Any]:
  """Evaluates `params` on the evaluation split; returns the metrics dict."""
  del mesh  # Evaluation batches are small; they run replicated.
  batch_size = config.get("eval_batch_size", config.batch_size)
  dataset = pipeline.eval_dataset(
      records, meta, tokenizer, model_config=config.model, num_frames=config.num_frames,
      text_len=config.text_len, batch_size=batch_size,
      num_workers=config.data.get("num_workers", 0), shard_index=jax.process_index(),
      shard_count=jax.process_count())
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
  for batch in batches:
    out = apply(params, batch)
    valid = batch["valid"]
    indices.append(batch["index"][valid, 0])
    scores.append(np.asarray(out["score"])[valid, 0])
    level_scores.append(np.asarray(out["level_score"])[valid])
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
      text_indices += batch["index"][keep, 0].tolist()
      describe_left -= len(keep)
  batches.close()  # frees the prefetch workers' shared memory now, not at exit

  index = _gather(np.concatenate(indices))
  order = np.argsort(index)
  index = index[order]
  pred = _gather(np.concatenate(scores))[order]
  level = _gather(np.concatenate(level_scores))[order]
  mos = meta.mos[index]
  answer_texts = None
  if answer_len:  # gathered as tokens: text does not travel between hosts
    answer_texts = decode_tokens(tokenizer,
                                 _gather(np.concatenate(answer_rows))[order],
                                 _gather(np.concatenate(answer_lengths))[order])
  result = metrics_lib.evaluate_predictions(
      pred, mos, meta.source_ids[index], meta.crf[index],
      is_source=reference_records(meta)[index], level_score=level,
      answer_texts=answer_texts)
  if texts:  # Descriptions are generated on host 0's share only (a few videos).
    result.update(metrics_lib.prefixed(
        metrics_lib.answer_metrics(texts, meta.mos[text_indices]), "text"))
  result["step"] = step

  if jax.process_index() == 0:
    out_dir = os.path.join(workdir, "eval", str(step))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
      json.dump(result, f, indent=2, sort_keys=True)
    with open(os.path.join(out_dir, "descriptions.jsonl"), "w") as f:
      for i, text in zip(text_indices, texts):
        f.write(json.dumps(dict(id=str(meta.ids[i]), mos=float(meta.mos[i]),
                                description=text)) + "\n")
    if answer_texts is not None:
      with open(os.path.join(out_dir, "answers.jsonl"), "w") as f:
        for i, text in zip(index, answer_texts):
          f.write(json.dumps(dict(id=str(meta.ids[i]), mos=float(meta.mos[i]),
                                  answer=metrics_lib.parse_answer_score(text),
                                  response=text)) + "\n")
    scatter = plots.scatter_with_logistic(
        pred, mos, os.path.join(out_dir, "scatter.png"),
        title=f"Predicted score vs MOS, step {step}")
    flips = plots.flip_rate_plot(result["flip_rate"], os.path.join(out_dir, "flip_rate.png"),
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
