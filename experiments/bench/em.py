"""EM speed: 20 full-covariance iterations, `research.em.fit_gmm` vs scikit-learn's GaussianMixture.

Both fit the same float32 data (N=100000, D=8, K=16) from the same initialisation
(means_init / weights_init / precisions_init) with max_iter=20 and tol=0, so both run
exactly 20 E+M iterations. JAX is compiled first; every timing ends with
block_until_ready; the runs of the implementations alternate (so a change in machine load
hits all of them) and the median of --repeats runs is reported. sklearn is also timed on a
float64 copy of the data, its usual input. NumPy's BLAS (and OPENBLAS_CORETYPE, which some
environments set and which slows it) is used as found and recorded in the JSON.

Run:
  python -m experiments.bench.em --outdir=experiments/bench/results/em
  python -m experiments.bench.em --repeats=3 --outdir=/tmp/em_bench
"""

import os
import statistics
import time
import warnings

import jax
import numpy as np
from absl import app, flags

from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_info, threadpool_limits

from experiments import report
from research import em

_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per implementation (median reported).")
_N = flags.DEFINE_integer("n_samples", 100_000, "Number of samples N.")
_D = flags.DEFINE_integer("n_features", 8, "Dimension D.")
_K = flags.DEFINE_integer("n_components", 16, "Number of components K.")
_ITERS = flags.DEFINE_integer("iters", 20, "EM iterations (max_iter with tol=0).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the data and the initialisation.")

# The peers' versions recorded beside jax/flax/optax.
PACKAGES = ("jaxlib", "scikit-learn", "numpy")


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


def _interleaved_times(fns: dict, repeats: int) -> tuple[dict[str, list[float]], dict]:
  """Runs every fn once per round, `repeats` rounds; returns the times and the last outputs by name."""
  times, outs = {name: [] for name in fns}, {}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      outs[name] = fn()
      times[name].append(time.perf_counter() - start)
  return times, outs


def _blas() -> list[dict]:
  """The BLAS libraries NumPy/sklearn use, with their thread counts."""
  return [{k: info.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
          for info in threadpool_info() if info.get("user_api") == "blas"]


def run_bench(outdir: str, repeats: int, n_samples: int, n_features: int, n_components: int, iters: int,
              seed: int) -> dict:
  """Times JAX and the sklearn variants, writes <outdir>/em.json and em.md, returns the JSON dict."""
  env = report.environment(*PACKAGES)
  versions, devices = env["versions"], env["devices"]
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
  times, outs = _interleaved_times({name: fit for name, (_, _, fit) in runs.items()}, repeats)
  median = {name: statistics.median(t) for name, t in times.items()}
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
      "ratio_vs_fastest_sklearn": {"sklearn": fastest, "ratio": ratios[fastest]},
      "n_iter": n_iter,
      "lower_bound": lower_bound,
      "max_abs_mean_diff_vs_sklearn_float64": float(np.abs(np.asarray(gmm.means) - reference.means_).max()),
      "repeats": repeats,
      "machine": {"blas": _blas(), "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")},
  }
  rows = [f"| {description} | {dtype} | {median[name]:.3f} | "
          + ("1.0x |" if name == "jax" else f"{ratios[name]:.1f}x |") for name, (description, dtype, _) in runs.items()]
  table = "\n".join([f"| implementation | dtype | median time for {iters} iterations (s) | this time / JAX time |",
                     "|---|---|---|---|", *rows])
  md = "\n".join([
      "# EM for Gaussian mixtures: research.em vs scikit-learn",
      "",
      f"Command: `{report.command()}`",
      "",
      f"{iters} full-covariance EM iterations (tol=0, same means/weights/precisions init) on "
      f"N={n_samples}, D={n_features}, K={n_components}; median of {repeats} interleaved runs after a compile run.",
      f"Machine: {devices['cpu_count']} CPU cores, JAX device {devices['kind']}; "
      f"jax {versions['jax']}, scikit-learn {versions['scikit-learn']}, numpy {versions['numpy']}; "
      f"OPENBLAS_CORETYPE={result['machine']['OPENBLAS_CORETYPE']}.",
      "",
      table,
      "",
      f"JAX is {ratios[fastest]:.1f}x faster than the fastest sklearn variant ({fastest}).",
      f"Iterations run: {n_iter}. Lower bounds: JAX float32 {lower_bound['jax']:.6f}, sklearn float64 "
      f"{lower_bound['sklearn_float64']:.6f}; largest mean difference "
      f"{result['max_abs_mean_diff_vs_sklearn_float64']:.2e}. JAX compile + first run: {compile_s:.2f} s "
      "(not in the timings).",
      "",
  ])
  result = report.write_report(outdir, "em", result, md, json_file="em.json", packages=PACKAGES)
  print(table)
  print(f"JAX vs fastest sklearn ({fastest}): {ratios[fastest]:.1f}x")
  return result


def main(outdir: str) -> None:
  for name, value in (("repeats", _REPEATS.value), ("n_features", _D.value), ("n_components", _K.value),
                      ("iters", _ITERS.value)):
    if value < 1:
      raise app.UsageError(f"--{name} must be at least 1, got {value}")
  if _N.value < _K.value:
    raise app.UsageError(f"--n_samples ({_N.value}) must be at least --n_components ({_K.value})")
  run_bench(outdir, _REPEATS.value, _N.value, _D.value, _K.value, _ITERS.value, _SEED.value)


if __name__ == "__main__":
  report.main(main)
