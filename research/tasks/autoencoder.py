"""The autoencoder family's plug-in for the loop: init, loss, evaluation, pictures and sample metrics.

    task = make_task(config, eval_images)   # plugs into research.train.train

The models, bounds and losses are research/models/autoencoder.py; the VAE's prior samples are
scored in the digits feature space (research/tasks/classifier.py).
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research import optim
from research.checks import ConfigError, check_choice, check_positive
from research.metrics import nll as nll_lib
from research.models.autoencoder import (CORRUPTIONS, MODELS, OBJECTIVES, Autoencoder, AutoencoderConfig,
                                         bernoulli_log_likelihood, corrupt, elbo, make_loss, traced_hparams, vae_terms)
from research.tasks import classifier as classifier_tasks
from research.train import Task

# Pictures written at the end of a run: originals and reconstructions (and VAE samples).
NUM_RECONSTRUCTIONS = 32
NUM_SAMPLES = 64
# The AE's and DAE's evaluation numbers, in the order results.json lists them.
ERROR_METRICS = ("test_reconstruction_bce", "test_reconstruction_mse", "test_denoising_bce", "test_denoising_mse")


def check_config(config) -> None:
  """Raises ConfigError on a bad autoencoder field of an experiment config (before any compile)."""
  check_choice("model", config.model, MODELS)
  check_choice("corruption", config.corruption, CORRUPTIONS)
  check_choice("objective", config.objective, OBJECTIVES)
  check_positive("latent_dim", config.latent_dim)
  check_positive("k", config.k)
  check_positive("eval_k", config.eval_k)
  hidden = tuple(config.hidden)
  if not hidden or any(int(h) <= 0 for h in hidden):
    raise ConfigError(f"hidden must be a non-empty tuple of positive widths, got {hidden}")
  if config.corruption == "mask" and not 0.0 <= config.noise_level < 1.0:
    raise ConfigError(f"noise_level (the masking probability) must be in [0, 1), got {config.noise_level}")
  check_positive("noise_level", config.noise_level, allow_zero=True)
  check_positive("kl_weight", config.kl_weight, allow_zero=True)


def _interleave(rows: Sequence[jax.Array], width: int) -> jax.Array:
  """Stacks image sets (n, H, W, C) so each set's `width` images form alternating grid rows."""
  groups = [r.reshape((-1, width) + r.shape[1:]) for r in rows]  # each (n / width, width, H, W, C)
  return jnp.stack(groups, axis=1).reshape((-1,) + rows[0].shape[1:])


# The [0, 1] intensity of each uint8 level, divided on the host (correctly rounded k / 255).
UINT8_INTENSITIES = np.arange(256, dtype=np.float32) / np.float32(255.0)


def _test_intensities(images):
  """Test images in [0, 1] with the host's values also inside a compiled program.

  XLA turns x / 255 into x * (1 / 255), which differs in the last bit for about half the
  levels; a table of the host's quotients keeps the evaluation's numbers those of the
  eager computation.
  """
  if images.dtype == jnp.uint8:
    return jnp.asarray(UINT8_INTENSITIES)[images]
  return nll_lib.to_unit_interval(images)


def metric_names(model: str, num_samples: int = 0) -> tuple[str, ...]:
  """The scalar metrics `make_task`'s evaluation reports for `model` (with `num_samples` as there)."""
  if model == "vae":
    names = ("test_nll_nats", "nll_k", "test_bits_per_dim", "test_elbo_nats")
    return names + (classifier_tasks.digits_sample_metric_names() if num_samples else ())
  return ERROR_METRICS if model == "dae" else ERROR_METRICS[:2]


def make_task(config, eval_images: np.ndarray, num_samples: int = 0) -> Task:
  """The autoencoder family as a research.train.Task.

  Args:
    config: an experiment config with the base fields (research.train.base_config) and
      model, latent_dim, hidden, corruption, noise_level, objective, k, eval_k.
    eval_images: uint8 test images (N, H, W, C) for `sample`'s reconstruction grid; `evaluate`
      reads the evaluation split the loop hands it ({"image": uint8 (N, H, W, C)}).
    num_samples: VAE on 8x8 digits: > 0 draws this many samples from the prior at each
      evaluation and reports their FID, precision, recall and class shares in the digits
      feature space (research.tasks.classifier.digits_sample_metrics); the loop writes
      those images as `samples`. 0: no sample metrics.

  Returns:
    A Task with a pure `evaluate(params, key, data, hparams=None)` (one compiled program; a
    sweep's members in one vmapped program) whose `summarize` reports, for the VAE,
    `test_nll_nats` (importance-sampled with `nll_k` = config.eval_k samples, dynamically
    binarised test images), `test_bits_per_dim` and `test_elbo_nats`; for the AE/DAE,
    `test_reconstruction_bce` (nats per image) and `test_reconstruction_mse` (per pixel) of
    clean test images, plus for the DAE `test_denoising_bce` / `test_denoising_mse` of test
    images corrupted at the run's (traced) noise level. With `num_samples`, the VAE's
    evaluation adds `fid`, `precision`, `recall`, `classes_covered`, `class_shares` and
    `num_samples` of its prior samples (Bernoulli means). The evaluation's pictures (written
    by the loop at an evaluation step) are `reconstructions`, test images and their
    reconstructions, and for the VAE `samples`, the scored prior samples (NUM_SAMPLES
    unscored ones without `num_samples`); `sample` draws such pictures at other steps.

  Raises:
    ConfigError: on a bad field.
  """
  check_config(config)
  eval_images = np.asarray(eval_images)
  model_config = AutoencoderConfig.from_config(config, eval_images.shape[1:])
  model = Autoencoder(model_config)
  loss = make_loss(model_config, model)
  eval_x = jnp.asarray(nll_lib.to_unit_interval(eval_images))  # (N, H, W, C)
  vae = model_config.model == "vae"

  def init(key, batch):
    return model.init(key, nll_lib.to_unit_interval(batch["image"]))

  def log_weights(params, x, key, k):
    return vae_terms(model, params, x, key, k).log_weights  # (k, batch)

  def noise_level(hparams):
    # The DAE corrupts test images at the level it was trained with (a sweep member's own).
    return None if hparams is None else hparams.get("noise_level")

  def reconstruction_errors(params, test_x, key, level, corrupted):
    inputs = corrupt(model_config, test_x, key, level) if corrupted else test_x
    logits = model.apply(params, inputs)
    return {"bce": jnp.mean(-bernoulli_log_likelihood(test_x, logits)),
            "mse": jnp.mean(jnp.square(jax.nn.sigmoid(logits) - test_x))}

  def test_elbo(params, test_x, key):
    k_binarize, k_latent = jax.random.split(key)
    terms = vae_terms(model, params, nll_lib.binarize(k_binarize, test_x), k_latent, 1)
    return jnp.mean(elbo(terms))

  def prior_samples(params, key, n):
    z = jax.random.normal(key, (n, model_config.latent_dim))  # (n, latent)
    return jax.nn.sigmoid(model.apply(params, z, method=Autoencoder.decode))  # Bernoulli means in [0, 1]

  def reconstruction_grid(params, test_x, key, level):
    """Test images and their reconstructions in alternating rows (DAE: clean, corrupted, denoised)."""
    if model_config.model == "dae":
      width = int(math.isqrt(3 * NUM_RECONSTRUCTIONS))
      x = test_x[:width * (NUM_RECONSTRUCTIONS // width)]  # (n, H, W, C)
      noisy = corrupt(model_config, x, key, level)
      denoised = jax.nn.sigmoid(model.apply(params, noisy))
      return _interleave([x, jnp.clip(noisy, 0.0, 1.0), denoised], width)
    x = test_x[:NUM_RECONSTRUCTIONS]  # (n, H, W, C)
    return _interleave([x, jax.nn.sigmoid(model.apply(params, x))], int(math.isqrt(2 * NUM_RECONSTRUCTIONS)))

  def evaluate(params, key, data, hparams=None):
    # Pure (Task.evaluate_pure): the numbers and pictures come out of one compiled program;
    # `summarize` reads them (and scores the samples) on the host.
    test_x = _test_intensities(data["image"])  # (N, H, W, C)
    k_nll, k_elbo = jax.random.split(key)
    level = noise_level(hparams)
    # Their own streams: the NLL, ELBO and error keys stay what they were without pictures.
    out = {"reconstructions": reconstruction_grid(params, test_x, jax.random.fold_in(key, 3), level)}
    if vae:
      out.update(nll_per_image=nll_lib.per_image_nll(log_weights, params, data["image"], k_nll, config.eval_k),
                 test_elbo_nats=test_elbo(params, test_x, k_elbo),
                 samples=prior_samples(params, jax.random.fold_in(key, 2), num_samples or NUM_SAMPLES))
      return out
    # The clean reconstruction error, and (DAE) the error of denoising corrupted test images.
    clean = reconstruction_errors(params, test_x, k_nll, level, corrupted=False)
    out.update(test_reconstruction_bce=clean["bce"], test_reconstruction_mse=clean["mse"])
    if model_config.model == "dae":
      noisy = reconstruction_errors(params, test_x, k_elbo, level, corrupted=True)
      out.update(test_denoising_bce=noisy["bce"], test_denoising_mse=noisy["mse"])
    return out

  def summarize(arrays):
    if vae:
      # The mean over images outside the program, as test_nll_nats has always been computed: XLA sums
      # the images in another order when the mean is fused into it.
      nll = float(jnp.mean(arrays["nll_per_image"]))
      out = {"test_nll_nats": nll, "nll_k": int(config.eval_k),
             "test_bits_per_dim": nll_lib.bits_per_dim(nll, math.prod(model_config.image_shape)),
             "test_elbo_nats": float(arrays["test_elbo_nats"])}
      if num_samples:
        out.update(classifier_tasks.digits_sample_metrics(arrays["samples"]))
      return out
    return {name: float(arrays[name]) for name in ERROR_METRICS if name in arrays}

  @jax.jit
  def draw(params, test_x, key, hparams):
    k_corrupt, k_prior = jax.random.split(key)
    out = {"reconstructions": reconstruction_grid(params, test_x, k_corrupt, noise_level(hparams))}
    if vae:
      out["samples"] = prior_samples(params, k_prior, NUM_SAMPLES)
    return out

  def sample(params, key, hparams=None):
    return draw(params, eval_x, key, hparams)

  return Task(init=init, tx=optim.make(config.optimizer, config.steps), loss=loss, evaluate=evaluate,
              evaluate_pure=True, pictures=("reconstructions", "samples"), summarize=summarize, sample=sample,
              learning_rate=optim.learning_rate_fn(config.optimizer, config.steps),
              hparams=traced_hparams(model_config))
