"""FlashAttention (Dao et al. 2022) Figure 3 in shape: time and memory of naive vs flash attention, forward + backward.

For each sequence length T (powers of two, 256 to 16k by default) both implementations of
research/models/attention.py run the same program: the causal attention output O and the
gradient of sum(sin(O)) with respect to q, k and v (one forward and one backward pass), at
batch 1, 4 heads of 64 (flags). Naive is `dot_product_attention`, which materialises the T x T
scores and probabilities; flash is `flash_attention`, an online softmax over key blocks with a
backward pass that recomputes each block from the saved softmax statistics.

  memory  from the compiled program's `memory_analysis()`: XLA's temporary buffers (what the
          algorithm allocates), and the peak as temporaries + arguments + outputs - aliased
          bytes. Read from the compiled program without running it, so it is reported at every
          length, also where the naive program is too slow (or too large) to run.
  time    the median wall time of --repeats calls after compilation and one warm-up call. The
          naive program runs only up to --naive_max_len; beyond it, its time is left out.
  check   at every length where both run, the largest absolute difference of their outputs and
          of their gradients (the warm-up call's results).

Run:
  python -m experiments.tables.attention_memory --outdir=experiments/tables/results/attention_memory
  python -m experiments.tables.attention_memory --outdir=/tmp/attention_memory --lengths=64,128 --heads=1 --repeats=1
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from matplotlib.figure import Figure

from experiments import report
from research.models import attention
from research.train import ConfigError, cli

_LENGTHS = flags.DEFINE_list("lengths", [str(2 ** i) for i in range(8, 15)], "Sequence lengths T.")
_BATCH = flags.DEFINE_integer("batch", 1, "Batch size.")
_HEADS = flags.DEFINE_integer("heads", 4, "Attention heads.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "Channels per head.")
_BLOCK_SIZE = flags.DEFINE_integer("block_size", 256, "Keys per block of flash attention's online softmax.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per program (after one warm-up call); the median is kept.")
_NAIVE_MAX_LEN = flags.DEFINE_integer(
    "naive_max_len", 8192, "The naive program is run (timed and compared) only up to this length; its memory is "
    "read at every length.")

MIB = 2 ** 20


def implementations(block_size: int) -> dict:
  """name -> attention function (q, k, v, causal) of the table's two columns."""
  return {"naive": attention.dot_product_attention,
          "flash": lambda q, k, v, causal: attention.flash_attention(q, k, v, causal=causal, block_size=block_size)}


def forward_backward(fn):
  """q, k, v -> (O, (dL/dq, dL/dk, dL/dv)) for L = sum(sin(O)), O the causal attention output."""

  def run(q, k, v):
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, causal=True), q, k, v)
    return out, vjp(jnp.cos(out).astype(out.dtype))  # d sum(sin(O)) / dO = cos(O)

  return jax.jit(run)


def memory(compiled) -> dict:
  """Bytes of a compiled program from XLA's memory analysis (temporaries, arguments, outputs, peak)."""
  analysis = compiled.memory_analysis()
  temp, args = analysis.temp_size_in_bytes, analysis.argument_size_in_bytes
  out, alias = analysis.output_size_in_bytes, analysis.alias_size_in_bytes
  return {"temp_bytes": int(temp), "argument_bytes": int(args), "output_bytes": int(out), "alias_bytes": int(alias),
          "peak_bytes": int(temp + args + out - alias)}


def _max_abs_diff(a, b) -> float:
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def measure(length: int, shape: tuple[int, int, int], block_size: int, repeats: int, run_naive: bool) -> dict:
  """Memory (always) and time (where run) of both implementations at one length, and their agreement."""
  batch, heads, head_dim = shape
  spec = jax.ShapeDtypeStruct((batch, length, heads, head_dim), jnp.float32)
  k_q, k_k, k_v = jax.random.split(jax.random.fold_in(jax.random.key(0), length), 3)
  q, k, v = (jax.random.normal(key, spec.shape, spec.dtype) for key in (k_q, k_k, k_v))
  row = {"length": length}
  outputs = {}
  for name, fn in implementations(block_size).items():
    start = time.perf_counter()
    compiled = forward_backward(fn).lower(spec, spec, spec).compile()
    cell = {"compile_s": round(time.perf_counter() - start, 3), **memory(compiled)}
    if name == "flash" or run_naive:
      outputs[name] = jax.block_until_ready(compiled(q, k, v))  # warm-up; kept for the check below
      times = []
      for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(q, k, v))
        times.append(time.perf_counter() - start)
      cell["times_s"] = times
      cell["median_s"] = statistics.median(times)
    row[name] = cell
  if "naive" in outputs:
    (out_naive, grads_naive), (out_flash, grads_flash) = outputs["naive"], outputs["flash"]
    row["max_abs_diff_output"] = _max_abs_diff(out_naive, out_flash)
    row["max_abs_diff_grads"] = _max_abs_diff(grads_naive, grads_flash)
    row["max_abs_grads"] = max(float(jnp.max(jnp.abs(g))) for g in grads_naive)
  return row


def _mib(value) -> str:
  return f"{value / MIB:,.1f}"


def _seconds(cell) -> str:
  return f"{cell['median_s']:.3g} s" if "median_s" in cell else "not run"


def markdown(rows: list[dict], shape, block_size: int, repeats: int, naive_max_len: int, total_s: float) -> str:
  """The table with the command that produced it."""
  batch, heads, head_dim = shape
  env = report.environment()["devices"]
  lines = ["# Attention time and memory, naive vs flash (FlashAttention Figure 3 in shape)", "",
           f"Command: `{report.command()}`", "",
           f"Causal self-attention, float32, batch {batch}, {heads} heads of {head_dim}; each program computes the "
           "output O and the gradient of sum(sin(O)) with respect to q, k and v (forward + backward). Naive: "
           "`dot_product_attention` (the T x T scores and probabilities in memory); flash: `flash_attention` with "
           f"key blocks of {block_size} and a backward pass that recomputes each block. Memory from the compiled "
           "program's `memory_analysis()`: temporaries (XLA's temp buffers) and peak = temporaries + arguments + "
           "outputs - aliased bytes; read at every length without running. Time: median of "
           f"{repeats} calls after compilation and a warm-up call, on {env['count']} {env['kind']} device(s) "
           f"({env['cpu_count']} CPU cores, shared with other jobs: times are noisy); the naive program runs only "
           f"up to T = {naive_max_len}. Max |diff|: the largest absolute difference between the two programs' "
           f"outputs and gradients. Whole table: {total_s:.0f} s.", "",
           "| T | naive time | flash time | naive / flash time | naive temp (MiB) | flash temp (MiB) | "
           "naive peak (MiB) | flash peak (MiB) | naive / flash peak | max abs diff O | max abs diff grads |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    naive, flash = row["naive"], row["flash"]
    speed = f"{naive['median_s'] / flash['median_s']:.2f}x" if "median_s" in naive else "—"
    diffs = (f"{row['max_abs_diff_output']:.1e}", f"{row['max_abs_diff_grads']:.1e}") if "max_abs_diff_output" in row \
        else ("—", "—")
    lines.append(f"| {row['length']:,} | {_seconds(naive)} | {_seconds(flash)} | {speed} | "
                 f"{_mib(naive['temp_bytes'])} | {_mib(flash['temp_bytes'])} | {_mib(naive['peak_bytes'])} | "
                 f"{_mib(flash['peak_bytes'])} | "
                 f"{naive['peak_bytes'] / flash['peak_bytes']:.1f}x | {diffs[0]} | {diffs[1]} |")
  first, last = rows[0], rows[-1]
  growth = last["length"] / first["length"]
  lines += ["", f"From T = {first['length']:,} to {last['length']:,} ({growth:g}x longer) the naive program's "
            f"temporaries grow {last['naive']['temp_bytes'] / first['naive']['temp_bytes']:,.0f}x (quadratic: "
            f"{growth ** 2:,.0f}x) and flash's {last['flash']['temp_bytes'] / first['flash']['temp_bytes']:,.1f}x "
            f"(linear: {growth:g}x, once T exceeds the block). The paper's Figure 3 (A100, fused CUDA kernels) shows "
            "the same memory shape; its speed-ups come from fewer reads and writes of GPU high-bandwidth memory, "
            "which a CPU's caches and XLA's CPU code do not reproduce one for one. This flash_attention visits every "
            "key block and masks the causal ones (no block skipping), so it does the naive program's arithmetic plus "
            "the backward pass's recomputation.", ""]
  return "\n".join(lines)


def figure(rows: list[dict]) -> Figure:
  """Two log-log panels: time and peak memory against T."""
  fig = Figure(figsize=(10, 4), dpi=100)
  time_ax, memory_ax = fig.subplots(1, 2)
  for name, marker in (("naive", "o"), ("flash", "s")):
    timed = [r for r in rows if "median_s" in r[name]]
    time_ax.plot([r["length"] for r in timed], [r[name]["median_s"] for r in timed], marker=marker, label=name)
    memory_ax.plot([r["length"] for r in rows], [r[name]["peak_bytes"] / MIB for r in rows], marker=marker,
                   label=f"{name} peak")
    memory_ax.plot([r["length"] for r in rows], [r[name]["temp_bytes"] / MIB for r in rows], marker=marker,
                   linestyle=":", alpha=0.6, label=f"{name} temporaries")
  for ax, label, title in ((time_ax, "seconds (median)", "forward + backward time"),
                           (memory_ax, "MiB (memory_analysis)", "forward + backward memory")):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel(label)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def check_flags() -> list[int]:
  """The sorted lengths; raises ConfigError on a bad flag, before anything is compiled or written."""
  try:
    lengths = sorted({int(x) for x in _LENGTHS.value})
  except ValueError:
    raise ConfigError(f"--lengths must be integers, got {','.join(_LENGTHS.value)}") from None
  if not lengths or lengths[0] < 1:
    raise ConfigError("--lengths must be positive")
  for name in ("batch", "heads", "head_dim", "block_size", "repeats"):
    value = flags.FLAGS[name].value
    if value < 1:
      raise ConfigError(f"--{name} must be positive, got {value}")
  if _NAIVE_MAX_LEN.value < 0:
    raise ConfigError(f"--naive_max_len must be >= 0, got {_NAIVE_MAX_LEN.value}")
  return lengths


def main(outdir: str) -> None:
  try:
    lengths = check_flags()
  except ConfigError as e:
    cli.fail(str(e))
  shape = (_BATCH.value, _HEADS.value, _HEAD_DIM.value)
  start = time.perf_counter()
  rows = []
  for length in lengths:
    row = measure(length, shape, _BLOCK_SIZE.value, _REPEATS.value, length <= _NAIVE_MAX_LEN.value)
    rows.append(row)
    naive, flash = row["naive"], row["flash"]
    print(f"T={length}: naive {_seconds(naive)}, peak {_mib(naive['peak_bytes'])} MiB; flash {_seconds(flash)}, "
          f"peak {_mib(flash['peak_bytes'])} MiB; max abs diff O {row.get('max_abs_diff_output', 'n/a')}, grads "
          f"{row.get('max_abs_diff_grads', 'n/a')}", flush=True)
  total = time.perf_counter() - start
  text = markdown(rows, shape, _BLOCK_SIZE.value, _REPEATS.value, _NAIVE_MAX_LEN.value, total)
  results = {"batch": shape[0], "heads": shape[1], "head_dim": shape[2], "block_size": _BLOCK_SIZE.value,
             "repeats": _REPEATS.value, "naive_max_len": _NAIVE_MAX_LEN.value, "causal": True, "dtype": "float32",
             "rows": rows}
  report.write_report(outdir, "attention_memory", results, text, figure=figure(rows), wall_time_s=total)
  print(text)


if __name__ == "__main__":
  report.main(main)
