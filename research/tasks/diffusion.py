"""The diffusion family's plug-in for the loop: a U-Net or a DiT denoiser trained, sampled and scored.

    task = make_task(config, image_shape=(8, 8, 1), num_classes=10)   # a research.train.Task

The schedules, losses, update rules and samplers are research/models/diffusion.py, the
denoisers research/models/unet.py and research/models/dit.py; `config.model` picks the
denoiser, so the "diffusion" and "dit" families share this plug-in. Samples are scored in the
digits feature space (research/tasks/classifier.py).
"""

import jax
import jax.numpy as jnp
import numpy as np

from research import optim
from research.models import dit as dit_lib
from research.models import unet as unet_lib
from research.models.diffusion import (classifier_free_guidance, ddim_timesteps, loss, make_schedule, sample_ddim,
                                       sample_ddpm)
from research.models.embeddings import drop_labels
from research.tasks import classifier as classifier_tasks
from research.train import Task

DENOISERS = ("unet", "dit")


def make_denoiser(config, image_shape, num_classes: int):
  """The denoiser module of an experiment config, and `apply(params, x, t, y, train, key)`."""
  if config.model == "unet":
    model = unet_lib.UNet(unet_lib.UNetConfig(channels=tuple(config.unet_channels),
                                              blocks_per_level=config.get("unet_blocks", 1), groups=config.unet_groups,
                                              attention_heads=config.unet_heads,
                                              attention_levels=tuple(config.get("unet_attention_levels", ())),
                                              dropout=config.dropout,
                                              num_classes=num_classes, out_channels=image_shape[-1],
                                              attention=config.unet_attention, dtype=config.dtype))

    def apply(params, x, t, y, train, key):
      return model.apply(params, x, t, y, train=train, rngs={"dropout": key} if train else None)
  else:
    cfg = dit_lib.config(config.dit, input_size=image_shape[0], in_channels=image_shape[-1],
                         num_classes=num_classes, learn_sigma=False, conditioning=config.dit_conditioning,
                         attention=config.dit_attention, scan_layers=config.dit_scan_layers,
                         remat=config.dit_remat, dtype=config.dtype)
    model = dit_lib.DiT(cfg)

    def apply(params, x, t, y, train, key):
      del train, key
      return model.apply(params, x, t, y)
  return model, apply


def make_task(config, image_shape=(8, 8, 1), num_classes: int = 10, sweeps_guidance: bool = False):
  """Class-conditional (or unconditional) diffusion on images as a research.train.Task.

  Args:
    config: an experiment config (experiments/diffusion.py).
    image_shape: (H, W, C) of the images; pixels are scaled to [-1, 1].
    num_classes: classes of the labels; 0 trains an unconditional model.
    sweeps_guidance: a sweep varies `guidance_scale` (conditional models only): the guided
      denoiser then runs for every member, at w = 1 too.

  Returns:
    A Task: `loss` is the denoising loss of `config.prediction` with label dropout
    (`class_dropout`) replacing labels by the null class `num_classes`; the pure `evaluate`
    draws `num_samples` images with the configured sampler (clipping each step's x0 estimate
    to the data range when `config.clip_sample`; labels cycling through the
    classes), whose digits sample metrics (research.tasks.classifier.digits_sample_metrics:
    both feature spaces, beside real held-out digits) `summarize` reports; the loop writes those images as
    the step's samples, and `sample` draws such images at other steps. A conditional model's
    traced hyperparameters (Task.hparams) are `class_dropout` and, when guided (a
    `guidance_scale` other than 1, or `sweeps_guidance`), `guidance_scale`: the classifier-free
    guidance w of the samplers, read from the hparams `evaluate` and `sample` get. Unguided
    (w = 1), the conditional model runs alone, without the unconditional half.
  """
  schedule = make_schedule(config.schedule, config.num_train_steps)
  model, apply = make_denoiser(config, image_shape, num_classes)
  conditional = num_classes > 0
  guided = conditional and (config.guidance_scale != 1.0 or sweeps_guidance)

  def to_x0(batch):
    return batch["image"].astype(jnp.float32) / 127.5 - 1.0  # (batch, H, W, C) in [-1, 1]

  def init(key, batch):
    x = to_x0(batch)
    return model.init(key, x, jnp.zeros((x.shape[0],), jnp.int32), jnp.zeros((x.shape[0],), jnp.int32))

  def loss_fn(params, batch, key, train, hparams=None):
    k_labels, k_loss, k_dropout = jax.random.split(key, 3)
    y = batch["label"].astype(jnp.int32) if conditional else jnp.zeros((batch["image"].shape[0],), jnp.int32)
    if conditional and train:
      # The label-dropout rate is traced (Task.hparams), so a sweep over it is one program.
      rate = config.class_dropout if hparams is None else hparams["class_dropout"]
      y = drop_labels(k_labels, y, rate, num_classes)
    value = loss(schedule, lambda x_t, t: apply(params, x_t, t, y, train, k_dropout), to_x0(batch), k_loss,
                 config.prediction)
    return value, {}

  timesteps = ddim_timesteps(config.num_train_steps, config.sample_steps, config.tau) \
      if config.sampler == "ddim" else None

  @jax.jit
  def draw(params, key, labels, guidance, eta):
    cond_fn = lambda x, t, y: apply(params, x, t, y, False, None)
    if guided:
      denoise = classifier_free_guidance(cond_fn, labels, num_classes, guidance)
    else:  # w = 1 is the conditional model alone: no unconditional half to compute
      denoise = lambda x, t: cond_fn(x, t, labels)
    shape = (labels.shape[0],) + tuple(image_shape)
    if config.sampler == "ddpm":
      x = sample_ddpm(schedule, denoise, key, shape, prediction=config.prediction, variance=config.variance,
                      clip_sample=config.clip_sample)
    else:
      x = sample_ddim(schedule, denoise, key, shape, timesteps, eta, prediction=config.prediction,
                      clip_sample=config.clip_sample)
    return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)  # images in [0, 1]

  def generate(params, key, n, guidance):
    # Chunks of sample_batch as one lax.map (the last padded), so a sweep's members draw
    # theirs in one vmapped program; chunk i uses fold_in(key, i).
    batch = min(config.sample_batch, n)
    chunks = -(-n // batch)
    labels = (jnp.arange(chunks * batch, dtype=jnp.int32) % max(num_classes, 1)).reshape(chunks, batch)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(chunks))
    eta = jnp.float32(config.eta)
    images = jax.lax.map(lambda chunk: draw(params, chunk[0], chunk[1], guidance, eta), (keys, labels))
    return images.reshape((chunks * batch,) + tuple(image_shape))[:n]

  def guidance_scale(hparams):
    # A member's own traced w when guided; the config's otherwise (the unguided denoiser ignores it).
    return hparams["guidance_scale"] if guided and hparams is not None else jnp.float32(config.guidance_scale)

  def evaluate(params, key, data, hparams=None):
    # Pure: the samples are drawn in the compiled program; `summarize` scores them on the host.
    del data  # scored against the training digits' features
    return {"samples": generate(params, key, config.num_samples, guidance_scale(hparams))}

  def summarize(arrays):
    return classifier_tasks.digits_sample_metrics(arrays["samples"])

  draw_all = jax.jit(generate, static_argnums=2)

  def sample(params, key, hparams=None):
    return {"samples": np.asarray(draw_all(params, key, config.num_samples, guidance_scale(hparams)))}

  traced = None
  if conditional:
    traced = {"class_dropout": config.class_dropout, **({"guidance_scale": config.guidance_scale} if guided else {})}
  return Task(init=init, tx=optim.make(config.optimizer, config.steps), loss=loss_fn, evaluate=evaluate,
              evaluate_pure=True, summarize=summarize, sample=sample, hparams=traced,
              picture_notes={"samples": f"the classes asked for: 0..{num_classes - 1} in turn, in reading order"}
              if conditional else None,
              learning_rate=optim.learning_rate_fn(config.optimizer, config.steps))
