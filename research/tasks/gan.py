"""The GAN family's plug-in for the loop: two optimizers, n_critic critic updates per generator update.

    task = make_task(config)            # a research.train.Task with its own train_step
    run = research.train.train(task, config, workdir, research.data.load("ring8"))

The modules, losses and samplers are research/models/gan.py. Params are {'gen': ..., 'disc':
...}, each group with its own optimizer state. One train step takes n_critic batches (the loop
hands it batch_size * n_critic rows), makes n_critic critic updates in a `lax.scan`, then one
generator update. Digits samples are scored in the digits feature space
(research/tasks/classifier.py); points by mode coverage of the known mixture.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from research import optim
from research.checks import ConfigError, check_choice, check_positive
from research.data import toy2d
from research.models.gan import (CONV_ARCHS, DISC_LAYERS, IMAGE_DATASETS, LOSSES, NUM_CLASSES, POINT_DATASETS,
                                 clip_weights, coverage, cycling_labels, discriminator_loss, generate, generate_images,
                                 generator_loss, gradient_penalty, is_image_dataset, make_models, pack, real_examples)
from research.tasks import classifier as classifier_tasks
from research.train.step import TrainState, apply_gradients
from research.train.task import Task


class CriticCarry(NamedTuple):
  """What the critic scan carries: the critic's parameters and optimizer state."""

  params: Any
  opt_state: Any


def metric_names(config) -> tuple[str, ...]:
  """The scalar metrics `make_task(config)`'s evaluation reports."""
  if is_image_dataset(config.dataset):
    return classifier_tasks.digits_sample_metric_names() + (("label_accuracy",) if config.conditional else ())
  if config.dataset not in toy2d.MIXTURES:
    return ()
  return ("modes_captured", "modes_total", "high_quality_fraction", "eval_samples")


def make_task(config) -> Task:
  """The GAN family's plug-in for research.train.train.

  Args:
    config: an experiment config (experiments/gan.py) with dataset, loss, n_critic, pack,
      latent_dim, the architecture fields, conditional, spectral_norm, clip, gp_weight,
      eval_samples, num_samples, batch_size, steps, the optimizer block (the generator's;
      the critic's is the same with its learning rate times `disc_lr_ratio`).

  Returns:
    A Task with `train_step`, a pure `evaluate` (mode coverage on mixtures; on digits the
    `num_samples` generated images, whose FID, precision, recall and class shares `summarize`
    reports; the loop writes those scored images as the step's samples) and `sample`
    (`num_samples` images, or `eval_samples` points).
  """
  models = make_models(config)
  loss_name, n_critic, m, batch_size = config.loss, config.n_critic, config.pack, config.batch_size
  latent_dim, dataset = config.latent_dim, config.dataset
  conditional = is_image_dataset(dataset) and config.conditional
  disc_optimizer = config.optimizer.copy_and_resolve_references()
  disc_optimizer.learning_rate = config.optimizer.learning_rate * config.disc_lr_ratio
  # The critic updates n_critic times per step: its schedule spans steps * n_critic updates.
  tx = {"gen": optim.make(config.optimizer, config.steps),
        "disc": optim.make(disc_optimizer, config.steps * n_critic)}

  def disc_apply(disc_params, x, labels):
    return models.disc.apply(disc_params, x, labels) if conditional else models.disc.apply(disc_params, x)

  def fake_labels(key):
    # A conditional generator is asked for uniformly drawn digits (the training classes are balanced).
    return jax.random.randint(key, (batch_size,), 0, NUM_CLASSES) if conditional else None

  def init(key, batch):
    k_gen, k_disc = jax.random.split(key)
    z = jnp.zeros((m, latent_dim))  # (pack, latent)
    real = pack(real_examples(batch, dataset)[:m], m)  # (1, ...) one packed example
    if conditional:
      labels = jnp.zeros((m,), jnp.int32)
      return {"gen": models.gen.init(k_gen, z, labels), "disc": models.disc.init(k_disc, real, labels)}
    return {"gen": models.gen.init(k_gen, z), "disc": models.disc.init(k_disc, real)}

  def critic_loss(disc_params, real, real_labels, fake, fake_labels_, key, hparams):
    critic_real = lambda x: disc_apply(disc_params, x, real_labels)
    real, fake = pack(real, m), pack(fake, m)  # (batch/m, ...)
    d_real, d_fake = critic_real(real), disc_apply(disc_params, fake, fake_labels_)  # (batch/m,), (batch/m,)
    value = discriminator_loss(loss_name, d_real, d_fake)
    aux = {"d_real": jnp.mean(d_real), "d_fake": jnp.mean(d_fake)}
    if loss_name == "wgan_gp":
      # Interpolates keep the real images' labels (conditional runs), as in conditional WGAN-GP code.
      penalty = gradient_penalty(critic_real, real, fake, key, hparams["gp_weight"])
      value, aux = value + penalty, {**aux, "gradient_penalty": penalty}
    return value, aux

  def train_step(state: TrainState, batch, key):
    k_critic, k_gen = jax.random.split(key)
    real = real_examples(batch, dataset)
    real = real.reshape((n_critic, batch_size) + real.shape[1:])  # (n_critic, batch, ...)
    labels = batch["label"].astype(jnp.int32).reshape(n_critic, batch_size) if conditional \
        else jnp.zeros((n_critic, batch_size), jnp.int32)
    gen_params = state.params["gen"]

    # 1. n_critic critic updates against the current generator.
    def critic_update(carry: CriticCarry, xs):
      real_i, labels_i, i = xs
      k_update = jax.random.fold_in(k_critic, i)
      k_z, k_penalty = jax.random.split(k_update)
      y_fake = fake_labels(jax.random.fold_in(k_update, 1))  # its own stream: unconditional draws stay as they were
      fake = generate(models.gen, gen_params, k_z, batch_size, latent_dim, y_fake)  # (batch, ...)
      (value, aux), grads = jax.value_and_grad(critic_loss, has_aux=True)(
          carry.params, real_i, labels_i if conditional else None, fake, y_fake, k_penalty, state.hparams)
      params, opt_state, health = apply_gradients(tx["disc"], carry.params, carry.opt_state, grads)
      if loss_name == "wgan":
        params = clip_weights(params, state.hparams["clip"])
      return CriticCarry(params, opt_state), {"disc_loss": value, **aux, **health}

    critic, per_critic = jax.lax.scan(critic_update, CriticCarry(state.params["disc"], state.opt_state["disc"]),
                                      (real, labels, jnp.arange(n_critic)))

    # 2. One generator update against the updated critic.
    k_z, k_labels = jax.random.split(k_gen) if conditional else (k_gen, None)
    y_fake = fake_labels(k_labels) if conditional else None

    def gen_objective(params):
      fake = generate(models.gen, params, k_z, batch_size, latent_dim, y_fake)
      return generator_loss(loss_name, disc_apply(critic.params, pack(fake, m), y_fake))

    gen_loss, gen_grads = jax.value_and_grad(gen_objective)(gen_params)
    gen_params, gen_opt_state, gen_health = apply_gradients(tx["gen"], gen_params, state.opt_state["gen"], gen_grads)

    disc_metrics = {k: jnp.mean(v) for k, v in per_critic.items()}
    disc_last = {k: v[-1] for k, v in per_critic.items()}
    metrics = {"loss": disc_metrics["disc_loss"], "gen_loss": gen_loss, "disc_loss": disc_metrics["disc_loss"],
               "d_real": disc_metrics["d_real"], "d_fake": disc_metrics["d_fake"]}
    if loss_name in ("wgan", "wgan_gp"):
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

  def evaluate(params, key, data, hparams=None):
    # Pure (Task.evaluate_pure): a sweep's members draw their samples and count their modes in one
    # vmapped program; `summarize` scores the images on the host.
    del data  # coverage is measured against the known mixture, FID against the training digits
    del hparams  # the penalty weight and the clipping act on training only
    if is_image_dataset(dataset):
      labels = cycling_labels(config.num_samples) if conditional else None
      images = (generate(models.gen, params["gen"], key, config.num_samples, latent_dim, labels) + 1.0) / 2.0
      return {"samples": images}  # the loop writes exactly these as the step's samples
    if dataset not in toy2d.MIXTURES:
      return {}
    result = coverage(config, params["gen"], key)
    return {"modes_captured": result.modes_captured, "high_quality_fraction": result.high_quality_fraction,
            "counts": result.counts}

  def summarize(arrays):
    if is_image_dataset(dataset):
      images = np.asarray(arrays["samples"], np.float32)
      metrics = classifier_tasks.digits_sample_metrics(images)
      if conditional:
        # How often the generator draws the digit it was asked for, as the classifier reads it.
        asked = np.asarray(cycling_labels(config.num_samples))
        metrics["label_accuracy"] = float(np.mean(classifier_tasks.digits_classifier().predict(images) == asked))
      return metrics
    if dataset not in toy2d.MIXTURES:
      return {}
    return {"modes_captured": int(arrays["modes_captured"]), "modes_total": int(np.shape(arrays["counts"])[0]),
            "high_quality_fraction": float(arrays["high_quality_fraction"]), "eval_samples": config.eval_samples}

  def sample(params, key, hparams=None):
    del hparams  # training-only hyperparameters
    if is_image_dataset(dataset):
      return {"samples": generate_images(config, params["gen"], key, config.num_samples)}  # (n, 8, 8, 1) in [0, 1]
    return {"samples": generate(models.gen, params["gen"], key, config.eval_samples, latent_dim)}  # (n, 2)

  gen_learning_rate = optim.learning_rate_fn(config.optimizer, config.steps)
  return Task(init=init, tx=tx, train_step=train_step, evaluate=evaluate, evaluate_pure=True, summarize=summarize,
              sample=sample,
              learning_rate=lambda opt_state, step: gen_learning_rate(opt_state["gen"], step),
              batches_per_step=n_critic, hparams={"gp_weight": config.gp_weight, "clip": config.clip},
              picture_notes={"samples": f"the classes asked for: 0..{NUM_CLASSES - 1} in turn, in reading order"}
              if conditional else None)


def check_config(config, choices: Sequence[str] = POINT_DATASETS + IMAGE_DATASETS) -> None:
  """Raises research.train.ConfigError on a bad GAN field (the shared fields are checked by the loop).

  Args:
    config: the experiment config.
    choices: the datasets this family accepts.
  """
  check_choice("dataset", config.dataset, choices)
  check_choice("loss", config.loss, LOSSES)
  check_choice("disc_layer", config.disc_layer, DISC_LAYERS)
  check_choice("conv_arch", config.conv_arch, CONV_ARCHS)
  for name in ("n_critic", "pack", "latent_dim", "gen_width", "gen_depth", "disc_width", "disc_depth",
               "maxout_pieces", "conv_features", "eval_samples", "clip", "disc_lr_ratio"):
    check_positive(name, config[name])
  # Precision/recall's k-th nearest neighbour (k = 3) needs more samples than k.
  if config.num_samples < 4:
    raise ConfigError(f"num_samples must be at least 4, got {config.num_samples}")
  if config.conditional and not is_image_dataset(config.dataset):
    raise ConfigError(f"conditional needs labelled images ({', '.join(IMAGE_DATASETS)}), not {config.dataset}")
  if (config.conditional or config.spectral_norm) and is_image_dataset(config.dataset) \
      and config.conv_arch != "dcgan":
    raise ConfigError("conditional and spectral_norm need conv_arch dcgan")
  if config.conditional and config.pack > 1:
    raise ConfigError("conditional runs do not pack (PacGAN's packed examples would mix labels); set pack to 1 "
                      "or conditional to False")
  check_positive("gp_weight", config.gp_weight, allow_zero=True)
  check_positive("batch_size", config.batch_size)
  if config.batch_size % config.pack:
    raise ConfigError(f"batch_size {config.batch_size} is not divisible by pack {config.pack}")
