"""EM for Gaussian mixtures (Dempster, Laird & Rubin 1977) as one jit-compiled program.

`fit_gmm` follows scikit-learn's `GaussianMixture` wherever the concept is the same:
the four covariance types, `tol`, `reg_covar`, `max_iter`, `n_init`, the shapes of
`means_init` / `weights_init` / `precisions_init`, `lower_bound` as the mean per-sample
log-likelihood of the last E-step, and the stopping rule `abs(change) < tol` checked after
every E-step + M-step, with the same counting of `n_iter`.

One difference: without inits, sklearn runs k-means; we seed with greedy k-means++
(`kmeans_plusplus`, as sklearn's k-means seeds itself), assign every sample to its nearest
seed, and take the initial parameters from one M-step on those hard responsibilities.
User-given inits override the corresponding seeded parameters, as in sklearn.

The EM loop is a `lax.while_loop` over a typed carry; `n_init` restarts are one `vmap`
over keys, and the restart with the best lower bound is kept. Everything is float32-safe:
log-sum-exp for the normaliser, Cholesky factors of precisions (sklearn's convention,
precision = U U^T with U upper triangular), log-determinants from their diagonals,
triangular solves for inverses, covariances summed about each component's own mean, and
data shifted to its mean inside the loop.

    gmm = fit_gmm(x, 3, key=jax.random.key(0), covariance_type="full", n_init=4)
    labels = predict(gmm, x)
"""

import math
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import logsumexp

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
  """A float32-exact matmul on every backend.

  GPUs and TPUs would otherwise multiply float32 in TF32 / bfloat16 passes, too coarse for
  EM's sums; CPUs are exact already, and there HIGHEST only selects a slower kernel.
  """
  precision = None if jax.default_backend() == "cpu" else lax.Precision.HIGHEST
  return jnp.matmul(a, b, precision=precision)


@flax.struct.dataclass
class GMM:
  """A fitted Gaussian mixture (the best of the `n_init` restarts).

  Shapes of `covariances` and `precisions_cholesky` follow sklearn:
  full (K, D, D), tied (D, D), diag (K, D), spherical (K,).
  """
  weights: jax.Array  # (K,)
  means: jax.Array  # (K, D)
  covariances: jax.Array  # per covariance_type
  precisions_cholesky: jax.Array  # upper triangular U with precision = U U^T; same shape
  lower_bound: jax.Array  # () mean log-likelihood per sample at the last E-step
  n_iter: jax.Array  # () int32: E+M iterations run
  converged: jax.Array  # () bool: abs(change of lower bound) < tol was reached
  lower_bounds: jax.Array  # (max_iter,) lower bound per iteration, NaN after the stop
  covariance_type: str = flax.struct.field(pytree_node=False, default="full")


class MixtureParams(NamedTuple):
  """The parameters EM updates (shapes as in `GMM`)."""
  weights: jax.Array
  means: jax.Array
  covariances: jax.Array
  precisions_cholesky: jax.Array


class Inits(NamedTuple):
  """User-given initial parameters (None: seeded by k-means++), validated and cast to x's dtype."""
  weights: jax.Array | None  # (K,)
  means: jax.Array | None  # (K, D)
  precisions: jax.Array | None  # per covariance_type, as `GMM.covariances`


class EMState(NamedTuple):
  """The carry of the EM while_loop."""
  params: MixtureParams
  lower_bound: jax.Array  # () -inf before the first E-step, as in sklearn
  n_iter: jax.Array  # () int32
  converged: jax.Array  # () bool
  lower_bounds: jax.Array  # (max_iter,) NaN-padded trace


# ----------------------------------------------------------------------------- densities
#
# Internally responsibilities are laid out (K, N): every per-component quantity is a
# `lax.map` over components of (N, D) matmuls. That keeps the working set at O(N D) instead
# of O(N K D) and lowers to plain matrix products, which on CPU is several times faster
# than one broadcast (N, K, D) contraction.


def _log_det_cholesky(prec_chol: jax.Array, covariance_type: str, n_features: int) -> jax.Array:
  """log det(U) per component, which is -0.5 log det(covariance)."""
  if covariance_type == "full":
    return jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=-2, axis2=-1)), axis=-1)  # (K,)
  if covariance_type == "tied":
    return jnp.sum(jnp.log(jnp.diagonal(prec_chol)))  # ()
  if covariance_type == "diag":
    return jnp.sum(jnp.log(prec_chol), axis=-1)  # (K,)
  return n_features * jnp.log(prec_chol)  # (K,)


def _mahalanobis(x: jax.Array, means: jax.Array, prec_chol: jax.Array, covariance_type: str) -> jax.Array:
  """Squared Mahalanobis distances |(x_n - mu_k) U_k|^2, shape (K, N)."""
  if covariance_type == "tied":
    return lax.map(lambda mean: jnp.sum(jnp.square(_dot(x - mean, prec_chol)), axis=1), means)

  def one(args):
    mean, u = args
    diff = x - mean  # (N, D)
    y = _dot(diff, u) if covariance_type == "full" else diff * u  # (N, D); spherical u is a scalar
    return jnp.sum(jnp.square(y), axis=1)  # (N,)

  return lax.map(one, (means, prec_chol))


def _log_gaussian_prob(x: jax.Array, means: jax.Array, prec_chol: jax.Array, covariance_type: str) -> jax.Array:
  """log N(x_n | mu_k, Sigma_k) for every component and sample, shape (K, N)."""
  n_features = x.shape[-1]
  log_det = _log_det_cholesky(prec_chol, covariance_type, n_features)  # (K,) or ()
  maha = _mahalanobis(x, means, prec_chol, covariance_type)  # (K, N)
  return -0.5 * (n_features * math.log(2 * math.pi) + maha) + jnp.reshape(log_det, (-1, 1))


def _log_prob_resp(x: jax.Array, params: MixtureParams, covariance_type: str) -> tuple[jax.Array, jax.Array]:
  """Returns (log p(x_n) of shape (N,), log responsibilities of shape (K, N))."""
  weighted = _log_gaussian_prob(x, params.means, params.precisions_cholesky, covariance_type) + jnp.log(
      params.weights)[:, None]  # (K, N)
  log_norm = logsumexp(weighted, axis=0)  # (N,)
  return log_norm, weighted - log_norm[None, :]


def _shifted(gmm: GMM, x: jax.Array) -> tuple[jax.Array, MixtureParams]:
  """Moves x and the means to the mixture's mean: densities are unchanged, float32 rounding is smaller."""
  x = jnp.asarray(x, gmm.means.dtype)
  center = _dot(gmm.weights, gmm.means)  # (D,)
  params = MixtureParams(gmm.weights, gmm.means - center, gmm.covariances, gmm.precisions_cholesky)
  return x - center, params


def _check_samples(gmm: GMM, x) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim != 2 or x.shape[1] != gmm.means.shape[1]:
    raise ValueError(f"x must have shape (n_samples, {gmm.means.shape[1]}), got {x.shape}")
  return x


@jax.jit
def score_samples(gmm: GMM, x: jax.Array) -> jax.Array:
  """Log-likelihood of each sample under the mixture (sklearn's `score_samples`).

  Args:
    gmm: a fitted mixture.
    x: (N, D) samples.

  Returns:
    (N,) log p(x_n).
  """
  x, params = _shifted(gmm, _check_samples(gmm, x))
  return _log_prob_resp(x, params, gmm.covariance_type)[0]


@jax.jit
def predict_proba(gmm: GMM, x: jax.Array) -> jax.Array:
  """Responsibilities p(component k | x_n) (sklearn's `predict_proba`).

  Args:
    gmm: a fitted mixture.
    x: (N, D) samples.

  Returns:
    (N, K) responsibilities; rows sum to one.
  """
  x, params = _shifted(gmm, _check_samples(gmm, x))
  return jnp.exp(_log_prob_resp(x, params, gmm.covariance_type)[1]).T


@jax.jit
def predict(gmm: GMM, x: jax.Array) -> jax.Array:
  """Most probable component per sample, shape (N,)."""
  return jnp.argmax(predict_proba(gmm, x), axis=1)


# ----------------------------------------------------------------------------- M-step


def _precision_cholesky(covariances: jax.Array, covariance_type: str) -> jax.Array:
  """U = L^{-T} with covariance = L L^T, so that precision = U U^T (sklearn's convention)."""
  if covariance_type in ("full", "tied"):
    chol = jnp.linalg.cholesky(covariances)  # (..., D, D) lower
    eye = jnp.broadcast_to(jnp.eye(chol.shape[-1], dtype=chol.dtype), chol.shape)
    return jnp.swapaxes(solve_triangular(chol, eye, lower=True), -1, -2)
  return lax.rsqrt(covariances)


def _precision_cholesky_from_precisions(precisions: jax.Array, covariance_type: str) -> jax.Array:
  """Upper U with precision = U U^T, by Cholesky of the row- and column-reversed precision."""
  if covariance_type in ("full", "tied"):
    flip = lambda a: jnp.flip(a, axis=(-2, -1))
    return flip(jnp.linalg.cholesky(flip(precisions)))
  return jnp.sqrt(precisions)


def _covariances_from_precision_cholesky(prec_chol: jax.Array, covariance_type: str) -> jax.Array:
  """Sigma = (U U^T)^{-1} = V^T V with V = U^{-1}."""
  if covariance_type in ("full", "tied"):
    eye = jnp.broadcast_to(jnp.eye(prec_chol.shape[-1], dtype=prec_chol.dtype), prec_chol.shape)
    inv = solve_triangular(prec_chol, eye, lower=False)  # (..., D, D)
    return _dot(jnp.swapaxes(inv, -1, -2), inv)
  return 1.0 / jnp.square(prec_chol)


def _m_step(x: jax.Array, resp: jax.Array, reg_covar: jax.Array,
            covariance_type: str) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Maximum-likelihood (nk, means, covariances) for responsibilities `resp` of shape (K, N).

  Scatter matrices are summed over samples centred on their component's new mean, not as
  E[x x^T] - mu mu^T (which sklearn uses for tied/diag/spherical): the same value without
  float32 cancellation for tight components far from the data mean.
  """
  n_features = x.shape[1]
  nk = jnp.sum(resp, axis=1) + 10 * jnp.finfo(resp.dtype).eps  # (K,) never exactly zero
  means = _dot(resp, x) / nk[:, None]  # (K, D)

  def scatter(args):
    r, mean = args  # (N,), (D,)
    diff = x - mean  # (N, D)
    if covariance_type in ("full", "tied"):
      return _dot((diff * r[:, None]).T, diff)  # (D, D)
    return _dot(r, jnp.square(diff))  # (D,)

  scatters = lax.map(scatter, (resp, means))  # (K, D, D) or (K, D)
  if covariance_type == "full":
    cov = scatters / nk[:, None, None] + reg_covar * jnp.eye(n_features, dtype=x.dtype)  # (K, D, D)
  elif covariance_type == "tied":
    cov = jnp.sum(scatters, axis=0) / jnp.sum(nk) + reg_covar * jnp.eye(n_features, dtype=x.dtype)  # (D, D)
  else:
    cov = scatters / nk[:, None] + reg_covar  # (K, D)
    if covariance_type == "spherical":
      cov = jnp.mean(cov, axis=1)  # (K,)
  return nk, means, cov


# ----------------------------------------------------------------------------- seeding


def _sq_dist_to(x: jax.Array, centers: jax.Array) -> jax.Array:
  """Squared distances from every sample to every center: (N, D), (C, D) -> (C, N)."""
  return lax.map(lambda center: jnp.sum(jnp.square(x - center), axis=1), centers)


def kmeans_plusplus(x: jax.Array, n_clusters: int, key: jax.Array,
                    n_local_trials: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; sklearn's variant).

  The first center is a uniform sample; each next one is the best (lowest total squared
  distance) of `n_local_trials` candidates drawn with probability proportional to the squared
  distance to the nearest chosen center. Chosen points have probability zero afterwards, so the
  centers are distinct data points whenever `x` has at least `n_clusters` distinct rows.

  Args:
    x: (N, D) data.
    n_clusters: number of centers K (static).
    key: PRNG key.
    n_local_trials: candidates per step; default 2 + floor(log K) as in sklearn; 1 is plain k-means++.

  Returns:
    (centers of shape (K, D), their row indices in x of shape (K,)).
  """
  n_samples = x.shape[0]
  if n_local_trials is None:
    n_local_trials = 2 + int(math.log(n_clusters))
  # All the randomness in one draw (row 0 picks the first center): a single PRNG kernel to compile.
  uniforms = jax.random.uniform(key, (n_clusters, n_local_trials), dtype=x.dtype)  # in [0, 1)
  first = jnp.minimum((uniforms[0, 0] * n_samples).astype(jnp.int32), n_samples - 1)
  indices = jnp.zeros((n_clusters,), jnp.int32).at[0].set(first)
  closest = jnp.sum(jnp.square(x - x[first]), axis=1)  # (N,)

  def add_center(i, carry):
    indices, closest = carry
    # Inverse-CDF sampling as sklearn does; side="right" never lands on a zero-distance point.
    cdf = jnp.cumsum(closest)  # (N,)
    candidates = jnp.searchsorted(cdf, uniforms[i] * cdf[-1], side="right", method="compare_all")  # (L,)
    candidates = jnp.minimum(candidates, n_samples - 1).astype(jnp.int32)
    to_candidates = jnp.sum(jnp.square(x[None] - x[candidates][:, None]), axis=-1)  # (L, N)
    closest_if = jnp.minimum(closest[None], to_candidates)  # (L, N)
    best = jnp.argmin(jnp.sum(closest_if, axis=1))
    return indices.at[i].set(candidates[best]), closest_if[best]

  indices, _ = lax.fori_loop(1, n_clusters, add_center, (indices, closest))
  return x[indices], indices


# ----------------------------------------------------------------------------- EM loop


def _initial_params(x: jax.Array, key: jax.Array, reg_covar: jax.Array, inits: Inits, n_components: int,
                    covariance_type: str) -> MixtureParams:
  """Initial parameters: user inits where given, else from k-means++ hard assignments."""
  weights, means, precisions = inits
  if weights is None or means is None or precisions is None:
    centers, _ = kmeans_plusplus(x, n_components, key)
    nearest = jnp.argmin(_sq_dist_to(x, centers), axis=0)  # (N,)
    resp = jax.nn.one_hot(nearest, n_components, dtype=x.dtype, axis=0)  # (K, N)
    nk, seeded_means, covariances = _m_step(x, resp, reg_covar, covariance_type)
    # sklearn divides by n_samples here (not by sum(nk)), so weights sum to 1 + O(K eps).
    weights = nk / x.shape[0] if weights is None else weights
    means = seeded_means if means is None else means
  if precisions is None:
    prec_chol = _precision_cholesky(covariances, covariance_type)
  else:
    prec_chol = _precision_cholesky_from_precisions(precisions, covariance_type)
    covariances = _covariances_from_precision_cholesky(prec_chol, covariance_type)
  return MixtureParams(weights, means, covariances, prec_chol)


def _em(x: jax.Array, params: MixtureParams, tol: jax.Array, reg_covar: jax.Array, max_iter: int,
        covariance_type: str) -> EMState:
  """Runs E-step + M-step until abs(change of the lower bound) < tol or max_iter iterations."""

  def not_done(state: EMState) -> jax.Array:
    # A NaN lower bound means a covariance lost positive-definiteness: stop, fit_gmm reports it.
    return (state.n_iter < max_iter) & ~state.converged & ~jnp.isnan(state.lower_bound)

  def step(state: EMState) -> EMState:
    log_norm, log_resp = _log_prob_resp(x, state.params, covariance_type)
    lower_bound = jnp.mean(log_norm)  # log-likelihood of the parameters before this M-step
    nk, means, covariances = _m_step(x, jnp.exp(log_resp), reg_covar, covariance_type)
    params = MixtureParams(nk / jnp.sum(nk), means, covariances, _precision_cholesky(covariances, covariance_type))
    change = lower_bound - state.lower_bound
    return EMState(params=params, lower_bound=lower_bound, n_iter=state.n_iter + 1,
                   converged=jnp.abs(change) < tol,
                   lower_bounds=state.lower_bounds.at[state.n_iter].set(lower_bound))

  init = EMState(params=params, lower_bound=jnp.array(-jnp.inf, x.dtype), n_iter=jnp.array(0, jnp.int32),
                 converged=jnp.array(False), lower_bounds=jnp.full((max_iter,), jnp.nan, x.dtype))
  return lax.while_loop(not_done, step, init)


def _fit_one(x: jax.Array, key: jax.Array, tol: jax.Array, reg_covar: jax.Array, inits: Inits,
             n_components: int, covariance_type: str, max_iter: int) -> EMState:
  params = _initial_params(x, key, reg_covar, inits, n_components, covariance_type)
  return _em(x, params, tol, reg_covar, max_iter, covariance_type)


@jax.jit(static_argnames=("n_components", "covariance_type", "max_iter", "n_init"))
def _fit(x: jax.Array, key: jax.Array, tol: jax.Array, reg_covar: jax.Array, inits: Inits, *,
         n_components: int, covariance_type: str, max_iter: int, n_init: int) -> GMM:
  """The compiled core of `fit_gmm` (arguments already validated)."""
  # Shifting the data to its mean leaves EM unchanged and keeps float32 products small.
  center = jnp.mean(x, axis=0)  # (D,)
  x = x - center
  if inits.means is not None:
    inits = inits._replace(means=inits.means - center)
  fit_one = lambda k: _fit_one(x, k, tol, reg_covar, inits, n_components, covariance_type, max_iter)
  if n_init == 1:
    state = fit_one(key)
  else:
    states = jax.vmap(fit_one)(jax.random.split(key, n_init))
    # Ties keep the first restart, and a NaN bound never wins, as in sklearn's loop.
    best = jnp.argmax(jnp.where(jnp.isnan(states.lower_bound), -jnp.inf, states.lower_bound))
    state = jax.tree.map(lambda a: a[best], states)
  p = state.params
  return GMM(weights=p.weights, means=p.means + center, covariances=p.covariances,
             precisions_cholesky=p.precisions_cholesky, lower_bound=state.lower_bound, n_iter=state.n_iter,
             converged=state.converged, lower_bounds=state.lower_bounds, covariance_type=covariance_type)


# ----------------------------------------------------------------------------- validation


def _concrete(value) -> np.ndarray | None:
  """The value as a NumPy array, or None under a jax transformation (value checks are then skipped)."""
  try:
    return np.asarray(value)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def _check_shape(name: str, value, shape: tuple[int, ...]) -> None:
  if tuple(jnp.shape(value)) != shape:
    raise ValueError(f"{name} must have shape {shape}, got {tuple(jnp.shape(value))}")


def _check_number(name: str, value, low: float, allow_equal: bool = True) -> None:
  v = _concrete(value)
  if v is None:
    return
  if v.shape != () or not np.isfinite(v) or v < low or (v == low and not allow_equal):
    bound = f">= {low}" if allow_equal else f"> {low}"
    raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def _check_int(name: str, value, low: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_key(key) -> None:
  if key is None:
    raise ValueError("key must be a PRNG key (jax.random.key(seed)), got None")
  dtype, shape = getattr(key, "dtype", None), tuple(jnp.shape(key))
  typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
  if not (typed and shape == ()) and not (dtype == jnp.uint32 and shape == (2,)):
    raise ValueError(f"key must be a single PRNG key (jax.random.key(seed)), got {dtype} of shape {shape}")


def _check_inits(weights, means, precisions, n_components: int, n_features: int, covariance_type: str,
                 dtype) -> Inits:
  """Checks shapes (always) and values (when concrete) of the user inits, as sklearn does."""
  if weights is not None:
    _check_shape("weights_init", weights, (n_components,))
    w = _concrete(weights)  # checked before the cast, in the precision the caller gave
    if w is not None:
      w = w.astype(np.float64)
      if not np.all(np.isfinite(w)) or np.any(w < 0) or np.any(w > 1):
        raise ValueError(f"weights_init must lie in [0, 1], got min {w.min():.5g}, max {w.max():.5g}")
      # sklearn's 1e-8 for float64; float32 weights carry about K ulps of rounding in their sum.
      atol = 1e-8 if np.asarray(weights).dtype == np.float64 else 1e-6 * max(1, n_components / 8)
      if abs(1.0 - np.sum(w)) > atol:
        raise ValueError(f"weights_init must sum to 1, got {np.sum(w):.10g}")
    weights = jnp.asarray(weights, dtype)
  if means is not None:
    _check_shape("means_init", means, (n_components, n_features))
    m = _concrete(means)
    if m is not None and not np.all(np.isfinite(m)):
      raise ValueError("means_init must be finite")
    means = jnp.asarray(means, dtype)
  if precisions is not None:
    shape = {"full": (n_components, n_features, n_features), "tied": (n_features, n_features),
             "diag": (n_components, n_features), "spherical": (n_components,)}[covariance_type]
    _check_shape(f"precisions_init for covariance_type={covariance_type!r}", precisions, shape)
    p = _concrete(precisions)
    if p is not None:
      p = p.astype(np.float64)
      if not np.all(np.isfinite(p)):
        raise ValueError("precisions_init must be finite")
      if covariance_type in ("full", "tied"):
        p = p.reshape((-1, n_features, n_features))
        symmetric = np.allclose(p, np.swapaxes(p, -1, -2), rtol=1e-5, atol=1e-8 * np.abs(p).max())
        if not symmetric or np.any(np.linalg.eigvalsh(p) <= 0):
          raise ValueError(f"precisions_init ({covariance_type}) must be symmetric positive-definite")
      elif not np.all(p > 0):
        raise ValueError(f"precisions_init ({covariance_type}) must be positive")
    precisions = jnp.asarray(precisions, dtype)
  return Inits(weights=weights, means=means, precisions=precisions)


# ----------------------------------------------------------------------------- public entry


def fit_gmm(x: jax.Array, n_components: int, *, key: jax.Array, covariance_type: str = "full", tol: float = 1e-3,
            reg_covar: float = 1e-6, max_iter: int = 100, means_init=None, weights_init=None, precisions_init=None,
            n_init: int = 1) -> GMM:
  """Fits a Gaussian mixture by EM (arguments as in sklearn's `GaussianMixture`).

  Validates the arguments, then calls one compiled program (a `lax.while_loop` per restart,
  the `n_init` restarts vmapped over `jax.random.split(key, n_init)`; with n_init=1 the
  restart uses `key` itself). Works under `jax.jit` / `jax.vmap` over `key` (and over `tol`
  or `reg_covar`); value checks on traced arguments are then skipped.

  Args:
    x: (N, D) data; integer and 16-bit float data are cast to float32.
    n_components: number of components K, 1 <= K <= N.
    key: PRNG key for the k-means++ seeding (unused when all three inits are given).
    covariance_type: 'full', 'diag', 'spherical' or 'tied'.
    tol: stop when abs(change of the lower bound) < tol after an iteration; 0 runs max_iter.
    reg_covar: added to the diagonal of every covariance.
    max_iter: maximum number of EM iterations (0 returns the initial parameters).
    means_init: (K, D) initial means, or None.
    weights_init: (K,) initial weights summing to 1, or None.
    precisions_init: initial precisions (inverse covariances): full (K, D, D), tied (D, D),
      diag (K, D), spherical (K,); or None.
    n_init: number of restarts; the one with the highest lower bound is returned.

  Returns:
    The fitted `GMM`.

  Raises:
    ValueError: on a bad argument, or when the best restart ends with a non-finite lower
      bound (a covariance lost positive-definiteness: raise reg_covar or rescale x).
  """
  if covariance_type not in COVARIANCE_TYPES:
    raise ValueError(f"covariance_type must be one of {', '.join(COVARIANCE_TYPES)}; got {covariance_type!r}")
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating) or jnp.finfo(x.dtype).bits < 32:
    x = x.astype(jnp.float32)  # EM's sums need at least float32
  if x.ndim != 2:
    raise ValueError(f"x must be 2-D (n_samples, n_features), got shape {x.shape}")
  n_samples, n_features = x.shape
  if n_samples < 2 or n_features < 1:
    raise ValueError(f"x needs at least 2 samples and 1 feature, got shape {x.shape}")
  _check_int("n_components", n_components, 1)
  if n_components > n_samples:
    raise ValueError(f"n_components ({n_components}) must be <= n_samples ({n_samples})")
  _check_number("tol", tol, 0.0)
  _check_number("reg_covar", reg_covar, 0.0)
  _check_int("max_iter", max_iter, 0)
  _check_int("n_init", n_init, 1)
  _check_key(key)
  x_values = _concrete(x)
  if x_values is not None and not np.all(np.isfinite(x_values)):
    raise ValueError("x contains NaN or infinity")
  inits = _check_inits(weights_init, means_init, precisions_init, n_components, n_features, covariance_type, x.dtype)
  gmm = _fit(x, key, jnp.asarray(tol, x.dtype), jnp.asarray(reg_covar, x.dtype), inits, n_components=n_components,
             covariance_type=covariance_type, max_iter=max_iter, n_init=n_init)
  lower_bound = _concrete(gmm.lower_bound)
  if lower_bound is not None and max_iter > 0 and not np.isfinite(lower_bound):
    raise ValueError("EM produced a non-finite lower bound: some component has an ill-defined covariance "
                     "(collapsed or singleton samples); decrease n_components, increase reg_covar or rescale x")
  return gmm
