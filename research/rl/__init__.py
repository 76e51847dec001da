"""Reinforcement learning as pure, jit-compiled scans.

envs     tabular environments (random walk, cliff walking, FrozenLake) with exact dynamics
tabular  MDPs, dynamic programming, Monte Carlo and TD methods
ppo      REINFORCE with a baseline and PPO over gymnax environments
rlhf     RLHF on GPT-2: gold scorer, ranked preferences, reward model, PPO with a KL penalty, DPO
"""

from research.rl import envs
from research.rl import ppo
from research.rl import rlhf
from research.rl import tabular
from research.rl.tabular import MDP, Env, HParams, TabularConfig

__all__ = ["MDP", "Env", "HParams", "TabularConfig", "envs", "ppo", "rlhf", "tabular"]
