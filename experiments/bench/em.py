"""EM speed: 20 full-covariance iterations, `research.em.fit_gmm` vs scikit-learn's GaussianMixture.

Both fit the same float32 data (N=100000, D=8, K=16) from the same initialisation
(means_init / weights_init / precisions_init) with max_iter=20 and tol=0, so both run
exactly 20 E+M iterations. JAX is compiled first; every timing ends with
block_until_ready; the runs of the implementations alternate in an order rotated from repeat to
repeat (experiments/harness.py's timer, so a change in machine load hits all of them) and the
median of `repeats` runs is reported. sklearn is also timed on a
float64 copy of the data, its usual input. NumPy's BLAS (and OPENBLAS_CORETYPE, which some
environments set and which slows it) is used as found and recorded in the JSON.

Run:
  python -m experiments.bench.em --outdir=experiments/bench/results/em
  python -m experiments.bench.em --outdir=/tmp/em_bench --config.repeats=3
  python -m experiments.bench.em --outdir=/tmp/em_bench --config=experiments/bench/em.py:smoke
"""

import os
import time
import warnings

import jax
import ml_collections
import numpy as np

from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_info, threadpool_limits

from experiments import harness
from research import em
from research.train import ConfigError, check_positive, cli

# The peers' versions recorded beside jax/flax/optax.
PACKAGES = ("jaxlib", "scikit-learn", "numpy")


def _smoke(config: ml_collections.ConfigDict) -> None:
  """A problem of seconds, for tests."""
  config.n_samples, config.n_features, config.n_components, config.iters, config.repeats = 2000, 2, 3, 3, 1


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The benchmark's problem and protocol; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.repeats = 5  # timed runs per implementation, rotated; the median is reported
  config.n_samples = 100_000  # N, points sampled from the mixture
  config.n_features = 8  # D, their dimension
  config.n_components = 16  # K, the components fitted
  config.iters = 20  # EM iterations (max_iter with tol=0)
  config.seed = 0  # seeds the data and the initialisation
  return cli.apply_presets(config, preset, PRESETS)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad field."""
  for name in ("repeats", "n_features", "n_components", "iters"):
    check_positive(name, config[name])
  if config.n_samples < config.n_components:
    raise ConfigError(f"n_samples ({config.n_samples}) must be at least n_components ({config.n_components})")


def make_problem(n_samples: int, n_features: int, n_components: int, seed: int) -> dict:
  """A random full-covariance mixture sample (float32) and a shared EM initialisation."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(n_components, n_features)) * 3.0
  mixing = rng.normal(size=(n_components, n_features, n_features)) / np.sqrt(n_features)
  labels = rng.integers(0, n_components, size=n_samples)
  z = rng.normal(size=(n_samples, n_features))
  x = (centers[labels] + np.einsum("nd,nde->ne", z, mixing[labels])).astype(np.float32)
  # The initialisation: K random samples as means, uniform weights, isotropic precisions.
  means_init = x[rng.choice(n_samples, n_components, replace=False)].astype(np.float64)
  weights_init = np.full(n_components, 1.0 / n_components)
  precisions_init = np.broadcast_to(np.eye(n_features) / x.var(axis=0).mean(), (n_components, n_features, n_features))
  return {"x": x, "means_init": means_init, "weights_init": weights_init,
          "precisions_init": np.ascontiguousarray(precisions_init)}


def _blas() -> list[dict]:
  """The BLAS libraries NumPy/sklearn use, with their thread counts."""
  return [{k: info.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
          for info in threadpool_info() if info.get("user_api") == "blas"]


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Times JAX and the sklearn variants, writes <outdir>/em.json and em.md, returns the JSON dict."""
  check_config(config)
  repeats, n_samples, n_features = config.repeats, config.n_samples, config.n_features
  n_components, iters, seed = config.n_components, config.iters, config.seed
  env = harness.environment(*PACKAGES)
  devices = env["devices"]
  problem = make_problem(n_samples, n_features, n_components, seed)
  x = problem["x"]
  inits = {k: problem[k] for k in ("means_init", "weights_init", "precisions_init")}
  key = jax.random.key(seed)
  x_device = jax.device_put(x)

  def fit_jax():
    return jax.block_until_ready(em.fit_gmm(x_device, n_components, key=key, covariance_type="full", tol=0.0,
                                            max_iter=iters, **inits))

  def fit_sklearn(data, blas_threads=None):
    def fit():
      with warnings.catch_warnings(), threadpool_limits(blas_threads, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)  # tol=0 never "converges", by design
        return GaussianMixture(n_components, covariance_type="full", tol=0.0, max_iter=iters, **inits).fit(data)
    return fit

  # name -> (description, dtype, fit); BLAS threads as found, and limited to one (on a busy or
  # small machine OpenBLAS's spinning threads can make numpy's many small products much slower).
  runs = {
      "jax": (f"research.em.fit_gmm (jit, {devices['platform']})", "float32", fit_jax),
      "sklearn_float32": ("sklearn GaussianMixture", "float32", fit_sklearn(x)),
      "sklearn_float64": ("sklearn GaussianMixture", "float64", fit_sklearn(x.astype(np.float64))),
      "sklearn_float64_blas1": ("sklearn GaussianMixture, 1 BLAS thread", "float64",
                                fit_sklearn(x.astype(np.float64), blas_threads=1)),
  }
  start = time.perf_counter()
  fit_jax()  # compiles
  compile_s = time.perf_counter() - start
  outs = {}

  def measure(name, fit):
    def timed():
      start = time.perf_counter()
      outs[name] = fit()
      return time.perf_counter() - start
    return harness.Side(timed)

  timings = harness.compare({name: measure(name, fit) for name, (_, _, fit) in runs.items()}, repeats)
  times = {name: timings.seconds(name) for name in runs}
  median = {name: timings.median_seconds(name) for name in runs}
  ratios = {name: median[name] / median["jax"] for name in runs if name != "jax"}
  fastest = min(ratios, key=ratios.get)
  gmm, reference = outs["jax"], outs["sklearn_float64"]
  n_iter = {name: int(out.n_iter) if name == "jax" else int(out.n_iter_) for name, out in outs.items()}
  lower_bound = {name: float(out.lower_bound) if name == "jax" else float(out.lower_bound_)
                 for name, out in outs.items()}

  result = {
      "problem": {"n_samples": n_samples, "n_features": n_features, "n_components": n_components,
                  "covariance_type": "full", "iterations": iters, "tol": 0.0, "seed": seed},
      "median_s": median,
      "times_s": times,
      "jax_compile_and_first_run_s": compile_s,
      "ratio_sklearn_over_jax": ratios,
      "ratios_per_repeat": {name: timings.ratios("jax", name) for name in runs if name != "jax"},
      "ratio_vs_fastest_sklearn": {"sklearn": fastest, "ratio": ratios[fastest]},
      "n_iter": n_iter,
      "lower_bound": lower_bound,
      "max_abs_mean_diff_vs_sklearn_float64": float(np.abs(np.asarray(gmm.means) - reference.means_).max()),
      "repeats": repeats,
      "timing": timings.record(),
      "machine": {"blas": _blas(), "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")},
  }
  table = harness.table(
      ["implementation", "dtype", f"median time for {iters} iterations (s)", "this time / JAX time"],
      [(description, dtype, f"{median[name]:.3f}", "1.0x" if name == "jax" else f"{ratios[name]:.1f}x")
       for name, (description, dtype, _) in runs.items()], align="llrr")
  md = harness.document(
      "EM for Gaussian mixtures: research.em vs scikit-learn",
      f"{iters} full-covariance EM iterations (tol=0, same means/weights/precisions init) on "
      f"N={n_samples}, D={n_features}, K={n_components}; median of {repeats} runs in rotated order after a compile "
      f"run.\n{harness.machine(env, timings.load_average, ('jax', 'scikit-learn', 'numpy'))} "
      f"OPENBLAS_CORETYPE={result['machine']['OPENBLAS_CORETYPE']}.",
      table,
      f"JAX is {ratios[fastest]:.1f}x faster than the fastest sklearn variant ({fastest}).\n"
      f"Iterations run: {n_iter}. Lower bounds: JAX float32 {lower_bound['jax']:.6f}, sklearn float64 "
      f"{lower_bound['sklearn_float64']:.6f}; largest mean difference "
      f"{result['max_abs_mean_diff_vs_sklearn_float64']:.2e}. JAX compile + first run: {compile_s:.2f} s "
      "(not in the timings).")
  result = harness.write_report(outdir, "em", result, md, json_file="em.json", packages=PACKAGES)
  print(table)
  print(f"JAX vs fastest sklearn ({fastest}): {ratios[fastest]:.1f}x")
  return result


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
