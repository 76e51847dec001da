"""Each benchmark runs end to end on a tiny problem and writes its report (no timing is asserted).

Besides the files, each report is checked against what the test knows independently: the
command line it was started with, the installed versions, closed forms of the work done, and
the agreement between the benchmark's peers where they compute the same thing.
"""

import json
import math
import os
import shlex
from importlib import metadata

import flax
import gymnasium
import jax
import optax
import pytest
import sklearn

from conftest import run_python
from experiments import autoencoder as autoencoder_experiment
from experiments import gan as gan_experiment
from experiments import ppo as ppo_experiment

# The data benchmark runs the default config: its smoke preset runs two calls of its steps_per_call.
DATA_STEPS = 2 * autoencoder_experiment.get_config().steps_per_call
# Each benchmark's smoke preset: the sizes the checks below count with.
BENCHES = ("data", "em", "loop_overhead", "ppo", "products", "sweep", "vs_torch")


def _check_em(report):
  # tol=0 and max_iter=3: every implementation runs exactly 3 EM iterations.
  assert report["n_iter"] == {name: 3 for name in report["median_s"]}  # smoke: iters=3, n_features=2
  # From the same initialisation, float32 JAX and float64 sklearn reach the same fit.
  bounds = report["lower_bound"]
  for name, bound in bounds.items():
    assert bound == pytest.approx(bounds["sklearn_float64"], rel=1e-5), name
  assert report["max_abs_mean_diff_vs_sklearn_float64"] < 1e-4
  assert report["versions"]["scikit-learn"] == sklearn.__version__


def _check_data(report):
  config = autoencoder_experiment.get_config()
  runs = report["runs"]
  assert {(run["source"], run["prefetch"]) for run in runs.values()} == {
      (source, prefetch) for source in ("in_memory", "memmap", "records") for prefetch in (config.prefetch, 0)}
  # Every source yields the same batches, so every run trains to the same bits.
  assert report["same_train_loss"] and len({run["train_loss"] for run in runs.values()}) == 1
  assert runs[f"in_memory/prefetch={config.prefetch}"]["ratio_vs_in_memory"] == 1.0
  assert report["steps_per_call"] == config.steps_per_call and report["steps"] == DATA_STEPS
  # Reading the raw records is part of what the record source's gather costs.
  records = report["gather"]["records"]
  assert 0 < records["read_us_per_example"] < records["us_per_example"]


def _check_loop_overhead(report):
  config = autoencoder_experiment.get_config()
  assert (report["short_steps"], report["span"], report["repeats"]) == (5, 10, 1)
  assert report["steps_per_call"] == [1, 5] and set(report["drivers"]) == {"1", "5"}
  for driver in report["drivers"].values():
    assert len(driver["bare_s_per_step"]) == len(driver["loop_s_per_step"]) == 1
    assert driver["overhead"] == pytest.approx(driver["bare_steps_per_s"] / driver["loop_steps_per_s"] - 1.0)
  # The loop is timed with the default config's cadence, batch and prefetch, as the report says.
  assert (report["batch_size"], report["log_every"], report["checkpoint_every"], report["prefetch"]) == (
      config.batch_size, config.log_every, config.checkpoint_every, config.prefetch)


def _check_ppo(report):
  config = ppo_experiment.get_config()
  rollout = config.num_envs * config.num_steps  # env steps per update
  updates = 1024 // rollout
  assert report["jax_1_seed"]["env_steps"] == updates * rollout
  assert report["jax_2_seeds"]["env_steps"] == 2 * updates * rollout
  assert report["peer_torch_gymnasium"]["env_steps"] == rollout  # --peer_updates=1
  assert report["peer_torch_gymnasium"]["torch_threads"] == 1
  assert report["versions"]["gymnasium"] == gymnasium.__version__


def _check_products(report):
  # Batch 2, 2 heads of 8, 24 keys, query blocks of 8: the products of one GPT-2 layer at that shape.
  expected = {"attention scores Q K^T (one query block)": ([2, 2, 8, 8], [2, 2, 24, 8], 2 * 2 * 2 * 8 * 24 * 8),
              "attention P V (one query block)": ([2, 2, 8, 24], [2, 2, 24, 8], 2 * 2 * 2 * 8 * 24 * 8),
              "projection (query, key, value, out)": ([48, 16], [16, 16], 2 * 48 * 16 * 16),
              "MLP c_fc": ([48, 16], [16, 64], 2 * 48 * 16 * 64)}
  assert set(report["products"]) == set(expected)
  for name, (lhs, rhs, flop) in expected.items():
    row = report["products"][name]
    assert (row["lhs"], row["rhs"]) == (lhs, rhs) and row["gflop"] == pytest.approx(flop / 1e9), name
    one, every = row["one_core"], row["all_cores"]
    assert row["speedup_all_vs_one"] == pytest.approx(one["ms"] / every["ms"]), name
    assert one["gflop_per_s"] == pytest.approx(row["gflop"] / one["ms"] * 1e3), name
  assert report["cores"]["one_core"] == 1 and report["cores"]["all_cores"] == len(os.sched_getaffinity(0))


def _check_sweep(report):
  # Every peer trains the same seeds from the same keys and batches: same parameters.
  assert set(report["peers"]) == {"vmapped", "sequential_scans", "python_loop", "loop_members"}
  for name, peer in report["peers"].items():
    assert peer["max_abs_diff_vs_vmapped"] < 1e-5, name
  expected = gan_experiment.get_config("gan,smoke")
  assert report["config"]["steps"] == 3
  assert report["config"]["batch_size"] == expected.batch_size


def _dense(n_in, n_out):
  return n_in * n_out + n_out


def _conv(kernel, c_in, c_out):
  return kernel * kernel * c_in * c_out + c_out


def _check_vs_torch(report):
  vae = autoencoder_experiment.get_config()
  widths = [64, *vae.hidden, 2 * vae.latent_dim]
  decoder = [vae.latent_dim, *reversed(vae.hidden), 64]
  vae_params = sum(_dense(a, b) for w in (widths, decoder) for a, b in zip(w[:-1], w[1:]))
  gan = gan_experiment.get_config()
  f = gan.conv_features
  gan_params = (_dense(gan.latent_dim, 8 * f) + _conv(4, 2 * f, f) + _conv(4, f, 1)  # generator
                + _conv(3, 1, f) + _conv(3, f, 2 * f) + _dense(8 * f, 1))  # discriminator
  expected = {"vae": (vae_params, ["1", "10"], 40, vae.batch_size),
              "gan": (gan_params, ["1"], 10, gan.batch_size)}
  assert report["models"] == ["vae", "gan"] and report["torch_threads"] == [1]
  for name, (params, ks, steps, batch_size) in expected.items():
    m = report[name]
    # Both sides build the same networks: the parameter counts match the layer shapes.
    assert m["param_count"] == {"jax": params, "torch": params}, name
    assert list(m["jax"]) == ks and (m["jax_steps"], m["batch_size"]) == (steps, batch_size), name
    assert m["best_steps_per_call"] in {int(k) for k in ks} and str(m["recommended_steps_per_call"]) in ks
    for k in ks:
      run = m["jax"][k]
      assert run["ratio_vs_torch"] == pytest.approx(run["steps_per_s"] / m["torch_best_steps_per_s"]), (name, k)
      assert math.isfinite(run["train_loss"])
    # Both sides learn: the loss of the last interval is below the loss at initialisation.
    assert m["jax"][ks[-1]]["train_loss"] < m["jax_first_loss"], name
    assert m["torch"]["1"]["final_loss"] < m["torch"]["1"]["first_loss"], name
    assert m["torch"]["1"]["timed_steps_per_repeat"] == [40]
  assert report["versions"]["torch"] == metadata.version("torch")


CHECKS = {"data": _check_data, "em": _check_em, "loop_overhead": _check_loop_overhead, "ppo": _check_ppo,
          "products": _check_products, "sweep": _check_sweep, "vs_torch": _check_vs_torch}


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHES)
def test_benchmark_writes_its_report(tmp_path, name):
  args = ["-m", f"experiments.bench.{name}", f"--outdir={tmp_path}", f"--config=experiments/bench/{name}.py:smoke"]
  proc = run_python(args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / f"{name}.json").read_text())
  markdown = (tmp_path / f"{name}.md").read_text()
  command = shlex.join(["python", *args])
  assert report["command"] == command
  assert f"`{command}`" in markdown
  assert "|---" in markdown
  assert {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}.items() <= (
      report["versions"].items())
  assert report["devices"]["platform"] == jax.devices()[0].platform
  CHECKS[name](report)


def test_sweep_benchmark_of_the_classifier(tmp_path):
  proc = run_python(["-m", "experiments.bench.sweep", f"--outdir={tmp_path}", "--config.model=classifier",
                     "--config.seeds=3", "--config.steps=4"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / "sweep.json").read_text())
  assert report["model"] == "classifier" and report["seeds"] == 3
  for name, peer in report["peers"].items():
    assert peer["max_abs_diff_vs_vmapped"] < 1e-5, name
    assert peer["steps_per_s"] > 0, name


@pytest.mark.parametrize("name,flag,message", [
    ("em", "--config.n_samples=2", "n_samples (2) must be at least n_components (16)"),
    ("sweep", "--config.model=vit", "unknown model 'vit'; choose one of: gan, classifier"),
    ("sweep", "--config.gan_preset=wgan,gan", "gan_preset: presets name several losses"),
    ("vs_torch", "--config.models=vae,gan", "unknown models value 'vae,gan'; choose from: vae, gan (a list is given"),
    ("loop_overhead", "--config.span=7", "short_steps and span must be multiples of steps_per_call 25"),
    ("products", "--config.repeats=0", "repeats must be > 0, got 0"),
    ("data", "--config.repeats=0", "repeats must be > 0, got 0"),
    ("ppo", "--config.stpes=3", "unknown config field"),
])
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, name, flag, message):
  proc = run_python(["-m", f"experiments.bench.{name}", f"--outdir={tmp_path / 'out'}", flag])
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], \
      proc.stderr[-2000:]
  assert not (tmp_path / "out").exists()
