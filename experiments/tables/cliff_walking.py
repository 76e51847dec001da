"""SARSA vs Q-learning on the cliff: Sutton & Barto, Example 6.6.

Both methods learn online with an ε-greedy behaviour policy. SARSA evaluates the policy it
follows, so it learns the safe path away from the edge and gets the better online return;
Q-learning learns the values of the greedy policy, the optimal 13-step path along the edge,
but falls off now and then while exploring. All runs of a method are one vmapped program and
both methods one jitted call.

Run:
  python -m experiments.tables.cliff_walking --outdir=experiments/tables/results/cliff_walking
  python -m experiments.tables.cliff_walking --outdir=/tmp/cliff --config=experiments/tables/cliff_walking.py:smoke
"""

import collections
import time

import jax
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from experiments import harness
from research.rl import envs, tabular
from research.train import ConfigError, check_positive, cli

NAME = "cliff_walking"
# Episodes averaged into `mean_return_last100`.
LAST = 100
# A greedy path longer than this revisits a state, so it never reaches the goal.
PATH_CAP = envs.CLIFF_SHAPE[0] * envs.CLIFF_SHAPE[1]
LABELS = {"sarsa": "SARSA", "q_learning": "Q-learning", "expected_sarsa": "Expected SARSA"}


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Long enough for Q-learning to find the optimal path."""
  config.num_runs = 4
  config.num_episodes = 100
  config.max_steps = 1000


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config (the book's settings); preset "smoke" shrinks it for tests."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # PRNG seed; run r of every method uses split(key(seed), num_runs)[r]
  config.algorithms = ("sarsa", "q_learning")  # methods compared, from tabular.TD_CONTROL
  config.num_runs = 100  # independent runs per method, vmapped in one program
  config.num_episodes = 500  # episodes per run
  config.alpha = 0.5  # step size
  config.epsilon = 0.1  # exploration rate of the ε-greedy behaviour policy
  config.max_steps = 5000  # cap on an episode (the first ones, with Q = 0, wander for hundreds)
  config.smoothing = 10  # width of the moving average drawn over the per-episode returns
  return cli.apply_presets(config, preset, PRESETS)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad field."""
  harness.check_names("algorithms", config.algorithms, tabular.TD_CONTROL)
  check_positive("num_runs", config.num_runs)
  check_positive("num_episodes", config.num_episodes)
  check_positive("max_steps", config.max_steps)
  check_positive("smoothing", config.smoothing)
  if not 0.0 < config.alpha <= 1.0:
    raise ConfigError(f"alpha must be in (0, 1], got {config.alpha}")
  if not 0.0 <= config.epsilon <= 1.0:
    raise ConfigError(f"epsilon must be in [0, 1], got {config.epsilon}")


def learn(config: ml_collections.ConfigDict) -> dict[str, tuple[tabular.ControlResult, tabular.Trajectory]]:
  """Trains every method for every run in one jitted call, then follows each greedy policy.

  Returns:
    {algorithm: (ControlResult with a leading run axis, greedy Trajectory per run)}.
  """
  env = envs.cliff_walking()
  settings = tabular.TabularConfig(config.num_episodes, config.max_steps)
  hparams = tabular.HParams(alpha=config.alpha, epsilon=config.epsilon)
  trains = {name: tabular.make_td_control(env, settings, name) for name in config.algorithms}

  def greedy_path(q):
    # The environment is deterministic, so the rollout key does not matter.
    return tabular.rollout(env, tabular.greedy_policy(q), jax.random.key(0), PATH_CAP)

  @jax.jit
  def all_methods(keys):
    out = {}
    for name, train in trains.items():
      result = jax.vmap(train, in_axes=(0, None))(keys, hparams)
      out[name] = (result, jax.vmap(greedy_path)(result.q))
    return out

  keys = jax.random.split(jax.random.key(config.seed), config.num_runs)
  return jax.device_get(all_methods(keys))


def path_states(path: tabular.Trajectory, run: int) -> list[int]:
  """The states a greedy trajectory visits, start and end included."""
  steps = int(path.valid[run].sum())
  return [int(s) for s in path.states[run, :steps]] + [int(path.next_states[run, steps - 1])]


def summarize(result: tabular.ControlResult, path: tabular.Trajectory) -> dict:
  """Online returns, and the greedy path length most runs share (with one such path to draw)."""
  lengths = np.where(path.terminated, path.valid.sum(-1), -1)  # (runs,), -1: never reaches the goal
  reached = lengths[lengths > 0]
  length, count, common = None, 0, ()
  if reached.size:
    length, count = collections.Counter(reached.tolist()).most_common(1)[0]
    paths = [tuple(path_states(path, r)) for r in np.flatnonzero(lengths == length)]
    common = collections.Counter(paths).most_common(1)[0][0]
  return {
      "mean_return_last100": float(result.episode_returns[:, -LAST:].mean()),
      "greedy_path_length": length,
      "greedy_path_runs": count,  # runs whose greedy path has that length
      # {length: runs}; -1 counts the runs whose greedy policy never reaches the goal.
      "greedy_path_length_counts": {str(k): int(v) for k, v in sorted(collections.Counter(lengths.tolist()).items())},
      "greedy_path": list(common),  # the most common path of that length, start to goal
      "truncated_episodes": int((~result.terminated).sum()),
      "mean_return_per_episode": result.episode_returns.mean(0),
  }


def smooth(x: np.ndarray, width: int) -> np.ndarray:
  """Moving average over the last `width` points (fewer at the start)."""
  cumulative = np.cumsum(np.concatenate([[0.0], x]))
  ends = np.arange(1, len(x) + 1)
  starts = np.maximum(ends - width, 0)
  return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def plot(config, summaries: dict[str, dict]) -> Figure:
  """Left: smoothed sum of rewards per episode; right: the grid with each greedy path."""
  rows, cols = envs.CLIFF_SHAPE
  fig = Figure(figsize=(13, 4), dpi=120)
  left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
  for name, summary in summaries.items():
    curve = smooth(summary["mean_return_per_episode"], config.smoothing)
    left.plot(np.arange(1, config.num_episodes + 1), curve, label=LABELS[name])
  left.set(ylim=(-100, 0), xlabel="episodes", ylabel="sum of rewards during episode",
           title=f"ε={config.epsilon}, α={config.alpha}, mean of {config.num_runs} runs, "
           f"moving average of {config.smoothing}")
  left.legend()
  grid = np.zeros((rows, cols))
  grid[rows - 1, 1:cols - 1] = 1.0
  right.imshow(grid, cmap="Greys", vmin=0, vmax=2.5)
  right.text(0, rows - 1, "S", ha="center", va="center", fontweight="bold")
  right.text(cols - 1, rows - 1, "G", ha="center", va="center", fontweight="bold")
  right.text(cols / 2 - 0.5, rows - 1, "the cliff", ha="center", va="center")
  drawn = 0
  for offset, (name, summary) in zip(np.linspace(-0.12, 0.12, len(summaries)), summaries.items()):
    states = np.asarray(summary["greedy_path"], int)
    if states.size:
      r, c = np.divmod(states, cols)
      right.plot(c + offset, r + offset, marker="o", markersize=3,
                 label=f"{LABELS[name]}: {summary['greedy_path_length']} steps")
      drawn += 1
  right.set(xticks=np.arange(cols) - 0.5, yticks=np.arange(rows) - 0.5, xticklabels=[], yticklabels=[],
            title="greedy path after learning (the most common length over runs)")
  right.grid(color="0.7")
  if drawn:
    right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=drawn, fontsize=8)
  fig.tight_layout()
  return fig


def markdown(config, summaries: dict[str, dict], wall_time_s: float) -> str:
  """The table of online returns and greedy paths, with the command that produced it."""
  last = min(LAST, config.num_episodes)
  counts = lambda s: ", ".join(f"{'never reaches G' if k == '-1' else k}: {v}"
                               for k, v in s["greedy_path_length_counts"].items())
  rows = [(LABELS[name], f"{s['mean_return_last100']:.2f}", s["greedy_path_length"], counts(s))
          for name, s in summaries.items()]
  never = {LABELS[n]: s["greedy_path_length_counts"].get("-1", 0) for n, s in summaries.items()}
  loops = "".join(f" In {k} of {config.num_runs} runs, {name}'s greedy policy goes round in a loop and never"
                  " reaches G (with a constant step size its values stay noisy)." for name, k in never.items() if k)
  return harness.document(
      "SARSA vs Q-learning on the cliff",
      f"""Sutton & Barto, Example 6.6: the 4x12 cliff, reward -1 per step and -100 (back to the start)
for stepping onto the cliff; ε-greedy behaviour with ε = {config.epsilon}, α = {config.alpha},
Q initialised to 0, {config.num_episodes} episodes, {config.num_runs} runs. The book's figure shows
SARSA near -25 per episode (the safe path) and Q-learning near -50 (it learns the optimal
13-step path along the edge, and its exploration knocks it off the cliff now and then).
The sum of rewards is of the episodes as played, exploration included; the greedy path
follows argmax Q from the start after the last episode.{loops}""",
      harness.table(["method", f"mean sum of rewards, last {last} episodes", "greedy path length (most runs)",
                     "greedy path lengths over runs"], rows),
      "Wall time (one jitted program for all methods and runs, compilation included): "
      f"{wall_time_s:.1f} s.",
      f"![returns and greedy paths]({NAME}.png)")


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Runs the comparison and writes results.json, cliff_walking.md and cliff_walking.png into outdir.

  Args:
    config: see get_config.
    outdir: output directory (created if missing).

  Returns:
    The dict written to results.json: {algorithm: {"mean_return_last100": x,
    "greedy_path_length": n, ...}, ...}.
  """
  check_config(config)
  start = time.time()
  learned = learn(config)
  summaries = {name: summarize(*learned[name]) for name in config.algorithms}
  wall_time_s = time.time() - start
  return harness.write_report(outdir, NAME, summaries, markdown(config, summaries, wall_time_s),
                              figure=plot(config, summaries), config=config, wall_time_s=wall_time_s)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
