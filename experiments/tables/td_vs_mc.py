"""TD(0) vs constant-α Monte Carlo on the random walk: Sutton & Barto, Example 6.2 (Figure 6.2).

Every run, method and step size is one member of a single jitted, vmapped program. Members
with the same run index see the same episodes (common random numbers), since TD(0)
prediction and Monte Carlo's rollouts derive their keys the same way.

Run:
  python -m experiments.tables.td_vs_mc --outdir=experiments/tables/results/td_vs_mc
  python -m experiments.tables.td_vs_mc --outdir=/tmp/td_vs_mc --config=experiments/tables/td_vs_mc.py:smoke
"""

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from experiments import harness
from research.rl import envs, tabular
from research.train import ConfigError, check_positive, cli

NAME = "td_vs_mc"
# Episodes after which the left panel shows one run's TD estimates (as in the book).
SNAPSHOTS = (0, 1, 10, 100)
# Snapshot TD run shown in the left panel: this step size, first run.
SNAPSHOT_ALPHA = 0.1


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Cheap to run, yet enough runs to compare curves within ~0.02."""
  config.num_runs = 200
  config.num_episodes = 20
  config.td_alphas = (0.1,)
  config.mc_alphas = (0.02,)


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config (the book's settings); preset "smoke" shrinks it for tests."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # PRNG seed; run r uses split(key(seed), num_runs)[r] for every method and α
  config.num_runs = 100  # independent runs averaged into each curve, vmapped in one program
  config.num_episodes = 100  # episodes per run: the x axis of the figure
  config.num_states = 5  # non-terminal states of the walk (A..E)
  config.td_alphas = (0.05, 0.1, 0.15)  # TD(0) step sizes
  config.mc_alphas = (0.01, 0.02, 0.03, 0.04)  # constant-α Monte Carlo step sizes
  config.mc_first_visit = False  # Monte Carlo update on the first visit only (the book: every visit)
  config.init_value = 0.5  # initial V of every non-terminal state
  config.max_steps = 1000  # cap on an episode (the walk from C takes 9 steps on average)
  return cli.apply_presets(config, preset, PRESETS)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad field."""
  check_positive("num_runs", config.num_runs)
  check_positive("num_episodes", config.num_episodes)
  check_positive("max_steps", config.max_steps)
  if config.num_states < 1 or config.num_states % 2 == 0:
    raise ConfigError(f"num_states must be odd and positive, got {config.num_states}")
  for name in ("td_alphas", "mc_alphas"):
    alphas = tuple(config[name])
    if not alphas or not all(0.0 < a <= 1.0 for a in alphas):
      raise ConfigError(f"{name} must be a non-empty tuple of step sizes in (0, 1], got {alphas}")


def rms_curves(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Runs every (method, α, run) in one jitted program.

  Returns:
    {"true": (S,) true values, "td": (len(td_alphas), num_runs, num_episodes + 1, S) and
    "mc": (len(mc_alphas), ...) value histories, over all S = num_states + 2 states.}
  """
  env = envs.random_walk(config.num_states)
  uniform = tabular.uniform_policy(env.num_states, env.num_actions)
  true_values = tabular.policy_evaluation(env.mdp, uniform)
  td = tabular.make_td_prediction(env, uniform, tabular.TabularConfig(config.num_episodes, config.max_steps))
  mc = tabular.make_mc_prediction(env, uniform, tabular.TabularConfig(
      config.num_episodes, config.max_steps, first_visit=config.mc_first_visit, constant_alpha=True))

  def sweep(predict, alphas, keys):
    def one(alpha, key):
      return predict(key, tabular.HParams(alpha=alpha, init_value=config.init_value)).history
    over_runs = jax.vmap(one, in_axes=(None, 0))
    return jax.vmap(over_runs, in_axes=(0, None))(alphas, keys)  # (alphas, runs, episodes + 1, S)

  @jax.jit
  def both(td_alphas, mc_alphas, keys):
    return sweep(td, td_alphas, keys), sweep(mc, mc_alphas, keys)

  keys = jax.random.split(jax.random.key(config.seed), config.num_runs)
  td_hist, mc_hist = both(jnp.asarray(config.td_alphas, jnp.float32), jnp.asarray(config.mc_alphas, jnp.float32), keys)
  return {"true": np.asarray(true_values), "td": np.asarray(td_hist), "mc": np.asarray(mc_hist)}


def rms_error(history: np.ndarray, true_values: np.ndarray) -> np.ndarray:
  """RMS error over the non-terminal states, averaged over runs: (..., runs, T, S) -> (..., T)."""
  squared = (history[..., 1:-1] - true_values[1:-1]) ** 2
  return np.sqrt(squared.mean(-1)).mean(-2)


def plot(config, curves: dict[str, np.ndarray], rms: dict[str, np.ndarray]) -> Figure:
  """Left: one TD run's estimates after a few episodes; right: RMS error vs episodes."""
  fig = Figure(figsize=(11, 4), dpi=120)
  left, right = fig.subplots(1, 2)
  states = np.arange(1, config.num_states + 1)
  labels = [chr(ord("A") + i) for i in range(config.num_states)]
  td_alphas = list(config.td_alphas)
  snapshot = td_alphas.index(SNAPSHOT_ALPHA) if SNAPSHOT_ALPHA in td_alphas else 0
  for episode in SNAPSHOTS:
    if episode <= config.num_episodes:
      left.plot(states, curves["td"][snapshot, 0, episode, 1:-1], marker="o", label=f"{episode}")
  left.plot(states, curves["true"][1:-1], color="k", linestyle="--", label="true values")
  left.set(xticks=states, xticklabels=labels, xlabel="state", ylabel="estimated value",
           title=f"TD(0), α={td_alphas[snapshot]}: V after n episodes (one run)")
  left.legend(title="episodes", fontsize=8)
  episodes = np.arange(config.num_episodes + 1)
  for method, alphas, style in (("td", config.td_alphas, "-"), ("mc", config.mc_alphas, "--")):
    for alpha, curve in zip(alphas, rms[method]):
      right.plot(episodes, curve, linestyle=style, label=f"{method.upper()} α={alpha}")
  right.set(xlabel="episodes", ylabel="RMS error, averaged over states",
            title=f"Empirical RMS error, averaged over {config.num_runs} runs")
  right.legend(fontsize=8)
  fig.tight_layout()
  return fig


def markdown(config, rms: dict[str, np.ndarray], wall_time_s: float) -> str:
  """The table of RMS errors after a few episode counts, with the command that produced it."""
  checkpoints = sorted({e for e in (1, 10, 25, 50, config.num_episodes) if e <= config.num_episodes})
  rows = [(label, alpha, *(f"{curve[e]:.4f}" for e in checkpoints))
          for method, alphas, label in (("td", config.td_alphas, "TD(0)"), ("mc", config.mc_alphas, "constant-α MC"))
          for alpha, curve in zip(alphas, rms[method])]
  visit = "first-visit" if config.mc_first_visit else "every-visit"
  return harness.document(
      "TD(0) vs constant-α Monte Carlo on the random walk",
      f"""Sutton & Barto, Example 6.2 and its figure: the {config.num_states}-state random walk under the
equiprobable policy, γ = 1, V initialised to {config.init_value}. The error is the RMS over the
states A..E of V minus the true values (1/6 .. 5/6, computed by `policy_evaluation`), averaged
over {config.num_runs} runs; Monte Carlo is {visit} with a constant step size.""",
      harness.table(["method", "α", *(f"RMS after {e}" for e in checkpoints)], rows),
      f"""Wall time (one jitted program for all {len(config.td_alphas) + len(config.mc_alphas)} step sizes x
{config.num_runs} runs, compilation included): {wall_time_s:.1f} s.""",
      f"![RMS error curves]({NAME}.png)")


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Runs the comparison and writes results.json, td_vs_mc.md and td_vs_mc.png into outdir.

  Args:
    config: see get_config.
    outdir: output directory (created if missing).

  Returns:
    The dict written to results.json: {"td": {alpha: final_rms}, "mc": {alpha: final_rms}, ...}.
  """
  check_config(config)
  start = time.time()
  curves = rms_curves(config)
  rms = {method: rms_error(curves[method], curves["true"]) for method in ("td", "mc")}
  wall_time_s = time.time() - start
  metrics = {
      "td": {str(a): float(c[-1]) for a, c in zip(config.td_alphas, rms["td"])},
      "mc": {str(a): float(c[-1]) for a, c in zip(config.mc_alphas, rms["mc"])},
      "rms_curves": {"td": rms["td"], "mc": rms["mc"]},
  }
  return harness.write_report(outdir, NAME, metrics, markdown(config, rms, wall_time_s),
                              figure=plot(config, curves, rms), config=config, wall_time_s=wall_time_s)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
