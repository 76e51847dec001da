"""Each benchmark runs end to end on a tiny problem and writes its report (no timing is asserted).

Besides the files, each report is checked against what the test knows independently: the
command line it was started with, the installed versions, closed forms of the work done, and
the agreement between the benchmark's peers where they compute the same thing.
"""

import json
import shlex

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

BENCHES = {
    "em": ["--n_samples=2000", "--n_features=2", "--n_components=3", "--iters=3", "--repeats=1"],
    "loop_overhead": ["--repeats=1", "--short_steps=5", "--span=10"],
    "ppo": ["--total_timesteps=1024", "--seeds=2", "--peer_updates=1"],
    "sweep": ["--seeds=2", "--steps=3", "--preset=gan,smoke"],
}


def _check_em(report):
  # tol=0 and max_iter=3: every implementation runs exactly 3 EM iterations.
  assert report["n_iter"] == {name: 3 for name in report["median_s"]}
  # From the same initialisation, float32 JAX and float64 sklearn reach the same fit.
  bounds = report["lower_bound"]
  for name, bound in bounds.items():
    assert bound == pytest.approx(bounds["sklearn_float64"], rel=1e-5), name
  assert report["max_abs_mean_diff_vs_sklearn_float64"] < 1e-4
  assert report["versions"]["scikit-learn"] == sklearn.__version__


def _check_loop_overhead(report):
  config = autoencoder_experiment.get_config()
  assert (report["short_steps"], report["span"], report["repeats"]) == (5, 10, 1)
  assert len(report["bare_s_per_step"]) == len(report["loop_s_per_step"]) == 1
  # The loop is timed with the default config's cadence and batch, as the report says.
  assert (report["batch_size"], report["log_every"], report["checkpoint_every"]) == (
      config.batch_size, config.log_every, config.checkpoint_every)


def _check_ppo(report):
  config = ppo_experiment.get_config()
  rollout = config.num_envs * config.num_steps  # env steps per update
  updates = 1024 // rollout
  assert report["jax_1_seed"]["env_steps"] == updates * rollout
  assert report["jax_2_seeds"]["env_steps"] == 2 * updates * rollout
  assert report["peer_torch_gymnasium"]["env_steps"] == rollout  # --peer_updates=1
  assert report["peer_torch_gymnasium"]["torch_threads"] == 1
  assert report["versions"]["gymnasium"] == gymnasium.__version__


def _check_sweep(report):
  # Every peer trains the same seeds from the same keys and batches: same parameters.
  assert set(report["peers"]) == {"vmapped", "sequential_scans", "python_loop"}
  for name, peer in report["peers"].items():
    assert peer["max_abs_diff_vs_vmapped"] < 1e-5, name
  expected = gan_experiment.get_config("gan,smoke")
  assert report["config"]["steps"] == 3
  assert report["config"]["batch_size"] == expected.batch_size


CHECKS = {"em": _check_em, "loop_overhead": _check_loop_overhead, "ppo": _check_ppo, "sweep": _check_sweep}


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_benchmark_writes_its_report(tmp_path, name):
  args = ["-m", f"experiments.bench.{name}", f"--outdir={tmp_path}", *BENCHES[name]]
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
