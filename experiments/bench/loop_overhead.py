"""Overhead of the training loop: research.train.train vs a bare jitted step in a Python for-loop.

Both drive the same VAE (experiments/autoencoder.py's default config: batch size, model,
optimizer) with the same train step (research.train.make_train_step), the same batches
(research.data.Batcher) and the same per-step keys. The bare loop only calls the jitted,
donated step; research.train.train adds what a real run has: sharded batch assembly,
metric collection, logging every `log_every` steps and a checkpoint every
`checkpoint_every` steps (the default config's cadence).

The loop's per-step time is marginal, T(n_long) - T(n_short) over n_long - n_short steps,
so compilation, the first and last checkpoints and results.json cancel; with the default
cadence (log every 1000, checkpoint every 5000) and n_long - n_short = 5000 the difference
holds 5 log points and 1 periodic checkpoint, as in any 5000 steps of a long run. The bare
loop is timed over the same 5000 steps after a warm-up call. Repeats alternate the two and
the median is reported.

Run:
  python -m experiments.bench.loop_overhead --outdir=experiments/bench/results/loop_overhead
"""

import dataclasses
import statistics
import tempfile
import time

import jax
from absl import flags

from experiments import autoencoder as experiment
from experiments import report
from research import data as data_lib
from research.data import Batcher
from research.models import autoencoder
from research.train import Keys, init_state, make_train_step, train

_REPEATS = flags.DEFINE_integer("repeats", 3, "Alternating repeats of both measurements (median reported).")
_SHORT = flags.DEFINE_integer("short_steps", 1000, "Steps of the short research.train.train run.")
_SPAN = flags.DEFINE_integer("span", 5000, "Timed steps: the long run has short_steps + span steps.")

# Versions recorded beside jax/flax/optax: the loop's checkpointing and logging stack.
PACKAGES = ("orbax-checkpoint", "clu")


def _bare_seconds(task, config, data, steps: int) -> float:
  """Seconds for `steps` calls of the jitted step in a Python for-loop (after a warm-up call)."""
  batcher = Batcher(data, config.batch_size, config.seed)
  keys = Keys.from_seed(config.seed)
  state = init_state(task, keys.init, batcher(0), config.ema_decay)
  step_fn = jax.jit(make_train_step(task, config.ema_decay), donate_argnums=0)
  state, metrics = step_fn(state, batcher(0), jax.random.fold_in(keys.train, 0))
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for step in range(1, steps + 1):
    state, metrics = step_fn(state, batcher(step), jax.random.fold_in(keys.train, step))
  jax.block_until_ready((state, metrics))
  return time.perf_counter() - start


def _loop_seconds(task, config, data, steps: int) -> float:
  """Wall seconds of research.train.train for `steps` steps in a fresh workdir."""
  config = config.copy_and_resolve_references()
  config.steps = steps
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    train(task, config, workdir, data)
    return time.perf_counter() - start


def run_bench(outdir: str, repeats: int, short_steps: int, span: int) -> dict:
  """Measures both, writes loop_overhead.json / .md into `outdir` and returns the result."""
  config = experiment.get_config()
  train_images = data_lib.load(config.dataset, "train")["image"]
  test_images = data_lib.load(config.dataset, "test")["image"]
  # Evaluation and pictures run once per run and cancel in the marginal time; leave them out.
  task = dataclasses.replace(autoencoder.make_task(config, test_images), evaluate=None, sample=None)
  data = {"image": train_images}

  bare, loop = [], []
  for _ in range(repeats):
    bare.append(_bare_seconds(task, config, data, span) / span)
    loop.append((_loop_seconds(task, config, data, short_steps + span)
                 - _loop_seconds(task, config, data, short_steps)) / span)
  bare_s, loop_s = statistics.median(bare), statistics.median(loop)
  overhead = loop_s / bare_s - 1.0
  env = report.environment(*PACKAGES)
  versions, devices = env["versions"], env["devices"]
  result = {
      "bare_steps_per_s": 1.0 / bare_s, "loop_steps_per_s": 1.0 / loop_s, "overhead": overhead,
      "bare_s_per_step": bare, "loop_s_per_step": loop, "repeats": repeats, "short_steps": short_steps,
      "span": span, "batch_size": config.batch_size, "log_every": config.log_every,
      "checkpoint_every": config.checkpoint_every, "model": config.model, "hidden": list(config.hidden),
      "latent_dim": config.latent_dim,
  }
  table = "\n".join([
      "| driver | steps/s | time per step (ms) | vs bare loop |",
      "|---|---|---|---|",
      f"| bare jitted step in a Python for-loop | {1 / bare_s:.1f} | {1e3 * bare_s:.3f} | 1.000 |",
      f"| research.train.train (log every {config.log_every}, checkpoint every {config.checkpoint_every}) | "
      f"{1 / loop_s:.1f} | {1e3 * loop_s:.3f} | {loop_s / bare_s:.3f} |",
  ])
  md = "\n".join([
      "# Training-loop overhead on the default VAE",
      "",
      f"Command: `{report.command()}`",
      "",
      f"VAE {tuple(config.hidden)} / latent {config.latent_dim}, batch {config.batch_size}, same step, batches "
      f"and keys in both; {span} timed steps, median of {repeats} alternating repeats; the loop's time is "
      f"marginal (runs of {short_steps + span} and {short_steps} steps subtracted).",
      f"Machine: {devices['cpu_count']} CPU cores, {devices['count']} {devices['platform']} device(s) "
      f"({devices['kind']}); jax {versions['jax']}, flax {versions['flax']}, optax {versions['optax']}, "
      f"orbax-checkpoint {versions['orbax-checkpoint']}.",
      "",
      table,
      "",
      f"Overhead of the loop: {100 * overhead:+.1f}% (goal: at most +5%). Per repeat (ms per step): bare "
      f"{', '.join(f'{1e3 * t:.3f}' for t in bare)}; loop {', '.join(f'{1e3 * t:.3f}' for t in loop)}: "
      "differences smaller than this spread are noise.",
      "",
  ])
  result = report.write_report(outdir, "loop_overhead", result, md, json_file="loop_overhead.json",
                               packages=PACKAGES)
  print(table)
  print(f"overhead {100 * overhead:+.1f}%")
  return result


def main(outdir: str) -> None:
  run_bench(outdir, _REPEATS.value, _SHORT.value, _SPAN.value)


if __name__ == "__main__":
  report.main(main)
