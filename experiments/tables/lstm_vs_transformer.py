"""Kaplan et al. (2020), Figure 7 in shape: LSTM vs Transformer, per-token loss against position in the context.

Character-level GPTs and LSTMs on the bundled python_docs text, each trained by
`experiments.gpt2.run` (the one training loop; `--config.model=lstm` for the LSTM) with the same
steps, batch, context T and optimizer, so every model sees the same windows of text. For each GPT
size (n_layer:n_embd:n_head) the LSTM has `lstm_layers` layers of the width whose non-embedding
parameter count (Kaplan et al.'s N: `lstm.count_params(cfg, embeddings=False)`,
`gpt2.count_params(cfg, embeddings=False)`) is closest to the GPT's. Two parts:

  positions   the test loss of the token at each position 1 .. T of its window, averaged over
              `position_windows` windows of T + 1 characters that start every `position_stride`
              characters of the held-out split. Kaplan et al.: an LSTM's loss stops improving
              after the first tens to a hundred tokens, a Transformer's keeps falling over the
              whole context. Summarised per model by the mean loss in position bins and by the
              least-squares slope of the loss against log2(position) over positions >= `slope_from`
              (nats per doubling of the context).
  parameters  the loop's validation loss of both at the 3 sizes against N (Kaplan et al.'s
              Figure 7, left).

Runs go into `workdir_root` (default <outdir>/models), one directory per config, so a rerun
reuses finished runs and resumes interrupted ones.

Run:
  python -m experiments.tables.lstm_vs_transformer --outdir=experiments/tables/results/lstm_vs_transformer
  python -m experiments.tables.lstm_vs_transformer --outdir=/tmp/lstm_vs_transformer \\
      --config=experiments/tables/lstm_vs_transformer.py:smoke
"""

import functools
import hashlib
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from experiments import gpt2 as gpt2_experiment
from experiments import harness
from experiments.tables import gpt_scaling
from research.data import tokens
from research.models import gpt2, lstm
from research.train import ConfigError, check_positive, cli

MODELS = ("gpt", "lstm")


def _smoke(config: ml_collections.ConfigDict) -> None:
  """One one-block size (a GPT and its LSTM), a few steps on short windows, for tests."""
  config.sizes, config.lstm_layers = ("1:16:2",), 1
  config.steps, config.batch_size, config.seq_len, config.warmup_steps, config.eval_windows = 6, 4, 16, 2, 6
  config.position_windows, config.position_stride, config.slope_from = 40, 7, 4


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The table's sizes and budget; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.sizes = ("2:32:4", "2:48:4", "2:64:4")  # the GPTs' n_layer:n_embd:n_head; each LSTM is matched in N
  config.lstm_layers = 2  # layers of every LSTM (its width is chosen to match the GPT's N)
  config.steps = 2000  # training steps of every run
  config.batch_size = 16  # windows per step
  config.seq_len = 128  # training context T (characters per window)
  config.warmup_steps = 100  # learning-rate warmup steps (then cosine decay)
  config.eval_windows = 256  # held-out windows of T + 1 characters the loop scores (its val_loss)
  config.position_windows = 4096  # held-out windows of T + 1 characters of the per-position losses
  config.position_stride = 31  # characters between the starts of those windows (they overlap)
  config.slope_from = 16  # the slope against log2(position) is fitted over positions >= this (1-based)
  config.workdir_root = ""  # directory of the training runs; "": <outdir>/models
  return cli.apply_presets(config, preset, PRESETS)


def run_config(model: str, size: gpt_scaling.Size, lstm_width: int, lstm_layers: int, steps: int, batch_size: int,
               seq_len: int, warmup_steps: int, eval_windows: int):
  """experiments/gpt2.py's default config with this table's model, size and budget."""
  config = gpt2_experiment.get_config()
  config.model = model
  if model == "gpt":
    config.n_layer, config.n_embd, config.n_head = size.n_layer, size.n_embd, size.n_head
  else:
    config.lstm_width, config.lstm_layers = lstm_width, lstm_layers
  config.seq_len = config.n_positions = seq_len
  config.steps, config.batch_size = steps, batch_size
  config.optimizer.warmup_steps = warmup_steps
  config.eval_windows = eval_windows
  config.eval_every = 0  # the validation loss once, at the end
  config.checkpoint_every = steps
  config.log_every = max(1, min(100, steps))
  config.num_prompts, config.prompt_len, config.sample_tokens = 2, seq_len // 2, seq_len // 2  # a by-product
  return config


class Runs(gpt_scaling.Runs):
  """gpt_scaling's runs, each named by its model: a GPT's shape or an LSTM's layers x width."""

  def workdir(self, config) -> str:
    digest = hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()[:10]
    shape = (f"{config.n_layer}x{config.n_embd}x{config.n_head}" if config.model == "gpt"
             else f"{config.lstm_layers}x{config.lstm_width}")
    return os.path.join(self.root, f"model_{config.model}_{shape}_{digest}")


@functools.partial(jax.jit, static_argnames="model")
def _position_nll(model, params, windows, weights):
  """Next-token NLL at each position summed over the windows, each weighted: (T,) for (B, T + 1) windows."""
  logp = jax.nn.log_softmax(model.apply({"params": params}, windows[:, :-1]))  # (B, T, vocab)
  nll = -jnp.take_along_axis(logp, windows[:, 1:, None], axis=-1)[..., 0]  # (B, T)
  return jnp.sum(nll * weights[:, None], axis=0)


def position_loss(model, params, windows, batch_size: int) -> np.ndarray:
  """Mean next-token NLL (nats) at each position of (N, T + 1) windows: (T,), entry t for the (t + 1)-th token.

  The last batch is padded to the batch size with weight 0, so one program serves every batch.
  """
  windows = np.asarray(windows, np.int32)
  total = np.zeros(windows.shape[1] - 1, np.float64)
  for start in range(0, len(windows), batch_size):
    chunk = windows[start:start + batch_size]
    weights = np.zeros(batch_size, np.float32)
    weights[:len(chunk)] = 1.0
    padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk), chunk.shape[1]), np.int32)])
    total += np.asarray(_position_nll(model, params, jnp.asarray(padded), jnp.asarray(weights)), np.float64)
  return total / len(windows)


def position_windows(config, tokenizer, count: int, stride: int) -> np.ndarray:
  """(N, T + 1) windows of the whole held-out split, starting every `stride` ids (at most `count` of them)."""
  span = config.seq_len + 1
  stream = tokens.token_stream(config.dataset, config.eval_split, tokenizer,
                               gpt2_experiment._separator(tokenizer))  # pylint: disable=protected-access
  starts = np.arange(0, len(stream) - span + 1, stride)[:count]
  return np.stack([np.asarray(stream[s:s + span], np.int32) for s in starts])


def position_bins(seq_len: int) -> list[tuple[int, int]]:
  """1-based position ranges [lo, hi]: 1, 2-4, 5-8, 9-16, ... up to T."""
  bins, lo = [(1, 1)], 2
  while lo <= seq_len:
    hi = min(seq_len, 4 if lo == 2 else 2 * (lo - 1))
    bins.append((lo, hi))
    lo = hi + 1
  return bins


def late_slope(losses, start: int) -> float:
  """Least-squares slope of the loss against log2(position) over positions >= start (1-based): nats per doubling."""
  positions = np.arange(1, len(losses) + 1)
  keep = positions >= start
  return float(np.polyfit(np.log2(positions[keep]), np.asarray(losses)[keep], 1)[0])


def model_rows(sizes, lstm_layers: int, budget: dict, windows_spec: tuple[int, int], slope_from: int,
               runs: Runs) -> list[dict]:
  """Each size's GPT and its matched LSTM: trained (or reused), then scored at every position."""
  rows = []
  for size in sizes:
    gpt_n = gpt2.count_params(gpt2.model_config(run_config("gpt", size, 1, 1, **budget), 1), embeddings=False)
    width = lstm.width_for(gpt_n, lstm_layers)
    for model_name in MODELS:
      config = run_config(model_name, size, width, lstm_layers, **budget)
      results = runs.results(config)
      model, params, tokenizer = gpt_scaling.trained_model(config, runs.workdir(config))
      n = (gpt_n if model_name == "gpt" else lstm.count_params(model.cfg, embeddings=False))
      loop_windows = gpt_scaling.held_out_windows(config, tokenizer, config.seq_len)
      windows = position_windows(config, tokenizer, *windows_spec)
      losses = position_loss(model, params, windows, config.eval_batch_size)
      on_loop_windows = position_loss(model, params, loop_windows, config.eval_batch_size)
      rows.append({"model": model_name, "size": size.name,
                   "shape": size.name if model_name == "gpt" else f"{lstm_layers}x{width}",
                   "non_embedding_params": n, "params": (gpt2 if model_name == "gpt" else lstm).count_params(model.cfg),
                   "val_loss": results["val_loss"], "train_loss": results["train_loss"],
                   "position_loss": losses, "position_windows": len(windows),
                   "loop_windows_mean_minus_val_loss": float(on_loop_windows.mean()) - results["val_loss"],
                   "bins": [{"from": lo, "to": hi, "loss": float(losses[lo - 1:hi].mean())}
                            for lo, hi in position_bins(config.seq_len)],
                   "late_slope": late_slope(losses, slope_from),
                   "steps_per_second": results.get("steps_per_second"), "run_wall_time_s": results.get("wall_time_s")})
      row = rows[-1]
      print(f"{model_name} {row['shape']}: N = {n:,}, val loss {row['val_loss']:.4f}, slope over positions >= "
            f"{slope_from}: {row['late_slope']:+.4f} nats per doubling", flush=True)
  return rows


def markdown(rows, budget: dict, config, runs: Runs, total_s: float) -> str:
  """The two tables with the command that produced them."""
  env = harness.environment()["devices"]
  t = budget["seq_len"]
  optimizer = run_config("gpt", gpt_scaling.parse_size(config.sizes[0]), 1, 1, **budget).optimizer
  pairs = [(rows[i], rows[i + 1]) for i in range(0, len(rows), 2)]
  layers = f"{config.lstm_layers} layer{'s' if config.lstm_layers > 1 else ''}"
  blocks = [f"Character-level GPTs (learned positions) and LSTMs ({layers}, tied embeddings, forget bias 1) trained "
            f"by `experiments.gpt2.run` on the bundled python_docs text: {budget['steps']} steps of "
            f"{budget['batch_size']} windows of T = {t} characters "
            f"({budget['steps'] * budget['batch_size'] * t:,} training tokens for every model), {optimizer.name} at "
            f"{optimizer.learning_rate:g} (weight decay {optimizer.weight_decay:g}) with {budget['warmup_steps']} "
            "warmup steps and cosine decay. Each LSTM's width is the one whose non-embedding parameter count N is "
            f"closest to its GPT's. {len(runs.wall_time_s)} training runs, "
            f"{sum(w or 0.0 for w in runs.wall_time_s.values()):.0f} s of their own wall time ({len(runs.trained)} "
            f"trained by this command, {len(runs.reused)} reused); this command: {total_s:.0f} s on {env['kind']} "
            f"({env['cpu_count']} CPU cores, shared with other jobs).",
            "## Loss against non-embedding parameters",
            harness.table(["GPT (n_layer x n_embd x n_head)", "N", "val loss", "LSTM (layers x width)", "N",
                           "val loss", "LSTM - GPT"],
                          [(g["shape"], f"{g['non_embedding_params']:,}", f"{g['val_loss']:.4f}", s["shape"],
                            f"{s['non_embedding_params']:,}", f"{s['val_loss']:.4f}",
                            f"{s['val_loss'] - g['val_loss']:+.4f}") for g, s in pairs], align="lrrlrrr"),
            f"Validation loss in nats per character on the first {budget['eval_windows']} held-out windows of T + 1 "
            "characters (the loop's own).",
            f"## Loss against position in the context (T = {t})"]
  bins = rows[0]["bins"]
  blocks.append(harness.table(
      ["model", "N"] + [f"{b['from']}" if b["from"] == b["to"] else f"{b['from']}-{b['to']}" for b in bins]
      + [f"slope, positions >= {config.slope_from} (nats / doubling)"],
      [(f"{r['model']} {r['shape']}", f"{r['non_embedding_params']:,}", *(f"{b['loss']:.3f}" for b in r["bins"]),
        f"{r['late_slope']:+.4f}") for r in rows], align="ll" + "r" * (len(bins) + 1)))
  largest_gpt, largest_lstm = pairs[-1]
  last, before = bins[-1], bins[-2]
  change = lambda r: r["bins"][-1]["loss"] - r["bins"][-2]["loss"]
  blocks.append(
      f"Mean test loss (nats per character) of the tokens at each range of positions (1-based), over "
      f"{rows[0]['position_windows']} held-out windows starting every {config.position_stride} characters of the "
      f"test split; the slope is the least-squares fit of the per-position loss against log2(position) over "
      f"positions {config.slope_from} .. {t}. At the largest size, from positions {before['from']}-{before['to']} "
      f"to {last['from']}-{last['to']} the GPT's loss changes by {change(largest_gpt):+.4f} nats and the LSTM's by "
      f"{change(largest_lstm):+.4f}; the slopes are {largest_gpt['late_slope']:+.4f} (GPT) and "
      f"{largest_lstm['late_slope']:+.4f} (LSTM) nats per doubling of the context. Kaplan et al. (Figure 7, right) "
      "find the LSTM's per-token loss flat after the first tens to a hundred tokens while the Transformer's keeps "
      "falling over the whole context. The mean over positions of the same models on the loop's own "
      "evaluation windows equals its val_loss to "
      f"{max(abs(r['loop_windows_mean_minus_val_loss']) for r in rows):.1e}.")
  return harness.document("LSTM vs Transformer on python_docs (Kaplan et al. 2020, Figure 7)", *blocks)


def figure(rows) -> Figure:
  """Loss against position (log x) for every model, and loss against N for both families."""
  fig = Figure(figsize=(12, 4.5), dpi=100)
  by_position, by_n = fig.subplots(1, 2)
  colors = {size: f"C{i}" for i, size in enumerate(dict.fromkeys(r["size"] for r in rows))}
  for r in rows:
    losses = np.asarray(r["position_loss"])
    by_position.plot(np.arange(1, len(losses) + 1), losses, "-" if r["model"] == "gpt" else "--",
                     color=colors[r["size"]], label=f"{r['model']} {r['shape']} (N = {r['non_embedding_params']:,})")
  by_position.set_xscale("log", base=2)
  by_position.xaxis.set_major_formatter(ticker.FormatStrFormatter("%d"))
  by_position.set_xlabel("token position in the context")
  by_position.set_ylabel("test loss (nats / char)")
  by_position.set_title("per-token loss vs position (solid: GPT, dashed: LSTM)")
  lows = [min(r["position_loss"]) for r in rows]
  by_position.set_ylim(min(lows) - 0.1, max(lows) + 1.2)  # the first positions' loss is far above the rest
  by_position.legend(fontsize=7)
  for model, marker in (("gpt", "o-"), ("lstm", "s--")):
    points = [(r["non_embedding_params"], r["val_loss"]) for r in rows if r["model"] == model]
    by_n.plot(*zip(*points), marker, label={"gpt": "Transformer (GPT)", "lstm": "LSTM"}[model])
  by_n.set_xscale("log")
  by_n.set_yscale("log")
  by_n.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.2f"))
  by_n.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%.2f"))
  by_n.tick_params(axis="y", which="minor", labelsize=7)
  by_n.set_xlabel("non-embedding parameters N")
  by_n.set_ylabel("validation loss (nats / char)")
  by_n.set_title("loss vs N")
  by_n.grid(True, which="both", alpha=0.3)
  by_n.legend(fontsize=8)
  fig.tight_layout()
  return fig


def check_config(config: ml_collections.ConfigDict) -> tuple[list[gpt_scaling.Size], dict]:
  """Parses and checks every field; raises ConfigError before anything is loaded, compiled or written."""
  sizes = [gpt_scaling.parse_size(s) for s in config.sizes]
  if not sizes or len(set(sizes)) < len(sizes):
    raise ConfigError(f"sizes must name one or more different sizes, got {', '.join(config.sizes) or 'none'}")
  for name in ("lstm_layers", "steps", "position_windows", "position_stride", "slope_from"):
    check_positive(name, config[name])
  if config.seq_len < 2:
    raise ConfigError(f"seq_len must be at least 2, got {config.seq_len}")
  if config.slope_from > config.seq_len - 1:
    raise ConfigError(f"slope_from {config.slope_from} leaves fewer than 2 positions of the {config.seq_len} to fit")
  budget = {"steps": config.steps, "batch_size": config.batch_size, "seq_len": config.seq_len,
            "warmup_steps": config.warmup_steps, "eval_windows": config.eval_windows}
  for size in sizes:  # the experiment's own checks on every run the table makes
    for model in MODELS:
      gpt2_experiment.check_config(run_config(model, size, 1, config.lstm_layers, **budget))
  return sizes, budget


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Trains (or reuses) every run and writes results.json, lstm_vs_transformer.md and .png into `outdir`."""
  sizes, budget = check_config(config)
  runs = Runs(config.workdir_root or os.path.join(outdir, "models"))
  start = time.perf_counter()
  rows = model_rows(sizes, config.lstm_layers, budget, (config.position_windows, config.position_stride),
                    config.slope_from, runs)
  total = time.perf_counter() - start
  text = markdown(rows, budget, config, runs, total)
  results = {"budget": budget, "rows": rows,
             "loss": "nats per character; position_loss[t] is the loss of the token at position t + 1",
             "runs": {"trained": sorted(os.path.basename(w) for w in runs.trained),
                      "reused": sorted(os.path.basename(w) for w in runs.reused),
                      "wall_time_s": {os.path.basename(w): t for w, t in runs.wall_time_s.items()}}}
  print(text)
  return harness.write_report(outdir, "lstm_vs_transformer", results, text, figure=figure(rows), config=config,
                              wall_time_s=total)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
