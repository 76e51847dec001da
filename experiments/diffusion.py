"""DDPM / DDIM diffusion with a U-Net or a DiT on the bundled 8x8 digits, trained by research.train.

Run:
  python -m experiments.diffusion --workdir=/tmp/diffusion
  python -m experiments.diffusion --workdir=/tmp/ddpm --config.sampler=ddpm
  python -m experiments.diffusion --workdir=/tmp/dit --config.model=dit --config.dit=DiT-T/2
  python -m experiments.diffusion --workdir=/tmp/cfg --config.guidance_scale=2.0
  python -m experiments.diffusion --workdir=/tmp/smoke --config=experiments/diffusion.py:smoke
  python -m experiments.sweep --workdir=/tmp/cfg_sweep --config=experiments/diffusion.py:smoke \
      --vary=guidance_scale=0,1,3
  python -m experiments.diffusion --workdir=/tmp/diffusion --inpaint=center --resample=10 --jump=10
  python -m launch plan diffusion --devices=8 -- --config=experiments/diffusion.py:ddpm_cifar10   # a plan only

By default a class-conditional DDPM (linear β, T = 1000, ε-prediction, 10% label dropout for
classifier-free guidance) with the small U-Net, EMA weights (decay 0.995), sampled with DDIM
(50 linear steps, η = 0) that clips each step's x0 estimate to [-1, 1]. The EMA starts at the
initial weights: with a fixed decay, 0.999 over 3000 steps left them 5% (e^-3), whose noise
showed as grey speckle in the samples; the loop now warms the decay up (research.train.step's
`ema_warmup`). Writes checkpoints, TensorBoard events, samples.png and samples.npz (the
`num_samples` images whose scores are reported; labels cycle through 0..9) and results.json
with the digits sample metrics (research.tasks.classifier.digits_sample_metrics): FID, KID,
precision and recall against the training digits in two feature spaces (an MLP classifier's,
a convolutional one's: cnn_*), each beside the real held-out digits' own at the same count
(*_real, fid_ratio), and the share of samples the classifier puts in each class. Sweepable in one program (experiments/sweep.py): class_dropout
and guidance_scale (the sampler's classifier-free guidance w, traced).

With --inpaint=center|half|pixels, a workdir holding a finished run of the config only inpaints
(RePaint, research.models.diffusion.repaint, with --resample r and --jump j): the first
--num_images digits of the test split, masked by research.models.diffusion.inpaint_masks, are
completed by the model's EMA weights with the null class (the unconditional model that label
dropout trained; the true labels are not used). It writes `inpaint_<kind>.png` (rows: the
originals, the masked inputs with the unknown pixels grey, the completions), `inpaint_<kind>.npz`
(originals, masks and completions, images in [0, 1]) and `inpaint_<kind>.json`: the mean squared
error on the unknown pixels (images in [0, 1]) beside filling them with the training digits' mean
image, and the digits sample metrics of the completions beside the originals' own (the test
split) and the masked inputs' (unknown pixels 0).
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from matplotlib.figure import Figure

from research import data as data_lib
from research.models import attention, diffusion, dit, layers
from research.tasks import classifier as classifier_tasks
from research.tasks import diffusion as diffusion_tasks
from research.train import ConfigError, base_config, check_choice, check_common, check_positive, check_workdir
from research.train import cli, train
from research.train import results as results_lib
from research.train.images import image_grid

def _long(config: ml_collections.ConfigDict) -> None:
  """The default model trained 4x longer: the DDIM table's model.

  Its EMA keeps the decay 0.999 the tables' model was trained with: over 12000 steps the initial
  weights keep e^-12 of it, and its time constant of 1000 steps stays a small part of the run.
  """
  config.steps, config.checkpoint_every, config.log_every = 12000, 3000, 1000
  config.ema_decay = 0.999


def _smoke(config: ml_collections.ConfigDict) -> None:
  """A tiny U-Net, few steps and few samples, for tests (applied after `long` when both are named)."""
  config.unet_channels, config.unet_groups, config.unet_heads = (8, 16), 4, 2
  config.steps, config.batch_size = 6, 16
  config.log_every = config.checkpoint_every = 3
  config.num_train_steps, config.sample_steps = 100, 5
  config.num_samples, config.sample_batch = 40, 20
  config.optimizer.warmup_steps = 2


def _ddpm_cifar10(config: ml_collections.ConfigDict) -> None:
  """Ho et al. (2020)'s unconditional CIFAR-10 model, aiming at its FID 3.17 (Table 1; GPU/TPU hosts).

  The paper's U-Net (appendix B): channels 128, 256, 256, 256 over 32x32 to 4x4, two residual
  blocks per level, GroupNorm 32, dropout 0.1; T = 1000 linear betas 1e-4..0.02, epsilon
  prediction; Adam at 2e-4 after 5,000 warmup updates, gradients clipped to norm 1, batch 128,
  800k updates, EMA 0.9999; sampled by the DDPM sampler with sigma^2 = beta; self-attention at
  16x16 (after each residual block of level 1) and in the middle at 4x4: 35.8M parameters to the
  paper's 35.7M, as `launch plan` counts them. A plan only: samples here are scored in the 8x8 digits' feature
  space, so a run refuses cifar10 (`python -m launch plan diffusion --
  --config=experiments/diffusion.py:ddpm_cifar10`).
  """
  config.dataset, config.conditional = "cifar10", False
  config.unet_channels, config.unet_blocks, config.unet_groups, config.unet_heads = (128, 256, 256, 256), 2, 32, 1
  config.unet_attention, config.unet_attention_levels = "auto", (1,)  # attention at 16x16 too
  config.dropout = 0.1
  config.schedule, config.num_train_steps, config.prediction = "linear", 1000, "epsilon"
  config.sampler, config.variance = "ddpm", "fixed_large"
  config.num_samples, config.sample_batch = 50_000, 500
  config.dtype = "bfloat16"
  config.steps, config.batch_size = 800_000, 128
  config.ema_decay = 0.9999
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 2e-4
  config.optimizer.warmup_steps = 5000
  config.optimizer.final_lr_fraction = 1.0  # constant after the warmup
  config.log_every, config.checkpoint_every = 1000, 10_000


def _dit_xl2(config: ml_collections.ConfigDict) -> None:
  """Peebles & Xie (2023)'s DiT-XL/2 on ImageNet 256x256 as 32x32x4 VAE latents (GPU/TPU hosts).

  28 blocks, 1152 wide, 16 heads, patch 2 (256 tokens), adaLN-Zero, 1,000 classes with 10%
  label dropout; linear betas, T = 1000; AdamW at a constant 1e-4 without weight decay, batch
  256, 400k updates, EMA 0.9999: the paper's FID-50K 9.62 at 400k updates without guidance
  (Table 4; 2.27 with guidance 1.5 after 7M updates). The paper's model also learns the
  variance (2C output channels); this one predicts the noise only, 18k parameters fewer: 675M
  either way. A plan only: this experiment trains on digits and has no latent ImageNet
  (`python -m launch plan diffusion -- --config=experiments/diffusion.py:dit_xl2`).
  """
  config.dataset, config.conditional = "imagenet256_latents", True
  config.model, config.dit, config.dit_conditioning = "dit", "DiT-XL/2", "adaln_zero"
  config.class_dropout = 0.1
  config.schedule, config.num_train_steps, config.prediction = "linear", 1000, "epsilon"
  config.sampler, config.sample_steps, config.eta = "ddim", 250, 1.0  # 250 DDPM-like steps, as the paper samples
  config.num_samples, config.sample_batch = 50_000, 250
  config.dtype = "bfloat16"
  config.steps, config.batch_size = 400_000, 256
  config.ema_decay = 0.9999
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 1e-4
  config.optimizer.weight_decay = 0.0
  config.optimizer.schedule, config.optimizer.warmup_steps, config.optimizer.grad_clip_norm = "constant", 0, 0.0
  config.log_every, config.checkpoint_every = 1000, 10_000


PRESETS = {"long": _long, "ddpm_cifar10": _ddpm_cifar10, "dit_xl2": _dit_xl2, "smoke": _smoke}
# dataset -> ((H, W, C) of its images, classes). Runs train on digits; the others size a plan (`plan_inputs`).
IMAGES = {"digits": ((8, 8, 1), 10), "cifar10": ((32, 32, 3), 10), "imagenet256_latents": ((32, 32, 4), 1000)}
TRAINED = ("digits",)


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config (a conditional DDPM U-Net on digits, minutes on 2 CPU cores).

  Presets: "smoke" for tests; "long" trains the default model 4x longer (12000 steps, about 15
  minutes on 2 CPU cores), the model of the DDIM table, whose few-step samplers tell η apart only
  once the noise prediction is accurate; "ddpm_cifar10" and "dit_xl2" are papers' models at their
  scale, for `python -m launch plan diffusion` to price.
  """
  config = base_config()
  config.dataset = "digits"  # 8x8 digits (bundled); the other IMAGES are for launch plan only
  config.conditional = True  # class-conditional (with a null class for guidance) or unconditional
  config.model = "unet"  # unet or dit
  config.unet_channels = (32, 64)  # U-Net channels per resolution (8x8, then 4x4 with attention)
  config.unet_blocks = 1  # residual blocks per U-Net level in the encoder (the decoder has one more)
  config.unet_groups = 8  # GroupNorm groups
  config.unet_heads = 4  # attention heads of every U-Net self-attention
  config.unet_attention_levels = ()  # U-Net levels that also attend after each residual block (the middle always does)
  config.unet_attention = "reference"  # the U-Net's attention kernel (research.models.attention.IMPLEMENTATIONS)
  config.dit = "DiT-T/2"  # a research.models.dit name (model=dit)
  config.dit_conditioning = "adaln_zero"  # adaln_zero, adaln, cross_attention or in_context
  config.dit_attention = "auto"  # the DiT's attention kernel ("auto": dense on CPU, cuDNN/XLA on GPU)
  config.dit_scan_layers = False  # the DiT's blocks as one nn.scan (one block compiled; parameters stacked)
  config.dit_remat = "none"  # recompute the DiT's activations in the backward pass: none, block or dots
  config.dropout = 0.0  # U-Net dropout
  config.schedule = "linear"  # linear (Ho et al.) or cosine (Nichol & Dhariwal)
  config.num_train_steps = 1000  # T, the diffusion steps of training
  config.prediction = "epsilon"  # what the denoiser predicts: epsilon, v or x0
  config.class_dropout = 0.1  # probability of training a label as the null class
  config.sampler = "ddim"  # ddpm (all T steps) or ddim (sample_steps along tau)
  config.sample_steps = 50  # DDIM steps S
  config.eta = 0.0  # DDIM eta: 0 deterministic, 1 DDPM-like
  config.tau = "linear"  # DDIM step sub-sequence: linear or quadratic
  config.variance = "fixed_small"  # DDPM sampler variance: fixed_small (beta tilde) or fixed_large (beta)
  config.clip_sample = True  # samplers clip each step's x0 estimate to the data range [-1, 1] (diffusers' clip_sample)
  config.guidance_scale = 1.0  # classifier-free guidance w (1: the conditional model; 0: unconditional)
  config.num_samples = 1000  # samples drawn, scored and written to samples.npz
  config.sample_batch = 500  # samples per sampler call
  config.steps = 3000  # optimizer updates
  config.batch_size = 64  # images per update
  config.ema_decay = 0.995  # evaluation and samples use the EMA weights (time constant 200 steps)
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = "warmup_cosine"
  config.optimizer.warmup_steps = 200
  config.optimizer.final_lr_fraction = 0.1
  config.optimizer.grad_clip_norm = 1.0
  config.log_every = 500  # metrics and a progress line every this many steps
  config.checkpoint_every = 1000  # save a checkpoint every this many steps (and at the end)
  return cli.apply_presets(config, preset, PRESETS)


def check_config(config) -> None:
  """Raises ConfigError on bad input, before anything is loaded, compiled or written."""
  check_common(config)
  check_choice("dataset", config.dataset, IMAGES)
  check_choice("model", config.model, diffusion_tasks.DENOISERS)
  check_choice("schedule", config.schedule, diffusion.SCHEDULES)
  check_choice("prediction", config.prediction, diffusion.PREDICTIONS)
  check_choice("sampler", config.sampler, diffusion.SAMPLERS)
  check_choice("tau", config.tau, diffusion.TIMESTEP_KINDS)
  check_choice("variance", config.variance, diffusion.VARIANCES)
  check_choice("dit_conditioning", config.dit_conditioning, dit.CONDITIONINGS)
  check_choice("unet_attention", config.unet_attention, attention.IMPLEMENTATIONS)
  channels = config.unet_channels
  if not isinstance(channels, (tuple, list)) or not channels or \
      not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels):
    raise ConfigError(f"unet_channels must be positive integers, one per resolution (e.g. 32,64), got {channels!r}")
  check_positive("unet_blocks", config.unet_blocks)
  check_positive("unet_groups", config.unet_groups)
  if any(c % config.unet_groups for c in channels):
    raise ConfigError(f"unet_groups {config.unet_groups} must divide every entry of unet_channels {tuple(channels)}")
  check_positive("unet_heads", config.unet_heads)
  levels = config.unet_attention_levels
  if not isinstance(levels, (tuple, list)) or \
      not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(channels) for v in levels):
    raise ConfigError(f"unet_attention_levels must be levels of unet_channels {tuple(channels)} "
                      f"(0..{len(channels) - 1}), got {levels!r}")
  check_choice("dit_attention", config.dit_attention, attention.IMPLEMENTATIONS)
  check_choice("dit_remat", config.dit_remat, layers.REMATS)
  check_choice("dit", config.dit, dit.names())
  for name in ("num_train_steps", "num_samples", "sample_batch"):
    check_positive(name, config[name])
  if not 0 < config.sample_steps <= config.num_train_steps:
    raise ConfigError(f"sample_steps must be in [1, num_train_steps = {config.num_train_steps}], "
                      f"got {config.sample_steps}")
  check_positive("eta", config.eta, allow_zero=True)
  check_positive("guidance_scale", config.guidance_scale, allow_zero=True)
  if not config.conditional and config.guidance_scale != 1.0:
    raise ConfigError(f"guidance_scale {config.guidance_scale} needs a conditional model (config.conditional)")
  if not 0.0 <= config.class_dropout < 1.0:
    raise ConfigError(f"class_dropout must be in [0, 1), got {config.class_dropout}")
  if config.model == "dit":
    (size, _, channels_in), classes = IMAGES[config.dataset]
    try:
      dit.config(config.dit, input_size=size, in_channels=channels_in, num_classes=classes,
                 conditioning=config.dit_conditioning,
                 attention=config.dit_attention, scan_layers=config.dit_scan_layers, remat=config.dit_remat)
    except ValueError as e:
      raise ConfigError(str(e)) from None


def check_trained(config) -> None:
  """Raises ConfigError for a dataset this experiment plans but does not train (its samples are scored as digits)."""
  if config.dataset not in TRAINED:
    raise ConfigError(f"dataset {config.dataset!r} is for python -m launch plan only: runs train on "
                      f"{', '.join(TRAINED)} (samples are scored in the 8x8 digits' feature space)")


def plan_inputs(config):
  """The task and one step's batch of `config` for `python -m launch plan`: shapes only, no images.

  The images' shape and classes are the dataset's (IMAGES); the batch is uint8 images and
  int32 labels, as the loop reads a split.
  """
  shape, classes = IMAGES[config.dataset]
  task = diffusion_tasks.make_task(config, shape, classes if config.conditional else 0)
  return task, {"image": np.zeros((config.batch_size, *shape), np.uint8),
                "label": np.zeros((config.batch_size,), np.int32)}


def check_members(config, members) -> None:
  """Raises ConfigError on a swept value this experiment cannot take (before anything is compiled or written)."""
  swept = members.hparams if members is not None else {}
  if "guidance_scale" in swept:
    if not config.conditional:
      raise ConfigError("cannot vary guidance_scale of an unconditional model: guidance needs the "
                        "conditional one (config.conditional)")
    if any(w < 0 for w in swept["guidance_scale"]):
      raise ConfigError(f"guidance_scale values must be >= 0, got {list(swept['guidance_scale'])}")
  if "class_dropout" in swept and not all(0.0 <= p < 1.0 for p in swept["class_dropout"]):
    raise ConfigError(f"class_dropout values must be in [0, 1), got {list(swept['class_dropout'])}")


# What experiments.sample / experiments.evaluate may change in a finished run (they train nothing).
SAMPLING_FIELDS = ("sampler", "sample_steps", "eta", "tau", "variance", "clip_sample", "guidance_scale", "num_samples",
                   "sample_batch")


def metric_names(config) -> tuple[str, ...]:
  """The scalar metrics a run of `config` reports (a sweep's `--metric` is one of these or train_loss)."""
  return classifier_tasks.digits_sample_metric_names()


def run(config, workdir: str, members=None) -> dict:
  """Trains and samples the diffusion model described by `config`; returns what results.json holds.

  `members` (research.train.Members) trains a sweep of runs as one program (experiments/sweep.py);
  a sweep over guidance_scale runs the guided sampler for every member, at w = 1 too.
  """
  check_config(config)
  check_trained(config)
  check_members(config, members)
  check_workdir(workdir)
  train_split = data_lib.load(config.dataset, "train")
  sweeps_guidance = members is not None and "guidance_scale" in members.hparams
  task = diffusion_tasks.make_task(config, train_split["image"].shape[1:], 10 if config.conditional else 0,
                                   sweeps_guidance=sweeps_guidance)
  return train(task, config, workdir, {"image": train_split["image"], "label": train_split["label"]},
               members=members).results


# ---------------------------------------------------------------------------------------
# Inpainting a finished run's test digits (RePaint).

# The paper's r and j; 100 of the 300 test digits, so that r = 10 (9910 denoiser calls) takes minutes on 2 CPU cores.
INPAINT_DEFAULTS = {"resample": 10, "jump": 10, "num_images": 100}
UNKNOWN_GREY = 0.5  # how the masked inputs show the unknown pixels


def check_inpaint(config, kind: str, resample: int, jump: int, num_images: int) -> None:
  """Raises ConfigError for a mask kind, r, j or image count that inpainting cannot take."""
  if kind not in diffusion.INPAINT_MASKS:
    raise ConfigError(f"--inpaint must be one of {', '.join(diffusion.INPAINT_MASKS)}, got {kind!r}")
  try:
    diffusion.repaint_timesteps(config.num_train_steps, jump, resample)
  except ValueError as e:
    raise ConfigError(f"--resample / --jump: {e}") from None
  test_size = len(data_lib.load(config.dataset, "test")["image"])
  if not 4 <= num_images <= test_size:
    raise ConfigError(f"--num_images must be in [4, {test_size}] (the test split), got {num_images}")


def finished_run(config, workdir: str) -> bool:
  """Whether workdir's results.json reports a run of config.steps steps."""
  try:
    with open(os.path.join(workdir, "results.json")) as f:
      return json.load(f).get("step") == config.steps
  except (OSError, ValueError):
    return False


def complete(model, originals: np.ndarray, masks: jax.Array, key: jax.Array, resample: int,
             jump: int) -> tuple[np.ndarray, float, float]:
  """RePaint completions of `originals` with a trained model's EMA weights and the null class.

  Args:
    model: an experiments.tables.diffusion_model.TrainedModel.
    originals: (N, H, W, C) images in [0, 1].
    masks: (N, H, W, C), 1 where a pixel is known.
    key: PRNG key; chunk i of `config.sample_batch` images uses fold_in(key, i).
    resample: r.
    jump: j.

  Returns:
    (the completions (N, H, W, C) in [0, 1], seconds compiling, seconds running).
  """
  config = model.config

  def program(params, key, known, mask):
    # The null class is the unconditional model label dropout trained (0 also for an unconditional one).
    labels = jnp.full((known.shape[0],), model.num_classes, jnp.int32)  # (batch,)
    denoise = lambda x, t: model.apply(params, x, t, labels, False, None)
    x = diffusion.repaint(model.schedule, denoise, key, known * 2.0 - 1.0, mask, jump_length=jump, resample=resample,
                          prediction=config.prediction, variance=config.variance, clip_sample=config.clip_sample)
    return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)

  from experiments.tables import diffusion_model  # pylint: disable=import-outside-toplevel  # it imports this module
  batch = config.sample_batch
  calls = [(model.params, jax.random.fold_in(key, i), jnp.asarray(originals[start:start + batch]),
            masks[start:start + batch]) for i, start in enumerate(range(0, len(originals), batch))]
  chunks, compile_s, run_s = diffusion_model.timed_calls(program, calls)
  return np.concatenate(chunks), compile_s, run_s


def masked_mse(images: np.ndarray, originals: np.ndarray, masks: np.ndarray) -> float:
  """The mean squared error over the unknown pixels (mask 0) of every image."""
  unknown = 1.0 - np.asarray(masks)
  return float(np.sum(unknown * np.square(np.asarray(images) - originals)) / np.sum(unknown))


def inpaint_scores(completions: np.ndarray, originals: np.ndarray, masks: np.ndarray, mean_image: np.ndarray) -> dict:
  """The masked-region error of the completions and of a mean-image fill, and their digits sample metrics.

  The completions' FID is read beside the test split's own (`fid_real`: they are completions of
  it) and the masked inputs' (unknown pixels 0), at the same count.
  """
  masks = np.asarray(masks)
  scores = {"masked_mse": masked_mse(completions, originals, masks),
            "masked_mse_mean_fill": masked_mse(np.broadcast_to(mean_image, originals.shape), originals, masks),
            **classifier_tasks.digits_sample_metrics(completions)}
  masked_input = classifier_tasks.digits_sample_metrics(originals * masks)
  scores.update(fid_masked_input=masked_input["fid"],
                cnn_fid_masked_input=masked_input[classifier_tasks.CONV_PREFIX + "fid"])
  return scores


def inpaint_figure(originals: np.ndarray, masks: np.ndarray, completions: np.ndarray, title: str,
                   columns: int = 10) -> Figure:
  """Three rows of `columns` images: originals, masked inputs (unknown pixels grey), completions."""
  masks = np.asarray(masks)[:columns]
  rows = [originals[:columns], originals[:columns] * masks + UNKNOWN_GREY * (1.0 - masks), completions[:columns]]
  grid = np.concatenate([image_grid(row, columns=columns) for row in rows], axis=0)
  fig = Figure(figsize=(8, 7 * grid.shape[0] / grid.shape[1] + 0.8), dpi=100)
  ax = fig.subplots()
  ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
  height = grid.shape[0] / len(rows)
  ax.set_yticks([height * (i + 0.5) for i in range(len(rows))], ["original", "masked", "completed"])
  ax.set_xticks([])
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  return fig


def inpaint(config, workdir: str, kind: str, resample: int = INPAINT_DEFAULTS["resample"],
            jump: int = INPAINT_DEFAULTS["jump"], num_images: int = INPAINT_DEFAULTS["num_images"]) -> dict:
  """Inpaints test digits with the finished run in `workdir`; writes inpaint_<kind>.{png,npz,json} there.

  Args:
    config: the config the run was trained with.
    workdir: the run's directory.
    kind: the mask, one of research.models.diffusion.INPAINT_MASKS.
    resample: RePaint's r.
    jump: RePaint's j.
    num_images: the test digits inpainted (the first ones).

  Returns:
    What inpaint_<kind>.json holds.

  Raises:
    ConfigError: for bad input or a workdir without a finished run, before anything is compiled or written.
  """
  # Imported here: that module imports this one (its tables train their model through `run`).
  from experiments.tables import diffusion_model  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  check_config(config)
  check_trained(config)
  check_inpaint(config, kind, resample, jump, num_images)
  check_workdir(workdir)
  if not finished_run(config, workdir):
    raise ConfigError(f"{workdir} holds no finished experiments.diffusion run of {config.steps} steps to inpaint "
                      "with (train it first, with the same config)")
  model = diffusion_model.trained_model(config, workdir)
  originals = data_lib.load(config.dataset, "test")["image"][:num_images].astype(np.float32) / 255.0
  k_mask, k_sample = jax.random.split(jax.random.key(config.seed))
  masks = diffusion.inpaint_masks(kind, originals.shape, k_mask)
  completions, compile_s, run_s = complete(model, originals, masks, k_sample, resample, jump)
  mean_image = data_lib.load(config.dataset, "train")["image"].astype(np.float32).mean(axis=0) / 255.0
  scores = inpaint_scores(completions, originals, masks, mean_image)
  evaluations = int(np.sum(~diffusion.repaint_timesteps(config.num_train_steps, jump, resample).up))
  out = results_lib.to_json({
      "mask": kind, "resample": resample, "jump": jump, "num_images": num_images,
      "unknown_share": float(1.0 - np.mean(np.asarray(masks))), "conditioning": "null class (unconditional)",
      "denoiser_evaluations": evaluations, **scores, "compile_s": compile_s, "sampling_s": run_s,
      "wall_time_s": time.perf_counter() - start})
  np.savez(os.path.join(workdir, f"inpaint_{kind}.npz"), originals=originals, masks=np.asarray(masks),
           completions=completions)
  with open(os.path.join(workdir, f"inpaint_{kind}.json"), "w") as f:
    json.dump(out, f, indent=2, allow_nan=False)
    f.write("\n")
  title = (f"RePaint, {kind} mask, r = {resample}, j = {jump}, {num_images} test digits\n"
           f"masked-region MSE {scores['masked_mse']:.4f} (mean image {scores['masked_mse_mean_fill']:.4f}), "
           f"FID {scores['fid']:.2f} "
           f"(originals {scores['fid_real']:.2f}, masked {scores['fid_masked_input']:.2f})")
  inpaint_figure(originals, masks, completions, title).savefig(os.path.join(workdir, f"inpaint_{kind}.png"))
  return out


def main() -> None:
  # Defined here, not on import: the config flag imports this file again as the config module.
  kind = flags.DEFINE_string("inpaint", None, "Inpaint test digits with a finished workdir's model instead of "
                             f"training: the mask, one of {', '.join(diffusion.INPAINT_MASKS)}.")
  resample = flags.DEFINE_integer("resample", INPAINT_DEFAULTS["resample"], "RePaint's r for --inpaint.")
  jump = flags.DEFINE_integer("jump", INPAINT_DEFAULTS["jump"], "RePaint's jump length j for --inpaint.")
  num_images = flags.DEFINE_integer("num_images", INPAINT_DEFAULTS["num_images"],
                                    "Test digits inpainted with --inpaint.")

  def dispatch(config, workdir):
    if kind.value is None:
      return run(config, workdir)
    return inpaint(config, workdir, kind.value, resample.value, jump.value, num_images.value)

  cli.main(__file__, dispatch)


if __name__ == "__main__":
  main()
