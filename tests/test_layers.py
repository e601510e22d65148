"""Lower layers never import higher ones: models and data < evals < train < the entry points
(cpllm/*.py other than configs.py and sharding.py, which every layer may use). Read from the
source with `ast`, so a lazy import inside a function counts too."""

import ast
import pathlib

import cpllm

ROOT = pathlib.Path(cpllm.__file__).parent
SHARED = {"configs", "sharding", "__init__"}
ENTRY_POINTS = {p.stem for p in ROOT.glob("*.py")} - SHARED
RANK = {"models": 0, "data": 0, "evals": 1, "train": 2}


def rank(module: str) -> int | None:
  """Layer of a cpllm module name, e.g. 'cpllm.train.grpo' -> 2; None for shared modules."""
  parts = module.split(".")
  if parts[0] != "cpllm" or len(parts) < 2 or parts[1] in SHARED:
    return None
  return 3 if parts[1] in ENTRY_POINTS else RANK[parts[1]]


def imports(path: pathlib.Path) -> list[str]:
  tree = ast.parse(path.read_text())
  names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      names += [f"{node.module}.{a.name}" for a in node.names]
  return names


def test_rank_of_module_names():
  assert rank("cpllm.models.sampler") == 0 and rank("cpllm.evals.evaluator") == 1
  assert rank("cpllm.train.grpo") == 2 and rank("cpllm.score") == 3
  assert rank("cpllm.configs") is None and rank("numpy") is None


def test_no_module_imports_a_higher_layer():
  upward = []
  for path in sorted(ROOT.rglob("*.py")):
    own = rank(".".join(("cpllm",) + path.relative_to(ROOT).with_suffix("").parts))
    if own is None:
      continue
    for name in imports(path):
      theirs = rank(name)
      if theirs is not None and theirs > own:
        upward.append(f"{path.relative_to(ROOT)} imports {name}")
  assert not upward, upward
