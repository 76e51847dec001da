"""TAMER with a simulated trainer on CartPole or a tabular environment, seeds vmapped in one jitted program.

Run:
  python -m experiments.tamer --workdir=/tmp/tamer
  python -m experiments.tamer --workdir=/tmp/tamer_cliff --config=experiments/tamer.py:tabular
  python -m experiments.tamer --workdir=/tmp/tamer_noisy --config.error_rate=0.2 --config.feedback_prob=0.3
  python -m experiments.sweep --config=experiments/tamer.py --workdir=/tmp/tamer_noise --seeds=2 \
      --vary=error_rate=0,0.1,0.2,0.3 --metric=final_return_mean

The agent never sees the environment's reward; its final return (in that reward) is the mean
of `eval_episodes` greedy episodes after training. A sweep (experiments/sweep.py) varies the
fields of research.rl.tamer.HParams: learning_rate, error_rate and feedback_prob.
"""

import ml_collections

from research.rl import experiment, tamer
from research.train import Members, cli

FINAL_FRACTION = experiment.FINAL_FRACTION  # share of the steps averaged into the initial return


def _tabular(config: ml_collections.ConfigDict) -> None:
  """Cliff walking, H^ a table."""
  config.env_name = "cliff_walking"
  config.total_timesteps = 5_000
  config.learning_rate = 0.1
  # A one-step delay: spread over 1..3 steps, the credit of a deterministic greedy walk blurs between
  # neighbouring cells and the agent can loop (experiments/tables/tamer.py shows it).
  config.delay_min = config.delay_max = 1


def _smoke(config: ml_collections.ConfigDict) -> None:
  config.num_seeds = 2
  config.total_timesteps = 2_000
  config.num_evaluations = 4
  config.eval_episodes = 4


PRESETS = {"tabular": _tabular, "smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config (CartPole-v1); presets: "tabular" (cliff walking), "smoke" shrinks it for tests."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # PRNG seed; seed i of num_seeds uses split(key(seed), num_seeds)[i]
  config.env_name = "CartPole-v1"  # CartPole-v1 or a tabular environment of research.rl.envs (cliff_walking, ...)
  config.num_seeds = 4  # independent runs (agent and trainer), vmapped in one program
  config.num_envs = 1  # environments, each with its own simulated trainer
  config.total_timesteps = 10_000  # environment steps per run (summed over envs)
  config.error_rate = 0.0  # probability that a signal is wrong (noise)
  config.feedback_prob = 1.0  # probability that the trainer signals about a step (sparsity)
  config.delay_min = 1  # the trainer's signal arrives delay_min..delay_max steps after the step it judges
  config.delay_max = 3  # (uniformly); the agent's credit assignment assumes the same window
  config.buffer_size = 10_000  # signals kept for replay
  config.batch_size = 32  # signals per gradient step
  config.learning_rate = 1e-3  # Adam step size of the feedback model H^
  config.hidden_size = 64  # width of H^'s two ReLU hidden layers (tabular environments: a table, unused)
  config.num_evaluations = 10  # greedy evaluations during training, the last one at the end
  config.eval_episodes = 8  # greedy episodes per evaluation
  return cli.apply_presets(config, preset, PRESETS)


def member_configs(config, members: Members) -> list:
  """Each member's config: `config` with that member's seed and values (research.rl.tamer.HParams's fields),
  validated as a single run's; ConfigError on another field, a wrong number of values or a bad value."""
  return experiment.member_configs(tamer, config, members)


def metric_names(config) -> tuple[str, ...]:
  """The scalar metrics a run of `config` reports (a sweep's `--metric` is one of these or train_loss)."""
  del config  # every configuration reports the same
  return experiment.MEMBER_METRICS


def run(config, workdir: str, members: Members | None = None) -> dict:
  """Trains config.num_seeds seeds as one vmapped program and writes the run's outputs.

  Writes into workdir: results.json (the greedy final return per seed in the environment's
  reward, timings, config, versions, wall time), returns.png and params/ (the final feedback
  model H^). With `members` (a sweep), every member's runs train in one program; see
  research.rl.experiment.run.

  Args:
    config: the experiment config (see get_config); validated before anything is compiled.
    workdir: output directory (created if missing).
    members: research.train.Members: seeds and {HParams field: one value per member}, or None.

  Returns:
    The dict written to results.json.
  """
  return experiment.run(tamer, config, workdir, members, name="TAMER")


if __name__ == "__main__":
  cli.main(__file__, run)
