"""Autoencoders: AE, denoising AE, and the VAE trained with the ELBO or the IWAE bound.

    model = Autoencoder(AutoencoderConfig.from_config(config, image_shape))
    loss = make_loss(model.config, model)   # loss(params, batch, key, train, hparams) -> (scalar, metrics)

The loop's plug-in (evaluation, pictures, sample metrics) is research/tasks/autoencoder.py.

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
import optax

from research.metrics import nll as nll_lib

MODELS = ("ae", "dae", "vae")
CORRUPTIONS = ("gaussian", "mask")
OBJECTIVES = ("elbo", "iwae")
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
