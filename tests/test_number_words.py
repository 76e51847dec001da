"""The number_words translation task: words checked against an independent writer, the splits, the
tokenizer, and the TFDS builder."""

import numpy as np
import pytest

from research import data
from research.data import number_words as nw

# Written out by hand: the words this dataset uses (American, no "and", no hyphens).
TABLE = {
    0: "zero", 1: "one", 7: "seven", 9: "nine", 10: "ten", 11: "eleven", 12: "twelve", 13: "thirteen",
    14: "fourteen", 15: "fifteen", 16: "sixteen", 17: "seventeen", 18: "eighteen", 19: "nineteen", 20: "twenty",
    21: "twenty one", 30: "thirty", 40: "forty", 58: "fifty eight", 99: "ninety nine", 100: "one hundred",
    101: "one hundred one", 110: "one hundred ten", 119: "one hundred nineteen", 412: "four hundred twelve",
    999: "nine hundred ninety nine", 1000: "one thousand", 1001: "one thousand one",
    1205: "one thousand two hundred five", 2000: "two thousand", 9999: "nine thousand nine hundred ninety nine",
    10_000: "ten thousand", 10_005: "ten thousand five", 11_000: "eleven thousand",
    21_021: "twenty one thousand twenty one", 100_000: "one hundred thousand", 100_001: "one hundred thousand one",
    110_110: "one hundred ten thousand one hundred ten", 800_080: "eight hundred thousand eighty",
    999_999: "nine hundred ninety nine thousand nine hundred ninety nine",
}


def test_words_match_a_hand_written_table():
  for number, words in TABLE.items():
    assert nw.to_words(number) == words, number
    assert nw.to_number(words) == number, words


def test_words_match_num2words_on_every_split():
  num2words = pytest.importorskip("num2words").num2words

  def american(number):  # num2words writes British English: "one hundred and five", "twenty-one", commas
    return num2words(number).replace(" and ", " ").replace(",", "").replace("-", " ")

  for split in nw.SPLITS:
    examples = nw.generate(split)
    for number, words in zip(examples["number"], examples["words"]):
      assert words == american(int(number)), number
  for number in (0, 100, 1000, 10_000, 100_000, 999_999):
    assert nw.to_words(number) == american(number)


def test_the_way_back_refuses_what_to_words_never_writes():
  assert nw.to_number("  four   hundred twelve ") == 412
  for words in ("twenty thirty", "one hundred hundred", "thousand", "one thousand thousand", "zero one",
                "twelve hundred", "four hundred and twelve", "", "one thousand thousand thousand"):
    with pytest.raises(ValueError, match="not the words of a number"):
      nw.to_number(words)
  for number in (-1, nw.LIMIT, 1.5, True):
    with pytest.raises(ValueError, match="integers 0 .. 999999"):
      nw.to_words(number)


def test_splits_are_disjoint_deterministic_and_longer_than_training():
  split = {s: nw.generate(s) for s in nw.SPLITS}
  assert {s: len(split[s]["number"]) for s in nw.SPLITS} == {"train": 9000, "test": 1000, "test_longer": 2000}
  values = {s: [int(n) for n in split[s]["number"]] for s in nw.SPLITS}
  assert sorted(values["train"] + values["test"]) == list(range(10_000))
  assert not set(values["test_longer"]) & set(values["train"] + values["test"])
  assert len(set(values["test_longer"])) == 2000
  lengths = {s: {len(n) for n in split[s]["number"]} for s in nw.SPLITS}
  assert lengths == {"train": {1, 2, 3, 4}, "test": {2, 3, 4}, "test_longer": {5, 6}}
  assert [len(n) for n in split["test_longer"]["number"]].count(6) == 1000
  assert all(str(int(n)) == n for s in nw.SPLITS for n in split[s]["number"])  # no leading zeros
  train_words = {w for text in split["train"]["words"] for w in text.split()}
  assert train_words == set(nw.WORDS)  # every word of every split is seen in training
  longest = {s: max(len(w.split()) for w in split[s]["words"]) for s in nw.SPLITS}
  assert longest["test_longer"] > longest["train"] == longest["test"]
  again = nw.generate("test_longer")
  assert all((again[k] == split["test_longer"][k]).all() for k in again)
  with pytest.raises(ValueError, match="unknown number_words split 'validation'"):
    nw.numbers("validation")


def test_tokenizer_round_trips_pads_and_names_unknown_tokens():
  tok = nw.NumberWordsTokenizer()
  assert tok.vocab_size == len(set(tok.vocabulary)) == 3 + 10 + 30
  assert tok.vocabulary[nw.PAD_ID] == "<pad>" and tok.vocabulary[nw.EOS_ID] == "</s>"
  assert tok.encode("412") == [tok.vocabulary.index(c) for c in "412"] + [nw.EOS_ID]
  assert tok.encode(b"four hundred twelve", add_eos=False) == [tok.vocabulary.index(w)
                                                                for w in ("four", "hundred", "twelve")]
  for split in nw.SPLITS:
    examples = nw.generate(split)
    for side in ("number", "words"):
      texts = list(examples[side][:300])
      ids = tok.encode_batch(texts)
      assert ids.dtype == np.int32 and ids.shape[0] == 300
      assert ((ids == nw.EOS_ID).sum(axis=1) == 1).all() and (ids[:, 0] != nw.PAD_ID).all()
      lengths = (ids != nw.PAD_ID).sum(axis=1)
      assert (ids[np.arange(300), lengths - 1] == nw.EOS_ID).all()  # then padding only
      assert tok.decode_batch(ids) == texts
  ids = tok.encode_batch(["7", "one thousand one"], length=6)
  np.testing.assert_array_equal(ids[0], [tok.vocabulary.index("7"), nw.EOS_ID, 0, 0, 0, 0])
  assert tok.decode([tok.vocabulary.index("4"), nw.EOS_ID, tok.vocabulary.index("5")]) == "4"  # stops at </s>
  assert tok.decode([0, 5, 0, 6, nw.UNK_ID, tok.vocabulary.index("two")]) == "23 <unk> two"
  with pytest.raises(ValueError, match=r"unknown token 'fourty' in 'fourty two'"):
    tok.encode("fourty two")
  with pytest.raises(ValueError, match=r"unknown token '<pad>'"):
    tok.encode("one <pad>")
  assert tok.encode("fourty two", unknown="unk") == [nw.UNK_ID, tok.vocabulary.index("two"), nw.EOS_ID]
  with pytest.raises(ValueError, match="has 4 tokens with </s>; at most 3 fit"):
    tok.encode_batch(["412"], length=3)
  with pytest.raises(ValueError, match="token id 43 is outside"):
    tok.decode([43])


def test_builder_prepares_offline_and_serves_the_splits(tmp_path):
  for split in nw.SPLITS:
    loaded = data.load("number_words", split, str(tmp_path))
    expected = nw.generate(split)
    assert set(loaded) == {"number", "words"}
    pairs = sorted(zip(loaded["number"].tolist(), loaded["words"].tolist()))
    assert pairs == sorted((n.encode(), w.encode()) for n, w in zip(expected["number"], expected["words"]))
