"""experiments/seq2seq.py and research/tasks/seq2seq.py: the encoder-decoder trained on number_words end to end."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.data import number_words
from research.models import seq2seq as seq2seq_model
from research.tasks import seq2seq

pytestmark = pytest.mark.xdist_group("seq2seq_experiment")


def test_pairs_read_both_directions_and_labels_ignore_padding():
  split = {"number": [b"412", b"7"], "words": [b"four hundred twelve", b"seven"]}
  assert seq2seq.pairs(split, "numbers_to_words") == (["412", "7"], ["four hundred twelve", "seven"])
  assert seq2seq.pairs(split, "words_to_numbers") == (["four hundred twelve", "seven"], ["412", "7"])
  with pytest.raises(ValueError, match="unknown direction"):
    seq2seq.pairs(split, "sideways")
  tok = number_words.NumberWordsTokenizer()
  batch = seq2seq.encode_pairs(tok, *seq2seq.pairs(split, "numbers_to_words"), 5, 6)
  assert batch["input_ids"].shape == (2, 5) and batch["labels"].shape == (2, 6)
  assert batch["labels"][1].tolist() == [tok.encode("seven")[0], number_words.EOS_ID] + [seq2seq_model.IGNORE] * 4
  with pytest.raises(ValueError, match="at most 3 fit"):
    seq2seq.encode_pairs(tok, ["412"], ["seven"], 3, 6)


def test_smoothed_loss_is_the_model_loss_without_smoothing_and_uniform_at_one():
  logits = jax.random.normal(jax.random.key(0), (2, 3, 7))
  labels = jnp.array([[1, 2, seq2seq_model.IGNORE], [4, seq2seq_model.IGNORE, seq2seq_model.IGNORE]])
  np.testing.assert_allclose(seq2seq.smoothed_loss(logits, labels, 0.0), seq2seq_model.target_loss(logits, labels),
                             rtol=1e-6)
  logp = jax.nn.log_softmax(logits)
  counted = np.asarray(labels) != seq2seq_model.IGNORE
  uniform = -np.asarray(logp).mean(-1)[counted].mean()
  np.testing.assert_allclose(seq2seq.smoothed_loss(logits, labels, 1.0), uniform, rtol=1e-6)


def test_scores_of_decoded_strings():
  out = seq2seq.score(["four thousand four hundred twelve", "seven"], ["four thousand four hundred twelve", "eight"])
  assert out["exact_match"] == 0.5 and 0.0 < out["bleu"] < 100.0
  same = seq2seq.score(["a b c d"], ["a b c d"])
  assert same["exact_match"] == 1.0 and same["bleu"] == pytest.approx(100.0)
  # Numbers are scored digit by digit with the tokenizer's split: one wrong digit of four is not BLEU 0.
  tokens = number_words.NumberWordsTokenizer().tokens
  assert seq2seq.score(["1234"], ["1234"], tokens)["bleu"] == pytest.approx(100.0)
  assert seq2seq.score(["12345"], ["12395"], str.split)["bleu"] == 0.0 < seq2seq.score(["12345"], ["12395"], tokens)["bleu"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  from experiments import seq2seq as experiment  # pylint: disable=import-outside-toplevel
  workdir = tmp_path_factory.mktemp("seq2seq")
  results = experiment.run(experiment.get_config("smoke"), str(workdir))
  return experiment, workdir, results


@pytest.mark.slow
def test_smoke_run_writes_scores_samples_and_attention(smoke_run):
  experiment, workdir, results = smoke_run
  on_disk = json.loads((workdir / "results.json").read_text())
  assert on_disk["step"] == 6 and np.isfinite(on_disk["train_loss"])
  assert set(experiment.metric_names(experiment.get_config("smoke"))) <= set(on_disk)  # what a sweep may plot
  for split in ("test", "test_longer"):
    for method in ("greedy", "beam"):
      em, score = on_disk[f"{split}_{method}_exact_match"], on_disk[f"{split}_{method}_bleu"]
      assert 0.0 <= em <= 1.0 and 0.0 <= score <= 100.0, (split, method, em, score)
      assert results[f"{split}_{method}_bleu"] == score
  lines = [line for line in (workdir / "samples.txt").read_text().splitlines() if line.startswith("[")]
  assert sum(line.startswith("[test] ") for line in lines) == 3
  assert sum(line.startswith("[test_longer] ") for line in lines) == 3
  assert all(" | greedy: " in line and " | beam: " in line and " | reference: " in line for line in lines)
  # The references are the words of the sources (numbers_to_words).
  first = lines[0].removeprefix("[test] ").split(" | ")
  assert first[3] == "reference: " + number_words.to_words(int(first[0]))
  assert (workdir / "attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_rerun_of_a_finished_workdir_trains_nothing_and_keeps_its_results(smoke_run):
  experiment, workdir, results = smoke_run
  again = experiment.run(experiment.get_config("smoke"), str(workdir))
  assert again == json.loads((workdir / "results.json").read_text()) == results
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3", "6"]


def test_cross_attention_maps_are_distributions_over_the_unpadded_source():
  cfg = seq2seq_model.config("t5-tiny", vocab_size=43, max_source_length=8, max_target_length=6, d_model=24,
                             d_kv=8, d_ff=40, num_heads=3, num_layers=1)
  model = seq2seq_model.Seq2Seq(cfg)
  ids = jnp.array([[5, 6, 7, 1, 0, 0, 0, 0]])
  params = nn.unbox(model.init(jax.random.key(1), ids, ids != 0, ids[:, :3]))["params"]
  decoder_ids = jnp.array([[0, 9, 10, 1]])
  maps = np.asarray(seq2seq_model.cross_attention_maps(model, params, ids, ids != 0, decoder_ids))
  assert maps.shape == (1, 1, 3, 4, 8)  # (layers, batch, heads, target, source)
  np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)
  assert np.all(maps[..., 4:] == 0.0)  # padding gets no attention


def test_bad_input_on_the_command_line_is_one_line_and_writes_nothing(tmp_path):
  from conftest import run_python  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "w"
  proc = run_python(["-m", "experiments.seq2seq", f"--workdir={workdir}", "--config=experiments/seq2seq.py:smoke",
                     "--config.num_beams=0"], timeout=300)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and "num_beams must be > 0" in lines[0], proc.stderr
  assert not workdir.exists()


@pytest.mark.parametrize("field, value, message", [
    ("tokenizer", "bpe", "unknown tokenizer 'bpe'"),
    ("max_source_length", 6, "the test_longer source '100086' has 7 tokens with eos, more than max_source_length 6"),
    ("direction", "sideways", "unknown direction"),
])
def test_bad_config_raises_before_anything_is_written(tmp_path, field, value, message):
  from experiments import seq2seq as experiment  # pylint: disable=import-outside-toplevel
  from research.train import ConfigError  # pylint: disable=import-outside-toplevel
  config = experiment.get_config("smoke")
  config[field] = value
  with pytest.raises(ConfigError, match=message):
    experiment.run(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
