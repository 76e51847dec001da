"""EM for a 2D Gaussian mixture: the fitted ellipses over the data, and the likelihood curve.

Samples a known mixture (an anisotropic 4-component mixture, or the ring8 / grid25 toy
data), fits it with `research.em.fit_gmm` (the `n_init` restarts as one vmapped program),
and writes `gmm.png` (data, fitted 2-sigma ellipses, true means; log-likelihood per
iteration) and `results.json` (lower bound, iterations, convergence, the data-generating
mixture's own mean log-likelihood for reference, wall time).

Run:
  python -m experiments.em_gmm --workdir=/tmp/em_gmm
  python -m experiments.em_gmm --workdir=/tmp/em_gmm --config=experiments/em_gmm.py:smoke
  python -m experiments.em_gmm --workdir=/tmp/em_grid --config.data=grid25 --config.n_components=25
  python -m experiments.sweep --config=experiments/em_gmm.py --workdir=/tmp/em_reg --seeds=3 \
      --vary=reg_covar=1e-6,1e-2,1e-1 --metric=lower_bound

A sweep (experiments/sweep.py) varies the traced `tol` and `reg_covar`: every member (its own
seed's data and k-means++ seeding, its values) is fitted in one jitted program, a vmap of
`fit_gmm` over members.
"""

import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib.patches import Ellipse  # pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top,wrong-import-position

from research import em  # pylint: disable=wrong-import-position
from research.data import toy2d  # pylint: disable=wrong-import-position
from research.train import (ConfigError, Members, check_choice, check_positive, cli,  # pylint: disable=wrong-import-position
                            write_results)
from research import train as train_lib  # pylint: disable=wrong-import-position

# The anisotropic mixture: weights, means and covariances (elongated, rotated components).
_ANGLES = np.array([0.3, -0.8, 1.2, 0.0])
_SCALES = np.array([[1.5, 0.3], [1.0, 0.25], [0.8, 0.4], [0.5, 0.5]])
_ROTATIONS = np.stack([[[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]] for a in _ANGLES])  # (4, 2, 2)
ANISOTROPIC = {
    "weights": np.array([0.35, 0.25, 0.25, 0.15]),
    "means": np.array([[-3.0, 0.0], [0.5, 3.0], [3.5, -0.5], [0.0, -3.0]]),
    "covariances": np.einsum("kij,kj,klj->kil", _ROTATIONS, _SCALES**2, _ROTATIONS),  # R diag(s^2) R^T
}
DATASETS = ("anisotropic", "ring8", "grid25")
# Half-axes of the drawn ellipses in standard deviations.
ELLIPSE_SIGMAS = 2.0


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Fewer points, iterations and restarts, for tests."""
  config.n_samples = 300
  config.max_iter = 20
  config.n_init = 2


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config; preset "smoke" shrinks it for tests."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # seeds the data sample and the k-means++ seeding of every restart
  config.data = "anisotropic"  # one of DATASETS: the 4-component anisotropic mixture, ring8 or grid25
  config.n_samples = 2000  # number of points sampled from the mixture
  config.n_components = 4  # K, the number of fitted components
  config.covariance_type = "full"  # full, diag, spherical or tied
  config.tol = 1e-3  # stop when the mean log-likelihood gains less than this in one iteration
  config.reg_covar = 1e-6  # added to the diagonal of every covariance
  config.max_iter = 100  # maximum EM iterations per restart
  config.n_init = 4  # restarts from different k-means++ seeds, vmapped; the best is kept
  return cli.apply_presets(config, preset, PRESETS)


def check_config(config) -> None:
  """Raises ConfigError on the first bad field."""
  check_choice("data", config.data, DATASETS)
  check_choice("covariance_type", config.covariance_type, em.COVARIANCE_TYPES)
  for name in ("n_samples", "n_components", "max_iter", "n_init"):
    check_positive(name, config[name])
  check_positive("tol", config.tol, allow_zero=True)
  check_positive("reg_covar", config.reg_covar, allow_zero=True)
  if config.n_components > config.n_samples:
    raise ConfigError(f"n_components ({config.n_components}) must be <= n_samples ({config.n_samples})")


def sample_data(name: str, n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Draws n points and returns them with the generating mixture (weights, means, covariances)."""
  if name == "anisotropic":
    rng = np.random.default_rng(seed)
    truth = ANISOTROPIC
    labels = rng.choice(len(truth["weights"]), size=n, p=truth["weights"])
    chol = np.linalg.cholesky(truth["covariances"])  # (K, 2, 2)
    x = truth["means"][labels] + np.einsum("nij,nj->ni", chol[labels], rng.standard_normal((n, 2)))
    return x.astype(np.float32), truth
  modes, std = toy2d.MIXTURES[name]
  truth = {"weights": np.full(len(modes), 1.0 / len(modes)), "means": modes,
           "covariances": np.broadcast_to(std**2 * np.eye(2), (len(modes), 2, 2))}
  return toy2d.generate(name, n, seed)["point"], truth


def mean_log_likelihood(x: np.ndarray, truth: dict[str, np.ndarray]) -> float:
  """Mean log-density of x under a mixture given by weights, means and full covariances (float64)."""
  x = np.asarray(x, np.float64)
  log_probs = np.stack([np.log(w) + multivariate_normal(m, c).logpdf(x)
                        for w, m, c in zip(truth["weights"], truth["means"], truth["covariances"])], axis=1)
  return float(np.mean(logsumexp(log_probs, axis=1)))


def full_covariances(gmm: em.GMM) -> np.ndarray:
  """The fitted covariances as (K, D, D) whatever the covariance type."""
  cov = np.asarray(gmm.covariances, np.float64)
  n_components, n_features = gmm.means.shape
  if gmm.covariance_type == "tied":
    return np.broadcast_to(cov, (n_components, n_features, n_features))
  if gmm.covariance_type == "diag":
    return np.stack([np.diag(c) for c in cov])
  if gmm.covariance_type == "spherical":
    return cov[:, None, None] * np.eye(n_features)
  return cov


def _plot(path: str, x: np.ndarray, gmm: em.GMM, truth: dict[str, np.ndarray], config) -> None:
  fig, (ax_data, ax_ll) = plt.subplots(1, 2, figsize=(11, 4.8), gridspec_kw={"width_ratios": [1.2, 1]})
  labels = np.asarray(em.predict(gmm, x))
  ax_data.scatter(x[:, 0], x[:, 1], c=labels, cmap="tab10", s=4, alpha=0.5, linewidths=0)
  for weight, mean, cov in zip(np.asarray(gmm.weights), np.asarray(gmm.means), full_covariances(gmm)):
    eigvals, eigvecs = np.linalg.eigh(cov)  # ascending
    angle = np.degrees(np.arctan2(eigvecs[1, -1], eigvecs[0, -1]))
    width, height = 2 * ELLIPSE_SIGMAS * np.sqrt(eigvals[::-1])
    ax_data.add_patch(Ellipse(mean, width, height, angle=angle, fill=False, color="k", lw=1.2))
    ax_data.annotate(f"{weight:.2f}", mean, fontsize=7, ha="center", va="bottom")
  ax_data.scatter(truth["means"][:, 0], truth["means"][:, 1], marker="x", c="red", s=30, label="true means")
  ax_data.set_aspect("equal", adjustable="datalim")
  ax_data.set_title(f"{config.data}: {config.covariance_type} GMM, K={config.n_components} "
                    f"({ELLIPSE_SIGMAS:g}$\\sigma$ ellipses)")
  ax_data.legend(loc="upper right", fontsize=8)
  trace = np.asarray(gmm.lower_bounds)[:int(gmm.n_iter)]
  ax_ll.plot(np.arange(1, trace.shape[0] + 1), trace, marker="o", ms=3)
  ax_ll.axhline(mean_log_likelihood(x, truth), color="red", ls="--", lw=1, label="generating mixture")
  ax_ll.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax_ll.set_xlabel("EM iteration")
  ax_ll.set_ylabel("mean log-likelihood per sample")
  ax_ll.set_title(f"best of {config.n_init} restarts: {int(gmm.n_iter)} iterations"
                  f"{', converged' if bool(gmm.converged) else ''}")
  ax_ll.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


# The config fields fit_gmm takes as arrays, so a sweep's members share one program.
TRACED_FIELDS = ("reg_covar", "tol")


def member_configs(config, members: Members) -> list:
  """Each member's config: `config` with that member's seed and values (TRACED_FIELDS), checked as a single
  run's; ConfigError on another field, a wrong number of values or a bad value."""
  return train_lib.member_configs(config, members, TRACED_FIELDS, check_config)


def _plot_members(path: str, lower_bounds: np.ndarray, n_iters: np.ndarray, members: Members, config) -> None:
  """The lower bound per EM iteration of every member, coloured by setting."""
  fig, ax = plt.subplots(figsize=(6, 4))
  settings = list(dict.fromkeys(tuple(members.values(i).items()) for i in range(members.count)))
  colors = plt.get_cmap("tab10")
  labelled = set()
  for i in range(members.count):
    setting = settings.index(tuple(members.values(i).items()))
    trace = lower_bounds[i, :int(n_iters[i])]
    label = None
    if setting not in labelled:  # one legend entry per setting
      labelled.add(setting)
      label = ", ".join(f"{k}={v:g}" for k, v in settings[setting]) or "every member"
    ax.plot(np.arange(1, trace.shape[0] + 1), trace, color=colors(setting % 10), marker="o", ms=2, label=label)
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel("EM iteration")
  ax.set_ylabel("mean log-likelihood per sample")
  ax.set_title(f"{config.covariance_type} GMM, K={config.n_components} on {config.data}: {members.count} members")
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


MEMBER_METRICS = ("lower_bound", "n_iter", "generating_mixture_log_likelihood")  # a member's scalars


def _run_members(config, workdir: str, members: Members, start: float) -> dict:
  """A sweep: every member's fit in one jitted program (see `run`)."""
  configs = member_configs(config, members)
  data = [sample_data(c.data, c.n_samples, c.seed) for c in configs]
  x = jnp.stack([d[0] for d in data])  # (members, n_samples, 2)
  keys = jnp.stack([jax.random.key(c.seed) for c in configs])
  tol = jnp.asarray([c.tol for c in configs], x.dtype)
  reg_covar = jnp.asarray([c.reg_covar for c in configs], x.dtype)

  def fit(x, key, tol, reg_covar):
    return em.fit_gmm(x, config.n_components, key=key, covariance_type=config.covariance_type, tol=tol,
                      reg_covar=reg_covar, max_iter=config.max_iter, n_init=config.n_init)

  fit_start = time.perf_counter()
  gmm = jax.block_until_ready(jax.jit(jax.vmap(fit))(x, keys, tol, reg_covar))
  fit_time = time.perf_counter() - fit_start
  print(f"{config.covariance_type} GMM, K={config.n_components}: {members.count} members fitted in one program, "
        f"compile + fit {fit_time:.1f}s")
  lower_bound = np.asarray(gmm.lower_bound, np.float64)
  n_iter = np.asarray(gmm.n_iter)
  results = []
  for i, seed in enumerate(members.seeds):
    finite = bool(np.isfinite(lower_bound[i]))
    results.append({
        "seed": int(seed), "values": members.values(i),
        # EM maximises the mean log-likelihood; the sweep's loss is its negative (None where it is not finite).
        "train_loss": -float(lower_bound[i]) if finite else None,
        "lower_bound": float(lower_bound[i]) if finite else None,
        "n_iter": int(n_iter[i]),
        "converged": bool(gmm.converged[i]),
        "generating_mixture_log_likelihood": mean_log_likelihood(data[i][0], data[i][1]),
    })
    print(f"member {i} (seed {seed}, {members.values(i)}): lower bound {lower_bound[i]:.4f} after {int(n_iter[i])} "
          "iterations")
  os.makedirs(workdir, exist_ok=True)
  _plot_members(os.path.join(workdir, "gmm.png"), np.asarray(gmm.lower_bounds), n_iter, members, config)
  metrics = {"members": results, "fit_time_s": round(fit_time, 3)}
  return write_results(workdir, metrics, config=config, wall_time_s=time.perf_counter() - start)


def metric_names(config) -> tuple[str, ...]:
  """The scalar metrics a run of `config` reports (a sweep's `--metric` is one of these or train_loss)."""
  del config  # every configuration reports the same
  return MEMBER_METRICS


def run(config, workdir: str, members: Members | None = None) -> dict:
  """Checks the config, samples the data, fits the mixture, writes gmm.png and results.json.

  With `members` (a sweep, experiments/sweep.py), member i is the run with config.seed =
  seeds[i] (its data and seeding) and its values of TRACED_FIELDS; all members are fitted in
  one jitted program. results.json then lists `members` (seed, values, train_loss: the
  negative lower bound, lower_bound, n_iter, converged, the generating mixture's
  log-likelihood) and gmm.png draws every member's lower bound per iteration.

  Args:
    config: a config from `get_config`.
    workdir: output directory (created).
    members: research.train.Members: seeds and {tol or reg_covar: one value per member}, or None.

  Returns:
    The dict written to results.json.

  Raises:
    ConfigError: on a bad config or sweep, before anything is compiled or written.
  """
  start = time.perf_counter()
  if members is not None:
    return _run_members(config, workdir, members, start)
  check_config(config)
  x, truth = sample_data(config.data, config.n_samples, config.seed)
  fit_start = time.perf_counter()
  gmm = jax.block_until_ready(em.fit_gmm(
      x, config.n_components, key=jax.random.key(config.seed), covariance_type=config.covariance_type, tol=config.tol,
      reg_covar=config.reg_covar, max_iter=config.max_iter, n_init=config.n_init))
  fit_time = time.perf_counter() - fit_start
  print(f"{config.covariance_type} GMM, K={config.n_components}, on {config.n_samples} {config.data} points: "
        f"lower bound {float(gmm.lower_bound):.4f} after {int(gmm.n_iter)} iterations "
        f"({'converged' if bool(gmm.converged) else 'not converged'}); compile + fit {fit_time:.1f}s")
  os.makedirs(workdir, exist_ok=True)
  _plot(os.path.join(workdir, "gmm.png"), x, gmm, truth, config)
  n_iter = int(gmm.n_iter)
  metrics = {
      "lower_bound": float(gmm.lower_bound),
      "n_iter": n_iter,
      "converged": bool(gmm.converged),
      "generating_mixture_log_likelihood": mean_log_likelihood(x, truth),
      "lower_bounds": np.asarray(gmm.lower_bounds)[:n_iter],
      "weights": gmm.weights,
      "means": gmm.means,
      "covariances": gmm.covariances,
      "fit_time_s": round(fit_time, 3),
  }
  return write_results(workdir, metrics, config=config, wall_time_s=time.perf_counter() - start)


if __name__ == "__main__":
  cli.main(__file__, run)
