"""Fixtures of the end-to-end tests: the tiny built demo_videos, one trained smoke workdir
and one GRPO run from it. Each is made once per test run, by whichever xdist worker needs
it first, in a folder all workers share (tests/conftest.py: shared_dir); the tests read
them and never change them (a test that needs to change one works on a copy)."""

import contextlib
import io
import json
import os

import pytest
from absl import flags

from cpllm import configs
from cpllm.train import grpo
from cpllm.train import trainer
from data_builders.demo_videos import demo_videos
from tests import conftest
from tests.train import e2e

flags.FLAGS.mark_as_parsed()


def _run_once(name, run):
  """(workdir, metrics, printed) of `run(workdir)` -> metrics, made once per test run."""
  with conftest.shared_dir(name) as (path, made):
    workdir = os.path.join(path, "run")
    if not made:
      printed = io.StringIO()
      with contextlib.redirect_stdout(printed):
        metrics = run(workdir)
      with open(os.path.join(path, "result.json"), "w") as f:
        json.dump(dict(metrics=metrics, printed=printed.getvalue()), f)
    with open(os.path.join(path, "result.json")) as f:
      result = json.load(f)
  return workdir, result["metrics"], result["printed"]


@pytest.fixture(scope="session")
def data_dir():
  with conftest.shared_dir("tfds") as (path, made):
    if not made:
      demo_videos.DemoVideos(config=demo_videos.DemoVideosConfig(**e2e.TINY_DATA),
                             data_dir=path).download_and_prepare()
  return path


@pytest.fixture(scope="session")
def trained(data_dir):
  """(workdir, metrics, printed) of one 6-step smoke run with an evaluation at the end."""
  return _run_once("trained", lambda workdir: trainer.main(
      e2e.smoke_config(data_dir, **e2e.SMOKE_RUN), workdir))


@pytest.fixture(scope="session")
def grpo_run(data_dir, trained):
  """(workdir, metrics, printed, config) of 2 GRPO steps from the trained workdir, with the
  evaluations before and after."""
  config = configs.load("configs/demo_grpo.py:smoke")
  config.data.data_dir, config.grpo.init_workdir = data_dir, trained[0]
  return (*_run_once("grpo", lambda workdir: grpo.main(config, workdir)), config)
