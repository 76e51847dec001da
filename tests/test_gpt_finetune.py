"""GPT fine-tuning (Radford et al. 2018): input transformations, the extract-token heads, the auxiliary LM loss,
a toy fine-tuning run through the loop, bad input, and the comparison table's smoke run."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import gpt2
from research.models import gpt_classifier as gc

SPECIAL = gc.special_tokens(10)  # start 10, delimiter 11, extract 12
# An odd little GPT: 3 heads of 5, 2 layers, a vocabulary of 10 + the 3 special tokens.
CFG = gpt2.GPT2Config(vocab_size=13, n_positions=16, n_embd=15, n_layer=2, n_head=3)


def test_input_transformations_lay_out_tokens_exactly():
  assert SPECIAL == (10, 11, 12)
  assert gc.classification_input([3, 4], SPECIAL) == [10, 3, 4, 12]
  assert gc.entailment_input([3, 4], [5], SPECIAL) == [10, 3, 4, 11, 5, 12]
  assert gc.similarity_inputs([1], [2, 3], SPECIAL) == [[10, 1, 11, 2, 3, 12], [10, 2, 3, 11, 1, 12]]
  assert gc.multiple_choice_inputs([7], [[1], [2, 2]], SPECIAL) == [[10, 7, 11, 1, 12], [10, 7, 11, 2, 2, 12]]
  batch = gc.pad([[10, 3, 12], [10, 3, 4, 5, 6, 12]], 5)
  # Right padding; a sequence too long keeps its start and its extract token, last.
  np.testing.assert_array_equal(batch.input_ids, [[10, 3, 12, 0, 0], [10, 3, 4, 5, 12]])
  np.testing.assert_array_equal(batch.extract, [2, 4])
  np.testing.assert_array_equal(batch.mask, [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
  nested = gc.pad([gc.similarity_inputs([1], [2], SPECIAL)] * 3, 8)
  assert nested.input_ids.shape == (3, 2, 8) and nested.extract.shape == (3, 2)


class _Jitted:
  """A model whose `apply` is compiled once per shape: eager applies are slow."""

  def __init__(self, model):
    self.apply = jax.jit(model.apply)


def _init(kind, num_labels, ids, extract):
  model = gc.GPTClassifier(CFG, num_labels, kind)
  return _Jitted(model), nn.unbox(jax.jit(model.init)(jax.random.key(1), ids, extract))


def test_the_head_reads_the_gpt_state_at_the_extract_token():
  batch = gc.pad([gc.classification_input([1, 2, 3], SPECIAL), gc.classification_input([4, 5, 6, 7, 8], SPECIAL)], 9)
  model, variables = _init("classification", 4, batch.input_ids, batch.extract)
  logits, lm_logits = model.apply(variables, batch.input_ids, batch.extract)
  gpt_apply = jax.jit(gpt2.GPT2(CFG).apply, static_argnames="return_hidden")
  _, hidden = gpt_apply({"params": variables["params"]["transformer"]}, batch.input_ids, return_hidden=True)
  head = variables["params"]["head"]
  by_hand = np.stack([hidden[0, 4], hidden[1, 6]]) @ head["kernel"] + head["bias"]
  np.testing.assert_allclose(logits, by_hand, rtol=1e-5, atol=1e-6)
  assert lm_logits.shape == (2, 9, 13)
  # The padding after the extract token changes nothing (causal attention).
  longer = gc.pad([gc.classification_input([1, 2, 3], SPECIAL)], 14)
  np.testing.assert_allclose(model.apply(variables, longer.input_ids, longer.extract)[0][0], logits[0], atol=1e-5)


def test_similarity_is_symmetric_in_its_inputs():
  ab = gc.pad([gc.similarity_inputs([1, 2], [3, 4, 5], SPECIAL)], 8)
  ba = gc.pad([gc.similarity_inputs([3, 4, 5], [1, 2], SPECIAL)], 8)
  model, variables = _init("similarity", 3, ab.input_ids, ab.extract)
  logits_ab, logits_ba = (model.apply(variables, b.input_ids, b.extract)[0] for b in (ab, ba))
  np.testing.assert_allclose(logits_ab, logits_ba, rtol=1e-5, atol=1e-6)
  assert logits_ab.shape == (1, 3)


def test_multiple_choice_scores_follow_a_permutation_of_the_options():
  options = [[1], [2, 3], [4, 5, 6], [7]]
  order = [2, 0, 3, 1]
  batch = gc.pad([gc.multiple_choice_inputs([8, 9], options, SPECIAL),
                  gc.multiple_choice_inputs([8, 9], [options[i] for i in order], SPECIAL)], 8)
  model, variables = _init("multiple_choice", 1, batch.input_ids, batch.extract)
  scores, _ = model.apply(variables, batch.input_ids, batch.extract)
  assert scores.shape == (2, 4)
  np.testing.assert_allclose(scores[1], scores[0][np.asarray(order)], rtol=1e-5, atol=1e-6)
  assert len(set(np.round(np.asarray(scores[0]), 5))) == 4  # the options are told apart


def test_the_auxiliary_lm_loss_at_weight_zero_leaves_the_classification_gradient():
  batch = gc.pad([gc.classification_input([1, 2, 3], SPECIAL), gc.classification_input([4, 5], SPECIAL)], 7)
  labels = jnp.asarray([1, 0])
  model, variables = _init("classification", 2, batch.input_ids, batch.extract)
  model = gc.GPTClassifier(CFG, 2)

  def loss(params, weight, part):
    logits, lm_logits = model.apply({"params": params}, batch.input_ids, batch.extract)
    return gc.finetune_loss(logits, labels, lm_logits, batch.input_ids, batch.mask, weight)[part]

  grad = jax.jit(jax.grad(loss), static_argnums=2)
  task_only, at_zero, at_half = (grad(variables["params"], w, part) for w, part in ((0.0, 1), (0.0, 0), (0.5, 0)))
  # The same gradient up to float32 rounding: XLA may sum the two programs' terms in different orders, which moves
  # entries (up to 0.9 here) by about 1e-7; the LM loss at weight 0.5 moves them by up to 0.5.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), at_zero, task_only)
  # At weight 0.5 the LM loss moves the GPT (its token embedding) but not the head.
  assert not np.allclose(at_half["transformer"]["wte"]["embedding"], task_only["transformer"]["wte"]["embedding"])
  np.testing.assert_allclose(at_half["head"]["kernel"], task_only["head"]["kernel"], rtol=1e-6)


def test_pretrained_weights_go_in_with_fresh_rows_for_the_special_tokens():
  small = gpt2.GPT2Config(vocab_size=10, n_positions=16, n_embd=15, n_layer=2, n_head=3)
  pretrained = nn.unbox(jax.jit(gpt2.GPT2(small).init)(jax.random.key(7), jnp.zeros((1, 4), jnp.int32)))["params"]
  model = gc.GPTClassifier(CFG, 2)
  ids = jnp.zeros((1, 4), jnp.int32)
  fresh = jax.jit(model.init)(jax.random.key(3), ids, jnp.zeros(1, jnp.int32))
  merged = nn.unbox(gc.with_transformer(fresh, pretrained))["params"]["transformer"]
  wte = merged["wte"]["embedding"]
  np.testing.assert_array_equal(wte[:10], pretrained["wte"]["embedding"])
  np.testing.assert_array_equal(wte[10:], nn.unbox(fresh)["params"]["transformer"]["wte"][
      "embedding"][10:])
  np.testing.assert_array_equal(merged["h_1"]["mlp"]["c_fc"]["kernel"], pretrained["h_1"]["mlp"]["c_fc"]["kernel"])
  wide = gpt2.GPT2Config(vocab_size=10, n_positions=16, n_embd=18, n_layer=2, n_head=3)
  other = jax.jit(gpt2.GPT2(wide).init)(jax.random.key(7), jnp.zeros((1, 4), jnp.int32))["params"]
  named = r"pre-trained tensor \['h_0'\]\['attn'\]\['key'\]\['bias'\] has shape \(3, 6\), the classifier's \(3, 5\)"
  with pytest.raises(ValueError, match=named):
    gc.with_transformer(fresh, other)
  with pytest.raises(ValueError, match=r"no pre-trained tensor for \['h_1'\]"):
    gc.with_transformer(fresh, {k: v for k, v in pretrained.items() if k != "h_1"})


def test_bad_transformations_are_one_line():
  with pytest.raises(ValueError, match="at least one option"):
    gc.multiple_choice_inputs([1], [], SPECIAL)
  with pytest.raises(ValueError, match="length must be >= 2"):
    gc.pad([[10, 12]], 1)
  with pytest.raises(ValueError, match="unknown kind 'ranking'"):
    gc.GPTClassifier(CFG, 2, "ranking").init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32), jnp.zeros(1, jnp.int32))


def _toy(n, rng):
  """Label 0: a sequence of 3s and 4s; label 1: of 5s and 6s (lengths 2 .. 6), a trivially separable task."""
  labels = rng.integers(0, 2, n)
  rows = [gc.classification_input(list(rng.integers(3, 5, rng.integers(2, 7)) + 2 * y), SPECIAL) for y in labels]
  return {**gc.pad(rows, 8)._asdict(), "label": labels.astype(np.int32)}


def test_a_toy_fine_tuning_run_through_the_loop_beats_chance(tmp_path):
  from experiments import gpt2 as experiment  # pylint: disable=import-outside-toplevel
  from research.tasks import gpt2 as tasks  # pylint: disable=import-outside-toplevel
  from research.train import train  # pylint: disable=import-outside-toplevel
  config = experiment.get_config("smoke")
  config.mode, config.finetune.steps, config.finetune.batch_size = "finetune", 30, 16
  config.finetune.learning_rate, config.finetune.warmup_steps = 3e-3, 3
  config.log_every = config.eval_every = config.checkpoint_every = 30
  config = experiment.finetune_config(config)
  rng = np.random.default_rng(0)
  cfg = gpt2.GPT2Config(vocab_size=13, n_positions=8, n_embd=16, n_layer=1, n_head=2)
  task = tasks.make_finetune_task(config, cfg, 2)
  results = train(task, config, str(tmp_path), _toy(128, rng), _toy(64, rng)).results
  assert results["eval_examples"] == 64 and results["accuracy"] >= 0.9, results
  assert np.isfinite(results["train_loss"])


def test_bad_init_and_lm_weight_are_one_line_and_write_nothing(tmp_path):
  from conftest import run_python  # pylint: disable=import-outside-toplevel
  from experiments import gpt2 as experiment  # pylint: disable=import-outside-toplevel
  from research.train import ConfigError  # pylint: disable=import-outside-toplevel
  config = experiment.get_config("smoke")
  config.mode = "finetune"
  # A BERT pre-training workdir has tokenizer.json and hf/config.json too, but not a GPT's.
  bert_dir = tmp_path / "bert"
  (bert_dir / "hf").mkdir(parents=True)
  (bert_dir / "tokenizer.json").write_text("{}")
  (bert_dir / "hf" / "config.json").write_text(json.dumps({"model_type": "bert"}))
  (bert_dir / "hf" / "model.safetensors").write_bytes(b"")
  for init, message in ((tmp_path / "empty", "is not a pre-training workdir of experiments.gpt2"),
                        (bert_dir, "describes a 'bert' model, not gpt2")):
    config.init = str(init)
    with pytest.raises(ConfigError, match=message):
      experiment.run(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
  proc = run_python(["-m", "experiments.gpt2", f"--workdir={tmp_path / 'w'}", "--config=experiments/gpt2.py:smoke",
                     "--config.mode=finetune", "--config.lm_weight=-0.5"])
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and lines == ["error: lm_weight must be a number >= 0, got -0.5"], proc.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_the_table_smoke_run_writes_every_row(tmp_path):
  from conftest import run_python  # pylint: disable=import-outside-toplevel
  proc = run_python(["-m", "experiments.tables.gpt_finetune", f"--outdir={tmp_path}",
                     "--config=experiments/tables/gpt_finetune.py:smoke"], timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())
  assert set(results["rows"]) == {"GPT fine-tuned", "GPT from scratch", "BERT fine-tuned"}
  assert all(len(v) == 2 and all(0.0 <= a <= 1.0 for a in v) for v in results["rows"].values())
  assert np.isfinite(results["pretraining"]["gpt_val_loss"])
  markdown = (tmp_path / "gpt_finetune.md").read_text()
  assert "| GPT fine-tuned |" in markdown and "| BERT fine-tuned |" in markdown
  # The fine-tuned GPT read the pre-trained weights: its run names the pre-training workdir.
  tuned = json.loads((tmp_path / "gpt_finetuned" / "results.json").read_text())
  assert tuned["config"]["init"].endswith("gpt_pretrain") and len(tuned["members"]) == 2
