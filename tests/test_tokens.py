"""Token streams of TFDS text datasets (research/data/tokens.py) and the GPT-2 experiment on them."""

import json
import os

import numpy as np
import pytest

import fake_catalog  # registers small local stand-ins for catalog datasets
from conftest import run_python
from experiments import gpt2 as experiment
from research import data
from research.data import tokenizers, tokens
from research.models import gpt2

TEXT_SET = fake_catalog.LocalCatalogText.name


def _expected(tokenizer, texts, separator):
  return np.concatenate([np.asarray(tokenizer.encode(t) + separator, np.int64) for t in texts])


def test_stream_is_every_text_then_the_separator_in_order(tmp_path):
  texts = tokens.read_texts(TEXT_SET, "train", directory=str(tmp_path))
  # Every document once, in the order TFDS stored them (its shuffle by key).
  assert sorted(int(t.split(":")[0].split()[1]) for t in texts) == list(range(40))
  # Chunked reading gives the same texts in the same order.
  assert [t for chunk in tokens.iter_texts(TEXT_SET, "train", directory=str(tmp_path), chunk=3) for t in chunk] == texts
  tokenizer = tokenizers.make("char", texts)
  separator = tokenizer.encode("\n\n")
  stream = tokens.token_stream(TEXT_SET, "train", tokenizer, separator, directory=str(tmp_path))
  assert stream.dtype == np.uint16
  np.testing.assert_array_equal(np.asarray(stream, np.int64), _expected(tokenizer, texts, separator))
  # A budget keeps a prefix of the same stream.
  short = tokens.token_stream(TEXT_SET, "train", tokenizer, separator, max_tokens=777, directory=str(tmp_path))
  np.testing.assert_array_equal(short, stream[:777])


def test_bpe_stream_matches_per_text_encoding(tmp_path):
  texts = tokens.read_texts(TEXT_SET, "validation", directory=str(tmp_path))
  bpe = tokenizers.make("bpe", texts, 300)
  stream = tokens.token_stream(TEXT_SET, "validation", bpe, [0], directory=str(tmp_path))
  np.testing.assert_array_equal(np.asarray(stream, np.int64), _expected(bpe, texts, [0]))


def test_stream_is_cached_and_keyed_by_the_tokenizer(tmp_path, monkeypatch):
  texts = tokens.read_texts(TEXT_SET, "train", directory=str(tmp_path))
  char = tokenizers.make("char", texts)
  first = tokens.token_stream(TEXT_SET, "train", char, [1], directory=str(tmp_path))
  path = tokens.stream_path(TEXT_SET, "train", char, [1], directory=str(tmp_path))
  assert os.path.exists(path) and not os.path.exists(path + ".tmp")

  def no_reading(*args, **kwargs):
    raise AssertionError("a cached stream was tokenized again")

  monkeypatch.setattr(tokens, "iter_texts", no_reading)
  np.testing.assert_array_equal(tokens.token_stream(TEXT_SET, "train", char, [1], directory=str(tmp_path)), first)
  # Another tokenizer (here: another alphabet) or separator is another stream, never the cached one.
  other = tokenizers.make("char", texts[:1])
  assert tokens.stream_path(TEXT_SET, "train", other, [1], directory=str(tmp_path)) != path
  assert tokens.stream_path(TEXT_SET, "train", char, [2], directory=str(tmp_path)) != path


def test_python_docs_stream_equals_the_documents_concatenated():
  train = data.load("python_docs", "train")
  texts = [t.decode() for t in train["text"]]
  tokenizer = tokenizers.make("char", texts)
  separator = tokenizer.encode("\n\n")
  stream = tokens.token_stream("python_docs", "train", tokenizer, separator)
  np.testing.assert_array_equal(np.asarray(stream, np.int64), _expected(tokenizer, texts, separator))


def test_missing_text_feature_is_named(tmp_path):
  with pytest.raises(ValueError, match="has no text feature 'text' \\(features: image, label\\)"):
    tokens.read_texts(fake_catalog.LocalCatalogSet.name, "train", directory=str(tmp_path))


def test_gpt2_experiment_trains_on_a_catalog_text_dataset(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  config = experiment.get_config("smoke")
  config.dataset, config.eval_split = TEXT_SET, "validation"
  config.vocab_multiple = 16
  results = experiment.run(config, str(tmp_path / "run"))
  assert np.isfinite(results["val_loss"]) and results["val_tokens"] > 0
  saved = tokenizers.load(str(tmp_path / "run" / "tokenizer.json"))
  # The model's vocabulary is the tokenizer's rounded up to the multiple.
  assert saved.vocab_size % 16 and results["config"]["vocab_multiple"] == 16
  assert os.listdir(tmp_path / "tfds" / "token_streams" / TEXT_SET)


def test_124m_preset_is_gpt2_small_with_nanogpt_batch():
  config = experiment.get_config("124m")
  cfg = gpt2.model_config(config, 50304)  # 50,257 GPT-2 ids rounded up to a multiple of 64
  assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_positions) == (12, 768, 12, 1024)
  # 124,439,808 parameters with GPT-2's 50,257 rows; 47 more rows of 768 after padding.
  assert gpt2.count_params(cfg) == 124_439_808 + 47 * 768
  assert config.batch_size * config.seq_len == 491_520 and config.batch_size % config.grad_accum == 0
  assert -(-50257 // config.vocab_multiple) * config.vocab_multiple == 50304


def test_124m_without_gpt2_tokenizer_files_is_one_line_exit_2(tmp_path):
  proc = run_python(["-m", "experiments.gpt2", f"--workdir={tmp_path / 'w'}", "--config=experiments/gpt2.py:124m",
                     f"--config.tokenizer=gpt2:{tmp_path / 'nowhere'}"])
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  assert "no GPT-2 tokenizer in" in lines[0] and "vocab.json is missing" in lines[0]
  assert not (tmp_path / "w").exists()


def test_gpt2_tokenizer_files_separate_documents_with_end_of_text(tmp_path):
  texts = tokens.read_texts("python_docs", "train")[:10]
  bpe = tokenizers.make("bpe", texts, 400)
  bpe.tokenizer.save_model(str(tmp_path))  # vocab.json + merges.txt, as GPT-2's files are laid out
  files = tokenizers.make(f"gpt2:{tmp_path}")
  assert files.kind == "gpt2"
  end_of_text = json.loads((tmp_path / "vocab.json").read_text())["<|endoftext|>"]
  assert experiment._separator(files) == [end_of_text]  # pylint: disable=protected-access
  assert experiment._separator(bpe) == bpe.encode("\n\n")  # pylint: disable=protected-access


_FIT_WORDPIECE = """
import json
from research import data
from research.data import tokenizers
texts = [str(t) for t in data.load("python_docs", "train")["text"]]
print(json.dumps(tokenizers.WordPieceTokenizer.train(texts, 2048).tokenizer.get_vocab(), sort_keys=True))
"""


def test_wordpiece_training_gives_the_same_vocabulary_in_every_process():
  vocabularies = []
  for hash_seed in ("1", "2"):  # separate processes: Python's hash seed and those of Rust's hash maps differ
    proc = run_python(["-c", _FIT_WORDPIECE], env={"PYTHONHASHSEED": hash_seed}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    vocabularies.append(json.loads(proc.stdout.strip().splitlines()[-1]))
  assert vocabularies[0] == vocabularies[1]
  assert len(vocabularies[0]) == 2048
  assert [vocabularies[0][t] for t in tokenizers.WordPieceTokenizer.SPECIAL] == [0, 1, 2, 3, 4]


def test_wordpiece_merges_the_most_frequent_pair_and_breaks_ties_in_string_order():
  # Characters, then continuing characters, in text order; then ("a", "##b") (4 times) and ("c", "##d") (3).
  assert tokenizers.fit_wordpiece({"cd": 3, "ab": 3, "abab": 1}, 100) == ["a", "b", "c", "d", "##b", "##a", "##d",
                                                                          "ab", "cd"]
  # A tie goes to the pair first in string order.
  assert tokenizers.fit_wordpiece({"cd": 3, "ab": 3}, 7) == ["a", "b", "c", "d", "##b", "##d", "ab"]
  assert tokenizers.fit_wordpiece({"cd": 3, "ab": 3}, 100, min_frequency=4) == ["a", "b", "c", "d", "##b", "##d"]


def test_wordpiece_tokenizer_numbers_the_special_tokens_first_and_encodes_with_its_pieces():
  from tokenizers import BertWordPieceTokenizer  # pylint: disable=import-outside-toplevel
  texts = [str(t) for t in data.load("python_docs", "train")["text"][:1500]]
  tok = tokenizers.WordPieceTokenizer.train(texts, 400)
  vocab = tok.tokenizer.get_vocab()
  assert len(vocab) == 400 and [vocab[t] for t in tokenizers.WordPieceTokenizer.SPECIAL] == [0, 1, 2, 3, 4]
  assert tok.decode(tok.encode("The assert statement")) == "The assert statement"
  assert all(tok.tokenizer.id_to_token(i) in vocab for i in tok.encode(texts[0]))
  # Mostly the `tokenizers` trainer's pieces: they differ where its ties fell otherwise.
  trained = BertWordPieceTokenizer(lowercase=False)
  trained.train_from_iterator(texts, vocab_size=400, min_frequency=2,
                              special_tokens=list(tokenizers.WordPieceTokenizer.SPECIAL), show_progress=False)
  assert len(set(trained.get_vocab()) & set(vocab)) > 0.8 * len(vocab)
