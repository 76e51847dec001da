"""Pure evaluations through the one loop: a task's traced hyperparameters reach its evaluation and
samples, a sweep's members evaluate in one program as their single runs do, and the pictures an
evaluation makes are the samples written at its step."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_run
from experiments import autoencoder as autoencoder_experiment
from experiments import diffusion as diffusion_experiment
from research import data as data_lib
from research.tasks import autoencoder, diffusion
from research.train import ConfigError, Members, Task, train


def _with(config, **fields):
  config = config.copy_and_resolve_references()
  for name, value in fields.items():
    config[name] = value
  return config


def _images(workdir, name: str) -> np.ndarray:
  return np.load(workdir / f"{name}.npz")["images"]


# ---------------------------------------------------------------------------------------
# The loop's contract, on a tiny classifier.


def _picturing_task(config, pure: bool, sampled: list):
  """The tiny classifier with a traced `scale` that its evaluation and samples report back."""
  base = tiny_run.make_task(config)

  def loss(params, batch, key, train, hparams):
    del hparams
    return base.loss(params, batch, key, train, {})

  def evaluate(params, key, data, hparams):
    del params, key, data
    out = {"scale_seen": hparams["scale"]}
    if pure:
      out.update(samples=jnp.full((4, 8, 8, 1), 0.25), grid=jnp.full((6, 8, 8, 1), 0.5))
    return out

  def sample(params, key, hparams):
    del params, key
    sampled.append(float(hparams["scale"]))
    return {"samples": jnp.full((3, 8, 8, 1), 0.75)}

  return Task(init=base.init, tx=base.tx, loss=loss, evaluate=evaluate, evaluate_pure=pure,
              pictures=("samples", "grid"), sample=sample, hparams={"scale": config.scale})


def test_an_evaluation_s_pictures_are_its_step_s_samples_and_sample_draws_the_others(tmp_path, digits_train):
  config = tiny_run.make_config(4)
  config.scale = 2.0
  config.eval_every, config.sample_every = 2, 1
  sampled = []
  run = train(_picturing_task(config, True, sampled), config, str(tmp_path), digits_train)
  # Samples at steps 1, 2, 3, 4: `sample` draws at 1 and 3 only, with the run's hparams; 2 and 4 write
  # the evaluation's pictures (the last of them stays on disk).
  assert sampled == [2.0, 2.0]
  np.testing.assert_array_equal(_images(tmp_path, "samples"), np.full((4, 8, 8, 1), 0.25))
  np.testing.assert_array_equal(_images(tmp_path, "grid"), np.full((6, 8, 8, 1), 0.5))
  stored = json.loads((tmp_path / "results.json").read_text())
  assert stored["scale_seen"] == run.results["scale_seen"] == 2.0  # the fourth argument: the traced value
  assert "samples" not in stored and "grid" not in stored  # pictures stay out of results.json


@pytest.mark.parametrize("pure", [True, False])
def test_each_member_s_evaluation_and_samples_get_its_own_hparams(tmp_path, digits_train, pure):
  config = tiny_run.make_config(4)
  config.scale = 1.0
  sampled = []
  members = Members(seeds=(0, 0), hparams={"scale": (1.0, 3.0)})
  run = train(_picturing_task(config, pure, sampled), config, str(tmp_path), digits_train, members=members)
  assert [m["scale_seen"] for m in run.results["members"]] == [1.0, 3.0]
  if pure:
    assert not sampled  # the final evaluation's pictures are the final samples
    np.testing.assert_array_equal(_images(tmp_path / "member_1", "grid"), np.full((6, 8, 8, 1), 0.5))
  else:
    assert sampled == [1.0, 3.0]


# ---------------------------------------------------------------------------------------
# The autoencoders.


@pytest.mark.slow
def test_vae_members_are_evaluated_in_one_program_as_their_single_runs(tmp_path, monkeypatch):
  make_task, traces = autoencoder.make_task, []

  def counting_task(*args, **kwargs):
    task = make_task(*args, **kwargs)

    def evaluate(params, key, data, hparams):
      traces.append(jax.tree.leaves(params)[0].shape)  # runs when traced, not per call
      return task.evaluate(params, key, data, hparams)
    return dataclasses.replace(task, evaluate=evaluate)

  monkeypatch.setattr(autoencoder, "make_task", counting_task)
  config = _with(autoencoder_experiment.get_config("smoke"), steps=10, eval_every=5, log_every=5,
                 checkpoint_every=10)
  members = Members(seeds=(0, 3), hparams={"kl_weight": (1.0, 0.5)})
  swept = autoencoder_experiment.run(config, str(tmp_path / "sweep"), members=members)["members"]
  assert len(traces) == 1  # both members, at steps 5 and 10
  single = autoencoder_experiment.run(_with(config, seed=3, kl_weight=0.5), str(tmp_path / "one"))
  assert len(traces) == 2
  for name in ("test_nll_nats", "test_bits_per_dim", "test_elbo_nats", "fid"):
    np.testing.assert_allclose(swept[1][name], single[name], rtol=1e-4, err_msg=name)
  assert swept[1]["nll_k"] == single["nll_k"] and swept[1]["num_samples"] == single["num_samples"]
  assert swept[1]["class_shares"] == pytest.approx(single["class_shares"], abs=0.03)
  # The evaluation's pictures are the ones written: the scored prior samples and the reconstructions.
  for name in ("samples", "reconstructions"):
    np.testing.assert_allclose(_images(tmp_path / "sweep" / "member_1", name), _images(tmp_path / "one", name),
                               atol=1e-5, err_msg=name)
  assert swept[0]["test_nll_nats"] != pytest.approx(swept[1]["test_nll_nats"], rel=1e-3)


def test_dae_members_are_evaluated_at_their_own_noise_level():
  config = _with(autoencoder_experiment.get_config("smoke"), model="dae")
  images = data_lib.load("digits", "test")["image"][:64]
  task = autoencoder.make_task(config, images)
  params = task.init(jax.random.key(0), {"image": images})
  key, data = jax.random.key(1), {"image": images}
  levels = (0.1, 0.6)
  batched = jax.jit(jax.vmap(task.evaluate, in_axes=(None, None, None, 0)))(
      params, key, data, {"noise_level": jnp.asarray(levels, jnp.float32)})
  for i, level in enumerate(levels):
    # The config's level when no hparams are given, as a single run with that level has them.
    single = task.summarize(jax.device_get(autoencoder.make_task(_with(config, noise_level=level), images)
                                           .evaluate(params, key, data)))
    member = task.summarize(jax.device_get(jax.tree.map(lambda x, i=i: x[i], batched)))
    assert member == pytest.approx(single, rel=1e-5)
  # NumPy values: pytest's approx reads `.flat`, which a JAX array refuses.
  denoising = np.asarray(batched["test_denoising_bce"])
  assert float(denoising[0]) != pytest.approx(float(denoising[1]), rel=1e-3)
  np.testing.assert_array_equal(batched["test_reconstruction_bce"][0], batched["test_reconstruction_bce"][1])


# ---------------------------------------------------------------------------------------
# Diffusion: the guidance scale as a traced, swept hyperparameter.


# The smoke U-Net narrowed and its sampler shortened: the test is about which denoiser runs with which w.
TINY_SAMPLER = {"unet_channels": (4, 8), "unet_groups": 4, "unet_heads": 2, "sample_steps": 2, "num_samples": 10,
                "sample_batch": 10}


@pytest.mark.slow
def test_guided_evaluation_at_one_is_the_conditional_model_and_other_scales_differ():
  config = _with(diffusion_experiment.get_config("smoke"), **TINY_SAMPLER)
  unguided = diffusion.make_task(config)
  guided = diffusion.make_task(config, sweeps_guidance=True)
  assert "guidance_scale" not in unguided.hparams and guided.hparams["guidance_scale"] == 1.0
  batch = {"image": np.zeros((2, 8, 8, 1), np.uint8), "label": np.zeros((2,), np.int32)}
  params = unguided.init(jax.random.key(0), batch)
  # Random weights everywhere (some layers start at zero), so the labels change the denoiser's output.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  key = jax.random.key(2)
  scales = jnp.asarray([0.0, 1.0, 3.0], jnp.float32)
  batched = jax.jit(jax.vmap(guided.evaluate, in_axes=(None, None, None, 0)))(
      params, key, None, {"class_dropout": jnp.full((3,), 0.1), "guidance_scale": scales})["samples"]
  alone = jax.jit(unguided.evaluate)(params, key, None, unguided.hparams)["samples"]
  np.testing.assert_allclose(batched[1], alone, atol=1e-4)  # w = 1: no unconditional half needed
  assert np.abs(batched[0] - batched[2]).max() > 1e-2


@pytest.mark.parametrize("conditional,values,message", [
    (False, (0.0, 2.0), "cannot vary guidance_scale of an unconditional model"),
    (True, (1.0, -0.5), r"guidance_scale values must be >= 0, got \[1.0, -0.5\]"),
])
def test_a_bad_guidance_sweep_is_refused_before_writing(tmp_path, conditional, values, message):
  config = _with(diffusion_experiment.get_config("smoke"), conditional=conditional)
  members = Members(seeds=(0, 0), hparams={"guidance_scale": values})
  with pytest.raises(ConfigError, match=message):
    diffusion_experiment.run(config, str(tmp_path / "w"), members=members)
  assert not (tmp_path / "w").exists()
