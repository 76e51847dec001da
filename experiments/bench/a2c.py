"""A2C speed: environment steps per second, the jitted `research.rl.a2c` vs Stable-Baselines3's A2C.

Both sides run A2C on CartPole-v1 with experiments/a2c.py's defaults, which are SB3's (rl-zoo)
CartPole settings: 8 environments x 5 steps per update, n-step returns, RMSProp 7e-4 (decay
0.99, eps 1e-5 outside the root), value weight 0.5 on SB3's MSE (1.0 on our 0.5 * MSE),
grad norm 0.5, tanh MLPs 64x64 for actor and critic.

- jax: the whole run as one XLA program, once for 1 seed and once for --seeds vmapped seeds;
  compilation is timed apart, steps/s count the compiled run only (the compile-inclusive figure
  is reported beside it).
- peer: `stable_baselines3.A2C("MlpPolicy", make_vec_env("CartPole-v1", n_envs=8))` with the
  same settings, `learn(total_timesteps=--peer_timesteps)` on --torch_threads threads, after an
  untimed warm-up `learn` of one update.

Run:
  python -m experiments.bench.a2c --outdir=experiments/bench/results/a2c
  python -m experiments.bench.a2c --total_timesteps=20000 --seeds=2 --peer_timesteps=2000 --outdir=/tmp/a2c_bench
"""

import time

import jax
import numpy as np
from absl import app, flags

from experiments import a2c as a2c_experiment
from experiments import report
from research.rl import a2c

_TOTAL = flags.DEFINE_integer("total_timesteps", 100_000, "Environment steps per seed of each timed JAX run.")
_SEEDS = flags.DEFINE_integer("seeds", 8, "Seeds of the vmapped JAX run.")
_PEER_TIMESTEPS = flags.DEFINE_integer("peer_timesteps", 20_000, "Environment steps of the timed peer run.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of both sides.")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 1, "torch.set_num_threads for the peer.")

PACKAGES = ("torch", "gymnasium", "gymnax", "stable_baselines3", "numpy")


def _config(total_timesteps: int):
  config = a2c_experiment.get_config()
  config.total_timesteps = total_timesteps
  config.anneal_lr = False  # SB3's rl-zoo CartPole A2C keeps its learning rate constant
  return config


def time_jax(config, num_seeds: int, seed: int) -> dict:
  """Compiles and runs `num_seeds` (1: no vmap) seeds of the jitted A2C; returns timings."""
  train = a2c.make_train(config)
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
  steps = num_seeds * a2c.num_updates(config) * config.num_envs * config.num_steps
  final = np.atleast_1d(a2c.final_return(out.metrics))
  return {"seeds": num_seeds, "env_steps": steps, "compile_s": round(compile_s, 3), "run_s": round(run_s, 3),
          "steps_per_s": steps / run_s, "steps_per_s_with_compile": steps / (run_s + compile_s),
          "final_return_mean": float(np.nanmean(final))}


def time_peer(config, timesteps: int, seed: int, torch_threads: int) -> dict:
  """Stable-Baselines3's A2C with the same settings: timings of `learn(timesteps)`."""
  # Imported only now: with torch's thread pools loaded, XLA CPU computations were seen to stall.
  import torch  # pylint: disable=import-outside-toplevel
  from stable_baselines3 import A2C  # pylint: disable=import-outside-toplevel
  from stable_baselines3.common.env_util import make_vec_env  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(torch_threads)
  env = make_vec_env(config.env_name, n_envs=config.num_envs, seed=seed)
  model = A2C("MlpPolicy", env, n_steps=config.num_steps, gamma=config.gamma, gae_lambda=config.gae_lambda,
              ent_coef=config.ent_coef, vf_coef=config.vf_coef / 2, max_grad_norm=config.max_grad_norm,
              learning_rate=config.learning_rate, rms_prop_eps=config.optimizer_eps, use_rms_prop=True,
              normalize_advantage=config.normalize_advantages, seed=seed, device="cpu",
              policy_kwargs={"net_arch": {"pi": [config.hidden_size] * 2, "vf": [config.hidden_size] * 2}})
  model.learn(total_timesteps=config.num_envs * config.num_steps)  # warm-up: one update
  start = time.perf_counter()
  model.learn(total_timesteps=timesteps, reset_num_timesteps=False)
  run_s = time.perf_counter() - start
  return {"env_steps": timesteps, "run_s": round(run_s, 3), "steps_per_s": timesteps / run_s,
          "torch_threads": torch_threads}


def run_bench(outdir: str, total_timesteps: int, seeds: int, peer_timesteps: int, seed: int,
              torch_threads: int) -> dict:
  """Measures both sides in this process, writes <outdir>/a2c.json and a2c.md, returns the JSON dict."""
  config = _config(total_timesteps)
  a2c.check_config(config)
  if seeds < 1 or peer_timesteps < 1:
    raise app.UsageError("--seeds and --peer_timesteps must be positive")
  one = time_jax(config, 1, seed)
  many = time_jax(config, seeds, seed)
  peer = time_peer(config, peer_timesteps, seed, torch_threads)
  env = report.environment(*PACKAGES)
  versions, devices = env["versions"], env["devices"]
  result = {
      "env": config.env_name,
      "hyperparameters": {k: config[k] for k in a2c.CONFIG_FIELDS},
      "jax_1_seed": one,
      f"jax_{seeds}_seeds": many,
      "peer_stable_baselines3": peer,
      "ratio_1_seed": one["steps_per_s"] / peer["steps_per_s"],
      f"ratio_{seeds}_seeds": many["steps_per_s"] / peer["steps_per_s"],
      "ratio_1_seed_with_compile": one["steps_per_s_with_compile"] / peer["steps_per_s"],
      f"ratio_{seeds}_seeds_with_compile": many["steps_per_s_with_compile"] / peer["steps_per_s"],
  }
  rows = [
      ("jax, 1 seed", one["env_steps"], one["compile_s"], one["run_s"], one["steps_per_s"],
       result["ratio_1_seed"], result["ratio_1_seed_with_compile"]),
      (f"jax, {seeds} seeds vmapped", many["env_steps"], many["compile_s"], many["run_s"], many["steps_per_s"],
       result[f"ratio_{seeds}_seeds"], result[f"ratio_{seeds}_seeds_with_compile"]),
      ("Stable-Baselines3 A2C, 1 seed", peer["env_steps"], 0.0, peer["run_s"], peer["steps_per_s"], 1.0, 1.0),
  ]
  lines = [
      f"A2C on {config.env_name}, {config.num_envs} envs x {config.num_steps} steps per update, RMSProp, "
      f"{devices['kind']} ({devices['platform']}).",
      "",
      "| implementation | env steps timed | compile s | run s | env steps/s | ratio | ratio incl. compile |",
      "|---|---:|---:|---:|---:|---:|---:|",
  ]
  lines += [f"| {name} | {steps:,} | {compile_s:.1f} | {run_s:.2f} | {rate:,.0f} | {ratio:.1f}x | {ratio_c:.1f}x |"
            for name, steps, compile_s, run_s, rate, ratio, ratio_c in rows]
  lines += [
      "",
      f"torch threads: {peer['torch_threads']}. Versions: jax {versions['jax']}, torch {versions['torch']}, "
      f"stable-baselines3 {versions['stable_baselines3']}, gymnasium {versions['gymnasium']}, "
      f"gymnax {versions['gymnax']}.",
      "",
      f"Command: `{report.command()}`",
  ]
  table = "\n".join(lines) + "\n"
  print(table)
  return report.write_report(outdir, "a2c", result, table, json_file="a2c.json", packages=PACKAGES)


def main(outdir: str) -> None:
  run_bench(outdir, _TOTAL.value, _SEEDS.value, _PEER_TIMESTEPS.value, _SEED.value, _TORCH_THREADS.value)


if __name__ == "__main__":
  report.main(main)
