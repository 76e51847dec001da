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
  python -m experiments.bench.compile_memory --outdir=/tmp/cm --config=experiments/bench/compile_memory.py:smoke
"""

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import optax

from experiments import harness
from research.models import attention, gpt2, layers
from research.train import ConfigError, check_choice, check_positive, cli

MIB = 2 ** 20


def _smoke(config: ml_collections.ConfigDict) -> None:
  """One small block over a short context, seconds to compile, for tests."""
  config.layers, config.seq_len, config.batch_size, config.vocab_size = 1, 16, 1, 64


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """GPT-2 124M's step at batch 8 x 1024 under every (scan_layers, remat); preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.size = "124m"  # a GPT-2 size (research.models.gpt2.SIZES or transformers' name)
  config.layers = 0  # blocks, in place of the size's (0: the size's)
  config.vocab_size = 50257  # vocabulary size
  config.batch_size = 8  # sequences per step
  config.seq_len = 1024  # tokens per sequence (the context)
  config.dtype = "float32"  # compute dtype: float32 or bfloat16
  config.attention = "auto"  # attention kernel (research.models.attention.IMPLEMENTATIONS)
  config.scan_layers = (False, True)  # scan_layers settings measured
  config.remat = layers.REMATS  # remat settings measured
  return cli.apply_presets(config, preset, PRESETS)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad field."""
  for name in ("batch_size", "seq_len", "vocab_size"):
    check_positive(name, config[name])
  check_positive("layers", config.layers, allow_zero=True)
  check_choice("dtype", config.dtype, ("float32", "bfloat16"))
  check_choice("attention", config.attention, attention.IMPLEMENTATIONS)
  if not config.scan_layers or not all(isinstance(v, bool) for v in config.scan_layers):
    raise ConfigError(f"scan_layers takes True and False, got {config.scan_layers}")
  harness.check_names("remat", config.remat, layers.REMATS)


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
  env = harness.environment()
  table = harness.table(
      ["scan_layers", "remat", "lower s", "compile s", "temporary MiB", "arguments MiB", "outputs MiB",
       "compile vs loop", "temporary vs loop"],
      [(row["scan_layers"], row["remat"], f"{row['lower_s']:.1f}", f"{row['compile_s']:.1f}",
        f"{row['temp_bytes'] / MIB:,.0f}", f"{row['argument_bytes'] / MIB:,.0f}", f"{row['output_bytes'] / MIB:,.0f}",
        f"{row['vs_loop_none'].get('compile_s', float('nan')):.2f}x",
        f"{row['vs_loop_none'].get('temp_bytes', float('nan')):.2f}x") for row in rows], align="llrrrrrrr")
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  params = gpt2.count_params(cfg)
  md = harness.document(
      "GPT-2's training step: compile time and memory, blocks in a loop or a scan, under each remat",
      f"GPT-2 {cfg.n_layer} x {cfg.n_embd} ({cfg.n_head} heads, {params / 1e6:.1f}M parameters, vocabulary "
      f"{cfg.vocab_size}), batch {batch_size} x {seq_len} tokens, {cfg.dtype}, attention {cfg.attention!r}; the "
      "step is the cross-entropy's gradient and an AdamW update with the state donated, lowered and compiled for "
      f"one {env['devices']['kind']} device (nothing runs). jax {env['versions']['jax']}, "
      f"{env['devices']['cpu_count']} CPU cores" + (f", load average {load:.1f} at the end" if load is not None else "")
      + ". Memory is XLA's `memory_analysis()` of the compiled step: temporary bytes are what the step holds "
      "beyond its arguments and outputs (the activations kept for the backward pass among them).",
      table)
  result = {"rows": rows, "model": {"n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_head": cfg.n_head,
                                    "vocab_size": cfg.vocab_size, "params": params, "dtype": cfg.dtype,
                                    "attention": cfg.attention},
            "batch_size": batch_size, "seq_len": seq_len, "load_average": load}
  out = harness.write_report(outdir, "compile_memory", result, md, json_file="compile_memory.json",
                            wall_time_s=time.perf_counter() - start)
  print(table)
  return out


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Measures every (scan_layers, remat) setting of the config's model; returns compile_memory.json's dict."""
  check_config(config)
  try:
    cfg = gpt2.config(config.size, vocab_size=config.vocab_size, n_positions=max(1024, config.seq_len),
                      dtype=config.dtype, attention=config.attention)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if config.layers:
    cfg = dataclasses.replace(cfg, n_layer=config.layers)
  settings = [(scan, remat) for scan in config.scan_layers for remat in config.remat]
  return run_bench(outdir, cfg, config.batch_size, config.seq_len, settings)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
