"""Tokenizer trained on SIG text: special pieces, level tokens, prefix-LM masks, truncation."""

import numpy as np
import pytest
import sentencepiece as spm

from cpllm.data import instructions as I
from cpllm.data import tokenizer as T

VOCAB = 400


def sig_corpus(n=300, seed=0):
  rng = np.random.default_rng(seed)
  texts = []
  for _ in range(n):
    dims = {name: float(rng.uniform(1, 5)) for name in I.DIMENSIONS}
    overall = float(rng.uniform(1, 5))
    texts += [I.chain_of_thought(dims, overall, rng=rng),
              I.LEVEL_PROMPT + I.level_answer(overall),
              " ".join(I.yes_no(dims, rng=rng)),
              I.grpo_target(dims, overall, rng=rng)]
  return texts


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  path = T.train_sentencepiece(sig_corpus(), str(tmp_path_factory.mktemp("spm") / "sig"), VOCAB)
  return T.Tokenizer(path)


def test_ids_and_vocab(tok):
  assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.vocab_size) == (0, 1, 2, VOCAB)


def test_training_is_deterministic(tmp_path, tok):
  again = T.Tokenizer(T.train_sentencepiece(sig_corpus(), str(tmp_path / "again"), VOCAB))
  ids = range(VOCAB)
  assert again.pieces(ids) == tok.pieces(ids)


@pytest.mark.parametrize("text", [
    "The quality of the video is fair.",
    "<think>Noise: poor.</think><answer>2.05</answer>",
    "Ünïcode, tabs\tand\nnewlines  with  double spaces, emoji 🎞️ and ZEBRA!",
    " leading and trailing space ",
])
def test_round_trip(tok, text):
  assert tok.decode(tok.encode(text)) == text


def test_special_pieces_are_single_tokens(tok):
  for piece in T.SPECIAL_PIECES:
    text = piece.replace("\u2581", " ")
    assert tok.pieces(tok.encode(text)) == [piece], piece
  assert tok.pieces(tok.encode("3.42")) == ["3", ".", "4", "2"]


def test_level_token_ids(tok):
  from cpllm.models import cpllm  # the order level_score weighs with
  ids = tok.level_token_ids()
  assert [tok.decode([i]) for i in ids] == [" " + w for w in cpllm.LEVELS]
  assert tuple(cpllm.LEVELS) == tuple(reversed(I.LEVELS))
  for i, word in zip(ids, cpllm.LEVELS):  # what training on level_answer teaches
    prompt = tok.encode(I.LEVEL_PROMPT)
    assert tok.encode(I.level_answer(I.level_centre(word)))[0] == i
    assert tok.encode(I.LEVEL_PROMPT + " " + word)[len(prompt)] == i


def test_level_word_split_raises(tmp_path):
  prefix = str(tmp_path / "plain")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(["the quality of the video is bad or good"] * 50),
      model_prefix=prefix, vocab_size=300, model_type="bpe", pad_id=0, eos_id=1, bos_id=2,
      unk_id=3, byte_fallback=True, minloglevel=2)
  with pytest.raises(ValueError, match=r"level word 'excellent' is not a single token"):
    T.Tokenizer(prefix + ".model").level_token_ids()


def test_missing_pad_raises(tmp_path):
  prefix = str(tmp_path / "nopad")
  spm.SentencePieceTrainer.train(sentence_iterator=iter(["a video"] * 20),
                                 model_prefix=prefix, vocab_size=10, minloglevel=2)
  with pytest.raises(ValueError, match=r"nopad.model has no pad piece"):
    T.Tokenizer(prefix + ".model")


def test_vocab_too_large_raises(tmp_path):
  with pytest.raises(ValueError, match=r"training a 5000-piece tokenizer"):
    T.train_sentencepiece(["a tiny text"], str(tmp_path / "big"), 5000)


class FakeTokenizer:
  """Words -> ids 7, 8, 9, ... so expected arrays can be written by hand."""
  bos_id, eos_id, pad_id = 2, 1, 0

  def encode(self, text):
    return [7 + int(w[1:]) for w in text.split()]  # "w0 w1" -> [7, 8]


def test_encode_example_layout():
  ex, truncated = T.encode_example(FakeTokenizer(), "w0 w1", "w2", 7)
  assert not truncated
  np.testing.assert_array_equal(ex["text"], [2, 7, 8, 9, 1, 0, 0])
  np.testing.assert_array_equal(ex["input_mask"], [1, 1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(ex["mask_ar"], [0, 0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(ex["mask_loss"], [0, 0, 0, 1, 1, 0, 0])
  assert {k: v.dtype for k, v in ex.items()} == dict(
      text=np.int32, input_mask=bool, mask_ar=np.int32, mask_loss=np.int32)


def test_encode_example_truncates_target_only():
  ex, truncated = T.encode_example(FakeTokenizer(), "w0 w1", "w2 w3 w4", 5)
  assert truncated  # eos and w4 did not fit
  np.testing.assert_array_equal(ex["text"], [2, 7, 8, 9, 10])
  np.testing.assert_array_equal(ex["mask_ar"], [0, 0, 0, 1, 1])
  np.testing.assert_array_equal(ex["mask_loss"], [0, 0, 0, 1, 1])
  ex, truncated = T.encode_example(FakeTokenizer(), "w0 w1", "w2", 5)  # exact fit
  assert not truncated and ex["text"].tolist() == [2, 7, 8, 9, 1]
  with pytest.raises(ValueError, match="prompt of 3 tokens .* no room for a target in length 3"):
    T.encode_example(FakeTokenizer(), "w0 w1", "w2", 3)


def test_encode_example_real_tokenizer(tok):
  prompt, target = I.LEVEL_PROMPT, I.level_answer(3.3)
  ex, truncated = T.encode_example(tok, prompt, target, 32)
  assert not truncated
  text = ex["text"][ex["input_mask"]]
  assert text[0] == tok.bos_id and text[-1] == tok.eos_id
  assert tok.decode(text[ex["mask_ar"][ex["input_mask"]] == 0]) == prompt
  assert tok.decode(ex["text"][ex["mask_loss"] == 1]) == target
  # The first target token is the level token, read right after the prompt.
  assert ex["text"][ex["mask_loss"] == 1][0] == tok.level_token_ids()[2]


def test_encode_prompts():
  batch = T.encode_prompts(FakeTokenizer(), ["w0 w1", "w5", ""], 4)
  np.testing.assert_array_equal(batch["text"], [[2, 7, 8, 0], [2, 12, 0, 0], [2, 0, 0, 0]])
  np.testing.assert_array_equal(batch["input_mask"], [[1, 1, 1, 0], [1, 1, 0, 0],
                                                      [1, 0, 0, 0]])
  np.testing.assert_array_equal(batch["mask_ar"], [[0, 0, 0, 1], [0, 0, 1, 1], [0, 1, 1, 1]])
  assert not batch["mask_loss"].any()
  with pytest.raises(ValueError, match=r"prompt \[1\] has 5 tokens"):
    T.encode_prompts(FakeTokenizer(), ["w0", "w0 w1 w2 w3"], 4)
