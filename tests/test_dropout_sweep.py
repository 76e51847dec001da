"""Traced dropout rates: the layer against flax's, rate 0 free of random bits, and GPT-2 / BERT
sweeps over dropout whose members equal their single runs."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_declared_metrics
from experiments import bert as bert_experiment
from experiments import gpt2 as gpt2_experiment
from research.models import layers
from research.train import Members


def _single(experiment, config, workdir, **fields):
  config = config.copy_and_resolve_references()
  for name, value in fields.items():
    config[name] = value
  return experiment.run(config, str(workdir))


class _Twice(nn.Module):
  """Two dropouts in a row, named as nn.Dropout would name them, so their keys agree."""

  ours: bool

  @nn.compact
  def __call__(self, x, rate=None):
    if self.ours:
      return layers.Dropout(0.3)(layers.Dropout(0.3)(x, True, rate=rate), True, rate=rate)
    return nn.Dropout(0.3, deterministic=False)(nn.Dropout(0.3, deterministic=False)(x))


def test_dropout_equals_flax_and_a_traced_rate_equals_the_python_one():
  x = jax.random.normal(jax.random.key(0), (4, 64))
  rngs = {"dropout": jax.random.key(1)}
  theirs = _Twice(False).apply({}, x, rngs=rngs)
  np.testing.assert_array_equal(_Twice(True).apply({}, x, rngs=rngs), theirs)  # the same bits
  traced = jax.jit(lambda r: _Twice(True).apply({}, x, r, rngs=rngs))(jnp.float32(0.3))
  np.testing.assert_allclose(traced, theirs, rtol=1e-6)
  assert 0.3 < float(jnp.mean(theirs == 0)) < 0.7  # about 1 - 0.7^2 of the entries are dropped
  # Evaluation and a Python 0 are the identity, without a key.
  np.testing.assert_array_equal(layers.Dropout(0.3).apply({}, x, False), x)
  np.testing.assert_array_equal(layers.Dropout(0.3).apply({}, x, True, rate=0.0), x)


def test_a_traced_rate_of_zero_draws_no_random_bits_outside_a_cond():
  x, key = jnp.ones((8, 8)), jax.random.key(0)
  jaxpr = jax.make_jaxpr(lambda r: layers.dropout(x, r, key))(jnp.float32(0.0))
  names = [e.primitive.name for e in jaxpr.eqns]
  assert "cond" in names and not any("random" in n or "threefry" in n for n in names), names
  np.testing.assert_array_equal(jax.jit(lambda r: layers.dropout(x, r, key))(jnp.float32(0.0)), x)
  # One rate per member (a sweep): the member at 0 is untouched, the other dropped.
  out = jax.vmap(lambda r, k: layers.dropout(x, r, k))(jnp.asarray([0.0, 0.5]), jax.random.split(key))
  np.testing.assert_array_equal(out[0], x)
  assert set(np.unique(out[1]).tolist()) == {0.0, 2.0}


def test_gpt2_dropout_sweep_members_equal_their_single_runs(tmp_path):
  config = gpt2_experiment.get_config("smoke")
  config.steps = 4
  members = Members(seeds=(0, 0), hparams={"dropout": (0.0, 0.1)})
  swept = gpt2_experiment.run(config, str(tmp_path / "sweep"), members=members)["members"]
  single = _single(gpt2_experiment, config, tmp_path / "one", dropout=0.1)
  np.testing.assert_allclose(swept[1]["train_loss"], single["train_loss"], rtol=1e-5)
  np.testing.assert_allclose(swept[1]["val_loss"], single["val_loss"], rtol=1e-5)
  assert swept[0]["train_loss"] != pytest.approx(swept[1]["train_loss"], rel=1e-4)  # dropout acted


def test_bert_dropout_sweep_member_equals_the_single_run(tmp_path):
  config = bert_experiment.get_config("smoke")
  config.steps = 4
  config.attention = "reference"  # attention dropout is traced where the reference attention trains
  members = Members(seeds=(0, 0), hparams={"dropout": (0.1, 0.0), "attention_dropout": (0.1, 0.3)})
  swept = bert_experiment.run(config, str(tmp_path / "sweep"), members=members)["members"]
  assert_declared_metrics(bert_experiment, config, swept)
  single = _single(bert_experiment, config, tmp_path / "one", dropout=0.1, attention_dropout=0.1)
  np.testing.assert_allclose(swept[0]["train_loss"], single["train_loss"], rtol=1e-5)
  np.testing.assert_allclose(swept[0]["mlm_accuracy"], single["mlm_accuracy"], rtol=1e-5)
  assert swept[0]["train_loss"] != swept[1]["train_loss"]  # the rates acted
  # Each member's model is exported for fine-tuning.
  for i in range(2):
    assert (tmp_path / "sweep" / f"member_{i}" / "hf" / "config.json").exists()
