"""Diffusion speed: DDIM vs DDPM sampling, and against diffusers in PyTorch eager (sampling and DiT training).

Two parts, chosen with `parts`:

  sampling  images/s of one sampler call (a batch of `sample_batch` images) from the default
            experiment's U-Net (experiments/diffusion.py: channels (32, 64), GroupNorm groups 8,
            4 heads at 4x4, class-conditional, 8x8x1 digits, linear β, T = `num_train_steps`):
              * ours, DDIM with S = `ddim_steps` (η = 0, linear τ) and DDPM with all T steps,
                each research.models.diffusion's jitted lax.scan sampler, compiled once before
                the timings;
              * diffusers' DDIMScheduler loop (`set_timesteps(S)`, `step(..., eta=0)`) driving
                diffusers' UNet2DModel built to the same layout (the same blocks, channels,
                groups, heads, class embedding with a null row) in PyTorch eager under
                torch.no_grad(), the same batch, at each `torch_threads`.
            Weights are random (initialisation): the work per step does not depend on them.
            The U-Nets differ by the time-embedding MLP's input only (diffusers feeds it
            channels[0] = 32 sinusoidal features, ours 2 * channels[0] = 64): 4,096 parameters,
            0.6% of ours; both counts are reported and checked within `param_tolerance`.

  dit       training steps/s of a DiT (`dit` at `dit_input_size` x `dit_input_size` x
            `dit_channels` latents, `dit_classes` classes, learn_sigma as the paper) on random
            latents with random labels, batch `dit_batch`, AdamW (the paper's: lr 1e-4, no weight
            decay, no EMA in either timing), float32, the paper's loss on both sides (below):
              * ours: research.models.dit.DiT as a research.train Task, the step from
                research.train.make_train_step, jitted with the state donated, called in a
                Python for-loop on research.data.Batcher batches (loop_overhead.py's bare
                driver);
              * diffusers' DiTTransformer2DModel of the same config in PyTorch eager:
                loss.backward() and torch.optim.AdamW, at each `torch_threads`.
            diffusers builds a timestep + label embedder inside every block's adaLN-Zero
            (one per block where the paper has one for the model); the benchmark ties them to
            the first block's, which is the paper's model, and parameter counts then match
            exactly. Every block still runs its (shared) embedder: (depth - 1) small MLPs per
            step that our model does not run. Label dropout (10%) happens outside the model on
            both sides, since diffusers' own would draw a different mask in every block.

The loss (Peebles & Xie, section 3.1, after Nichol & Dhariwal 2021): the model outputs 2C
channels, ε and v; L = L_simple(ε) + L_vlb, where L_vlb is the KL (bits per dimension) from
the true posterior q(x_{t-1} | x_t, x0) to N(μ_θ, Σ_θ), Σ_θ = exp(v' log β_t + (1 - v') log β̃_t),
v' = (v + 1) / 2, with μ_θ from a stop-gradient ε (so L_vlb trains only Σ), and at t = 0 the
discretised Gaussian decoder NLL. Both sides implement it from the same schedule arrays;
tests/test_bench_diffusion.py checks the two implementations agree.

Protocol: everything runs in this process. JAX programs are compiled before the repeats. Each
repeat times every measurement once, in an order rotated from repeat to repeat
(experiments/harness.py's timer); a ratio divides
two rates of the same repeat; medians over repeats are reported with each repeat's ratio.
PyTorch runs at this host's core count and at 1 thread (a pool spanning every core stalls when
other work holds one), and a ratio against PyTorch uses the faster setting of the repeat. A
PyTorch timing stops after the step that passes `torch_seconds`: its rate is the steps it took
(a sampler loop's images counted in proportion to the steps they got) over their time.

Run:
  python -m experiments.bench.diffusion --outdir=experiments/bench/results/diffusion
  python -m experiments.bench.diffusion --outdir=/tmp/diffusion_bench --config.parts=sampling \
      --config.sample_batch=8 --config.num_train_steps=100 --config.ddim_steps=5 --config.repeats=1
  python -m experiments.bench.diffusion --outdir=/tmp/diffusion_bench --config=experiments/bench/diffusion.py:smoke
"""

import math
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel, UNet2DModel

from experiments import diffusion as diffusion_experiment
from experiments import harness
from research import optim
from research.data import Batcher
from research.models import diffusion, dit
from research.tasks import diffusion as diffusion_tasks
from research.train import ConfigError, Keys, Task, check_positive, cli, init_state, make_train_step

PARTS = ("sampling", "dit")
PACKAGES = ("torch", "diffusers")
DIT_LEARNING_RATE = 1e-4  # Peebles & Xie, section 4: AdamW, constant 1e-4, no weight decay
DIT_CLASS_DROPOUT = 0.1  # their label dropout for classifier-free guidance
DIT_NUM_TRAIN_STEPS = 1000  # their T, with the linear β schedule
DIT_DATA_SIZE = 1024  # random latents the batches are drawn from
IMAGE_SHAPE = (8, 8, 1)  # the digits the default U-Net is built for
NUM_CLASSES = 10


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Small samplers and a DiT-T/2 on 8x8 latents, one thread, one repeat, for tests."""
  config.sample_batch, config.num_train_steps, config.ddim_steps = 4, 40, 2
  config.repeats, config.torch_threads = 1, (1,)
  config.dit, config.dit_input_size, config.dit_classes = "DiT-T/2", 8, 10
  config.dit_batch, config.dit_steps, config.dit_warmup = 4, 2, 1


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The benchmark's parts, sizes and protocol; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.parts = PARTS  # what to measure: sampling, dit
  config.repeats = 3  # repeats of every measurement, in rotated order; medians are reported
  config.torch_threads = harness.host_threads()  # torch.set_num_threads values timed; the faster per repeat compared
  # A pool spanning every core can run a hundred times slower while other work holds one of them.
  config.torch_seconds = 60.0  # a PyTorch timing stops after the step that passes this many seconds
  config.param_tolerance = 0.02  # largest relative parameter-count difference accepted between peers
  # Sampling.
  config.sample_batch = 50  # images per sampler call
  config.num_train_steps = 0  # T, the DDPM sampler's steps; 0: the experiment's (1000)
  config.ddim_steps = 50  # S, the DDIM sampler's steps
  # DiT training.
  config.dit = "DiT-XS/2"  # the DiT (a research.models.dit name)
  config.dit_input_size = 16  # latent height = width
  config.dit_channels = 4  # latent channels
  config.dit_classes = 1000  # classes of the labels
  config.dit_batch = 32  # latents per training step
  config.dit_steps = 10  # timed training steps of each measurement (PyTorch: at most)
  config.dit_warmup = 10  # untimed steps on each side before the repeats (JAX: after the compiling first step)
  return cli.apply_presets(config, preset, PRESETS)


def _param_count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(tree)))


def _torch_param_count(module: torch.nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())  # shared parameters once


def _check_counts(what: str, ours: int, theirs: int, tolerance: float) -> float:
  """The relative difference of two parameter counts; raises if above `tolerance`."""
  diff = theirs / ours - 1.0
  if abs(diff) > tolerance:
    raise AssertionError(f"{what}: diffusers has {theirs:,} parameters, ours {ours:,} ({100 * diff:+.1f}%)")
  return diff


# ---------------------------------------------------------------------------------------
# Part 1: sampling.


def unet_config(num_train_steps: int):
  """experiments/diffusion.py's default config (T overridden unless 0)."""
  config = diffusion_experiment.get_config()
  if num_train_steps:
    config.num_train_steps = num_train_steps
  return config


def make_samplers(config, sample_batch: int, ddim_steps: int):
  """Our U-Net's parameters, labels and the two jitted samplers `draw(params, key, labels) -> images`."""
  model, apply = diffusion_tasks.make_denoiser(config, IMAGE_SHAPE, NUM_CLASSES)
  labels = jnp.arange(sample_batch, dtype=jnp.int32) % NUM_CLASSES
  x = jnp.zeros((1,) + IMAGE_SHAPE)
  params = model.init(jax.random.key(config.seed), x, jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32))
  schedule = diffusion.make_schedule(config.schedule, config.num_train_steps)
  taus = diffusion.ddim_timesteps(config.num_train_steps, ddim_steps, config.tau)
  shape = (sample_batch,) + IMAGE_SHAPE

  # As the experiment's task draws: the denoiser closes over the traced parameters and labels.
  @jax.jit
  def ddim(params, key, labels):
    denoise = lambda x_t, t: apply(params, x_t, t, labels, False, None)
    return diffusion.sample_ddim(schedule, denoise, key, shape, taus, 0.0, prediction=config.prediction)

  @jax.jit
  def ddpm(params, key, labels):
    denoise = lambda x_t, t: apply(params, x_t, t, labels, False, None)
    return diffusion.sample_ddpm(schedule, denoise, key, shape, prediction=config.prediction,
                                 variance=config.variance)

  return params, labels, {"ddim": ddim, "ddpm": ddpm}


def diffusers_unet(config) -> UNet2DModel:
  """diffusers' UNet2DModel laid out as research.models.unet.UNet with `config`'s sizes.

  One resnet per encoder level and two per decoder level, downsampling by a stride-2 conv,
  nearest upsampling + conv, a middle resnet-attention-resnet at the lowest resolution with
  `unet_heads` heads, and a class embedding of NUM_CLASSES + 1 rows (the null class).
  """
  channels = tuple(config.unet_channels)
  if config.unet_channels[-1] % config.unet_heads:
    raise ValueError(f"heads {config.unet_heads} do not divide {channels[-1]} channels")
  return UNet2DModel(sample_size=IMAGE_SHAPE[0], in_channels=IMAGE_SHAPE[-1], out_channels=IMAGE_SHAPE[-1],
                     block_out_channels=channels, layers_per_block=1, down_block_types=("DownBlock2D",) * len(channels),
                     up_block_types=("UpBlock2D",) * len(channels), norm_num_groups=config.unet_groups,
                     attention_head_dim=channels[-1] // config.unet_heads, num_class_embeds=NUM_CLASSES + 1,
                     add_attention=True)


def diffusers_ddim_sampler(config, sample_batch: int, ddim_steps: int):
  """(parameter count, draw(max_seconds) -> (images NCHW, steps)): diffusers' DDIM loop on the matching UNet2DModel."""
  torch.manual_seed(config.seed)
  unet = diffusers_unet(config).eval()
  # The experiment's linear β and ε-prediction; "leading" spacing gives the same τ as ours.
  scheduler = DDIMScheduler(num_train_timesteps=config.num_train_steps, beta_start=diffusion.LINEAR_BETA_START,
                            beta_end=diffusion.LINEAR_BETA_END, beta_schedule=config.schedule, clip_sample=False,
                            prediction_type=config.prediction, timestep_spacing="leading")
  labels = torch.arange(sample_batch) % NUM_CLASSES

  @torch.no_grad()
  def draw(max_seconds: float = math.inf):
    """(images, steps taken): the whole loop, or the steps done when max_seconds ran out (at least one)."""
    deadline = time.perf_counter() + max_seconds
    scheduler.set_timesteps(ddim_steps)
    x = torch.randn(sample_batch, IMAGE_SHAPE[-1], *IMAGE_SHAPE[:2])
    for i, t in enumerate(scheduler.timesteps):
      out = unet(x, t, class_labels=labels).sample
      x = scheduler.step(out, t, x, eta=0.0).prev_sample
      if time.perf_counter() > deadline:
        return x, i + 1
    return x, ddim_steps

  return _torch_param_count(unet), draw


def bench_sampling(sample_batch: int, num_train_steps: int, ddim_steps: int, threads: list[int],
                   repeats: int, tolerance: float, torch_seconds: float) -> dict:
  """Images/s of our DDIM and DDPM samplers and of diffusers' DDIM loop; see the module docstring."""
  config = unet_config(num_train_steps)
  if config.sampler != "ddim" or config.tau != "linear" or config.guidance_scale != 1.0:
    raise ValueError("the diffusers loop implements the default sampler: ddim, linear tau, guidance 1")
  params, labels, samplers = make_samplers(config, sample_batch, ddim_steps)
  ours = _param_count(params)
  theirs, torch_draw = diffusers_ddim_sampler(config, sample_batch, ddim_steps)
  diff = _check_counts("U-Net", ours, theirs, tolerance)
  key = jax.random.key(config.seed)
  # Compiled ahead of time: a warm-up call of the DDPM sampler would cost as much as a timing.
  compiled, compile_s = {}, {}
  for name, draw in samplers.items():
    start = time.perf_counter()
    compiled[name] = draw.lower(params, key, labels).compile()
    compile_s[name] = time.perf_counter() - start
  torch.set_num_threads(threads[0])
  torch_draw(0.0)  # PyTorch's warm-up step: its first call allocates and picks kernels

  last = {}

  def jax_side(name):
    repeat = iter(range(repeats))

    def measure():
      key_r = jax.random.fold_in(key, next(repeat))  # repeat r draws with fold_in(key, r)
      start = time.perf_counter()
      last[name] = jax.block_until_ready(compiled[name](params, key_r, labels))
      return harness.Timing(time.perf_counter() - start, sample_batch)

    return harness.Side(measure)

  def torch_side(name, threads):
    def measure():
      start = time.perf_counter()
      last[name], steps = torch_draw(torch_seconds)
      # A PyTorch loop cut short by torch_seconds counts the fraction of the images' steps it took.
      return harness.Timing(time.perf_counter() - start, sample_batch * steps / ddim_steps, steps)

    return harness.Side(measure, torch_threads=threads)

  torch_names = [f"torch_{t}" for t in threads]
  timings = harness.compare({"ddim": jax_side("ddim"), "ddpm": jax_side("ddpm"),
                             **{name: torch_side(name, t) for name, t in zip(torch_names, threads)}}, repeats,
                            label="sampling", unit=" images/s")
  rates = {name: timings.rates(name) for name in timings.measurements}
  torch_steps = {name: timings.info(name) for name in torch_names}
  finite = {name: bool(np.all(np.isfinite(np.asarray(x)))) for name, x in last.items()}
  best_torch = timings.best_rates(torch_names)
  ddim_vs_ddpm = timings.ratios("ddim", "ddpm")
  ddim_vs_torch = timings.ratios("ddim", torch_names)
  return {
      "sample_batch": sample_batch, "num_train_steps": config.num_train_steps, "ddim_steps": ddim_steps,
      "step_ratio": config.num_train_steps / ddim_steps,
      "unet": {"channels": list(config.unet_channels), "groups": config.unet_groups, "heads": config.unet_heads,
               "num_classes": NUM_CLASSES, "image_shape": list(IMAGE_SHAPE)},
      "param_count": {"jax": ours, "diffusers": theirs, "relative_difference": diff},
      "compile_s": compile_s, "finite": finite, "torch_steps_per_repeat": torch_steps,
      "images_per_s": {name: statistics.median(v) for name, v in rates.items()},
      "images_per_s_per_repeat": rates,
      "torch_best_images_per_s": statistics.median(best_torch),
      "ddim_vs_ddpm": statistics.median(ddim_vs_ddpm), "ddim_vs_ddpm_per_repeat": ddim_vs_ddpm,
      "ddim_vs_diffusers": statistics.median(ddim_vs_torch), "ddim_vs_diffusers_per_repeat": ddim_vs_torch,
      "timing": timings.record(),
  }


# ---------------------------------------------------------------------------------------
# Part 2: DiT training. The loss, once in JAX and once in PyTorch, from the same schedule.


def schedule_arrays(num_steps: int) -> dict[str, np.ndarray]:
  """The linear schedule's per-timestep terms the loss reads, float32 numpy arrays of shape (T,)."""
  s = diffusion.make_schedule("linear", num_steps)
  posterior = np.asarray(s.posterior_variance, np.float64)
  return {
      "sqrt_abar": np.array(s.sqrt_alphas_cumprod),
      "sqrt_one_minus_abar": np.array(s.sqrt_one_minus_alphas_cumprod),
      "coef_x0": np.array(s.posterior_mean_coef_x0),
      "coef_xt": np.array(s.posterior_mean_coef_xt),
      # log β̃_t with β̃_0 = 0 replaced by β̃_1 (as Nichol & Dhariwal clip it): the learned range's lower end.
      "log_var_min": np.log(np.concatenate([posterior[1:2], posterior[1:]])).astype(np.float32),
      "log_var_max": np.log(np.asarray(s.betas, np.float64)).astype(np.float32),
  }


BIN_HALF_WIDTH = 1.0 / 255.0  # the decoder's bins: half of 2/255, data scaled to [-1, 1]


def vlb_bits_jax(sched: dict, x0, x_t, t, eps_hat, var_values):
  """L_vlb's term at t per example, in bits per dimension (Nichol & Dhariwal, eq. 4-6 and 15).

  Args:
    sched: `schedule_arrays`, as numpy or jax arrays.
    x0, x_t: clean and noisy data, (N, ...).
    t: timesteps (N,).
    eps_hat: the model's ε, without gradient (L_vlb trains the variance only).
    var_values: the model's variance output v in [-1, 1] (unconstrained), shaped like x0.

  Returns:
    (N,): KL(q(x_{t-1} | x_t, x0) || p_θ(x_{t-1} | x_t)) for t > 0, the decoder's -log p_θ(x0 | x1) at t = 0.
  """
  at = lambda name: jnp.asarray(sched[name])[t].reshape((-1,) + (1,) * (x0.ndim - 1))
  log_min, log_max = at("log_var_min"), at("log_var_max")
  frac = (var_values + 1.0) / 2.0
  model_log_var = frac * log_max + (1.0 - frac) * log_min  # eq. 15
  x0_hat = (x_t - at("sqrt_one_minus_abar") * eps_hat) / at("sqrt_abar")
  model_mean = at("coef_x0") * x0_hat + at("coef_xt") * x_t
  true_mean = at("coef_x0") * x0 + at("coef_xt") * x_t
  kl = 0.5 * (-1.0 + model_log_var - log_min + jnp.exp(log_min - model_log_var)
              + jnp.square(true_mean - model_mean) * jnp.exp(-model_log_var))
  # The decoder: the Gaussian's mass on x0's bin, the outer bins open-ended.
  inv_std = jnp.exp(-0.5 * model_log_var)
  cdf = lambda z: 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z ** 3)))
  cdf_plus = cdf(inv_std * (x0 - model_mean + BIN_HALF_WIDTH))
  cdf_min = cdf(inv_std * (x0 - model_mean - BIN_HALF_WIDTH))
  log_prob = jnp.where(x0 < -0.999, jnp.log(jnp.maximum(cdf_plus, 1e-12)),
                       jnp.where(x0 > 0.999, jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12)),
                                 jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))))
  axes = tuple(range(1, x0.ndim))
  per_example = jnp.where(t == 0, -jnp.mean(log_prob, axis=axes), jnp.mean(kl, axis=axes))
  return per_example / math.log(2.0)


def vlb_bits_torch(sched: dict, x0, x_t, t, eps_hat, var_values):
  """`vlb_bits_jax` in PyTorch; `sched` holds torch tensors."""
  at = lambda name: sched[name][t].reshape((-1,) + (1,) * (x0.ndim - 1))
  log_min, log_max = at("log_var_min"), at("log_var_max")
  frac = (var_values + 1.0) / 2.0
  model_log_var = frac * log_max + (1.0 - frac) * log_min
  x0_hat = (x_t - at("sqrt_one_minus_abar") * eps_hat) / at("sqrt_abar")
  model_mean = at("coef_x0") * x0_hat + at("coef_xt") * x_t
  true_mean = at("coef_x0") * x0 + at("coef_xt") * x_t
  kl = 0.5 * (-1.0 + model_log_var - log_min + torch.exp(log_min - model_log_var)
              + (true_mean - model_mean).square() * torch.exp(-model_log_var))
  inv_std = torch.exp(-0.5 * model_log_var)
  cdf = lambda z: 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z ** 3)))
  cdf_plus = cdf(inv_std * (x0 - model_mean + BIN_HALF_WIDTH))
  cdf_min = cdf(inv_std * (x0 - model_mean - BIN_HALF_WIDTH))
  log_prob = torch.where(x0 < -0.999, torch.log(cdf_plus.clamp(min=1e-12)),
                         torch.where(x0 > 0.999, torch.log((1.0 - cdf_min).clamp(min=1e-12)),
                                     torch.log((cdf_plus - cdf_min).clamp(min=1e-12))))
  dims = tuple(range(1, x0.ndim))
  per_example = torch.where(t == 0, -log_prob.mean(dim=dims), kl.mean(dim=dims))
  return per_example / math.log(2.0)


def dit_config(name: str, input_size: int, channels: int, num_classes: int) -> dit.DiTConfig:
  """The paper's DiT (learn_sigma) of this name and input; ConfigError for a name or size dit.config refuses."""
  try:
    return dit.config(name, input_size=input_size, in_channels=channels, num_classes=num_classes, learn_sigma=True)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def dit_optimizer():
  config = optim.default_config()
  config.name, config.learning_rate, config.weight_decay = "adamw", DIT_LEARNING_RATE, 0.0
  return config


def dit_task(cfg: dit.DiTConfig, steps: int) -> Task:
  """The DiT trained by the paper's loss as a research.train Task; batches {'latent' (N, H, W, C), 'label' (N,)}."""
  model = dit.DiT(cfg)
  sched = schedule_arrays(DIT_NUM_TRAIN_STEPS)

  def init(key, batch):
    n = batch["label"].shape[0]
    return model.init(key, batch["latent"], jnp.zeros((n,), jnp.int32), jnp.zeros((n,), jnp.int32))

  def loss(params, batch, key, train, hparams):
    del hparams
    k_labels, k_time, k_noise = jax.random.split(key, 3)
    x0 = batch["latent"]
    y = batch["label"].astype(jnp.int32)
    if train:
      y = dit.drop_labels(k_labels, y, DIT_CLASS_DROPOUT, cfg.num_classes)
    t = jax.random.randint(k_time, (x0.shape[0],), 0, DIT_NUM_TRAIN_STEPS)  # (N,)
    noise = jax.random.normal(k_noise, x0.shape)
    scale = lambda name: jnp.asarray(sched[name])[t][:, None, None, None]
    x_t = scale("sqrt_abar") * x0 + scale("sqrt_one_minus_abar") * noise
    eps, var_values = jnp.split(model.apply(params, x_t, t, y), 2, axis=-1)  # (N, H, W, C) each
    mse = jnp.mean(jnp.square(eps - noise))
    vb = jnp.mean(vlb_bits_jax(sched, x0, x_t, t, jax.lax.stop_gradient(eps), var_values))
    return mse + vb, {"mse": mse, "vb": vb}

  return Task(init=init, tx=optim.make(dit_optimizer(), steps), loss=loss)


def dit_data(cfg: dit.DiTConfig, seed: int) -> dict[str, np.ndarray]:
  """DIT_DATA_SIZE standard-normal latents (NHWC) and uniform labels: the work per step needs no real data."""
  rng = np.random.default_rng(seed)
  latents = rng.standard_normal((DIT_DATA_SIZE, cfg.input_size, cfg.input_size, cfg.in_channels), np.float32)
  return {"latent": latents, "label": rng.integers(0, cfg.num_classes, DIT_DATA_SIZE).astype(np.int32)}


class JaxDiT:
  """Our DiT's jitted, donated train step in a Python for-loop (loop_overhead.py's bare driver)."""

  def __init__(self, cfg: dit.DiTConfig, data: dict, batch_size: int, seed: int, total_steps: int):
    self.task = dit_task(cfg, total_steps)
    self.batcher = Batcher(data, batch_size, seed)
    self.keys = Keys.from_seed(seed)
    self.state = init_state(self.task, self.keys.init, self.batcher(0), 0.0)
    self.param_count = _param_count(self.state.params)
    self.step_fn = jax.jit(make_train_step(self.task, 0.0), donate_argnums=0)
    self.steps_done = 0
    self.losses = []

  def run(self, steps: int) -> float:
    """Trains `steps` steps; returns the seconds they took (until the last update is done)."""
    start = time.perf_counter()
    metrics = []
    for s in range(self.steps_done, self.steps_done + steps):  # counted here: reading state.step would sync
      self.state, m = self.step_fn(self.state, self.batcher(s), jax.random.fold_in(self.keys.train, s))
      metrics.append(m["loss"])
    self.steps_done += steps
    jax.block_until_ready(self.state)
    seconds = time.perf_counter() - start
    self.losses += [float(v) for v in jax.device_get(metrics)]
    return seconds


def diffusers_dit(cfg: dit.DiTConfig) -> DiTTransformer2DModel:
  """diffusers' DiTTransformer2DModel of `cfg`, its per-block embedders tied to the first block's."""
  model = DiTTransformer2DModel(num_attention_heads=cfg.num_heads, attention_head_dim=cfg.hidden_size // cfg.num_heads,
                                in_channels=cfg.in_channels, out_channels=cfg.out_channels, num_layers=cfg.depth,
                                sample_size=cfg.input_size, patch_size=cfg.patch_size,
                                num_embeds_ada_norm=cfg.num_classes, norm_type="ada_norm_zero",
                                activation_fn="gelu-approximate", attention_bias=True)
  shared = model.transformer_blocks[0].norm1.emb
  for block in model.transformer_blocks[1:]:
    block.norm1.emb = shared
  return model


class TorchDiT:
  """diffusers' DiT trained by the same loss with loss.backward() and torch.optim.AdamW, written plainly."""

  def __init__(self, cfg: dit.DiTConfig, data: dict, batch_size: int, seed: int):
    torch.manual_seed(seed)
    self.cfg = cfg
    # eval(): no dropout layers act (rates are 0) and diffusers' per-block label dropout is off.
    self.model = diffusers_dit(cfg).eval()
    self.param_count = _torch_param_count(self.model)
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=DIT_LEARNING_RATE, weight_decay=0.0)
    self.latents = torch.from_numpy(np.ascontiguousarray(data["latent"].transpose(0, 3, 1, 2)))  # (N, C, H, W)
    self.labels = torch.from_numpy(data["label"]).long()
    self.sched = {k: torch.from_numpy(v) for k, v in schedule_arrays(DIT_NUM_TRAIN_STEPS).items()}
    self.batch_size = batch_size
    self.losses = []

  def step(self) -> torch.Tensor:
    idx = torch.randint(0, len(self.labels), (self.batch_size,))
    x0, y = self.latents[idx], self.labels[idx]
    y = torch.where(torch.rand(y.shape) < DIT_CLASS_DROPOUT, self.cfg.num_classes, y)
    t = torch.randint(0, DIT_NUM_TRAIN_STEPS, (self.batch_size,))
    noise = torch.randn_like(x0)
    x_t = self.sched["sqrt_abar"][t][:, None, None, None] * x0 + (
        self.sched["sqrt_one_minus_abar"][t][:, None, None, None] * noise)
    eps, var_values = self.model(x_t, t, class_labels=y).sample.chunk(2, dim=1)  # (N, C, H, W) each
    mse = (eps - noise).square().mean()
    loss = mse + vlb_bits_torch(self.sched, x0, x_t, t, eps.detach(), var_values).mean()
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    return loss.detach()

  def run(self, steps: int, max_seconds: float = math.inf) -> tuple[int, float]:
    """(steps taken, seconds): `steps` steps, or fewer (at least one) when max_seconds runs out."""
    start = time.perf_counter()
    deadline = start + max_seconds
    losses = []
    while len(losses) < steps and (not losses or time.perf_counter() < deadline):
      losses.append(self.step())
    seconds = time.perf_counter() - start
    self.losses += [float(v) for v in losses]
    return len(losses), seconds


def bench_dit(name: str, input_size: int, channels: int, num_classes: int, batch_size: int, steps: int, warmup: int,
              threads: list[int], repeats: int, torch_seconds: float) -> dict:
  """Training steps/s of our DiT and diffusers'; see the module docstring."""
  cfg = dit_config(name, input_size, channels, num_classes)
  seed = 0
  data = dit_data(cfg, seed)
  total_steps = 1 + warmup + repeats * steps
  ours = JaxDiT(cfg, data, batch_size, seed, total_steps)
  compile_s = ours.run(1)  # compiles and runs the first step
  peers = {t: TorchDiT(cfg, data, batch_size, seed) for t in threads}
  counts = {peer.param_count for peer in peers.values()}
  if counts != {ours.param_count}:
    raise AssertionError(f"{name}: diffusers has {counts} parameters, ours {ours.param_count:,}")
  for t, peer in peers.items():
    torch.set_num_threads(t)
    peer.run(warmup)
  # Ours too, last, right before the repeats: on a 2-core host the first blocks of steps
  # dispatched back to back after the compile (and after PyTorch's first steps) ran 2-3x slower.
  ours.run(warmup)

  def torch_side(peer):
    def measure():
      taken, seconds = peer.run(steps, torch_seconds)
      return harness.Timing(seconds, taken, taken)
    return measure

  torch_names = [f"torch_{t}" for t in threads]
  timings = harness.compare({"jax": harness.Side(lambda: harness.Timing(ours.run(steps), steps)),
                             **{f"torch_{t}": harness.Side(torch_side(peers[t]), torch_threads=t) for t in threads}},
                            repeats, label="dit", unit=" steps/s")
  rates = {n: timings.rates(n) for n in timings.measurements}
  torch_steps = {n: timings.info(n) for n in torch_names}
  best_torch = timings.best_rates(torch_names)
  ratios = timings.ratios("jax", torch_names)
  losses = {"jax": ours.losses, **{f"torch_{t}": peer.losses for t, peer in peers.items()}}
  return {
      "dit": name, "input_size": input_size, "channels": channels, "num_classes": num_classes,
      "learn_sigma": cfg.learn_sigma, "depth": cfg.depth, "hidden_size": cfg.hidden_size, "heads": cfg.num_heads,
      "patch_size": cfg.patch_size, "tokens": cfg.num_patches, "batch_size": batch_size, "timed_steps": steps,
      "warmup_steps": warmup,
      "forward_flops_per_example": dit.forward_flops(cfg),
      "param_count": {"jax": ours.param_count, "diffusers": counts.pop()},
      "compile_and_first_step_s": compile_s,
      "steps_per_s": {n: statistics.median(v) for n, v in rates.items()},
      "steps_per_s_per_repeat": rates, "torch_best_steps_per_s": statistics.median(best_torch),
      "torch_steps_per_repeat": torch_steps,
      "jax_vs_diffusers": statistics.median(ratios), "jax_vs_diffusers_per_repeat": ratios,
      "loss_first": {n: v[0] for n, v in losses.items()},
      "loss_last": {n: float(np.mean(v[-max(1, len(v) // 10):])) for n, v in losses.items()},
      "timing": timings.record(),
  }


# ---------------------------------------------------------------------------------------
# The report.


def _threads(n: str) -> str:
  t = n.removeprefix("torch_")
  return f"{t} thread{'' if t == '1' else 's'}"


def _markdown(results: dict) -> str:
  env = harness.environment(*PACKAGES)
  blocks = [
      harness.machine(env, results["load_average"], ("jax", "flax", "torch", "diffusers"))
      + f" Medians of {results['repeats']} repeats, every measurement once per repeat in a "
      "rotated order; a ratio divides two rates of the same repeat (against PyTorch: its faster thread setting "
      f"of that repeat). A PyTorch timing stops after the step that passes {results['torch_seconds']:g} s.",
  ]
  if "sampling" in results:
    s = results["sampling"]
    u, pc = s["unet"], s["param_count"]
    rate, per = s["images_per_s"], s["images_per_s_per_repeat"]
    rows = [("ours: DDIM, lax.scan", s["ddim_steps"], f"{rate['ddim']:,.1f}",
             ", ".join(f"{v:,.1f}" for v in per["ddim"])),
            ("ours: DDPM, lax.scan", s["num_train_steps"], f"{rate['ddpm']:,.2f}",
             ", ".join(f"{v:,.2f}" for v in per["ddpm"]))]
    for n in (k for k in rate if k.startswith("torch_")):
      steps = s["torch_steps_per_repeat"][n]
      cut = "" if min(steps) == s["ddim_steps"] else f" (steps timed: {', '.join(map(str, steps))})"
      rows.append((f"diffusers: DDIMScheduler + UNet2DModel, PyTorch eager, {_threads(n)}{cut}", s["ddim_steps"],
                   f"{rate[n]:,.2f}", ", ".join(f"{v:,.2f}" for v in per[n])))
    blocks += [
        "## Sampling from the default U-Net (experiments/diffusion.py)",
        f"U-Net channels {tuple(u['channels'])}, {u['groups']} groups, {u['heads']} heads at the lowest resolution, "
        f"class-conditional ({u['num_classes']} classes + null), {'x'.join(map(str, u['image_shape']))} images, "
        f"random weights; {pc['jax']:,} parameters (ours) vs {pc['diffusers']:,} (diffusers' UNet2DModel, "
        f"{100 * pc['relative_difference']:+.1f}%: its time-embedding MLP reads 32 sinusoidal features, ours 64). "
        f"One call draws {s['sample_batch']} images; T = {s['num_train_steps']}, DDIM S = {s['ddim_steps']} "
        f"(η = 0, linear τ). JAX compile times (not in the rates): DDIM {s['compile_s']['ddim']:.1f} s, "
        f"DDPM {s['compile_s']['ddpm']:.1f} s.",
        harness.table(["sampler", "steps", "images/s", "per repeat"], rows, align="lrrl"),
        f"- DDIM ({s['ddim_steps']} steps) vs DDPM ({s['num_train_steps']} steps), ours: **{s['ddim_vs_ddpm']:.1f}x** "
        f"images/s (the step ratio is {s['step_ratio']:g}x; per repeat "
        f"{', '.join(f'{v:.1f}x' for v in s['ddim_vs_ddpm_per_repeat'])}).\n"
        f"- Our DDIM vs diffusers' DDIM loop: **{s['ddim_vs_diffusers']:.2f}x** images/s (per repeat "
        f"{', '.join(f'{v:.2f}x' for v in s['ddim_vs_diffusers_per_repeat'])}).",
    ]
  if "dit" in results:
    d = results["dit"]
    rate, per = d["steps_per_s"], d["steps_per_s_per_repeat"]
    rows = []
    for n in rate:
      what = "ours: research.train step, jit" if n == "jax" else f"diffusers, PyTorch eager, {_threads(n)}"
      if n != "jax" and min(d["torch_steps_per_repeat"][n]) < d["timed_steps"]:
        what += f" (steps timed: {', '.join(map(str, d['torch_steps_per_repeat'][n]))})"
      rows.append((what, f"{rate[n]:.2f}", f"{rate[n] / d['torch_best_steps_per_s']:.2f}x",
                   ", ".join(f"{v:.2f}" for v in per[n]), f"{d['loss_first'][n]:.3f} -> {d['loss_last'][n]:.3f}"))
    blocks += [
        f"## {d['dit']} training step vs diffusers' DiTTransformer2DModel",
        f"{d['dit']} (depth {d['depth']}, width {d['hidden_size']}, {d['heads']} heads, patch {d['patch_size']}: "
        f"{d['tokens']} tokens) on {d['input_size']}x{d['input_size']}x{d['channels']} random latents, "
        f"{d['num_classes']} classes (10% label dropout), learn_sigma; loss L_simple + L_vlb; AdamW (lr "
        f"{DIT_LEARNING_RATE:g}, no weight decay), float32, batch {d['batch_size']}, {d['timed_steps']} timed steps "
        f"per measurement after {d['warmup_steps']} untimed steps on each side; "
        f"{d['forward_flops_per_example'] / 1e9:.2f} GFLOP per example forward (XLA's count). "
        f"{d['param_count']['jax']:,} parameters on both sides (diffusers' per-block timestep/label embedders tied "
        f"into one, as in the paper). Ours: research.train.make_train_step jitted with the state donated, "
        f"in a Python for-loop (compile and first step {d['compile_and_first_step_s']:.1f} s, not in the rate).",
        harness.table(["implementation", "steps/s", "vs diffusers", "per repeat (steps/s)", "loss: first -> last 10%"],
                      rows, align="lrrll"),
        f"- Ours vs diffusers' faster setting: **{d['jax_vs_diffusers']:.2f}x** steps/s (per repeat "
        f"{', '.join(f'{v:.2f}x' for v in d['jax_vs_diffusers_per_repeat'])}).",
    ]
  return harness.document("Diffusion: sampling and DiT training vs diffusers in PyTorch eager", *blocks)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad field, before anything is built or timed."""
  harness.check_names("parts", config.parts, PARTS)
  harness.check_counts("torch_threads", config.torch_threads)
  for name in ("repeats", "torch_seconds"):
    check_positive(name, config[name])
  check_positive("param_tolerance", config.param_tolerance, allow_zero=True)
  if "sampling" in config.parts:
    check_positive("sample_batch", config.sample_batch)
    check_positive("num_train_steps", config.num_train_steps, allow_zero=True)
    num_train_steps = unet_config(config.num_train_steps).num_train_steps
    if not 0 < config.ddim_steps <= num_train_steps:
      raise ConfigError(f"ddim_steps must be in [1, T = {num_train_steps}], got {config.ddim_steps}")
  if "dit" in config.parts:
    for name in ("dit_batch", "dit_steps", "dit_classes", "dit_channels"):
      check_positive(name, config[name])
    check_positive("dit_warmup", config.dit_warmup, allow_zero=True)
    dit_config(config.dit, config.dit_input_size, config.dit_channels, config.dit_classes)


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Runs the chosen parts in this process and writes diffusion.json / diffusion.md into `outdir`.

  Returns:
    The dict written as JSON.
  """
  check_config(config)
  parts, threads = list(config.parts), list(config.torch_threads)
  start = time.perf_counter()
  results = {"parts": parts, "repeats": config.repeats, "torch_threads": threads,
             "torch_seconds": config.torch_seconds}
  if "sampling" in parts:
    results["sampling"] = bench_sampling(config.sample_batch, config.num_train_steps, config.ddim_steps, threads,
                                         config.repeats, config.param_tolerance, config.torch_seconds)
  if "dit" in parts:
    results["dit"] = bench_dit(config.dit, config.dit_input_size, config.dit_channels, config.dit_classes,
                               config.dit_batch, config.dit_steps, config.dit_warmup, threads, config.repeats,
                               config.torch_seconds)
  records = [results[part]["timing"] for part in parts]
  results["load_average"] = {"start": records[0]["load_average"]["start"], "end": records[-1]["load_average"]["end"]}
  markdown = _markdown(results)
  print(markdown)
  return harness.write_report(outdir, "diffusion", results, markdown, json_file="diffusion.json", packages=PACKAGES,
                              wall_time_s=time.perf_counter() - start)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
