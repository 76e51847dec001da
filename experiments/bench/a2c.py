"""A2C speed: environment steps per second, the jitted `research.rl.a2c` vs Stable-Baselines3's A2C.

Both sides run A2C on CartPole-v1 with experiments/a2c.py's defaults, which are SB3's (rl-zoo)
CartPole settings: 8 environments x 5 steps per update, n-step returns, RMSProp 7e-4 (decay
0.99, eps 1e-5 outside the root), constant learning rate, value weight 0.5 on SB3's MSE (1.0 on
our 0.5 * MSE), grad norm 0.5, tanh MLPs 64x64 for actor and critic.

- jax: the whole run as one XLA program, once for 1 seed and once for `seeds` vmapped seeds;
  compiled in the first warm-up (timed apart), then the compiled run is timed. The
  compile-inclusive rate is reported beside it.
- peer: `stable_baselines3.A2C("MlpPolicy", make_vec_env("CartPole-v1", n_envs=8))` with the same
  settings, built with one untimed update in the first warm-up, then `learn(peer_timesteps)` timed
  at each thread count of `torch_threads` (the fastest compared).

Every side is measured `repeats` times (one by default) in an order rotated from repeat to repeat
(experiments/harness.py's timer), JAX first; the ratios are the medians of the per-repeat ratios.
torch is imported only when the peer first runs.

Run:
  python -m experiments.bench.a2c --outdir=experiments/bench/results/a2c
  python -m experiments.bench.a2c --outdir=/tmp/a2c_bench --config=experiments/bench/a2c.py:smoke
"""

import time

import jax
import ml_collections
import numpy as np

from experiments import a2c as a2c_experiment
from experiments import harness
from research.rl import a2c
from research.train import check_positive, cli

# The peer's stack, recorded beside jax/flax/optax.
PACKAGES = ("torch", "gymnasium", "gymnax", "stable_baselines3", "numpy")


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Ten updates per JAX run and of the peer, for tests."""
  config.total_timesteps, config.seeds, config.peer_timesteps, config.repeats = 400, 2, 400, 1


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The benchmark's sizes; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.total_timesteps = 100_000  # environment steps per seed of each timed JAX run
  config.seeds = 8  # seeds of the vmapped JAX run
  config.peer_timesteps = 20_000  # environment steps of each timed peer run
  # Measurements of every side, in a rotated order. One by default, as experiments/bench/ppo.py: once torch's
  # thread pools are loaded (after the first peer measurement), XLA CPU computations were seen to stall.
  config.repeats = 1
  config.seed = 0  # PRNG seed of both sides
  config.torch_threads = (1,)  # torch.set_num_threads values the peer is timed at; the fastest is compared
  return cli.apply_presets(config, preset, PRESETS)


def a2c_config(total_timesteps: int):
  """experiments/a2c.py's default config, `total_timesteps` long, with SB3's constant learning rate."""
  config = a2c_experiment.get_config()
  config.total_timesteps = total_timesteps
  config.anneal_lr = False
  return config


def jax_side(config, num_seeds: int, seed: int, out: dict) -> harness.Side:
  """`num_seeds` (1: no vmap) seeds of the jitted A2C: compiled in the first warm-up, the compiled run timed."""
  train = a2c.make_train(config)
  if num_seeds == 1:
    fn, keys = jax.jit(train), jax.random.key(seed)
  else:
    fn, keys = jax.jit(jax.vmap(train)), jax.random.split(jax.random.key(seed), num_seeds)

  def compile_once():
    if "compiled" not in out:
      start = time.perf_counter()
      out["compiled"] = fn.lower(keys).compile()
      out["compile_s"] = time.perf_counter() - start

  def measure():
    start = time.perf_counter()
    result = jax.block_until_ready(out["compiled"](keys))
    run_s = time.perf_counter() - start
    out["final_return_mean"] = float(np.nanmean(np.atleast_1d(a2c.final_return(result.metrics))))
    return harness.Timing(run_s, num_seeds * a2c.num_updates(config) * config.num_envs * config.num_steps)

  return harness.Side(measure, warmup=compile_once)


def peer_side(config, timesteps: int, seed: int, threads: int, out: dict) -> harness.Side:
  """Stable-Baselines3's A2C with the same settings: built (and one update run) once, `learn(timesteps)` timed."""

  def build_once():
    if "model" in out:
      return
    from stable_baselines3 import A2C  # pylint: disable=import-outside-toplevel
    from stable_baselines3.common.env_util import make_vec_env  # pylint: disable=import-outside-toplevel
    env = make_vec_env(config.env_name, n_envs=config.num_envs, seed=seed)
    out["model"] = A2C(
        "MlpPolicy", env, n_steps=config.num_steps, gamma=config.gamma, gae_lambda=config.gae_lambda,
        ent_coef=config.ent_coef, vf_coef=config.vf_coef / 2, max_grad_norm=config.max_grad_norm,
        learning_rate=config.learning_rate, rms_prop_eps=config.optimizer_eps, use_rms_prop=True,
        normalize_advantage=config.normalize_advantages, seed=seed, device="cpu",
        policy_kwargs={"net_arch": {"pi": [config.hidden_size] * 2, "vf": [config.hidden_size] * 2}})
    out["model"].learn(total_timesteps=config.num_envs * config.num_steps)

  def measure():
    start = time.perf_counter()
    out["model"].learn(total_timesteps=timesteps, reset_num_timesteps=False)
    return harness.Timing(time.perf_counter() - start, timesteps)

  return harness.Side(measure, warmup=build_once, torch_threads=threads)


def run(bench: ml_collections.ConfigDict, outdir: str) -> dict:
  """Measures both sides in this process, writes <outdir>/a2c.json and a2c.md, returns the JSON dict."""
  config = a2c_config(bench.total_timesteps)
  a2c.check_config(config)  # bad fields fail before anything is timed
  for name in ("seeds", "peer_timesteps", "repeats"):
    check_positive(name, bench[name])
  harness.check_counts("torch_threads", bench.torch_threads)
  seeds, threads = bench.seeds, list(dict.fromkeys(bench.torch_threads))
  outs = {"one": {}, "many": {}, **{f"peer_{t}": {} for t in threads}}
  peers = [f"peer_{t}" for t in threads]
  timings = harness.compare({"jax_1_seed": jax_side(config, 1, bench.seed, outs["one"]),
                             f"jax_{seeds}_seeds": jax_side(config, seeds, bench.seed, outs["many"]),
                             **{f"peer_{t}": peer_side(config, bench.peer_timesteps, bench.seed, t, outs[f"peer_{t}"])
                                for t in threads}}, repeats=bench.repeats, label="a2c", unit=" env steps/s")

  def jax_row(name: str, out: dict, num_seeds: int) -> dict:
    rate = timings.median_rate(name)
    work = timings.measurements[name][0].work
    return {"seeds": num_seeds, "env_steps": int(work), "compile_s": round(out["compile_s"], 3),
            "run_s": round(work / rate, 3), "steps_per_s": rate,
            "steps_per_s_with_compile": work / (work / rate + out["compile_s"]),
            "final_return_mean": out["final_return_mean"],
            "ratio": timings.median_ratio(name, peers), "per_repeat_ratios": timings.ratios(name, peers)}

  one = jax_row("jax_1_seed", outs["one"], 1)
  many = jax_row(f"jax_{seeds}_seeds", outs["many"], seeds)
  peer = {"env_steps": bench.peer_timesteps, "steps_per_s": float(np.median(timings.best_rates(peers))),
          "per_threads": {str(t): timings.rates(f"peer_{t}") for t in threads}}
  for row in (one, many):
    row["ratio_with_compile"] = row["steps_per_s_with_compile"] / peer["steps_per_s"]
  env = harness.environment(*PACKAGES)
  devices = env["devices"]
  result = {"env": config.env_name, "hyperparameters": {k: config[k] for k in a2c.CONFIG_FIELDS},
            "jax_1_seed": one, f"jax_{seeds}_seeds": many, "peer_stable_baselines3": peer,
            "ratio_1_seed": one["ratio"], f"ratio_{seeds}_seeds": many["ratio"], "timing": timings.record()}
  rows = [("jax, 1 seed", one), (f"jax, {seeds} seeds vmapped", many)]
  table = harness.table(
      ["implementation", "env steps per run", "compile s", "env steps/s (median)", "ratio (median of repeats)",
       "ratio incl. compile"],
      [(name, f"{r['env_steps']:,}", f"{r['compile_s']:.1f}", f"{r['steps_per_s']:,.0f}", f"{r['ratio']:.1f}x",
        f"{r['ratio_with_compile']:.1f}x") for name, r in rows]
      + [("Stable-Baselines3 A2C, 1 seed", f"{peer['env_steps']:,}", "0.0", f"{peer['steps_per_s']:,.0f}", "1.0x",
          "1.0x")], align="lrrrrr")
  text = harness.document(
      "A2C: the jitted research.rl.a2c vs Stable-Baselines3",
      f"A2C on {config.env_name}, {config.num_envs} envs x {config.num_steps} steps per update, RMSProp, "
      f"{devices['kind']} ({devices['platform']}); {bench.repeats} repeats in a rotated order.",
      table,
      f"Per-repeat ratios, {seeds} seeds: " + ", ".join(f"{r:.1f}x" for r in many["per_repeat_ratios"]) + ".\n"
      + harness.machine(env, timings.load_average, ("jax", "torch", "stable_baselines3", "gymnasium", "gymnax")))
  print(text)
  return harness.write_report(outdir, "a2c", result, text, json_file="a2c.json", config=bench, packages=PACKAGES)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
