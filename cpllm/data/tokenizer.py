"""SentencePiece tokenizer and big_vision-style prefix-LM text encoding.

Real runs load Gemma's tokenizer.model; the demo trains a small model with the same
conventions (pad 0, eos 1, bos 2, unk 3, no dummy prefix, no whitespace folding, digits
split, byte fallback), so a level word after LEVEL_PROMPT is the piece '▁fair' in both.

Text layout of one example (L = length):

  text       [bos] prompt... | target... [eos] | pad...
  input_mask  1     1...     |  1...      1    |  0...
  mask_ar     0     0...     |  1...      1    |  1...   (padding as in big_vision)
  mask_loss   0     0...     |  1...      1    |  0...
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from etils import epath
import numpy as np
import sentencepiece as spm

from cpllm.data import instructions

# Pieces that must never be split: the GRPO tags, every digit (scores are read back from
# text) and the level words as they follow LEVEL_PROMPT.
SPECIAL_PIECES = (("<think>", "</think>", "<answer>", "</answer>")
                  + tuple("0123456789")
                  + tuple("\u2581" + w for w in instructions.LEVELS))


class Tokenizer:
  """A sentencepiece model read from `path` (local or any epath-supported URL).

  >>> tok = Tokenizer("tokenizer.model")
  >>> tok.decode(tok.encode("The quality of the video is fair."))
  'The quality of the video is fair.'
  """

  def __init__(self, path: str):
    self.path = str(path)
    self._sp = spm.SentencePieceProcessor(model_proto=epath.Path(path).read_bytes())
    for name in ("bos", "eos", "pad"):
      if getattr(self._sp, f"{name}_id")() < 0:
        raise ValueError(f"tokenizer {self.path} has no {name} piece")

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def pad_id(self) -> int:
    return self._sp.pad_id()

  @property
  def vocab_size(self) -> int:
    return self._sp.vocab_size()

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without bos/eos."""
    return self._sp.encode(text)

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`; bos, eos and pad decode to nothing."""
    return self._sp.decode([int(i) for i in ids])

  def pieces(self, ids: Iterable[int]) -> list[str]:
    """Piece strings of `ids`, e.g. [..., '▁fair', '.'] (for error messages and debugging)."""
    return [self._sp.id_to_piece(int(i)) for i in ids]

  def level_token_ids(self) -> tuple[int, ...]:
    """Ids of the level words as they follow LEVEL_PROMPT, best first.

    The order is cpllm.models.cpllm.LEVELS (excellent, good, fair, poor, bad), the one
    level_score weighs with 5..1 -- the reverse of instructions.LEVELS.
    """
    prompt = self.encode(instructions.LEVEL_PROMPT)
    ids = []
    for word in reversed(instructions.LEVELS):
      full = self.encode(instructions.LEVEL_PROMPT + " " + word)
      if full[:len(prompt)] != prompt or len(full) != len(prompt) + 1:
        raise ValueError(f"tokenizer {self.path}: level word {word!r} is not a single token "
                         f"after {instructions.LEVEL_PROMPT!r}; its pieces are "
                         f"{self.pieces(full[len(prompt):])}")
      ids.append(full[-1])
    return tuple(ids)


def train_sentencepiece(texts: Iterable[str], model_prefix: str, vocab_size: int) -> str:
  """Trains a Gemma-convention tokenizer on `texts`; returns the path of the .model file.

  Deterministic for the same texts (single thread, every sentence used). SPECIAL_PIECES
  are single pieces and byte fallback encodes any other text. `vocab_size` is exact and
  counts the 4 special ids, 256 byte pieces and SPECIAL_PIECES, so it must exceed ~280
  plus what the text supports (sentencepiece names the maximum when it is too large).
  BPE, as Gemma's.
  """
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(model_prefix),
        vocab_size=vocab_size, model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        user_defined_symbols=list(SPECIAL_PIECES),
        byte_fallback=True, split_digits=True, character_coverage=1.0,
        add_dummy_prefix=False, remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        num_threads=1, input_sentence_size=0, minloglevel=2)
  except RuntimeError as e:
    raise ValueError(f"training a {vocab_size}-piece tokenizer at {model_prefix}: {e}") from e
  return f"{model_prefix}.model"


def encode_example(tokenizer: Tokenizer, prompt: str, target: str, length: int
                   ) -> tuple[dict[str, np.ndarray], bool]:
  """One training example: ([bos] prompt) as prefix, (target [eos]) as suffix, padded.

  Returns (example, truncated): text int32[L], input_mask bool[L], mask_ar int32[L],
  mask_loss int32[L]; `truncated` is True when the suffix was cut to fit (then its eos is
  gone too, so the model is not taught to stop there). The prompt is never cut: a prompt
  that leaves no room for a target token raises ValueError.

  e.g. with bos=2, eos=1, pad=0, prompt -> [7, 8], target -> [9], length 7:
    text      [2 7 8 9 1 0 0]
    input_mask[1 1 1 1 1 0 0]
    mask_ar   [0 0 0 1 1 1 1]
    mask_loss [0 0 0 1 1 0 0]
  """
  prefix = [tokenizer.bos_id] + tokenizer.encode(prompt)
  suffix = tokenizer.encode(target) + [tokenizer.eos_id]
  if len(prefix) >= length:
    raise ValueError(f"prompt of {len(prefix)} tokens (with bos) leaves no room for a target "
                     f"in length {length}: {prompt[:80]!r}")
  room = length - len(prefix)
  truncated = len(suffix) > room
  return _layout(tokenizer, prefix, suffix[:room], length), truncated


def encode_prompts(tokenizer: Tokenizer, prompts: Sequence[str], length: int
                   ) -> dict[str, np.ndarray]:
  """Evaluation batch of prompts only ([bos] prompt, padded), for decoding or level scoring.

  Returns text int32[B, L], input_mask bool[B, L], mask_ar int32[B, L] (0 on the prompt,
  1 on padding), mask_loss int32[B, L] (zeros). A prompt longer than L raises ValueError.
  """
  if not prompts:
    raise ValueError("encode_prompts needs at least one prompt")
  rows = []
  for i, prompt in enumerate(prompts):
    prefix = [tokenizer.bos_id] + tokenizer.encode(prompt)
    if len(prefix) > length:
      raise ValueError(f"prompt [{i}] has {len(prefix)} tokens (with bos), more than length "
                       f"{length}: {prompt[:80]!r}")
    rows.append(_layout(tokenizer, prefix, [], length))
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _layout(tokenizer: Tokenizer, prefix: list[int], suffix: list[int], length: int):
  n_pre, n_real = len(prefix), len(prefix) + len(suffix)
  pos = np.arange(length)
  text = np.full(length, tokenizer.pad_id, np.int32)
  text[:n_real] = prefix + suffix
  return dict(text=text, input_mask=pos < n_real, mask_ar=(pos >= n_pre).astype(np.int32),
              mask_loss=((pos >= n_pre) & (pos < n_real)).astype(np.int32))
