"""Kaplan et al. (2020) / GPT-3 scaling curve in shape: validation loss against model size and compute.

Character-level GPTs on the bundled python_docs text, each trained by `experiments.gpt2.run`
(the one training loop) with the same steps, batch, context and optimizer, so every model sees
the same tokens. Three parts:

  scaling     validation loss L (nats per character, the held-out windows the loop scores)
              against non-embedding parameters N (Kaplan et al.'s count,
              `gpt2.count_params(cfg, embeddings=False)`) for `sizes`, with the least-squares fit
              of log L = alpha_N (log N_c - log N), i.e. L(N) = (N_c / N)^alpha_N, beside the
              paper's alpha_N = 0.076; and against training compute C = XLA's FLOPs of one
              training step (the loop's `flops_per_step`) x steps, with 6 N D (D = tokens seen)
              beside it.
  positions   learned vs RoPE vs ALiBi at `ablation_size`, each scored at the training context T
              and at 2T on the same held-out text (`gpt2.eval_loss`), also on the predictions at
              positions T .. 2T-1 only: the ones no model saw in training. Every run uses a
              learned table of n_positions = 2T so that the learned model can run at 2T; its
              rows T .. 2T-1 stay untrained.
  attention   the ablation size trained with naive (`reference`) and `flash` attention: the two
              validation losses and their difference; and the naive-trained weights scored by
              both kernels (the same weights, so only float rounding separates them).

Runs go into `workdir_root` (default <outdir>/models), one directory per config (named by its
fields and a hash of the whole config), so a rerun reuses finished runs and resumes
interrupted ones.

Run:
  python -m experiments.tables.gpt_scaling --outdir=experiments/tables/results/gpt_scaling
  python -m experiments.tables.gpt_scaling --outdir=/tmp/gpt_scaling --config.sizes=1:16:2 --config.sizes=1:32:2 \\
      --config.ablation_size=1:16:2 --config.steps=20 --config.seq_len=16 --config.eval_windows=8
  python -m experiments.tables.gpt_scaling --outdir=/tmp/gpt_scaling --config=experiments/tables/gpt_scaling.py:smoke
"""

import dataclasses
import hashlib
import json
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
from research.data import tokenizers, tokens
from research.models import gpt2
from research.tasks import gpt2 as gpt2_tasks
from research.train import Checkpointer, ConfigError, check_positive, cli, eval_params, init_state

# Kaplan et al. (2020), eq. 1.1 / Figure 1: L(N) = (N_c / N)^alpha_N for models trained to convergence
# on WebText2 (loss in nats per BPE token), non-embedding N.
PAPER_ALPHA_N = 0.076
PAPER_N_C = 8.8e13
POSITION_SCHEMES = ("learned", "rope", "alibi")


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Two one-block sizes, the learned positions only, a few steps on short windows, for tests."""
  config.sizes, config.ablation_size, config.positions = ("1:16:2", "1:32:2"), "1:16:2", ("learned",)
  config.steps, config.batch_size, config.seq_len, config.warmup_steps, config.eval_windows = 6, 4, 16, 2, 6


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The table's sizes and budget; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.sizes = ("1:32:2", "2:48:4", "2:64:4", "3:96:4", "4:128:4")  # n_layer:n_embd:n_head of the scaling curve
  config.ablation_size = "2:64:4"  # n_layer:n_embd:n_head of the position and attention ablations
  config.positions = POSITION_SCHEMES  # position schemes compared
  config.steps = 600  # training steps of every run
  config.batch_size = 16  # windows per step
  config.seq_len = 64  # training context T (characters per window)
  config.warmup_steps = 60  # learning-rate warmup steps (then cosine decay)
  config.eval_windows = 256  # held-out windows of T + 1 characters scored
  config.workdir_root = ""  # directory of the training runs; "": <outdir>/models
  return cli.apply_presets(config, preset, PRESETS)


@dataclasses.dataclass(frozen=True)
class Size:
  n_layer: int
  n_embd: int
  n_head: int

  @property
  def name(self) -> str:
    return f"{self.n_layer}x{self.n_embd}x{self.n_head}"


def fit_power_law(n, loss) -> tuple[float, float]:
  """Least squares in log space of L(N) = (N_c / N)^alpha: log L = alpha log N_c - alpha log N.

  Args:
    n: model sizes (at least two distinct values).
    loss: the losses at those sizes (positive).

  Returns:
    (alpha, N_c).
  """
  log_n, log_loss = np.log(np.asarray(n, np.float64)), np.log(np.asarray(loss, np.float64))
  slope, intercept = np.polyfit(log_n, log_loss, 1)
  alpha = -slope
  return float(alpha), float(np.exp(intercept / alpha))


def parse_size(text: str) -> Size:
  """n_layer:n_embd:n_head -> Size; raises ConfigError on anything else."""
  parts = text.split(":")
  try:
    size = Size(*(int(p) for p in parts)) if len(parts) == 3 else None
  except ValueError:
    size = None
  if size is None or min(size.n_layer, size.n_embd, size.n_head) < 1:
    raise ConfigError(f"a size must be n_layer:n_embd:n_head with positive integers, got {text!r}")
  return size


def run_config(size: Size, positions: str, attention: str, steps: int, batch_size: int, seq_len: int,
               warmup_steps: int, eval_windows: int):
  """experiments/gpt2.py's default config with this table's size, positions, kernel and budget."""
  config = gpt2_experiment.get_config()
  config.n_layer, config.n_embd, config.n_head = size.n_layer, size.n_embd, size.n_head
  config.positions, config.attention = positions, attention
  config.seq_len, config.n_positions = seq_len, 2 * seq_len  # learned models must run at 2T too
  config.steps, config.batch_size = steps, batch_size
  config.optimizer.warmup_steps = warmup_steps
  config.eval_windows = eval_windows
  config.eval_every = 0  # the validation loss once, at the end
  config.checkpoint_every = steps
  config.log_every = max(1, min(100, steps))
  # Samples are a by-product here: a few short ones that fit the learned table.
  config.num_prompts, config.prompt_len, config.sample_tokens = 2, seq_len // 2, seq_len
  return config


class Runs:
  """The table's training runs under one root directory: one workdir per config, finished runs reused."""

  def __init__(self, root: str):
    self.root = root
    self.trained: set[str] = set()  # workdirs trained (or resumed) by this invocation
    self.reused: set[str] = set()  # workdirs an earlier invocation finished
    self.wall_time_s: dict[str, float] = {}  # each run's own wall time, from its results.json

  def workdir(self, config) -> str:
    """Readable fields plus a hash of the whole config, so a changed config never resumes another's run."""
    digest = hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()[:10]
    return os.path.join(self.root, f"model_{config.n_layer}x{config.n_embd}x{config.n_head}_{config.positions}_"
                                   f"{config.attention}_{digest}")

  def results(self, config) -> dict:
    """The run's results.json: read if the run finished before, else trained (or resumed) by the loop."""
    workdir = self.workdir(config)
    path = os.path.join(workdir, "results.json")
    results = None
    if os.path.exists(path):
      with open(path) as f:
        results = json.load(f)
      if results.get("step") != config.steps or "val_loss" not in results:
        results = None
      elif workdir not in self.trained:
        self.reused.add(workdir)
    if results is None:
      results = gpt2_experiment.run(config, workdir)
      self.trained.add(workdir)
    self.wall_time_s[workdir] = results.get("wall_time_s")
    return results


def trained_model(config, workdir: str) -> tuple[object, dict, object]:
  """(model, params, tokenizer) of a finished run, the params restored from its last checkpoint.

  The model is the one config.model names (research.tasks.gpt2.make_model): a GPT2, or an LSTM.
  """
  tokenizer = tokenizers.load(os.path.join(workdir, "tokenizer.json"))
  vocab_size = -(-tokenizer.vocab_size // config.vocab_multiple) * config.vocab_multiple
  task = gpt2_tasks.make_task(config, vocab_size, tokenizer.decode, [])
  batch = {"tokens": jax.ShapeDtypeStruct((config.batch_size, config.seq_len + 1), jnp.int32)}
  abstract = jax.eval_shape(lambda key, b: init_state(task, key, b, config.ema_decay), jax.random.key(0), batch)
  checkpoints = Checkpointer(workdir, config.keep_checkpoints)
  restored = checkpoints.restore(abstract)
  checkpoints.close()
  if restored is None:
    raise RuntimeError(f"no checkpoint in {workdir}")
  state, _ = restored
  if int(state.step) != config.steps:
    raise RuntimeError(f"the last checkpoint in {workdir} is step {int(state.step)}, not {config.steps}")
  return gpt2_tasks.make_model(config, vocab_size), eval_params(state)["params"], tokenizer


def held_out_windows(config, tokenizer, length: int) -> np.ndarray:
  """(N, length + 1) consecutive windows of the held-out text the loop scores (its first windows x (T + 1) ids).

  The stream is the one experiments/gpt2.py reads (same split, separator and length, hence the
  same cached file); at length = seq_len these are exactly the loop's evaluation windows.
  """
  span = config.seq_len + 1
  stream = tokens.token_stream(config.dataset, config.eval_split, tokenizer, tokenizer.encode("\n\n"),
                               config.eval_windows * span + config.prompt_len)
  text = np.asarray(stream[:min(config.eval_windows, len(stream) // span) * span], np.int32)
  count = len(text) // (length + 1)
  return text[:count * (length + 1)].reshape(count, length + 1)


def scaling_rows(sizes, budget, runs: Runs) -> list[dict]:
  """Trains (or reuses) one learned-position, naive-attention run per size."""
  rows = []
  for size in sizes:
    config = run_config(size, "learned", "reference", **budget)
    results = runs.results(config)
    cfg = gpt2.model_config(config, 1)
    n = gpt2.count_params(cfg, embeddings=False)
    tokens_seen = config.steps * config.batch_size * config.seq_len
    flops = results.get("flops_per_step")
    rows.append({"size": size.name, "n_layer": size.n_layer, "n_embd": size.n_embd, "n_head": size.n_head,
                 "non_embedding_params": n, "val_loss": results["val_loss"],
                 "val_bits_per_char": results["val_bits_per_char"], "train_loss": results["train_loss"],
                 "flops_per_step": flops, "train_flops": flops * config.steps if flops else None,
                 "six_n_d": 6.0 * n * tokens_seen, "tokens_seen": tokens_seen,
                 "steps_per_second": results.get("steps_per_second"), "run_wall_time_s": results.get("wall_time_s")})
    print(f"size {size.name}: N = {n:,}, val loss {results['val_loss']:.4f}", flush=True)
  return rows


def position_rows(size: Size, schemes, budget, runs: Runs) -> list[dict]:
  """Each position scheme at one size, scored at T and 2T on the same held-out text."""
  rows = []
  for positions in schemes:
    config = run_config(size, positions, "reference", **budget)
    results = runs.results(config)
    model, params, tokenizer = trained_model(config, runs.workdir(config))
    t = config.seq_len
    short, long = held_out_windows(config, tokenizer, t), held_out_windows(config, tokenizer, 2 * t)
    at_t = gpt2.eval_loss(model, params, short, batch_size=config.eval_batch_size)
    rows.append({"positions": positions, "val_loss": results["val_loss"], "loss_at_t": at_t,
                 "loss_at_2t": gpt2.eval_loss(model, params, long, batch_size=config.eval_batch_size),
                 "loss_at_2t_beyond_t": gpt2.eval_loss(model, params, long, batch_size=config.eval_batch_size,
                                                       from_position=t),
                 "windows_at_t": len(short), "windows_at_2t": len(long),
                 "eval_loss_minus_loop_val_loss": at_t - results["val_loss"],
                 "params": gpt2.count_params(model.cfg), "non_embedding_params": gpt2.count_params(model.cfg, False)})
    row = rows[-1]
    print(f"positions {positions}: loss at T {row['loss_at_t']:.4f}, at 2T {row['loss_at_2t']:.4f} "
          f"(positions >= T: {row['loss_at_2t_beyond_t']:.4f})", flush=True)
  return rows


def attention_rows(size: Size, budget, runs: Runs) -> dict:
  """Naive vs flash attention at one size: each trained, and the naive-trained weights scored by both."""
  trained = {}
  for attention in ("reference", "flash"):
    config = run_config(size, "learned", attention, **budget)
    results = runs.results(config)
    trained[attention] = {"val_loss": results["val_loss"], "train_loss": results["train_loss"],
                          "steps_per_second": results.get("steps_per_second")}
  config = run_config(size, "learned", "reference", **budget)
  model, params, tokenizer = trained_model(config, runs.workdir(config))
  windows = held_out_windows(config, tokenizer, config.seq_len)
  flash_model = gpt2.GPT2(dataclasses.replace(model.cfg, attention="flash"))
  same_weights = {name: gpt2.eval_loss(m, params, windows, batch_size=config.eval_batch_size)
                  for name, m in (("reference", model), ("flash", flash_model))}
  out = {"runs": trained, "val_loss_difference": trained["flash"]["val_loss"] - trained["reference"]["val_loss"],
         "same_weights": same_weights,
         "same_weights_difference": same_weights["flash"] - same_weights["reference"]}
  print(f"attention: trained val loss reference {trained['reference']['val_loss']:.6f}, flash "
        f"{trained['flash']['val_loss']:.6f}; same weights differ by {out['same_weights_difference']:.2e}", flush=True)
  return out


def markdown(scaling, fit, positions, attention, budget, ablation: Size, runs: Runs, total_s: float) -> str:
  """The three tables with the command that produced them."""
  alpha, n_c = fit
  env = harness.environment()["devices"]
  t = budget["seq_len"]
  tokens_seen = budget["steps"] * budget["batch_size"] * t
  optimizer = run_config(ablation, "learned", "reference", **budget).optimizer
  blocks = [f"Character-level GPT-2s trained by `experiments.gpt2.run` on the bundled python_docs text: "
            f"{budget['steps']} steps of {budget['batch_size']} windows of T = {t} characters ({tokens_seen:,} "
            f"training tokens for every model), {optimizer.name} at {optimizer.learning_rate:g} (weight decay "
            f"{optimizer.weight_decay:g}) with {budget['warmup_steps']} warmup steps and cosine decay, learned "
            "positions (a table of 2T rows) and naive attention unless a row says otherwise. Validation "
            f"loss in nats per character on the first {budget['eval_windows']} held-out windows of T + 1 characters. "
            f"{len(runs.wall_time_s)} training runs, {sum(w or 0.0 for w in runs.wall_time_s.values()):.0f} s of "
            f"their own wall time ({len(runs.trained)} trained by this command, {len(runs.reused)} finished by an "
            f"earlier one with the same configs and reused); this command: {total_s:.0f} s on {env['kind']} "
            f"({env['cpu_count']} CPU cores, shared with other jobs).",
            "## Loss against non-embedding parameters and compute",
            harness.table(["n_layer x n_embd x n_head", "N (non-embedding)", "val loss", "bits / char",
                           "C = FLOPs/step x steps (XLA)", "6 N D"],
                          [(row["size"], f"{row['non_embedding_params']:,}", f"{row['val_loss']:.4f}",
                            f"{row['val_bits_per_char']:.3f}",
                            f"{row['train_flops']:.3g}" if row["train_flops"] else "n/a", f"{row['six_n_d']:.3g}")
                           for row in scaling])]
  ns = [r["non_embedding_params"] for r in scaling]
  blocks += [f"Least-squares fit in log space over the {len(scaling)} sizes: **alpha_N = {alpha:.3f}** "
             f"(N_c = {n_c:.3g}); Kaplan et al.: alpha_N = {PAPER_ALPHA_N} (N_c = {PAPER_N_C:.2g}, nats per BPE "
             f"token). N spans {max(ns) / min(ns):.0f}x. The paper's law describes models trained to convergence on "
             "billions of tokens, where only N limits the loss; here every model sees the same few hundred thousand "
             "characters of one small corpus for a fixed number of steps, so the larger models are undertrained and "
             "the exponent measures this budget as much as the models: it is the curve's shape, not the paper's "
             "constant, that this table reproduces. Compute C counts the whole training step as XLA's cost "
             "analysis sees it (forward, backward, attention, the output layer over the vocabulary and the "
             "optimizer update); 6 N D is Kaplan et al.'s estimate from non-embedding parameters alone.",
             f"## Positions at {ablation.name}: trained at T = {t}, scored at T and 2T = {2 * t}",
             harness.table(["positions", "val loss at T (the loop's)", "at T (eval_loss)", "at 2T, all positions",
                            "at 2T, positions T .. 2T-1 only", "increase beyond T (vs at T)"],
                           [(row["positions"], f"{row['val_loss']:.4f}", f"{row['loss_at_t']:.4f}",
                             f"{row['loss_at_2t']:.4f}", f"{row['loss_at_2t_beyond_t']:.4f}",
                             f"{row['loss_at_2t_beyond_t'] - row['loss_at_t']:+.4f}") for row in positions])]
  if positions:
    lowest = min(positions, key=lambda r: r["loss_at_2t_beyond_t"])
    steadiest = min(positions, key=lambda r: r["loss_at_2t_beyond_t"] - r["loss_at_t"])
    blocks += [f"At 2T the same held-out text is cut into {positions[0]['windows_at_2t']} windows of 2T + 1 "
               f"characters (at T: {positions[0]['windows_at_t']} of T + 1). The learned table's rows T .. 2T-1 "
               "were never trained (they keep their initial values), RoPE rotates by angles never seen in training, "
               "ALiBi only adds a longer linear distance penalty (Press et al. 2022: trained short, tested long). "
               f"Beyond T, the smallest increase over the loss at T is {steadiest['positions']}'s and the lowest loss "
               f"is {lowest['positions']}'s. eval_loss at T equals the loop's validation loss to "
               f"{max(abs(r['eval_loss_minus_loop_val_loss']) for r in positions):.1e}."]
  kernels = attention["runs"]
  blocks += [f"## Naive vs flash attention at {ablation.name}",
             harness.table(["attention", "val loss (trained with it)", "train loss (last interval)", "steps / s"],
                           [(label, f"{kernels[name]['val_loss']:.6f}", f"{kernels[name]['train_loss']:.6f}",
                             f"{kernels[name]['steps_per_second']:.1f}" if kernels[name]["steps_per_second"] else "n/a")
                            for name, label in (("reference", "naive (reference)"), ("flash", "flash"))]),
             "Trained separately, the two runs' validation losses differ by "
             f"{attention['val_loss_difference']:+.2e} nats after {budget['steps']} steps; a nonzero difference is "
             "float32 rounding (the kernels sum in different orders) compounded over the steps. The naive-trained "
             "weights scored by both kernels differ by "
             f"{attention['same_weights_difference']:+.2e} nats (naive {attention['same_weights']['reference']:.6f}, "
             f"flash {attention['same_weights']['flash']:.6f}). Steps / s come from separate runs on shared cores, "
             "so they are no speed comparison (attention_memory.md compares the kernels alone)."]
  return harness.document("GPT scaling on python_docs (Kaplan et al. 2020 / GPT-3 in shape)", *blocks)


def figure(scaling, fit, positions) -> Figure:
  """Loss vs N with the fit, loss vs compute (log-log), and the position ablation's bars."""
  fig = Figure(figsize=(14, 4.2), dpi=100)
  by_n, by_c, bars = fig.subplots(1, 3)
  ns = np.asarray([r["non_embedding_params"] for r in scaling], np.float64)
  losses = np.asarray([r["val_loss"] for r in scaling])
  alpha, n_c = fit
  by_n.plot(ns, losses, "o", label="trained models")
  grid = np.geomspace(ns.min(), ns.max(), 50)
  by_n.plot(grid, (n_c / grid) ** alpha, "--", label=f"fit: (N_c / N)^{alpha:.3f}")
  for row in scaling:
    by_n.annotate(row["size"], (row["non_embedding_params"], row["val_loss"]), fontsize=7,
                  textcoords="offset points", xytext=(4, 4))
  by_n.set_xlabel("non-embedding parameters N")
  by_n.set_title(f"loss vs N (Kaplan et al.: alpha_N = {PAPER_ALPHA_N})")
  flops = [(r["train_flops"] or r["six_n_d"], r["val_loss"], r["size"]) for r in scaling]
  by_c.plot([f for f, _, _ in flops], [loss for _, loss, _ in flops], "s-")
  for f, loss, name in flops:
    by_c.annotate(name, (f, loss), fontsize=7, textcoords="offset points", xytext=(4, 4))
  by_c.set_xlabel("training compute C (FLOPs, XLA cost analysis)")
  by_c.set_title("loss vs compute (same tokens for every N)")
  for ax in (by_n, by_c):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylabel("validation loss (nats / char)")
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.2f"))
    ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%.2f"))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())  # labelled minor ticks overlap on a short log range
    ax.grid(True, which="both", alpha=0.3)
  by_n.legend(fontsize=8)
  if positions:
    x = np.arange(len(positions))
    width = 0.27
    for i, (key, label) in enumerate((("loss_at_t", "at T"), ("loss_at_2t", "at 2T"),
                                      ("loss_at_2t_beyond_t", "at 2T, positions >= T"))):
      bars.bar(x + (i - 1) * width, [r[key] for r in positions], width, label=label)
    bars.set_xticks(x, [r["positions"] for r in positions])
    values = [r[key] for r in positions for key in ("loss_at_t", "loss_at_2t", "loss_at_2t_beyond_t")]
    # A zoomed axis: the schemes differ by far less than the loss itself.
    spread = max(values) - min(values)
    bars.set_ylim(min(values) - 0.3 * spread - 1e-3, max(values) + 0.5 * spread + 1e-3)
    bars.set_ylabel("validation loss (nats / char)")
    bars.set_title("positions: trained at T, scored at T and 2T")
    bars.legend(fontsize=8, loc="upper left")
  fig.tight_layout()
  return fig


def check_config(config: ml_collections.ConfigDict) -> tuple[list[Size], Size, list[str], dict]:
  """Parses and checks every field; raises ConfigError before anything is loaded, compiled or written."""
  sizes = [parse_size(s) for s in config.sizes]
  ablation = parse_size(config.ablation_size)
  if len(set(sizes)) < 2:
    raise ConfigError(f"sizes needs at least 2 different sizes for a fit, got {', '.join(config.sizes)}")
  harness.check_names("positions", config.positions, POSITION_SCHEMES)
  schemes = list(config.positions)
  if config.eval_windows < 2:
    raise ConfigError(f"eval_windows must be at least 2 (one window at twice the length), got {config.eval_windows}")
  budget = {"steps": config.steps, "batch_size": config.batch_size, "seq_len": config.seq_len,
            "warmup_steps": config.warmup_steps, "eval_windows": config.eval_windows}
  check_positive("steps", config.steps)
  if config.seq_len < 2:
    raise ConfigError(f"seq_len must be at least 2, got {config.seq_len}")
  # The experiment's own checks (n_embd divisible by n_head, ...) on every run the table makes.
  runs = [(size, "learned") for size in sizes] + [(ablation, positions) for positions in schemes]
  for size, positions in runs:
    gpt2_experiment.check_config(run_config(size, positions, "reference", **budget))
    if positions == "rope" and (size.n_embd // size.n_head) % 2:
      raise ConfigError(f"size {size.name}: RoPE needs an even head dimension, got {size.n_embd // size.n_head}")
  return sizes, ablation, schemes, budget


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Trains (or reuses) every run and writes results.json, gpt_scaling.md and gpt_scaling.png into `outdir`."""
  sizes, ablation, schemes, budget = check_config(config)
  runs = Runs(config.workdir_root or os.path.join(outdir, "models"))
  start = time.perf_counter()
  scaling = scaling_rows(sizes, budget, runs)
  fit = fit_power_law([r["non_embedding_params"] for r in scaling], [r["val_loss"] for r in scaling])
  print(f"fit: alpha_N = {fit[0]:.4f}, N_c = {fit[1]:.3g} (Kaplan et al.: {PAPER_ALPHA_N})", flush=True)
  positions = position_rows(ablation, schemes, budget, runs)
  attention = attention_rows(ablation, budget, runs)
  total = time.perf_counter() - start
  text = markdown(scaling, fit, positions, attention, budget, ablation, runs, total)
  results = {"budget": budget, "ablation_size": ablation.name, "scaling": scaling,
             "fit": {"alpha_n": fit[0], "n_c": fit[1], "loss": "val_loss (nats per character)"},
             "paper": {"alpha_n": PAPER_ALPHA_N, "n_c": PAPER_N_C},
             "compute": "train_flops = flops_per_step (XLA cost analysis of one training step) x steps",
             "positions": positions, "attention": attention,
             "runs": {"trained": sorted(os.path.basename(w) for w in runs.trained),
                      "reused": sorted(os.path.basename(w) for w in runs.reused),
                      "wall_time_s": {os.path.basename(w): t for w, t in runs.wall_time_s.items()}}}
  print(text)
  return harness.write_report(outdir, "gpt_scaling", results, text, figure=figure(scaling, fit, positions),
                              config=config, wall_time_s=total)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
