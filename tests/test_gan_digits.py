"""GANs on digits: spectral normalisation, the hinge loss, the projection discriminator, the image
settings, the scored samples of a run, and the gan_digits table end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_declared_metrics, parse_gan_config, run_python
from experiments import gan as gan_experiment
from research.models import gan
from research.tasks import classifier as classifier_tasks
from research.train import ConfigError, Members



def _digits_smoke(loss: str = "gan", **overrides):
  config = gan_experiment.get_config(f"{loss},smoke")
  config.dataset = "digits"
  for name, value in overrides.items():
    config[name] = value
  return config


def _values(config) -> dict:
  """The fields that follow the loss and the dataset, as {dotted name: value}."""
  return {field: config.optimizer[field[len("optimizer."):]] if field.startswith("optimizer.") else config[field]
          for field in gan_experiment.FOLLOWING}


# ---------------------------------------------------------------------------------------
# Spectral normalisation, the hinge loss and the projection discriminator.


def test_spectral_norm_is_the_largest_singular_value_and_its_gradient_u_v():
  # A conv kernel (fan_in 36, features 8) with known singular values 3 > 1.5 > ... .
  rng = np.random.default_rng(0)
  u, _ = np.linalg.qr(rng.normal(size=(36, 8)))
  v, _ = np.linalg.qr(rng.normal(size=(8, 8)))
  s = np.array([3.0, 1.5, 1.2, 1.0, 0.8, 0.5, 0.3, 0.1])
  kernel = jnp.asarray(((u * s) @ v.T).reshape(3, 3, 4, 8), jnp.float32)
  assert float(gan.spectral_norm(kernel)) == pytest.approx(3.0, rel=1e-5)
  # A random kernel: its largest singular value as numpy's SVD finds it.
  random = jax.random.normal(jax.random.key(0), (3, 3, 4, 8))
  assert float(gan.spectral_norm(random)) == pytest.approx(np.linalg.svd(np.asarray(random).reshape(-1, 8),
                                                                         compute_uv=False)[0], rel=1e-4)
  # No gradient through the singular vectors: d sigma / d W = u1 v1^T (the exact derivative).
  grad = np.asarray(jax.grad(gan.spectral_norm)(kernel)).reshape(-1, 8)
  np.testing.assert_allclose(grad, np.outer(u[:, 0], v[:, 0]), atol=1e-4)  # the same for -u1, -v1


def test_spectrally_normalised_critic_layers_have_unit_norm():
  x = jax.random.normal(jax.random.key(1), (5, 8, 8, 3))
  for layer, inputs in ((gan.CriticConv(6, (3, 3), (2, 2), spectral=True), x),
                        (gan.CriticDense(4, spectral=True), x.reshape(5, -1))):
    params = layer.init(jax.random.key(2), inputs)
    kernel = np.asarray(params["params"]["kernel"])
    effective = kernel.reshape(-1, kernel.shape[-1]) / float(gan.spectral_norm(params["params"]["kernel"]))
    assert np.linalg.svd(effective, compute_uv=False)[0] == pytest.approx(1.0, rel=1e-4)
    # The layer applies exactly that kernel (bias 0 at initialisation).
    plain = layer.clone(spectral=False).apply({"params": {"kernel": jnp.asarray(effective.reshape(kernel.shape)),
                                                          "bias": params["params"]["bias"]}}, inputs)
    np.testing.assert_allclose(layer.apply(params, inputs), plain, rtol=1e-5, atol=1e-6)


def test_hinge_losses_match_their_definitions():
  d_real, d_fake = jnp.array([2.0, 0.5]), jnp.array([-2.0, 0.5])
  # mean(relu(1 - [2, .5])) + mean(relu(1 + [-2, .5])) = 0.25 + 0.75.
  assert float(gan.discriminator_loss("hinge", d_real, d_fake)) == pytest.approx(1.0)
  assert float(gan.generator_loss("hinge", d_fake)) == pytest.approx(0.75)


def test_projection_discriminator_is_affine_in_the_class_embedding():
  disc = gan.DCGANDiscriminator(4, spectral=True, num_classes=10)
  x = jax.random.uniform(jax.random.key(3), (6, 8, 8, 1), minval=-1.0, maxval=1.0)
  labels = jnp.array([0, 1, 2, 3, 4, 9])
  params = disc.init(jax.random.key(4), x, labels)
  embed = params["params"]["class_embed"]["embedding"]

  def with_embedding(table):
    return disc.apply({"params": {**params["params"], "class_embed": {"embedding": table}}}, x, labels)

  zero, once, twice = with_embedding(0 * embed), with_embedding(embed), with_embedding(2 * embed)
  # D(x, y) = psi(phi(x)) + embed(y) . phi(x): the label term doubles with the embedding ...
  np.testing.assert_allclose(twice - once, once - zero, rtol=1e-4, atol=1e-5)
  assert float(jnp.max(jnp.abs(once - zero))) > 1e-4
  # ... and without it the label does not matter.
  np.testing.assert_allclose(disc.apply({"params": {**params["params"], "class_embed": {"embedding": 0 * embed}}},
                                        x, jnp.zeros_like(labels)), zero, rtol=1e-6)


def test_conditional_generator_follows_the_label():
  config = _digits_smoke("hinge", conditional=True)
  gen = gan.make_models(config).gen
  z = jnp.zeros((2, config.latent_dim))
  params = gen.init(jax.random.key(0), z, jnp.zeros((2,), jnp.int32))
  # The same latent asked for two digits gives two images in [-1, 1].
  two = gen.apply(params, z, jnp.array([3, 7]))
  assert two.shape == (2,) + gan.IMAGE_SHAPE and float(jnp.max(jnp.abs(two))) <= 1.0
  assert float(jnp.max(jnp.abs(two[0] - two[1]))) > 0.0
  np.testing.assert_array_equal(np.asarray(gan.cycling_labels(12)), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])


# ---------------------------------------------------------------------------------------
# The settings that follow the dataset.


_parse = parse_gan_config


@pytest.mark.parametrize("loss", gan.LOSSES)
def test_image_settings_follow_the_dataset_and_the_loss(loss):
  config = gan_experiment.get_config(loss)
  points = _values(config)
  assert points == {f: gan_experiment.setting(f, loss, "ring8") for f in gan_experiment.FOLLOWING}
  config.dataset = "digits"
  assert _values(config) == gan_experiment.IMAGE_SETTINGS[loss]
  config.dataset = "grid25"
  assert _values(config) == points
  assert _values(_parse("--config.dataset=digits", f"--config.loss={loss}")) == gan_experiment.IMAGE_SETTINGS[loss]


def test_image_settings_and_explicit_values():
  digits = gan_experiment.IMAGE_SETTINGS["gan"]
  # What the image settings hold: class-conditional, Adam(8e-4, 0.5) for 6000 steps, TTUR, spectral normalisation,
  # an EMA; the hinge loss the same.
  assert digits["conditional"] and (digits["optimizer.learning_rate"], digits["optimizer.b1"], digits["steps"]) \
      == (8e-4, 0.5, 6000)
  assert digits["disc_lr_ratio"] > 1 and digits["spectral_norm"] and digits["ema_decay"] > 0
  assert gan_experiment.IMAGE_SETTINGS["hinge"] == digits
  # The digits default before it was conditional; the WGANs' image settings are unconditional.
  old = gan_experiment.get_config("unconditional")
  assert (old.dataset, old.conditional, old.optimizer.learning_rate, old.steps) == ("digits", False, 2e-4, 3000)
  assert {f: v for f, v in _values(old).items() if f not in ("conditional", "optimizer.learning_rate", "steps")} \
      == {f: v for f, v in digits.items() if f not in ("conditional", "optimizer.learning_rate", "steps")}
  for loss in ("wgan", "wgan_gp"):
    assert not gan_experiment.IMAGE_SETTINGS[loss]["conditional"]
    assert _values(gan_experiment.get_config(f"{loss},unconditional")) == gan_experiment.IMAGE_SETTINGS[loss]
  wgan_gp = gan_experiment.IMAGE_SETTINGS["wgan_gp"]  # Gulrajani et al.'s image settings
  assert (wgan_gp["n_critic"], wgan_gp["gp_weight"], wgan_gp["optimizer.learning_rate"], wgan_gp["optimizer.b1"],
          wgan_gp["optimizer.b2"], wgan_gp["spectral_norm"]) == (5, 10.0, 1e-4, 0.0, 0.9, False)
  # An explicit field keeps its value whichever side of --config.dataset it stands on.
  for args in (("--config.dataset=digits", "--config.latent_dim=8"),
               ("--config.latent_dim=8", "--config.dataset=digits")):
    config = _parse(*args)
    assert config.latent_dim == 8 and config.ema_decay == digits["ema_decay"]
  # The points keep their settings (the 2-D tables' numbers).
  assert gan_experiment.get_config().latent_dim == 2 and gan_experiment.get_config().ema_decay == 0.0
  # The two-layer pair with the points' settings, as before the image settings.
  small = gan_experiment.get_config("small_conv")
  assert (small.dataset, small.conv_arch, small.conv_features, small.latent_dim, small.batch_size, small.ema_decay,
          small.optimizer.learning_rate, small.spectral_norm) == ("digits", "small", 32, 2, 128, 0.0, 1e-3, False)


@pytest.mark.parametrize("overrides,words", [
    ({"conditional": True, "dataset": "ring8"}, "conditional"),
    ({"conditional": True, "pack": 2}, "pack"),
    ({"conv_arch": "small", "spectral_norm": True}, "conv_arch"),
    ({"conv_arch": "resnet"}, "conv_arch"),
    ({"num_samples": 3}, "num_samples"),
    ({"disc_lr_ratio": 0.0}, "disc_lr_ratio"),
])
def test_bad_image_config_raises_before_writing(tmp_path, overrides, words):
  config = _digits_smoke(**overrides)
  with pytest.raises(ConfigError, match=words):
    gan_experiment.run(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------------------------------
# A run scores the samples it writes.


@pytest.mark.slow
def test_conditional_digits_sweep_scores_the_samples_it_writes(tmp_path):
  # Two members as one vmapped program: each member's results are those of its samples.npz.
  config = _digits_smoke("hinge", conditional=True)
  results = gan_experiment.run(config, str(tmp_path), members=Members((0, 1)))
  stored = json.loads((tmp_path / "results.json").read_text())
  assert stored["config"]["conditional"] and stored["config"]["loss"] == "hinge"
  assert_declared_metrics(gan_experiment, config, stored["members"])
  classifier = classifier_tasks.digits_classifier()
  for i, member in enumerate(stored["members"]):
    samples = np.load(tmp_path / f"member_{i}" / "samples.npz")["images"]
    assert samples.shape == (config.num_samples,) + gan.IMAGE_SHAPE
    recomputed = classifier_tasks.digits_sample_metrics(samples, classifier)
    for name in ("fid", "precision", "recall", "classes_covered", "num_samples"):
      assert member[name] == results["members"][i][name] == pytest.approx(recomputed[name], rel=1e-4, abs=1e-6)
    assert len(member["class_shares"]) == 10 and sum(member["class_shares"]) == pytest.approx(1.0, abs=1e-3)
    # Samples are asked for labels 0, 1, ..., 9, 0, ...: the accuracy is the classifier's agreement with them.
    asked = np.arange(len(samples)) % 10
    assert member["label_accuracy"] == pytest.approx(np.mean(classifier.predict(samples) == asked))
  assert stored["members"][0]["fid"] != stored["members"][1]["fid"]


# ---------------------------------------------------------------------------------------
# The table.

# The smoke preset: two rows keep the run short (a GAN row and a non-GAN row take the table's two code paths), two
# members of 2 steps each, 12 samples per member.
TABLE_FLAGS = ["--config=experiments/tables/gan_digits.py:smoke"]


@pytest.mark.slow
def test_table_end_to_end(tmp_path):
  proc = run_python(["-m", "experiments.tables.gan_digits", f"--outdir={tmp_path}", *TABLE_FLAGS], timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  text = (tmp_path / "gan_digits.md").read_text()
  results = json.loads((tmp_path / "results.json").read_text())
  assert (tmp_path / "gan_digits.png").stat().st_size > 0
  assert "python -m experiments.tables.gan_digits" in text and "gan_digits.py:smoke" in text
  assert list(results["cells"]) == ["PacGAN-2", "VAE"]
  reference = classifier_tasks.digits_reference_fids()["test_split"]
  assert results["reference_fid_test_split"] == pytest.approx(reference)
  for method, cell in results["cells"].items():
    assert cell["seeds"] == [0, 1], method
    fids = cell["per_member"]["fid"]
    assert len(fids) == 2 and all(np.isfinite(fids)) and min(fids) >= 0.0, method
    assert all(0 <= c <= 10 for c in cell["per_member"]["classes_covered"]), method
    assert cell["mean_se"]["fid"][0] == pytest.approx(np.mean(fids)), method
    assert cell["mean_se"]["fid"][1] == pytest.approx(np.std(fids, ddof=1) / np.sqrt(2)), method
    ratio = f"{cell['mean_se']['fid'][0] / reference:.2f}"
    assert f"| {method} | 2 | " in text and ratio in text, method
  pacgan = results["cells"]["PacGAN-2"]
  assert (pacgan["steps"], pacgan["config"]["pack"], pacgan["config"]["num_samples"]) == (2, 2, 12)
  # The pair's parameters from its layer shapes: the critic's first conv reads the 2 packed channels.
  f, latent = pacgan["config"]["conv_features"], pacgan["config"]["latent_dim"]
  generator = (latent * 32 * f + 32 * f) + (16 * 2 * f * f + f) + (9 * f + 1)
  critic = (9 * 2 * f + f) + (9 * f * 2 * f + 2 * f) + (8 * f + 1)
  assert pacgan["params"] == generator + critic


def test_table_bad_flag_exits_before_training(tmp_path):
  proc = run_python(["-m", "experiments.tables.gan_digits", f"--outdir={tmp_path / 'x'}", "--config.num_samples=2"])
  assert proc.returncode == 2 and proc.stderr.strip() == "error: num_samples must be at least 4, got 2"
  assert "Traceback" not in proc.stderr and not (tmp_path / "x").exists()
