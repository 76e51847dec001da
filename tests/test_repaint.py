"""RePaint inpainting: its time walk, masks, forward jumps and sampler, and the experiment's --inpaint end to end.

The sampler is checked on exact denoisers of Gaussian data (as tests/test_diffusion.py does): with no
known pixel and no jumps it is `sample_ddpm` step for step; known pixels come back exactly; on
correlated two-pixel data, resampling moves the generated pixel towards its true conditional.
"""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_python
from research.models import diffusion


def _gaussian_denoiser(schedule, mu, cov):
  """The exact E[ε | x_t] for data x0 ~ N(mu, cov) over the last axis (batch, d)."""
  cov = jnp.asarray(cov, jnp.float32)
  eye = jnp.eye(cov.shape[0])

  def denoise_fn(x, t):
    abar = schedule.alphas_cumprod[t][:, None, None]  # (batch, 1, 1)
    marginal = abar * cov + (1.0 - abar) * eye  # (batch, d, d): the covariance of x_t
    resid = x - jnp.sqrt(abar[:, :, 0]) * mu  # (batch, d)
    return jnp.sqrt(1.0 - abar[:, :, 0]) * jnp.linalg.solve(marginal, resid[..., None])[..., 0]

  return denoise_fn


def _walk(steps, jump_length):
  """The levels the walk passes through, from its first step's level to where it ends."""
  levels = [int(steps.t[0])]
  for t, up in zip(steps.t, steps.up):
    assert t == levels[-1]
    levels.append(int(t) + jump_length if up else int(t) - 1)
  return levels


def test_timesteps_by_hand():
  # T = 6, j = 2, r = 2: jump points 0 and 2, each jumped from once.
  steps = diffusion.repaint_timesteps(6, 2, 2)
  assert steps.t.tolist() == [5, 4, 3, 2, 4, 3, 2, 1, 0, 2, 1, 0]
  assert steps.up.tolist() == [False, False, False, True, False, False, False, False, True, False, False, False]
  assert steps.visit.tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0]  # per (level, direction)


@pytest.mark.parametrize("num_steps,jump,resample", [(50, 10, 1), (20, 3, 4), (30, 7, 2), (10, 9, 3), (1000, 10, 10)])
def test_timesteps_length_and_walk(num_steps, jump, resample):
  steps = diffusion.repaint_timesteps(num_steps, jump, resample)
  points = len(range(0, num_steps - jump, jump))
  assert len(steps.t) == num_steps + (resample - 1) * points * (jump + 1)
  assert int(steps.up.sum()) == (resample - 1) * points
  levels = _walk(steps, jump)
  assert levels[0] == num_steps - 1 and levels[-1] == -1 and max(levels) == num_steps - 1
  assert steps.t[-1] == 0 and not steps.up[-1]
  # Every level is left downwards once, plus once per jump over it; a jump point is jumped from r - 1 times.
  down = np.bincount(steps.t[~steps.up], minlength=num_steps)
  assert down.min() >= 1 and down.max() == resample
  assert (np.bincount(steps.t[steps.up], minlength=num_steps)[:jump * points:jump] == resample - 1).all()
  # `visit` counts earlier steps from the same level in the same direction: (t, up, visit) never repeats.
  assert len(set(zip(steps.t.tolist(), steps.up.tolist(), steps.visit.tolist()))) == len(steps.t)
  if resample == 1:
    assert steps.t.tolist() == list(range(num_steps - 1, -1, -1)) and not steps.visit.any()


def test_q_jump_closed_form_and_marginal():
  schedule = diffusion.make_schedule("linear", 1000)
  abar = np.asarray(schedule.alphas_cumprod, np.float64)
  t, t_next = 300, 310
  mean = diffusion.q_jump(schedule, jnp.ones(()), t, t_next, jnp.zeros(()))
  std = diffusion.q_jump(schedule, jnp.zeros(()), t, t_next, jnp.ones(()))
  np.testing.assert_allclose(mean, np.sqrt(abar[t_next] / abar[t]), rtol=1e-5)
  np.testing.assert_allclose(std, np.sqrt(1 - abar[t_next] / abar[t]), rtol=1e-4)
  # x_t ~ q(x_t | x0) jumped to t_next has q(x_{t_next} | x0)'s marginal: mean sqrt(ᾱ) x0, variance 1 - ᾱ.
  k_a, k_b = jax.random.split(jax.random.key(0))
  x0 = jnp.full((200_000,), 0.7)
  x_t = diffusion.q_sample(schedule, x0, t, jax.random.normal(k_a, x0.shape))
  x_next = np.asarray(diffusion.q_jump(schedule, x_t, t, t_next, jax.random.normal(k_b, x0.shape)), np.float64)
  np.testing.assert_allclose(x_next.mean(), 0.7 * np.sqrt(abar[t_next]), atol=4 * np.sqrt(1 / 200_000))
  np.testing.assert_allclose(x_next.var(), 1 - abar[t_next], rtol=0.02)
  # From the clean level (-1) the jump is q_sample itself.
  z = jax.random.normal(k_b, (5,))
  np.testing.assert_allclose(diffusion.q_jump(schedule, x0[:5], -1, t, z), diffusion.q_sample(schedule, x0[:5], t, z),
                             rtol=1e-6)


def test_no_known_pixel_and_no_jumps_is_sample_ddpm():
  schedule = diffusion.make_schedule("cosine", 40)
  denoise_fn = _gaussian_denoiser(schedule, jnp.array([0.3, -0.2]), [[0.5, 0.3], [0.3, 0.4]])
  key, known = jax.random.key(3), jnp.full((6, 2), 5.0)
  for clip_sample in (False, True):
    ddpm = diffusion.sample_ddpm(schedule, denoise_fn, key, (6, 2), clip_sample=clip_sample)
    ours = diffusion.repaint(schedule, denoise_fn, key, known, jnp.zeros((6, 2)), jump_length=5, resample=1,
                             clip_sample=clip_sample)
    np.testing.assert_allclose(ours, ddpm, atol=1e-6)


@pytest.mark.parametrize("resample", [1, 3])
def test_known_pixels_come_back_exactly(resample):
  schedule = diffusion.make_schedule("linear", 50)
  known = jax.random.uniform(jax.random.key(1), (4, 3, 3, 1), minval=-1, maxval=1)
  mask = jnp.ones_like(known).at[:, 1, 2, 0].set(0.0)  # all but one pixel known

  def denoise_fn(x, t):  # a denoiser that knows nothing: ε = x_t
    del t
    return x

  out = diffusion.repaint(schedule, denoise_fn, jax.random.key(2), known, mask, jump_length=4, resample=resample)
  assert np.isfinite(out).all()
  np.testing.assert_array_equal(np.asarray(out)[mask == 1], np.asarray(known)[mask == 1])
  assert np.abs(np.asarray(out)[:, 1, 2, 0] - np.asarray(known)[:, 1, 2, 0]).min() > 0  # the unknown one is generated


def test_scan_matches_a_hand_loop():
  schedule = diffusion.make_schedule("linear", 12)
  denoise_fn = _gaussian_denoiser(schedule, jnp.array([0.1, 0.5]), [[0.6, -0.2], [-0.2, 0.3]])
  key, known, mask = jax.random.key(4), jnp.array([[0.8, 0.0]] * 5), jnp.array([1.0, 0.0])
  ours = diffusion.repaint(schedule, denoise_fn, key, known, mask, jump_length=3, resample=2, variance="fixed_large")
  k_start, k_steps = jax.random.split(key)  # the documented streams
  k_known, k_jump = jax.random.split(jax.random.fold_in(key, diffusion.REPAINT_STREAM))
  x = jax.random.normal(k_start, known.shape)
  steps = diffusion.repaint_timesteps(12, 3, 2)
  for t, up, visit in zip(*(a.tolist() for a in steps)):
    index = t + 12 * visit
    if up:
      x = diffusion.q_jump(schedule, x, t, t + 3, jax.random.normal(jax.random.fold_in(k_jump, index), x.shape))
      continue
    eps = denoise_fn(x, jnp.full((5,), t))
    unknown = diffusion.ddpm_step(schedule, x, eps, t, jax.random.normal(jax.random.fold_in(k_steps, index), x.shape),
                                  "fixed_large")
    noised = known if t == 0 else diffusion.q_sample(schedule, known, t - 1,
                                                     jax.random.normal(jax.random.fold_in(k_known, index), x.shape))
    x = mask * noised + (1 - mask) * unknown
  np.testing.assert_allclose(ours, x, atol=1e-5)


def test_resampling_harmonizes_correlated_pixels():
  """Two pixels with correlation 0.9, the first known at 1: the second's conditional mean is 0.9.

  Without resampling the generated pixel barely sees the known one (the known half is noised
  independently of it), so its mean falls short; RePaint's jumps pull it towards 0.9.
  """
  schedule = diffusion.make_schedule("linear", 100)
  denoise_fn = _gaussian_denoiser(schedule, jnp.zeros(2), [[1.0, 0.9], [0.9, 1.0]])
  known, mask = jnp.tile(jnp.array([[1.0, 0.0]]), (4000, 1)), jnp.array([1.0, 0.0])
  means, stds = {}, {}
  for r in (1, 10):
    out = diffusion.repaint(schedule, denoise_fn, jax.random.key(5), known, mask, jump_length=5, resample=r)
    means[r], stds[r] = float(jnp.mean(out[:, 1])), float(jnp.std(out[:, 1]))
  assert abs(means[10] - 0.9) < 0.5 * abs(means[1] - 0.9), means
  assert abs(means[10] - 0.9) < 0.1, means
  assert abs(stds[10] - np.sqrt(1 - 0.9**2)) < 0.05 < abs(stds[1] - np.sqrt(1 - 0.9**2)), stds


def test_masks():
  center = np.asarray(diffusion.inpaint_masks("center", (2, 8, 8, 1), jax.random.key(0)))
  expected = np.ones((8, 8))
  expected[2:6, 2:6] = 0
  assert (center == expected[None, :, :, None]).all()
  half = np.asarray(diffusion.inpaint_masks("half", (3, 8, 6, 2), jax.random.key(0)))
  assert (half[:, :4] == 1).all() and (half[:, 4:] == 0).all()
  pixels = np.asarray(diffusion.inpaint_masks("pixels", (500, 8, 8, 3), jax.random.key(1)))
  assert set(np.unique(pixels)) == {0.0, 1.0} and (pixels == pixels[..., :1]).all()  # shared by the channels
  assert abs(pixels.mean() - diffusion.PIXELS_KNOWN) < 0.02 and not (pixels[0] == pixels[1]).all()
  np.testing.assert_array_equal(pixels, diffusion.inpaint_masks("pixels", (500, 8, 8, 3), jax.random.key(1)))


@pytest.mark.parametrize("call,message", [
    (lambda: diffusion.inpaint_masks("ring", (1, 8, 8, 1), None), "unknown mask kind 'ring'"),
    (lambda: diffusion.inpaint_masks("center", (1, 1, 1, 1), None), "leaves an image with no pixel known"),
    (lambda: diffusion.inpaint_masks("half", (2, 1, 4, 1), None), "leaves an image with no pixel known"),
    (lambda: diffusion.inpaint_masks("pixels", (64, 1, 1, 1), jax.random.key(0)), "leaves an image with"),
    (lambda: diffusion.inpaint_masks("center", (8, 8, 1), None), "mask shape must be (batch, H, W, C)"),
    (lambda: diffusion.repaint_timesteps(10, 0, 2), "jump_length must be in [1, T) = [1, 10), got 0"),
    (lambda: diffusion.repaint_timesteps(10, 10, 2), "jump_length must be in [1, T) = [1, 10), got 10"),
    (lambda: diffusion.repaint_timesteps(10, 2, 0), "resample must be >= 1, got 0"),
    (lambda: diffusion.repaint_timesteps(10, 2.5, 2), "jump_length must be an integer, got 2.5"),
    (lambda: diffusion.repaint(diffusion.make_schedule("linear", 10), lambda x, t: x, jax.random.key(0),
                               jnp.zeros((2, 3)), jnp.ones((4,))), "mask of shape (4,) does not broadcast"),
])
def test_bad_input_is_one_line(call, message):
  with pytest.raises(ValueError) as info:
    call()
  assert message in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------
# The experiment's --inpaint and the table, on the tables' smoke model (trained once here).


@pytest.fixture(scope="session")  # session: kept when xdist interleaves other modules
def smoke_run(tmp_path_factory):
  from experiments import diffusion as experiment  # pylint: disable=import-outside-toplevel
  from experiments.tables import repaint as table  # pylint: disable=import-outside-toplevel
  config = table.get_config("smoke").model
  workdir = tmp_path_factory.mktemp("diffusion")
  experiment.run(config, str(workdir))
  return config, workdir


@pytest.mark.slow
@pytest.mark.xdist_group("repaint_run")
def test_inpaint_writes_completions_that_keep_the_known_pixels(smoke_run):
  from experiments import diffusion as experiment  # pylint: disable=import-outside-toplevel
  config, workdir = smoke_run
  out = experiment.inpaint(config, str(workdir), "center", resample=2, jump=25, num_images=10)
  with np.load(workdir / "inpaint_center.npz") as f:
    originals, masks, completions = f["originals"], f["masks"], f["completions"]
  assert originals.shape == masks.shape == completions.shape == (10, 8, 8, 1)
  np.testing.assert_allclose(completions[masks == 1], originals[masks == 1], atol=1e-6)
  assert out["unknown_share"] == 0.25 and out["denoiser_evaluations"] == 100 + 3 * 25
  np.testing.assert_allclose(out["masked_mse"], experiment.masked_mse(completions, originals, masks), rtol=1e-6)
  assert 0 <= out["masked_mse"] <= 1 and np.isfinite(out["fid"]) and np.isfinite(out["fid_masked_input"])
  assert json.loads((workdir / "inpaint_center.json").read_text())["masked_mse"] == out["masked_mse"]
  assert (workdir / "inpaint_center.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.xdist_group("repaint_run")
def test_repaint_table_smoke(smoke_run, tmp_path):
  from experiments.tables import repaint as table  # pylint: disable=import-outside-toplevel
  _, workdir = smoke_run
  config = table.get_config("smoke")
  config.model_workdir = str(workdir)
  results = table.run(config, str(tmp_path))
  assert results["model_train_s"] == 0 and sorted(results["rows"]) == ["1", "2"]  # reused, not retrained
  for row in results["rows"].values():
    assert np.isfinite(row["fid"]) and 0 <= row["masked_mse"] <= 1 and row["masked_mse_se"] > 0
  assert results["rows"]["2"]["denoiser_evaluations"] > results["rows"]["1"]["denoiser_evaluations"] == 100
  text = (tmp_path / "repaint.md").read_text()
  assert "Command: `python " in text and f"{results['rows']['2']['fid']:.2f}" in text and "The paper's trend" in text
  assert (tmp_path / "repaint.png").stat().st_size > 0


def test_trend_reads_the_numbers():
  from experiments.tables import repaint as table  # pylint: disable=import-outside-toplevel
  better = {1: {"masked_mse": 0.1, "fid": 20.0}, 5: {"masked_mse": 0.05, "fid": 10.0}}
  for row in better.values():
    row.update(masked_mse_se_vs_r1=0.001, fid_se_vs_r1=1.0)
  assert "**holds**" in table.trend(better, [1, 5])[-1]
  noisy = {r: {**row, "masked_mse_se_vs_r1": 1.0} for r, row in better.items()}
  assert "**holds in part**" in table.trend(noisy, [1, 5])[-1]


def test_inpaint_checks_its_flags():
  from experiments import diffusion as experiment  # pylint: disable=import-outside-toplevel
  from research.train import ConfigError  # pylint: disable=import-outside-toplevel
  config = experiment.get_config("smoke")
  for args, message in [(("center", 2, 100, 10), "--resample / --jump: jump_length must be in [1, T) = [1, 100)"),
                        (("center", 0, 10, 10), "--resample / --jump: resample must be >= 1, got 0"),
                        (("half", 2, 10, 301), "--num_images must be in [4, 300] (the test split), got 301")]:
    with pytest.raises(ConfigError, match=re.escape(message)):
      experiment.check_inpaint(config, *args)


@pytest.mark.parametrize("flags,message", [
    (["--inpaint=ring"], "--inpaint must be one of center, half, pixels, got 'ring'"),
    (["--inpaint=half"], "holds no finished experiments.diffusion run of 6 steps"),
])
def test_inpaint_refuses_in_one_line_and_writes_nothing(tmp_path, flags, message):
  proc = run_python(["-m", "experiments.diffusion", f"--workdir={tmp_path / 'w'}",
                     "--config=experiments/diffusion.py:smoke", *flags])
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
  assert not (tmp_path / "w").exists()
