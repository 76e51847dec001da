"""Autoencoders: AE, denoising AE, and the VAE trained with the ELBO or the IWAE bound.

    task = make_task(config, eval_images)   # plugs into research.train.train

References: Kingma & Welling, "Auto-Encoding Variational Bayes" (2014); Burda, Grosse &
Salakhutdinov, "Importance Weighted Autoencoders" (2016); Vincent et al., "Extracting and
Composing Robust Features with Denoising Autoencoders" (2008).

Inputs are uint8 images scaled to [0, 1] intensities. The AE and DAE reconstruct the
intensities under a Bernoulli (sigmoid cross-entropy) decoder. The VAE follows the IWAE
paper's setting: every batch is *dynamically binarised* (each pixel ~ Bernoulli(intensity),
drawn afresh per step from a key derived from the step key) and modelled by a Bernoulli
decoder, so its bounds and the test NLL are log-probabilities of binary images, in nats.

The VAE objective, in parts:
  (1) log p(x) = log E_{q(z|x)}[p(x, z) / q(z|x)] >= E_q[log p(x, z) - log q(z|x)] = ELBO
      (Jensen), for any encoder q(z|x) = N(mu(x), diag sigma^2(x)).
  (2) ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)), p(z) = N(0, I): reconstruction minus KL.
  (3) KL(N(mu, sigma^2) || N(0, 1)) = 0.5 (mu^2 + sigma^2 - 1 - log sigma^2) per latent unit,
      analytic, so only the reconstruction term needs samples.
  (4) Reparameterisation: z = mu + sigma * eps, eps ~ N(0, I), makes the sample a
      differentiable function of the encoder's outputs.
  (5) Bernoulli decoder with logits l: log p(x|z) = sum_pixels x l - softplus(l)
      (minus the sigmoid cross-entropy).
  (6) IWAE bound with k samples: L_k = E[log (1/k) sum_i w_i], w_i = p(x, z_i) / q(z_i|x),
      z_i ~ q iid. L_1 is the ELBO of (1); L_k <= L_{k+1} <= log p(x) (Burda et al., Thm 1).
  (7) Test NLL: -L_k with a large k, estimated per test image by the log-mean-exp of k
      importance weights (research/metrics/nll.py).
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import optim
from research.metrics import nll as nll_lib
from research.train import ConfigError, Task, check_choice, check_positive

MODELS = ("ae", "dae", "vae")
CORRUPTIONS = ("gaussian", "mask")
OBJECTIVES = ("elbo", "iwae")
# Pictures written at the end of a run: originals and reconstructions (and VAE samples).
NUM_RECONSTRUCTIONS = 32
NUM_SAMPLES = 64
# The AE's and DAE's evaluation numbers, in the order results.json lists them.
ERROR_METRICS = ("test_reconstruction_bce", "test_reconstruction_mse", "test_denoising_bce", "test_denoising_mse")
LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
  """The model's fields (a subset of the experiment config, see experiments/autoencoder.py).

  Attributes:
    model: one of MODELS.
    image_shape: (H, W, C) of the images.
    latent_dim: size of the code (AE/DAE) or of the Gaussian latent (VAE).
    hidden: widths of the encoder's tanh layers; the decoder mirrors them.
    corruption: DAE input corruption, one of CORRUPTIONS.
    noise_level: DAE: the Gaussian noise's standard deviation, or the masking probability.
    kl_weight: VAE with the ELBO: β, the weight of the KL term (1: the ELBO; β-VAE otherwise).
    objective: VAE training bound, one of OBJECTIVES.
    k: samples per image in the training bound.
    dtype: the compute dtype of the layers (parameters stay float32; log-densities are
      computed in float32).
  """

  model: str = "vae"
  image_shape: tuple[int, ...] = (8, 8, 1)
  latent_dim: int = 16
  hidden: tuple[int, ...] = (200, 200)
  corruption: str = "gaussian"
  noise_level: float = 0.3
  kl_weight: float = 1.0
  objective: str = "elbo"
  k: int = 1
  dtype: str = "float32"

  @classmethod
  def from_config(cls, config, image_shape: Sequence[int]) -> "AutoencoderConfig":
    """Picks the model's fields out of an experiment config."""
    return cls(model=config.model, image_shape=tuple(int(d) for d in image_shape), latent_dim=config.latent_dim,
               hidden=tuple(int(h) for h in config.hidden), corruption=config.corruption,
               noise_level=float(config.noise_level), kl_weight=float(config.kl_weight),
               objective=config.objective, k=config.k,
               dtype=config.dtype)


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


class Gaussian(NamedTuple):
  """A diagonal Gaussian: mean and log-variance, each (..., latent)."""

  mean: jax.Array
  log_var: jax.Array


class MLP(nn.Module):
  """tanh hidden layers, then a linear output layer."""

  hidden: tuple[int, ...]
  out: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    for width in self.hidden:
      x = nn.tanh(nn.Dense(width, dtype=self.dtype)(x))
    return nn.Dense(self.out, dtype=self.dtype)(x).astype(jnp.float32)


class Autoencoder(nn.Module):
  """AE / DAE (deterministic code) or VAE (Gaussian code), MLP encoder and Bernoulli decoder.

  `encode` returns the code (batch, latent) for the AE/DAE and a Gaussian posterior for
  the VAE; `decode` maps codes (..., latent) to pixel logits (..., H, W, C).
  """

  config: AutoencoderConfig

  def setup(self):
    c = self.config
    code_dim = 2 * c.latent_dim if c.model == "vae" else c.latent_dim
    self.encoder = MLP(c.hidden, code_dim, c.dtype)
    self.decoder = MLP(tuple(reversed(c.hidden)), math.prod(c.image_shape), c.dtype)

  def encode(self, x):
    h = self.encoder(x.reshape(x.shape[0], -1))  # (batch, code_dim)
    if self.config.model != "vae":
      return h
    mean, log_var = jnp.split(h, 2, axis=-1)  # (batch, latent) each
    return Gaussian(mean, log_var)

  def decode(self, z):
    return self.decoder(z).reshape(z.shape[:-1] + self.config.image_shape)  # (..., H, W, C)

  def __call__(self, x):
    """Pixel logits of the reconstruction through the code (the posterior mean for the VAE)."""
    code = self.encode(x)
    return self.decode(code.mean if isinstance(code, Gaussian) else code)


# ---------------------------------------------------------------------------------------
# Densities, bounds and losses.


def bernoulli_log_likelihood(x, logits):
  """(5): sum over pixels of log Bernoulli(x | sigmoid(logits)); x may be soft in [0, 1].

  Args:
    x: targets (..., H, W, C).
    logits: decoder outputs, broadcastable to x.

  Returns:
    (...) log-likelihoods in nats.
  """
  return -jnp.sum(optax.sigmoid_binary_cross_entropy(logits, jnp.broadcast_to(x, logits.shape)), axis=(-3, -2, -1))


def gaussian_kl(q: Gaussian):
  """(3): KL(q || N(0, I)) summed over the latent axis; (...) nats."""
  return 0.5 * jnp.sum(jnp.square(q.mean) + jnp.exp(q.log_var) - 1.0 - q.log_var, axis=-1)


def gaussian_log_density(z, q: Gaussian):
  """log N(z; mean, diag exp(log_var)) summed over the latent axis."""
  return -0.5 * jnp.sum(LOG_2PI + q.log_var + jnp.square(z - q.mean) * jnp.exp(-q.log_var), axis=-1)


def standard_normal_log_density(z):
  """log N(z; 0, I) summed over the latent axis."""
  return -0.5 * jnp.sum(LOG_2PI + jnp.square(z), axis=-1)


def log_mean_exp(a, axis: int = 0):
  """log (1/n) sum_i exp(a_i) along `axis`, stable."""
  return jax.nn.logsumexp(a, axis=axis) - math.log(a.shape[axis])


class VAETerms(NamedTuple):
  """The parts of the VAE bounds for k samples per image.

  Attributes:
    log_px_z: (k, batch) log p(x | z_i).
    log_pz: (k, batch) log p(z_i).
    log_qz: (k, batch) log q(z_i | x).
    kl: (batch,) analytic KL(q(z|x) || p(z)).
  """

  log_px_z: jax.Array
  log_pz: jax.Array
  log_qz: jax.Array
  kl: jax.Array

  @property
  def log_weights(self):
    """(6): log w_i = log p(x, z_i) - log q(z_i | x), (k, batch)."""
    return self.log_px_z + self.log_pz - self.log_qz


def vae_terms(model: Autoencoder, params, x, key, k: int) -> VAETerms:
  """Samples k latents per image by (4) and evaluates the densities of (1)-(6).

  Args:
    model: an Autoencoder with model == "vae".
    params: its parameters.
    x: binary (or [0, 1]) images (batch, H, W, C).
    key: the sampling key.
    k: samples per image.
  """
  q = model.apply(params, x, method=Autoencoder.encode)  # (batch, latent) each
  eps = jax.random.normal(key, (k,) + q.mean.shape, q.mean.dtype)  # (k, batch, latent)
  z = q.mean + jnp.exp(0.5 * q.log_var) * eps  # (k, batch, latent)
  logits = model.apply(params, z, method=Autoencoder.decode)  # (k, batch, H, W, C)
  return VAETerms(log_px_z=bernoulli_log_likelihood(x, logits), log_pz=standard_normal_log_density(z),
                  log_qz=gaussian_log_density(z, q), kl=gaussian_kl(q))


def elbo(terms: VAETerms):
  """(2) with the analytic KL (3): (batch,) nats; the reconstruction is averaged over the k samples."""
  return jnp.mean(terms.log_px_z, axis=0) - terms.kl


def elbo_monte_carlo(terms: VAETerms):
  """(1) estimated entirely by sampling, the mean log-weight: (batch,) nats."""
  return jnp.mean(terms.log_weights, axis=0)


def iwae_bound(terms: VAETerms):
  """(6): log-mean-exp of the k importance weights, (batch,) nats; equals elbo_monte_carlo at k = 1."""
  return log_mean_exp(terms.log_weights, axis=0)


def corrupt(config: AutoencoderConfig, x, key, noise_level=None):
  """The DAE's input corruption of [0, 1] images x.

  "gaussian" adds N(0, noise_level^2) noise per pixel; "mask" sets each pixel to 0 with
  probability noise_level (Vincent et al.'s masking noise). `noise_level` (traced, for
  sweeps) defaults to the config's.
  """
  level = config.noise_level if noise_level is None else noise_level
  if config.corruption == "gaussian":
    return x + level * jax.random.normal(key, x.shape, x.dtype)
  keep = jax.random.bernoulli(key, 1.0 - level, x.shape)
  return jnp.where(keep, x, 0.0)


def traced_hparams(config: AutoencoderConfig) -> dict[str, float] | None:
  """The fields the loss reads as traced values (sweepable in one program): the DAE's noise level, the VAE's β."""
  if config.model == "dae":
    return {"noise_level": config.noise_level}
  if config.model == "vae" and config.objective == "elbo":
    return {"kl_weight": config.kl_weight}
  return None


def make_loss(config: AutoencoderConfig, model: Autoencoder):
  """Returns `loss(params, batch, key, train, hparams=None) -> (scalar, metrics)` for the research.train loop.

  Losses are per image (nats), averaged over the batch. The AE/DAE minimise the Bernoulli
  cross-entropy of the clean intensities; the VAE minimises -ELBO (2) (with the KL term
  weighted by β = kl_weight) or -L_k (6) of a dynamically binarised batch. `hparams`
  ({name: traced scalar}, see `traced_hparams`) overrides the config's values.
  """

  def loss(params, batch, key, train, hparams=None):
    del train  # no dropout or batch statistics
    hparams = hparams or {}
    x = nll_lib.to_unit_interval(batch["image"])  # (batch, H, W, C)
    if config.model == "vae":
      k_binarize, k_latent = jax.random.split(key)
      x_binary = nll_lib.binarize(k_binarize, x)
      terms = vae_terms(model, params, x_binary, k_latent, config.k)
      if config.objective == "elbo":
        beta = hparams.get("kl_weight", config.kl_weight)
        bound = jnp.mean(terms.log_px_z, axis=0) - beta * terms.kl  # (batch,): (2) with β on the KL term
      else:
        bound = iwae_bound(terms)  # (batch,)
      return -jnp.mean(bound), {"elbo": jnp.mean(elbo(terms)), "reconstruction": jnp.mean(terms.log_px_z),
                                "kl": jnp.mean(terms.kl)}
    inputs = corrupt(config, x, key, hparams.get("noise_level")) if config.model == "dae" else x
    logits = model.apply(params, inputs)  # (batch, H, W, C)
    bce = -bernoulli_log_likelihood(x, logits)  # (batch,)
    mse = jnp.mean(jnp.square(jax.nn.sigmoid(logits) - x))
    return jnp.mean(bce), {"mse": mse}

  return loss


# ---------------------------------------------------------------------------------------
# The task: init, loss, evaluation and pictures for research.train.train.


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


def make_task(config, eval_images: np.ndarray, num_samples: int = 0) -> Task:
  """The autoencoder family as a research.train.Task.

  Args:
    config: an experiment config with the base fields (research.train.base_config) and
      model, latent_dim, hidden, corruption, noise_level, objective, k, eval_k.
    eval_images: uint8 test images (N, H, W, C) for `sample`'s reconstruction grid; `evaluate`
      reads the evaluation split the loop hands it ({"image": uint8 (N, H, W, C)}).
    num_samples: VAE on 8x8 digits: > 0 draws this many samples from the prior at each
      evaluation and reports their FID, precision, recall and class shares in the digits
      classifier's feature space (research.metrics.fid.sample_metrics); the loop writes
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
        from research.metrics import fid as fid_lib  # pylint: disable=import-outside-toplevel
        out.update(fid_lib.sample_metrics(arrays["samples"]))
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
