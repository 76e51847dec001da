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
  python -m experiments.bench.sweep --outdir=experiments/bench/results/sweep_classifier64 --config.model=classifier \
      --config.seeds=64
  python -m experiments.bench.sweep --outdir=/tmp/sweep_bench --config=experiments/bench/sweep.py:smoke

Every peer is measured `repeats` times (experiments/harness.py's timer, in rotated order; one
by default) and its median is reported.
"""

import dataclasses
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import classifier
from experiments import gan as gan_experiment
from experiments import harness
from research import data as data_lib
from research import sweep
from research.data import Batcher
from research.tasks import classifier as classifier_tasks
from research.tasks import gan
from research.train import (ConfigError, Keys, Members, check_choice, check_positive, cli, init_state,
                            make_train_step, train)

MODELS = ("gan", "classifier")


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Tiny GAN nets (where per-step dispatch dominates), 2 seeds of 3 steps, for tests."""
  config.seeds, config.steps, config.gan_preset = 2, 3, "gan,smoke"


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The benchmarked task and sweep; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.model = "gan"  # the benchmarked task: gan (experiments/gan.py on ring8) or classifier (the AdamW table's)
  config.gan_preset = "gan,mode_table"  # experiments/gan.py preset of the GAN (mode_table: the gan_modes table's sizes)
  config.seeds = 16  # seeds (runs) per peer
  config.steps = 200  # train steps per run
  config.repeats = 1  # measurements of every peer, in rotated order; the median is reported
  return cli.apply_presets(config, preset, PRESETS)


def _first(tree):
  return jax.tree.map(lambda x: np.asarray(x)[0], tree)


def _measure(fn: Callable[[], Any]) -> tuple[harness.Side, list]:
  """(a side timing `fn()`, the list that holds what its last call returned: the final state(s))."""
  kept = []

  def measure():
    start = time.perf_counter()
    kept[:] = [fn()]
    return time.perf_counter() - start

  return harness.Side(measure), kept


def vmapped(task, config, data, seeds, steps) -> Callable[[], Any]:
  """One program: vmap over seeds of research.sweep's scanned run (compiled here)."""
  batch_size = config.batch_size * task.batches_per_step
  run_all = jax.jit(jax.vmap(sweep.make_run(task, config, steps), in_axes=(None, 0, 0, 0)))
  device_data = {k: jnp.asarray(v) for k, v in data.items()}

  def feed():
    tables = sweep.index_tables(data, batch_size, seeds, steps)
    return device_data, jnp.asarray(seeds, jnp.int32), jnp.asarray(tables), {}

  compiled = run_all.lower(*feed()).compile()
  return lambda: jax.block_until_ready(compiled(*feed())[0])


def sequential_scans(task, config, data, seeds, steps) -> Callable[[], Any]:
  """One compiled scan per seed (compiled here), called seed after seed."""
  batch_size = config.batch_size * task.batches_per_step
  run_one = jax.jit(sweep.make_run(task, config, steps))
  device_data = {k: jnp.asarray(v) for k, v in data.items()}
  feed = lambda s: (device_data, jnp.int32(s), jnp.asarray(sweep.index_tables(data, batch_size, [s], steps)[0]), {})
  compiled = run_one.lower(*feed(seeds[0])).compile()

  def run_all():
    return jax.block_until_ready([compiled(*feed(s))[0] for s in seeds])

  return run_all


def python_loop(task, config, data, seeds, steps) -> Callable[[], Any]:
  """The loop's jitted, donated step (compiled here) called per step from Python, seed after seed."""
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
  return lambda: [jax.block_until_ready(run(s, steps)) for s in seeds]


def loop_members(task, config, data, seeds, steps) -> tuple[harness.Side, list]:
  """research.train.train with Members: the loop's rate after its compiling call, as the time of all steps."""
  config = config.copy_and_resolve_references()
  config.steps, config.log_every, config.checkpoint_every = steps, steps, steps
  # The rate counts the calls after the first (compiling) one: keep at least two.
  config.steps_per_call = max(1, min(config.steps_per_call, steps // 2))
  training_only = dataclasses.replace(task, evaluate=None, sample=None)  # the rate is of the training steps
  params = []

  def measure():
    with tempfile.TemporaryDirectory() as workdir:
      run = train(training_only, config, workdir, data, members=Members(tuple(seeds)))
    params[:] = [run.state]
    return steps / run.results["steps_per_second"]

  return harness.Side(measure), params


def _max_abs_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a),
                                                                                   jax.tree.leaves(b)))


def run(bench: ml_collections.ConfigDict, outdir: str) -> dict:
  """Times every peer, writes sweep.json / sweep.md into `outdir`, returns the JSON dict."""
  check_choice("model", bench.model, MODELS)
  for name in ("seeds", "steps", "repeats"):
    check_positive(name, bench[name])
  seeds, steps = list(range(bench.seeds)), bench.steps
  if bench.model == "gan":
    try:
      config = gan_experiment.get_config(bench.gan_preset)
    except ValueError as e:
      raise ConfigError(f"gan_preset: {e}") from None
    config.steps = steps
    task = gan.make_task(config)
    data = data_lib.load(config.dataset, "train")
    what = (f"GAN seeds x {steps} steps (ring8, preset {bench.gan_preset}, batch {config.batch_size}, generator "
            f"{config.gen_depth} x {config.gen_width}, discriminator {config.disc_depth} x {config.disc_width} "
            f"maxout {config.maxout_pieces})")
  else:
    config = classifier.get_config()
    config.steps = steps
    if config.optimizer.warmup_steps > steps:  # a short (smoke) run: a tenth of it warms up
      config.optimizer.warmup_steps = steps // 10
    task = classifier_tasks.make_task(config)
    split = data_lib.load("digits", "train")
    data = {"image": split["image"], "label": split["label"]}
    what = f"digits classifier seeds x {steps} steps (MLP 64-256-64-10, batch {config.batch_size}, AdamW)"

  finals, sides = {}, {}
  for name, build in (("vmapped", vmapped), ("sequential_scans", sequential_scans), ("python_loop", python_loop)):
    sides[name], finals[name] = _measure(build(task, config, data, seeds, steps))
  sides["loop_members"], finals["loop_members"] = loop_members(task, config, data, seeds, steps)
  timings = harness.compare(sides, bench.repeats)
  # The first seed's final parameters of each peer: the vmapped states hold every seed, the loops a list of states.
  params = {name: _first(state.params) if name in ("vmapped", "loop_members") else jax.device_get(state[0].params)
            for name, (state,) in finals.items()}
  total_steps = steps * len(seeds)
  rows = {name: {"seconds": round(timings.median_seconds(name), 3),
                 "steps_per_s": round(total_steps / timings.median_seconds(name), 1),
                 "vmapped_speedup": round(timings.median_seconds(name) / timings.median_seconds("vmapped"), 2),
                 "max_abs_diff_vs_vmapped": _max_abs_diff(params[name], params["vmapped"])}
          for name in sides}
  env = harness.environment()
  table = harness.table(
      ["peer", "seconds", "steps/s (all seeds)", "vmapped speedup", "max abs param diff vs vmapped"],
      [(name, f"{row['seconds']:.2f}", f"{row['steps_per_s']:.1f}", f"{row['vmapped_speedup']:.2f}x",
        f"{row['max_abs_diff_vs_vmapped']:.2e}") for name, row in rows.items()], align="lrrrr")
  text = harness.document(
      f"Sweep speed: {len(seeds)} seeds as one vmapped program vs sequential runs",
      f"{len(seeds)} {what}, {env['devices']['kind']}, jax {env['versions']['jax']}; median of {bench.repeats} "
      "measurement(s) per peer.", table)
  print(table)
  result = {"model": bench.model, "seeds": len(seeds), "steps": steps, "preset": bench.gan_preset, "peers": rows,
            "timing": timings.record()}
  return harness.write_report(outdir, "sweep", result, text, config=config, json_file="sweep.json")



if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
