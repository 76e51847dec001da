"""Reinforcement learning as pure, jit-compiled scans.

envs        tabular environments (random walk, cliff walking, FrozenLake) with exact dynamics
tabular     MDPs, dynamic programming, Monte Carlo and TD methods
rollout     vectorised gymnax environments with episode statistics, the shared rollout scan
losses      GAE, the clipped surrogate, value and TD losses, (Double) DQN targets
networks    actor-critic and Q-networks (MLP or MinAtar's conv torso)
config      the traced-HParams convention and config checks of the deep RL scans
experiment  a deep RL experiment's run: seeds and sweep members in one program, results and plots
ppo         REINFORCE with a baseline and PPO over gymnax environments
rlhf        RLHF on GPT-2: gold scorer, ranked preferences, reward model, PPO with a KL penalty, DPO
"""

from research.rl import envs
from research.rl import losses
from research.rl import networks
from research.rl import ppo
from research.rl import rlhf
from research.rl import rollout
from research.rl import tabular
from research.rl.tabular import MDP, Env, HParams, TabularConfig

__all__ = ["MDP", "Env", "HParams", "TabularConfig", "envs", "losses", "networks", "ppo", "rlhf", "rollout", "tabular"]
