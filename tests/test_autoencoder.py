"""Tests of the autoencoder family: contracts over ae/dae/vae, closed forms of the VAE bounds,
the importance-sampled NLL, and the experiment script end to end (smoke preset)."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import autoencoder as experiment
from research.metrics import nll as nll_lib
from research.models import autoencoder
from research.tasks import autoencoder as autoencoder_tasks
from research.tasks import classifier as classifier_tasks
from research.train import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SHAPE = (8, 8, 1)


def _config(model: str, **overrides):
  config = experiment.get_config("smoke")
  config.model = model
  for name, value in overrides.items():
    config[name] = value
  return config


def _images(n: int, seed: int = 0) -> np.ndarray:
  """Digit-like uint8 images: a bright blob on a dark background with some noise."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:8, :8]
  centres = rng.uniform(2, 6, size=(n, 2))
  blobs = np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 4.0)
  return np.clip(255 * blobs + rng.normal(0, 10, blobs.shape), 0, 255).astype(np.uint8)[..., None]


# ---------------------------------------------------------------------------------------
# Contracts, parameterized over the family.


@pytest.mark.parametrize("model", autoencoder.MODELS)
def test_contract_shapes_determinism_and_loss_falls(model):
  config = _config(model, hidden=(64,), latent_dim=8)
  images = _images(32)
  task = autoencoder_tasks.make_task(config, images)
  batch = {"image": images}
  params = task.init(jax.random.key(0), batch)
  net = autoencoder.Autoencoder(autoencoder.AutoencoderConfig.from_config(config, IMAGE_SHAPE))
  x = nll_lib.to_unit_interval(images)
  assert net.apply(params, x).shape == (32,) + IMAGE_SHAPE
  code = net.apply(params, x, method=autoencoder.Autoencoder.encode)
  if model == "vae":
    assert code.mean.shape == code.log_var.shape == (32, config.latent_dim)
  else:
    assert code.shape == (32, config.latent_dim)
  assert net.apply(params, jnp.zeros((3, 5, config.latent_dim)), method=autoencoder.Autoencoder.decode).shape \
      == (3, 5) + IMAGE_SHAPE

  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, key):
    (loss, metrics), grads = jax.value_and_grad(task.loss, has_aux=True)(params, batch, key, True)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, metrics

  opt_state = tx.init(params)
  _, _, loss_a, metrics = step(params, opt_state, jax.random.key(1))
  _, _, loss_b, _ = step(params, opt_state, jax.random.key(1))
  _, _, loss_c, _ = step(params, opt_state, jax.random.key(2))
  assert loss_a.shape == () and np.isfinite(float(loss_a))
  assert all(np.isfinite(float(v)) for v in metrics.values())
  assert float(loss_a) == float(loss_b)  # determinism under a key
  if model == "ae":
    assert float(loss_a) == float(loss_c)  # the AE uses no randomness
  else:
    assert float(loss_a) != float(loss_c)  # the key drives the binarisation / corruption

  # One key for every step: the same binarisation / noise, so the loss must fall.
  losses = []
  for _ in range(50):
    params, opt_state, loss, _ = step(params, opt_state, jax.random.key(1))
    losses.append(float(loss))
  assert losses[-1] < 0.8 * losses[0], losses[::10]


# ---------------------------------------------------------------------------------------
# Closed forms of the VAE bounds.


def test_gaussian_kl_matches_monte_carlo():
  rng = np.random.default_rng(0)
  q = autoencoder.Gaussian(jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
                           jnp.asarray(rng.normal(scale=0.7, size=(3, 4)), jnp.float32))
  eps = jax.random.normal(jax.random.key(0), (50_000, 3, 4))
  z = q.mean + jnp.exp(0.5 * q.log_var) * eps  # (samples, 3, 4)
  log_ratio = autoencoder.gaussian_log_density(z, q) - autoencoder.standard_normal_log_density(z)  # (samples, 3)
  mc, stderr = jnp.mean(log_ratio, 0), jnp.std(log_ratio, 0) / math.sqrt(eps.shape[0])
  np.testing.assert_array_less(np.abs(np.asarray(autoencoder.gaussian_kl(q) - mc)), np.asarray(5 * stderr))
  # By hand for one unit: KL(N(1, 1) || N(0, 1)) = 0.5 (1 + 1 - 1 - 0) = 0.5.
  one = autoencoder.Gaussian(jnp.ones((1, 1)), jnp.zeros((1, 1)))
  np.testing.assert_allclose(autoencoder.gaussian_kl(one), [0.5], rtol=1e-6)


@pytest.fixture(scope="session")  # session: kept when xdist interleaves other modules
def vae():
  """A small VAE at its initialisation (a poor encoder: the bounds are far apart) and binary data."""
  config = _config("vae", latent_dim=4, hidden=(32,))
  images = _images(64)
  task = autoencoder_tasks.make_task(config, images)
  params = task.init(jax.random.key(0), {"image": images})
  net = autoencoder.Autoencoder(autoencoder.AutoencoderConfig.from_config(config, IMAGE_SHAPE))
  x = nll_lib.binarize(jax.random.key(5), nll_lib.to_unit_interval(images))
  terms = jax.jit(lambda key: autoencoder.vae_terms(net, params, x, key, 1000))
  return net, params, x, images, terms


def test_iwae_with_one_sample_is_the_elbo(vae):
  net, params, x, _, terms_1000 = vae
  terms = autoencoder.vae_terms(net, params, x, jax.random.key(3), 1)
  np.testing.assert_allclose(autoencoder.iwae_bound(terms), autoencoder.elbo_monte_carlo(terms), rtol=1e-6)
  # The analytic-KL ELBO (2)-(3) is the same bound: equal to the sampled one in expectation.
  many = terms_1000(jax.random.key(4))
  stderr = jnp.std(many.log_weights, 0) / math.sqrt(1000)
  np.testing.assert_array_less(np.abs(np.asarray(autoencoder.elbo(many) - autoencoder.elbo_monte_carlo(many))),
                               np.asarray(5 * stderr))


def test_iwae_bound_tightens_with_k_and_bounds_the_nll_estimate(vae):
  net, params, _, images, terms_1000 = vae
  log_w = terms_1000(jax.random.key(6)).log_weights  # (1000, batch)
  # L_k averaged over the 1000 / k disjoint groups of k samples: increasing in k (Burda et al., Thm 1).
  bounds = {k: float(jnp.mean(autoencoder.log_mean_exp(log_w.reshape((1000 // k, k) + log_w.shape[1:]), 1)))
            for k in (1, 10, 100, 1000)}
  assert bounds[1] < bounds[10] < bounds[100] < bounds[1000], bounds

  def log_weights(params, x, key, k):
    return autoencoder.vae_terms(net, params, x, key, k).log_weights

  # The metric binarises afresh, so it matches the bounds above only in distribution: -L_k
  # decreases with k, and k = 1 is -ELBO.
  nll = {k: nll_lib.test_nll_nats(log_weights, params, images, jax.random.key(7), k, image_chunk=24)
         for k in (1, 100)}
  assert nll[1] > nll[100] + 1.0, nll
  assert abs(nll[1] + bounds[1]) < 0.1 * abs(bounds[1]), (nll, bounds)
  assert nll[100] > -bounds[1000] - 1.0, (nll, bounds)


def test_nll_chunks_merge_exactly():
  """Constant log-weights: -log mean_i w_i is exact whatever the chunking (padding included)."""
  images = np.full((10, 8, 8, 1), 255, np.uint8)  # binarises to all ones, deterministically

  def log_weights(params, x, key, k):
    del key
    return jnp.broadcast_to(-params * jnp.sum(x, axis=(1, 2, 3)), (k, x.shape[0]))

  for k, chunk in ((7, 4), (5000, 3)):
    np.testing.assert_allclose(nll_lib.test_nll_nats(log_weights, 0.5, images, jax.random.key(0), k, chunk),
                               32.0, rtol=1e-5)

  def gaussian_log_weights(params, x, key, k):
    return params + 0.5 * jax.random.normal(key, (k, x.shape[0]))

  # log w ~ N(mu, s^2) iid: log E[w] = mu + s^2 / 2, so -L_k -> -(mu + s^2 / 2) for large k.
  estimate = nll_lib.test_nll_nats(gaussian_log_weights, 1.0, images, jax.random.key(1), 20_000, 4)
  np.testing.assert_allclose(estimate, -(1.0 + 0.125), atol=0.02)
  assert nll_lib.bits_per_dim(64 * math.log(2.0), 64) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------
# The experiment end to end, and bad input.


def test_smoke_run_writes_results_and_pictures_and_refuses_another_latent_dim(tmp_path):
  workdir = str(tmp_path / "vae")
  results = experiment.run(experiment.get_config("smoke"), workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    stored = json.load(f)
  assert stored["nll_k"] == 16 and np.isfinite(stored["test_nll_nats"]) and stored["test_nll_nats"] > 0
  assert results["test_nll_nats"] == stored["test_nll_nats"]
  for name in ("reconstructions.png", "samples.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  # The VAE's prior samples are scored like the GAN's and the diffusion model's: the numbers in
  # results.json are those of the images in samples.npz.
  samples = np.load(os.path.join(workdir, "samples.npz"))["images"]
  config = experiment.get_config("smoke")
  assert samples.shape == (config.num_samples,) + IMAGE_SHAPE
  assert 0.0 <= samples.min() and samples.max() <= 1.0
  recomputed = classifier_tasks.digits_sample_metrics(samples)
  assert stored["num_samples"] == config.num_samples and len(stored["class_shares"]) == 10
  assert sum(stored["class_shares"]) == pytest.approx(1.0, abs=1e-3)
  for name in ("fid", "precision", "recall", "classes_covered"):
    assert stored[name] == pytest.approx(recomputed[name], rel=1e-4, abs=1e-6), name

  # A resume with another latent_dim fails before writing, naming the field (the CLI turns this into exit 2).
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  config = experiment.get_config("smoke")
  config.latent_dim = 5
  config.steps = 40
  with pytest.raises(ConfigError, match=r"holds a run trained with other settings: latent_dim 4 \(now 5\)"):
    experiment.run(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_bad_model_on_the_command_line_exits_2_and_writes_nothing(tmp_path):
  workdir = tmp_path / "bad"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "experiments.autoencoder", f"--workdir={workdir}",
                         "--config=experiments/autoencoder.py:smoke", "--config.model=xyz"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(errors) == 1 and "model" in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not workdir.exists() or not any(workdir.iterdir())


@pytest.mark.parametrize("field,value,words", [
    ("latent_dim", 0, "latent_dim"),
    ("k", -1, "k must"),
    ("eval_k", 0, "eval_k"),
    ("objective", "vi", "objective"),
    ("corruption", "blur", "corruption"),
    ("hidden", (32, 0), "hidden"),
    ("batch_size", 0, "batch_size"),
    ("num_samples", 2, "num_samples"),
])
def test_bad_config_raises_before_writing(tmp_path, field, value, words):
  config = experiment.get_config("smoke")
  config[field] = value
  with pytest.raises(ConfigError, match=words):
    experiment.run(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_dae_evaluation_reports_clean_reconstruction_and_denoising_separately():
  config = _config("dae", hidden=(16,), latent_dim=4, noise_level=0.5)
  images = _images(40, seed=3)
  task = autoencoder_tasks.make_task(config, images)
  params = task.init(jax.random.key(0), {"image": images})
  metrics = task.summarize(jax.device_get(jax.jit(task.evaluate)(params, jax.random.key(1), {"image": images})))
  # The clean error, computed directly: reconstruct the uncorrupted images.
  net = autoencoder.Autoencoder(autoencoder.AutoencoderConfig.from_config(config, IMAGE_SHAPE))
  x = nll_lib.to_unit_interval(images)
  logits = net.apply(params, x)
  clean_bce = float(jnp.mean(-autoencoder.bernoulli_log_likelihood(x, logits)))
  np.testing.assert_allclose(metrics["test_reconstruction_bce"], clean_bce, rtol=1e-6)
  np.testing.assert_allclose(metrics["test_reconstruction_mse"], float(jnp.mean((jax.nn.sigmoid(logits) - x) ** 2)),
                             rtol=1e-6)
  # Denoising reconstructs corrupted inputs: another (here: larger) error, under its own name.
  assert metrics["test_denoising_bce"] != metrics["test_reconstruction_bce"]
  assert set(metrics) == {"test_reconstruction_bce", "test_reconstruction_mse", "test_denoising_bce",
                          "test_denoising_mse"}
