"""Peak memory of the train step against its lower bound: `python -m bench.run memory`.

Peak: XLA's memory analysis of the compiled train step (arguments + outputs - donated
aliases + temporaries); the paper's 3B-parameter step is compiled from shapes only
(jax.eval_shape of the state), never materialised, the others from their real states. Lower bound
(workloads.memory_lower_bound): trainable parameters + their Adam state + frozen
parameters + the input batch + the activations a fully rematerialised backward pass keeps
(every layer's input of every stack that backpropagation runs through). ratio = peak /
lower bound. `demo_remat` is the demo with every stack rematerialised
(policy nothing_saveable, as configs/paper.py), the configuration the lower bound assumes;
quick runs demo and paper only. All float32, one device (the paper's global batch of 128
on one device: divide by the device count for a data-parallel slice).
"""

from __future__ import annotations

import time

from bench import common
from bench import workloads

CONFIGS = {"demo": "configs/demo.py", "demo_remat": "configs/demo.py",
           "bench": "configs/bench.py", "paper": "configs/paper.py"}
QUICK = ("demo", "paper")
REMAT = "nothing_saveable"


def remat(config):
  """The config with every layer stack rematerialised (the paper config's policy)."""
  return workloads.with_model(config, **{
      part: {**config.model[part], "remat_policy": REMAT}
      for part in ("ctx_encoder", "pix_encoder", "decoder")})


def measure(name: str, spec: str) -> dict:
  config = workloads.load(spec)
  if name.endswith("_remat"):
    config = remat(config)
  start = time.perf_counter()
  compiled, state, _ = workloads.compiled_train_step(config, abstract=name == "paper")
  compile_s = time.perf_counter() - start
  peak = common.memory(compiled)
  bound = workloads.memory_lower_bound(state, config)
  counts = workloads.param_counts(state)
  return dict(config=name, params=counts["total"], trainable=counts["trainable"],
              batch_size=config.batch_size, compile_s=compile_s, peak=peak,
              lower_bound=bound, peak_bytes=peak["peak"], lower_bound_bytes=bound["total"],
              ratio=peak["peak"] / bound["total"])


def run(quick: bool = False) -> dict:
  rows = [measure(n, s) for n, s in CONFIGS.items() if not quick or n in QUICK]
  gib = lambda b: b / 2**30
  print(common.markdown_table(
      [dict(config=r["config"], params=r["params"], batch=r["batch_size"],
            peak=gib(r["peak_bytes"]), temp=gib(r["peak"]["temp"]),
            bound=gib(r["lower_bound_bytes"]), params_opt=gib(
                r["lower_bound"]["trainable"] + r["lower_bound"]["optimizer"]
                + r["lower_bound"]["frozen"]),
            acts=gib(r["lower_bound"]["activations"]), ratio=r["ratio"]) for r in rows],
      ["config", "params", "batch", "peak", "temp", "bound", "params_opt", "acts", "ratio"],
      ["config", "params", "batch", "XLA peak GiB", "of which temporaries GiB",
       "lower bound GiB", "params + Adam GiB", "remat activations GiB", "peak / bound"]))
  result = dict(ratio={r["config"]: r["ratio"] for r in rows}, rows=rows)
  common.write_result("memory", result, quick=quick)
  return result

