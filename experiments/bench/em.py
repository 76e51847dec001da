"""EM speed: 20 full-covariance iterations, `research.em.fit_gmm` vs scikit-learn's GaussianMixture.

Both fit the same float32 data (N=100000, D=8, K=16) from the same initialisation
(means_init / weights_init / precisions_init) with max_iter=20 and tol=0, so both run
exactly 20 E+M iterations. JAX is compiled first; every timing ends with
block_until_ready; the median of --repeats runs is reported. sklearn is also timed on a
float64 copy of the data, its usual input.

Run:
  python -m experiments.bench.em
  python -m experiments.bench.em --repeats=3 --out=/tmp/em_bench
"""

import json
import os
import statistics
import time
import warnings

import jax
import numpy as np
import sklearn
from absl import app, flags
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from research import em

_OUT = flags.DEFINE_string("out", "experiments/bench/results/em", "Output directory for em.json and em.md.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per implementation (median reported).")
_N = flags.DEFINE_integer("n_samples", 100_000, "Number of samples N.")
_D = flags.DEFINE_integer("n_features", 8, "Dimension D.")
_K = flags.DEFINE_integer("n_components", 16, "Number of components K.")
_ITERS = flags.DEFINE_integer("iters", 20, "EM iterations (max_iter with tol=0).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the data and the initialisation.")


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


def _median_time(fn, repeats: int) -> tuple[float, list[float], object]:
  times, out = [], None
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), times, out


def run_bench(out_dir: str, repeats: int, n_samples: int, n_features: int, n_components: int, iters: int,
              seed: int) -> dict:
  """Times both implementations, writes <out_dir>/em.json and em.md, returns the JSON dict."""
  problem = make_problem(n_samples, n_features, n_components, seed)
  x = problem["x"]
  inits = {k: problem[k] for k in ("means_init", "weights_init", "precisions_init")}
  key = jax.random.key(seed)
  x_device = jax.device_put(x)

  def fit_jax():
    return jax.block_until_ready(em.fit_gmm(x_device, n_components, key=key, covariance_type="full", tol=0.0,
                                            max_iter=iters, **inits))

  def fit_sklearn(data):
    def fit():
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # tol=0 never "converges", by design
        return GaussianMixture(n_components, covariance_type="full", tol=0.0, max_iter=iters, **inits).fit(data)
    return fit

  start = time.perf_counter()
  fit_jax()  # compiles
  compile_s = time.perf_counter() - start
  jax_s, jax_times, gmm = _median_time(fit_jax, repeats)
  sk32_s, sk32_times, sk32 = _median_time(fit_sklearn(x), repeats)
  sk64_s, sk64_times, sk64 = _median_time(fit_sklearn(x.astype(np.float64)), repeats)

  result = {
      "problem": {"n_samples": n_samples, "n_features": n_features, "n_components": n_components,
                  "covariance_type": "full", "iterations": iters, "tol": 0.0, "seed": seed},
      "median_s": {"jax": jax_s, "sklearn_float32": sk32_s, "sklearn_float64": sk64_s},
      "times_s": {"jax": jax_times, "sklearn_float32": sk32_times, "sklearn_float64": sk64_times},
      "jax_compile_and_first_run_s": compile_s,
      "ratio_sklearn_over_jax": {"float32": sk32_s / jax_s, "float64": sk64_s / jax_s},
      "n_iter": {"jax": int(gmm.n_iter), "sklearn_float32": int(sk32.n_iter_), "sklearn_float64": int(sk64.n_iter_)},
      "lower_bound": {"jax": float(gmm.lower_bound), "sklearn_float32": float(sk32.lower_bound_),
                      "sklearn_float64": float(sk64.lower_bound_)},
      "max_abs_mean_diff_vs_sklearn_float64": float(np.abs(np.asarray(gmm.means) - sk64.means_).max()),
      "repeats": repeats,
      "versions": {"jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
                   "sklearn": sklearn.__version__, "numpy": np.__version__},
      "machine": {"cpu_count": os.cpu_count(), "jax_device": jax.devices()[0].device_kind,
                  "jax_platform": jax.devices()[0].platform},
  }
  command = "python -m experiments.bench.em" + (f" --repeats={repeats}" if repeats != 5 else "")
  table = "\n".join([
      "| implementation | dtype | median time for 20 iterations (s) | sklearn time / this time |",
      "|---|---|---|---|",
      f"| research.em.fit_gmm (jit, {result['machine']['jax_platform']}) | float32 | {jax_s:.3f} | "
      f"{sk32_s / jax_s:.1f}x (vs sklearn float32), {sk64_s / jax_s:.1f}x (vs sklearn float64) |",
      f"| sklearn GaussianMixture | float32 | {sk32_s:.3f} | 1.0x |",
      f"| sklearn GaussianMixture | float64 | {sk64_s:.3f} | - |",
  ]).replace("20 iterations", f"{iters} iterations")
  md = "\n".join([
      "# EM for Gaussian mixtures: research.em vs scikit-learn",
      "",
      f"Command: `{command}`",
      "",
      f"{iters} full-covariance EM iterations (tol=0, same means/weights/precisions init) on "
      f"N={n_samples}, D={n_features}, K={n_components}; median of {repeats} runs after a compile run.",
      f"Machine: {result['machine']['cpu_count']} CPU cores, JAX device {result['machine']['jax_device']}; "
      f"jax {jax.__version__}, scikit-learn {sklearn.__version__}, numpy {np.__version__}.",
      "",
      table,
      "",
      f"Both ran {result['n_iter']['jax']} (JAX) and {result['n_iter']['sklearn_float64']} (sklearn) iterations; "
      f"lower bounds {result['lower_bound']['jax']:.6f} (JAX float32) vs "
      f"{result['lower_bound']['sklearn_float64']:.6f} (sklearn float64); "
      f"largest mean difference {result['max_abs_mean_diff_vs_sklearn_float64']:.2e}. "
      f"JAX compile + first run: {compile_s:.2f} s (not in the timings).",
      "",
  ])
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "em.json"), "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
  with open(os.path.join(out_dir, "em.md"), "w") as f:
    f.write(md)
  print(table)
  return result


def main(argv):
  del argv
  run_bench(_OUT.value, _REPEATS.value, _N.value, _D.value, _K.value, _ITERS.value, _SEED.value)


if __name__ == "__main__":
  app.run(main)
