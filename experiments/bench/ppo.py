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
  torch, at each thread count of `torch_threads` (the fastest compared). A full 5e5-step run would
  take minutes, so it times `peer_updates` rollout + update iterations after one untimed warm-up
  iteration.

Run:
  python -m experiments.bench.ppo --outdir=experiments/bench/results/ppo
  python -m experiments.bench.ppo --outdir=/tmp/ppo_bench --config.total_timesteps=32768 --config.peer_updates=20
  python -m experiments.bench.ppo --outdir=/tmp/ppo_bench --config=experiments/bench/ppo.py:smoke

Each side is measured once (experiments/harness.py's timer, one repeat, JAX first): the peer's
torch is imported only after the JAX side has been timed, since with torch's thread pools loaded
in the process XLA CPU computations were seen to stall (every thread parked on a futex).
"""

import time

import jax
import ml_collections
import numpy as np

from experiments import harness
from experiments import ppo as ppo_experiment
from research.rl import ppo
from research.train import check_positive, cli

# The peer's stack, recorded beside jax/flax/optax.
PACKAGES = ("torch", "gymnasium", "gymnax", "numpy")


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Two updates per JAX run and one peer iteration, for tests."""
  config.total_timesteps, config.seeds, config.peer_updates = 1024, 2, 1


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The benchmark's sizes; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.total_timesteps = 32_768  # environment steps per seed of each timed JAX run
  config.seeds = 8  # seeds of the vmapped JAX run
  config.peer_updates = 20  # timed rollout + update iterations of the peer loop
  config.seed = 0  # PRNG seed of both sides
  # A 64x64 MLP on 4 observations is far too small for intra-op parallelism: extra torch threads
  # only add synchronisation (and collapse when the cores are shared), so the peer gets one.
  config.torch_threads = (1,)  # torch.set_num_threads values the peer is timed at; the fastest is compared
  return cli.apply_presets(config, preset, PRESETS)


def _config(total_timesteps: int, num_seeds: int):
  config = ppo_experiment.get_config()
  config.total_timesteps = total_timesteps
  config.num_seeds = num_seeds
  return config


def jax_side(config, num_seeds: int, seed: int, out: dict) -> harness.Side:
  """`num_seeds` (1: no vmap) seeds of the jitted PPO: compiled in the warm-up, the compiled run timed.

  `out` receives the compile time and the run's final return.
  """
  train = ppo.make_train(config)
  if num_seeds == 1:
    fn, keys = jax.jit(train), jax.random.key(seed)
  else:
    fn, keys = jax.jit(jax.vmap(train)), jax.random.split(jax.random.key(seed), num_seeds)

  def compile_it():
    start = time.perf_counter()
    out["compiled"] = fn.lower(keys).compile()
    out["compile_s"] = time.perf_counter() - start

  def measure():
    start = time.perf_counter()
    result = jax.block_until_ready(out["compiled"](keys))
    run_s = time.perf_counter() - start
    out["final_return_mean"] = float(np.nanmean(np.atleast_1d(ppo.final_return(result.metrics))))
    return harness.Timing(run_s, num_seeds * ppo.num_updates(config) * config.num_envs * config.num_steps)

  return harness.Side(measure, warmup=compile_it)


def peer_side(config, updates: int, seed: int, threads: int, out: dict) -> harness.Side:
  """The torch + gymnasium loop: built with one untimed iteration in the warm-up, then `updates` iterations timed."""

  def start_peer():
    # torch is imported only now (see the module docstring).
    from experiments.bench import ppo_peer  # pylint: disable=import-outside-toplevel
    out["peer"] = ppo_peer.TorchPPO(config, seed)
    out["peer"].iteration()

  def measure():
    start = time.perf_counter()
    for _ in range(updates):
      out["peer"].iteration()
    return harness.Timing(time.perf_counter() - start, updates * config.num_envs * config.num_steps)

  return harness.Side(measure, warmup=start_peer, torch_threads=threads)


def _jax_row(timings, name: str, out: dict, num_seeds: int) -> dict:
  (timing,) = timings.measurements[name]
  return {"seeds": num_seeds, "env_steps": int(timing.work), "compile_s": round(out["compile_s"], 3),
          "run_s": round(timing.seconds, 3), "steps_per_s": timing.rate,
          "steps_per_s_with_compile": timing.work / (timing.seconds + out["compile_s"]),
          "final_return_mean": out["final_return_mean"]}


def run(bench: ml_collections.ConfigDict, outdir: str) -> dict:
  """Measures both sides in this process, writes <outdir>/ppo.json and ppo.md, returns the JSON dict."""
  config = _config(bench.total_timesteps, 1)
  ppo.check_config(config)  # bad fields fail before anything is timed
  for name in ("seeds", "peer_updates"):
    check_positive(name, bench[name])
  harness.check_counts("torch_threads", bench.torch_threads)
  seeds, threads = bench.seeds, list(dict.fromkeys(bench.torch_threads))
  outs = {"one": {}, "many": {}, **{f"peer_{t}": {} for t in threads}}
  timings = harness.compare({"jax_1_seed": jax_side(config, 1, bench.seed, outs["one"]),
                             f"jax_{seeds}_seeds": jax_side(config, seeds, bench.seed, outs["many"]),
                             **{f"peer_{t}": peer_side(config, bench.peer_updates, bench.seed, t, outs[f"peer_{t}"])
                                for t in threads}}, repeats=1)
  one = _jax_row(timings, "jax_1_seed", outs["one"], 1)
  many = _jax_row(timings, f"jax_{seeds}_seeds", outs["many"], seeds)
  peers = {}
  for t in threads:
    (timing,) = timings.measurements[f"peer_{t}"]
    peers[str(t)] = {"seeds": 1, "env_steps": int(timing.work), "run_s": round(timing.seconds, 3),
                     "steps_per_s": timing.rate, "torch_threads": t}
  peer = max(peers.values(), key=lambda row: row["steps_per_s"])  # the fastest thread setting
  env = harness.environment(*PACKAGES)
  devices = env["devices"]
  result = {
      "env": config.env_name,
      "hyperparameters": {k: config[k] for k in ppo.CONFIG_FIELDS},
      "jax_1_seed": one,
      f"jax_{seeds}_seeds": many,
      "peer_torch_gymnasium": peer,
      "peer_per_threads": peers,
      "ratio_1_seed": one["steps_per_s"] / peer["steps_per_s"],
      f"ratio_{seeds}_seeds": many["steps_per_s"] / peer["steps_per_s"],
      "ratio_1_seed_with_compile": one["steps_per_s_with_compile"] / peer["steps_per_s"],
      f"ratio_{seeds}_seeds_with_compile": many["steps_per_s_with_compile"] / peer["steps_per_s"],
      "timing": timings.record(),
  }
  rows = [
      ("jax, 1 seed", one, result["ratio_1_seed"], result["ratio_1_seed_with_compile"]),
      (f"jax, {seeds} seeds vmapped", many, result[f"ratio_{seeds}_seeds"],
       result[f"ratio_{seeds}_seeds_with_compile"]),
      ("torch + gymnasium loop, 1 seed", {**peer, "compile_s": 0.0}, 1.0, 1.0),
  ]
  table = harness.table(
      ["implementation", "env steps timed", "compile s", "run s", "env steps/s", "ratio", "ratio incl. compile"],
      [(name, f"{r['env_steps']:,}", f"{r['compile_s']:.1f}", f"{r['run_s']:.2f}", f"{r['steps_per_s']:,.0f}",
        f"{ratio:.1f}x", f"{ratio_c:.1f}x") for name, r, ratio, ratio_c in rows], align="lrrrrrr")
  text = harness.document(
      "PPO: the jitted research.rl.ppo vs a gymnasium + PyTorch loop",
      f"PPO on {config.env_name}, {config.num_envs} envs x {config.num_steps} steps per rollout, "
      f"{config.update_epochs} epochs x {config.num_minibatches} minibatches, {devices['kind']} "
      f"({devices['platform']}).",
      table,
      f"The peer is timed over {bench.peer_updates} rollout + update iterations after a warm-up one "
      f"(torch threads: {peer['torch_threads']}).\n"
      + harness.machine(env, timings.load_average, ("jax", "torch", "gymnasium", "gymnax")))
  print(text)
  return harness.write_report(outdir, "ppo", result, text, json_file="ppo.json", packages=PACKAGES)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
