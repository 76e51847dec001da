"""PPO speed: environment steps per second, the jitted `research.rl.ppo` vs a conventional loop.

Both sides run PPO on CartPole-v1 with the experiment's default hyperparameters (4 envs x 128
steps per rollout, 4 epochs x 4 minibatches, GAE(0.95), clip 0.2, tanh MLP 64x64 actor and
critic, Adam 2.5e-4 annealed over a 5e5-step run, grad norm 0.5, truncation bootstrapped):

- jax: the whole run as one XLA program, once for 1 seed and once for --seeds vmapped seeds.
  Compilation is timed separately; steps/s count only the compiled run (block_until_ready),
  with the compile-inclusive figure reported beside it.
- peer: gymnasium's SyncVectorEnv with 4 CartPole-v1 envs (same-step autoreset, so the final
  observation of a truncated episode is available), a PyTorch policy and critic, a Python
  loop over the environment steps, GAE as a Python loop and the epoch/minibatch update in
  torch, on --torch_threads threads. A full 5e5-step run would take minutes, so it times
  --peer_updates rollout + update iterations after one untimed warm-up iteration.

Run:
  python -m experiments.bench.ppo
  python -m experiments.bench.ppo --seeds=8 --total_timesteps=32768 --peer_updates=20 --outdir=/tmp/ppo_bench
"""

import json
import os
import sys
import time
from importlib import metadata

import gymnasium as gym
import jax
import numpy as np
import torch
from absl import app, flags
from torch import nn

from experiments import ppo as ppo_experiment
from research.rl import ppo
from research.train import environment

_OUTDIR = flags.DEFINE_string("outdir", "experiments/bench/results/ppo", "Output directory for ppo.json and ppo.md.")
_TOTAL = flags.DEFINE_integer("total_timesteps", 32_768, "Environment steps per seed of each timed JAX run.")
_SEEDS = flags.DEFINE_integer("seeds", 8, "Seeds of the vmapped JAX run.")
_PEER_UPDATES = flags.DEFINE_integer("peer_updates", 20, "Timed rollout + update iterations of the peer loop.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of both sides.")
# A 64x64 MLP on 4 observations is far too small for intra-op parallelism: extra torch threads
# only add synchronisation (and collapse when the cores are shared), so the peer gets one.
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 1, "torch.set_num_threads for the peer.")


def _config(total_timesteps: int, num_seeds: int):
  config = ppo_experiment.get_config()
  config.total_timesteps = total_timesteps
  config.num_seeds = num_seeds
  return config


def time_jax(config, num_seeds: int, seed: int) -> dict:
  """Compiles and runs `num_seeds` (1: no vmap) seeds of the jitted PPO; returns timings."""
  train = ppo.make_train(config)
  if num_seeds == 1:
    fn, keys = jax.jit(train), jax.random.key(seed)
  else:
    fn, keys = jax.jit(jax.vmap(train)), jax.random.split(jax.random.key(seed), num_seeds)
  start = time.perf_counter()
  compiled = fn.lower(keys).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  out = jax.block_until_ready(compiled(keys))
  run_s = time.perf_counter() - start
  steps = num_seeds * ppo.num_updates(config) * config.num_envs * config.num_steps
  final = np.atleast_1d(ppo.final_return(out.metrics))
  return {"seeds": num_seeds, "env_steps": steps, "compile_s": round(compile_s, 3), "run_s": round(run_s, 3),
          "steps_per_s": steps / run_s, "steps_per_s_with_compile": steps / (run_s + compile_s),
          "final_return_mean": float(np.nanmean(final))}


# ----------------------------------------------------------------------------- the peer


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


def time_peer(config, updates: int, seed: int) -> dict:
  """Times `updates` rollout + update iterations of the torch loop after one warm-up iteration."""
  peer = TorchPPO(config, seed)
  peer.iteration()
  start = time.perf_counter()
  for _ in range(updates):
    peer.iteration()
  run_s = time.perf_counter() - start
  steps = updates * config.num_envs * config.num_steps
  return {"seeds": 1, "env_steps": steps, "run_s": round(run_s, 3), "steps_per_s": steps / run_s,
          "torch_threads": torch.get_num_threads()}


def run_bench(outdir: str, total_timesteps: int, seeds: int, peer_updates: int, seed: int) -> dict:
  """Measures both sides in this process, writes <outdir>/ppo.json and ppo.md, returns the JSON dict."""
  config = _config(total_timesteps, 1)
  ppo.check_config(config)  # bad flags fail before anything is timed
  if seeds < 1 or peer_updates < 1:
    raise app.UsageError("--seeds and --peer_updates must be positive")
  # JAX first: an XLA CPU computation launched after torch has run its thread pools in this
  # process was seen to stall (all threads parked on futexes); the other order is clean.
  one = time_jax(config, 1, seed)
  many = time_jax(config, seeds, seed)
  peer = time_peer(config, peer_updates, seed)
  result = {
      "command": " ".join(["python -m experiments.bench.ppo"] + sys.argv[1:]),
      "env": config.env_name,
      "hyperparameters": {k: config[k] for k in ppo.CONFIG_FIELDS},
      "jax_1_seed": one,
      f"jax_{seeds}_seeds": many,
      "peer_torch_gymnasium": peer,
      "ratio_1_seed": one["steps_per_s"] / peer["steps_per_s"],
      f"ratio_{seeds}_seeds": many["steps_per_s"] / peer["steps_per_s"],
      "ratio_1_seed_with_compile": one["steps_per_s_with_compile"] / peer["steps_per_s"],
      f"ratio_{seeds}_seeds_with_compile": many["steps_per_s_with_compile"] / peer["steps_per_s"],
      **environment(),
  }
  result["versions"].update({name: metadata.version(name) for name in ("torch", "gymnasium", "gymnax", "numpy")})
  rows = [
      ("jax, 1 seed", one["env_steps"], one["compile_s"], one["run_s"], one["steps_per_s"],
       result["ratio_1_seed"], result["ratio_1_seed_with_compile"]),
      (f"jax, {seeds} seeds vmapped", many["env_steps"], many["compile_s"], many["run_s"], many["steps_per_s"],
       result[f"ratio_{seeds}_seeds"], result[f"ratio_{seeds}_seeds_with_compile"]),
      ("torch + gymnasium loop, 1 seed", peer["env_steps"], 0.0, peer["run_s"], peer["steps_per_s"], 1.0, 1.0),
  ]
  versions = result["versions"]
  lines = [
      f"PPO on {config.env_name}, {config.num_envs} envs x {config.num_steps} steps per rollout, "
      f"{config.update_epochs} epochs x {config.num_minibatches} minibatches, "
      f"{result['devices']['kind']} ({result['devices']['platform']}).",
      "",
      "| implementation | env steps timed | compile s | run s | env steps/s | ratio | ratio incl. compile |",
      "|---|---:|---:|---:|---:|---:|---:|",
  ]
  lines += [f"| {name} | {steps:,} | {compile_s:.1f} | {run_s:.2f} | {rate:,.0f} | {ratio:.1f}x | {ratio_c:.1f}x |"
            for name, steps, compile_s, run_s, rate, ratio, ratio_c in rows]
  lines += [
      "",
      f"The peer is timed over {peer_updates} rollout + update iterations after a warm-up one "
      f"(torch threads: {peer['torch_threads']}).",
      f"Versions: jax {versions['jax']}, torch {versions['torch']}, gymnasium {versions['gymnasium']}, "
      f"gymnax {versions['gymnax']}.",
      "",
      f"Command: `{result['command']}`",
  ]
  table = "\n".join(lines) + "\n"
  print(table)
  os.makedirs(outdir, exist_ok=True)
  with open(os.path.join(outdir, "ppo.json"), "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
  with open(os.path.join(outdir, "ppo.md"), "w") as f:
    f.write(table)
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  torch.set_num_threads(_TORCH_THREADS.value)
  run_bench(_OUTDIR.value, _TOTAL.value, _SEEDS.value, _PEER_UPDATES.value, _SEED.value)


if __name__ == "__main__":
  app.run(main)
