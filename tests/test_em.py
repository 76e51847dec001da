"""EM for Gaussian mixtures: parity with scikit-learn, monotone likelihood, restarts, checks, the experiment."""

import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from experiments import em_gmm
from research import em
from research.train import ConfigError

# One worker runs this file: its module fixture is costly (see conftest.py).
pytestmark = pytest.mark.xdist_group("em_fits")

K, D, N = 3, 2, 600


def _data(seed: int = 0) -> np.ndarray:
  """Three overlapping anisotropic 2D clusters, float32."""
  rng = np.random.default_rng(seed)
  centers = np.array([[0.0, 0.0], [4.0, 1.0], [-2.0, 5.0]])
  mixing = rng.normal(size=(K, D, D)) * 0.7
  labels = rng.integers(0, K, N)
  x = centers[labels] + np.einsum("nd,nde->ne", rng.normal(size=(N, D)), mixing[labels])
  return x.astype(np.float32)


def _inits(x: np.ndarray, covariance_type: str) -> dict[str, np.ndarray]:
  """A deliberately poor shared start (K random samples, isotropic precisions) so EM takes several steps."""
  rng = np.random.default_rng(1)
  inv_var = 1.0 / float(np.var(x, axis=0).mean())
  precisions = {"full": np.tile(np.eye(D) * inv_var, (K, 1, 1)), "tied": np.eye(D) * inv_var,
                "diag": np.full((K, D), inv_var), "spherical": np.full(K, inv_var)}[covariance_type]
  return {"means_init": x[rng.choice(N, K, replace=False)].astype(np.float64), "weights_init": np.full(K, 1.0 / K),
          "precisions_init": precisions}


def _sklearn(x, covariance_type, **kwargs):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    return GaussianMixture(K, covariance_type=covariance_type, **kwargs).fit(np.asarray(x, np.float64))


@pytest.fixture(scope="session")  # session: kept when xdist interleaves other modules
def fits():
  """(x, ours, sklearn's) per covariance type, from the same initialisation; shared by several tests."""
  x = _data()
  out = {}
  for covariance_type in em.COVARIANCE_TYPES:
    inits = _inits(x, covariance_type)
    ours = em.fit_gmm(x, K, key=jax.random.key(0), covariance_type=covariance_type, **inits)
    out[covariance_type] = (x, ours, _sklearn(x, covariance_type, **inits))
  return out


# ----------------------------------------------------------------------------- parity with scikit-learn


@pytest.mark.parametrize("covariance_type", em.COVARIANCE_TYPES)
def test_parity_with_sklearn_from_the_same_init(fits, covariance_type):
  _, ours, ref = fits[covariance_type]
  assert int(ours.n_iter) == ref.n_iter_ > 3
  assert bool(ours.converged) == ref.converged_
  np.testing.assert_allclose(float(ours.lower_bound), ref.lower_bound_, rtol=0, atol=2e-5)
  np.testing.assert_allclose(np.asarray(ours.lower_bounds)[:ref.n_iter_], ref.lower_bounds_, rtol=0, atol=2e-5)
  np.testing.assert_allclose(ours.weights, ref.weights_, atol=2e-5)
  np.testing.assert_allclose(ours.means, ref.means_, atol=1e-4)
  np.testing.assert_allclose(ours.covariances, ref.covariances_, atol=1e-4)
  np.testing.assert_allclose(ours.precisions_cholesky, ref.precisions_cholesky_, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("covariance_type", em.COVARIANCE_TYPES)
def test_log_likelihood_never_decreases(fits, covariance_type):
  # EM's monotonicity: each E+M step cannot lower the likelihood (up to float32 rounding).
  _, ours, _ = fits[covariance_type]
  n_iter = int(ours.n_iter)
  trace = np.asarray(ours.lower_bounds)
  assert np.all(np.isfinite(trace[:n_iter])) and np.all(np.isnan(trace[n_iter:]))
  assert trace[n_iter - 1] == float(ours.lower_bound)
  assert np.all(np.diff(trace[:n_iter]) >= -1e-6)


def test_score_and_responsibilities_match_sklearn(fits):
  x, ours, ref = fits["full"]
  np.testing.assert_allclose(em.score_samples(ours, x), ref.score_samples(x.astype(np.float64)), atol=1e-4)
  proba = np.asarray(em.predict_proba(ours, x))
  np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(proba, ref.predict_proba(x.astype(np.float64)), atol=1e-4)
  np.testing.assert_array_equal(em.predict(ours, x), ref.predict(x.astype(np.float64)))


def test_float32_tight_clusters_far_from_the_origin():
  # Spread 1e-2 at an offset of 100: E[x x^T] - mu mu^T would lose everything in float32.
  x = 1e-2 * _data() + 100.0
  inits = _inits(x, "full")
  ours = em.fit_gmm(x, K, key=jax.random.key(0), covariance_type="full", reg_covar=1e-9, **inits)
  ref = _sklearn(x, "full", reg_covar=1e-9, **inits)
  assert int(ours.n_iter) == ref.n_iter_
  np.testing.assert_allclose(float(ours.lower_bound), ref.lower_bound_, atol=1e-4)
  np.testing.assert_allclose(ours.means, ref.means_, atol=1e-5)
  np.testing.assert_allclose(ours.covariances, ref.covariances_, rtol=1e-3, atol=1e-8)


# ----------------------------------------------------------------------------- seeding, restarts, transforms


def test_kmeans_plusplus_picks_distinct_rows_one_per_cluster():
  rng = np.random.default_rng(0)
  centers = np.array([[-10.0, 0.0], [0.0, 10.0], [10.0, 0.0], [0.0, -10.0]])
  x = (centers[np.arange(200) % 4] + 0.1 * rng.normal(size=(200, 2))).astype(np.float32)
  seeds, indices = em.kmeans_plusplus(jnp.asarray(x), 4, jax.random.key(3))
  np.testing.assert_array_equal(seeds, x[np.asarray(indices)])
  assert sorted(np.asarray(indices) % 4) == [0, 1, 2, 3]


def test_n_init_keeps_the_best_restart_and_jit_vmap_over_keys():
  # Uniform data has many local optima. Shapes and settings are the smoke experiment's, so
  # the compiled n_init program is shared with test_experiment_smoke_run.
  config = em_gmm.get_config("smoke")
  x = np.random.default_rng(0).uniform(size=(config.n_samples, 2)).astype(np.float32)
  key = jax.random.key(1)
  keys = jax.random.split(key, config.n_init)
  fit = lambda k, n_init=1: em.fit_gmm(x, config.n_components, key=k, max_iter=config.max_iter, n_init=n_init)
  restarts = jax.jit(jax.vmap(fit))(keys)  # the restarts n_init runs, one by one
  bounds = np.asarray(restarts.lower_bound)
  assert np.all(np.isfinite(bounds)) and np.ptp(bounds) > 1e-3 and np.argmax(bounds) > 0
  best = fit(key, n_init=config.n_init)
  i = int(np.argmax(bounds))
  np.testing.assert_allclose(float(best.lower_bound), bounds.max(), rtol=0, atol=1e-6)
  np.testing.assert_allclose(best.means, restarts.means[i], atol=1e-5)
  assert int(best.n_iter) == int(restarts.n_iter[i])


# ----------------------------------------------------------------------------- argument checks


_X = np.zeros((10, 2), np.float32)


@pytest.mark.parametrize("kwargs, message", [
    ({"covariance_type": "banana"}, "covariance_type must be one of"),
    ({"x": np.zeros(10)}, "x must be 2-D"),
    ({"x": np.full((10, 2), np.nan)}, "NaN or infinity"),
    ({"n_components": 0}, "n_components must be an int >= 1"),
    ({"n_components": 2.0}, "n_components must be an int"),
    ({"n_components": 11}, r"n_components \(11\) must be <= n_samples \(10\)"),
    ({"tol": -1.0}, "tol must be a finite number >= 0"),
    ({"reg_covar": float("nan")}, "reg_covar must be a finite number"),
    ({"max_iter": -1}, "max_iter must be an int >= 0"),
    ({"n_init": 0}, "n_init must be an int >= 1"),
    ({"key": None}, "key must be a PRNG key"),
    ({"key": jax.random.split(jax.random.key(0), 2)}, "key must be a single PRNG key"),
    ({"weights_init": np.full(2, 0.6)}, "weights_init must sum to 1"),
    ({"weights_init": np.array([1.5, -0.5])}, r"weights_init must lie in \[0, 1\]"),
    ({"weights_init": np.full(3, 1 / 3)}, r"weights_init must have shape \(2,\)"),
    ({"means_init": np.zeros((2, 3))}, r"means_init must have shape \(2, 2\)"),
    ({"precisions_init": np.ones((2, 2))}, r"precisions_init for covariance_type='full' must have shape"),
    ({"precisions_init": np.tile(np.diag([1.0, -1.0]), (2, 1, 1))}, "symmetric positive-definite"),
    ({"precisions_init": np.tile([[1.0, 0.5], [0.0, 1.0]], (2, 1, 1))}, "symmetric positive-definite"),
    ({"precisions_init": np.array([1.0, 0.0]), "covariance_type": "spherical"}, "must be positive"),
])
def test_bad_arguments_raise_value_error(kwargs, message):
  args = {"x": _X, "n_components": 2, "key": jax.random.key(0), **kwargs}
  x, n_components = args.pop("x"), args.pop("n_components")
  with pytest.raises(ValueError, match=message):
    em.fit_gmm(x, n_components, **args)


def test_collapsed_component_raises_value_error():
  # Two distinct points and no regularisation: a component's covariance is exactly singular.
  x = np.repeat(np.array([[0.0, 0.0], [1.0, 1.0]], np.float32), N // 2, axis=0)
  inits = _inits(_data(), "full")
  with pytest.raises(ValueError, match="non-finite lower bound"):
    em.fit_gmm(x, K, key=jax.random.key(0), reg_covar=0.0, **inits)


# ----------------------------------------------------------------------------- the experiment


def test_experiment_smoke_run(tmp_path):
  workdir = str(tmp_path / "em")
  results = em_gmm.run(em_gmm.get_config("smoke"), workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f) == results
  assert os.path.getsize(os.path.join(workdir, "gmm.png")) > 10_000
  assert 1 <= results["n_iter"] <= 20 and isinstance(results["converged"], bool) and results["wall_time_s"] > 0
  assert np.all(np.diff(results["lower_bounds"]) >= -1e-6)
  # Maximum likelihood on the sample beats the generating mixture, give or take EM's tol.
  assert results["lower_bound"] > results["generating_mixture_log_likelihood"] - 1e-2


@pytest.mark.parametrize("field, value, message", [
    ("data", "moons", "unknown data 'moons'"),
    ("covariance_type", "banana", "unknown covariance_type"),
    ("n_components", 400, r"n_components \(400\) must be <= n_samples \(300\)"),
    ("n_init", 0, "n_init must be > 0"),
])
def test_experiment_bad_config_fails_before_writing(tmp_path, field, value, message):
  config = em_gmm.get_config("smoke")
  config[field] = value
  with pytest.raises(ConfigError, match=message):
    em_gmm.run(config, str(tmp_path / "never"))
  assert not os.path.exists(tmp_path / "never")
