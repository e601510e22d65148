"""Fixtures of the end-to-end tests, one per xdist worker (session scope): the tiny built
demo_videos and one trained smoke workdir that the tests read and never change (a test
that needs to change it works on a copy)."""

import contextlib
import io

import pytest
from absl import flags

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
    metrics = trainer.main(e2e.smoke_config(data_dir, total_steps=e2e.SMOKE_STEPS), workdir)
  return workdir, metrics, printed.getvalue()
