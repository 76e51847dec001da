"""DQN or Double DQN on a gymnax environment, seeds vmapped in one jitted program.

Run (Ctrl-C stops at the next chunk of updates with a checkpoint; the same command resumes):
  python -m experiments.dqn --workdir=/tmp/dqn
  python -m experiments.dqn --workdir=/tmp/dqn --config=experiments/dqn.py:smoke
  python -m experiments.dqn --workdir=/tmp/ddqn --config.double_dqn=True
  python -m experiments.dqn --workdir=/tmp/dqn_breakout --config=experiments/dqn.py:minatar \
      --config.env_name=Breakout-MinAtar
  python -m experiments.sweep --config=experiments/dqn.py --workdir=/tmp/dqn_lr --seeds=2 \
      --vary=learning_rate=1e-4,3e-4,1e-3 --metric=final_return_mean

The final return of each seed is the mean of `eval_episodes` greedy (epsilon = 0) episodes
after training; returns.png draws the epsilon-greedy training episodes and every greedy
evaluation. A single run trains `updates_per_chunk` updates per compiled call with a progress
line after each; its checkpoints hold the whole carry, replay buffer included (per seed 1.1 MB
on CartPole, 83 MB on Breakout-MinAtar, 143 MB on Freeway-MinAtar). A sweep
(experiments/sweep.py) varies the fields of research.rl.dqn.HParams: learning_rate, gamma,
epsilon_start, epsilon_end, exploration_fraction and tau.
"""

import ml_collections

from research.rl import config as rl_config
from research.rl import dqn, experiment
from research.train import Members, cli

FINAL_FRACTION = experiment.FINAL_FRACTION  # share of the updates averaged into the initial return


def _minatar(config: ml_collections.ConfigDict) -> None:
  """Young & Tian's DQN settings, scaled to 4 environments: Breakout by default (--config.env_name for the rest)."""
  config.env_name = "Breakout-MinAtar"
  config.total_timesteps = 1_000_000
  config.buffer_size = 100_000
  config.batch_size = 32
  config.learning_starts = 5_000
  config.exploration_fraction = 0.1
  config.target_update_period = 250
  config.loss = "huber"
  config.learning_rate = 2.5e-4
  config.num_seeds = 3
  config.updates_per_chunk = 2_500  # 100 calls of the 250,000 updates
  config.checkpoint_every = 25_000  # ten checkpoints, each 3 x 83 MB on Breakout (the carries: replay buffers)


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Short enough for a test; CartPole's greedy return rises well above a random policy's ~22."""
  config.num_seeds = 2
  config.total_timesteps = 20_000
  config.exploration_fraction = 0.3
  config.num_evaluations = 4
  config.eval_episodes = 4


PRESETS = {"minatar": _minatar, "smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config (CartPole-v1); presets: "minatar" for the MinAtar games, "smoke" shrinks it for tests."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # PRNG seed; seed i of num_seeds uses split(key(seed), num_seeds)[i]
  config.env_name = "CartPole-v1"  # CartPole-v1, Acrobot-v1, MountainCar-v0 or a MinAtar game (Breakout-MinAtar, ...)
  config.num_seeds = 4  # independent runs, vmapped in one program
  config.num_envs = 4  # parallel environments per run
  config.num_steps = 1  # steps per environment between gradient phases
  config.total_timesteps = 100_000  # environment steps per run (summed over envs)
  config.buffer_size = 20_000  # replay buffer capacity in transitions
  config.batch_size = 64  # transitions per gradient step
  config.learning_starts = 1_000  # environment steps taken before the first gradient step
  config.gradient_steps = 1  # gradient steps per update
  config.epsilon_start = 1.0  # exploration rate at the first step
  config.epsilon_end = 0.05  # exploration rate after the schedule
  config.exploration_fraction = 0.2  # share of total_timesteps over which epsilon falls linearly
  # Updates between target network updates. Values propagate one Bellman backup per target update, so a long
  # period (or a small tau) caps the horizon DQN sees within a run: at 125 CartPole's Q stalled near
  # (1 - 0.99^K) / 0.01 for K target updates and the cart drifted out of bounds after ~100 steps.
  config.target_update_period = 25
  config.tau = 1.0  # target <- tau * online + (1 - tau) * target (1: a copy; small with period 1: Polyak)
  config.loss = "mse"  # TD loss: "mse" or "huber" (Mnih et al.'s error clipping)
  config.double_dqn = False  # Double DQN's target: the online network picks a', the target network values it
  config.dueling = False  # dueling head: Q = V + A - mean A
  config.gamma = 0.99  # discount factor
  config.learning_rate = 1e-3  # Adam learning rate (initial, if annealed)
  config.anneal_lr = True  # anneal the learning rate linearly to 0 over the learning updates
  config.max_grad_norm = 10.0  # clip gradients to this global norm
  config.hidden_size = 128  # width of the Q-network's hidden layers (two ReLU; MinAtar: one after a conv)
  config.num_evaluations = 10  # greedy evaluations during training, the last one at the end
  config.eval_episodes = 8  # greedy episodes per evaluation
  # updates_per_chunk (a progress line and a chance to stop every 1,250 updates: 20 a run), checkpoint_every
  # (updates) and keep_checkpoints; a rerun of the same command resumes from the newest checkpoint.
  rl_config.add_chunk_fields(config, updates_per_chunk=1_250, checkpoint_every=5_000)
  return cli.apply_presets(config, preset, PRESETS)


def member_configs(config, members: Members) -> list:
  """Each member's config: `config` with that member's seed and values (research.rl.dqn.HParams's fields),
  validated as a single run's; ConfigError on another field, a wrong number of values or a bad value."""
  return experiment.member_configs(dqn, config, members)


def metric_names(config) -> tuple[str, ...]:
  """The scalar metrics a run of `config` reports (a sweep's `--metric` is one of these or train_loss)."""
  del config  # every configuration reports the same
  return experiment.MEMBER_METRICS


def run(config, workdir: str, members: Members | None = None) -> dict:
  """Trains config.num_seeds seeds as one vmapped program and writes the run's outputs.

  Writes into workdir: results.json (the greedy final return and the initial return per seed,
  timings, config, versions, wall time), returns.png (training and greedy returns vs environment
  steps) and params/ (the final online Q-network, leaves (num_seeds, ...)). A single run trains
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
  return experiment.run(dqn, config, workdir, members, name="Double DQN" if config.double_dqn else "DQN")


if __name__ == "__main__":
  cli.main(__file__, run)
