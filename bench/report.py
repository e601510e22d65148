"""Rewrites the numbers of BENCHMARKS.md from bench/results/*.json: `python -m bench.report`.

Each table sits between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`; everything else
in the file is prose and stays as written. Numbers are never copied by hand.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

from bench import common

DOC = os.path.join(common.REPO_ROOT, "BENCHMARKS.md")


def _g(x: float) -> float:
  return x / 1e9


def machine(results: Mapping[str, dict]) -> str:
  """One line per result file: when and under what load it was measured."""
  rows = [dict(name=name, quick=r["quick"], date=r["machine"]["date"],
               load=r["machine"]["load_average"][0], cpu=r["machine"]["cpu"],
               cores=r["machine"]["cores"], jax=r["machine"]["jax"])
          for name, r in results.items()]
  return common.markdown_table(rows, ["name", "date", "quick", "load", "cpu", "cores", "jax"],
                               ["result", "measured (UTC)", "quick", "load average (1 min)",
                                "CPU", "cores", "jax"])


def train_step(r: dict) -> str:
  rows = [dict(name=k, gflops=_g(v["flops"]), gflops_s=_g(v["flops_per_s"]),
               peak=_g(v["peak_flops_per_s"]), **v) for k, v in r["configs"].items()]
  return common.markdown_table(
      rows, ["name", "params", "trainable", "batch_size", "decoder_seq", "gflops", "step_s",
             "gflops_s", "peak", "mfu"],
      ["config", "params", "trained", "batch", "decoder tokens", "GFLOP/step",
       "step s (median)", "GFLOP/s", "matmul peak GFLOP/s", "**MFU**"])


def decode(r: dict) -> str:
  rows = [dict(r_, bw=r["bandwidth"]["bytes_per_s"] / 1e9,
               mv=r["matvec_bandwidth"]["bytes_per_s"] / 1e9) for r_ in r["rows"]]
  return common.markdown_table(
      rows, ["config", "sampler", "batch", "tokens_per_s", "ms_per_step",
             "no_cache_tokens_per_s", "speedup_vs_nocache", "roofline_tokens_per_s",
             "roofline_ratio", "bw", "matvec_ratio", "mv"],
      ["decoder", "sampler", "batch", "tokens/s", "ms/step", "no-cache tokens/s",
       "**speedup vs no-cache**", "roofline tokens/s", "**step time / roofline**",
       "copy GB/s", "step time / XLA matvec bound", "matvec GB/s"])


def improvement(r: dict) -> str:
  """Before/after pairs of the decode result: each row with a fix undone vs the sampler."""
  after = {(x["config"], x["batch"]): x for x in r["rows"] if x["sampler"] == "sampler"}
  rows = []
  for before in (x for x in r["rows"] if x["sampler"] != "sampler"):
    now = after.get((before["config"], before["batch"]))
    if now is None:
      continue
    rows.append(dict(config=before["config"], batch=before["batch"], undone=before["sampler"],
                     ms_before=before["ms_per_step"], ms_after=now["ms_per_step"],
                     gain=before["ms_per_step"] / now["ms_per_step"],
                     tps_before=before["tokens_per_s"], tps_after=now["tokens_per_s"],
                     nc_before=before["speedup_vs_nocache"],
                     nc_after=now["speedup_vs_nocache"],
                     roof_before=before["roofline_ratio"], roof_after=now["roofline_ratio"]))
  if not rows:
    return "(run `python -m bench.run decode` without --quick for the before rows)"
  return common.markdown_table(
      rows, ["config", "batch", "undone", "ms_before", "ms_after", "gain", "tps_before",
             "tps_after", "nc_before", "nc_after", "roof_before", "roof_after"],
      ["decoder", "batch", "before", "ms/step before", "ms/step after", "**step speed-up**",
       "tokens/s before", "tokens/s after", "vs no-cache before", "vs no-cache after",
       "roofline ratio before", "roofline ratio after"])


def score_only(r: dict) -> str:
  rows = [dict(row, so_g=_g(row["score_only_flops_per_video"]),
               full_g=_g(row["full_flops_per_video"])) for row in r["rows"]]
  return common.markdown_table(
      rows, ["config", "so_g", "full_g", "flops_ratio", "score_only_videos_per_s",
             "full_videos_per_s", "speedup"],
      ["config", "score-only GFLOP/video", "full GFLOP/video", "FLOPs full / score-only",
       "score-only videos/s", "full videos/s", "score-only speedup"])


def pipeline(r: dict) -> str:
  table = common.markdown_table(
      r["rows"], ["num_workers", "examples_per_s", "ratio_to_train", "first_batch_s",
                  "fed_step_s", "loop_slowdown"],
      ["workers", "pipeline examples/s", "ratio to train step", "first batch s",
       "train loop s/step fed by it", "fed / fixed-batch loop"])
  loop = r.get("loop_fixed_step_s")
  loop = f"; in the train loop {common.fmt(loop)} s/step" if loop else ""
  default = r.get("grain_default")
  if default:
    ours = next(x for x in r["rows"] if x["num_workers"] == default["num_workers"])
    read, ratio = r["read_ahead"], default["step_s"] / ours["fed_step_s"]
    default = (f"\n\nRead-ahead, the same loop with the demo's {default['num_workers']} "
               f"workers: {common.fmt(ours['fed_step_s'])} s/step with the pipeline's "
               f"{read['prefetch_buffer_size']} batches on {read['num_threads']} threads per "
               f"process, {common.fmt(default['step_s'])} s/step with grain's default "
               f"({default['prefetch_buffer_size']} batches on "
               f"{default['num_threads']} threads): **{common.fmt(ratio)}x**.")
  return (f"{table}\n\nDemo train step on a fixed batch: {common.fmt(r['fixed_step_s'])} "
          f"s/step = {common.fmt(r['train_examples_per_s'])} examples/s (batch "
          f"{r['batch_size']}){loop}. **ratio_to_train = {common.fmt(r['ratio_to_train'])}** "
          f"(the demo's {r['num_workers']} workers).{default or ''}")


def memory(r: dict) -> str:
  gib = common.gib
  rows = [dict(config=x["config"], params=x["params"], batch=x["batch_size"],
               peak=gib(x["peak_bytes"]), temp=gib(x["peak"]["temp"]),
               weights=gib(x["lower_bound"]["trainable"] + x["lower_bound"]["frozen"]),
               opt=gib(x["lower_bound"]["optimizer"]), batch_b=gib(x["lower_bound"]["batch"]),
               acts=gib(x["lower_bound"]["activations"]), bound=gib(x["lower_bound_bytes"]),
               ratio=x["ratio"]) for x in r["rows"]]
  return common.markdown_table(
      rows, ["config", "params", "batch", "peak", "temp", "weights", "opt", "batch_b", "acts",
             "bound", "ratio"],
      ["config", "params", "batch", "XLA peak GiB", "temporaries GiB", "params GiB",
       "Adam GiB", "inputs GiB", "remat activations GiB", "lower bound GiB",
       "**peak / bound**"])


def scaling(r: dict) -> str:
  rows = []
  for knob, curve in r["curves"].items():
    first = curve["points"][0]["step_s"]
    for p in curve["points"]:
      rows.append(dict(knob=knob, value=p["value"], step_s=p["step_s"],
                       relative=p["step_s"] / first, seq=p["decoder_seq"],
                       exponent=curve["exponent"]))
  table = common.markdown_table(
      rows, ["knob", "value", "seq", "step_s", "relative", "exponent"],
      ["knob", "value", "decoder tokens", "step s (median)", "vs first point",
       "growth exponent"])
  plots = " ".join(f"![step time vs {k}]({c['plot']})" for k, c in r["curves"].items())
  return f"{table}\n\n{plots}"


def score_speed(r: dict) -> str:
  """Seconds per video (key-frame decoding + the scorer's own time), then the split and the
  first calls (cpllm's compile its preprocessing for each frame size)."""
  per_video = common.markdown_table(
      r["rows"], ["video", "kbps", "cpllm_s", "cpllm_describe_s", "brisque_s", "niqe_s",
                  "ratio", "own_ratio", "describe_ratio"],
      ["video", "kbit/s", "**cpllm s/video**", "cpllm + description s/video",
       "**BRISQUE s/video**", "NIQE s/video", "**cpllm / BRISQUE**",
       "cpllm / BRISQUE, own time", "cpllm + description / BRISQUE"])
  split = common.markdown_table(
      r["rows"], ["video", "decode_s", "cpllm_own_s", "cpllm_describe_own_s",
                  "brisque_own_s", "niqe_own_s", "cpllm_first_s", "cpllm_describe_first_s",
                  "brisque_first_s", "niqe_first_s"],
      ["video", "key-frame decode s (shared)", "cpllm own s", "cpllm + description own s",
       "BRISQUE own s", "NIQE own s", "cpllm first call own s",
       "cpllm + description first call own s", "BRISQUE first call own s",
       "NIQE first call own s"])
  tokens = sorted({row["description_tokens"] for row in r["rows"]})
  return (f"{per_video}\n\n{split}\n\ncpllm: {r['workdir']}, {r['key_frames']} key frames "
          f"for every scorer; descriptions of {'/'.join(map(str, tokens))} tokens (at most "
          f"{r['describe_tokens']}). Medians of {r['repeats']} repeats. Once per process: "
          f"`Scorer(workdir)` {common.fmt(r['setup_s']['scorer'])} s, `baselines.load` "
          f"{common.fmt(r['setup_s']['baselines'])} s. "
          + "; ".join(f"{k}: {v}" for k, v in r["packages"].items()) + ".")


RENDERERS: dict[str, Callable[[dict], str]] = dict(
    train_step=train_step, decode=decode, score_only=score_only, pipeline=pipeline,
    memory=memory, scaling=scaling, score_speed=score_speed)


def replace_block(text: str, name: str, body: str) -> str:
  """`text` with the block between <!-- bench:name --> and <!-- /bench:name --> replaced
  by `body`; raises KeyError when the markers are missing."""
  pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
  if not pattern.search(text):
    raise KeyError(f"no <!-- bench:{name} --> ... <!-- /bench:{name} --> block")
  return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)


def render(text: str, results: Mapping[str, dict]) -> str:
  """BENCHMARKS.md text with every block whose result exists re-rendered."""
  for name, result in results.items():
    text = replace_block(text, name, RENDERERS[name](result))
  if "decode" in results and "<!-- bench:improvement -->" in text:
    text = replace_block(text, "improvement", improvement(results["decode"]))
  if results:
    text = replace_block(text, "machine", machine(results))
  return text


def main(path: str = DOC) -> None:
  results = {name: r for name in RENDERERS if (r := common.read_result(name)) is not None}
  with open(path) as f:
    text = f.read()
  with open(path, "w") as f:
    f.write(render(text, results))
  print(f"{os.path.relpath(path)}: rewrote {', '.join(results) or 'nothing'}")


if __name__ == "__main__":
  main()
