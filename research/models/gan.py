"""GANs: non-saturating GAN, WGAN with weight clipping, WGAN-GP, and PacGAN packing.

    task = make_task(config)            # a research.train.Task with its own train_step
    run = research.train.train(task, config, workdir, research.data.load("ring8"))

Two architectures, chosen by the data: an MLP pair for 2D points (toy2d: ring8, grid25,
swissroll; the VEEGAN/PacGAN setup of a ReLU MLP generator and a LinearMaxout
discriminator, or with `disc_layer = "relu"` the ReLU MLP critic of Gulrajani et al.'s toy
experiments) and a small conv pair for 8x8 images (digits, pixels scaled to [-1, 1]).

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
PacGAN (Lin et al.): with `pack` m > 1 the discriminator judges m samples at once,
concatenated along the feature (points) or channel (images) axis; a batch of B samples
becomes B / m packed examples, real packed with real and generated with generated.

Params are {'gen': ..., 'disc': ...}, each group with its own optimizer state. One train
step takes n_critic batches (the loop hands it batch_size * n_critic rows), makes n_critic
critic updates in a `lax.scan`, then one generator update.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from research import optim
from research.data import toy2d
from research.metrics import modes as modes_lib
from research.checks import ConfigError, check_choice, check_positive
from research.train.step import TrainState, apply_gradients
from research.train.task import Task

LOSSES = ("gan", "wgan", "wgan_gp")
DISC_LAYERS = ("maxout", "relu")  # hidden layers of the MLP discriminator
POINT_DATASETS = toy2d.NAMES
IMAGE_DATASETS = ("digits",)
IMAGE_SHAPE = (8, 8, 1)
SAMPLE_IMAGES = 64  # images in the sample grid


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


class ConvGenerator(nn.Module):
  """z -> 2x2 feature map -> two stride-2 transposed convs -> 8x8 image in [-1, 1]."""

  features: int
  channels: int = 1

  @nn.compact
  def __call__(self, z):
    h = nn.relu(nn.Dense(2 * 2 * 2 * self.features)(z))
    h = h.reshape(z.shape[0], 2, 2, 2 * self.features)  # (batch, 2, 2, 2f)
    h = nn.relu(nn.ConvTranspose(self.features, (4, 4), strides=(2, 2))(h))  # (batch, 4, 4, f)
    return jnp.tanh(nn.ConvTranspose(self.channels, (4, 4), strides=(2, 2))(h))  # (batch, 8, 8, c)


class ConvDiscriminator(nn.Module):
  """(packed) 8x8 images -> two stride-2 convs -> one logit / critic value per example.

  No normalisation layer: batch statistics would couple examples, which WGAN-GP's
  per-example gradient penalty forbids.
  """

  features: int

  @nn.compact
  def __call__(self, x):
    h = nn.leaky_relu(nn.Conv(self.features, (3, 3), strides=(2, 2))(x), 0.2)  # (batch, 4, 4, f)
    h = nn.leaky_relu(nn.Conv(2 * self.features, (3, 3), strides=(2, 2))(h), 0.2)  # (batch, 2, 2, 2f)
    return nn.Dense(1)(h.reshape(h.shape[0], -1))[:, 0]  # (batch,)


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
  return jnp.mean(d_fake) - jnp.mean(d_real)


def generator_loss(loss: str, d_fake: jax.Array) -> jax.Array:
  """The generator objective, to minimise (non-saturating for `gan`)."""
  if loss == "gan":
    return jnp.mean(jax.nn.softplus(-d_fake))  # -log s(D(G(z)))
  return -jnp.mean(d_fake)


# ---------------------------------------------------------------------------------------
# The task.


class CriticCarry(NamedTuple):
  """What the critic scan carries: the critic's parameters and optimizer state."""

  params: Any
  opt_state: Any


class Models(NamedTuple):
  """The generator and discriminator modules of one config."""

  gen: nn.Module
  disc: nn.Module


def is_image_dataset(dataset: str) -> bool:
  """Whether `dataset` holds 8x8 images (conv pair) rather than 2D points (MLP pair)."""
  return dataset in IMAGE_DATASETS


def make_models(config) -> Models:
  """The MLP pair for 2D points, the conv pair for 8x8 images."""
  if is_image_dataset(config.dataset):
    return Models(ConvGenerator(config.conv_features, IMAGE_SHAPE[-1]), ConvDiscriminator(config.conv_features))
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


def generate(gen: nn.Module, params, key: jax.Array, n: int, latent_dim: int) -> jax.Array:
  """n samples of the generator with parameters `params` (the 'gen' group)."""
  z = jax.random.normal(key, (n, latent_dim))  # (n, latent)
  return gen.apply(params, z)


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


def make_task(config) -> Task:
  """The GAN family's plug-in for research.train.train.

  Args:
    config: an experiment config (experiments/gan.py) with dataset, loss, n_critic, pack,
      latent_dim, the architecture fields, clip, gp_weight, eval_samples, batch_size,
      steps and optimizer (one block, used by both the generator and the critic).

  Returns:
    A Task with `train_step`, `evaluate` (mode coverage on mixtures) and `sample`.
  """
  models = make_models(config)
  loss_name, n_critic, m, batch_size = config.loss, config.n_critic, config.pack, config.batch_size
  latent_dim, dataset = config.latent_dim, config.dataset
  # The critic updates n_critic times per step: its schedule spans steps * n_critic updates.
  tx = {"gen": optim.make(config.optimizer, config.steps),
        "disc": optim.make(config.optimizer, config.steps * n_critic)}

  def init(key, batch):
    k_gen, k_disc = jax.random.split(key)
    z = jnp.zeros((m, latent_dim))  # (pack, latent)
    real = pack(real_examples(batch, dataset)[:m], m)  # (1, ...) one packed example
    return {"gen": models.gen.init(k_gen, z), "disc": models.disc.init(k_disc, real)}

  def critic_loss(disc_params, real, fake, key, hparams):
    critic = lambda x: models.disc.apply(disc_params, x)
    real, fake = pack(real, m), pack(fake, m)  # (batch/m, ...)
    d_real, d_fake = critic(real), critic(fake)  # (batch/m,), (batch/m,)
    value = discriminator_loss(loss_name, d_real, d_fake)
    aux = {"d_real": jnp.mean(d_real), "d_fake": jnp.mean(d_fake)}
    if loss_name == "wgan_gp":
      penalty = gradient_penalty(critic, real, fake, key, hparams["gp_weight"])
      value, aux = value + penalty, {**aux, "gradient_penalty": penalty}
    return value, aux

  def train_step(state: TrainState, batch, key):
    k_critic, k_gen = jax.random.split(key)
    real = real_examples(batch, dataset)
    real = real.reshape((n_critic, batch_size) + real.shape[1:])  # (n_critic, batch, ...)
    gen_params = state.params["gen"]

    # 1. n_critic critic updates against the current generator.
    def critic_update(carry: CriticCarry, xs):
      real_i, i = xs
      k_z, k_penalty = jax.random.split(jax.random.fold_in(k_critic, i))
      fake = generate(models.gen, gen_params, k_z, batch_size, latent_dim)  # (batch, ...)
      (value, aux), grads = jax.value_and_grad(critic_loss, has_aux=True)(carry.params, real_i, fake, k_penalty,
                                                                          state.hparams)
      params, opt_state, health = apply_gradients(tx["disc"], carry.params, carry.opt_state, grads)
      if loss_name == "wgan":
        params = clip_weights(params, state.hparams["clip"])
      return CriticCarry(params, opt_state), {"disc_loss": value, **aux, **health}

    critic, per_critic = jax.lax.scan(critic_update, CriticCarry(state.params["disc"], state.opt_state["disc"]),
                                      (real, jnp.arange(n_critic)))

    # 2. One generator update against the updated critic.
    def gen_objective(params):
      fake = generate(models.gen, params, k_gen, batch_size, latent_dim)
      return generator_loss(loss_name, models.disc.apply(critic.params, pack(fake, m)))

    gen_loss, gen_grads = jax.value_and_grad(gen_objective)(gen_params)
    gen_params, gen_opt_state, gen_health = apply_gradients(tx["gen"], gen_params, state.opt_state["gen"], gen_grads)

    disc_metrics = {k: jnp.mean(v) for k, v in per_critic.items()}
    disc_last = {k: v[-1] for k, v in per_critic.items()}
    metrics = {"loss": disc_metrics["disc_loss"], "gen_loss": gen_loss, "disc_loss": disc_metrics["disc_loss"],
               "d_real": disc_metrics["d_real"], "d_fake": disc_metrics["d_fake"]}
    if loss_name != "gan":
      metrics["wasserstein_estimate"] = disc_metrics["d_real"] - disc_metrics["d_fake"]
    if loss_name == "wgan_gp":
      metrics["gradient_penalty"] = disc_metrics["gradient_penalty"]
    # Health: per group, and global norms over both groups (the loop's standard names).
    for name in ("grad_norm", "param_norm", "update_norm"):
      metrics[f"gen/{name}"] = gen_health[name]
      metrics[f"disc/{name}"] = disc_last[name]
      metrics[name] = jnp.sqrt(jnp.square(gen_health[name]) + jnp.square(disc_last[name]))
    params = {"gen": gen_params, "disc": critic.params}
    opt_state = {"gen": gen_opt_state, "disc": critic.opt_state}
    return state.replace(params=params, opt_state=opt_state), metrics

  def evaluate(params, key, data):
    del data  # coverage is measured against the known mixture, not a held-out split
    if dataset not in toy2d.MIXTURES:
      return {}
    result = jax.jit(lambda p, k: coverage(config, p, k))(params["gen"], key)
    return {"modes_captured": int(result.modes_captured), "modes_total": int(result.counts.shape[0]),
            "high_quality_fraction": float(result.high_quality_fraction),
            "eval_samples": config.eval_samples}

  def sample(params, key):
    if is_image_dataset(dataset):
      images = generate(models.gen, params["gen"], key, SAMPLE_IMAGES, latent_dim)
      return {"samples": (images + 1.0) / 2.0}  # (64, 8, 8, 1) in [0, 1]
    return {"samples": generate(models.gen, params["gen"], key, config.eval_samples, latent_dim)}  # (n, 2)

  gen_learning_rate = optim.learning_rate_fn(config.optimizer, config.steps)
  return Task(init=init, tx=tx, train_step=train_step, evaluate=evaluate, sample=sample,
              learning_rate=lambda opt_state, step: gen_learning_rate(opt_state["gen"], step),
              batches_per_step=n_critic, hparams={"gp_weight": config.gp_weight, "clip": config.clip})


def check_config(config, choices: Sequence[str] = POINT_DATASETS + IMAGE_DATASETS) -> None:
  """Raises research.train.ConfigError on a bad GAN field (the shared fields are checked by the loop).

  Args:
    config: the experiment config.
    choices: the datasets this family accepts.
  """
  check_choice("dataset", config.dataset, choices)
  check_choice("loss", config.loss, LOSSES)
  check_choice("disc_layer", config.disc_layer, DISC_LAYERS)
  for name in ("n_critic", "pack", "latent_dim", "gen_width", "gen_depth", "disc_width", "disc_depth",
               "maxout_pieces", "conv_features", "eval_samples", "clip"):
    check_positive(name, config[name])
  check_positive("gp_weight", config.gp_weight, allow_zero=True)
  check_positive("batch_size", config.batch_size)
  if config.batch_size % config.pack:
    raise ConfigError(f"batch_size {config.batch_size} is not divisible by pack {config.pack}")
