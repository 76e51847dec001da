"""FlashAttention (Dao et al. 2022) Figure 3 in shape: time and memory of naive vs flash attention, forward + backward.

For each sequence length T (powers of two, 256 to 16k by default) both implementations of
research/models/attention.py run the same program: the causal attention output O and the
gradient of sum(sin(O)) with respect to q, k and v (one forward and one backward pass), at
batch 1, 4 heads of 64 (config). Naive is `dot_product_attention`, which materialises the T x T
scores and probabilities; flash is `flash_attention`, an online softmax over key blocks with a
backward pass that recomputes each block from the saved softmax statistics.

  memory  from the compiled program's `memory_analysis()`: XLA's temporary buffers (what the
          algorithm allocates), and the peak as temporaries + arguments + outputs - aliased
          bytes. Read from the compiled program without running it, so it is reported at every
          length, also where the naive program is too slow (or too large) to run.
  time    the median wall time of `repeats` calls after compilation and one warm-up call, the
          two programs' calls in an order rotated from repeat to repeat (experiments/harness.py's
          timer). The naive program runs only up to `naive_max_len`; beyond it, its time is left out.
  check   at every length where both run, the largest absolute difference of their outputs and
          of their gradients (the warm-up call's results).

Run:
  python -m experiments.tables.attention_memory --outdir=experiments/tables/results/attention_memory
  python -m experiments.tables.attention_memory --outdir=/tmp/attention_memory --config.lengths=64,128 \
      --config.heads=1 --config.repeats=1
  python -m experiments.tables.attention_memory --outdir=/tmp/attention_memory \
      --config=experiments/tables/attention_memory.py:smoke
"""

import time

import jax
import jax.numpy as jnp
import ml_collections
from matplotlib.figure import Figure

from experiments import harness
from research.models import attention
from research.train import check_positive, cli

MIB = 2 ** 20


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Two short lengths, small heads and blocks, the naive program run at the first only, for tests."""
  config.lengths, config.heads, config.head_dim, config.block_size = (32, 64), 2, 8, 16
  config.repeats, config.naive_max_len = 1, 32


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The paper's lengths at a CPU's batch; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.lengths = tuple(2 ** i for i in range(8, 15))  # sequence lengths T (sorted; each once)
  config.batch = 1  # batch size
  config.heads = 4  # attention heads
  config.head_dim = 64  # channels per head
  config.block_size = 256  # keys per block of flash attention's online softmax
  config.repeats = 3  # timed calls per program (after one warm-up call); the median is kept
  # The naive program is run (timed and compared) only up to this length; its memory is read at every length.
  config.naive_max_len = 8192
  return cli.apply_presets(config, preset, PRESETS)


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
  outputs, sides = {}, {}
  for name, fn in implementations(block_size).items():
    start = time.perf_counter()
    compiled = forward_backward(fn).lower(spec, spec, spec).compile()
    row[name] = {"compile_s": round(time.perf_counter() - start, 3), **memory(compiled)}
    if name == "flash" or run_naive:
      outputs[name] = jax.block_until_ready(compiled(q, k, v))  # warm-up; kept for the check below
      sides[name] = harness.steps(lambda compiled=compiled: jax.block_until_ready(compiled(q, k, v)), 1)
  timings = harness.compare(sides, repeats)
  for name in sides:
    row[name]["times_s"] = timings.seconds(name)
    row[name]["median_s"] = timings.median_seconds(name)
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
  env = harness.environment()["devices"]
  blocks = [f"Causal self-attention, float32, batch {batch}, {heads} heads of {head_dim}; each program computes the "
            "output O and the gradient of sum(sin(O)) with respect to q, k and v (forward + backward). Naive: "
            "`dot_product_attention` (the T x T scores and probabilities in memory); flash: `flash_attention` with "
            f"key blocks of {block_size} and a backward pass that recomputes each block. Memory from the compiled "
            "program's `memory_analysis()`: temporaries (XLA's temp buffers) and peak = temporaries + arguments + "
            "outputs - aliased bytes; read at every length without running. Time: median of "
            f"{repeats} calls after compilation and a warm-up call, on {env['count']} {env['kind']} device(s) "
            f"({env['cpu_count']} CPU cores, shared with other jobs: times are noisy); the naive program runs only "
            f"up to T = {naive_max_len}. Max |diff|: the largest absolute difference between the two programs' "
            f"outputs and gradients. Whole table: {total_s:.0f} s."]
  table = []
  for row in rows:
    naive, flash = row["naive"], row["flash"]
    speed = f"{naive['median_s'] / flash['median_s']:.2f}x" if "median_s" in naive else "—"
    diffs = (f"{row['max_abs_diff_output']:.1e}", f"{row['max_abs_diff_grads']:.1e}") if "max_abs_diff_output" in row \
        else ("—", "—")
    table.append((f"{row['length']:,}", _seconds(naive), _seconds(flash), speed, _mib(naive["temp_bytes"]),
                  _mib(flash["temp_bytes"]), _mib(naive["peak_bytes"]), _mib(flash["peak_bytes"]),
                  f"{naive['peak_bytes'] / flash['peak_bytes']:.1f}x", *diffs))
  blocks.append(harness.table(["T", "naive time", "flash time", "naive / flash time", "naive temp (MiB)",
                               "flash temp (MiB)", "naive peak (MiB)", "flash peak (MiB)", "naive / flash peak",
                               "max abs diff O", "max abs diff grads"], table))
  first, last = rows[0], rows[-1]
  growth = last["length"] / first["length"]
  blocks += [f"From T = {first['length']:,} to {last['length']:,} ({growth:g}x longer) the naive program's "
             f"temporaries grow {last['naive']['temp_bytes'] / first['naive']['temp_bytes']:,.0f}x (quadratic: "
             f"{growth ** 2:,.0f}x) and flash's {last['flash']['temp_bytes'] / first['flash']['temp_bytes']:,.1f}x "
             f"(linear: {growth:g}x, once T exceeds the block). The paper's Figure 3 (A100, fused CUDA kernels) shows "
             "the same memory shape; its speed-ups come from fewer reads and writes of GPU high-bandwidth memory, "
             "which a CPU's caches and XLA's CPU code do not reproduce one for one. This flash_attention visits every "
             "key block and masks the causal ones (no block skipping), so it does the naive program's arithmetic plus "
             "the backward pass's recomputation."]
  return harness.document("Attention time and memory, naive vs flash (FlashAttention Figure 3 in shape)", *blocks)


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


def check_config(config: ml_collections.ConfigDict) -> list[int]:
  """The sorted lengths; raises ConfigError on a bad field, before anything is compiled or written."""
  harness.check_counts("lengths", config.lengths)
  lengths = sorted(set(config.lengths))
  for name in ("batch", "heads", "head_dim", "block_size", "repeats"):
    check_positive(name, config[name])
  check_positive("naive_max_len", config.naive_max_len, allow_zero=True)
  return lengths


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Measures both programs at every length; writes results.json, attention_memory.md and .png into `outdir`."""
  lengths = check_config(config)
  shape = (config.batch, config.heads, config.head_dim)
  start = time.perf_counter()
  rows = []
  for length in lengths:
    row = measure(length, shape, config.block_size, config.repeats, length <= config.naive_max_len)
    rows.append(row)
    naive, flash = row["naive"], row["flash"]
    print(f"T={length}: naive {_seconds(naive)}, peak {_mib(naive['peak_bytes'])} MiB; flash {_seconds(flash)}, "
          f"peak {_mib(flash['peak_bytes'])} MiB; max abs diff O {row.get('max_abs_diff_output', 'n/a')}, grads "
          f"{row.get('max_abs_diff_grads', 'n/a')}", flush=True)
  total = time.perf_counter() - start
  text = markdown(rows, shape, config.block_size, config.repeats, config.naive_max_len, total)
  results = {"batch": shape[0], "heads": shape[1], "head_dim": shape[2], "block_size": config.block_size,
             "repeats": config.repeats, "naive_max_len": config.naive_max_len, "causal": True, "dtype": "float32",
             "rows": rows}
  print(text)
  return harness.write_report(outdir, "attention_memory", results, text, figure=figure(rows), config=config,
                              wall_time_s=total)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
