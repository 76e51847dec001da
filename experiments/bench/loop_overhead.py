"""Overhead of the training loop: research.train.train vs a bare jitted step in a Python for-loop.

Both drive the same VAE (experiments/autoencoder.py's default config: batch size, model,
optimizer) with the same train step (research.train.make_train_step), the same batches
(research.data.Batcher) and the same per-step keys. The bare loop only calls the jitted,
donated step; research.train.train adds what a real run has: batches gathered and
transferred in a background thread (config.prefetch), metric collection, logging every
`log_every` steps and a checkpoint every `checkpoint_every` steps (the default config's
cadence).

Two pairs are timed: one step per call (steps_per_call = 1: the bare loop calls the step,
the loop its one-step program), and --steps_per_call steps per call (the bare loop calls
research.train.make_multi_step's `lax.scan` of that many steps on `Batcher.stacked`
batches, the loop runs with config.steps_per_call set to it). Each pair's overhead compares
the loop with the bare driver of the same steps per call.

The loop's per-step time is marginal, T(n_long) - T(n_short) over n_long - n_short steps,
so compilation, the first and last checkpoints and results.json cancel; with the default
cadence (log every 1000, checkpoint every 5000) and n_long - n_short = 5000 the difference
holds 5 log points and 1 periodic checkpoint, as in any 5000 steps of a long run. The bare
loop is timed over the same 5000 steps after a warm-up call. Each repeat times every driver in
an order rotated from repeat to repeat (experiments/harness.py's timer) and the median is
reported.

Run:
  python -m experiments.bench.loop_overhead --outdir=experiments/bench/results/loop_overhead
  python -m experiments.bench.loop_overhead --outdir=/tmp/loop_overhead \\
      --config=experiments/bench/loop_overhead.py:smoke
"""

import dataclasses
import tempfile
import time

import jax
import ml_collections

from experiments import autoencoder as experiment
from experiments import harness
from research import data as data_lib
from research.data import Batcher
from research.tasks import autoencoder
from research.train import ConfigError, Keys, check_positive, cli, init_state, make_multi_step, make_train_step, train

# Versions recorded beside jax/flax/optax: the loop's checkpointing and logging stack.
PACKAGES = ("orbax-checkpoint", "tensorboard")


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Runs of a few calls, for tests."""
  config.repeats, config.short_steps, config.span, config.steps_per_call = 1, 5, 10, 5


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The benchmark's protocol; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.repeats = 5  # repeats of every measurement, in rotated order; the median is reported
  config.short_steps = 1000  # steps of the short research.train.train run
  config.span = 5000  # timed steps: the long run has short_steps + span steps
  config.steps_per_call = 0  # steps per call of the second pair; 0: the experiment's default (25)
  return cli.apply_presets(config, preset, PRESETS)


def _bare_seconds(task, config, data, steps: int, steps_per_call: int) -> float:
  """Seconds for `steps` steps of the jitted step (or scan of steps) in a Python for-loop, after a warm-up call."""
  batcher = Batcher(data, config.batch_size, config.seed)
  keys = Keys.from_seed(config.seed)
  state = init_state(task, keys.init, batcher(0), config.ema_decay)
  step = make_train_step(task, config.ema_decay)
  if steps_per_call == 1:
    step_fn = jax.jit(step, donate_argnums=0)
    call = lambda state, s: step_fn(state, batcher(s), jax.random.fold_in(keys.train, s))
  else:
    multi = jax.jit(make_multi_step(step, keys.train), donate_argnums=0)
    call = lambda state, s: multi(state, batcher.stacked(s, steps_per_call))
  state, metrics = call(state, 0)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for s in range(steps_per_call, steps + steps_per_call, steps_per_call):
    state, metrics = call(state, s)
  jax.block_until_ready((state, metrics))
  return time.perf_counter() - start


def _loop_seconds(task, config, data, steps: int, steps_per_call: int) -> float:
  """Wall seconds of research.train.train for `steps` steps in a fresh workdir."""
  config = config.copy_and_resolve_references()
  config.steps = steps
  config.steps_per_call = steps_per_call
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    train(task, config, workdir, data)
    return time.perf_counter() - start


def run(bench: ml_collections.ConfigDict, outdir: str) -> dict:
  """Measures both drivers at 1 and `steps_per_call` steps per call, writes loop_overhead.json / .md into `outdir`."""
  repeats, short_steps, span = bench.repeats, bench.short_steps, bench.span
  for name in ("repeats", "short_steps", "span"):
    check_positive(name, bench[name])
  check_positive("steps_per_call", bench.steps_per_call, allow_zero=True)
  config = experiment.get_config()
  k = bench.steps_per_call or config.steps_per_call
  if short_steps % k or span % k:
    # A shorter last call would compile another program inside the timed steps.
    raise ConfigError(f"short_steps and span must be multiples of steps_per_call {k}")
  train_images = data_lib.load(config.dataset, "train")["image"]
  test_images = data_lib.load(config.dataset, "test")["image"]
  # Evaluation and pictures run once per run and cancel in the marginal time; leave them out.
  task = dataclasses.replace(autoencoder.make_task(config, test_images), evaluate=None, sample=None)
  data = {"image": train_images}

  ks = [1] if k == 1 else [1, k]

  def bare(n):
    return harness.Side(lambda: harness.Timing(_bare_seconds(task, config, data, span, n), span))

  def loop(n):
    return harness.Side(lambda: harness.Timing(_loop_seconds(task, config, data, short_steps + span, n)
                                               - _loop_seconds(task, config, data, short_steps, n), span))

  timings = harness.compare({**{f"bare_{n}": bare(n) for n in ks}, **{f"loop_{n}": loop(n) for n in ks}}, repeats,
                            label="loop_overhead", unit=" steps/s")
  drivers = {}
  for n in ks:
    bare_s, loop_s = timings.median_seconds(f"bare_{n}"), timings.median_seconds(f"loop_{n}")
    drivers[str(n)] = {"bare_steps_per_s": 1.0 / bare_s, "loop_steps_per_s": 1.0 / loop_s,
                       "overhead": loop_s / bare_s - 1.0, "bare_s_per_step": timings.seconds(f"bare_{n}"),
                       "loop_s_per_step": timings.seconds(f"loop_{n}")}
  one = timings.median_seconds("bare_1")
  env = harness.environment(*PACKAGES)
  result = {
      "drivers": drivers, "steps_per_call": ks, "repeats": repeats, "short_steps": short_steps, "span": span,
      "batch_size": config.batch_size, "log_every": config.log_every, "checkpoint_every": config.checkpoint_every,
      "prefetch": config.prefetch, "model": config.model, "hidden": list(config.hidden),
      "latent_dim": config.latent_dim, "timing": timings.record(),
  }
  rows = []
  for n in ks:
    bare_s, loop_s = timings.median_seconds(f"bare_{n}"), timings.median_seconds(f"loop_{n}")
    what = "bare jitted step in a Python for-loop" if n == 1 else "bare jitted scan of steps in a Python for-loop"
    rows.append((what, n, f"{1 / bare_s:.1f}", f"{1e3 * bare_s:.3f}", "1.000", f"{bare_s / one:.3f}"))
    rows.append((f"research.train.train (prefetch {config.prefetch}, log every {config.log_every}, checkpoint "
                 f"every {config.checkpoint_every})", n, f"{1 / loop_s:.1f}", f"{1e3 * loop_s:.3f}",
                 f"{loop_s / bare_s:.3f}", f"{loop_s / one:.3f}"))
  table = harness.table(["driver", "steps per call", "steps/s", "time per step (ms)", "vs bare, same steps per call",
                         "vs bare one-step loop"], rows, align="lrrrrr")
  spread = [f"{n} step{'s' if n > 1 else ''} per call: bare "
            f"{', '.join(f'{1e3 * t:.3f}' for t in drivers[str(n)]['bare_s_per_step'])}; "
            f"loop {', '.join(f'{1e3 * t:.3f}' for t in drivers[str(n)]['loop_s_per_step'])}" for n in ks]
  md = harness.document(
      "Training-loop overhead on the default VAE",
      f"VAE {tuple(config.hidden)} / latent {config.latent_dim}, batch {config.batch_size}, same step, batches "
      f"and keys in all drivers; {span} timed steps, median of {repeats} repeats in rotated order; the loop's time is "
      f"marginal (runs of {short_steps + span} and {short_steps} steps subtracted). Time per step is wall time "
      "over steps (columns \"vs\": ratios of time per step, lower is faster).\n"
      + harness.machine(env, timings.load_average, ("jax", "flax", "optax", "orbax-checkpoint")),
      table,
      "Overhead of the loop over the bare driver with the same steps per call (goal: at most +5%): "
      + "; ".join(f"{n} per call {100 * drivers[str(n)]['overhead']:+.1f}%" for n in ks) + ".\n"
      f"Per repeat (ms per step): {'; '.join(spread)}: differences smaller than this spread are noise.")
  result = harness.write_report(outdir, "loop_overhead", result, md, json_file="loop_overhead.json",
                                packages=PACKAGES)
  print(table)
  return result


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
