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
loop is timed over the same 5000 steps after a warm-up call. Repeats alternate the drivers
and the median is reported.

Run:
  python -m experiments.bench.loop_overhead --outdir=experiments/bench/results/loop_overhead
"""

import dataclasses
import statistics
import tempfile
import time

import jax
from absl import app, flags

from experiments import autoencoder as experiment
from experiments import report
from research import data as data_lib
from research.data import Batcher
from research.models import autoencoder
from research.train import Keys, init_state, make_multi_step, make_train_step, train

_REPEATS = flags.DEFINE_integer("repeats", 5, "Alternating repeats of every measurement (median reported).")
_SHORT = flags.DEFINE_integer("short_steps", 1000, "Steps of the short research.train.train run.")
_SPAN = flags.DEFINE_integer("span", 5000, "Timed steps: the long run has short_steps + span steps.")
_STEPS_PER_CALL = flags.DEFINE_integer("steps_per_call", None,
                                       "Steps per call of the second pair (default: the experiment's default).")

# Versions recorded beside jax/flax/optax: the loop's checkpointing and logging stack.
PACKAGES = ("orbax-checkpoint", "tensorboard")


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


def run_bench(outdir: str, repeats: int, short_steps: int, span: int, steps_per_call: int | None = None) -> dict:
  """Measures both drivers at 1 and `steps_per_call` steps per call, writes loop_overhead.json / .md into `outdir`."""
  config = experiment.get_config()
  k = config.steps_per_call if steps_per_call is None else steps_per_call
  if k < 1 or short_steps < 1 or span < 1 or repeats < 1:
    raise app.UsageError("--steps_per_call, --short_steps, --span and --repeats must be positive")
  if short_steps % k or span % k:
    # A shorter last call would compile another program inside the timed steps.
    raise app.UsageError(f"--short_steps and --span must be multiples of steps_per_call {k}")
  train_images = data_lib.load(config.dataset, "train")["image"]
  test_images = data_lib.load(config.dataset, "test")["image"]
  # Evaluation and pictures run once per run and cancel in the marginal time; leave them out.
  task = dataclasses.replace(autoencoder.make_task(config, test_images), evaluate=None, sample=None)
  data = {"image": train_images}

  ks = [1] if k == 1 else [1, k]
  bare = {n: [] for n in ks}
  loop = {n: [] for n in ks}
  for _ in range(repeats):
    for n in ks:
      bare[n].append(_bare_seconds(task, config, data, span, n) / span)
      loop[n].append((_loop_seconds(task, config, data, short_steps + span, n)
                      - _loop_seconds(task, config, data, short_steps, n)) / span)
  drivers = {}
  for n in ks:
    bare_s, loop_s = statistics.median(bare[n]), statistics.median(loop[n])
    drivers[str(n)] = {"bare_steps_per_s": 1.0 / bare_s, "loop_steps_per_s": 1.0 / loop_s,
                       "overhead": loop_s / bare_s - 1.0, "bare_s_per_step": bare[n], "loop_s_per_step": loop[n]}
  one = statistics.median(bare[1])
  env = report.environment(*PACKAGES)
  versions, devices = env["versions"], env["devices"]
  result = {
      "drivers": drivers, "steps_per_call": ks, "repeats": repeats, "short_steps": short_steps, "span": span,
      "batch_size": config.batch_size, "log_every": config.log_every, "checkpoint_every": config.checkpoint_every,
      "prefetch": config.prefetch, "model": config.model, "hidden": list(config.hidden),
      "latent_dim": config.latent_dim,
  }
  rows = [
      "| driver | steps per call | steps/s | time per step (ms) | vs bare, same steps per call | "
      "vs bare one-step loop |",
      "|---|---:|---:|---:|---:|---:|",
  ]
  for n in ks:
    bare_s, loop_s = statistics.median(bare[n]), statistics.median(loop[n])
    what = "bare jitted step in a Python for-loop" if n == 1 else "bare jitted scan of steps in a Python for-loop"
    rows.append(f"| {what} | {n} | {1 / bare_s:.1f} | {1e3 * bare_s:.3f} | 1.000 | {bare_s / one:.3f} |")
    rows.append(f"| research.train.train (prefetch {config.prefetch}, log every {config.log_every}, checkpoint "
                f"every {config.checkpoint_every}) | {n} | {1 / loop_s:.1f} | {1e3 * loop_s:.3f} | "
                f"{loop_s / bare_s:.3f} | {loop_s / one:.3f} |")
  table = "\n".join(rows)
  spread = [f"{n} step{'s' if n > 1 else ''} per call: bare {', '.join(f'{1e3 * t:.3f}' for t in bare[n])}; "
            f"loop {', '.join(f'{1e3 * t:.3f}' for t in loop[n])}" for n in ks]
  md = "\n".join([
      "# Training-loop overhead on the default VAE",
      "",
      f"Command: `{report.command()}`",
      "",
      f"VAE {tuple(config.hidden)} / latent {config.latent_dim}, batch {config.batch_size}, same step, batches "
      f"and keys in all drivers; {span} timed steps, median of {repeats} alternating repeats; the loop's time is "
      f"marginal (runs of {short_steps + span} and {short_steps} steps subtracted). Time per step is wall time "
      "over steps (columns \"vs\": ratios of time per step, lower is faster).",
      f"Machine: {devices['cpu_count']} CPU cores shared with other work, {devices['count']} {devices['platform']} "
      f"device(s) ({devices['kind']}); jax {versions['jax']}, flax {versions['flax']}, optax {versions['optax']}, "
      f"orbax-checkpoint {versions['orbax-checkpoint']}.",
      "",
      table,
      "",
      "Overhead of the loop over the bare driver with the same steps per call (goal: at most +5%): "
      + "; ".join(f"{n} per call {100 * drivers[str(n)]['overhead']:+.1f}%" for n in ks) + ".",
      f"Per repeat (ms per step): {'; '.join(spread)}: differences smaller than this spread are noise.",
      "",
  ])
  result = report.write_report(outdir, "loop_overhead", result, md, json_file="loop_overhead.json",
                               packages=PACKAGES)
  print(table)
  return result


def main(outdir: str) -> None:
  run_bench(outdir, _REPEATS.value, _SHORT.value, _SPAN.value, _STEPS_PER_CALL.value)


if __name__ == "__main__":
  report.main(main)
