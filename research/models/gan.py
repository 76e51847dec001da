"""GANs: non-saturating GAN, WGAN with weight clipping, WGAN-GP, and PacGAN packing.

    models = make_models(config)        # the generator and the discriminator of an experiment config
    points = generate(models.gen, params["gen"], key, n, config.latent_dim)

The loop's plug-in (two optimizers, n_critic critic updates per step) is research/tasks/gan.py.

Two architectures, chosen by the data: an MLP pair for 2D points (toy2d: ring8, grid25,
swissroll; the VEEGAN/PacGAN setup of a ReLU MLP generator and a LinearMaxout
discriminator, or with `disc_layer = "relu"` the ReLU MLP critic of Gulrajani et al.'s toy
experiments) and a conv pair for 8x8 images (digits, pixels scaled to [-1, 1]): `conv_arch`
"dcgan" (DCGANGenerator / DCGANDiscriminator) or "small", the two-layer pair
(ConvGenerator / ConvDiscriminator) that experiments/bench/vs_torch.py mirrors in PyTorch.

The DCGAN pair follows DCGAN's rules (strided convolutions instead of pooling, no batch norm in
the critic, LeakyReLU(0.2) in the critic, ReLU and a tanh output in the generator); with
`spectral_norm` every critic layer's weight is divided by its largest singular value (Miyato et
al., 2018). With `conditional` the generator reads a one-hot label beside z and the
discriminator is a projection discriminator (Miyato & Koyama, 2018):
D(x, y) = psi(phi(x)) + <embed(y), phi(x)>, so the generator can be asked for a digit.

Losses (D is the discriminator's logit / the critic's value, G the generator):
  gan      Goodfellow et al., non-saturating: D minimises -log s(D(x)) - log(1 - s(D(G(z)))),
           G minimises -log s(D(G(z))).
  wgan     Arjovsky et al.: the critic minimises E D(G(z)) - E D(x) and its weights are
           clipped to [-c, c] after every update; G minimises -E D(G(z)); n_critic critic
           updates per generator update (the paper: c = 0.01, RMSProp 5e-5, n_critic 5).
  wgan_gp  Gulrajani et al.: the WGAN critic loss plus lambda * E (||grad D(x_hat)|| - 1)^2 on
           random interpolates x_hat between real and generated samples, no clipping
           (the paper: lambda = 10, n_critic 5, Adam(1e-4, beta1 0, beta2 0.9); its toy
           experiments: lambda = 0.1, Adam beta1 0.5).
  hinge    Lim & Ye; Miyato et al.: D minimises E relu(1 - D(x)) + E relu(1 + D(G(z))),
           G minimises -E D(G(z)).
PacGAN (Lin et al.): with `pack` m > 1 the discriminator judges m samples at once,
concatenated along the feature (points) or channel (images) axis; a batch of B samples
becomes B / m packed examples, real packed with real and generated with generated.

Params are {'gen': ..., 'disc': ...}, each group with its own optimizer state (research/tasks/gan.py:
one train step takes n_critic batches, makes n_critic critic updates in a `lax.scan`, then one
generator update).
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.data import toy2d
from research.metrics import modes as modes_lib

LOSSES = ("gan", "wgan", "wgan_gp", "hinge")
DISC_LAYERS = ("maxout", "relu")  # hidden layers of the MLP discriminator
CONV_ARCHS = ("dcgan", "small")  # the conv pair: DCGANGenerator / DCGANDiscriminator, or the two-layer pair
POINT_DATASETS = toy2d.NAMES
IMAGE_DATASETS = ("digits",)
IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 10  # digit classes (conditional runs)
SQUARINGS = 8  # spectral norm: W^T W is raised to the power 2^SQUARINGS


# ---------------------------------------------------------------------------------------
# Modules.


class MLPGenerator(nn.Module):
  """z -> ReLU MLP -> a point in R^out_dim."""

  width: int
  depth: int
  out_dim: int = 2

  @nn.compact
  def __call__(self, z):
    h = z
    for _ in range(self.depth):
      h = nn.relu(nn.Dense(self.width)(h))  # (batch, width)
    return nn.Dense(self.out_dim)(h)  # (batch, out_dim)


class LinearMaxout(nn.Module):
  """A dense layer with `pieces` linear pieces per unit, reduced by max (Goodfellow et al., 2013)."""

  features: int
  pieces: int

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(self.features * self.pieces)(x)  # (batch, features * pieces)
    return jnp.max(h.reshape(h.shape[:-1] + (self.features, self.pieces)), -1)  # (batch, features)


class MLPDiscriminator(nn.Module):
  """(packed) points -> LinearMaxout MLP -> one logit / critic value per example."""

  width: int
  depth: int
  pieces: int

  @nn.compact
  def __call__(self, x):
    h = x.reshape(x.shape[0], -1)  # (batch, pack * 2)
    for _ in range(self.depth):
      h = LinearMaxout(self.width, self.pieces)(h)  # (batch, width)
    return nn.Dense(1)(h)[:, 0]  # (batch,)


class ReLUDiscriminator(nn.Module):
  """(packed) points -> ReLU MLP -> one critic value per example (Gulrajani et al.'s toy critic)."""

  width: int
  depth: int

  @nn.compact
  def __call__(self, x):
    h = x.reshape(x.shape[0], -1)  # (batch, pack * 2)
    for _ in range(self.depth):
      h = nn.relu(nn.Dense(self.width)(h))  # (batch, width)
    return nn.Dense(1)(h)[:, 0]  # (batch,)


def spectral_norm(kernel: jax.Array, squarings: int = SQUARINGS) -> jax.Array:
  """The largest singular value sigma(W) of `kernel` reshaped to (fan_in, features).

  Miyato et al. carry one power-iteration vector across updates (one matrix-vector product
  per update). Here nothing is carried: the power iteration runs afresh on every call, as
  `squarings` repeated squarings of the small (features, features) matrix W^T W, which
  raises it to the power 2^squarings, so the top right singular vector v emerges even when
  the top singular values are close (a fresh initialisation's are). As in their method no
  gradient flows through the singular vectors: sigma = |W v| with v held fixed, whose
  gradient is u v^T (u = W v / sigma), the exact derivative of sigma(W).

  Args:
    kernel: (..., features), a dense or conv kernel.
    squarings: how many times W^T W is squared.

  Returns:
    The scalar sigma(W).
  """
  w = kernel.reshape(-1, kernel.shape[-1])  # (fan_in, features)
  power = jax.lax.stop_gradient(w.T @ w)  # (features, features)
  for _ in range(squarings):
    power = power @ power
    power = power / (jnp.max(jnp.abs(power)) + 1e-30)  # rescaled: only the direction matters
  # power is now close to c v v^T: its largest column points along v.
  column = power[:, jnp.argmax(jnp.sum(jnp.square(power), 0))]  # (features,)
  v = column / (jnp.linalg.norm(column) + 1e-30)
  return jnp.linalg.norm(w @ v)


class CriticConv(nn.Module):
  """A SAME-padded convolution whose kernel is divided by its spectral norm when `spectral`."""

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  spectral: bool = False

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), self.kernel_size + (x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    if self.spectral:
      kernel = kernel / spectral_norm(kernel)
    y = jax.lax.conv_general_dilated(x, kernel, self.strides, "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias  # (batch, H / stride, W / stride, features)


class CriticDense(nn.Module):
  """A dense layer whose kernel is divided by its spectral norm when `spectral`."""

  features: int
  spectral: bool = False

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    if self.spectral:
      kernel = kernel / spectral_norm(kernel)
    return x @ kernel + bias


class ConvGenerator(nn.Module):
  """z -> 2x2 feature map -> two stride-2 transposed convs -> 8x8 image in [-1, 1] (conv_arch "small")."""

  features: int
  channels: int = 1

  @nn.compact
  def __call__(self, z):
    h = nn.relu(nn.Dense(2 * 2 * 2 * self.features)(z))
    h = h.reshape(z.shape[0], 2, 2, 2 * self.features)  # (batch, 2, 2, 2f)
    h = nn.relu(nn.ConvTranspose(self.features, (4, 4), strides=(2, 2))(h))  # (batch, 4, 4, f)
    return jnp.tanh(nn.ConvTranspose(self.channels, (4, 4), strides=(2, 2))(h))  # (batch, 8, 8, c)


class ConvDiscriminator(nn.Module):
  """(packed) 8x8 images -> two stride-2 convs -> one logit / critic value per example (conv_arch "small").

  No normalisation layer: batch statistics would couple examples, which WGAN-GP's
  per-example gradient penalty forbids.
  """

  features: int

  @nn.compact
  def __call__(self, x):
    h = nn.leaky_relu(nn.Conv(self.features, (3, 3), strides=(2, 2))(x), 0.2)  # (batch, 4, 4, f)
    h = nn.leaky_relu(nn.Conv(2 * self.features, (3, 3), strides=(2, 2))(h), 0.2)  # (batch, 2, 2, 2f)
    return nn.Dense(1)(h.reshape(h.shape[0], -1))[:, 0]  # (batch,)


class DCGANGenerator(nn.Module):
  """z (and a one-hot label) -> 4x4 feature map -> stride-2 transposed conv -> 3x3 conv -> 8x8 image in [-1, 1]."""

  features: int
  channels: int = 1
  num_classes: int = 0  # > 0: the generator also reads a label

  @nn.compact
  def __call__(self, z, labels=None):
    if self.num_classes:
      z = jnp.concatenate([z, jax.nn.one_hot(labels, self.num_classes, dtype=z.dtype)], -1)  # (batch, latent + K)
    h = nn.relu(nn.Dense(4 * 4 * 2 * self.features)(z))
    h = h.reshape(z.shape[0], 4, 4, 2 * self.features)  # (batch, 4, 4, 2f)
    h = nn.relu(nn.ConvTranspose(self.features, (4, 4), strides=(2, 2))(h))  # (batch, 8, 8, f)
    return jnp.tanh(nn.Conv(self.channels, (3, 3))(h))  # (batch, 8, 8, c)


class DCGANDiscriminator(nn.Module):
  """(packed) 8x8 images -> two stride-2 convs -> one logit / critic value per example.

  No normalisation layer: batch statistics would couple examples, which WGAN-GP's
  per-example gradient penalty forbids. With `num_classes` > 0 it is a projection
  discriminator: the features phi(x) before the last layer also meet a learned class
  embedding, D(x, y) = w . phi(x) + b + embed(y) . phi(x).
  """

  features: int
  spectral: bool = False
  num_classes: int = 0

  @nn.compact
  def __call__(self, x, labels=None):
    f, sn = self.features, self.spectral
    h = nn.leaky_relu(CriticConv(f, (3, 3), (2, 2), spectral=sn)(x), 0.2)  # (batch, 4, 4, f)
    h = nn.leaky_relu(CriticConv(2 * f, (3, 3), (2, 2), spectral=sn)(h), 0.2)  # (batch, 2, 2, 2f)
    phi = h.reshape(h.shape[0], -1)  # (batch, 8f)
    out = CriticDense(1, spectral=sn)(phi)[:, 0]  # (batch,)
    if self.num_classes:
      embed = nn.Embed(self.num_classes, phi.shape[-1], name="class_embed")(labels)  # (batch, 8f)
      out = out + jnp.sum(embed * phi, -1)
    return out


# ---------------------------------------------------------------------------------------
# Packing, losses and the gradient penalty.


def pack(x: jax.Array, m: int) -> jax.Array:
  """PacGAN packing: m consecutive samples become one example, concatenated on the last axis.

  Args:
    x: (batch, *features) with batch divisible by m; points (batch, d) or images
      (batch, H, W, C).
    m: the packing degree.

  Returns:
    (batch // m, ..., m * last): points (batch/m, m*d), images (batch/m, H, W, m*C).
  """
  if m == 1:
    return x
  grouped = x.reshape((x.shape[0] // m, m) + x.shape[1:])  # (batch/m, m, *features)
  grouped = jnp.moveaxis(grouped, 1, -2)  # (batch/m, *features[:-1], m, last)
  return grouped.reshape(grouped.shape[:-2] + (m * x.shape[-1],))


def gradient_penalty(critic, real: jax.Array, fake: jax.Array, key: jax.Array, weight: float) -> jax.Array:
  """WGAN-GP's penalty: weight * E (||grad_x critic(x_hat)||_2 - 1)^2.

  Args:
    critic: maps a batch (n, ...) to values (n,); examples must not interact.
    real: (n, ...) real examples (packed, if packing).
    fake: (n, ...) generated examples of the same shape.
    key: draws the interpolation weights eps ~ U[0, 1], one per example.
    weight: lambda.

  Returns:
    The scalar penalty.
  """
  eps = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1))  # (n, 1, ...)
  x_hat = eps * real + (1.0 - eps) * fake
  # Examples are independent, so the gradient of the sum is each example's own gradient.
  grads = jax.grad(lambda x: jnp.sum(critic(x)))(x_hat)  # (n, ...)
  norms = jnp.sqrt(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), -1))  # (n,)
  return weight * jnp.mean(jnp.square(norms - 1.0))


def clip_weights(params, c: float):
  """WGAN's weight clipping: every critic parameter into [-c, c]."""
  return jax.tree.map(lambda p: jnp.clip(p, -c, c), params)


def discriminator_loss(loss: str, d_real: jax.Array, d_fake: jax.Array) -> jax.Array:
  """The discriminator / critic objective (before any gradient penalty), to minimise."""
  if loss == "gan":
    # -log s(D(x)) - log(1 - s(D(G(z)))), with log(1 - s(t)) = -softplus(t).
    return jnp.mean(jax.nn.softplus(-d_real)) + jnp.mean(jax.nn.softplus(d_fake))
  if loss == "hinge":
    return jnp.mean(jax.nn.relu(1.0 - d_real)) + jnp.mean(jax.nn.relu(1.0 + d_fake))
  return jnp.mean(d_fake) - jnp.mean(d_real)


def generator_loss(loss: str, d_fake: jax.Array) -> jax.Array:
  """The generator objective, to minimise (non-saturating for `gan`; -E D(G(z)) for the others)."""
  if loss == "gan":
    return jnp.mean(jax.nn.softplus(-d_fake))  # -log s(D(G(z)))
  return -jnp.mean(d_fake)


# ---------------------------------------------------------------------------------------
# The models of a config, their samples and the scores of the samples.


class Models(NamedTuple):
  """The generator and discriminator modules of one config."""

  gen: nn.Module
  disc: nn.Module


def is_image_dataset(dataset: str) -> bool:
  """Whether `dataset` holds 8x8 images (conv pair) rather than 2D points (MLP pair)."""
  return dataset in IMAGE_DATASETS


def make_models(config) -> Models:
  """The MLP pair for 2D points, the conv pair for 8x8 images (conditional when `config.conditional`)."""
  if is_image_dataset(config.dataset):
    if config.conv_arch == "small":
      return Models(ConvGenerator(config.conv_features, IMAGE_SHAPE[-1]), ConvDiscriminator(config.conv_features))
    num_classes = NUM_CLASSES if config.conditional else 0
    return Models(DCGANGenerator(config.conv_features, IMAGE_SHAPE[-1], num_classes),
                  DCGANDiscriminator(config.conv_features, config.spectral_norm, num_classes))
  if config.disc_layer == "relu":
    disc = ReLUDiscriminator(config.disc_width, config.disc_depth)
  else:
    disc = MLPDiscriminator(config.disc_width, config.disc_depth, config.maxout_pieces)
  return Models(MLPGenerator(config.gen_width, config.gen_depth), disc)


def real_examples(batch, dataset: str) -> jax.Array:
  """The batch's examples as floats: points as they are, images scaled to [-1, 1]."""
  if is_image_dataset(dataset):
    return batch["image"].astype(jnp.float32) / 127.5 - 1.0  # (batch, 8, 8, 1)
  return batch["point"].astype(jnp.float32)  # (batch, 2)


def generate(gen: nn.Module, params, key: jax.Array, n: int, latent_dim: int, labels=None) -> jax.Array:
  """n samples of the generator with parameters `params` (the 'gen' group).

  Args:
    gen: the generator module.
    params: its parameters.
    key: draws the latent codes.
    n: number of samples.
    latent_dim: dimension of z.
    labels: (n,) int class labels for a conditional generator, else None.

  Returns:
    (n, 2) points or (n, 8, 8, 1) images in [-1, 1].
  """
  z = jax.random.normal(key, (n, latent_dim))  # (n, latent)
  return gen.apply(params, z) if labels is None else gen.apply(params, z, labels)


def cycling_labels(n: int) -> jax.Array:
  """(n,) labels 0, 1, ..., 9, 0, 1, ...: what a conditional generator is asked for when scored."""
  return jnp.arange(n, dtype=jnp.int32) % NUM_CLASSES


def coverage(config, gen_params, key: jax.Array) -> modes_lib.Coverage:
  """Mode coverage of `config.eval_samples` generated points on a toy2d mixture (pure; vmappable).

  Args:
    config: the experiment config; config.dataset must be a key of toy2d.MIXTURES.
    gen_params: the generator's parameters (params['gen']).
    key: draws the latent codes.

  Returns:
    research.metrics.modes.Coverage.
  """
  centres, std = toy2d.MIXTURES[config.dataset]
  samples = generate(make_models(config).gen, gen_params, key, config.eval_samples, config.latent_dim)
  return modes_lib.mode_coverage(samples, jnp.asarray(centres), std)


def generate_images(config, gen_params, key: jax.Array, n: int) -> np.ndarray:
  """n generated digits as float32 in [0, 1] (a conditional generator is asked for labels cycling 0..9).

  Args:
    config: the experiment config (an image dataset).
    gen_params: the generator's parameters (params['gen']).
    key: draws the latent codes.
    n: number of images.

  Returns:
    (n, 8, 8, 1) numpy float32.
  """
  gen = make_models(config).gen
  labels = cycling_labels(n) if config.conditional else None
  draw = jax.jit(lambda p, k, y: generate(gen, p, k, n, config.latent_dim, y))
  return np.asarray((draw(gen_params, key, labels) + 1.0) / 2.0)
