"""XLA:CPU's matrix products on one core and on all: the attention's batched ones against flat ones.

The GPT-2 benchmark's training step (experiments/bench/gpt2.py) trails PyTorch in its
attention. This benchmark shows why: each product below, shaped as in that step, is one
jitted `jnp.einsum`, timed in a child process pinned to one core (`os.sched_setaffinity`
before jax starts) and in one that may use every core. A flat product, such as the query or
MLP projections on (B * T, E) rows, goes about as many times faster as there are cores; the
attention's batched products, one small matrix product per (batch, head), do not: XLA:CPU runs
them on one core.

Each time is the median of --repeats calls after a warm-up call; GFLOP/s counts 2 * M * N * K
per product.

Run:
  python -m experiments.bench.products --outdir=experiments/bench/results/products
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

from experiments import report

_REPEATS = flags.DEFINE_integer("repeats", 30, "Timed calls per product (median reported).")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Sequences (the GPT-2 benchmark's batch).")
_HEADS = flags.DEFINE_integer("n_head", 6, "Attention heads.")
_SEQ = flags.DEFINE_integer("seq_len", 256, "Keys per sequence.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "Width of a head.")
_BLOCK = flags.DEFINE_integer("block", 64, "Queries per causal block (attention='dense').")
_WORKER = flags.DEFINE_string("worker", None, "Internal: the JSON list of products to time in this process.")


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


def _time_products(items: list[dict], repeats: int) -> list[float]:
  """Median seconds per call of each product's jitted einsum, in this process."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  out = []
  for item in items:
    a = jnp.asarray(rng.standard_normal(item["lhs"]), jnp.float32)
    b = jnp.asarray(rng.standard_normal(item["rhs"]), jnp.float32)
    fn = jax.jit(lambda a, b, spec=item["einsum"]: jnp.einsum(spec, a, b))
    fn(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      fn(a, b).block_until_ready()
      times.append(time.perf_counter() - start)
    out.append(statistics.median(times))
  return out


def _in_child(items: list[dict], repeats: int, cores: set[int]) -> list[float]:
  """`_time_products` in a fresh process restricted to `cores` before jax starts."""
  argv = [sys.executable, "-m", "experiments.bench.products", "--outdir=.", f"--repeats={repeats}",
          f"--worker={json.dumps(items)}"]
  proc = subprocess.run(argv, capture_output=True, text=True, check=False, preexec_fn=lambda: os.sched_setaffinity(0, cores))
  if proc.returncode != 0:
    raise RuntimeError(f"the timing process failed: {proc.stderr[-2000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def run_bench(outdir: str, repeats: int, batch: int, heads: int, seq: int, head_dim: int, block: int) -> dict:
  items = products(batch, heads, seq, head_dim, block)
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
            "shape": {"batch_size": batch, "n_head": heads, "seq_len": seq, "head_dim": head_dim, "block": block}}
  env = report.environment()
  table = ["| product | operands | GFLOP | 1 core: ms (GFLOP/s) | "
           f"{len(every)} cores: ms (GFLOP/s) | speed-up |", "|---|---|---:|---:|---:|---:|"]
  for row in rows.values():
    one, all_ = row["one_core"], row["all_cores"]
    table.append(f"| {row['name']} | `{row['einsum']}`, {tuple(row['lhs'])} x {tuple(row['rhs'])} | "
                 f"{row['gflop']:.3f} | {one['ms']:.2f} ({one['gflop_per_s']:.0f}) | "
                 f"{all_['ms']:.2f} ({all_['gflop_per_s']:.0f}) | {row['speedup_all_vs_one']:.2f}x |")
  md = "\n".join([
      "# XLA:CPU's products on one core and on all",
      "",
      f"Command: `{report.command()}`",
      "",
      f"Machine: {env['devices']['cpu_count']} CPU cores (this process may use {len(every)}); jax "
      f"{env['versions']['jax']}. Each product is one jitted float32 `jnp.einsum`, the median of {repeats} calls "
      "after a warm-up, in a child process pinned to one core and in one allowed every core.",
      "",
      "\n".join(table),
      "",
      "A speed-up near 1 means XLA:CPU ran the product on one core however many it had.",
      "",
  ])
  out = report.write_report(outdir, "products", result, md, json_file="products.json")
  print("\n".join(table))
  return out


def main(outdir: str) -> None:
  if _WORKER.value is not None:
    print(json.dumps(_time_products(json.loads(_WORKER.value), _REPEATS.value)))
    return
  if not hasattr(os, "sched_setaffinity"):
    raise app.UsageError("this benchmark pins its timing processes to cores with os.sched_setaffinity, "
                         "which this platform lacks (Linux has it)")
  for name, value in (("repeats", _REPEATS.value), ("batch_size", _BATCH.value), ("n_head", _HEADS.value),
                      ("seq_len", _SEQ.value), ("head_dim", _HEAD_DIM.value), ("block", _BLOCK.value)):
    if value < 1:
      raise app.UsageError(f"--{name} must be at least 1, got {value}")
  run_bench(outdir, _REPEATS.value, _BATCH.value, _HEADS.value, _SEQ.value, _HEAD_DIM.value,
            min(_BLOCK.value, _SEQ.value))


if __name__ == "__main__":
  report.main(main)
