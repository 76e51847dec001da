"""Diffusion process: schedules, objectives, DDPM/DDIM steps and samplers.

Parity with diffusers' DDPMScheduler and DDIMScheduler (clip_sample off and on, DDIM's with
use_clipped_model_output=True; DDIM with set_alpha_to_one=True, steps_offset=0 and "leading"
spacing, which are this module's conventions), closed forms of the forward process, exact
denoisers of point-mass and Gaussian data, classifier-free guidance, inversion, and vmap over the
guidance scale and η.

The step parity tests run diffusers' own `step` in float64 (its ᾱ recomputed in float64 from
its betas): in float32 its coefficients lose ~1e-3 relative at small t to the cancellation in
1 - ᾱ_t, which this module avoids, so a float32 reference would only measure its rounding.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import diffusion

T = 1000
SHAPE = (4, 2, 3, 3)  # (batch, channels, height, width): diffusers' layout is channel-first
DIFFUSERS_SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
DIFFUSERS_PREDICTION = {"epsilon": "epsilon", "v": "v_prediction"}


def _schedulers():
  return pytest.importorskip("diffusers")


def _torch():
  return pytest.importorskip("torch")


def _in_float64(scheduler):
  """The scheduler with betas, alphas and ᾱ in float64, derived from its own float32 betas."""
  scheduler.betas = scheduler.betas.double()
  scheduler.alphas = 1.0 - scheduler.betas
  scheduler.alphas_cumprod = scheduler.alphas.cumprod(0)
  return scheduler


def _f64(torch, x):
  return torch.from_numpy(np.asarray(x, np.float64))


def _gaussian_denoiser(schedule, mu, s, prediction="epsilon"):
  """The exact E[ε | x_t], E[x0 | x_t] (or v) for data x0 ~ N(mu, s² I); s = 0 is a point mass."""

  def denoise_fn(x, t):
    abar = schedule.alphas_cumprod[t].reshape((-1,) + (1,) * (x.ndim - 1))  # (batch, 1, ...)
    var = abar * s**2 + 1.0 - abar  # the marginal variance of x_t
    resid = x - jnp.sqrt(abar) * mu
    eps = jnp.sqrt(1.0 - abar) * resid / var
    x0 = mu + jnp.sqrt(abar) * s**2 * resid / var
    return {"epsilon": eps, "x0": x0, "v": jnp.sqrt(abar) * eps - jnp.sqrt(1.0 - abar) * x0}[prediction]

  return denoise_fn


def _numpy_gaussian_denoiser(alphas_cumprod, mu, s, prediction):
  """The same denoiser on diffusers' own ᾱ, for its Python loop."""

  def denoise_fn(x, t):
    abar = float(alphas_cumprod[t])
    var = abar * s**2 + 1.0 - abar
    resid = x - math.sqrt(abar) * mu
    eps = math.sqrt(1.0 - abar) * resid / var
    x0 = mu + math.sqrt(abar) * s**2 * resid / var
    return eps if prediction == "epsilon" else math.sqrt(abar) * eps - math.sqrt(1.0 - abar) * x0

  return denoise_fn


def _ddim_reference(name, prediction, clip_sample=False):
  """diffusers' DDIM with this module's conventions: ᾱ_{-1} = 1, τ = range(0, T, T // S)."""
  return _schedulers().DDIMScheduler(num_train_timesteps=T, beta_schedule=DIFFUSERS_SCHEDULE[name],
                                     clip_sample=clip_sample,
                                     set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading",
                                     prediction_type=DIFFUSERS_PREDICTION[prediction])


def _normal(seed, shape=SHAPE):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Schedules.


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("num_steps", [1000, 50])
def test_schedule_matches_diffusers(name, num_steps):
  schedulers = _schedulers()
  ours = diffusion.make_schedule(name, num_steps)
  ref = schedulers.DDPMScheduler(num_train_timesteps=num_steps, beta_schedule=DIFFUSERS_SCHEDULE[name])
  for field in ours:
    assert field.dtype == jnp.float32 and field.shape == (num_steps,)
  np.testing.assert_allclose(ours.betas, ref.betas.numpy(), rtol=1e-6, atol=1e-9)
  # diffusers multiplies in float32; ours in float64, so the tail of the cosine ᾱ differs in ulps.
  np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-5, atol=1e-7)


def test_schedule_closed_forms():
  linear = diffusion.make_schedule("linear", T)
  np.testing.assert_allclose(np.asarray(linear.betas)[[0, -1]], [1e-4, 0.02], rtol=1e-6)
  np.testing.assert_allclose(np.diff(np.asarray(linear.betas, np.float64)), 0.0199 / 999, rtol=1e-4)

  cosine = diffusion.make_schedule("cosine", T)
  f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2  # Nichol & Dhariwal, eq. 17
  t = np.arange(T)
  uncapped = np.asarray(cosine.betas) < 0.999
  assert uncapped[:-1].all() and not uncapped[-1]  # only β_{T-1} reaches the cap at T = 1000
  np.testing.assert_allclose(np.asarray(cosine.alphas_cumprod)[:-1], (f((t + 1) / T) / f(0.0))[:-1], rtol=1e-5)
  assert cosine.betas[-1] == pytest.approx(0.999)

  for s in (linear, cosine):
    betas = np.asarray(s.betas, np.float64)
    abar = np.cumprod(1 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    np.testing.assert_allclose(s.alphas_cumprod_prev, abar_prev, rtol=1e-6)
    np.testing.assert_allclose(s.log_alphas_cumprod, np.log(abar), rtol=1e-5)
    np.testing.assert_allclose(s.posterior_variance[1:], (betas * (1 - abar_prev) / (1 - abar))[1:], rtol=1e-5)
    assert s.posterior_variance[0] == 0.0
    np.testing.assert_allclose(s.posterior_mean_coef_x0, np.sqrt(abar_prev) * betas / (1 - abar), rtol=1e-5)
    np.testing.assert_allclose(s.posterior_mean_coef_xt, np.sqrt(1 - betas) * (1 - abar_prev) / (1 - abar),
                               rtol=1e-5, atol=1e-12)
    assert s.posterior_mean_coef_x0[0] == 1.0  # the last step returns x0_hat


def test_schedule_errors():
  with pytest.raises(ValueError, match="linear, cosine"):
    diffusion.make_schedule("quadratic", T)
  with pytest.raises(ValueError):
    diffusion.make_schedule("linear", 0)


# ---------------------------------------------------------------------------------------
# Forward process and objectives.


def test_q_sample_closed_form():
  """Mean and variance of q(x_t | x0) (eq. 4) equal those of T one-step kernels (eq. 2)."""
  schedule = diffusion.make_schedule("cosine", T)
  mean_coef, var = [], []
  m, v = 1.0, 0.0
  for beta in np.asarray(schedule.betas, np.float64):
    m, v = m * math.sqrt(1 - beta), (1 - beta) * v + beta
    mean_coef.append(m)
    var.append(v)
  t = jnp.array([0, 10, 300, 700, 999])
  x0 = jnp.asarray(_normal(0, (5, 3)))
  noise = jnp.asarray(_normal(1, (5, 3)))
  mean = diffusion.q_sample(schedule, x0, t, jnp.zeros_like(x0))
  np.testing.assert_allclose(mean, np.asarray(mean_coef)[t][:, None] * x0, rtol=1e-5, atol=1e-6)
  spread = diffusion.q_sample(schedule, x0, t, noise) - mean
  np.testing.assert_allclose(spread, np.sqrt(np.asarray(var))[t][:, None] * noise, rtol=1e-5, atol=1e-6)

  # Monte Carlo: 20000 draws of one scalar at t = 300.
  draws = diffusion.q_sample(schedule, jnp.full((20000,), 2.0), 300, jax.random.normal(jax.random.key(0), (20000,)))
  assert float(draws.mean()) == pytest.approx(2.0 * mean_coef[300], abs=4 * math.sqrt(var[300] / 20000))
  assert float(draws.var()) == pytest.approx(var[300], rel=0.04)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_q_sample_and_velocity_match_diffusers(name):
  torch = _torch()
  ref = _schedulers().DDPMScheduler(num_train_timesteps=T, beta_schedule=DIFFUSERS_SCHEDULE[name])
  schedule = diffusion.make_schedule(name, T)
  x0, noise = _normal(0), _normal(1)
  t = np.array([0, 5, 500, 999])
  tt = torch.from_numpy(t)
  np.testing.assert_allclose(diffusion.q_sample(schedule, x0, t, noise),
                             ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), tt).numpy(), atol=1e-5)
  np.testing.assert_allclose(diffusion.training_target(schedule, x0, t, noise, "v"),
                             ref.get_velocity(torch.from_numpy(x0), torch.from_numpy(noise), tt).numpy(), atol=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_targets_round_trip_through_conversions(prediction, name):
  schedule = diffusion.make_schedule(name, T)
  x0, noise = jnp.asarray(_normal(0)), jnp.asarray(_normal(1))
  t = jnp.array([0, 1, 500, 900])
  x_t = diffusion.q_sample(schedule, x0, t, noise)
  target = diffusion.training_target(schedule, x0, t, noise, prediction)
  x0_hat, eps_hat = diffusion.to_x0_eps(schedule, x_t, t, target, prediction)
  np.testing.assert_allclose(x0_hat, x0, atol=2e-4)
  np.testing.assert_allclose(eps_hat, noise, atol=2e-4)
  # The targets themselves: ε, x0, or v = sqrt(ᾱ) ε - sqrt(1 - ᾱ) x0.
  abar = np.cumprod(1 - np.asarray(schedule.betas, np.float64))[t].reshape(-1, 1, 1, 1)
  expected = {"epsilon": noise, "x0": x0, "v": np.sqrt(abar) * noise - np.sqrt(1 - abar) * x0}[prediction]
  np.testing.assert_allclose(target, expected, atol=1e-6)


def test_loss_oracles_and_baselines():
  schedule = diffusion.make_schedule("linear", T)
  c = 0.7
  x0 = jnp.full((256, 4), c)  # point-mass data: the exact denoiser knows x0
  key = jax.random.key(3)
  for prediction in diffusion.PREDICTIONS:
    oracle = _gaussian_denoiser(schedule, c, 0.0, prediction)
    assert float(diffusion.loss(schedule, oracle, x0, key, prediction)) < 1e-6
    wrong = "x0" if prediction != "x0" else "epsilon"
    assert float(diffusion.loss(schedule, oracle, x0, key, wrong)) > 0.1
  zero = lambda x, t: jnp.zeros_like(x)
  assert float(diffusion.loss(schedule, zero, x0, key, "epsilon")) == pytest.approx(1.0, abs=0.05)  # E ε² = 1
  assert float(diffusion.loss(schedule, zero, x0, key, "x0")) == pytest.approx(c**2, rel=1e-5)
  # Deterministic under the key, and differentiable in the model.
  scaled = lambda w: diffusion.loss(schedule, lambda x, t: w * x, x0, key)
  assert float(scaled(0.5)) == float(scaled(0.5))
  assert np.isfinite(float(jax.grad(scaled)(0.5)))


# ---------------------------------------------------------------------------------------
# Update rules.


@pytest.mark.parametrize("clip_sample", [False, True])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_ddpm_step_matches_diffusers(name, prediction, variance, clip_sample):
  torch = _torch()
  ref = _in_float64(_schedulers().DDPMScheduler(
      num_train_timesteps=T, beta_schedule=DIFFUSERS_SCHEDULE[name], clip_sample=clip_sample,
      prediction_type=DIFFUSERS_PREDICTION[prediction], variance_type=variance))
  schedule = diffusion.make_schedule(name, T)
  x_t, output = _normal(0), _normal(1)
  for seed, t in enumerate([0, 1, 10, 500, 999]):
    # diffusers draws its noise with this generator; drawing again from the same seed repeats it.
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    expected = ref.step(_f64(torch, output), t, _f64(torch, x_t),
                        generator=torch.Generator().manual_seed(seed)).prev_sample.numpy()
    noise = noise.astype(np.float32)
    x0, eps = diffusion.to_x0_eps(schedule, x_t, t, output, prediction)
    assert np.abs(x0).max() > 1.0  # the clipping has something to clip
    got = diffusion.ddpm_step(schedule, x_t, eps, t, noise, variance, x0=x0, clip_sample=clip_sample)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5, err_msg=f"t={t}")
    # Without x0, the step derives it from ε (and clips it) itself.
    np.testing.assert_allclose(diffusion.ddpm_step(schedule, x_t, eps, t, noise, variance, clip_sample=clip_sample),
                               expected, atol=2e-4 if t == 999 and name == "cosine" else 1e-5, rtol=1e-5)
    if t == 0:  # no noise at the last step
      np.testing.assert_allclose(got, diffusion.ddpm_step(schedule, x_t, eps, t, 0 * noise, variance, x0=x0,
                                                          clip_sample=clip_sample))


def test_ddim_timesteps():
  diffusers = _schedulers()
  np.testing.assert_array_equal(diffusion.ddim_timesteps(1000, 10, "linear"), np.arange(0, 1000, 100))
  assert diffusion.ddim_timesteps(1000, 10, "linear").dtype == jnp.int32
  for steps in (10, 50, 1000):
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, steps_offset=0, timestep_spacing="leading")
    ref.set_timesteps(steps)
    np.testing.assert_array_equal(diffusion.ddim_timesteps(1000, steps, "linear"), ref.timesteps.numpy()[::-1])
  # The DDIM repository's skip when S does not divide T: range(0, T, T // S).
  np.testing.assert_array_equal(diffusion.ddim_timesteps(1000, 30, "linear"), np.arange(0, 1000, 33))
  quad = np.asarray(diffusion.ddim_timesteps(1000, 10, "quadratic"))
  np.testing.assert_array_equal(quad, [int(v**2) for v in np.linspace(0, math.sqrt(800), 10)])
  assert quad[0] == 0 and quad[-1] == 800 and (np.diff(quad) > 0).all()
  assert quad[1] == 9  # (sqrt(800) / 9)² = 9.88: quadratic spacing is dense at low noise
  with pytest.raises(ValueError):
    diffusion.ddim_timesteps(1000, 0, "linear")
  with pytest.raises(ValueError):
    diffusion.ddim_timesteps(1000, 1001, "linear")
  with pytest.raises(ValueError, match="linear, quadratic"):
    diffusion.ddim_timesteps(1000, 10, "cubic")


@pytest.mark.parametrize("clip_sample", [False, True])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_ddim_step_matches_diffusers(name, prediction, clip_sample):
  """With clip_sample, ε is re-derived from the clipped x0: diffusers' use_clipped_model_output=True."""
  torch = _torch()
  ref = _in_float64(_ddim_reference(name, prediction, clip_sample))
  ref.set_timesteps(10)
  schedule = diffusion.make_schedule(name, T)
  x_t, output, noise = _normal(0), _normal(1), _normal(2)
  for t in [900, 500, 100, 0]:
    for eta in (0.0, 0.5, 1.0):
      expected = ref.step(_f64(torch, output), t, _f64(torch, x_t), eta=eta, use_clipped_model_output=True,
                          variance_noise=_f64(torch, noise)).prev_sample.numpy()
      x0, eps = diffusion.to_x0_eps(schedule, x_t, t, output, prediction)
      assert np.abs(x0).max() > 1.0  # the clipping has something to clip
      got = diffusion.ddim_step(schedule, x_t, eps, t, t - 100 if t else -1, eta, noise, x0=x0,
                                clip_sample=clip_sample)
      np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5, err_msg=f"t={t} eta={eta}")


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_ddim_eta_one_on_full_sequence_is_ddpm(name):
  """σ_t(1)² = β̃_t and the DDIM mean is the posterior mean when τ is every step."""
  schedule = diffusion.make_schedule(name, T)
  t = jnp.arange(T)
  x_t = jnp.asarray(_normal(0, (T, 3)))
  eps = jnp.asarray(_normal(1, (T, 3)))
  noise = jnp.asarray(_normal(2, (T, 3)))
  ddim = jax.jit(diffusion.ddim_step)(schedule, x_t, eps, t, t - 1, 1.0, noise)
  ddpm = jax.jit(diffusion.ddpm_step, static_argnames="variance")(schedule, x_t, eps, t, noise, variance="fixed_small")
  np.testing.assert_allclose(ddim[:-1], ddpm[:-1], atol=1e-4, rtol=1e-4)
  # At t = T-1 under the cosine cap, x0 = (x - sqrt(1 - ᾱ) ε) / sqrt(ᾱ) is amplified by 1 / sqrt(ᾱ).
  np.testing.assert_allclose(ddim[-1], ddpm[-1], atol=1e-2 if name == "cosine" else 1e-4)
  sigma = diffusion.ddim_sigma(schedule, t, t - 1, 1.0, x_t)[:, 0]
  np.testing.assert_allclose(sigma**2, schedule.posterior_variance, rtol=1e-4, atol=1e-12)


def test_sigma_hat_step_matches_direct_formula():
  """DDIM's σ̂ step in float64 numpy: the posterior of the sub-sequence chain, variance 1 - ᾱ_t / ᾱ_prev."""
  schedule = diffusion.make_schedule("linear", T)
  abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))  # float64
  x_t, eps, noise = _normal(0), _normal(1), _normal(2)
  for t, t_prev in [(999, 899), (500, 250), (100, 0), (1, 0), (0, -1), (300, 300)]:
    a_t, a_prev = abar[t], (abar[t_prev] if t_prev >= 0 else 1.0)
    beta_hat = 1.0 - a_t / a_prev
    x0 = (x_t - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
    mean = (math.sqrt(a_prev) * beta_hat * x0 + math.sqrt(1.0 - beta_hat) * (1.0 - a_prev) * x_t) / (1.0 - a_t)
    expected = mean + (math.sqrt(beta_hat) if t > 0 else 0.0) * noise
    got = diffusion.sigma_hat_step(schedule, x_t, eps, t, t_prev, noise)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5, err_msg=f"t={t} t_prev={t_prev}")
  # The last step returns x0_hat; a repeated τ leaves the sample where it is.
  np.testing.assert_allclose(diffusion.sigma_hat_step(schedule, x_t, eps, 0, -1, noise),
                             (x_t - math.sqrt(1.0 - abar[0]) * eps) / math.sqrt(abar[0]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(diffusion.sigma_hat_step(schedule, x_t, eps, 300, 300, noise), x_t, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("clip_sample", [False, True])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_sigma_hat_step_matches_diffusers_ddpm_on_a_subsequence(name, prediction, clip_sample):
  """diffusers' DDPMScheduler with fixed_large and 10 inference steps is the σ̂ update along τ."""
  torch = _torch()
  ref = _in_float64(_schedulers().DDPMScheduler(
      num_train_timesteps=T, beta_schedule=DIFFUSERS_SCHEDULE[name], clip_sample=clip_sample,
      prediction_type=DIFFUSERS_PREDICTION[prediction], variance_type="fixed_large", timestep_spacing="leading",
      steps_offset=0))
  ref.set_timesteps(10)
  taus = np.asarray(diffusion.ddim_timesteps(T, 10, "linear"))
  np.testing.assert_array_equal(ref.timesteps.numpy(), taus[::-1])
  schedule = diffusion.make_schedule(name, T)
  x_t, output = _normal(0), _normal(1)
  for seed, t in enumerate([900, 500, 100, 0]):
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    expected = ref.step(_f64(torch, output), t, _f64(torch, x_t),
                        generator=torch.Generator().manual_seed(seed)).prev_sample.numpy()
    x0, eps = diffusion.to_x0_eps(schedule, x_t, t, output, prediction)
    got = diffusion.sigma_hat_step(schedule, x_t, eps, t, t - 100 if t else -1, noise.astype(np.float32), x0=x0,
                                   clip_sample=clip_sample)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5, err_msg=f"t={t}")


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_sigma_hat_on_full_sequence_is_ddpm_fixed_large(name):
  schedule = diffusion.make_schedule(name, T)
  t = jnp.arange(T)
  x_t, eps, noise = (jnp.asarray(_normal(i, (T, 3))) for i in range(3))
  hat = jax.jit(diffusion.sigma_hat_step)(schedule, x_t, eps, t, t - 1, noise)
  ddpm = jax.jit(diffusion.ddpm_step, static_argnames="variance")(schedule, x_t, eps, t, noise, variance="fixed_large")
  np.testing.assert_allclose(hat[:-1], ddpm[:-1], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(hat[-1], ddpm[-1], atol=1e-2 if name == "cosine" else 1e-4)  # see the η = 1 test


# ---------------------------------------------------------------------------------------
# Samplers.


def test_samplers_ddim_eta_one_equals_ddpm():
  schedule = diffusion.make_schedule("linear", 50)
  denoise_fn = _gaussian_denoiser(schedule, 0.5, 0.8)
  key = jax.random.key(7)
  ddpm = diffusion.sample_ddpm(schedule, denoise_fn, key, (6, 2))
  ddim = diffusion.sample_ddim(schedule, denoise_fn, key, (6, 2), jnp.arange(50), eta=1.0)
  np.testing.assert_allclose(ddim, ddpm, atol=1e-5)
  # Clipped too: DDIM's ε re-derived from the clipped x0 puts its mean at the posterior's of that x0.
  clipped = diffusion.sample_ddpm(schedule, denoise_fn, key, (6, 2), clip_sample=True)
  assert np.abs(clipped - ddpm).max() > 1e-2  # the clipping changed the samples
  np.testing.assert_allclose(diffusion.sample_ddim(schedule, denoise_fn, key, (6, 2), jnp.arange(50), eta=1.0,
                                                   clip_sample=True), clipped, atol=1e-5)
  # The σ̂ sampler on every step is DDPM with β_t, from the same x_T and step noise.
  large = diffusion.sample_ddpm(schedule, denoise_fn, key, (6, 2), variance="fixed_large")
  np.testing.assert_allclose(diffusion.sample_sigma_hat(schedule, denoise_fn, key, (6, 2), jnp.arange(50)), large,
                             atol=1e-5)
  # On a point mass every sampler lands on the point, whatever τ (quadratic τ repeats its first entries).
  point = _gaussian_denoiser(schedule, -0.75, 0.0)
  for taus in (diffusion.ddim_timesteps(50, 5), diffusion.ddim_timesteps(50, 20, "quadratic")):
    np.testing.assert_allclose(diffusion.sample_sigma_hat(schedule, point, key, (6, 2), taus), -0.75, atol=1e-4)


@pytest.mark.parametrize("clip_sample", [False, True])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_sample_ddim_matches_diffusers_loop(name, prediction, clip_sample):
  """The whole scan against diffusers' step in a Python loop, same x_T and step noise."""
  torch = _torch()
  ref = _in_float64(_ddim_reference(name, prediction, clip_sample))
  ref.set_timesteps(10)
  schedule = diffusion.make_schedule(name, T)
  mu, s = 0.3, 0.6
  key = jax.random.key(11)
  x_T = _normal(5)
  sample = jax.jit(lambda eta: diffusion.sample_ddim(schedule, _gaussian_denoiser(schedule, mu, s, prediction), key,
                                                     SHAPE, diffusion.ddim_timesteps(T, 10), eta,
                                                     prediction=prediction, clip_sample=clip_sample, x_T=x_T))
  ref_denoise = _numpy_gaussian_denoiser(ref.alphas_cumprod.numpy(), mu, s, prediction)
  k_steps = jax.random.split(key)[1]  # the documented stream of the step noise
  for eta in (0.0, 0.5, 1.0):
    x = _f64(torch, x_T)
    for t in ref.timesteps:
      noise = jax.random.normal(jax.random.fold_in(k_steps, int(t)), SHAPE)
      x = ref.step(ref_denoise(x, int(t)), t, x, eta=eta, use_clipped_model_output=True,
                   variance_noise=_f64(torch, noise)).prev_sample
    np.testing.assert_allclose(sample(eta), x.numpy(), atol=2e-5, rtol=1e-5, err_msg=f"eta={eta}")


def test_point_mass_data_is_reached_exactly():
  schedule = diffusion.make_schedule("cosine", T)
  c = -1.25
  denoise_fn = _gaussian_denoiser(schedule, c, 0.0)
  key = jax.random.key(0)
  taus = diffusion.ddim_timesteps(T, 50, "quadratic")
  assert taus[0] == taus[1] == 0  # a repeated τ is a step that leaves the sample unchanged
  for eta in (0.0, 0.5):
    np.testing.assert_allclose(diffusion.sample_ddim(schedule, denoise_fn, key, (8, 3), taus, eta), c, atol=1e-4)
  np.testing.assert_allclose(diffusion.sample_ddpm(schedule, denoise_fn, key, (8, 3)), c, atol=1e-4)


def test_gaussian_data_flow_map_and_ddpm_statistics():
  """η = 0 follows the probability-flow ODE, which keeps each point's z-score; DDPM samples N(mu, s²)."""
  schedule = diffusion.make_schedule("linear", T)
  mu, s = 1.5, 0.5
  denoise_fn = _gaussian_denoiser(schedule, mu, s)
  x_T = jnp.asarray(_normal(3, (512, 1)))
  errors = []
  for steps in (100, 1000):
    taus = diffusion.ddim_timesteps(T, steps)
    x0 = diffusion.sample_ddim(schedule, denoise_fn, jax.random.key(0), (512, 1), taus, x_T=x_T)
    abar = float(schedule.alphas_cumprod[int(taus[-1])])  # x_T sits at the noisiest τ
    z = (x_T - math.sqrt(abar) * mu) / math.sqrt(abar * s**2 + 1 - abar)
    errors.append(float(jnp.abs(x0 - (mu + s * z)).max()))
  assert errors[1] < 1e-2 and errors[1] < errors[0] / 4  # DDIM is a first-order ODE solver

  samples = diffusion.sample_ddpm(schedule, denoise_fn, jax.random.key(1), (4000, 1))
  assert float(samples.mean()) == pytest.approx(mu, abs=4 * s / math.sqrt(4000))
  assert float(samples.std()) == pytest.approx(s, rel=0.05)


def test_ddim_inversion_reconstructs():
  schedule = diffusion.make_schedule("cosine", T)
  mu, s = -0.5, 0.7
  denoise_fn = _gaussian_denoiser(schedule, mu, s, "v")
  x0 = mu + s * jnp.asarray(_normal(4, (64, 2)))
  taus = diffusion.ddim_timesteps(T, T)
  x_T = diffusion.ddim_invert(schedule, denoise_fn, x0, taus, prediction="v")
  assert float(jnp.std(x_T)) == pytest.approx(1.0, abs=0.05)  # a standard-normal latent, not the data
  recon = diffusion.sample_ddim(schedule, denoise_fn, jax.random.key(0), x0.shape, taus, 0.0, prediction="v", x_T=x_T)
  # First-order error (about 0.04 at S = 100), against a spread of 0.7 in the data.
  np.testing.assert_allclose(recon, x0, atol=1e-2)


def _two_class_model(calls):
  """A conditional 'denoiser' with distinct outputs per label; records the batch of each forward."""

  def cond_fn(x, t, labels):
    calls.append(x.shape[0])
    return 0.1 * x + labels.astype(x.dtype).reshape(-1, 1) + 0.001 * t.astype(x.dtype).reshape(-1, 1)

  return cond_fn


def test_guidance_endpoints_and_one_forward():
  calls = []
  cond_fn = _two_class_model(calls)
  x = jnp.asarray(_normal(0, (5, 3)))
  t = jnp.full((5,), 40)
  labels, null = jnp.array([0, 1, 2, 1, 0]), 3
  cond = cond_fn(x, t, labels)
  uncond = cond_fn(x, t, jnp.full((5,), null))
  calls.clear()
  for w, expected in [(0.0, uncond), (1.0, cond), (4.0, uncond + 4.0 * (cond - uncond))]:
    guided = diffusion.classifier_free_guidance(cond_fn, labels, null, w)
    np.testing.assert_allclose(guided(x, t), expected, rtol=1e-6, atol=1e-6)
  assert calls == [10, 10, 10]  # one forward of the doubled batch per evaluation


def test_vmap_over_guidance_and_eta_compiles_once_per_step_count():
  schedule = diffusion.make_schedule("linear", 100)
  calls = []
  cond_fn = _two_class_model(calls)
  labels = jnp.array([0, 1, 2, 1])
  key = jax.random.key(5)

  @jax.jit
  def sample(w, eta, taus):
    guided = diffusion.classifier_free_guidance(cond_fn, labels, 3, w)
    return diffusion.sample_ddim(schedule, guided, key, (4, 2), taus, eta)

  ws, etas = jnp.array([0.0, 1.0, 3.0]), jnp.array([0.0, 0.5, 1.0])
  taus = diffusion.ddim_timesteps(100, 10, "linear")
  swept = jax.jit(jax.vmap(sample, in_axes=(0, 0, None)))(ws, etas, taus)  # (3, 4, 2)
  for i in range(3):
    np.testing.assert_allclose(swept[i], sample(ws[i], etas[i], taus), atol=1e-5)
  assert float(jnp.abs(swept[0] - swept[2]).max()) > 1e-2
  one, zero = jnp.float32(1.0), jnp.float32(0.0)
  sample(one, zero, diffusion.ddim_timesteps(100, 10, "quadratic"))
  assert sample._cache_size() == 1  # new w, η and τ of the same length reuse the program

  # The library's own jit is keyed by the denoiser object, the shape and S, not by τ's values
  # or η: a second call does not trace the denoiser again.
  traces = []
  denoise_fn = lambda x, t: traces.append(1) or 0.5 * x
  diffusion.sample_ddim(schedule, denoise_fn, key, [4, 2], diffusion.ddim_timesteps(100, 10, "linear"), 0.0)
  first = len(traces)
  diffusion.sample_ddim(schedule, denoise_fn, key, (4, 2), diffusion.ddim_timesteps(100, 10, "quadratic"), 0.5)
  assert first > 0 and len(traces) == first


def test_unknown_choices_raise():
  schedule = diffusion.make_schedule("linear", 10)
  x = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="epsilon, v, x0"):
    diffusion.to_x0_eps(schedule, x, 3, x, "v_prediction")
  with pytest.raises(ValueError, match="fixed_small, fixed_large"):
    diffusion.ddpm_step(schedule, x, x, 3, x, "learned")
