"""The pair-order fix beyond the pipeline (tests/data/test_pipeline.py draws the order):
the pairwise hinge judges each slot by its own MOS, and `Scorer.compare` (cpllm-score
--compare) reports the model's own judgement, whichever slot a video is given.

The model here is a random tiny CP-LLM written as a workdir (no training): the property
holds for any parameters, since the score head scores each slot's frames alone.
`assert_compare_is_order_free` is also meant for the trained workdirs of other tests.
"""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags
from etils import epath
from flax import linen as nn

from cpllm import configs
from cpllm import score
from cpllm.data import demo_clips
from cpllm.data import pipeline
from cpllm.data import tokenizer as tokenizer_lib
from cpllm.data import video
from cpllm.models import cpllm
from cpllm.train import losses
from cpllm.train import trainer

flags.FLAGS.mark_as_parsed()

VOCAB = 400


def test_hinge_reads_each_slots_mos_in_either_order():
  """By hand: MOS 2 in slot A, 4 in B; predicting A above B costs (2-4)(3-1) = -4 -> 4,
  and the same pairs with the slots swapped cost the same."""
  hinge = lambda pred, mos: float(losses.pairwise_hinge(np.array(pred), np.array(mos),
                                                        np.ones(len(mos), bool)))
  assert hinge([[3., 1.]], [[2., 4.]]) == pytest.approx(4.0)
  assert hinge([[1., 3.]], [[2., 4.]]) == 0.0
  pred, mos = [[3., 1.], [1., 2.5], [2., 2.]], [[2., 4.], [4.5, 1.], [3., 1.]]
  # (2-4)(3-1) = -4, (4.5-1)(1-2.5) = -5.25, (3-1)(2-2) = 0: mean 9.25 / 3
  assert hinge(pred, mos) == pytest.approx(9.25 / 3)
  assert hinge(np.flip(pred, 1), np.flip(mos, 1)) == pytest.approx(9.25 / 3)


def assert_compare_is_order_free(scorer: score.Scorer, path_a: str, path_b: str):
  """Comparing (a, b) and (b, a) names the same file better and swaps the two scores.

  Returns the two results, e.g. for checks on the justification.
  """
  ab, ba = scorer.compare(path_a, path_b), scorer.compare(path_b, path_a)
  assert "error" not in ab and "error" not in ba, (ab, ba)
  assert (ab["first"], ab["second"]) == (ba["second"], ba["first"]) == (path_a, path_b)
  assert ab["score_first"] == pytest.approx(ba["score_second"], abs=1e-5)
  assert ab["score_second"] == pytest.approx(ba["score_first"], abs=1e-5)
  winner = lambda r: "equal" if r["better"] == "equal" else r[r["better"]]  # a path
  assert winner(ab) == winner(ba), (ab, ba)
  return ab, ba


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
  """A Scorer on a workdir as the trainer writes it: config.json, tokenizer.model and an
  orbax checkpoint of random tiny parameters (score head bias 3, so that the clipping to
  1..5 does not make every score equal)."""
  workdir = epath.Path(tmp_path_factory.mktemp("untrained"))
  config = configs.load("configs/tiny.py")
  config.model["decoder"]["vocab_size"] = VOCAB
  config.context_encoder = "frozen"
  config.describe_tokens = 4
  tokenizer = tokenizer_lib.Tokenizer(tokenizer_lib.train_sentencepiece(
      demo_clips.demo_texts([], seed=0), str(workdir / "spm"), vocab_size=VOCAB))
  trainer.write_run_files(config, workdir, tokenizer)
  model_config = dict(config.model, level_token_ids=tuple(config.model["level_token_ids"]))
  spec = pipeline.example_spec(config.model, config.num_frames, config.text_len, 1)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), spec)
  params = nn.unbox(jax.jit(cpllm.CPLLM(**model_config).init)(jax.random.PRNGKey(0),
                                                               zeros))["params"]
  params["score_head"]["out"]["bias"] = params["score_head"]["out"]["bias"] + 3.0
  trainable, frozen = trainer.partition(params, trainer.lr_multipliers(
      params, trainer.param_rules(config)))
  with ocp.CheckpointManager(workdir / "checkpoints") as manager:
    manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(
        dict(trainable=trainable, frozen=frozen))))
    manager.wait_until_finished()
  return score.Scorer(str(workdir))


@pytest.mark.slow
def test_compare_in_both_orders_names_the_same_better_file(scorer, tmp_path):
  rng = np.random.default_rng(0)
  detailed = rng.integers(0, 256, (6, 48, 64, 3), dtype=np.uint8)
  flat = np.full_like(detailed, 120)
  paths = [str(tmp_path / "detailed.mkv"), str(tmp_path / "flat.mkv")]
  for frames, path in zip((detailed, flat), paths):
    video.write_video(frames, path, fps=3.0, lossless=True)
  ab, _ = assert_compare_is_order_free(scorer, *paths)
  assert ab["score_first"] != ab["score_second"]  # else the winner check says little
  assert isinstance(ab["justification"], str)
