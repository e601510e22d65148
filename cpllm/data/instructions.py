"""Score-based instruction generation (SIG, papers/score2instruct-summary.md) and importers.

Scores live on the 1..5 scale. Five text-defined levels split [1, 5] into equal-width
intervals of 0.8 (Q-Align's rule, closed on the right, 1.0 counted as bad):

  bad [1, 1.8]   poor (1.8, 2.6]   fair (2.6, 3.4]   good (3.4, 4.2]   excellent (4.2, 5]

A video is described by per-dimension scores (`dict[str, float]`, keys from DIMENSIONS)
and an overall score. Every text below states only levels that follow from those scores:

  >>> chain_of_thought({"sharpness": 2.1, "noise": 4.5}, 3.0, rng=np.random.default_rng(0))
  'As for sharpness, the frames are noticeably blurry; this aspect is poor. Noise: excellent.
   The frames are clean, with no visible noise. Sharpness is the weakest (poor) and noise the
   strongest (excellent). Overall, the quality of the video is fair.'

Templates are picked by a numpy Generator, so a seed fixes the text.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence

import numpy as np

LEVELS = ("bad", "poor", "fair", "good", "excellent")  # worst first
LEVEL_EDGES = (1.8, 2.6, 3.4, 4.2)  # upper (inclusive) edges of bad, poor, fair, good
LEVEL_CENTRES = (1.4, 2.2, 3.0, 3.8, 4.6)  # midpoints, see level_centre

# The level-token score (cpllm.models.cpllm.level_score) reads the next-token distribution
# after this prompt; training targets are level_answer(score), e.g. " fair.".
LEVEL_PROMPT = "The quality of the video is"

GRPO_PROMPT = (
    "Rate the quality of this video on a scale from 1 (bad) to 5 (excellent). First reason "
    "about its sharpness, noise, compression artifacts, exposure and motion smoothness "
    "inside <think></think>, then give the score with two decimals inside "
    "<answer></answer>.")


@dataclasses.dataclass(frozen=True)
class Dimension:
  """One quality dimension: how it is named and what each level looks like.

  `states[i]` describes LEVELS[i] (a clause without any level word); a yes/no `question`
  asks whether the dimension's defect is present, which holds for bad, poor and fair.
  """
  topic: str
  question: str
  states: tuple[str, str, str, str, str]
  plural: bool = False  # "compression artifacts are", not "is"


# The distortions of the demo videos: blur, noise, compression, exposure, stutter/drops.
DIMENSIONS = {
    "sharpness": Dimension(
        "sharpness", "Is the video blurry?",
        ("the frames are severely blurred and fine detail is lost",
         "the frames are noticeably blurry",
         "the frames are slightly soft",
         "the frames are sharp, with only minor softness",
         "the frames are crisp and full of fine detail")),
    "noise": Dimension(
        "noise", "Is the video noisy?",
        ("heavy noise covers the frames",
         "clearly visible noise degrades the frames",
         "some faint noise is visible",
         "there is hardly any noise",
         "the frames are clean, with no visible noise")),
    "compression": Dimension(
        "compression artifacts", "Are there compression artifacts in the video?",
        ("strong blocking and smearing from compression are everywhere",
         "compression artifacts are clearly visible",
         "some compression artifacts appear in detailed areas",
         "compression artifacts are barely noticeable",
         "there are no visible compression artifacts"), plural=True),
    "exposure": Dimension(
        "exposure", "Is the video over- or underexposed?",
        ("the exposure is far off and much of the detail is washed out or crushed",
         "the exposure is clearly off, losing detail in highlights or shadows",
         "the exposure is slightly off",
         "the exposure is well balanced, with only minor clipping",
         "the exposure is accurate across highlights and shadows")),
    "smoothness": Dimension(
        "motion smoothness", "Does the video stutter?",
        ("the motion is very jerky, with frequent stutters or dropped frames",
         "the motion stutters noticeably",
         "the motion is mostly steady but has occasional stutters",
         "the motion is smooth, with only rare hitches",
         "the motion is perfectly fluid")),
}

_DIM_TEMPLATES = (
    "In terms of {topic}, the video is {level}: {state}.",
    "{State}, so the video is {level} in terms of {topic}.",
    "{Topic}: {level}. {State}.",
    "As for {topic}, {state}; this aspect is {level}.",
)
_OVERALL = "Overall, the quality of the video is {level}."
_YES = ("Yes, severely.", "Yes, noticeably.", "Yes, slightly.", "No.", "No.")
_WEAKEST_QUESTIONS = (
    "Which aspect degrades the quality of the video most: {options}?",
    "Among {options}, which aspect of the video is worst?",
)
_OPEN_QUESTIONS = (
    "Describe the quality of this video.",
    "How is the quality of this video? Explain your reasoning.",
    "Evaluate the visual quality of this video aspect by aspect.",
)
COMPARE_QUESTIONS = (
    "Which video has better quality, the first or the second? Explain why.",
    "Compare the quality of the two videos. Which one is better, and why?",
)


def score_to_level(score: float) -> str:
  """Level word of a 1..5 score: 1.8 -> 'bad', 1.81 -> 'poor', 5.0 -> 'excellent'."""
  return LEVELS[_level_index(score)]


def level_centre(level: str) -> float:
  """Centre of a level's interval: 'bad' -> 1.4, 'fair' -> 3.0, 'excellent' -> 4.6.

  Note the level-token score weighs levels with 1..5 instead (Q-Align's inference rule).
  """
  if level not in LEVELS:
    raise ValueError(f"unknown level {level!r}; expected one of {LEVELS}")
  return LEVEL_CENTRES[LEVELS.index(level)]


def level_answer(score: float) -> str:
  """Target after LEVEL_PROMPT: 3.0 -> ' fair.' (the leading space makes '▁fair')."""
  return f" {score_to_level(score)}."


def stated_level(text: str) -> str | None:
  """The last overall level stated in `text` ('... the video is fair.' -> 'fair'), or None."""
  found = re.findall(r"quality of the video is (" + "|".join(LEVELS) + r")\b", text)
  return found[-1] if found else None


def chain_of_thought(dims: Mapping[str, float], overall: float, *,
                     rng: np.random.Generator) -> str:
  """Hierarchical description: one sentence per dimension (in DIMENSIONS order), a
  sentence on the weakest and strongest aspects, then the overall sentence.

  e.g. ({"sharpness": 2.1, "smoothness": 4.5}, 3.0) with one choice of templates ->
    "The frames are noticeably blurry, so the video is poor in terms of sharpness. Motion
     smoothness: excellent. The motion is perfectly fluid. Sharpness is the weakest (poor)
     and motion smoothness the strongest (excellent). Overall, the quality of the video is
     fair."
  """
  levels = _dim_levels(dims)
  overall_level = score_to_level(overall)
  sentences = []
  for name, i in levels.items():
    template = _DIM_TEMPLATES[rng.integers(len(_DIM_TEMPLATES))]
    topic, state = DIMENSIONS[name].topic, DIMENSIONS[name].states[i]
    sentences.append(template.format(topic=topic, Topic=_cap(topic), state=state,
                                     State=_cap(state), level=LEVELS[i]))
  if len(levels) > 1:
    sentences.append(_summary(levels))
  sentences.append(_OVERALL.format(level=overall_level))
  return " ".join(sentences)


def yes_no(dims: Mapping[str, float], *, rng: np.random.Generator) -> tuple[str, str]:
  """(question, answer) on whether one dimension's defect is present (picked by `rng`).

  Yes for bad/poor/fair, No for good/excellent: ({"sharpness": 2.0}) ->
  ("Is the video blurry?", "Yes, noticeably. The frames are noticeably blurry.")
  """
  levels = _dim_levels(dims)
  if not levels:
    raise ValueError("yes_no needs at least one dimension score; got none")
  names = list(levels)
  name = names[rng.integers(len(names))]
  dim, i = DIMENSIONS[name], levels[name]
  return dim.question, f"{_YES[i]} {_cap(dim.states[i])}."


def weakest_dimension(dims: Mapping[str, float], *,
                      rng: np.random.Generator) -> tuple[str, str]:
  """(question, answer) asking which dimension is worst, i.e. has the lowest score.

  Ties name every tied dimension. When even the weakest is good or excellent the answer
  says no aspect degrades the video much.
  """
  levels = _dim_levels(dims)
  if len(levels) < 2:
    raise ValueError(f"weakest_dimension needs at least two dimensions; got {list(dims)}")
  topics = [DIMENSIONS[n].topic for n in levels]
  question = _WEAKEST_QUESTIONS[rng.integers(len(_WEAKEST_QUESTIONS))].format(
      options=_join(topics, "or"))
  low = min(dims[n] for n in levels)
  weakest = [n for n in levels if dims[n] == low]
  i = levels[weakest[0]]
  names = _join([DIMENSIONS[n].topic for n in weakest], "and")
  if i >= LEVELS.index("good"):
    return question, (f"No aspect degrades it much; {names} {_is_are(weakest)} the weakest, "
                      f"still {LEVELS[i]}.")
  states = "; ".join(DIMENSIONS[n].states[i] for n in weakest)
  return question, f"{_cap(names)} ({LEVELS[i]}): {states}."


def describe(dims: Mapping[str, float], overall: float, *,
             rng: np.random.Generator) -> tuple[str, str]:
  """(open question, chain-of-thought answer)."""
  question = _OPEN_QUESTIONS[rng.integers(len(_OPEN_QUESTIONS))]
  return question, chain_of_thought(dims, overall, rng=rng)


def compare(dims_a: Mapping[str, float], overall_a: float, dims_b: Mapping[str, float],
            overall_b: float, *, rng: np.random.Generator) -> tuple[str, str]:
  """(question, answer) comparing video A (first) with video B (second).

  The better video is the one with the higher overall score; the reasons are the
  dimensions whose levels differ. e.g. A = ({"noise": 4.5}, 4.0), B = ({"noise": 2.0}, 2.2)
  -> "The first video is better. Its overall quality is good, while the second video's is
  poor. The first video is better in noise (excellent vs poor)."
  """
  if set(dims_a) != set(dims_b):
    raise ValueError(f"compare needs the same dimensions for both videos; got "
                     f"{sorted(dims_a)} and {sorted(dims_b)}")
  levels_a, levels_b = _dim_levels(dims_a), _dim_levels(dims_b)
  la, lb = score_to_level(overall_a), score_to_level(overall_b)
  question = COMPARE_QUESTIONS[rng.integers(len(COMPARE_QUESTIONS))]
  if overall_a == overall_b:
    return question, f"Both videos have the same quality: both are {la} overall."
  first_better = overall_a > overall_b
  better, worse = ("first", "second") if first_better else ("second", "first")
  hi, lo = (levels_a, levels_b) if first_better else (levels_b, levels_a)
  if la == lb:
    sentences = [f"The {better} video is slightly better; both are {la} overall."]
  else:
    sentences = [f"The {better} video is better.",
                 f"Its overall quality is {score_to_level(max(overall_a, overall_b))}, while "
                 f"the {worse} video's is {score_to_level(min(overall_a, overall_b))}."]
  pros = [f"{DIMENSIONS[n].topic} ({LEVELS[hi[n]]} vs {LEVELS[lo[n]]})"
          for n in hi if hi[n] > lo[n]]
  cons = [f"{DIMENSIONS[n].topic} ({LEVELS[lo[n]]} vs {LEVELS[hi[n]]})"
          for n in hi if hi[n] < lo[n]]
  if pros:
    sentences.append(f"The {better} video is better in {_join(pros, 'and')}.")
  if cons:
    sentences.append(f"The {worse} video is better in {_join(cons, 'and')}, "
                     "but its overall quality is still lower.")
  if not pros and not cons:
    sentences.append("Their individual aspects are at the same levels.")
  return question, " ".join(sentences)


def grpo_target(dims: Mapping[str, float], overall: float, *,
                rng: np.random.Generator) -> str:
  """Reference response for GRPO_PROMPT: '<think>{chain of thought}</think><answer>3.42</answer>'.

  The score is rounded to two decimals before its level is named, so the stated level
  always matches the number in <answer> (1.804 -> '1.80' -> bad, not poor).
  """
  overall = round(float(overall), 2)
  return (f"<think>{chain_of_thought(dims, overall, rng=rng)}</think>"
          f"<answer>{overall:.2f}</answer>")


def read_annotations_jsonl(path: str, errors: list[str] | None = None
                           ) -> list[tuple[str, str]]:
  """(id, text) pairs from lines {"id": ..., "text": ...}; blank lines are skipped.

  Malformed lines: with `errors=None` the first one raises ValueError('path:line: reason');
  with a list, 'path:line: reason' strings are appended to it and those lines skipped.
  """
  out = []
  with open(path, "rb") as f:  # decoded per line, so bad UTF-8 is reported with its line
    for line_no, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      where = f"{path}:{line_no}"
      try:
        record = json.loads(raw.decode("utf-8"))
        if not isinstance(record, dict):
          raise ValueError(f"expected a JSON object, got {type(record).__name__}")
        out.append((_record_id(record, ("id",)), _text(record, "text")))
      except ValueError as e:  # includes JSON and UTF-8 decoding errors
        _fail(errors, f"{where}: {e}")
  return out


def read_llava_json(path: str, errors: list[str] | None = None
                    ) -> list[tuple[str, str, str]]:
  """(id, prompt, answer) triples from LLaVA-style conversation JSON.

  The file holds [{"id" (or "video" / "image"): ..., "conversations": [{"from": "human",
  "value": "<video>\\nIs it sharp?"}, {"from": "gpt", "value": "No."}, ...]}, ...]; each
  human turn followed by a gpt turn gives one triple (earlier turns are not carried into
  later prompts). <image>/<video> placeholders are removed from the text, e.g.
  ("v1", "Is it sharp?", "No."). Malformed records follow read_annotations_jsonl's rule,
  named 'path: record [i]' with i the index in the list; a file that is not a JSON list
  always raises.
  """
  with open(path, encoding="utf-8") as f:
    try:
      records = json.load(f)
    except ValueError as e:
      raise ValueError(f"{path}: not valid JSON: {e}") from e
  if not isinstance(records, list):
    raise ValueError(f"{path}: expected a JSON list of records, got "
                     f"{type(records).__name__}")
  out = []
  for i, record in enumerate(records):
    try:
      if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
      out.extend(_llava_turns(record))
    except ValueError as e:
      _fail(errors, f"{path}: record [{i}]: {e}")
  return out


def _level_index(score: float) -> int:
  score = float(score)
  if not 1.0 <= score <= 5.0:  # also rejects NaN
    raise ValueError(f"score {score} is outside the 1..5 scale")
  return int(np.searchsorted(LEVEL_EDGES, score, side="left"))


def _dim_levels(dims: Mapping[str, float]) -> dict[str, int]:
  """Level indices of the dimensions present, in DIMENSIONS order."""
  unknown = set(dims) - set(DIMENSIONS)
  if unknown:
    raise ValueError(f"unknown quality dimensions {sorted(unknown)}; "
                     f"expected some of {list(DIMENSIONS)}")
  levels = {}
  for name in DIMENSIONS:
    if name in dims:
      try:
        levels[name] = _level_index(dims[name])
      except ValueError as e:
        raise ValueError(f"dimension {name!r}: {e}") from e
  return levels


def _summary(levels: dict[str, int]) -> str:
  low, high = min(levels.values()), max(levels.values())
  if low == high:
    return f"All {len(levels)} aspects are {LEVELS[low]}."
  weakest = [n for n in levels if levels[n] == low]
  strongest = [DIMENSIONS[n].topic for n in levels if levels[n] == high]
  return (f"{_cap(_join([DIMENSIONS[n].topic for n in weakest], 'and'))} "
          f"{_is_are(weakest)} the weakest ({LEVELS[low]}) and {_join(strongest, 'and')} "
          f"the strongest ({LEVELS[high]}).")


def _is_are(names: Sequence[str]) -> str:
  """The verb for a list of dimension names: 'noise is', 'compression artifacts are'."""
  return "are" if len(names) > 1 or DIMENSIONS[names[0]].plural else "is"


def _llava_turns(record: dict) -> list[tuple[str, str, str]]:
  video_id = _record_id(record, ("id", "video", "image"))
  turns = record.get("conversations")
  if not isinstance(turns, list) or not turns:
    raise ValueError("'conversations' must be a non-empty list")
  if len(turns) % 2:
    raise ValueError(f"the last human turn (turn {len(turns) - 1}) has no gpt answer")
  out = []
  for j in range(0, len(turns), 2):
    values = []
    for k, speaker in ((j, "human"), (j + 1, "gpt")):
      turn = turns[k]
      if not isinstance(turn, dict) or turn.get("from") != speaker:
        raise ValueError(f"turn {k} must be {{'from': '{speaker}', 'value': ...}}; "
                         f"got {str(turn)[:80]}")
      if not isinstance(turn.get("value"), str):
        raise ValueError(f"turn {k} has no string 'value'")
      values.append(re.sub(r"\s*<(?:image|video)>\s*", " ", turn["value"]).strip())
    if not values[1]:
      raise ValueError(f"turn {j + 1}: empty answer")
    out.append((video_id, values[0], values[1]))
  return out


def _record_id(record: dict, keys: Sequence[str]) -> str:
  for key in keys:
    if isinstance(record.get(key), (str, int)) and not isinstance(record[key], bool):
      return str(record[key])
  raise ValueError(f"no string or integer id under {' / '.join(map(repr, keys))}")


def _text(record: dict, key: str) -> str:
  value = record.get(key)
  if not isinstance(value, str) or not value.strip():
    raise ValueError(f"{key!r} must be a non-empty string; got {str(value)[:80]!r}")
  return value.strip()


def _fail(errors: list[str] | None, message: str):
  if errors is None:
    raise ValueError(message)
  errors.append(message)


def _join(items: Sequence[str], word: str) -> str:
  """['a'] -> 'a'; ['a', 'b', 'c'] -> 'a, b and c' (with word='and')."""
  return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {word} {items[-1]}"


def _cap(text: str) -> str:
  return text[:1].upper() + text[1:]
