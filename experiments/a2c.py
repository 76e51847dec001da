"""A2C (synchronous advantage actor-critic) on a gymnax environment, seeds vmapped in one jitted program.

Run:
  python -m experiments.a2c --workdir=/tmp/a2c
  python -m experiments.a2c --workdir=/tmp/a2c --config=experiments/a2c.py:smoke
  python -m experiments.a2c --workdir=/tmp/a2c_gae --config.gae_lambda=0.95 --config.optimizer=adam
  python -m experiments.sweep --config=experiments/a2c.py --workdir=/tmp/a2c_lr --seeds=2 \
      --vary=learning_rate=3e-4,7e-4,2e-3 --metric=final_return_mean

The defaults are Stable-Baselines3's (rl-zoo) for CartPole: 8 environments x 5 steps per
update, n-step returns (gae_lambda = 1), RMSProp 7e-4, no entropy bonus. A sweep
(experiments/sweep.py) varies the fields of research.rl.a2c.HParams: learning_rate, gamma,
gae_lambda, ent_coef and vf_coef.
"""

import ml_collections

from research.rl import config as rl_config
from research.rl import a2c, experiment
from research.train import Members, cli

FINAL_FRACTION = experiment.FINAL_FRACTION  # share of the updates averaged into the initial and final returns


def _minatar(config: ml_collections.ConfigDict) -> None:
  """Breakout by default (--config.env_name for the other games)."""
  config.env_name = "Breakout-MinAtar"
  config.num_envs = 16
  config.total_timesteps = 2_000_000
  config.ent_coef = 0.01
  config.hidden_size = 128
  config.num_seeds = 3


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Short enough for a test, long enough that CartPole clearly learns."""
  config.num_seeds = 2
  config.total_timesteps = 100_000


PRESETS = {"minatar": _minatar, "smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config (CartPole-v1); presets: "minatar" for the MinAtar games, "smoke" shrinks it for tests."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # PRNG seed; seed i of num_seeds uses split(key(seed), num_seeds)[i]
  config.env_name = "CartPole-v1"  # CartPole-v1, Acrobot-v1, MountainCar-v0 or a MinAtar game (Breakout-MinAtar, ...)
  config.num_seeds = 4  # independent runs, vmapped in one program
  config.num_envs = 8  # parallel environments per run
  config.num_steps = 5  # steps per environment per update: the n of the n-step returns
  config.total_timesteps = 500_000  # environment steps per run (summed over envs)
  config.gamma = 0.99  # discount factor
  config.gae_lambda = 1.0  # 1: n-step returns (the paper); below 1: GAE(lambda)
  config.ent_coef = 0.0  # weight of the entropy bonus
  config.vf_coef = 1.0  # weight of the value loss 0.5 * MSE (1.0 is Stable-Baselines3's 0.5 on the MSE)
  config.max_grad_norm = 0.5  # clip gradients to this global norm
  config.learning_rate = 7e-4  # learning rate (initial, if annealed)
  config.anneal_lr = True  # anneal the learning rate linearly to 0 over the updates
  config.optimizer = "rmsprop"  # "rmsprop" (the paper's) or "adam"
  config.rmsprop_decay = 0.99  # RMSProp's decay of the squared-gradient average (unused by adam)
  config.optimizer_eps = 1e-5  # RMSProp's or Adam's epsilon
  config.normalize_advantages = False  # standardise the advantages of each rollout (PPO does)
  config.hidden_size = 64  # width of the hidden layers of actor and critic (two tanh; MinAtar: one ReLU after a conv)
  # updates_per_chunk (a progress line and a chance to stop every 625 updates: about 20 a run), checkpoint_every
  # (updates) and keep_checkpoints; a rerun of the same command resumes from the newest checkpoint.
  rl_config.add_chunk_fields(config, updates_per_chunk=625, checkpoint_every=2500)
  return cli.apply_presets(config, preset, PRESETS)


def member_configs(config, members: Members) -> list:
  """Each member's config: `config` with that member's seed and values (research.rl.a2c.HParams's fields),
  validated as a single run's; ConfigError on another field, a wrong number of values or a bad value."""
  return experiment.member_configs(a2c, config, members)


def metric_names(config) -> tuple[str, ...]:
  """The scalar metrics a run of `config` reports (a sweep's `--metric` is one of these or train_loss)."""
  del config  # every configuration reports the same
  return experiment.MEMBER_METRICS


def run(config, workdir: str, members: Members | None = None) -> dict:
  """Trains config.num_seeds seeds as one vmapped program and writes the run's outputs.

  Writes into workdir: results.json (final and initial return per seed, timings, config,
  versions, wall time), returns.png (return vs environment steps, mean and range over seeds)
  and params/ (the final ActorCritic parameters, leaves (num_seeds, ...)). A single run trains
  config.updates_per_chunk updates per call, printing a progress line after each, saves
  checkpoints/ every config.checkpoint_every updates and on Ctrl-C (exit 130), and resumes from
  them when run again. With `members` (a sweep), every member's num_seeds runs train in one
  program, a chunk of updates at a time as well; see research.rl.experiment.run.

  Args:
    config: the experiment config (see get_config); validated before anything is compiled.
    workdir: output directory (created if missing).
    members: research.train.Members: seeds and {HParams field: one value per member}, or None.

  Returns:
    The dict written to results.json.
  """
  return experiment.run(a2c, config, workdir, members, name="A2C")


if __name__ == "__main__":
  cli.main(__file__, run)
