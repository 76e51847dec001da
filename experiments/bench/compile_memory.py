"""Compile time and memory of GPT-2's training step with its blocks in a loop or a scan, under each remat.

For each setting of `scan_layers` (the blocks as a Python loop, or one `nn.scan`) and `remat`
(none; "block": each block recomputed in the backward pass from its input; "dots": the
matrix products' outputs kept, the rest recomputed), the training step of GPT-2 (next-token
cross-entropy, its gradient and an AdamW update, the parameters and optimizer state donated as
the training loop donates them) is traced, lowered and compiled for one device; nothing runs.
The report gives the seconds to lower and to compile, and XLA's `memory_analysis()` of the
compiled program: temporary bytes (activations kept for the backward pass and scratch), and
argument and output bytes (parameters, optimizer state, batch), each also as a ratio to the
plain loop without remat.

Run:
  python -m experiments.bench.compile_memory --outdir=experiments/bench/results/compile_memory
  python -m experiments.bench.compile_memory --outdir=/tmp/cm --layers=1 --seq_len=32 --batch_size=2   # quick
"""

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from experiments import report
from research.models import gpt2, layers

_SIZE = flags.DEFINE_string("size", "124m", "A GPT-2 size (research.models.gpt2.SIZES or transformers' name).")
_LAYERS = flags.DEFINE_integer("layers", 0, "Blocks, in place of the size's (0: the size's).")
_VOCAB = flags.DEFINE_integer("vocab_size", 50257, "Vocabulary size.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Sequences per step.")
_SEQ = flags.DEFINE_integer("seq_len", 1024, "Tokens per sequence (the context).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_ATTENTION = flags.DEFINE_string("attention", "auto", "Attention kernel (research.models.attention.IMPLEMENTATIONS).")
_SCAN = flags.DEFINE_list("scan_layers", ["false", "true"], "scan_layers settings measured.")
_REMAT = flags.DEFINE_list("remat", list(layers.REMATS), "remat settings measured.")

MIB = 2 ** 20


def step_memory(cfg: gpt2.GPT2Config, batch_size: int, seq_len: int) -> dict:
  """Seconds to lower and compile one training step of `cfg`, and its compiled memory analysis in bytes."""
  model = gpt2.GPT2(cfg)
  tx = optax.adamw(6e-4, weight_decay=0.1)
  tokens = jax.ShapeDtypeStruct((batch_size, seq_len + 1), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, seq_len), jnp.int32))["params"])
  state = jax.eval_shape(lambda p: (p, tx.init(p)), params)

  def loss(p, batch):
    logits = model.apply({"params": p}, batch[:, :-1], train=True)
    return gpt2.lm_loss(logits, batch[:, 1:])

  def train_step(state, batch):
    p, opt_state = state
    value, grads = jax.value_and_grad(loss)(p, batch)
    updates, opt_state = tx.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), value

  start = time.perf_counter()
  lowered = jax.jit(train_step, donate_argnums=0).lower(state, tokens)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  compiled_at = time.perf_counter()
  memory = compiled.memory_analysis()
  return {"lower_s": lowered_at - start, "compile_s": compiled_at - lowered_at,
          "temp_bytes": int(memory.temp_size_in_bytes), "argument_bytes": int(memory.argument_size_in_bytes),
          "output_bytes": int(memory.output_size_in_bytes), "alias_bytes": int(memory.alias_size_in_bytes),
          "code_bytes": int(memory.generated_code_size_in_bytes)}


def _settings(scans: list[str], remats: list[str]) -> list[tuple[bool, str]]:
  bools = {"false": False, "true": True}
  for value in scans:
    if value.lower() not in bools:
      raise app.UsageError(f"--scan_layers takes true and false, got {value!r}")
  for value in remats:
    if value not in layers.REMATS:
      raise app.UsageError(f"unknown --remat {value!r}; choose from: {', '.join(layers.REMATS)}")
  return [(bools[s.lower()], r) for s in scans for r in remats]


def run_bench(outdir: str, cfg: gpt2.GPT2Config, batch_size: int, seq_len: int,
              settings: list[tuple[bool, str]]) -> dict:
  """Measures each (scan_layers, remat) setting of `cfg` and writes compile_memory.json and .md."""
  start = time.perf_counter()
  rows = []
  for scan, remat in settings:
    row = {"scan_layers": scan, "remat": remat,
           **step_memory(dataclasses.replace(cfg, scan_layers=scan, remat=remat), batch_size, seq_len)}
    rows.append(row)
    print(f"scan_layers={scan} remat={remat}: lower {row['lower_s']:.1f} s, compile {row['compile_s']:.1f} s, "
          f"temp {row['temp_bytes'] / MIB:.0f} MiB", flush=True)
  base = next((r for r in rows if not r["scan_layers"] and r["remat"] == "none"), rows[0])
  for row in rows:
    row["vs_loop_none"] = {k: row[k] / base[k] for k in ("lower_s", "compile_s", "temp_bytes") if base[k]}
  env = report.environment()
  table = ["| scan_layers | remat | lower s | compile s | temporary MiB | arguments MiB | outputs MiB | "
           "compile vs loop | temporary vs loop |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
  for row in rows:
    ratios = row["vs_loop_none"]
    table.append(f"| {row['scan_layers']} | {row['remat']} | {row['lower_s']:.1f} | {row['compile_s']:.1f} | "
                 f"{row['temp_bytes'] / MIB:,.0f} | {row['argument_bytes'] / MIB:,.0f} | "
                 f"{row['output_bytes'] / MIB:,.0f} | {ratios.get('compile_s', float('nan')):.2f}x | "
                 f"{ratios.get('temp_bytes', float('nan')):.2f}x |")
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  params = gpt2.count_params(cfg)
  md = "\n".join([
      "# GPT-2's training step: compile time and memory, blocks in a loop or a scan, under each remat",
      "",
      f"Command: `{report.command()}`",
      "",
      f"GPT-2 {cfg.n_layer} x {cfg.n_embd} ({cfg.n_head} heads, {params / 1e6:.1f}M parameters, vocabulary "
      f"{cfg.vocab_size}), batch {batch_size} x {seq_len} tokens, {cfg.dtype}, attention {cfg.attention!r}; the "
      "step is the cross-entropy's gradient and an AdamW update with the state donated, lowered and compiled for "
      f"one {env['devices']['kind']} device (nothing runs). jax {env['versions']['jax']}, "
      f"{env['devices']['cpu_count']} CPU cores" + (f", load average {load:.1f} at the end" if load is not None else "")
      + ". Memory is XLA's `memory_analysis()` of the compiled step: temporary bytes are what the step holds "
      "beyond its arguments and outputs (the activations kept for the backward pass among them).",
      "",
      "\n".join(table),
      "",
  ])
  result = {"rows": rows, "model": {"n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_head": cfg.n_head,
                                    "vocab_size": cfg.vocab_size, "params": params, "dtype": cfg.dtype,
                                    "attention": cfg.attention},
            "batch_size": batch_size, "seq_len": seq_len, "load_average": load}
  out = report.write_report(outdir, "compile_memory", result, md, json_file="compile_memory.json",
                            wall_time_s=time.perf_counter() - start)
  print("\n".join(table))
  return out


def main(outdir: str) -> None:
  for name, value in (("batch_size", _BATCH.value), ("seq_len", _SEQ.value), ("vocab_size", _VOCAB.value)):
    if value < 1:
      raise app.UsageError(f"--{name} must be at least 1, got {value}")
  if _LAYERS.value < 0:
    raise app.UsageError(f"--layers must be >= 0 (0: the size's), got {_LAYERS.value}")
  settings = _settings(_SCAN.value, _REMAT.value)
  try:
    cfg = gpt2.config(_SIZE.value, vocab_size=_VOCAB.value, n_positions=max(1024, _SEQ.value), dtype=_DTYPE.value,
                      attention=_ATTENTION.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if _LAYERS.value:
    cfg = dataclasses.replace(cfg, n_layer=_LAYERS.value)
  run_bench(outdir, cfg, _BATCH.value, _SEQ.value, settings)


if __name__ == "__main__":
  report.main(main)
