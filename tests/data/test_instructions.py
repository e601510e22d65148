"""SIG text: level intervals, templates that never contradict the scores, importers."""

import json
import re

import numpy as np
import pytest

from cpllm.data import instructions as I

LEVEL_RE = re.compile(r"\b(" + "|".join(I.LEVELS) + r")\b")


@pytest.mark.parametrize("score,level", [
    (1.0, "bad"), (1.8, "bad"), (1.81, "poor"), (2.6, "poor"), (2.61, "fair"), (3.0, "fair"),
    (3.4, "fair"), (3.41, "good"), (4.2, "good"), (4.21, "excellent"), (5.0, "excellent"),
])
def test_score_to_level_intervals(score, level):
  assert I.score_to_level(score) == level


@pytest.mark.parametrize("score", [0.99, 5.01, float("nan"), -3])
def test_score_outside_scale_raises(score):
  with pytest.raises(ValueError, match="outside the 1..5 scale"):
    I.score_to_level(score)


def test_level_centre_round_trip():
  assert [I.level_centre(l) for l in I.LEVELS] == [1.4, 2.2, 3.0, 3.8, 4.6]
  assert all(I.score_to_level(I.level_centre(l)) == l for l in I.LEVELS)
  with pytest.raises(ValueError, match="'great'"):
    I.level_centre("great")


def test_level_answer():
  assert I.LEVEL_PROMPT + I.level_answer(3.0) == "The quality of the video is fair."
  assert I.level_answer(4.9) == " excellent."


def test_descriptions_hold_no_level_words():
  # A state or question containing e.g. "good" would make a sentence state two levels.
  for dim in I.DIMENSIONS.values():
    for text in dim.states + (dim.question, dim.topic):
      assert not LEVEL_RE.search(text), text


def random_video(rng, names=tuple(I.DIMENSIONS)):
  keep = [n for n in names if rng.random() < 0.8] or [names[0]]
  return {n: float(rng.uniform(1, 5)) for n in keep}, float(rng.uniform(1, 5))


def sentences(text):
  return re.split(r"(?<=\.)\s+", text)


def test_chain_of_thought_never_contradicts_levels():
  rng = np.random.default_rng(0)
  for _ in range(300):
    dims, overall = random_video(rng)
    levels = {n: I.score_to_level(s) for n, s in dims.items()}
    text = I.chain_of_thought(dims, overall, rng=rng)
    *body, last = sentences(text)
    assert last == f"Overall, the quality of the video is {I.score_to_level(overall)}."
    assert I.stated_level(text) == I.score_to_level(overall)
    for sentence in body:
      stated = set(LEVEL_RE.findall(sentence))
      topics = [n for n in dims if I.DIMENSIONS[n].topic in sentence.lower()]
      if sentence.startswith("All "):
        assert stated == set(levels.values()), (sentence, levels)
      elif "weakest" in sentence:
        order = sorted(set(levels.values()), key=I.LEVELS.index)
        assert LEVEL_RE.findall(sentence) == [order[0], order[-1]], (sentence, levels)
      elif len(topics) == 1:
        assert stated <= {levels[topics[0]]}, (sentence, levels)
      else:
        assert not stated, (sentence, levels)
    for n, level in levels.items():  # every dimension's level is stated
      assert any(I.DIMENSIONS[n].topic in s.lower() and LEVEL_RE.findall(s) == [level]
                 for s in body), (n, level, text)


def test_chain_of_thought_deterministic_per_seed_and_varied_across_seeds():
  dims = {"sharpness": 2.1, "noise": 4.5, "smoothness": 3.0}
  run = lambda seed: I.chain_of_thought(dims, 3.0, rng=np.random.default_rng(seed))
  assert run(7) == run(7)
  assert len({run(s) for s in range(20)}) > 5


def test_chain_of_thought_summary():
  rng = np.random.default_rng(0)
  text = I.chain_of_thought({"sharpness": 4.5, "noise": 2.0, "exposure": 2.2}, 3.0, rng=rng)
  assert ("Noise and exposure are the weakest (poor) and sharpness the strongest "
          "(excellent).") in text
  text = I.chain_of_thought({"sharpness": 3.0, "noise": 2.9}, 3.0, rng=rng)
  assert "All 2 aspects are fair." in text
  assert I.chain_of_thought({}, 1.0, rng=rng) == "Overall, the quality of the video is bad."


@pytest.mark.parametrize("dims,match", [
    ({"blur": 3.0}, r"unknown quality dimensions \['blur'\]"),
    ({"noise": 7.0}, r"dimension 'noise': score 7.0 is outside"),
])
def test_bad_dimensions_raise(dims, match):
  with pytest.raises(ValueError, match=match):
    I.chain_of_thought(dims, 3.0, rng=np.random.default_rng(0))


def test_yes_no_answers_match_levels():
  rng = np.random.default_rng(1)
  for _ in range(200):
    dims, _ = random_video(rng)
    question, answer = I.yes_no(dims, rng=rng)
    (name,) = [n for n, d in I.DIMENSIONS.items() if d.question == question]
    i = I.LEVELS.index(I.score_to_level(dims[name]))
    assert re.match(r"Yes, |No\. ", answer)[0][:-2] == ("Yes" if i <= 2 else "No")
    assert I.DIMENSIONS[name].states[i] in answer.lower()
  assert I.yes_no({"sharpness": 2.0}, rng=rng) == (
      "Is the video blurry?", "Yes, noticeably. The frames are noticeably blurry.")


def test_weakest_dimension():
  rng = np.random.default_rng(0)
  q, a = I.weakest_dimension({"sharpness": 2.0, "noise": 2.0, "exposure": 3.0}, rng=rng)
  assert "sharpness, noise or exposure" in q
  assert a == ("Sharpness and noise (poor): the frames are noticeably blurry; "
               "clearly visible noise degrades the frames.")
  _, a = I.weakest_dimension({"sharpness": 4.0, "smoothness": 4.5}, rng=rng)
  assert a == "No aspect degrades it much; sharpness is the weakest, still good."
  with pytest.raises(ValueError, match="at least two"):
    I.weakest_dimension({"noise": 2.0}, rng=rng)


def test_compare():
  rng = np.random.default_rng(0)
  _, a = I.compare({"noise": 4.5}, 4.0, {"noise": 2.0}, 2.2, rng=rng)
  assert a == ("The first video is better. Its overall quality is good, while the second "
               "video's is poor. The first video is better in noise (excellent vs poor).")
  _, a = I.compare({"noise": 4.5, "sharpness": 2.0}, 3.0,
                   {"noise": 2.0, "sharpness": 3.0}, 3.2, rng=rng)
  assert a == ("The second video is slightly better; both are fair overall. The second video "
               "is better in sharpness (fair vs poor). The first video is better in noise "
               "(excellent vs poor), but its overall quality is still lower.")
  _, a = I.compare({"noise": 3.0}, 3.0, {"noise": 3.1}, 3.0, rng=rng)
  assert a == "Both videos have the same quality: both are fair overall."
  with pytest.raises(ValueError, match="same dimensions"):
    I.compare({"noise": 3.0}, 3.0, {"sharpness": 3.0}, 3.0, rng=rng)


def test_compare_names_the_higher_score():
  rng = np.random.default_rng(2)
  for _ in range(200):
    dims_a, oa = random_video(rng)
    dims_b = {n: float(rng.uniform(1, 5)) for n in dims_a}
    ob = float(rng.uniform(1, 5))
    _, a = I.compare(dims_a, oa, dims_b, ob, rng=rng)
    assert a.startswith(f"The {'first' if oa > ob else 'second'} video is")


def test_compare_mirrors_when_the_slots_swap():
  """The pipeline puts the better video in either slot: swapping the two videos swaps
  'first' and 'second' in the answer and changes nothing else."""
  rng = np.random.default_rng(3)
  swap = lambda text: re.sub(r"first|second",
                             lambda m: "second" if m[0] == "first" else "first", text)
  for _ in range(200):
    dims_a, oa = random_video(rng)
    dims_b, ob = {n: float(rng.uniform(1, 5)) for n in dims_a}, float(rng.uniform(1, 5))
    seed = int(rng.integers(2**31))
    q_ab, ab = I.compare(dims_a, oa, dims_b, ob, rng=np.random.default_rng(seed))
    q_ba, ba = I.compare(dims_b, ob, dims_a, oa, rng=np.random.default_rng(seed))
    assert q_ab == q_ba and ba == swap(ab), (ab, ba)


def test_grpo_target_format_and_rounding():
  rng = np.random.default_rng(0)
  dims = {"sharpness": 2.1, "noise": 4.5}
  target = I.grpo_target(dims, 3.4166, rng=rng)
  m = re.fullmatch(r"<think>(.+)</think><answer>(\d\.\d\d)</answer>", target)
  assert m and m[2] == "3.42"
  assert I.stated_level(m[1]) == "good" == I.score_to_level(float(m[2]))
  # 1.804 is poor but prints as 1.80, which is bad: the text must say bad.
  m = re.fullmatch(r"<think>(.+)</think><answer>(.+)</answer>", I.grpo_target(dims, 1.804, rng=rng))
  assert m[2] == "1.80" and I.stated_level(m[1]) == "bad"
  assert "<think></think>" in I.GRPO_PROMPT and "<answer></answer>" in I.GRPO_PROMPT


def test_describe_and_stated_level():
  q, a = I.describe({"noise": 1.5}, 1.2, rng=np.random.default_rng(0))
  assert q.endswith((".", "?")) and I.stated_level(a) == "bad"
  assert I.stated_level("no level here") is None


def test_read_annotations_jsonl(tmp_path):
  path = tmp_path / "ann.jsonl"
  path.write_text('{"id": "v1", "text": " A cat. Warm light. Sharp. "}\n\n'
                  '{"id": 7, "text": "Blurry."}\n')
  assert I.read_annotations_jsonl(str(path)) == [("v1", "A cat. Warm light. Sharp."),
                                                 ("7", "Blurry.")]


@pytest.mark.parametrize("line,reason", [
    ('{"id": "v2", "text": ', "Expecting value"),
    ('["v2", "text"]', "expected a JSON object, got list"),
    ('{"text": "ok"}', "no string or integer id under 'id'"),
    ('{"id": "v2", "text": "  "}', "'text' must be a non-empty string"),
    ('{"id": "v2", "txt": "ok"}', "'text' must be a non-empty string"),
])
def test_read_annotations_jsonl_errors(tmp_path, line, reason):
  path = tmp_path / "ann.jsonl"
  path.write_text('{"id": "v1", "text": "fine"}\n' + line + "\n")
  with pytest.raises(ValueError, match=re.escape(f"{path}:2: ") + ".*" + re.escape(reason)):
    I.read_annotations_jsonl(str(path))
  errors = []
  assert I.read_annotations_jsonl(str(path), errors=errors) == [("v1", "fine")]
  assert len(errors) == 1 and errors[0].startswith(f"{path}:2: ")


def test_read_annotations_jsonl_bad_utf8(tmp_path):
  path = tmp_path / "ann.jsonl"
  path.write_bytes(b'{"id": "v1", "text": "\xff"}\n')
  with pytest.raises(ValueError, match=re.escape(f"{path}:1: ") + ".*utf-8"):
    I.read_annotations_jsonl(str(path))


LLAVA = [
    {"id": "v1", "video": "v1.mp4", "conversations": [
        {"from": "human", "value": "<video>\nIs the video blurry?"},
        {"from": "gpt", "value": "Yes, slightly."},
        {"from": "human", "value": "Compare <video> with the reference."},
        {"from": "gpt", "value": "It is worse."}]},
    {"image": "img/3.png", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "A cat."}]},
]


def test_read_llava_json(tmp_path):
  path = tmp_path / "llava.json"
  path.write_text(json.dumps(LLAVA))
  assert I.read_llava_json(str(path)) == [
      ("v1", "Is the video blurry?", "Yes, slightly."),
      ("v1", "Compare with the reference.", "It is worse."),
      ("img/3.png", "", "A cat.")]


@pytest.mark.parametrize("record,reason", [
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
     "no string or integer id"),
    ({"id": "x"}, "'conversations' must be a non-empty list"),
    ({"id": "x", "conversations": [{"from": "human", "value": "q"}]},
     "the last human turn (turn 0) has no gpt answer"),
    ({"id": "x", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human",
                                                                   "value": "q"}]},
     "turn 0 must be {'from': 'human'"),
    ({"id": "x", "conversations": [{"from": "human", "value": "q"},
                                   {"from": "gpt", "value": 3}]},
     "turn 1 has no string 'value'"),
    ({"id": "x", "conversations": [{"from": "human", "value": "q"},
                                   {"from": "gpt", "value": " <video> "}]},
     "turn 1: empty answer"),
    ("just a string", "expected a JSON object, got str"),
])
def test_read_llava_json_errors(tmp_path, record, reason):
  path = tmp_path / "llava.json"
  path.write_text(json.dumps(LLAVA + [record]))
  with pytest.raises(ValueError, match=re.escape(f"{path}: record [2]: {reason}")):
    I.read_llava_json(str(path))
  errors = []
  assert len(I.read_llava_json(str(path), errors=errors)) == 3
  assert len(errors) == 1 and reason in errors[0]


@pytest.mark.parametrize("content,reason", [
    ("[{]", "not valid JSON"), ('{"id": "x"}', "expected a JSON list of records, got dict")])
def test_read_llava_json_file_errors_always_raise(tmp_path, content, reason):
  path = tmp_path / "llava.json"
  path.write_text(content)
  with pytest.raises(ValueError, match=re.escape(f"{path}: {reason}")):
    I.read_llava_json(str(path), errors=[])


def test_plural_dimension_takes_are():
  dims = dict(sharpness=5.0, noise=5.0, compression=1.5, exposure=5.0, smoothness=5.0)
  text = I.chain_of_thought(dims, 2.0, rng=np.random.default_rng(0))
  assert "Compression artifacts are the weakest" in text
  dims["compression"], dims["noise"] = 5.0, 1.5
  assert "Noise is the weakest" in I.chain_of_thought(
      dims, 2.0, rng=np.random.default_rng(0))
