"""BLEU equals sacreBLEU's on random and hand-made corpora; exact match of decoded sequences."""

import random

import jax.numpy as jnp
import numpy as np
import pytest

from research.metrics import bleu, exact_match

# Words and marks that exercise every 13a rule: symbols, periods and commas beside digits or not,
# dashes after digits, SGML entities, apostrophes, hyphenated line ends, non-ASCII text.
PIECES = ("the", "cat", "sat", "on", "mat", "a", "dog", "The", "CAT", "ran", "is", "of", "to", "and", "in", "it",
          "3.14", "1,000", "1990-2000", "e-mail", "it's", "U.S.", "end.", "yes,", "(see)", "[1]", "{x}", "a/b",
          "$5", "50%", "&amp;", "&quot;hi&quot;", "&lt;b&gt;", "<skipped>", "co-\nop", "line\nbreak", "x:y",
          "what?!", "don't", "naïve", "café", "日本", "—", "«quote»", "~", "`tick`", "@home", "#tag", "a\tb", "2.",
          ".5", ",3", "5-", "-5", "3 - 4")


def random_text(rng: random.Random, max_words: int) -> str:
  return " ".join(rng.choice(PIECES) for _ in range(rng.randint(0, max_words)))


def noisy_copy(rng: random.Random, text: str) -> str:
  """A hypothesis that shares some n-grams with its reference: words dropped, swapped and replaced."""
  words = text.split(" ")
  out = [w if rng.random() > 0.3 else rng.choice(PIECES) for w in words if rng.random() > 0.15]
  if len(out) > 2 and rng.random() < 0.5:
    i = rng.randrange(len(out) - 1)
    out[i], out[i + 1] = out[i + 1], out[i]
  return " ".join(out)


def sacrebleu_corpus(sacrebleu, hypotheses, references, **kwargs):
  """sacreBLEU on per-segment reference lists: streams padded with None where a segment has fewer."""
  refs = [[r] if isinstance(r, str) else list(r) for r in references]
  streams = [[r[k] if k < len(r) else None for r in refs] for k in range(max(len(r) for r in refs))]
  return sacrebleu.corpus_bleu(hypotheses, streams, **kwargs).score


def test_tokenizer_is_13a():
  sacrebleu = pytest.importorskip("sacrebleu")
  tokenizer = sacrebleu.BLEU().tokenizer
  rng = random.Random(0)
  for text in list(PIECES) + [random_text(rng, 12) for _ in range(300)]:
    assert bleu.tokenize_13a(text) == tokenizer(text), text
  assert bleu.tokenize_13a("It costs $3.50, (approx.) 1990-2000 &amp; more.") == \
      "It costs $ 3.50 , ( approx . ) 1990 - 2000 & more ."


def test_corpus_bleu_equals_sacrebleu_on_random_corpora():
  sacrebleu = pytest.importorskip("sacrebleu")
  rng = random.Random(1)
  for trial in range(60):
    size = rng.randint(1, 12)
    references = []
    for _ in range(size):
      refs = [random_text(rng, 15) for _ in range(rng.randint(1, 3))] if trial % 2 else random_text(rng, 15)
      references.append(refs)
    hypotheses = []
    for refs in references:
      first = refs if isinstance(refs, str) else refs[0]
      kind = rng.random()
      hypotheses.append("" if kind < 0.1 else random_text(rng, 3) if kind < 0.25 else noisy_copy(rng, first))
    for kwargs in ({}, {"smooth_method": "none"}, {"smooth_method": "floor"}, {"smooth_method": "add-k"},
                   {"smooth_method": "floor", "smooth_value": 0.3}, {"lowercase": True}, {"tokenize": "none"}):
      ours = {"smooth_method": "smooth", "smooth_value": "smooth_value"}
      mine = {ours.get(k, k): v for k, v in kwargs.items()}
      expected = sacrebleu_corpus(sacrebleu, hypotheses, references, **kwargs)
      assert bleu.corpus_bleu(hypotheses, references, **mine) == pytest.approx(expected, abs=1e-9, rel=0), \
          (trial, kwargs)
    for hypothesis, refs in zip(hypotheses, references):
      refs = [refs] if isinstance(refs, str) else refs
      expected = sacrebleu.sentence_bleu(hypothesis, refs).score
      assert bleu.sentence_bleu(hypothesis, refs) == pytest.approx(expected, abs=1e-9, rel=0), (hypothesis, refs)


# (hypotheses, references), each made to reach one branch of the definition.
HAND_MADE = {
    "identical": (["the cat sat on the mat .", "a dog ran"], ["the cat sat on the mat .", "a dog ran"]),
    "empty hypotheses": (["", ""], ["the cat sat", "a dog"]),
    "one empty hypothesis": (["", "the cat sat on the mat"], ["a b c", "the cat sat on a mat"]),
    "empty reference": (["the cat"], [""]),
    "both empty": ([""], [""]),
    "shorter than 4 words": (["the cat", "a"], ["the cat sat", "a dog"]),
    "no 3- and 4-gram matches": (["the cat the dog the mat"], ["the cat on a dog by the mat"]),
    "longer than the reference": (["the the the cat sat on the mat mat mat"], ["the cat sat on the mat"]),
    "clipped repeats": (["the the the the the the the"], ["the cat is on the mat"]),
    "closest reference, shorter on a tie": (["one two three four five"],
                                            [["one two three", "one two three four five six seven"]]),
    "several references": (["the cat is on the mat", "there is a cat"],
                           [["the cat sat on the mat", "there is a cat on the mat"], ["a cat is there", "cat"]]),
    "punctuation and numbers": (["It costs $3.50, (approx.) 1990-2000 &amp; more."],
                                ["It costs $ 3.50 (approx) 1990 - 2000 & more!"]),
    "no match at all": (["x y z"], ["a b c"]),
}


@pytest.mark.parametrize("name", list(HAND_MADE))
def test_corpus_and_sentence_bleu_equal_sacrebleu_on_hand_made_corpora(name):
  sacrebleu = pytest.importorskip("sacrebleu")
  hypotheses, references = HAND_MADE[name]
  expected = sacrebleu_corpus(sacrebleu, hypotheses, references)
  assert bleu.corpus_bleu(hypotheses, references) == pytest.approx(expected, abs=1e-9, rel=0)
  for hypothesis, refs in zip(hypotheses, references):
    refs = [refs] if isinstance(refs, str) else refs
    assert bleu.sentence_bleu(hypothesis, refs) == pytest.approx(sacrebleu.sentence_bleu(hypothesis, refs).score,
                                                                 abs=1e-9, rel=0)


def test_known_values_without_sacrebleu():
  assert bleu.corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
  assert bleu.corpus_bleu(["", ""], ["a b", "c"]) == 0.0
  # 5 words against 6: matches 5/5, 4/4, 3/3, 2/2; brevity penalty exp(1 - 6/5).
  assert bleu.corpus_bleu(["the cat sat on the"], ["the cat sat on the mat"]) == pytest.approx(100 * np.exp(-0.2))
  # Unigrams 2/2, no bigram of 1: exp smoothing gives the bigrams 1 / (2 * 1); no 3- or 4-grams: 0.
  assert bleu.corpus_bleu(["cat the"], ["the cat"]) == 0.0
  assert bleu.sentence_bleu("cat the", "the cat") == pytest.approx(100 * np.sqrt(1.0 * 0.5))
  assert bleu.statistics("the the cat", ["the cat", "the the dog"]) == [3, 3, 3, 2, 0, 0, 3, 2, 1, 0]
  assert bleu.corpus_bleu([b"a b c d"], [[b"a b c d"]]) == pytest.approx(100.0)


def test_bad_input_is_one_line_error():
  cases = [
      (lambda: bleu.corpus_bleu(["a"], ["a", "b"]), "1 hypotheses but 2 references"),
      (lambda: bleu.corpus_bleu([], []), "empty corpus"),
      (lambda: bleu.corpus_bleu(["a"], [[]]), "no reference for the hypothesis 'a'"),
      (lambda: bleu.corpus_bleu([None], ["a"]), "BLEU scores text"),
      (lambda: bleu.corpus_bleu(["a"], ["a"], tokenize="intl"), "unknown BLEU tokenizer 'intl'"),
      (lambda: bleu.corpus_bleu(["a"], ["a"], smooth="add-one"), "unknown BLEU smoothing 'add-one'"),
      (lambda: bleu.corpus_bleu(["a"], ["a"], max_order=0), "max_order must be a positive integer"),
  ]
  for call, message in cases:
    with pytest.raises(ValueError, match=message) as error:
      call()
    assert "\n" not in str(error.value)


def test_exact_match_of_strings_and_token_ids():
  assert exact_match.exact_match(["412", "four hundred twelve ", "one"], ["412", "four  hundred twelve", "two"]) \
      == pytest.approx(2 / 3)
  assert exact_match.exact_match([b"12"], ["12"]) == 1.0
  with pytest.raises(ValueError, match="2 predictions but 1 targets"):
    exact_match.exact_match(["a", "b"], ["a"])
  with pytest.raises(ValueError, match="no sequences"):
    exact_match.exact_match([], [])
  eos, pad = 1, 0
  targets = jnp.asarray([[5, 6, eos, pad, pad],
                         [5, 6, eos, pad, pad],
                         [5, 6, eos, pad, pad],
                         [5, 6, 7, 8, 9],  # no </s>: every position counts
                         [eos, pad, pad, pad, pad]])
  predictions = jnp.asarray([[5, 6, eos, 9, 9],  # anything after </s> is ignored
                             [5, 6, 7, eos, pad],  # too long
                             [5, eos, pad, pad, pad],  # too short
                             [5, 6, 7, 8, 9],
                             [eos, 3, 3, 3, 3]])
  np.testing.assert_array_equal(exact_match.sequence_matches(predictions, targets, eos_id=eos),
                                [True, False, False, True, True])
  assert float(exact_match.sequence_accuracy(predictions, targets, eos_id=eos)) == pytest.approx(0.6)
  with pytest.raises(ValueError, match=r"predictions \(5, 4\) and targets \(5, 5\) differ in shape"):
    exact_match.sequence_matches(predictions[:, :4], targets)
