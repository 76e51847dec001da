"""The conventional PPO loop experiments/bench/ppo.py compares with: gymnasium + PyTorch + Python.

Kept apart so torch is imported only after the JAX side has been timed.
"""

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from research.rl import ppo

class TorchActorCritic(nn.Module):
  """The same network as research.rl.ppo.ActorCritic, in PyTorch."""

  def __init__(self, obs_dim: int, num_actions: int, hidden: int):
    super().__init__()

    def layer(n_in, n_out, gain):
      linear = nn.Linear(n_in, n_out)
      nn.init.orthogonal_(linear.weight, gain)
      nn.init.zeros_(linear.bias)
      return linear

    gain = np.sqrt(2.0)
    self.actor = nn.Sequential(layer(obs_dim, hidden, gain), nn.Tanh(), layer(hidden, hidden, gain), nn.Tanh(),
                               layer(hidden, num_actions, 0.01))
    self.critic = nn.Sequential(layer(obs_dim, hidden, gain), nn.Tanh(), layer(hidden, hidden, gain), nn.Tanh(),
                                layer(hidden, 1, 1.0))

  def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return self.actor(obs), self.critic(obs)[..., 0]


class TorchPPO:
  """PPO as it is commonly written: a Python loop over steps of a gymnasium vector env."""

  def __init__(self, config, seed: int):
    self.config = config
    self.envs = gym.vector.SyncVectorEnv([lambda: gym.make(config.env_name) for _ in range(config.num_envs)],
                                         autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    torch.manual_seed(seed)
    self.net = TorchActorCritic(self.envs.single_observation_space.shape[0], self.envs.single_action_space.n,
                                config.hidden_size)
    self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.learning_rate, eps=1e-5)
    self.obs, _ = self.envs.reset(seed=seed)
    self.num_updates = ppo.num_updates(config)
    self.update_index = 0

  def rollout(self) -> dict[str, np.ndarray]:
    c = self.config
    shape = (c.num_steps, c.num_envs)
    buf = {"obs": np.zeros(shape + self.obs.shape[1:], np.float32), "action": np.zeros(shape, np.int64),
           "log_prob": np.zeros(shape, np.float32), "value": np.zeros(shape, np.float32),
           "reward": np.zeros(shape, np.float32), "next_obs": np.zeros(shape + self.obs.shape[1:], np.float32),
           "terminated": np.zeros(shape, bool), "done": np.zeros(shape, bool)}
    for t in range(c.num_steps):
      with torch.no_grad():
        logits, value = self.net(torch.as_tensor(self.obs))
        dist = torch.distributions.Categorical(logits=logits)
        action = dist.sample()
      obs, reward, terminated, truncated, info = self.envs.step(action.numpy())
      next_obs = obs.copy()
      if "_final_obs" in info:  # s'_t before the auto-reset, for the truncation bootstrap
        for i in np.flatnonzero(info["_final_obs"]):
          next_obs[i] = info["final_obs"][i]
      buf["obs"][t], buf["action"][t], buf["log_prob"][t] = self.obs, action.numpy(), dist.log_prob(action).numpy()
      buf["value"][t], buf["reward"][t], buf["next_obs"][t] = value.numpy(), reward, next_obs
      buf["terminated"][t], buf["done"][t] = terminated, terminated | truncated
      self.obs = obs
    return buf

  def advantages(self, buf: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    c = self.config
    with torch.no_grad():
      next_values = self.net(torch.as_tensor(buf["next_obs"]))[1].numpy()  # (num_steps, num_envs)
    advantages = np.zeros_like(buf["value"])
    last = np.zeros(c.num_envs, np.float32)
    for t in reversed(range(c.num_steps)):
      delta = buf["reward"][t] + c.gamma * (1.0 - buf["terminated"][t]) * next_values[t] - buf["value"][t]
      last = delta + c.gamma * c.gae_lambda * (1.0 - buf["done"][t]) * last
      advantages[t] = last
    return advantages, advantages + buf["value"]

  def update(self, buf: dict[str, np.ndarray], advantages: np.ndarray, targets: np.ndarray) -> None:
    c = self.config
    lr = c.learning_rate * (1.0 - self.update_index / self.num_updates)
    for group in self.optimizer.param_groups:
      group["lr"] = lr
    flat = lambda x: torch.as_tensor(x.reshape((-1,) + x.shape[2:]))
    obs, action, old_log_prob, old_value = flat(buf["obs"]), flat(buf["action"]), flat(buf["log_prob"]), flat(
        buf["value"])
    advantages, targets = flat(advantages), flat(targets)
    batch_size = obs.shape[0]
    minibatch = batch_size // c.num_minibatches
    for _ in range(c.update_epochs):
      permutation = torch.randperm(batch_size)
      for start in range(0, batch_size, minibatch):
        idx = permutation[start:start + minibatch]
        logits, values = self.net(obs[idx])
        dist = torch.distributions.Categorical(logits=logits)
        log_ratio = dist.log_prob(action[idx]) - old_log_prob[idx]
        ratio = log_ratio.exp()
        adv = (advantages[idx] - advantages[idx].mean()) / (advantages[idx].std() + 1e-8)
        policy_loss = -torch.min(ratio * adv, torch.clamp(ratio, 1 - c.clip_eps, 1 + c.clip_eps) * adv).mean()
        clipped_values = old_value[idx] + torch.clamp(values - old_value[idx], -c.clip_eps, c.clip_eps)
        value_loss = 0.5 * torch.max((values - targets[idx]) ** 2, (clipped_values - targets[idx]) ** 2).mean()
        loss = policy_loss + c.vf_coef * value_loss - c.ent_coef * dist.entropy().mean()
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), c.max_grad_norm)
        self.optimizer.step()
    self.update_index += 1

  def iteration(self) -> None:
    buf = self.rollout()
    self.update(buf, *self.advantages(buf))
