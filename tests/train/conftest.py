"""Fixtures of the end-to-end tests, one per xdist worker (session scope): the tiny built
demo_videos, one trained smoke workdir and one GRPO run from it, which the tests read and
never change (a test that needs to change one works on a copy)."""

import contextlib
import io

import pytest
from absl import flags

from cpllm import configs
from cpllm.train import grpo
from cpllm.train import trainer
from data_builders.demo_videos import demo_videos
from tests.train import e2e

flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  demo_videos.DemoVideos(config=demo_videos.DemoVideosConfig(**e2e.TINY_DATA),
                         data_dir=str(path)).download_and_prepare()
  return str(path)


@pytest.fixture(scope="session")
def trained(data_dir, tmp_path_factory):
  """(workdir, metrics, printed) of one 6-step smoke run with an evaluation at the end."""
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    metrics = trainer.main(e2e.smoke_config(data_dir, **e2e.SMOKE_RUN), workdir)
  return workdir, metrics, printed.getvalue()


@pytest.fixture(scope="session")
def grpo_run(data_dir, trained, tmp_path_factory):
  """(workdir, metrics, printed, config) of 2 GRPO steps from the trained workdir, with the
  evaluations before and after."""
  config = configs.load("configs/demo_grpo.py:smoke")
  config.data.data_dir, config.grpo.init_workdir = data_dir, trained[0]
  workdir = str(tmp_path_factory.mktemp("grpo") / "run")
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    metrics = grpo.main(config, workdir)
  return workdir, metrics, printed.getvalue(), config
