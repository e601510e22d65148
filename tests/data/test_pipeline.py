"""grain pipeline: pair planning rules, example contents against a direct computation,
per-host sharding, and exact resumption from a saved iterator state."""

import re

import grain
import numpy as np
import pytest
from absl import flags

from cpllm import configs
from cpllm.data import features
from cpllm.data import instructions
from cpllm.data import perturb
from cpllm.data import pipeline
from cpllm.data import tokenizer as tokenizer_lib
from cpllm.data import video

flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags.

CFG = configs.load("configs/tiny.py")
CRFS = (features.NO_CRF, 23, 35)


def make_records(num_sources=4, frames=4, seed=0):
  rng = np.random.default_rng(seed)
  records = []
  for s in range(num_sources):
    base = rng.integers(0, 256, (frames, 40, 56, 3), dtype=np.uint8)
    for j, crf in enumerate(CRFS):
      mos = 4.6 - 1.1 * j - 0.2 * s
      dims = np.clip(mos + rng.normal(0, 0.3, len(features.DIMENSIONS)), 1, 5)
      records.append(dict(
          id=f"src{s}/crf{crf}", source_id=f"src{s}", frames=(base // (j + 1)).astype(np.uint8),
          mos=np.float32(mos), is_original=crf == features.NO_CRF, crf=np.int32(crf),
          dimensions=dims.astype(np.float32),
          description=instructions.chain_of_thought(
              dict(zip(features.DIMENSIONS, dims)), mos, rng=rng)))
  return records


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  rng = np.random.default_rng(1)
  texts = [r["description"] for r in make_records()] + [pipeline.DESCRIBE_PROMPT]
  texts += [instructions.LEVEL_PROMPT + instructions.level_answer(s) for s in (1.2, 3, 4.9)]
  dims = dict(zip(features.DIMENSIONS, [3.0] * 5))
  texts += [" ".join(instructions.compare(dims, 4.0, dims, 2.0, rng=rng)) for _ in range(5)]
  path = tokenizer_lib.train_sentencepiece(
      texts * 3, str(tmp_path_factory.mktemp("spm") / "tok"), vocab_size=600)
  return tokenizer_lib.Tokenizer(path)


@pytest.fixture(scope="module")
def data():
  records = make_records()
  return records, pipeline.read_metadata(records)


def kwargs(**over):
  return dict(dict(model_config=CFG.model, num_frames=CFG.num_frames, text_len=160,
                   batch_size=4, seed=7), **over)


def test_plans_follow_pair_rules(data):
  records, meta = data
  counts = {k: 0 for k in pipeline.PairKind}
  plan = pipeline.PlanPair(meta, pipeline.Mix(), level_rate=0.3)
  rng = np.random.default_rng(0)
  for i in range(300):
    p = plan.random_map(i % len(meta), rng)
    kind = pipeline.PairKind(p["kind"])
    counts[kind] += 1
    a, b = p["a"], p["b"]
    if kind == pipeline.PairKind.SINGLE:
      assert a == b and p["task"] in (pipeline.Task.LEVEL, pipeline.Task.DESCRIBE)
    elif kind == pipeline.PairKind.SAME_SOURCE:
      assert meta.source_ids[a] == meta.source_ids[b] and meta.crf[a] != meta.crf[b]
      assert p["task"] == pipeline.Task.COMPARE
    else:
      assert meta.source_ids[a] != meta.source_ids[b]
  ladder = counts.pop(pipeline.PairKind.LADDER)  # weight 0 in the default Mix
  assert min(counts.values()) > 60 and ladder == 0  # equal weights -> about 100 each


# "The first video is better.", "The second video is slightly better; ..."
BETTER_RE = re.compile(r"The (first|second) video is (?:slightly )?better")


def test_better_video_takes_either_slot_and_the_text_names_it(data):
  """Over 400 pairs the better video is in slot A about half the time, and each comparison
  text names the slot that the labels (MOS; for same-source pairs also the lower CRF)
  make better, read from the text itself, not from instructions.compare."""
  records, meta = data
  plans = grain.MapDataset.range(400).map(lambda i: i % len(meta)).random_map(
      pipeline.PlanPair(meta, pipeline.Mix(0, 1, 1), level_rate=0.3), seed=5)
  first_better = {pipeline.PairKind.SAME_SOURCE: [], pipeline.PairKind.CROSS: []}
  for p in plans:
    a, b = p["a"], p["b"]
    assert p["task"] == pipeline.Task.COMPARE and meta.mos[a] != meta.mos[b]
    want = "first" if meta.mos[a] > meta.mos[b] else "second"
    if p["kind"] == pipeline.PairKind.SAME_SOURCE:  # NO_CRF (-1) is the source itself
      assert want == ("first" if meta.crf[a] < meta.crf[b] else "second"), p
    first_better[pipeline.PairKind(p["kind"])].append(want == "first")
    _, answer = pipeline.example_text(meta, p)
    named = BETTER_RE.match(answer)
    assert named and named[1] == want, (p, answer)
  # Binomial(400, 1/2): mean 200, sd 10, so 200 +- 40 is 4 sd (p ~ 6e-5); the seed fixes
  # the draw. Always keeping the better video first would give 400.
  assert 160 <= sum(map(sum, first_better.values())) <= 240, first_better
  for kind, firsts in first_better.items():  # about 200 each: 0.3..0.7 is > 5 sd
    assert 0.3 <= np.mean(firsts) <= 0.7, (kind, np.mean(firsts), len(firsts))


def test_slot_order_is_a_function_of_seed_and_position(data):
  """Position i's plan (slot order included) is the same from a fresh dataset and in any
  reading order; another seed puts the better video in other slots."""
  records, meta = data
  make = lambda seed: grain.MapDataset.range(len(meta)).repeat(20).random_map(
      pipeline.PlanPair(meta, pipeline.Mix(0, 1, 1), level_rate=0.3), seed=seed)
  ds = make(5)
  forward = [ds[i] for i in range(120)]
  assert [make(5)[i] for i in reversed(range(120))] == forward[::-1]
  first_better = lambda plans: [meta.mos[p["a"]] > meta.mos[p["b"]] for p in plans]
  assert first_better([make(6)[i] for i in range(120)]) != first_better(forward)


def test_mix_presets_and_fallbacks(data):
  records, meta = data
  rng = np.random.default_rng(0)
  single = pipeline.PlanPair(meta, pipeline.Mix(1, 0, 0), 0.0)
  assert {single.random_map(i, rng)["kind"] for i in range(12)} == {pipeline.PairKind.SINGLE}
  pairwise = pipeline.PlanPair(meta, pipeline.Mix(0, 1, 1), 0.0)
  assert pipeline.PairKind.SINGLE not in {pairwise.random_map(i, rng)["kind"]
                                          for i in range(12)}
  # One source only: cross pairs are impossible and fall back to single.
  one = pipeline.read_metadata(records[:1])
  fallback = pipeline.PlanPair(one, pipeline.Mix(0, 0, 1), 0.0)
  assert fallback.random_map(0, rng)["kind"] == pipeline.PairKind.SINGLE
  with pytest.raises(ValueError, match="mix weights"):
    pipeline.Mix(0, 0, 0).probabilities()


def test_examples_match_direct_preprocessing(data, tokenizer):
  records, meta = data
  ds = pipeline.train_dataset(records, meta, tokenizer, **kwargs())
  batch = next(iter(ds))
  b, m = 4, CFG.num_frames
  r, k, p = CFG.model["ctx_res"], CFG.model["num_patches"], CFG.model["patch_size"]
  assert batch["ctx"].shape == (b, 2, m, r, r, 3) and batch["ctx"].dtype == np.uint8
  assert batch["patches"].shape == (b, 2, m, k, p, p, 3)
  picks = pipeline.frame_picks(4, m)
  for row in range(b):
    a, second = batch["index"][row]
    frames = records[a]["frames"][picks]
    want_ctx = np.clip(np.round(np.asarray(video.context_frames(frames, r))), 0, 255)
    np.testing.assert_array_equal(batch["ctx"][row, 0], want_ctx)
    want_patches = np.clip(np.round(np.asarray(video.pixel_patches(
        frames, k, p, tuple(CFG.model["pix_box"])))), 0, 255)
    np.testing.assert_array_equal(batch["patches"][row, 0], want_patches)
    single = batch["pair_kind"][row] == pipeline.PairKind.SINGLE
    assert batch["video_mask"][row].tolist() == [True, not single]
    np.testing.assert_array_equal(batch["mos"][row], meta.mos[[a, second]])
    # The text is the planned prompt + target with the prefix/suffix masks.
    text = batch["text"][row]
    prefix = text[(batch["mask_ar"][row] == 0) & batch["input_mask"][row]]
    target = text[batch["mask_loss"][row] == 1]
    decoded_prompt = tokenizer.decode(prefix[1:].tolist())
    assert decoded_prompt in (instructions.LEVEL_PROMPT, pipeline.DESCRIBE_PROMPT) or (
        "better" in decoded_prompt or "?" in decoded_prompt)
    if batch["task"][row] == pipeline.Task.LEVEL:
      assert tokenizer.decode(target[:-1].tolist()) == instructions.level_answer(
          float(meta.mos[a]))
    if batch["task"][row] == pipeline.Task.COMPARE:  # names the slot with the higher MOS
      named = BETTER_RE.match(tokenizer.decode(target.tolist()))
      assert named[1] == ("first" if meta.mos[a] > meta.mos[second] else "second")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_restored_iterator_continues_exactly(data, tokenizer, workers):
  records, meta = data
  make = lambda: pipeline.train_dataset(records, meta, tokenizer, **kwargs(
      num_workers=workers))
  it = iter(make())
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(4)]  # crosses the 12-record epoch boundary
  restored = iter(make())
  restored.set_state(state)
  for w in want:
    got = next(restored)
    for key in w:
      np.testing.assert_array_equal(got[key], w[key], err_msg=key)


@pytest.mark.parametrize("hosts,valid_per_batch", [(2, [5, 1]), (5, None)])
def test_eval_covers_each_shard_once_with_padding(data, tokenizer, hosts, valid_per_batch):
  """12 records over 5 hosts: hosts 0 and 1 get 3 records, the others 2 and a padding row,
  and every host runs the same number of batches."""
  records, meta = data
  seen, batch_counts = [], set()
  for shard in range(hosts):
    eval_kwargs = kwargs(batch_size=5 if hosts == 2 else 2, shard_index=shard,
                         shard_count=hosts)
    del eval_kwargs["seed"]
    ds = pipeline.eval_dataset(records, meta, tokenizer, **eval_kwargs)
    batches = list(ds)
    batch_counts.add(len(batches))
    if valid_per_batch:
      assert [int(b["valid"].sum()) for b in batches] == valid_per_batch
    else:
      assert sum(int(b["valid"].sum()) for b in batches) == (3 if shard < 2 else 2)
    for b in batches:
      assert (b["task"] == pipeline.Task.LEVEL).all()
      assert not b["video_mask"][:, 1].any()
      seen += b["index"][b["valid"], 0].tolist()
  assert len(batch_counts) == 1
  assert sorted(seen) == list(range(len(records)))


def test_hosts_share_the_global_batches_of_one_host(data, tokenizer):
  """Two hosts' batches, stacked, are exactly one host's batches of twice the size."""
  records, meta = data
  one = iter(pipeline.train_dataset(records, meta, tokenizer, **kwargs(batch_size=4)))
  hosts = [iter(pipeline.train_dataset(records, meta, tokenizer, **kwargs(
      batch_size=2, shard_index=i, shard_count=2))) for i in range(2)]
  grpo = lambda **kw: iter(pipeline.grpo_dataset(
      records, meta, model_config=CFG.model, num_frames=CFG.num_frames, seed=3,
      kinds=(perturb.Perturbation.SHUFFLE,), strength=1.0, **kw))
  grpo_one = grpo(batch_size=4)
  grpo_hosts = [grpo(batch_size=2, shard_index=i, shard_count=2) for i in range(2)]
  for _ in range(4):  # crosses the 12-record epoch boundary
    for want, parts in ((next(one), [next(h) for h in hosts]),
                        (next(grpo_one), [next(h) for h in grpo_hosts])):
      for key in want:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), want[key],
                                      err_msg=key)


def test_frame_picks_and_bad_metadata():
  np.testing.assert_array_equal(pipeline.frame_picks(8, 5), [0, 2, 4, 5, 7])
  np.testing.assert_array_equal(pipeline.frame_picks(3, 3), [0, 1, 2])
  with pytest.raises(ValueError, match="Rebuild"):
    pipeline.frame_picks(3, 5)
  records = make_records(num_sources=1)
  records[1]["mos"] = np.float32("nan")
  with pytest.raises(ValueError, match="src0/crf23"):
    pipeline.read_metadata(records)


def test_batches_match_example_spec(data, tokenizer):
  records, meta = data
  batch = next(iter(pipeline.train_dataset(records, meta, tokenizer, **kwargs())))
  spec = pipeline.example_spec(CFG.model, CFG.num_frames, 160, 4)
  assert set(batch) == set(spec)
  for key, want in spec.items():
    assert batch[key].shape == want.shape and batch[key].dtype == want.dtype, key


def test_reason_task_teaches_the_grpo_format(data):
  records, meta = data
  plan = pipeline.PlanPair(meta, pipeline.Mix(1, 0, 0), level_rate=0.3, reason_rate=0.5)
  rng = np.random.default_rng(0)
  plans = [plan.random_map(i % len(meta), rng) for i in range(200)]
  reasons = [p for p in plans if p["task"] == pipeline.Task.REASON]
  assert 70 < len(reasons) < 130
  prompt, target = pipeline.example_text(meta, reasons[0])
  assert prompt == instructions.GRPO_PROMPT
  a = reasons[0]["a"]
  assert target.startswith("<think>")
  assert target.endswith(f"<answer>{float(meta.mos[a]):.2f}</answer>")
  # reason_rate 0 draws no extra random number: the plans of older configs are unchanged.
  old = pipeline.PlanPair(meta, pipeline.Mix(), level_rate=0.3)
  new = pipeline.PlanPair(meta, pipeline.Mix(), level_rate=0.3, reason_rate=0.0)
  rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
  assert [old.random_map(i, rng_a) for i in range(12)] == [new.random_map(i, rng_b)
                                                             for i in range(12)]


def test_grpo_batches_pair_each_video_with_its_perturbed_copy(data):
  records, meta = data
  kinds = (perturb.Perturbation.REVERSE, perturb.Perturbation.REPEAT)
  ds = pipeline.grpo_dataset(records, meta, model_config=CFG.model, num_frames=3,
                             batch_size=4, seed=1, kinds=kinds, strength=1.0)
  batch = next(iter(ds))
  r, k, p = CFG.model["ctx_res"], CFG.model["num_patches"], CFG.model["patch_size"]
  assert batch["ctx"].shape == (4, 2, 3, r, r, 3)
  assert batch["patches"].shape == (4, 2, 3, k, p, p, 3)
  picks = pipeline.frame_picks(4, 3)
  for row in range(4):
    index = int(batch["index"][row])
    assert batch["mos"][row] == meta.mos[index]
    frames = records[index]["frames"][picks]
    kind = kinds[batch["perturbation"][row]]
    order = batch["perturbed_order"][row]
    # strength 1: the whole clip reversed, or every frame after the first a stall.
    assert order.tolist() == ([2, 1, 0] if kind == perturb.Perturbation.REVERSE
                              else [0, 0, 0])
    want = np.clip(np.round(np.asarray(video.context_frames(frames[order], r))), 0, 255)
    np.testing.assert_array_equal(batch["ctx"][row, 1], want)
    np.testing.assert_array_equal(batch["ctx"][row, 0], np.clip(np.round(np.asarray(
        video.context_frames(frames, r))), 0, 255))
  with pytest.raises(ValueError, match="at least one perturbation"):
    pipeline.LoadPerturbedPair(records, meta, CFG.model, 3, (), 0.5)
