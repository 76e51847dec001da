"""Sweep speed: N seeds as one vmapped program vs N sequential runs of the same step.

Every peer trains the same task for the same steps from the same seeds: `--model=gan`,
experiments/gan.py's GAN on ring8 (by default its mode_table preset, the sizes of the gan_modes
table), or `--model=classifier`, experiments/classifier.py's digits MLP (the model of the
Adam vs AdamW table). The peers' final parameters are compared (max_abs_diff). Compilation is
done before every timing; a timing runs from the host arrays to the final states
(block_until_ready), batch indexing included.

  vmapped           research.sweep: the loop's train step under lax.scan, vmapped over the
                    seeds, one compiled program.
  python_loop       the loop's train step (research.train.make_train_step) jitted with the
                    state donated and called once per step from Python with the Batcher's
                    batches, seed after seed: research.train.train without checkpoints or logs.
  sequential_scans  research.sweep's one-seed scan, jitted once and called per seed: separates
                    what vmap gains from what the scan gains.
  loop_members      research.train.train with research.train.Members (what experiments/sweep.py
                    runs): the vmapped step with the loop's prefetching, logging and
                    checkpoints; its rate is the loop's own steps_per_second (after the compiling
                    call), as member-steps per second.

Run:
  python -m experiments.bench.sweep --outdir=experiments/bench/results/sweep
  python -m experiments.bench.sweep --outdir=experiments/bench/results/sweep_classifier64 --model=classifier --seeds=64
  python -m experiments.bench.sweep --outdir=/tmp/sweep_bench --preset=gan,smoke
"""

import dataclasses
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import classifier
from experiments import gan as gan_experiment
from experiments import report
from research import data as data_lib
from research import sweep
from research.data import Batcher
from research.metrics import features
from research.models import gan
from research.train import Keys, Members, init_state, make_train_step, train

_SEEDS = flags.DEFINE_integer("seeds", 16, "Seeds (runs) per peer.")
_STEPS = flags.DEFINE_integer("steps", 200, "Train steps per run.")
_PRESET = flags.DEFINE_string("preset", "gan,mode_table", "experiments/gan.py preset of the benchmarked GAN "
                              "(gan,smoke: tiny nets, where per-step dispatch dominates).")
_MODEL = flags.DEFINE_enum("model", "gan", ["gan", "classifier"], "The benchmarked task.")


def _first(tree):
  return jax.tree.map(lambda x: np.asarray(x)[0], tree)


def time_vmapped(task, config, data, seeds, steps):
  """One program: vmap over seeds of research.sweep's scanned run."""
  batch_size = config.batch_size * task.batches_per_step
  run_all = jax.jit(jax.vmap(sweep.make_run(task, config, steps), in_axes=(None, 0, 0, 0)))
  device_data = {k: jnp.asarray(v) for k, v in data.items()}

  def feed():
    tables = sweep.index_tables(data, batch_size, seeds, steps)
    return device_data, jnp.asarray(seeds, jnp.int32), jnp.asarray(tables), {}

  compiled = run_all.lower(*feed()).compile()
  start = time.perf_counter()
  state, _ = compiled(*feed())
  jax.block_until_ready(state)
  return time.perf_counter() - start, _first(state.params)


def time_sequential_scans(task, config, data, seeds, steps):
  """One compiled scan per seed, called seed after seed."""
  batch_size = config.batch_size * task.batches_per_step
  run_one = jax.jit(sweep.make_run(task, config, steps))
  device_data = {k: jnp.asarray(v) for k, v in data.items()}
  feed = lambda s: (device_data, jnp.int32(s), jnp.asarray(sweep.index_tables(data, batch_size, [s], steps)[0]), {})
  compiled = run_one.lower(*feed(seeds[0])).compile()
  start = time.perf_counter()
  finals = [compiled(*feed(s))[0] for s in seeds]
  jax.block_until_ready(finals)
  return time.perf_counter() - start, jax.device_get(finals[0].params)


def time_python_loop(task, config, data, seeds, steps):
  """The loop's jitted, donated step called per step from Python, seed after seed."""
  batch_size = config.batch_size * task.batches_per_step
  init = jax.jit(lambda k, b: init_state(task, k, b, config.ema_decay))
  step_fn = jax.jit(make_train_step(task, config.ema_decay), donate_argnums=0)

  def run(seed, n):
    keys, batches = Keys.from_seed(seed), Batcher(data, batch_size, seed)
    state = init(keys.init, batches(0))
    for step in range(n):
      state, _ = step_fn(state, batches(step), jax.random.fold_in(keys.train, step))
    return state

  jax.block_until_ready(run(seeds[0], 1))  # compiles init and the step
  start = time.perf_counter()
  finals = [jax.block_until_ready(run(s, steps)) for s in seeds]
  elapsed = time.perf_counter() - start
  return elapsed, jax.device_get(finals[0].params)


def time_loop_members(task, config, data, seeds, steps):
  """research.train.train with Members: the loop's rate after its compiling call, as the time of all steps."""
  config = config.copy_and_resolve_references()
  config.steps, config.log_every, config.checkpoint_every = steps, steps, steps
  # The rate counts the calls after the first (compiling) one: keep at least two.
  config.steps_per_call = max(1, min(config.steps_per_call, steps // 2))
  training_only = dataclasses.replace(task, evaluate=None, sample=None)  # the rate is of the training steps
  with tempfile.TemporaryDirectory() as workdir:
    run = train(training_only, config, workdir, data, members=Members(tuple(seeds)))
  return steps / run.results["steps_per_second"], jax.device_get(_first(run.state.params))


def _max_abs_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a),
                                                                                   jax.tree.leaves(b)))


def main(outdir: str) -> None:
  seeds, steps = list(range(_SEEDS.value)), _STEPS.value
  if steps <= 0 or not seeds:
    raise app.UsageError("--steps and --seeds must be positive")
  if _MODEL.value == "gan":
    config = gan_experiment.get_config(_PRESET.value)
    config.steps = steps
    task = gan.make_task(config)
    data = data_lib.load(config.dataset, "train")
    what = (f"GAN seeds x {steps} steps (ring8, preset {_PRESET.value}, batch {config.batch_size}, generator "
            f"{config.gen_depth} x {config.gen_width}, discriminator {config.disc_depth} x {config.disc_width} "
            f"maxout {config.maxout_pieces})")
  else:
    config = classifier.get_config()
    config.steps = steps
    task = features.make_task(config)
    split = data_lib.load("digits", "train")
    data = {"image": split["image"], "label": split["label"]}
    what = f"digits classifier seeds x {steps} steps (MLP 64-256-64-10, batch {config.batch_size}, AdamW)"

  timings, params = {}, {}
  for name, fn in (("vmapped", time_vmapped), ("sequential_scans", time_sequential_scans),
                   ("python_loop", time_python_loop), ("loop_members", time_loop_members)):
    timings[name], params[name] = fn(task, config, data, seeds, steps)
  total_steps = steps * len(seeds)
  rows = {name: {"seconds": round(t, 3), "steps_per_s": round(total_steps / t, 1),
                 "vmapped_speedup": round(t / timings["vmapped"], 2),
                 "max_abs_diff_vs_vmapped": _max_abs_diff(params[name], params["vmapped"])}
          for name, t in timings.items()}
  env = report.environment()
  lines = [f"Sweep speed: {len(seeds)} {what}, {env['devices']['kind']}, jax {env['versions']['jax']}", "",
           "| peer | seconds | steps/s (all seeds) | vmapped speedup | max abs param diff vs vmapped |",
           "|---|---|---|---|---|"]
  for name, row in rows.items():
    lines.append(f"| {name} | {row['seconds']:.2f} | {row['steps_per_s']:.1f} | {row['vmapped_speedup']:.2f}x | "
                 f"{row['max_abs_diff_vs_vmapped']:.2e} |")
  table = "\n".join(lines)
  print(table)
  result = {"model": _MODEL.value, "seeds": len(seeds), "steps": steps, "preset": _PRESET.value, "peers": rows}
  report.write_report(outdir, "sweep", result, f"{table}\n\nCommand: `{report.command()}`\n", config=config,
                      json_file="sweep.json")


if __name__ == "__main__":
  report.main(main)
