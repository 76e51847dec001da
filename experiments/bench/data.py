"""Data sources feeding the default VAE: in-memory arrays vs a memory-mapped file vs ArrayRecord.

The same run (experiments/autoencoder.py's default config and task) reads its batches from
  in_memory  the training images as a numpy array (research.data.load), the loop's default;
  memmap     an ArraySource over np.load(mmap_mode="r") of a temporary .npy file: the data
             on disk, read by index (the file is 96 KB, so after the first epoch it is read
             from the page cache: this times the memmap read path, not the disk);
  records    research.data.source("digits", "train"): TFDS's ArrayRecord data source,
             records read by index and decoded into numpy per example,
each with config.prefetch at its default (batches gathered and transferred in a background
thread while the step runs) and at 0 (gathered in the loop, between steps). Every source
yields the same batches, so every run trains to the same loss (checked).

The rate is the run's results.json `steps_per_second` (the steps after the first,
compiling call). Repeats rotate the order of the runs (experiments/harness.py's timer); each
ratio divides a run's rate by the in-memory run with default prefetch of the same repeat, and
medians are reported.
Beside it, the cost of one call's gather (`Batcher.stacked` for steps_per_call batches,
or one batch), per example; for the records, the part spent reading the raw records
(array_record) is measured apart from TFDS's per-example decoding.

Run:
  python -m experiments.bench.data --outdir=experiments/bench/results/data
  python -m experiments.bench.data --outdir=/tmp/data_bench --config=experiments/bench/data.py:smoke
"""

import dataclasses
import os
import tempfile
import time

import ml_collections
import numpy as np

from experiments import autoencoder as experiment
from experiments import harness
from research import data as data_lib
from research.data import ArraySource, Batcher
from research.tasks import autoencoder
from research.train import ConfigError, check_positive, cli, train

SOURCES = ("in_memory", "memmap", "records")
# Versions recorded beside jax/flax/optax: the record reader's stack.
PACKAGES = ("tensorflow-datasets", "array-record", "numpy")


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Two calls per run, one repeat, for tests."""
  config.steps = 2 * experiment.get_config().steps_per_call
  config.repeats, config.gather_calls = 1, 2


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The benchmark's protocol; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.steps = 3000  # steps of each run (the rate leaves out the first, compiling call)
  config.repeats = 3  # repeats of every run, in rotated order; medians are reported
  config.gather_calls = 20  # calls timed for the per-example gather cost
  return cli.apply_presets(config, preset, PRESETS)


def make_sources(images: np.ndarray, directory: str) -> dict:
  """The three forms of the same training images; the memmap's file is written into `directory`."""
  path = os.path.join(directory, "images.npy")
  np.save(path, images)
  records = data_lib.source("digits", "train", features=["image"])
  return {"in_memory": {"image": images}, "memmap": ArraySource({"image": np.load(path, mmap_mode="r")}),
          "records": records}


def gather_cost(source, batcher_args: tuple, steps_per_call: int, calls: int) -> dict:
  """Microseconds per example of the loop's gather of one call's batches from `source`.

  For a RecordSource, `read_us_per_example` is the part spent reading the raw records.
  """
  batcher = Batcher(source, *batcher_args)
  gather = (lambda s: batcher(s)) if steps_per_call == 1 else (lambda s: batcher.stacked(s, steps_per_call))
  gather(0)  # opens files, fills caches
  examples = calls * steps_per_call * batcher.batch_size
  start = time.perf_counter()
  for call in range(1, calls + 1):
    gather(call * steps_per_call)
  out = {"us_per_example": 1e6 * (time.perf_counter() - start) / examples}
  raw = getattr(getattr(source, "records", None), "data_source", None)
  if raw is not None:
    indices = [np.concatenate([batcher.indices(s) for s in range(c * steps_per_call, (c + 1) * steps_per_call)])
               for c in range(1, calls + 1)]
    start = time.perf_counter()
    for idx in indices:
      raw.__getitems__([int(i) for i in idx])
    out["read_us_per_example"] = 1e6 * (time.perf_counter() - start) / examples
  return out


def run(bench: ml_collections.ConfigDict, outdir: str) -> dict:
  """Trains the VAE from each source with and without prefetch; writes data.json / data.md into `outdir`."""
  steps, repeats, gather_calls = bench.steps, bench.repeats, bench.gather_calls
  check_positive("repeats", repeats)
  check_positive("gather_calls", gather_calls)
  config = experiment.get_config()
  config.steps = steps
  k, default_prefetch = config.steps_per_call, config.prefetch
  if steps % k or steps < 2 * k:
    # The rate needs a call after the compiling one; a shorter last call would compile again.
    raise ConfigError(f"steps must be a multiple of the default steps_per_call {k}, at least {2 * k}, got {steps}")
  if default_prefetch == 0:
    raise ConfigError("the experiment's default prefetch is 0: nothing to compare prefetch with")
  prefetches = (default_prefetch, 0)
  images = data_lib.load(config.dataset, "train")["image"]
  test_images = data_lib.load(config.dataset, "test")["image"]
  # Evaluation and pictures come after the rate is measured; leave them out.
  task = dataclasses.replace(autoencoder.make_task(config, test_images), evaluate=None, sample=None)
  start = time.perf_counter()
  names = {(s, p): f"{s}/prefetch={p}" for s in SOURCES for p in prefetches}
  with tempfile.TemporaryDirectory() as directory:
    sources = make_sources(images, directory)
    batcher_args = (config.batch_size, config.seed)
    first = {name: Batcher(src, *batcher_args)(0)["image"] for name, src in sources.items()}
    if not all(np.array_equal(first["in_memory"], batch) for batch in first.values()):
      raise AssertionError("the sources disagree on the first batch")
    gather = {name: gather_cost(src, batcher_args, k, gather_calls) for name, src in sources.items()}

    def measure(source, prefetch):
      def train_once():
        run_config = config.copy_and_resolve_references()
        run_config.prefetch = prefetch
        with tempfile.TemporaryDirectory() as workdir:
          results = train(task, run_config, workdir, sources[source]).results
        return harness.Timing.from_rate(results["steps_per_second"], info=results["train_loss"])
      return harness.Side(train_once)

    timings = harness.compare({name: measure(*key) for key, name in names.items()}, repeats, label="data",
                              unit=" steps/s")

  rows = {}
  for (source, prefetch), name in names.items():
    rows[name] = {
        "source": source, "prefetch": prefetch, "steps_per_s": timings.median_rate(name),
        "steps_per_s_per_repeat": timings.rates(name),
        "ratio_vs_in_memory": timings.median_ratio(name, names["in_memory", default_prefetch]),
        "ratio_vs_in_memory_same_prefetch": timings.median_ratio(name, names["in_memory", prefetch]),
        "train_loss": timings.info(name)[-1],
    }
  losses = {row["train_loss"] for row in rows.values()}
  env = harness.environment(*PACKAGES)
  result = {
      "runs": rows, "gather": gather, "same_train_loss": len(losses) == 1, "steps": steps, "repeats": repeats,
      "steps_per_call": k, "default_prefetch": default_prefetch, "batch_size": config.batch_size,
      "log_every": config.log_every, "checkpoint_every": config.checkpoint_every, "gather_calls": gather_calls,
      "load_average": timings.load_average["end"], "timing": timings.record(),
  }
  table = harness.table(
      ["source", "prefetch", "steps/s", f"vs in-memory (prefetch {default_prefetch})", "vs in-memory (same prefetch)",
       "per repeat (steps/s)"],
      [(row["source"], row["prefetch"], f"{row['steps_per_s']:,.1f}", f"**{row['ratio_vs_in_memory']:.2f}x**",
        f"{row['ratio_vs_in_memory_same_prefetch']:.2f}x",
        ", ".join(f"{v:,.0f}" for v in row["steps_per_s_per_repeat"]))
       for row in rows.values()], align="lrrrrl")
  per_step = {name: g["us_per_example"] * config.batch_size / 1e3 for name, g in gather.items()}
  gather_text = (f"Gather cost per example ({gather_calls} calls of {k} batch{'es' if k > 1 else ''}): "
                 + "; ".join(f"{name} {g['us_per_example']:.2f} us ({per_step[name]:.2f} ms per step)"
                             for name, g in gather.items()) + ".")
  record = gather["records"]
  if "read_us_per_example" in record:
    decode = record["us_per_example"] - record["read_us_per_example"]
    gather_text += (
        f"\nOf the records' {record['us_per_example']:.1f} us, reading the raw records (array_record) takes "
        f"{record['read_us_per_example']:.1f} us and TFDS's per-example decoding (Python: parsing the "
        f"tf.train.Example, nesting the feature dict) the other {decode:.1f} us. That caps the records at about "
        f"{1e3 / per_step['records']:,.0f} steps/s on one core, whatever the model; decoding holds the GIL, so "
        "prefetch hides it only behind the compiled step (which releases the GIL), not behind other Python.")
  markdown = harness.document(
      "Data sources feeding the default VAE",
      f"experiments/autoencoder.py's default VAE (batch {config.batch_size}, steps_per_call {k}) for {steps:,} "
      f"steps per run, {repeats} repeats in rotated order, medians; rates are results.json `steps_per_second` "
      "(after the first, compiling call). Every run trained to the same loss: "
      f"{'yes' if result['same_train_loss'] else 'NO'} ({', '.join(f'{v:.4f}' for v in sorted(losses))}).\n"
      + harness.machine(env, timings.load_average, ("jax", "tensorflow-datasets", "array-record")),
      table, gather_text)
  print(markdown)
  return harness.write_report(outdir, "data", result, markdown, json_file="data.json", packages=PACKAGES,
                              config=config, wall_time_s=time.perf_counter() - start)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
