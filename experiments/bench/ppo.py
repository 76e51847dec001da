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
  python -m experiments.bench.ppo --outdir=experiments/bench/results/ppo
  python -m experiments.bench.ppo --seeds=8 --total_timesteps=32768 --peer_updates=20 --outdir=/tmp/ppo_bench
"""

import time

import jax
import numpy as np
from absl import app, flags

from experiments import ppo as ppo_experiment
from experiments import report
from research.rl import ppo

_TOTAL = flags.DEFINE_integer("total_timesteps", 32_768, "Environment steps per seed of each timed JAX run.")
_SEEDS = flags.DEFINE_integer("seeds", 8, "Seeds of the vmapped JAX run.")
_PEER_UPDATES = flags.DEFINE_integer("peer_updates", 20, "Timed rollout + update iterations of the peer loop.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of both sides.")
# A 64x64 MLP on 4 observations is far too small for intra-op parallelism: extra torch threads
# only add synchronisation (and collapse when the cores are shared), so the peer gets one.
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 1, "torch.set_num_threads for the peer.")

# The peer's stack, recorded beside jax/flax/optax.
PACKAGES = ("torch", "gymnasium", "gymnax", "numpy")


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


def run_bench(outdir: str, total_timesteps: int, seeds: int, peer_updates: int, seed: int,
              torch_threads: int) -> dict:
  """Measures both sides in this process, writes <outdir>/ppo.json and ppo.md, returns the JSON dict."""
  config = _config(total_timesteps, 1)
  ppo.check_config(config)  # bad flags fail before anything is timed
  if seeds < 1 or peer_updates < 1:
    raise app.UsageError("--seeds and --peer_updates must be positive")
  one = time_jax(config, 1, seed)
  many = time_jax(config, seeds, seed)
  # torch is imported only now: with its thread pools loaded in the process, XLA CPU
  # computations were seen to stall (every thread parked on a futex).
  from experiments.bench import ppo_peer  # pylint: disable=import-outside-toplevel
  peer = ppo_peer.time_peer(config, peer_updates, seed, torch_threads)
  env = report.environment(*PACKAGES)
  versions, devices = env["versions"], env["devices"]
  result = {
      "env": config.env_name,
      "hyperparameters": {k: config[k] for k in ppo.CONFIG_FIELDS},
      "jax_1_seed": one,
      f"jax_{seeds}_seeds": many,
      "peer_torch_gymnasium": peer,
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
      ("torch + gymnasium loop, 1 seed", peer["env_steps"], 0.0, peer["run_s"], peer["steps_per_s"], 1.0, 1.0),
  ]
  lines = [
      f"PPO on {config.env_name}, {config.num_envs} envs x {config.num_steps} steps per rollout, "
      f"{config.update_epochs} epochs x {config.num_minibatches} minibatches, "
      f"{devices['kind']} ({devices['platform']}).",
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
      f"Command: `{report.command()}`",
  ]
  table = "\n".join(lines) + "\n"
  print(table)
  return report.write_report(outdir, "ppo", result, table, json_file="ppo.json", packages=PACKAGES)


def main(outdir: str) -> None:
  run_bench(outdir, _TOTAL.value, _SEEDS.value, _PEER_UPDATES.value, _SEED.value, _TORCH_THREADS.value)


if __name__ == "__main__":
  report.main(main)
