"""BERT experiment: smoke runs of pre-training and fine-tuning (from our run and from transformers), data, bad input."""

import json

import numpy as np
import pytest

from research.data import encoder as encoder_data

# One worker runs this file: its module fixture is costly (see conftest.py).
pytestmark = pytest.mark.xdist_group("bert_pretrained")

SPECIAL = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}


def test_frame_single_segments_and_pairs():
  out = encoder_data.frame([[10, 11, 12], [13] * 9], 6, SPECIAL)
  np.testing.assert_array_equal(out["input_ids"], [[2, 10, 11, 12, 3, 0], [2, 13, 13, 13, 13, 3]])
  np.testing.assert_array_equal(out["attention_mask"], [[1, 1, 1, 1, 1, 0], [1] * 6])
  assert not out["token_type_ids"].any()
  # Pairs: longest-first truncation, the second segment (and its [SEP]) of type 1.
  out = encoder_data.frame([[10, 11, 12, 13, 14]], 8, SPECIAL, second=[[20, 21]])
  np.testing.assert_array_equal(out["input_ids"], [[2, 10, 11, 12, 3, 20, 21, 3]])
  np.testing.assert_array_equal(out["token_type_ids"], [[0, 0, 0, 0, 0, 1, 1, 1]])
  with pytest.raises(ValueError, match="seq_len 2 leaves no room"):
    encoder_data.frame([[1]], 2, SPECIAL)


def test_encoder_windows_stop_at_the_end_of_a_document():
  stream = np.asarray([10, 11, 12, 3, 20, 21, 22, 23, 24, 3], np.uint16)  # two documents, each ending in [SEP]
  windows = encoder_data.EncoderWindows(stream, 6, SPECIAL)
  assert len(windows) == 7
  out = windows.__getitems__([0, 1, 4])
  np.testing.assert_array_equal(out["input_ids"], [[2, 10, 11, 12, 3, 0], [2, 11, 12, 3, 0, 0],
                                                   [2, 20, 21, 22, 23, 3]])
  np.testing.assert_array_equal(out["attention_mask"].sum(1), [5, 4, 6])
  assert out["input_ids"].dtype == np.int32


def test_topics_builder_is_deterministic_with_every_class_in_both_splits():
  from research import data  # pylint: disable=import-outside-toplevel
  from research.data import builders  # pylint: disable=import-outside-toplevel
  train, test = data.load("python_docs_topics", "train"), data.load("python_docs_topics", "test")
  classes = len(builders.TOPIC_GROUPS)
  assert set(train["label"]) == set(test["label"]) == set(range(classes))
  total = len(train["label"]) + len(test["label"])
  assert len(test["label"]) == -(-total // builders.TOPICS_TEST_EVERY)
  texts = set(train["text"]) | set(test["text"])
  assert len(texts) == total  # every paragraph once: none is in both splits
  assert all(len(t.split()) >= builders.MIN_PARAGRAPH_WORDS for t in train["text"][:50])


def test_wordpiece_tokenizer_round_trip_and_vocab_file(tmp_path):
  from research.data import tokenizers  # pylint: disable=import-outside-toplevel
  text = "The assert statement inserts debugging assertions into a program.\n" * 30
  tok = tokenizers.make("wordpiece", [text], vocab_size=120)
  assert tok.special_ids() == SPECIAL  # the special tokens first, in BERT's order
  ids = tok.encode("The assert statement")
  assert SPECIAL["[CLS]"] not in ids and tok.decode(ids) == "The assert statement"
  assert tok.encode_batch(["The assert", "statement"]) == [tok.encode("The assert"), tok.encode("statement")]
  tokenizers.save(str(tmp_path / "t.json"), tok)
  assert tokenizers.load(str(tmp_path / "t.json")).encode(text) == tok.encode(text)
  tok.save_vocab(str(tmp_path / "vocab"))
  assert tokenizers.make(f"bert:{tmp_path / 'vocab'}").encode(text) == tok.encode(text)
  with pytest.raises(ValueError, match="vocab.txt is missing"):
    tokenizers.make(f"bert:{tmp_path}")


@pytest.fixture(scope="session")  # session: kept when xdist interleaves other modules
def pretrained(tmp_path_factory):
  from experiments import bert as experiment  # pylint: disable=import-outside-toplevel
  workdir = tmp_path_factory.mktemp("pretrain")
  return experiment.run(experiment.get_config("smoke"), str(workdir)), workdir


def test_pretrain_smoke_run_writes_mlm_accuracy_and_a_transformers_model(pretrained):
  results, workdir = pretrained
  assert results["step"] == 10 and 0.0 <= results["mlm_accuracy"] <= 1.0 and results["mlm_predictions"] > 0
  assert results["mlm_loss"] < np.log(512) + 0.5  # near or below the uniform guess over the vocabulary
  for name in ("config.json", "model.safetensors", "vocab.txt"):
    assert (workdir / "hf" / name).exists()
  transformers = pytest.importorskip("transformers")
  model = transformers.BertForMaskedLM.from_pretrained(str(workdir / "hf"))
  assert model.config.hidden_size == 32 and model.config.vocab_size == 512


def test_finetune_from_our_pretraining_and_from_a_transformers_directory(pretrained, tmp_path):
  from experiments import bert as experiment  # pylint: disable=import-outside-toplevel
  _, workdir = pretrained
  config = experiment.get_config("smoke")
  config.mode, config.init = "finetune", str(workdir)
  results = experiment.run(config, str(tmp_path / "ours"))
  assert results["step"] == 10 and results["eval_examples"] > 100 and 0.0 <= results["accuracy"] <= 1.0
  assert results["config"]["steps"] == config.finetune.steps
  # The exported directory is a transformers one: fine-tuning reads it the same way.
  config.init = str(workdir / "hf")
  again = experiment.run(config, str(tmp_path / "hf"))
  assert again["accuracy"] == results["accuracy"]


@pytest.mark.parametrize("flag,message", [
    ("--config.mode=distill", "unknown mode 'distill'; choose one of: pretrain, finetune"),
    ("--config.mask_mix=80/10/20", "mask_mix: a masking mix is MASK/same/random percentages summing to 100"),
    ("--config.seq_len=64", "seq_len 64 exceeds max_position_embeddings 32"),
    ("--config.hidden_size=33", "hidden_size 33 is not divisible by num_attention_heads 2"),
    ("--config.mode=finetune --config.init=/nonexistent/bert", "--config.init /nonexistent/bert is neither"),
    ("--config.attention=flash --config.attention_dropout=0.1", "attention_dropout 0.1 needs attention=reference"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, flag, message):
  from conftest import run_python  # pylint: disable=import-outside-toplevel
  proc = run_python(["-m", "experiments.bert", f"--workdir={tmp_path / 'w'}", "--config=experiments/bert.py:smoke",
                     *flag.split()])
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), proc.stderr
  assert not (tmp_path / "w").exists()


def test_finetune_from_another_architecture_is_one_line(tmp_path):
  from conftest import run_python  # pylint: disable=import-outside-toplevel
  (tmp_path / "gpt2").mkdir()
  (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 8}))
  proc = run_python(["-m", "experiments.bert", f"--workdir={tmp_path / 'w'}", "--config=experiments/bert.py:smoke",
                     "--config.mode=finetune", f"--config.init={tmp_path / 'gpt2'}"])
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and "describes a 'gpt2' model, not bert" in lines[0], proc.stderr
  assert not (tmp_path / "w").exists()
