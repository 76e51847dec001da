"""The StyleGAN family's plug-in for the loop: two optimizers, lazy R1 and path-length regularisation.

    task = make_task(config)            # a research.train.Task with its own train_step
    run = research.train.train(task, config, workdir, images_only(research.data.load("digits", "train")))

The modules, losses, regularisers and samplers are research/models/stylegan.py. Params are
{'gen', 'disc', 'w_avg'}: the generator and the discriminator, each with its own optimizer state,
and the mean w tracked over training (an EMA of the batches' w at rate 1 - `w_avg_beta`, written
by the step, never by an optimizer). The loop's EMA (config.ema_decay) averages all three, so
evaluation and samples use the EMA generator with the average of the tracked mean. The running
mean of the path lengths lives in TrainState.extra.

One step: a discriminator update (the logistic loss, plus R1 on the reals at steps divisible by
`r1_every`, scaled by it), then a generator update (the non-saturating loss, plus the path-length
penalty at steps divisible by `pl_every`, scaled by it), each regulariser chosen inside the compiled
step by `lax.cond` on the step, so one program serves every step. Style mixing, R1's gamma, the
path-length weight and the truncation psi are traced hyperparameters (a sweep varies them without
recompiling).

Samples are scored in the digits feature spaces (research.tasks.classifier.digits_sample_metrics)
on digits, and in a pixel space (4x4 average-pooled pixels, `shapes_pixel_space`) on shapes. The
perceptual path length (PPL) is measured in W between images at t and t + 1e-4 along lines between
two ws, in the MLP digits classifier's feature space on digits and in the pixel space on shapes.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research import data as data_lib
from research import optim
from research.checks import ConfigError, check_choice, check_positive
from research.metrics import fid
from research.metrics.features import FeatureSpace
from research.models import stylegan as sg
from research.tasks import classifier as classifier_tasks
from research.train.step import TrainState, apply_gradients
from research.train.task import Task

# Dataset -> (resolution, image channels).
DATASETS = {"digits": (8, 1), "shapes": (32, 3)}
PPL_EPS = 1e-4
PIXEL_POOL = 4  # the shapes pixel space averages 4x4 pixels: 32x32x3 -> 192 features
SHAPES_REFERENCE = 2000  # training images of the shapes pixel-space reference


def model_config(config) -> sg.StyleGANConfig:
  """The architecture of an experiment config (experiments/stylegan.py)."""
  resolution, num_channels = DATASETS[config.dataset]
  return sg.StyleGANConfig(latent_dim=config.latent_dim, w_dim=config.w_dim, mapping_layers=config.mapping_layers,
                           channels=tuple(config.channels), resolution=resolution, num_channels=num_channels,
                           style_mode=config.style_mode, mbstd_group=config.mbstd_group,
                           mapping_lr_mul=config.mapping_lr_mul)


def images_only(split) -> dict:
  """The image column of a data split (captions and attributes are not needed here)."""
  return {"image": split["image"]}


def real_examples(batch) -> jax.Array:
  """uint8 images -> float32 in [-1, 1]."""
  return batch["image"].astype(jnp.float32) / 127.5 - 1.0  # (batch, R, R, C)


def to_unit(images) -> jax.Array:
  """Generator output in about [-1, 1] -> [0, 1], clipped."""
  return jnp.clip((images + 1.0) / 2.0, 0.0, 1.0)


def make_task(config) -> Task:
  """The StyleGAN family's plug-in for research.train.train.

  Args:
    config: an experiment config (experiments/stylegan.py).

  Returns:
    A Task with `train_step`, a pure `evaluate` (the `num_samples` truncated samples and the PPL
    image pairs; `summarize` scores them), `sample` and the traced hyperparameters mixing_prob,
    r1_gamma, pl_weight and truncation_psi.
  """
  cfg = model_config(config)
  gen, disc = sg.Generator(cfg), sg.Discriminator(cfg)
  batch_size, r1_every, pl_every = config.batch_size, config.r1_every, config.pl_every
  disc_optimizer = config.optimizer.copy_and_resolve_references()
  disc_optimizer.learning_rate = config.optimizer.learning_rate * config.disc_lr_ratio
  tx = {"gen": optim.make(config.optimizer, config.steps), "disc": optim.make(disc_optimizer, config.steps)}
  space = _feature_space(config.dataset)

  def init(key, batch):
    k_gen, k_disc = jax.random.split(key)
    real = real_examples(batch)[:1]  # (1, R, R, C)
    return {"gen": gen.init(k_gen, jnp.zeros((1, cfg.latent_dim))), "disc": disc.init(k_disc, real),
            "w_avg": jnp.zeros((cfg.w_dim,))}

  def init_extra(key, batch):
    del key, batch
    return {"pl_mean": jnp.zeros(())}

  def styles(gen_params, key, hparams):
    """Mixed ws of two latents per example, and the first latents' w (what the mean w tracks)."""
    k_z1, k_z2, k_mix = jax.random.split(key, 3)
    w1 = gen.apply(gen_params, jax.random.normal(k_z1, (batch_size, cfg.latent_dim)), method=sg.Generator.map)
    w2 = gen.apply(gen_params, jax.random.normal(k_z2, (batch_size, cfg.latent_dim)), method=sg.Generator.map)
    return sg.mix_styles(k_mix, w1, w2, cfg.num_ws, hparams["mixing_prob"]), w1  # (batch, num_ws, w_dim)

  def synthesize(gen_params, ws, key):
    return gen.apply(gen_params, ws, method=sg.Generator.synthesize, rngs={"noise": key})

  def train_step(state: TrainState, batch, key):
    k_disc, k_gen = jax.random.split(key)
    hparams, step = state.hparams, state.step
    real = real_examples(batch)  # (batch, R, R, C)
    gen_params, disc_params = state.params["gen"], state.params["disc"]

    # 1. The discriminator, with lazy R1 on the reals.
    k_styles, k_noise = jax.random.split(k_disc)
    ws, _ = styles(gen_params, k_styles, hparams)
    fake = synthesize(gen_params, ws, k_noise)  # (batch, R, R, C)

    def disc_objective(params):
      d_real, d_fake = disc.apply(params, real), disc.apply(params, fake)  # (batch,), (batch,)
      r1 = jax.lax.cond(step % r1_every == 0, lambda: sg.r1_penalty(lambda x: disc.apply(params, x), real),
                        lambda: jnp.zeros(()))
      penalty = r1_every * hparams["r1_gamma"] / 2.0 * r1
      return sg.discriminator_loss(d_real, d_fake) + penalty, {"d_real": jnp.mean(d_real),
                                                                "d_fake": jnp.mean(d_fake), "r1": r1}

    (disc_loss, disc_aux), grads = jax.value_and_grad(disc_objective, has_aux=True)(disc_params)
    disc_params, disc_opt_state, disc_health = apply_gradients(tx["disc"], disc_params, state.opt_state["disc"],
                                                               grads)

    # 2. The generator against the updated discriminator, with the lazy path-length penalty.
    k_styles, k_noise, k_pl, k_pl_noise = jax.random.split(k_gen, 4)

    def gen_objective(params):
      ws, w_first = styles(params, k_styles, hparams)  # the mapping network trains through ws
      loss = sg.generator_loss(disc.apply(disc_params, synthesize(params, ws, k_noise)))

      def path_length():
        pl = sg.path_length_penalty(lambda v: synthesize(params, v, k_pl_noise), ws, k_pl,
                                    state.extra["pl_mean"], config.pl_decay)
        return pl.penalty, pl.pl_mean

      penalty, pl_mean = jax.lax.cond(step % pl_every == 0, path_length,
                                      lambda: (jnp.zeros(()), state.extra["pl_mean"]))
      return loss + pl_every * hparams["pl_weight"] * penalty, (loss, penalty, pl_mean, w_first)

    (_, (gen_loss, pl_penalty, pl_mean, w_first)), grads = jax.value_and_grad(gen_objective, has_aux=True)(gen_params)
    gen_params, gen_opt_state, gen_health = apply_gradients(tx["gen"], gen_params, state.opt_state["gen"], grads)

    # 3. The tracked mean w (of the generator that drew this batch).
    w_avg = jnp.mean(w_first, 0) + config.w_avg_beta * (state.params["w_avg"] - jnp.mean(w_first, 0))

    metrics = {"loss": disc_loss, "disc_loss": disc_loss, "gen_loss": gen_loss, **disc_aux,
               "pl_penalty": pl_penalty, "pl_mean": pl_mean}
    for name in ("grad_norm", "param_norm", "update_norm"):
      metrics[f"gen/{name}"] = gen_health[name]
      metrics[f"disc/{name}"] = disc_health[name]
      metrics[name] = jnp.sqrt(jnp.square(gen_health[name]) + jnp.square(disc_health[name]))
    params = {"gen": gen_params, "disc": disc_params, "w_avg": jax.lax.stop_gradient(w_avg)}
    opt_state = {"gen": gen_opt_state, "disc": disc_opt_state}
    return state.replace(params=params, opt_state=opt_state, extra={"pl_mean": pl_mean}), metrics

  def draw(params, key, hparams):
    images = sg.generate(gen, params["gen"], params["w_avg"], key, config.num_samples, hparams["truncation_psi"])
    return to_unit(images)  # (n, R, R, C) in [0, 1]

  def evaluate(params, key, data, hparams):
    del data  # FID is measured against the training images' reference
    k_samples, k_ppl = jax.random.split(key)
    pair_a, pair_b = sg.path_length_pairs(gen, params["gen"], params["w_avg"], k_ppl, config.num_samples,
                                          hparams["truncation_psi"], PPL_EPS)
    return {"samples": draw(params, k_samples, hparams), "ppl_a": to_unit_unclipped(pair_a),
            "ppl_b": to_unit_unclipped(pair_b)}

  def summarize(arrays):
    images = np.asarray(arrays["samples"], np.float32)
    metrics = sample_metrics(config.dataset, images, space)
    feats_a = space.features(np.asarray(arrays["ppl_a"]))
    feats_b = space.features(np.asarray(arrays["ppl_b"]))
    metrics["ppl"] = sg.perceptual_path_length(feats_a, feats_b, PPL_EPS)
    return metrics

  def sample(params, key, hparams):
    return {"samples": draw(params, key, hparams)}

  gen_learning_rate = optim.learning_rate_fn(config.optimizer, config.steps)
  return Task(init=init, tx=tx, train_step=train_step, evaluate=evaluate, evaluate_pure=True, summarize=summarize,
              sample=sample, init_extra=init_extra,
              learning_rate=lambda opt_state, step: gen_learning_rate(opt_state["gen"], step),
              hparams={"mixing_prob": config.mixing_prob, "r1_gamma": config.r1_gamma,
                       "pl_weight": config.pl_weight, "truncation_psi": config.truncation_psi})


def to_unit_unclipped(images) -> jax.Array:
  """Generator output -> [0, 1] scale without clipping: a PPL pair differs by less than a clip would hide."""
  return (images + 1.0) / 2.0


# ---------------------------------------------------------------------------------------
# Scoring samples.


def _pool_pixels(params, images):
  del params
  b, h, w, c = images.shape
  pooled = images.reshape(b, h // PIXEL_POOL, PIXEL_POOL, w // PIXEL_POOL, PIXEL_POOL, c).mean((2, 4))
  return None, pooled.reshape(b, -1)  # (batch, H/4 * W/4 * C)


def shapes_pixel_space() -> FeatureSpace:
  """The shapes' feature space: 4x4 average-pooled pixels (192 features), no class head."""
  size = DATASETS["shapes"][0]
  return FeatureSpace(f"shapes_pixels_pool{PIXEL_POOL}", _pool_pixels, {}, (size, size, 3))


def _feature_space(dataset: str) -> FeatureSpace | None:
  """The space PPL is measured in (built lazily for digits: the classifier is trained on first use)."""
  return shapes_pixel_space() if dataset == "shapes" else _DigitsSpace()


class _DigitsSpace:
  """The MLP digits classifier's feature space, loaded the first time it is used."""

  def features(self, images) -> np.ndarray:
    return classifier_tasks.digits_classifier().features(images)


def metric_names(dataset: str) -> tuple[str, ...]:
  """The scalar metrics `make_task`'s evaluation reports on `dataset`: `sample_metrics`' and the PPL."""
  names = classifier_tasks.digits_sample_metric_names() if dataset == "digits" else fid.sample_metric_names()
  return names + ("ppl",)


def sample_metrics(dataset: str, images: np.ndarray, space=None) -> dict:
  """FID, KID, precision/recall beside real held-out images' own at the same count (fid.sample_metrics).

  Digits: both digits feature spaces with class shares (classifier.digits_sample_metrics); shapes:
  the pixel space against SHAPES_REFERENCE training images, beside the test images.
  """
  if dataset == "digits":
    return classifier_tasks.digits_sample_metrics(images)
  space = space if isinstance(space, FeatureSpace) else shapes_pixel_space()
  train, test = data_lib.load("shapes", "train"), data_lib.load("shapes", "test")
  ref = fid.reference(space, train["image"][:SHAPES_REFERENCE], "shapes/train")
  held_out = fid.reference(space, test["image"], "shapes/test")
  return fid.sample_metrics(images, space, ref, held_out)


def check_config(config, choices: Sequence[str] = tuple(DATASETS)) -> None:
  """Raises ConfigError on a bad StyleGAN field (the shared fields are checked by the loop)."""
  check_choice("dataset", config.dataset, choices)
  check_choice("style_mode", config.style_mode, sg.STYLE_MODES)
  for name in ("latent_dim", "w_dim", "mapping_layers", "mbstd_group", "mapping_lr_mul", "r1_every", "pl_every",
               "disc_lr_ratio", "batch_size"):
    check_positive(name, config[name])
  for name in ("r1_gamma", "pl_weight", "pl_decay"):
    check_positive(name, config[name], allow_zero=True)
  if not config.channels or any(c <= 0 for c in config.channels):
    raise ConfigError(f"channels must be positive widths, got {tuple(config.channels)}")
  resolution = DATASETS[config.dataset][0]
  levels = int(np.log2(resolution)) - 1
  if len(config.channels) != levels:
    raise ConfigError(f"channels must name {levels} widths for {config.dataset} (4x4 up to {resolution}x{resolution}), "
                      f"got {len(config.channels)}")
  for name in ("truncation_psi", "mixing_prob", "w_avg_beta"):
    if not 0.0 <= config[name] <= 1.0:
      raise ConfigError(f"{name} must be in [0, 1], got {config[name]}")
  if config.batch_size % min(config.mbstd_group, config.batch_size):
    raise ConfigError(f"batch_size {config.batch_size} is not divisible by mbstd_group {config.mbstd_group}")
  # Precision/recall's k-th nearest neighbour (k = 3) needs more samples than k.
  if config.num_samples < 4:
    raise ConfigError(f"num_samples must be at least 4, got {config.num_samples}")

