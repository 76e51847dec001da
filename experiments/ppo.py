"""PPO (or REINFORCE with a baseline) on a gymnax environment, seeds vmapped in one jitted program.

Run (Ctrl-C stops at the next chunk of updates with a checkpoint; the same command resumes):
  python -m experiments.ppo --workdir=/tmp/ppo
  python -m experiments.ppo --workdir=/tmp/ppo --config=experiments/ppo.py:smoke
  python -m experiments.ppo --workdir=/tmp/ppo_acrobot --config.env_name=Acrobot-v1
  python -m experiments.sweep --config=experiments/ppo.py --workdir=/tmp/ppo_clip --seeds=2 \
      --vary=clip_eps=0.1,0.2,0.3 --metric=final_return_mean

A sweep (experiments/sweep.py, `run(..., members=...)`) trains every member, each with its own
config.num_seeds inner seeds, as one jitted program: the vmap over inner seeds under a vmap
over members. Only the fields of research.rl.ppo.HParams can vary.
"""

import ml_collections

from research.rl import config as rl_config
from research.rl import experiment, ppo
from research.train import Members, cli

FINAL_FRACTION = experiment.FINAL_FRACTION  # share of the updates averaged into the initial and final returns


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Short enough for a test (seconds once compiled), long enough that CartPole clearly learns."""
  config.num_seeds = 2
  config.total_timesteps = 50_000


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config; preset "smoke" shrinks it for tests."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # PRNG seed; seed i of num_seeds uses split(key(seed), num_seeds)[i]
  config.env_name = "CartPole-v1"  # CartPole-v1, Acrobot-v1, MountainCar-v0 or a MinAtar game (Breakout-MinAtar, ...)
  config.algorithm = "ppo"  # "ppo" or "reinforce" (REINFORCE with a value baseline)
  config.num_seeds = 4  # independent runs, vmapped in one program
  config.num_envs = 4  # parallel environments per run
  config.num_steps = 128  # steps per environment per rollout
  config.total_timesteps = 500_000  # environment steps per run (summed over envs)
  config.update_epochs = 4  # PPO passes over each rollout (reinforce: unused, one step)
  config.num_minibatches = 4  # PPO minibatches per epoch (reinforce: unused, whole rollout)
  config.gamma = 0.99  # discount factor
  config.gae_lambda = 0.95  # GAE lambda (reinforce: unused, lambda = 1)
  config.clip_eps = 0.2  # PPO ratio clipping range (and value clipping range)
  config.clip_value_loss = True  # PPO: clip the value update around the rollout's values
  config.ent_coef = 0.01  # weight of the entropy bonus
  config.vf_coef = 0.5  # weight of the value loss
  config.max_grad_norm = 0.5  # clip gradients to this global norm
  config.learning_rate = 2.5e-4  # Adam learning rate (initial, if annealed)
  config.anneal_lr = True  # anneal the learning rate linearly to 0 over the updates
  config.hidden_size = 64  # width of the hidden layers of actor and critic (two tanh; MinAtar: one ReLU after a conv)
  # updates_per_chunk (a progress line and a chance to stop every 50 updates: about 20 a run), checkpoint_every
  # (updates) and keep_checkpoints; a rerun of the same command resumes from the newest checkpoint.
  rl_config.add_chunk_fields(config, updates_per_chunk=50, checkpoint_every=200)
  return cli.apply_presets(config, preset, PRESETS)


def member_configs(config, members: Members) -> list:
  """Each member's config: `config` with that member's seed and values (research.rl.ppo.HParams's fields),
  validated as a single run's; ConfigError on another field, a wrong number of values or a bad value."""
  return experiment.member_configs(ppo, config, members)


def metric_names(config) -> tuple[str, ...]:
  """The scalar metrics a run of `config` reports (a sweep's `--metric` is one of these or train_loss)."""
  del config  # every configuration reports the same
  return experiment.MEMBER_METRICS


def run(config, workdir: str, members: Members | None = None) -> dict:
  """Trains config.num_seeds seeds as one vmapped program and writes the run's outputs.

  Writes into workdir: results.json (final and initial return per seed, timings, config,
  versions, wall time), returns.png (return vs environment steps, mean and range over seeds)
  and params/ (an orbax checkpoint of the final parameters, leaves (num_seeds, ...)). A single
  run trains config.updates_per_chunk updates per call, printing a progress line after each,
  saves checkpoints/ every config.checkpoint_every updates and on Ctrl-C (exit 130), and resumes
  from them when run again. With `members` (a sweep), every member's num_seeds runs train in
  one program, a chunk of updates at a time as well; see research.rl.experiment.run.

  Args:
    config: the experiment config (see get_config); validated before anything is compiled.
    workdir: output directory (created if missing).
    members: research.train.Members: seeds and {HParams field: one value per member}, or None.

  Returns:
    The dict written to results.json.
  """
  return experiment.run(ppo, config, workdir, members, name=config.algorithm)


if __name__ == "__main__":
  cli.main(__file__, run)
