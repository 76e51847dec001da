"""Gaussian diffusion: noise schedules, training objectives, DDPM and DDIM updates, samplers.

    schedule = make_schedule("cosine", 1000)
    l = loss(schedule, lambda x_t, t: model.apply(params, x_t, t), x0, key, prediction="v")
    taus = ddim_timesteps(1000, 50, "linear")
    x = sample_ddim(schedule, denoise_fn, key, (16, 8, 8, 1), taus, eta=0.0, prediction="v")
    filled = repaint(schedule, denoise_fn, key, images, inpaint_masks("center", images.shape, key),
                     jump_length=10, resample=10)

The pure functions of the diffusion process (Ho et al., 2020, "DDPM"; Song et al., 2021,
"DDIM"); the denoiser that plugs into them is any `denoise_fn(x_t, t) -> output`. The loop's
plug-in, which trains a U-Net or a DiT as the denoiser, is research/tasks/diffusion.py.

Conventions, the same as diffusers' schedulers so their numbers can be compared directly:
  * timesteps are 0-based: t = 0 ... T-1, and ᾱ_{-1} = 1 stands for the clean data;
  * `alphas_cumprod[t]` is ᾱ_t = prod_{s<=t} (1 - β_s), so x_t ~ N(sqrt(ᾱ_t) x0, (1 - ᾱ_t) I);
  * a model output is read through `prediction`: "epsilon" (the noise ε), "v" (the velocity
    v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x0 of Salimans & Ho, 2022) or "x0" (the clean data).

The file reads top-down: the Schedule and its two β schedules; the forward process, the
training targets and the loss; the update rules (DDPM, DDIM and DDIM's σ̂ variant, one function
each, with the papers' equation numbers); classifier-free guidance; the samplers, each one
`lax.scan` over the timesteps with a typed carry; last, inpainting with RePaint (Lugmayr et al.,
2022): its walk through the levels with jumps back, built on the host, its masks, and its sampler,
one `lax.scan` over that walk. The samplers are jitted with the denoiser, the shape and the
prediction type static: τ, η and the guidance scale are traced, so one program serves every
τ of a given length, and a sweep over η or w is a `jax.vmap`. Pass the same denoiser object
across calls (not a new lambda each time) to reuse the compiled program.
"""

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("epsilon", "v", "x0")
VARIANCES = ("fixed_small", "fixed_large")
TIMESTEP_KINDS = ("linear", "quadratic")
SAMPLERS = ("ddpm", "ddim")  # `sample_ddpm` (the Markov chain) or `sample_ddim` (along a subsequence τ)

LINEAR_BETA_START = 1e-4  # Ho et al., section 4: β_1 = 1e-4 ...
LINEAR_BETA_END = 0.02  # ... to β_T = 0.02, linearly
COSINE_OFFSET = 0.008  # Nichol & Dhariwal's s, so that β_0 is not vanishingly small
COSINE_MAX_BETA = 0.999  # their cap, preventing the singularity at t = T
CLIP_SAMPLE_RANGE = 1.0  # `clip_sample` clips x0_hat to the data range [-1, 1]

# A denoiser: (x_t of shape (batch, ...), t of shape (batch,) int32) -> output shaped like x_t.
DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


# ---------------------------------------------------------------------------------------
# The schedule.


class Schedule(NamedTuple):
  """The β schedule and the quantities derived from it, each float32 of shape (T,).

  A pytree, so it passes through `jax.jit` and `jax.vmap` as an argument.

  Attributes:
    betas: β_t, the forward process variances.
    alphas: α_t = 1 - β_t.
    alphas_cumprod: ᾱ_t = prod_{s<=t} α_s.
    alphas_cumprod_prev: ᾱ_{t-1}, with ᾱ_{-1} = 1.
    sqrt_alphas_cumprod: sqrt(ᾱ_t), the signal scale of x_t.
    sqrt_one_minus_alphas_cumprod: sqrt(1 - ᾱ_t), the noise scale of x_t.
    posterior_variance: β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t) (Ho et al., eq. 7); 0 at t = 0.
    posterior_mean_coef_x0: sqrt(ᾱ_{t-1}) β_t / (1 - ᾱ_t), the weight of x0 in μ̃_t (eq. 7).
    posterior_mean_coef_xt: sqrt(α_t) (1 - ᾱ_{t-1}) / (1 - ᾱ_t), the weight of x_t in μ̃_t.
    log_alphas_cumprod: log ᾱ_t, from which DDIM forms 1 - ᾱ_t and 1 - ᾱ_t / ᾱ_s between any
      two timesteps with expm1, without float32 cancellation.
  """

  betas: jax.Array
  alphas: jax.Array
  alphas_cumprod: jax.Array
  alphas_cumprod_prev: jax.Array
  sqrt_alphas_cumprod: jax.Array
  sqrt_one_minus_alphas_cumprod: jax.Array
  posterior_variance: jax.Array
  posterior_mean_coef_x0: jax.Array
  posterior_mean_coef_xt: jax.Array
  log_alphas_cumprod: jax.Array

  @property
  def num_steps(self) -> int:
    """T, the number of training timesteps (static: an array shape)."""
    return self.betas.shape[0]


def _linear_betas(num_steps: int) -> np.ndarray:
  """Ho et al.'s linear β, the same endpoints for every T (as diffusers' "linear")."""
  return np.linspace(LINEAR_BETA_START, LINEAR_BETA_END, num_steps, dtype=np.float64)


def _cosine_betas(num_steps: int) -> np.ndarray:
  """Nichol & Dhariwal (2021), eq. 17: ᾱ(t) = f(t) / f(0), f(t) = cos²((t/T + s) / (1 + s) · π/2).

  β_t = 1 - ᾱ(t+1) / ᾱ(t), capped at 0.999; f(0) cancels in the ratio. This is diffusers'
  "squaredcos_cap_v2".
  """
  def f(u):
    return math.cos((u + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2

  return np.array([min(1 - f((i + 1) / num_steps) / f(i / num_steps), COSINE_MAX_BETA)
                   for i in range(num_steps)], dtype=np.float64)


def make_schedule(name: str, num_steps: int) -> Schedule:
  """Builds a β schedule and its derived quantities.

  Computed in float64 on the host and stored as float32: ᾱ_t then carries no float32 rounding
  from a thousand products, and the posterior coefficients none from 1 - ᾱ_t, which cancels
  catastrophically in float32 at small t (1 - ᾱ_0 = β_0 = 1e-4).

  Args:
    name: "linear" (Ho et al.: β from 1e-4 to 0.02) or "cosine" (Nichol & Dhariwal, s = 0.008).
    num_steps: T, the number of timesteps (> 0).

  Returns:
    The Schedule, every field of shape (T,).

  Raises:
    ValueError: for an unknown name or a non-positive number of steps.
  """
  if name not in SCHEDULES:
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
  if int(num_steps) != num_steps or num_steps <= 0:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
  betas = _linear_betas(num_steps) if name == "linear" else _cosine_betas(num_steps)
  alphas = 1.0 - betas
  alphas_cumprod = np.cumprod(alphas)
  alphas_cumprod_prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
  posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
  fields = dict(betas=betas, alphas=alphas, alphas_cumprod=alphas_cumprod, alphas_cumprod_prev=alphas_cumprod_prev,
                sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
                sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
                posterior_variance=posterior_variance,
                posterior_mean_coef_x0=np.sqrt(alphas_cumprod_prev) * betas / (1.0 - alphas_cumprod),
                posterior_mean_coef_xt=np.sqrt(alphas) * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod),
                log_alphas_cumprod=np.cumsum(np.log(alphas)))
  return Schedule(**{k: jnp.asarray(v, jnp.float32) for k, v in fields.items()})


def _at(values: jax.Array, t: jax.Array, x: jax.Array) -> jax.Array:
  """values[t] shaped to broadcast against x: t is a scalar or a (batch,) vector."""
  v = values[t]  # () or (batch,)
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))  # (1, ..., 1) or (batch, 1, ..., 1)


def _log_alpha_bar(schedule: Schedule, t: jax.Array, x: jax.Array) -> jax.Array:
  """log ᾱ_t shaped to broadcast against x, with ᾱ_{-1} = 1 (the clean data, DDIM's last step)."""
  t = jnp.asarray(t)
  log_abar = _at(schedule.log_alphas_cumprod, jnp.maximum(t, 0), x)
  return jnp.where(t.reshape(t.shape + (1,) * (x.ndim - t.ndim)) < 0, 0.0, log_abar)


def _check_prediction(prediction: str) -> None:
  if prediction not in PREDICTIONS:
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


# ---------------------------------------------------------------------------------------
# Forward process and training objectives.


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """Draws x_t ~ q(x_t | x0) = N(sqrt(ᾱ_t) x0, (1 - ᾱ_t) I) (Ho et al., eq. 4).

  Args:
    schedule: the Schedule.
    x0: clean data, (batch, ...).
    t: timesteps in [0, T), a scalar or (batch,).
    noise: ε ~ N(0, I), shaped like x0.

  Returns:
    x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε, shaped like x0.
  """
  return _at(schedule.sqrt_alphas_cumprod, t, x0) * x0 + _at(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise


def q_jump(schedule: Schedule, x_t: jax.Array, t: jax.Array, t_next: jax.Array, noise: jax.Array) -> jax.Array:
  """Draws x_{t_next} ~ q(x_{t_next} | x_t), forward noising by several steps at once (t <= t_next).

  The forward chain from t to t_next composes to N(sqrt(ᾱ_{t_next} / ᾱ_t) x_t, (1 - ᾱ_{t_next} /
  ᾱ_t) I) (the product of the α_s for t < s <= t_next); RePaint's jump back in time (Lugmayr et
  al., 2022, Algorithm 1, the resampling step, taken j steps at once). The ratio comes from log ᾱ through
  expm1, without float32 cancellation when t_next is close to t.

  Args:
    schedule: the Schedule.
    x_t: the sample at level t, (batch, ...).
    t: the current level in [-1, T) (-1: clean data), a scalar or (batch,).
    t_next: the level reached, in [t, T), same shape as t.
    noise: z ~ N(0, I), shaped like x_t.

  Returns:
    x_{t_next}, shaped like x_t.
  """
  log_ratio = _log_alpha_bar(schedule, t_next, x_t) - _log_alpha_bar(schedule, t, x_t)
  return jnp.exp(0.5 * log_ratio) * x_t + jnp.sqrt(-jnp.expm1(log_ratio)) * noise


def training_target(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array,
                    prediction: str = "epsilon") -> jax.Array:
  """What the model should output at x_t = q_sample(schedule, x0, t, noise).

  Args:
    schedule: the Schedule.
    x0: clean data, (batch, ...).
    t: timesteps, a scalar or (batch,).
    noise: the ε that made x_t, shaped like x0.
    prediction: "epsilon" (ε; Ho et al.), "v" (sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x0; Salimans & Ho,
      2022) or "x0".

  Returns:
    The target, shaped like x0.
  """
  _check_prediction(prediction)
  if prediction == "epsilon":
    return noise
  if prediction == "x0":
    return x0
  return _at(schedule.sqrt_alphas_cumprod, t, x0) * noise - _at(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * x0


def to_x0_eps(schedule: Schedule, x_t: jax.Array, t: jax.Array, output: jax.Array,
              prediction: str = "epsilon") -> tuple[jax.Array, jax.Array]:
  """Reads a model output as estimates of (x0, ε), inverting x_t = sqrt(ᾱ) x0 + sqrt(1 - ᾱ) ε.

  ε-prediction: x0 = (x_t - sqrt(1 - ᾱ) ε) / sqrt(ᾱ) (Ho et al., eq. 15).
  v-prediction: x0 = sqrt(ᾱ) x_t - sqrt(1 - ᾱ) v and ε = sqrt(ᾱ) v + sqrt(1 - ᾱ) x_t, which
    never divide by a small sqrt(ᾱ) (why v is preferred at high noise).
  x0-prediction: ε = (x_t - sqrt(ᾱ) x0) / sqrt(1 - ᾱ).

  Args:
    schedule: the Schedule.
    x_t: noisy data, (batch, ...).
    t: timesteps in [0, T), a scalar or (batch,).
    output: the model output at (x_t, t), shaped like x_t.
    prediction: what the output means, one of PREDICTIONS.

  Returns:
    (x0_hat, eps_hat), each shaped like x_t.
  """
  _check_prediction(prediction)
  a = _at(schedule.sqrt_alphas_cumprod, t, x_t)
  s = _at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)
  if prediction == "epsilon":
    return (x_t - s * output) / a, output
  if prediction == "x0":
    return output, (x_t - a * output) / s
  return a * x_t - s * output, a * output + s * x_t


def loss(schedule: Schedule, model_fn: DenoiseFn, x0: jax.Array, key: jax.Array,
         prediction: str = "epsilon") -> jax.Array:
  """The unweighted denoising loss: L_simple (Ho et al., eq. 14) for ε, and its v and x0 analogues.

  E_{t ~ U{0..T-1}, ε ~ N(0, I)} ||model_fn(x_t, t) - target||², averaged over every element.

  Args:
    schedule: the Schedule.
    model_fn: (x_t, t of shape (batch,)) -> output shaped like x_t; close over the parameters.
    x0: a batch of clean data, (batch, ...).
    key: PRNG key; split here into the timestep and the noise streams.
    prediction: what model_fn predicts, one of PREDICTIONS.

  Returns:
    The scalar loss.
  """
  _check_prediction(prediction)
  k_time, k_noise = jax.random.split(key)
  t = jax.random.randint(k_time, (x0.shape[0],), 0, schedule.num_steps)  # (batch,)
  noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
  x_t = q_sample(schedule, x0, t, noise)
  target = training_target(schedule, x0, t, noise, prediction)
  return jnp.mean(jnp.square(model_fn(x_t, t) - target))


# ---------------------------------------------------------------------------------------
# Update rules.


def ddpm_step(schedule: Schedule, x_t: jax.Array, eps: jax.Array, t: jax.Array, noise: jax.Array,
              variance: str = "fixed_small", x0: jax.Array | None = None, clip_sample: bool = False) -> jax.Array:
  """One ancestral step x_t -> x_{t-1} ~ N(μ̃_t(x_t, x0_hat), σ_t² I) (Ho et al., Algorithm 2).

  The mean is the forward posterior's (Ho et al., eq. 7) at x0_hat from eq. 15, which equals the
  ε form of eq. 11: μ̃ = sqrt(ᾱ_{t-1}) β_t / (1 - ᾱ_t) x0 + sqrt(α_t) (1 - ᾱ_{t-1}) / (1 - ᾱ_t) x_t.
  The variance is σ_t² = β̃_t ("fixed_small", the posterior's) or β_t ("fixed_large"), the two
  choices of Ho et al., section 3.2. At t = 0 the step returns the mean: no noise.

  Args:
    schedule: the Schedule.
    x_t: current sample, (batch, ...).
    eps: the ε estimate at (x_t, t), shaped like x_t.
    t: timesteps in [0, T), a scalar or (batch,).
    noise: z ~ N(0, I), shaped like x_t.
    variance: "fixed_small" or "fixed_large" (a Python string: it picks the code path).
    x0: optional x0 estimate consistent with eps (from `to_x0_eps`); v- and x0-prediction pass
      it so that x0 is not re-derived from ε by dividing by a small sqrt(ᾱ_t).
    clip_sample: clip x0_hat to the data range [-1, 1] before it enters the mean (diffusers'
      DDPMScheduler with clip_sample=True).

  Returns:
    x_{t-1}, shaped like x_t.
  """
  if variance not in VARIANCES:
    raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
  if x0 is None:
    x0 = (x_t - _at(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / _at(schedule.sqrt_alphas_cumprod, t, x_t)
  if clip_sample:
    x0 = clip_x0(x0)
  mean = _at(schedule.posterior_mean_coef_x0, t, x_t) * x0 + _at(schedule.posterior_mean_coef_xt, t, x_t) * x_t
  var = _at(schedule.posterior_variance if variance == "fixed_small" else schedule.betas, t, x_t)
  t_b = jnp.asarray(t).reshape(jnp.shape(t) + (1,) * (x_t.ndim - jnp.ndim(t)))
  return mean + jnp.where(t_b > 0, jnp.sqrt(var), 0.0) * noise


class _DDIMTerms(NamedTuple):
  """The noise levels of one DDIM step, each broadcastable against the sample."""

  abar: jax.Array  # ᾱ_t
  abar_prev: jax.Array  # ᾱ_prev
  one_minus: jax.Array  # 1 - ᾱ_t
  one_minus_prev: jax.Array  # 1 - ᾱ_prev
  ratio: jax.Array  # r = (1 - ᾱ_t / ᾱ_prev) / (1 - ᾱ_t), so that σ_t(η)² = η² (1 - ᾱ_prev) r


def _ddim_terms(schedule: Schedule, t: jax.Array, t_prev: jax.Array, x: jax.Array) -> _DDIMTerms:
  """The terms of eq. 12 and 16 between t and t_prev (either may be -1, meaning ᾱ = 1).

  Every difference comes from log ᾱ through expm1: in float32, 1 - ᾱ_t and 1 - ᾱ_t / ᾱ_prev
  would lose half their digits at small t. r lies in [0, 1]; it is 0 when t = -1 (no noise
  level to remove) and is clamped to 0 for steps that go upwards (t_prev > t, inversion).
  """
  log_abar = _log_alpha_bar(schedule, t, x)
  log_abar_prev = _log_alpha_bar(schedule, t_prev, x)
  one_minus = -jnp.expm1(log_abar)
  safe = jnp.where(one_minus > 0, one_minus, 1.0)
  ratio = jnp.where(one_minus > 0, -jnp.expm1(log_abar - log_abar_prev) / safe, 0.0)
  return _DDIMTerms(jnp.exp(log_abar), jnp.exp(log_abar_prev), one_minus, -jnp.expm1(log_abar_prev),
                    jnp.maximum(ratio, 0.0))


def _eta(eta: jax.Array, x: jax.Array) -> jax.Array:
  eta = jnp.asarray(eta, x.dtype)
  return eta.reshape(eta.shape + (1,) * (x.ndim - eta.ndim))  # () or (batch,) -> broadcastable


def ddim_sigma(schedule: Schedule, t: jax.Array, t_prev: jax.Array, eta: jax.Array, x: jax.Array) -> jax.Array:
  """σ_t(η) = η sqrt((1 - ᾱ_prev) / (1 - ᾱ_t)) sqrt(1 - ᾱ_t / ᾱ_prev) (Song et al., eq. 16).

  Args:
    schedule: the Schedule.
    t: current timesteps, a scalar or (batch,).
    t_prev: the next (less noisy) timesteps; -1 means ᾱ_prev = 1.
    eta: η >= 0, a scalar or (batch,) array (may be traced).
    x: an array of the sample's shape, for broadcasting.

  Returns:
    σ_t, broadcastable against x.
  """
  terms = _ddim_terms(schedule, t, t_prev, x)
  return _eta(eta, x) * jnp.sqrt(terms.one_minus_prev * terms.ratio)


def clip_x0(x0: jax.Array) -> jax.Array:
  """x0_hat clipped to the data range [-1, 1] (diffusers' clip_sample, clip_sample_range = 1).

  Early in sampling x0_hat = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t) amplifies the denoiser's error
  by 1 / sqrt(ᾱ_t) and leaves the data range; clipped, that overshoot is not carried into the
  next sample.
  """
  return jnp.clip(x0, -CLIP_SAMPLE_RANGE, CLIP_SAMPLE_RANGE)


def _terms_and_x0(schedule: Schedule, x_t, eps, t, t_prev, x0, clip_sample=False):
  """The DDIM terms of (t, t_prev) and x0_hat = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t) (eq. 9), unless given.

  With `clip_sample`, x0_hat is clipped to [-1, 1] and ε re-derived from it, ε = (x_t -
  sqrt(ᾱ_t) x0_hat) / sqrt(1 - ᾱ_t), so that the pair stays consistent with x_t (as GLIDE does,
  and diffusers' DDIMScheduler with clip_sample=True and use_clipped_model_output=True).
  Returns (terms, x0_hat, ε).
  """
  terms = _ddim_terms(schedule, t, t_prev, x_t)
  if x0 is None:
    x0 = (x_t - jnp.sqrt(terms.one_minus) * eps) / jnp.sqrt(terms.abar)
  if clip_sample:
    x0 = clip_x0(x0)
    eps = (x_t - jnp.sqrt(terms.abar) * x0) / jnp.sqrt(terms.one_minus)
  return terms, x0, eps


def ddim_step(schedule: Schedule, x_t: jax.Array, eps: jax.Array, t: jax.Array, t_prev: jax.Array,
              eta: jax.Array = 0.0, noise: jax.Array | None = None, x0: jax.Array | None = None,
              clip_sample: bool = False) -> jax.Array:
  """The generalized DDIM update x_t -> x_{t_prev} (Song et al., eq. 12, with σ_t(η) from eq. 16).

      x_prev = sqrt(ᾱ_prev) x0_hat + sqrt(1 - ᾱ_prev - σ_t²) ε + σ_t z.

  η = 0 is the deterministic DDIM; η = 1 with t_prev = t - 1 is DDPM with σ² = β̃_t. With η = 0
  and t_prev > t the same formula runs upwards: the encoding of eq. 13 in reverse (`ddim_invert`).

  Args:
    schedule: the Schedule.
    x_t: current sample, (batch, ...).
    eps: the ε estimate at (x_t, t), shaped like x_t.
    t: current timesteps, a scalar or (batch,); -1 means ᾱ = 1 (the clean data).
    t_prev: target timesteps, same shape as t; -1 means ᾱ_prev = 1 (the last step).
    eta: η, a scalar or (batch,) array (may be traced).
    noise: z ~ N(0, I) shaped like x_t; None for zeros (enough when η = 0).
    x0: optional x0 estimate consistent with eps (see `ddpm_step`).
    clip_sample: clip x0_hat to [-1, 1] and re-derive ε from the clipped x0_hat (diffusers'
      DDIMScheduler with clip_sample=True and use_clipped_model_output=True). Needs t >= 0.

  Returns:
    x_{t_prev}, shaped like x_t.
  """
  terms, x0, eps = _terms_and_x0(schedule, x_t, eps, t, t_prev, x0, clip_sample)
  eta = _eta(eta, x_t)
  # 1 - ᾱ_prev - σ² in factored form, (1 - ᾱ_prev)(1 - η² r): "the direction pointing to x_t".
  direction = jnp.sqrt(terms.one_minus_prev * jnp.maximum(1.0 - eta**2 * terms.ratio, 0.0)) * eps
  x_prev = jnp.sqrt(terms.abar_prev) * x0 + direction
  if noise is None:
    return x_prev
  return x_prev + eta * jnp.sqrt(terms.one_minus_prev * terms.ratio) * noise


def sigma_hat_step(schedule: Schedule, x_t: jax.Array, eps: jax.Array, t: jax.Array, t_prev: jax.Array,
                   noise: jax.Array, x0: jax.Array | None = None, clip_sample: bool = False) -> jax.Array:
  """The DDPM-like step x_t -> x_{t_prev} with DDIM's larger variance σ̂ (Song et al., section 5.1, Table 1).

  Restricted to the sub-sequence τ, the forward process is Markov with β̂_t = 1 - ᾱ_t / ᾱ_prev.
  This is Ho et al.'s ancestral step of that chain: the mean is its posterior's (Ho et al.,
  eq. 7 with β̂ in place of β) at x0_hat,

      μ̂ = sqrt(ᾱ_prev) β̂_t / (1 - ᾱ_t) x0 + sqrt(ᾱ_t / ᾱ_prev) (1 - ᾱ_prev) / (1 - ᾱ_t) x_t,

  and the variance is σ̂_t² = β̂_t = 1 - ᾱ_t / ᾱ_prev, the paper's σ̂_{τ_i} = sqrt(1 - α_{τ_i} /
  α_{τ_{i-1}}) (its α is ᾱ here): "fixed_large" on the sub-sequence. σ̂ does not fit eq. 12
  (1 - ᾱ_prev - σ̂² can be negative), so the σ̂ row of Table 1 uses this mean, as the DDIM
  repository's `ddpm_steps` and diffusers' DDPMScheduler (variance_type="fixed_large", with
  num_inference_steps) do. On the full sequence (t_prev = t - 1) it is `ddpm_step` with
  "fixed_large". As there, no noise is added at t = 0, so the last step of a τ starting at 0
  returns x0_hat; a repeated τ (t_prev = t) leaves the sample unchanged.

  Args:
    schedule: the Schedule.
    x_t: current sample, (batch, ...).
    eps: the ε estimate at (x_t, t), shaped like x_t.
    t: current timesteps in [0, T), a scalar or (batch,).
    t_prev: target timesteps, same shape as t, t_prev <= t; -1 means ᾱ_prev = 1 (the last step).
    noise: z ~ N(0, I), shaped like x_t.
    x0: optional x0 estimate consistent with eps (see `ddpm_step`).
    clip_sample: clip x0_hat to [-1, 1] before it enters the mean (diffusers' DDPMScheduler with
      clip_sample=True); the mean does not use ε.

  Returns:
    x_{t_prev}, shaped like x_t.
  """
  terms, x0, _ = _terms_and_x0(schedule, x_t, eps, t, t_prev, x0, clip_sample)
  # ratio = β̂ / (1 - ᾱ_t), from expm1 of log ᾱ: β̂ and 1 - ᾱ_t both cancel in float32 at small t.
  coef_x0 = jnp.sqrt(terms.abar_prev) * terms.ratio
  coef_xt = jnp.sqrt(terms.abar / terms.abar_prev) * terms.one_minus_prev / terms.one_minus
  t_b = jnp.asarray(t).reshape(jnp.shape(t) + (1,) * (x_t.ndim - jnp.ndim(t)))
  sigma = jnp.where(t_b > 0, jnp.sqrt(terms.ratio * terms.one_minus), 0.0)  # σ̂ = sqrt(β̂)
  return coef_x0 * x0 + coef_xt * x_t + sigma * noise


def ddim_timesteps(num_train_steps: int, num_sample_steps: int, kind: str = "linear") -> jax.Array:
  """The DDIM sub-sequence τ of [0, T), ascending (Song et al., section 4.2 and appendix D.2).

  "linear" is the DDIM repository's uniform skip, range(0, T, T // S): when S divides T these
  are S steps, the same as diffusers' "leading" spacing with steps_offset = 0; otherwise the
  skip T // S leaves a few more than S. "quadratic" is int((linspace(0, sqrt(0.8 T), S))²),
  as used there for CIFAR-10; once S - 1 exceeds sqrt(0.8 T) its first entries repeat, and a
  step from τ to the same τ leaves the sample unchanged.

  Args:
    num_train_steps: T.
    num_sample_steps: S, in [1, T].
    kind: "linear" or "quadratic".

  Returns:
    τ as int32, ascending.

  Raises:
    ValueError: for S outside [1, T] or an unknown kind.
  """
  if kind not in TIMESTEP_KINDS:
    raise ValueError(f"unknown timestep kind {kind!r}; choose one of {', '.join(TIMESTEP_KINDS)}")
  if not 0 < num_sample_steps <= num_train_steps:
    raise ValueError(f"num_sample_steps must be in [1, {num_train_steps}], got {num_sample_steps}")
  if kind == "linear":
    taus = np.arange(0, num_train_steps, num_train_steps // num_sample_steps)
  else:
    taus = (np.linspace(0, np.sqrt(num_train_steps * 0.8), num_sample_steps) ** 2).astype(np.int64)
  return jnp.asarray(taus, jnp.int32)


# ---------------------------------------------------------------------------------------
# Classifier-free guidance.


def classifier_free_guidance(cond_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array], labels: jax.Array,
                             null_label: jax.Array | int, scale: jax.Array) -> DenoiseFn:
  """Classifier-free guidance (Ho & Salimans, 2022, eq. 6) as a denoiser for the samplers.

  ε = ε_u + w (ε_c - ε_u): w = 0 is unconditional, w = 1 conditional, w > 1 guided (the
  paper's (1 + w) ε_c - w ε_u with its w shifted by one, as in DiT and diffusers). Both halves
  come from ONE forward of the batch concatenated with itself, the second half with null labels.
  The combination is applied to the raw output: its weights (1 - w, w) sum to 1 and every
  prediction type is affine in ε at fixed (x_t, t), so this is the same as combining ε.

  Args:
    cond_fn: (x_t, t, labels) -> output shaped like x_t.
    labels: class labels, (batch, ...).
    null_label: the label meaning "no condition" (broadcast to labels' shape).
    scale: the guidance scale w, a scalar or (batch,) array; traced, so a sweep over w is a vmap.

  Returns:
    denoise_fn(x_t, t) -> the guided output, shaped like x_t.
  """
  null = jnp.broadcast_to(jnp.asarray(null_label, labels.dtype), labels.shape)

  def denoise_fn(x_t, t):
    batch = x_t.shape[0]
    out = cond_fn(jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]),
                  jnp.concatenate([labels, null]))  # (2 batch, ...)
    out_c, out_u = out[:batch], out[batch:]  # (batch, ...) each
    w = jnp.asarray(scale, out.dtype)
    w = w.reshape(w.shape + (1,) * (out_c.ndim - w.ndim))
    return out_u + w * (out_c - out_u)

  return denoise_fn


# ---------------------------------------------------------------------------------------
# Samplers: one lax.scan over the timesteps each.


class SamplerCarry(NamedTuple):
  """What a sampler's scan carries from one timestep to the next."""

  x: jax.Array  # the current sample x_t, (batch, ...)


class DDIMStepInput(NamedTuple):
  """One DDIM step's timesteps: from t to t_prev (-1 after the last)."""

  t: jax.Array  # () int32
  t_prev: jax.Array  # () int32


def _start_and_step_keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Named streams: x_T from k_start; the noise of step t from fold_in(k_steps, t)."""
  k_start, k_steps = jax.random.split(key)
  return k_start, k_steps


def sample_ddpm(schedule: Schedule, denoise_fn: DenoiseFn, key: jax.Array, shape: tuple[int, ...], *,
                prediction: str = "epsilon", variance: str = "fixed_small", clip_sample: bool = False,
                x_T: jax.Array | None = None) -> jax.Array:
  """Ancestral sampling through all T steps (Ho et al., Algorithm 2), one `lax.scan`.

  Step t draws its noise from fold_in(k_steps, t), as `sample_ddim` does, so DDIM with η = 1 on
  the full sequence draws the same noise and returns the same samples.

  Args:
    schedule: the Schedule.
    denoise_fn: (x_t, t of shape (batch,)) -> output, read through `prediction`.
    key: PRNG key.
    shape: the batch's shape, a tuple (batch, ...).
    prediction: what denoise_fn predicts, one of PREDICTIONS.
    variance: "fixed_small" (β̃_t) or "fixed_large" (β_t).
    clip_sample: clip every step's x0_hat to [-1, 1] (see `ddpm_step`).
    x_T: optional starting noise, shaped `shape`; drawn from the key when None.

  Returns:
    x_0 samples, shaped `shape`.
  """
  _check_prediction(prediction)
  if variance not in VARIANCES:
    raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
  return _sample_ddpm(schedule, denoise_fn, key, tuple(shape), prediction, variance, bool(clip_sample), x_T)


@functools.partial(jax.jit, static_argnames=("denoise_fn", "shape", "prediction", "variance", "clip_sample"))
def _sample_ddpm(schedule, denoise_fn, key, shape, prediction, variance, clip_sample, x_T):
  k_start, k_steps = _start_and_step_keys(key)
  x = jax.random.normal(k_start, shape) if x_T is None else x_T

  def step(carry: SamplerCarry, t: jax.Array) -> tuple[SamplerCarry, None]:
    t_batch = jnp.full((shape[0],), t, jnp.int32)  # (batch,)
    x0, eps = to_x0_eps(schedule, carry.x, t, denoise_fn(carry.x, t_batch), prediction)
    noise = jax.random.normal(jax.random.fold_in(k_steps, t), shape)
    return SamplerCarry(ddpm_step(schedule, carry.x, eps, t, noise, variance, x0=x0, clip_sample=clip_sample)), None

  ts = jnp.arange(schedule.num_steps - 1, -1, -1, dtype=jnp.int32)  # T-1, ..., 0
  final, _ = jax.lax.scan(step, SamplerCarry(x), ts)
  return final.x


def sample_ddim(schedule: Schedule, denoise_fn: DenoiseFn, key: jax.Array, shape: tuple[int, ...],
                timesteps: jax.Array, eta: jax.Array = 0.0, *, prediction: str = "epsilon", clip_sample: bool = False,
                x_T: jax.Array | None = None) -> jax.Array:
  """DDIM sampling along τ (Song et al., eq. 12 with σ(η) of eq. 16), one `lax.scan`.

  Goes τ_{S-1} -> τ_{S-2} -> ... -> τ_0 -> clean data (ᾱ = 1). `timesteps` and `eta` are
  traced: one compiled program per number of steps (and denoiser), and η can be vmapped.

  Args:
    schedule: the Schedule.
    denoise_fn: (x_t, t of shape (batch,)) -> output, read through `prediction`.
    key: PRNG key (only x_T and, for η > 0, the step noise use it).
    shape: the batch's shape, a tuple (batch, ...).
    timesteps: τ, ascending int array of shape (S,) (see `ddim_timesteps`).
    eta: η, a scalar or (batch,) array.
    prediction: what denoise_fn predicts, one of PREDICTIONS.
    clip_sample: clip every step's x0_hat to [-1, 1] and re-derive ε from it (see `ddim_step`).
    x_T: optional starting noise, shaped `shape`; drawn from the key when None.

  Returns:
    x_0 samples, shaped `shape`.
  """
  _check_prediction(prediction)
  return _sample_along(schedule, denoise_fn, key, tuple(shape), jnp.asarray(timesteps, jnp.int32), eta, prediction,
                       bool(clip_sample), x_T, "ddim")


def sample_sigma_hat(schedule: Schedule, denoise_fn: DenoiseFn, key: jax.Array, shape: tuple[int, ...],
                     timesteps: jax.Array, *, prediction: str = "epsilon", clip_sample: bool = False,
                     x_T: jax.Array | None = None) -> jax.Array:
  """Sampling along τ with `sigma_hat_step` (the σ̂ row of Song et al.'s Table 1), one `lax.scan`.

  The same walk as `sample_ddim` (τ_{S-1} -> ... -> τ_0 -> clean data) with the same x_T and
  step noise for the same key, so its samples pair with DDIM's. `timesteps` is traced.

  Args:
    schedule: the Schedule.
    denoise_fn: (x_t, t of shape (batch,)) -> output, read through `prediction`.
    key: PRNG key.
    shape: the batch's shape, a tuple (batch, ...).
    timesteps: τ, ascending int array of shape (S,) (see `ddim_timesteps`).
    prediction: what denoise_fn predicts, one of PREDICTIONS.
    clip_sample: clip every step's x0_hat to [-1, 1] (see `sigma_hat_step`).
    x_T: optional starting noise, shaped `shape`; drawn from the key when None.

  Returns:
    x_0 samples, shaped `shape`.
  """
  _check_prediction(prediction)
  return _sample_along(schedule, denoise_fn, key, tuple(shape), jnp.asarray(timesteps, jnp.int32), 0.0, prediction,
                       bool(clip_sample), x_T, "sigma_hat")


@functools.partial(jax.jit, static_argnames=("denoise_fn", "shape", "prediction", "clip_sample", "update"))
def _sample_along(schedule, denoise_fn, key, shape, timesteps, eta, prediction, clip_sample, x_T, update):
  """The scan over τ shared by `sample_ddim` (update "ddim") and `sample_sigma_hat` ("sigma_hat")."""
  k_start, k_steps = _start_and_step_keys(key)
  x = jax.random.normal(k_start, shape) if x_T is None else x_T
  prev = jnp.concatenate([jnp.array([-1], jnp.int32), timesteps[:-1]])  # τ_{i-1}, with -1 before τ_0

  def step(carry: SamplerCarry, s: DDIMStepInput) -> tuple[SamplerCarry, None]:
    t_batch = jnp.full((shape[0],), s.t, jnp.int32)  # (batch,)
    x0, eps = to_x0_eps(schedule, carry.x, s.t, denoise_fn(carry.x, t_batch), prediction)
    noise = jax.random.normal(jax.random.fold_in(k_steps, s.t), shape)
    if update == "sigma_hat":
      return SamplerCarry(sigma_hat_step(schedule, carry.x, eps, s.t, s.t_prev, noise, x0=x0,
                                         clip_sample=clip_sample)), None
    return SamplerCarry(ddim_step(schedule, carry.x, eps, s.t, s.t_prev, eta, noise, x0=x0,
                                  clip_sample=clip_sample)), None

  final, _ = jax.lax.scan(step, SamplerCarry(x), DDIMStepInput(timesteps[::-1], prev[::-1]))
  return final.x


def ddim_invert(schedule: Schedule, denoise_fn: DenoiseFn, x0: jax.Array, timesteps: jax.Array, *,
                prediction: str = "epsilon") -> jax.Array:
  """Deterministic DDIM encoding x0 -> x_T: the η = 0 update run upwards (Song et al., eq. 13, section 5.4).

  Walks clean data -> τ_0 -> τ_1 -> ... -> τ_{S-1}, each step a `ddim_step` with η = 0 from the
  current level to the next, using ε evaluated at the current point (at τ_0 for the first
  step, where the current level is the data itself). `sample_ddim(..., x_T=ddim_invert(...),
  eta=0)` on the same τ reconstructs x0 up to the discretization error of the ODE.

  Args:
    schedule: the Schedule.
    denoise_fn: (x_t, t of shape (batch,)) -> output, read through `prediction`.
    x0: the data to encode, (batch, ...).
    timesteps: τ, ascending int array of shape (S,).
    prediction: what denoise_fn predicts, one of PREDICTIONS.

  Returns:
    The latent x_{τ_{S-1}}, shaped like x0.
  """
  _check_prediction(prediction)
  return _ddim_invert(schedule, denoise_fn, x0, jnp.asarray(timesteps, jnp.int32), prediction)


@functools.partial(jax.jit, static_argnames=("denoise_fn", "prediction"))
def _ddim_invert(schedule, denoise_fn, x0, timesteps, prediction):
  start = jnp.concatenate([jnp.array([-1], jnp.int32), timesteps[:-1]])  # the level each step leaves

  def step(carry: SamplerCarry, s: DDIMStepInput) -> tuple[SamplerCarry, None]:
    # Here s.t is the level left and s.t_prev the (noisier) level reached.
    t_eval = jnp.where(s.t < 0, s.t_prev, s.t)
    t_batch = jnp.full((x0.shape[0],), t_eval, jnp.int32)  # (batch,)
    _, eps = to_x0_eps(schedule, carry.x, t_eval, denoise_fn(carry.x, t_batch), prediction)
    return SamplerCarry(ddim_step(schedule, carry.x, eps, s.t, s.t_prev, 0.0)), None

  final, _ = jax.lax.scan(step, SamplerCarry(x0), DDIMStepInput(start, timesteps))
  return final.x


# ---------------------------------------------------------------------------------------
# Inpainting: RePaint (Lugmayr et al., 2022).


class RePaintStepInput(NamedTuple):
  """One step of RePaint's walk through the levels, as the scan reads it (numpy on the host)."""

  t: np.ndarray | jax.Array  # int32: the level the step leaves (-1 would be the clean data)
  up: np.ndarray | jax.Array  # bool: a jump back to t + jump_length (forward noising) or a reverse step to t - 1
  visit: np.ndarray | jax.Array  # int32: how many earlier steps left level t in the same direction


def repaint_timesteps(num_steps: int, jump_length: int, resample: int) -> RePaintStepInput:
  """RePaint's schedule with resampling jumps (Lugmayr et al., 2022, "Resampling" and Algorithm 1).

  The walk starts at level T - 1 and takes reverse steps t -> t - 1. On reaching a level
  k * jump_length < T - jump_length (k = 0, 1, ...), it jumps back up by jump_length (one forward
  noising q(x_{k j + j} | x_{k j})) and walks down to that level again, `resample - 1` times,
  before going on. It ends with the reverse step from level 0 to the clean data. Its length is
  T + (r - 1) * K * (j + 1) steps, K = len(range(0, T - j, j)): K * (r - 1) jumps and
  j reverse steps after each.

  Args:
    num_steps: T.
    jump_length: j, in [1, T).
    resample: r >= 1, how many times each jump point is passed (1: no jumps, plain DDPM).

  Returns:
    The steps as a RePaintStepInput of numpy arrays, each of shape (length,).

  Raises:
    ValueError: for a j outside [1, T) or r < 1.
  """
  for name, value in (("num_steps", num_steps), ("jump_length", jump_length), ("resample", resample)):
    if isinstance(value, bool) or int(value) != value:
      raise ValueError(f"{name} must be an integer, got {value!r}")
  if num_steps < 2 or not 0 < jump_length < num_steps:
    raise ValueError(f"jump_length must be in [1, T) = [1, {num_steps}), got {jump_length}")
  if resample < 1:
    raise ValueError(f"resample must be >= 1, got {resample}")
  jumps_left = {level: resample - 1 for level in range(0, num_steps - jump_length, jump_length)}
  visits: dict[tuple[int, bool], int] = {}
  ts, ups, counts = [], [], []

  def take(level: int, up: bool) -> None:
    ts.append(level)
    ups.append(up)
    counts.append(visits.get((level, up), 0))
    visits[(level, up)] = counts[-1] + 1

  level = num_steps - 1
  while level >= 0:
    take(level, False)
    level -= 1
    if jumps_left.get(level, 0) > 0:
      jumps_left[level] -= 1
      take(level, True)
      level += jump_length
  return RePaintStepInput(np.asarray(ts, np.int32), np.asarray(ups, bool), np.asarray(counts, np.int32))


INPAINT_MASKS = ("center", "half", "pixels")  # the kinds of `inpaint_masks`
PIXELS_KNOWN = 0.5  # the share of pixels a "pixels" mask keeps, drawn independently
# The known region's and the jumps' noise come from fold_in(key, REPAINT_STREAM): a stream apart from
# split(key)'s two (x_T and the reverse steps' noise, as `sample_ddpm` draws them).
REPAINT_STREAM = 0x52455041


def inpaint_masks(kind: str, shape: tuple[int, ...], key: jax.Array) -> jax.Array:
  """Masks for inpainting, 1 where a pixel is known, 0 where it is to be filled.

  "center": a box of half the height and half the width in the middle is unknown (the centre
  quarter of the image); "half": the bottom half is unknown; "pixels": every pixel is known
  independently with probability PIXELS_KNOWN (one draw per image and position, shared by the
  channels). "center" and "half" are the same for every image and do not use the key.

  Args:
    kind: one of INPAINT_MASKS.
    shape: the images' shape, (batch, H, W, C).
    key: PRNG key of the "pixels" masks.

  Returns:
    The masks, float32 of shape `shape`.

  Raises:
    ValueError: for an unknown kind, a shape that is not (batch, H, W, C), or a mask that
      leaves an image with no known pixel or no unknown pixel.
  """
  if kind not in INPAINT_MASKS:
    raise ValueError(f"unknown mask kind {kind!r}; choose one of {', '.join(INPAINT_MASKS)}")
  if len(shape) != 4 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
    raise ValueError(f"mask shape must be (batch, H, W, C) of positive sizes, got {tuple(shape)}")
  batch, height, width, channels = shape
  known = np.ones((batch, height, width), np.float32)
  if kind == "center":
    h, w = max(height // 2, 1), max(width // 2, 1)
    top, left = (height - h) // 2, (width - w) // 2
    known[:, top:top + h, left:left + w] = 0.0
  elif kind == "half":
    known[:, height // 2:] = 0.0
  else:
    known = np.asarray(jax.random.bernoulli(key, PIXELS_KNOWN, (batch, height, width)), np.float32)
  per_image = known.reshape(batch, -1).sum(axis=1)  # (batch,) known pixels
  if (per_image == 0).any() or (per_image == height * width).any():
    which = "no" if (per_image == 0).any() else "every"
    raise ValueError(f"the {kind!r} mask of shape {tuple(shape)} leaves an image with {which} pixel known")
  return jnp.asarray(np.broadcast_to(known[..., None], shape))


def repaint(schedule: Schedule, denoise_fn: DenoiseFn, key: jax.Array, known: jax.Array, mask: jax.Array, *,
            jump_length: int = 10, resample: int = 10, prediction: str = "epsilon", variance: str = "fixed_small",
            clip_sample: bool = False, x_T: jax.Array | None = None) -> jax.Array:
  """Inpaints `known` where `mask` is 0 with an unconditionally trained denoiser (Lugmayr et al., 2022, Algorithm 1).

  Every reverse step from level t joins the two halves of x_{t-1} (eq. 8):
  x_{t-1} = m ⊙ x_{t-1}^known + (1 - m) ⊙ x_{t-1}^unknown, where x_{t-1}^known ~ q(x_{t-1} | x0)
  is the known image noised to level t - 1 (`q_sample`; the image itself at the clean level)
  and x_{t-1}^unknown is the ancestral step `ddpm_step` from x_t. At the jump points of
  `repaint_timesteps` the sample is noised forward by jump_length levels (`q_jump`) and walked
  down again, so the generated region is resampled against the known one `resample - 1` more
  times. The whole walk is ONE `lax.scan` over the host-built steps (t, up, visit). With
  resample = 1 there are no jumps, and with a mask of zeros this is `sample_ddpm` with the same
  key: x_T from the first of split(key) and the reverse step from level t on its v-th visit
  drawing its noise from fold_in(k_steps, t + T v).

  Args:
    schedule: the Schedule.
    denoise_fn: (x_t, t of shape (batch,)) -> output, read through `prediction`.
    key: PRNG key.
    known: the images to complete, (batch, ...) in the data range ([-1, 1]); only the known
      pixels are read.
    mask: 1 where a pixel is known, 0 where it is generated; broadcastable to known's shape.
    jump_length: j, the levels of each jump back (the paper's j = 10).
    resample: r, how many times each jump point is passed (the paper's r = 10; 1: no jumps).
    prediction: what denoise_fn predicts, one of PREDICTIONS.
    variance: "fixed_small" (β̃_t) or "fixed_large" (β_t), the reverse steps' variance.
    clip_sample: clip every step's x0_hat to [-1, 1] (see `ddpm_step`).
    x_T: optional starting noise, shaped like known; drawn from the key when None.

  Returns:
    The completed images, shaped like known: equal to known where mask is 1.

  Raises:
    ValueError: for an unknown prediction or variance, a bad j or r (`repaint_timesteps`), or a
      mask that does not broadcast to known's shape.
  """
  _check_prediction(prediction)
  if variance not in VARIANCES:
    raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
  known = jnp.asarray(known)
  try:
    mask = jnp.broadcast_to(jnp.asarray(mask, known.dtype), known.shape)
  except ValueError:
    raise ValueError(f"mask of shape {jnp.shape(mask)} does not broadcast to the images' {known.shape}") from None
  steps = repaint_timesteps(schedule.num_steps, jump_length, resample)
  return _repaint(schedule, denoise_fn, key, known, mask, RePaintStepInput(*map(jnp.asarray, steps)),
                  int(jump_length), prediction, variance, bool(clip_sample), x_T)


@functools.partial(jax.jit, static_argnames=("denoise_fn", "jump_length", "prediction", "variance", "clip_sample"))
def _repaint(schedule, denoise_fn, key, known, mask, steps, jump_length, prediction, variance, clip_sample, x_T):
  k_start, k_steps = _start_and_step_keys(key)
  k_known, k_jump = jax.random.split(jax.random.fold_in(key, REPAINT_STREAM))
  shape, num_steps = known.shape, schedule.num_steps
  x = jax.random.normal(k_start, shape) if x_T is None else x_T

  def step(carry: SamplerCarry, s: RePaintStepInput) -> tuple[SamplerCarry, None]:
    index = s.t + num_steps * s.visit  # the step's own noise: distinct for every (level, visit)

    def reverse(x):
      t_batch = jnp.full((shape[0],), s.t, jnp.int32)  # (batch,)
      x0, eps = to_x0_eps(schedule, x, s.t, denoise_fn(x, t_batch), prediction)
      noise = jax.random.normal(jax.random.fold_in(k_steps, index), shape)
      unknown = ddpm_step(schedule, x, eps, s.t, noise, variance, x0=x0, clip_sample=clip_sample)
      noised = q_sample(schedule, known, jnp.maximum(s.t - 1, 0),
                        jax.random.normal(jax.random.fold_in(k_known, index), shape))
      known_prev = jnp.where(s.t > 0, noised, known)  # level t - 1 = -1 is the known image itself
      return mask * known_prev + (1.0 - mask) * unknown

    def jump(x):
      return q_jump(schedule, x, s.t, s.t + jump_length, jax.random.normal(jax.random.fold_in(k_jump, index), shape))

    return SamplerCarry(jax.lax.cond(s.up, jump, reverse, carry.x)), None

  final, _ = jax.lax.scan(step, SamplerCarry(x), steps)
  return final.x
