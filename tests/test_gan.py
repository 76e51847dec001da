"""GAN family: contract tests, closed forms, mode coverage, packing, and experiment smoke runs."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import parse_gan_config
from experiments import gan as gan_experiment
from research import data as data_lib
from research import optim
from research.data import toy2d
from research.metrics import modes
from research.models import gan
from research.tasks import gan as gan_tasks
from research.train import ConfigError, init_state, make_train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smoke_config(loss: str, dataset: str = "ring8", **overrides):
  config = gan_experiment.get_config(f"{loss},smoke")
  config.dataset = dataset
  for name, value in overrides.items():
    config[name] = value
  return config


def _fake_batch(config, rows: int, seed: int = 0):
  """A raw batch as the loop hands it: points from the mixture, or random uint8 images."""
  rng = np.random.default_rng(seed)
  if gan.is_image_dataset(config.dataset):
    return {"image": rng.integers(0, 256, (rows,) + gan.IMAGE_SHAPE, dtype=np.uint8),
            "label": rng.integers(0, 10, rows)}
  return toy2d.generate(config.dataset, rows, seed)


def _initial_state(config, task, seed: int = 0):
  batch = _fake_batch(config, config.batch_size * task.batches_per_step, seed)
  return init_state(task, jax.random.key(seed), batch, config.ema_decay), batch


# ---------------------------------------------------------------------------------------
# Contracts: shapes, finite loss, determinism under a key, for every loss and both pairs.


@pytest.mark.parametrize("loss,dataset,pack", [("gan", "ring8", 1), ("wgan", "ring8", 1),
                                               ("wgan_gp", "grid25", 2), ("gan", "digits", 2)])
def test_train_step_contract(loss, dataset, pack):
  config = _smoke_config(loss, dataset, pack=pack, conditional=False)  # packing excludes the conditional pair
  task = gan_tasks.make_task(config)
  assert task.batches_per_step == config.n_critic
  state, batch = _initial_state(config, task)
  step = jax.jit(make_train_step(task, config.ema_decay))
  key = jax.random.key(1)
  new_state, metrics = step(state, batch, key)
  again, metrics_again = step(state, batch, key)
  _, metrics_other = step(state, batch, jax.random.key(2))

  assert set(new_state.params) == {"gen", "disc"} == set(new_state.opt_state)
  assert jax.tree.map(jnp.shape, new_state.params) == jax.tree.map(jnp.shape, state.params)
  assert int(new_state.step) == 1
  for name in ("loss", "gen_loss", "disc_loss", "grad_norm", "gen/grad_norm", "disc/update_norm"):
    assert np.isfinite(float(metrics[name])), name
  if loss == "wgan_gp":
    # The critic's objective is the Wasserstein estimate's negative plus the penalty, term by term.
    np.testing.assert_allclose(float(metrics["disc_loss"]),
                               float(metrics["d_fake"] - metrics["d_real"] + metrics["gradient_penalty"]), rtol=1e-5)
  if loss == "wgan":
    # Weight clipping: the initialisation lies outside [-c, c]; after a step every critic
    # parameter is inside, some on the boundary, and the generator is untouched by it.
    leaves = lambda tree: [np.asarray(p) for p in jax.tree.leaves(tree)]
    assert max(np.max(np.abs(p)) for p in leaves(state.params["disc"])) > config.clip
    assert max(np.max(np.abs(p)) for p in leaves(new_state.params["disc"])) == pytest.approx(config.clip)
    assert max(np.max(np.abs(p)) for p in leaves(new_state.params["gen"])) > config.clip
  # Deterministic under a key; another key draws other latents.
  jax.tree.map(np.testing.assert_array_equal, new_state.params, again.params)
  assert float(metrics["loss"]) == float(metrics_again["loss"])
  assert float(metrics["gen_loss"]) != float(metrics_other["gen_loss"])

  # The generator's samples have the data's shape (images in [-1, 1]).
  models = gan.make_models(config)
  samples = gan.generate(models.gen, new_state.params["gen"], key, 4, config.latent_dim)
  if dataset == "digits":
    assert samples.shape == (4,) + gan.IMAGE_SHAPE and float(jnp.max(jnp.abs(samples))) <= 1.0
  else:
    assert samples.shape == (4, 2)


def _settings(config) -> dict:
  """The LOSS_SETTINGS fields of `config` as {dotted name: value}."""
  flat = {"n_critic": config.n_critic}
  flat.update({f"optimizer.{k}": config.optimizer[k] for k in ("name", "learning_rate", "b1", "b2", "schedule")})
  return {k: flat[k] for k in gan_experiment.LOSS_SETTINGS["gan"]}


def test_loss_settings():
  assert all(set(v) == set(gan_experiment.LOSS_SETTINGS["gan"]) for v in gan_experiment.LOSS_SETTINGS.values())
  wgan = gan_experiment.LOSS_SETTINGS["wgan"]  # Arjovsky et al.
  assert (wgan["n_critic"], wgan["optimizer.name"], wgan["optimizer.learning_rate"]) == (5, "rmsprop", 5e-5)
  # Gulrajani et al.'s toy settings with the learning rate and schedule of the experiment's docstring.
  assert gan_experiment.LOSS_SETTINGS["wgan_gp"] == {
      "n_critic": 5, "optimizer.name": "adam", "optimizer.learning_rate": 2e-3, "optimizer.b1": 0.5,
      "optimizer.b2": 0.9, "optimizer.schedule": "warmup_cosine"}
  assert gan_experiment.get_config().gp_weight == 0.1
  with pytest.raises(ValueError, match="unknown preset"):
    gan_experiment.get_config("wgan_gpp")


@pytest.mark.parametrize("loss", gan.LOSSES)
def test_settings_follow_the_loss(loss):
  preset = gan_experiment.get_config(loss)
  changed = gan_experiment.get_config()
  changed.loss = loss
  assert _settings(preset) == _settings(changed) == gan_experiment.LOSS_SETTINGS[loss]
  # And back: a config switched to another loss and back again is the default one.
  changed.loss = "wgan" if loss != "wgan" else "gan"
  changed.loss = "gan"
  assert _settings(changed) == gan_experiment.LOSS_SETTINGS["gan"]


_parse = parse_gan_config


def test_command_line_overrides_survive_the_loss():
  wgan_gp = gan_experiment.LOSS_SETTINGS["wgan_gp"]
  assert _settings(_parse("--config.loss=wgan_gp")) == wgan_gp
  # An explicit field keeps its value whichever side of --config.loss it stands on; the rest follow.
  for args in (("--config.loss=wgan_gp", "--config.optimizer.learning_rate=3e-4"),
               ("--config.optimizer.learning_rate=3e-4", "--config.loss=wgan_gp")):
    assert _settings(_parse(*args)) == {**wgan_gp, "optimizer.learning_rate": 3e-4}
  # Even when the explicit value is another loss's default.
  assert _parse("--config.loss=wgan_gp", "--config.n_critic=1").n_critic == 1
  # A preset's loss is a default like any other: --config.loss replaces it and its settings.
  assert _settings(_parse(f"--config={os.path.join(REPO, 'experiments', 'gan.py')}:wgan_gp", "--config.loss=gan")) \
      == gan_experiment.LOSS_SETTINGS["gan"]
  # Of these fields the mode table's preset sets the schedule only (to the cosine WGAN-GP uses anyway).
  table = gan_experiment.get_config("wgan_gp,mode_table")
  assert _settings(table) == wgan_gp


# ---------------------------------------------------------------------------------------
# Closed forms.


@pytest.mark.parametrize("shape", [(2,), (8, 8, 2)])
def test_gradient_penalty_of_linear_critic(shape):
  """D(x) = w.x + b has gradient w everywhere, so the penalty is lambda * (||w|| - 1)^2."""
  k_w, k_real, k_fake, k_eps = jax.random.split(jax.random.key(0), 4)
  w = jax.random.normal(k_w, shape)
  critic = lambda x: jnp.sum(x * w, axis=tuple(range(1, x.ndim))) + 0.3
  real = jax.random.normal(k_real, (16,) + shape)
  fake = jax.random.normal(k_fake, (16,) + shape)
  penalty = gan.gradient_penalty(critic, real, fake, k_eps, 10.0)
  expected = 10.0 * (float(jnp.linalg.norm(w.ravel())) - 1.0) ** 2
  np.testing.assert_allclose(float(penalty), expected, rtol=1e-5)
  # A unit-norm linear critic is not penalised.
  unit = lambda x: jnp.sum(x * w / jnp.linalg.norm(w.ravel()), axis=tuple(range(1, x.ndim)))
  assert float(gan.gradient_penalty(unit, real, fake, k_eps, 10.0)) < 1e-8


def test_gradient_penalty_is_taken_at_interpolates():
  """For D(x) = ||x||^2 / 2 the gradient at x_hat is x_hat itself, so the penalty depends on eps."""
  critic = lambda x: 0.5 * jnp.sum(jnp.square(x), -1)
  real, fake = jnp.full((64, 2), 2.0), jnp.zeros((64, 2))
  key = jax.random.key(3)
  eps = jax.random.uniform(key, (64, 1))
  norms = jnp.linalg.norm(eps * real, axis=-1)
  expected = 10.0 * jnp.mean(jnp.square(norms - 1.0))
  np.testing.assert_allclose(float(gan.gradient_penalty(critic, real, fake, key, 10.0)), float(expected), rtol=1e-5)


def test_train_step_penalty_scales_with_its_weight():
  """With one critic update the penalty is taken at the initial critic, so it is linear in lambda."""
  penalties, losses = {}, {}
  for weight in (0.0, 0.1, 0.3):
    config = _smoke_config("wgan_gp", n_critic=1, gp_weight=weight)
    task = gan_tasks.make_task(config)
    state, batch = _initial_state(config, task)
    metrics = jax.jit(make_train_step(task, config.ema_decay))(state, batch, jax.random.key(1))[1]
    penalties[weight] = float(metrics["gradient_penalty"])
    losses[weight] = float(metrics["disc_loss"] - metrics["d_fake"] + metrics["d_real"])
  assert penalties[0.0] == 0.0 and penalties[0.1] > 1e-6
  np.testing.assert_allclose(penalties[0.3], 3.0 * penalties[0.1], rtol=1e-5)
  np.testing.assert_allclose([losses[0.1], losses[0.3]], [penalties[0.1], penalties[0.3]], rtol=1e-4)


def test_non_saturating_losses_match_their_definitions():
  d_real, d_fake = jnp.array([0.5, -1.0, 2.0]), jnp.array([-0.3, 1.5, 0.0])
  sig = jax.nn.sigmoid
  expected_d = -jnp.mean(jnp.log(sig(d_real))) - jnp.mean(jnp.log(1.0 - sig(d_fake)))
  np.testing.assert_allclose(float(gan.discriminator_loss("gan", d_real, d_fake)), float(expected_d), rtol=1e-6)
  np.testing.assert_allclose(float(gan.generator_loss("gan", d_fake)), float(-jnp.mean(jnp.log(sig(d_fake)))),
                             rtol=1e-6)
  np.testing.assert_allclose(float(gan.discriminator_loss("wgan", d_real, d_fake)),
                             float(jnp.mean(d_fake) - jnp.mean(d_real)), rtol=1e-6)
  np.testing.assert_allclose(float(gan.generator_loss("wgan_gp", d_fake)), float(-jnp.mean(d_fake)), rtol=1e-6)


def test_discriminator_loss_falls_with_frozen_generator():
  config = _smoke_config("gan", steps=100, gen_width=32, disc_width=32)
  config.optimizer.learning_rate = 1e-2
  task = gan_tasks.make_task(config)
  state, batch = _initial_state(config, task)
  # A zero learning rate for the generator group freezes it.
  state = state.replace(opt_state={**state.opt_state,
                                   "gen": optim.with_hyperparams(state.opt_state["gen"], {"learning_rate": 0.0})})
  step = jax.jit(make_train_step(task, config.ema_decay))
  losses, gen_before = [], state.params["gen"]
  for i in range(40):
    state, metrics = step(state, batch, jax.random.key(i % 2))
    losses.append(float(metrics["disc_loss"]))
  jax.tree.map(np.testing.assert_array_equal, state.params["gen"], gen_before)
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


# ---------------------------------------------------------------------------------------
# Mode coverage (PacGAN's definition) and packing.


def test_mode_coverage_on_hand_made_samples():
  centres, std = toy2d.MIXTURES["ring8"]
  exact = modes.mode_coverage(jnp.asarray(centres), jnp.asarray(centres), std)
  assert int(exact.modes_captured) == 8 and float(exact.high_quality_fraction) == 1.0
  far = modes.mode_coverage(jnp.full((10, 2), 5.0), jnp.asarray(centres), std)
  assert int(far.modes_captured) == 0 and float(far.high_quality_fraction) == 0.0
  # Three modes hit just inside 3 std, one just outside, plus one point in the centre.
  offset = np.array([1.0, 0.0])
  points = np.stack([centres[0] + 2.9 * std * offset, centres[1] + 2.9 * std * offset,
                     centres[1] - 2.9 * std * offset, centres[2] + 3.1 * std * offset, np.zeros(2)])
  mixed = modes.mode_coverage(jnp.asarray(points), jnp.asarray(centres), std)
  assert int(mixed.modes_captured) == 2
  np.testing.assert_allclose(float(mixed.high_quality_fraction), 3 / 5)
  np.testing.assert_array_equal(np.asarray(mixed.counts), [1, 2, 0, 0, 0, 0, 0, 0])
  # Pure jnp: vmaps over sets of samples.
  stacked = jnp.stack([jnp.asarray(centres), jnp.full((8, 2), 5.0)])
  batched = jax.vmap(lambda s: modes.mode_coverage(s, jnp.asarray(centres), std))(stacked)
  np.testing.assert_array_equal(np.asarray(batched.modes_captured), [8, 0])


@pytest.mark.parametrize("shape", [(2,), (8, 8, 1), (4, 4, 3)])
@pytest.mark.parametrize("m", [2, 3])
def test_pack_concatenates_consecutive_samples(shape, m):
  x = np.random.default_rng(0).standard_normal((6,) + shape).astype(np.float32)
  # PacGAN's packing written out: example i is samples i*m, ..., i*m + m - 1 side by side.
  expected = np.stack([np.concatenate([x[i * m + j] for j in range(m)], axis=-1) for i in range(6 // m)])
  np.testing.assert_array_equal(np.asarray(gan.pack(jnp.asarray(x), m)), expected)


def test_pack_of_one_and_packed_discriminator():
  points = jnp.arange(12.0).reshape(6, 2)
  assert gan.pack(points, 1) is points
  # The discriminator of a packed config takes pack * 2 inputs.
  config = _smoke_config("gan", pack=4)
  state, _ = _initial_state(config, gan_tasks.make_task(config))
  kernel = state.params["disc"]["params"]["LinearMaxout_0"]["Dense_0"]["kernel"]
  assert kernel.shape == (8, config.disc_width * config.maxout_pieces)


@pytest.mark.parametrize("layer,name", [("maxout", "LinearMaxout_0"), ("relu", "Dense_0")])
def test_discriminator_layers(layer, name):
  config = _smoke_config("wgan_gp", disc_layer=layer, disc_depth=2)
  disc = gan.make_models(config).disc
  params = disc.init(jax.random.key(0), jnp.zeros((1, 2)))
  assert name in params["params"]
  if layer == "relu":
    # A ReLU critic with every hidden unit off is its output bias everywhere.
    p = params["params"]
    zeroed = {**p, "Dense_0": {"kernel": p["Dense_0"]["kernel"], "bias": -1e3 * jnp.ones_like(p["Dense_0"]["bias"])}}
    values = disc.apply({"params": zeroed}, jax.random.normal(jax.random.key(1), (5, 2)))
    np.testing.assert_allclose(np.asarray(values), float(p["Dense_2"]["bias"][0]), atol=1e-6)


# ---------------------------------------------------------------------------------------
# The experiment: smoke runs and bad input.


@pytest.mark.parametrize("loss,dataset", [("gan", "ring8"), ("wgan", "grid25"), ("wgan_gp", "digits")])
def test_experiment_smoke(tmp_path, monkeypatch, loss, dataset):
  config = _smoke_config(loss, dataset)
  evaluated, make_task = [], gan_tasks.make_task

  def recording_make_task(config):
    task = make_task(config)

    def evaluate(params, key, *rest):
      # The loop compiles the pure evaluation: the values it is called with come back through a callback.
      jax.debug.callback(lambda p, k: evaluated.append((p, jax.random.wrap_key_data(k))), params,
                         jax.random.key_data(key))
      return task.evaluate(params, key, *rest)

    return dataclasses.replace(task, evaluate=evaluate)

  monkeypatch.setattr(gan_tasks, "make_task", recording_make_task)
  results = gan_experiment.run(config, str(tmp_path))
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["step"] == config.steps and np.isfinite(on_disk["train_loss"])
  assert on_disk["config"]["loss"] == loss
  assert (tmp_path / "samples.png").stat().st_size > 0
  # What results.json records is what this config resolves to (the loss's settings).
  assert on_disk["config"]["n_critic"] == config.n_critic == gan_experiment.LOSS_SETTINGS[loss]["n_critic"]
  if dataset in toy2d.MIXTURES:
    # The coverage in results.json is PacGAN's, recomputed here in numpy on the generator and
    # key the loop evaluated.
    params, key = evaluated[-1]
    points = np.asarray(gan.generate(gan.make_models(config).gen, params["gen"], key, config.eval_samples,
                                     config.latent_dim))
    centres, std = toy2d.MIXTURES[dataset]
    distances = np.linalg.norm(points[:, None, :] - centres[None, :, :], axis=-1)  # (n, modes)
    high = distances.min(-1) <= 3 * std
    assert on_disk["modes_total"] == len(centres)
    assert on_disk["modes_captured"] == results["modes_captured"] == len(set(distances.argmin(-1)[high]))
    np.testing.assert_allclose(on_disk["high_quality_fraction"], high.mean(), atol=1e-6)


@pytest.mark.parametrize("field,value", [("loss", "lsgan"), ("dataset", "mnist"), ("pack", 0), ("pack", 3),
                                         ("n_critic", -1), ("gp_weight", -1.0),
                                         ("disc_layer", "tanh")])
def test_bad_config_raises_before_writing(tmp_path, field, value):
  config = _smoke_config("gan")
  config[field] = value
  with pytest.raises(ConfigError):
    gan_experiment.run(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_bad_input_from_the_command_line(tmp_path):
  workdir = tmp_path / "w"
  proc = subprocess.run([sys.executable, "-m", "experiments.gan", f"--workdir={workdir}",
                         "--config=experiments/gan.py:smoke", "--config.loss=lsgan"],
                        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "loss" in lines[0] and "wgan_gp" in lines[0], proc.stderr
  assert not workdir.exists()


def test_mixtures_known_to_data():
  assert set(toy2d.MIXTURES) <= set(data_lib.BUNDLED)
