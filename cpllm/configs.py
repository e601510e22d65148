"""Loading `configs/<name>.py[:arg]` files, the same syntax ml_collections' config flags use."""

from __future__ import annotations

import importlib.util
import os
import pathlib

import ml_collections
from etils import epath

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def load(spec: str) -> ml_collections.ConfigDict:
  """`configs/paper.py:gemma2` -> get_config('gemma2'); relative paths from the repo root."""
  path, _, arg = spec.partition(":")
  return load_module(path).get_config(arg or None)


def load_module(path: str):
  """The module of a config file (for names beside get_config, e.g. a list of runs)."""
  file = pathlib.Path(path)
  if not file.is_absolute() and not file.exists():
    file = REPO_ROOT / file
  if not file.exists():
    raise FileNotFoundError(f"config file not found: {path}")
  module_spec = importlib.util.spec_from_file_location(f"cpllm_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def resolve_path(path: str) -> epath.Path:
  """A workdir or data path from a config or flag: local paths made absolute (orbax needs
  them so), URLs such as gs://bucket/run kept as they are (read and written through epath,
  i.e. TensorFlow's gfile)."""
  if "://" in str(path):
    return epath.Path(path)
  return epath.Path(os.path.abspath(path))
