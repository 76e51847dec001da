"""XLA:CPU's matrix products on one core and on all: the attention's batched ones against flat ones.

The GPT-2 benchmark's training step (experiments/bench/gpt2.py) trails PyTorch in its
attention. This benchmark shows why: each product below, shaped as in that step, is one
jitted `jnp.einsum`, timed in a child process pinned to one core (`os.sched_setaffinity`
before jax starts) and in one that may use every core. A flat product, such as the query or
MLP projections on (B * T, E) rows, goes about as many times faster as there are cores; the
attention's batched products, one small matrix product per (batch, head), do not: XLA:CPU runs
them on one core.

Each time is the median of `repeats` calls after a warm-up call, the products' calls in an
order rotated from repeat to repeat (experiments/harness.py's timer); GFLOP/s counts 2 * M * N * K
per product.

Run:
  python -m experiments.bench.products --outdir=experiments/bench/results/products
  python -m experiments.bench.products --outdir=/tmp/products --config=experiments/bench/products.py:smoke
"""

import json
import os
import subprocess
import sys

import ml_collections

from experiments import harness
from research.train import ConfigError, check_positive, cli


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Tiny products, for tests."""
  config.repeats, config.batch_size, config.n_head, config.seq_len, config.head_dim, config.block = 2, 2, 2, 24, 8, 8


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The products' shapes (the GPT-2 benchmark's); preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.repeats = 30  # timed calls per product; the median is reported
  config.batch_size = 16  # sequences (the GPT-2 benchmark's batch)
  config.n_head = 6  # attention heads
  config.seq_len = 256  # keys per sequence
  config.head_dim = 64  # width of a head
  config.block = 64  # queries per causal block (attention="dense"); at most seq_len
  return cli.apply_presets(config, preset, PRESETS)


def products(batch: int, heads: int, seq: int, head_dim: int, block: int) -> list[dict]:
  """The products of one GPT-2 training step's layer: name, einsum, operand shapes, FLOPs."""
  width, rows = heads * head_dim, batch * seq
  bh = (batch, heads)
  specs = [
      ("attention scores Q K^T (one query block)", "bkmd,bksd->bkms", (*bh, block, head_dim), (*bh, seq, head_dim),
       batch * heads * block * seq * head_dim),
      ("attention P V (one query block)", "bkms,bksd->bkmd", (*bh, block, seq), (*bh, seq, head_dim),
       batch * heads * block * seq * head_dim),
      ("projection (query, key, value, out)", "td,de->te", (rows, width), (width, width), rows * width * width),
      ("MLP c_fc", "td,de->te", (rows, width), (width, 4 * width), rows * width * 4 * width),
  ]
  return [{"name": n, "einsum": e, "lhs": list(a), "rhs": list(b), "gflop": 2 * macs / 1e9}
          for n, e, a, b, macs in specs]


def time_products(items: list[dict], repeats: int) -> list[float]:
  """Median seconds per call of each product's jitted einsum, in this process."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  sides = {}
  for i, item in enumerate(items):
    a = jnp.asarray(rng.standard_normal(item["lhs"]), jnp.float32)
    b = jnp.asarray(rng.standard_normal(item["rhs"]), jnp.float32)
    fn = jax.jit(lambda a, b, spec=item["einsum"]: jnp.einsum(spec, a, b))
    fn(a, b).block_until_ready()  # compiles; the warm-up call
    sides[str(i)] = harness.steps(lambda fn=fn, a=a, b=b: fn(a, b).block_until_ready(), 1)
  timings = harness.compare(sides, repeats)
  return [timings.median_seconds(str(i)) for i in range(len(items))]


# The timing process: jax starts in it after its cores are set.
WORKER = ("import json, sys\nfrom experiments.bench import products\n"
          "print(json.dumps(products.time_products(json.loads(sys.argv[1]), int(sys.argv[2]))))")


def _in_child(items: list[dict], repeats: int, cores: set[int]) -> list[float]:
  """`time_products` in a fresh process restricted to `cores` before jax starts."""
  argv = [sys.executable, "-c", WORKER, json.dumps(items), str(repeats)]
  proc = subprocess.run(argv, capture_output=True, text=True, check=False, preexec_fn=lambda: os.sched_setaffinity(0, cores))
  if proc.returncode != 0:
    raise RuntimeError(f"the timing process failed: {proc.stderr[-2000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Times every product on one core and on all, writes products.json / products.md into `outdir`."""
  if not hasattr(os, "sched_setaffinity"):
    raise ConfigError("this benchmark pins its timing processes to cores with os.sched_setaffinity, "
                      "which this platform lacks (Linux has it)")
  for name in ("repeats", "batch_size", "n_head", "seq_len", "head_dim", "block"):
    check_positive(name, config[name])
  repeats = config.repeats
  items = products(config.batch_size, config.n_head, config.seq_len, config.head_dim,
                   min(config.block, config.seq_len))
  every = sorted(os.sched_getaffinity(0))
  settings = {"one_core": {every[0]}, "all_cores": set(every)}
  seconds = {name: _in_child(items, repeats, cores) for name, cores in settings.items()}
  rows = {}
  for i, item in enumerate(items):
    row = dict(item)
    for name in settings:
      row[name] = {"ms": 1e3 * seconds[name][i], "gflop_per_s": item["gflop"] / seconds[name][i]}
    row["speedup_all_vs_one"] = seconds["one_core"][i] / seconds["all_cores"][i]
    rows[item["name"]] = row
  result = {"products": rows, "cores": {"one_core": 1, "all_cores": len(every)}, "repeats": repeats,
            "shape": {"batch_size": config.batch_size, "n_head": config.n_head, "seq_len": config.seq_len,
                      "head_dim": config.head_dim, "block": min(config.block, config.seq_len)}}
  env = harness.environment()
  table = harness.table(
      ["product", "operands", "GFLOP", "1 core: ms (GFLOP/s)", f"{len(every)} cores: ms (GFLOP/s)", "speed-up"],
      [(row["name"], f"`{row['einsum']}`, {tuple(row['lhs'])} x {tuple(row['rhs'])}", f"{row['gflop']:.3f}",
        f"{row['one_core']['ms']:.2f} ({row['one_core']['gflop_per_s']:.0f})",
        f"{row['all_cores']['ms']:.2f} ({row['all_cores']['gflop_per_s']:.0f})", f"{row['speedup_all_vs_one']:.2f}x")
       for row in rows.values()], align="llrrrr")
  md = harness.document(
      "XLA:CPU's products on one core and on all",
      f"Machine: {env['devices']['cpu_count']} CPU cores (this process may use {len(every)}); jax "
      f"{env['versions']['jax']}. Each product is one jitted float32 `jnp.einsum`, the median of {repeats} calls "
      "after a warm-up, in a child process pinned to one core and in one allowed every core.",
      table,
      "A speed-up near 1 means XLA:CPU ran the product on one core however many it had.")
  out = harness.write_report(outdir, "products", result, md, json_file="products.json")
  print(table)
  return out


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
