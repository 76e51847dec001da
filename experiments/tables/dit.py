"""DiT's ablations in shape on 8x8 digits: FID against forward Gflops (sizes x patch sizes), and conditioning.

Peebles & Xie (2023), "Scalable Diffusion Models with Transformers":
  (1) Figure 2 / Table 4: FID falls as a DiT's forward Gflops grow, and the patch size (the number
      of tokens) matters more than the parameter count: at one size a smaller patch costs more
      Gflops with nearly the same parameters and gives a lower FID; a smaller model with more
      tokens can beat a bigger one with fewer.
  (2) Figure 5: the conditioning mechanisms at one size, FID over training: adaLN-Zero below
      cross-attention, in-context and adaLN.

Every cell trains `seeds` class-conditional DiTs on the digits training split as ONE vmapped
program (research.sweep.run: the training loop's own step under lax.scan and vmap) with
experiments/diffusion.py's recipe (linear β, T = 1000, ε-prediction, 10% label dropout, Adam
1e-3 with warmup and cosine decay, gradient clipping, an EMA of the weights), then scores each member as that
experiment scores a run: `num_samples` DDIM samples (S = 50, η = 0, labels cycling 0..9) from
the EMA parameters, scored by research.tasks.classifier.digits_sample_metrics in both digits
feature spaces (the MLP classifier's and the convolutional classifier's): FID and KID (± its
standard error) against the training digits beside the 300 real held-out digits' own at the same
count (the first min(num_samples, 300) samples), the FID ratio to them, precision and recall.
The Markdown gives both spaces and names the rows they order differently. Member s is
the run `python -m experiments.diffusion --config.model=dit --config.seed=s` would make with the
same fields (same key streams, data order and evaluation key). The conditioning ablation trains
in `eval_points` chunks, each continuing the last (sweep.run's `state`), and scores the members
after every chunk. Forward Gflops per image come from XLA's cost analysis (dit.forward_flops),
halved to count multiply-adds as the paper does.

Run:
  python -m experiments.tables.dit --outdir=experiments/tables/results/dit
  python -m experiments.tables.dit --outdir=/tmp/dit --config=experiments/tables/dit.py:smoke
  python -m experiments.tables.dit --outdir=/tmp/dit --config.sizes=DiT-T --config.patches=4 --config.steps=4 \
      --config.num_samples=20 --config.conditioning_model=DiT-T/4 --config.conditionings=adaln_zero \
      --config.conditionings=in_context --config.conditioning_steps=4 --config.eval_points=2

The default (DiT-T and DiT-XS x patches 4 and 2, 600 steps at batch 32, 400 samples per member,
adaLN-Zero / adaLN / cross-attention / in-context on DiT-T/2 scored at steps 200, 400 and 600)
took 2841 s on 2 CPU cores shared with other jobs (a load average of 4 to 9; 491 s on less
loaded cores before the two-space scoring); patch 1 (64 tokens) costs DiT-XS about 8x the
compute of DiT-T/2 per step (add it with --config.patches=4,2,1 on a faster machine). When the
ablation's model and length match a grid cell, its adaLN-Zero run is that cell (chunks chain
exactly), so it trains once.

At 600 steps these pixel-space DiTs have not yet learnt where patches go (patch 4 beats patch 2);
the paper's shapes appear with 12000 steps, e.g. (about 45 minutes on 2 CPU cores):
  python -m experiments.tables.dit --outdir=experiments/tables/results/dit/long --config.sizes=DiT-T \
      --config.patches=4,2 --config.steps=12000 --config.conditioning_steps=12000 --config.eval_points=3
"""

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from experiments import diffusion as diffusion_experiment
from experiments import harness
from research import data as data_lib
from research import sweep
from research.models import dit
from research.tasks import classifier as classifier_tasks
from research.tasks import diffusion
from research.train import ConfigError, Keys, check_positive, cli, eval_params

IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 10
EMA_DECAY = 0.999  # experiments/diffusion.py's, kept for runs long enough to average over it
MIN_SAMPLES = 4  # precision/recall's k-th neighbour (k = 3) needs more samples than k
SUMMARY = ("fid", "fid_ratio", "kid", "precision", "recall")  # each space's metrics averaged over members
SPACES = classifier_tasks.SPACE_TITLES


def space_name(prefix: str) -> str:
  """"mlp" or "cnn": a space's key in results.json's trends."""
  return prefix.rstrip("_") or "mlp"

LABELS = {"adaln_zero": "adaLN-Zero", "adaln": "adaLN", "cross_attention": "cross-attention",
          "in_context": "in-context"}


def _smoke(config: ml_collections.ConfigDict) -> None:
  """One cell, two conditionings, two steps of two members, few samples, for tests."""
  config.sizes, config.patches, config.steps, config.seeds = ("DiT-T",), (4,), 2, 2
  config.num_samples, config.batch_size = 8, 16
  config.conditioning_model, config.conditionings = "DiT-T/4", ("adaln_zero", "in_context")
  config.conditioning_steps, config.eval_points = 2, 2


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The table's grid and ablation; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.sizes = ("DiT-T", "DiT-XS")  # DiT sizes of the Gflops grid (research.models.dit.SIZES)
  config.patches = (4, 2)  # patch sizes of the Gflops grid (each must divide 8)
  config.steps = 600  # training steps of every cell of the Gflops grid
  config.seeds = 2  # members per cell, trained as one vmapped program
  config.batch_size = 32  # images per update
  config.num_samples = 400  # DDIM samples scored per member (FID's bias depends on it)
  config.conditioning_model = "DiT-T/2"  # the DiT of the conditioning ablation
  config.conditionings = dit.CONDITIONINGS  # conditioning mechanisms compared
  config.conditioning_steps = 600  # training steps of the conditioning ablation
  # Evaluations along the conditioning ablation's training, equally spaced (must divide conditioning_steps).
  config.eval_points = 3
  return cli.apply_presets(config, preset, PRESETS)


class Grid:
  """The checked config."""

  def __init__(self, config: ml_collections.ConfigDict):
    if not all(isinstance(p, int) for p in config.patches):
      raise ConfigError(f"patches takes integers, got {config.patches}")
    self.patches, self.sizes, self.conditionings = list(config.patches), list(config.sizes), list(config.conditionings)
    self.steps, self.seeds, self.num_samples = config.steps, list(range(config.seeds)), config.num_samples
    self.cond_model, self.cond_steps, self.eval_points = config.conditioning_model, config.conditioning_steps, \
        config.eval_points
    self.batch_size = config.batch_size
    harness.check_names("sizes", self.sizes, dit.SIZES)
    harness.check_names("conditionings", self.conditionings, dit.CONDITIONINGS)
    if not self.patches or len(set(self.patches)) != len(self.patches):
      raise ConfigError(f"patches must name distinct patch sizes, got {config.patches}")
    for name in ("steps", "seeds", "conditioning_steps", "eval_points", "batch_size"):
      check_positive(name, config[name])
    if self.num_samples < MIN_SAMPLES:
      raise ConfigError(f"num_samples must be at least {MIN_SAMPLES}, got {self.num_samples}")
    if self.cond_steps % self.eval_points:
      raise ConfigError(f"eval_points {self.eval_points} must divide conditioning_steps {self.cond_steps}")
    # The EMA is read as early as the first evaluation: its horizon 1 / (1 - decay) is a tenth of
    # that, or the averaged weights would still be mostly the initialisation (the experiment's
    # 0.999 keeps 74% of it after 300 steps).
    first_eval = min(self.steps, self.cond_steps // self.eval_points)
    self.ema_decay = max(0.0, min(EMA_DECAY, 1.0 - 10.0 / first_eval))
    # Every cell's config through the experiment's own checks (names, patch sizes, batch size).
    for name in self.names():
      diffusion_experiment.check_config(cell_config(name, "adaln_zero", self.steps, self))
    for conditioning in self.conditionings:
      diffusion_experiment.check_config(cell_config(self.cond_model, conditioning, self.cond_steps, self))

  def names(self) -> list[str]:
    return [f"{size}/{p}" for size in self.sizes for p in self.patches]


def cell_config(name: str, conditioning: str, steps: int, grid: Grid):
  """The experiments/diffusion.py config of one cell: a conditional DiT with the experiment's recipe.

  The warmup shrinks to a tenth of a short run so that the cosine decay still gets most of it.
  """
  num_samples = grid.num_samples
  config = diffusion_experiment.get_config()
  config.model, config.dit, config.dit_conditioning = "dit", name, conditioning
  config.steps, config.batch_size = steps, grid.batch_size
  config.num_samples, config.sample_batch = num_samples, min(config.sample_batch, num_samples)
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, steps // 10)
  config.ema_decay = grid.ema_decay
  return config


def model_cfg(config) -> dit.DiTConfig:
  """The DiT the diffusion task builds for `config` (research.tasks.diffusion.make_denoiser)."""
  return dit.config(config.dit, input_size=IMAGE_SHAPE[0], in_channels=IMAGE_SHAPE[-1], num_classes=NUM_CLASSES,
                    learn_sigma=False, conditioning=config.dit_conditioning)


def evaluate_members(task, state, seeds) -> tuple[list[dict], np.ndarray]:
  """Scores every member's EMA parameters as research.train.train's final evaluation would.

  Returns:
    (one dict of digits_sample_metrics' scalars per member (both spaces, beside real held-out digits),
    member 0's first 10 scored samples: one per class).
  """
  # The members' samples in one vmapped program, as research.train.train's sweeps evaluate them;
  # each member with the key research.train.train evaluates seed s with (see its Keys and evaluate).
  keys = jnp.stack([jax.random.split(Keys.from_seed(seed).eval)[0] for seed in seeds])
  arrays = jax.device_get(jax.jit(jax.vmap(task.evaluate, in_axes=(0, 0, None)))(eval_params(state), keys, None))
  scores = []
  for i in range(len(seeds)):
    metrics = task.summarize(jax.tree.map(lambda x, i=i: x[i], arrays))
    scores.append({k: metrics[k] for k in classifier_tasks.digits_sample_metric_names()})
  return scores, arrays["samples"][0, :NUM_CLASSES]  # member 0's first scored images: one per class


def summarize(scores: list[dict]) -> dict:
  """Mean ± standard error over the members of SUMMARY in both spaces: {"<prefix><metric>_mean_se": (mean, se)}."""
  return {f"{prefix}{k}_mean_se": harness.mean_se([s[prefix + k] for s in scores])
          for prefix, _ in SPACES for k in SUMMARY}


def run_gflops_cell(name: str, grid: Grid, data, shared: dict | None = None) -> dict:
  """Trains one (size, patch) cell's members in one vmapped program and scores them.

  `shared`: the conditioning ablation's adaLN-Zero run of this very config, whose last chunk ends
  in the state one run of `steps` would reach (sweep.run chains exactly), so it is not retrained.
  """
  config = cell_config(name, "adaln_zero", grid.steps, grid)
  cfg = model_cfg(config)
  if shared is not None:
    scores, samples, train_s, eval_s, final_loss = (shared["final_scores"], shared["samples_seed0"],
                                                     shared["train_s"], shared["last_eval_s"], shared["final_loss"])
  else:
    task = diffusion.make_task(config, IMAGE_SHAPE, NUM_CLASSES)
    start = time.perf_counter()
    result = sweep.run(task, config, data, seeds=grid.seeds)
    jax.block_until_ready(result.state)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    scores, samples = evaluate_members(task, result.state, grid.seeds)
    eval_s = time.perf_counter() - start
    final_loss = np.asarray(result.metrics["loss"])[:, -1]
  return {"model": name, "size": name.split("/")[0], "patch": cfg.patch_size, "tokens": cfg.num_patches,
          "params": dit.count_params(cfg), "gflops": dit.forward_flops(cfg) / 2e9, "members": scores,
          **summarize(scores), "final_loss_mean_se": harness.mean_se(final_loss), "train_s": round(train_s, 1),
          "eval_s": round(eval_s, 1), "shared_with_conditioning": shared is not None, "samples_seed0": samples}


def run_conditioning(conditioning: str, grid: Grid, data) -> dict:
  """Trains one conditioning's members in `eval_points` chained chunks, scoring them after each."""
  config = cell_config(grid.cond_model, conditioning, grid.cond_steps, grid)
  cfg = model_cfg(config)
  task = diffusion.make_task(config, IMAGE_SHAPE, NUM_CLASSES)
  chunk = grid.cond_steps // grid.eval_points
  state, points, train_s, eval_s = None, [], 0.0, 0.0
  for _ in range(grid.eval_points):
    start = time.perf_counter()
    result = sweep.run(task, config, data, seeds=grid.seeds, steps=chunk, state=state)
    state = jax.block_until_ready(result.state)
    train_s += time.perf_counter() - start
    start = time.perf_counter()
    scores, samples = evaluate_members(task, state, grid.seeds)
    last_eval_s = time.perf_counter() - start
    eval_s += last_eval_s
    step = int(np.asarray(state.step)[0])
    points.append({"step": step, "members": scores, **summarize(scores)})
    print(f"{conditioning} at step {step}: FID {harness.pm(points[-1]['fid_mean_se'], 2)}", flush=True)
  return {"conditioning": conditioning, "model": grid.cond_model, "params": dit.count_params(cfg),
          "gflops": dit.forward_flops(cfg) / 2e9, "points": points, "train_s": round(train_s, 1),
          "eval_s": round(eval_s, 1), "final_scores": scores, "samples_seed0": samples,
          "last_eval_s": round(last_eval_s, 1), "final_loss": np.asarray(result.metrics["loss"])[:, -1]}


def spearman(a, b) -> float:
  """Spearman's rank correlation (no tie correction: Gflops and FIDs here are distinct)."""
  ranks = lambda v: np.argsort(np.argsort(np.asarray(v, np.float64))).astype(np.float64)
  if len(a) < 2:
    return float("nan")
  return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def trends(cells: list[dict], conditionings: list[dict], prefix: str = "") -> dict:
  """The paper's claims checked against this run's mean FIDs in one feature space (`prefix`, as in SPACES).

  Returns:
    {"rho": Spearman(Gflops, FID) over cells, "monotone": {size: FID falls with every smaller
     patch}, "pairs": [(fewer-params-more-Gflops cell, more-params-fewer-Gflops cell, first
     wins)], "best_conditioning": the lowest final FID}.
  """
  key = f"{prefix}fid_mean_se"
  fid = {c["model"]: c[key][0] for c in cells}
  out = {"rho": spearman([c["gflops"] for c in cells], [fid[c["model"]] for c in cells]), "monotone": {}}
  for size in dict.fromkeys(c["size"] for c in cells):
    row = sorted((c for c in cells if c["size"] == size), key=lambda c: -c["patch"])  # growing Gflops
    out["monotone"][size] = all(b[key][0] < a[key][0] for a, b in zip(row, row[1:]))
  out["pairs"] = [(a["model"], b["model"], fid[a["model"]] < fid[b["model"]]) for a in cells for b in cells
                  if a["params"] < b["params"] and a["gflops"] > b["gflops"]]
  if conditionings:
    finals = {c["conditioning"]: c["points"][-1][key][0] for c in conditionings}
    out["best_conditioning"] = min(finals, key=finals.get)
  return out


def _sig(mean_se: tuple[float, float]) -> str:
  """mean ± se in 3 and 2 significant figures (KID's scale differs by orders of magnitude between the spaces)."""
  mean, se = mean_se
  return f"{mean:.3g} ± {se:.2g}" if np.isfinite(se) else f"{mean:.3g}"


def space_columns(stats: dict, prefix: str) -> tuple[str, ...]:
  """One space's FID, FID ratio, KID, precision and recall cells from a summarize() dict."""
  return (harness.pm(stats[f"{prefix}fid_mean_se"], 2), harness.pm(stats[f"{prefix}fid_ratio_mean_se"], 2),
          _sig(stats[f"{prefix}kid_mean_se"]), harness.pm(stats[f"{prefix}precision_mean_se"], 3),
          harness.pm(stats[f"{prefix}recall_mean_se"], 3))


SPACE_HEADER = ("FID", "FID ratio", "KID", "precision", "recall")


def checks(cells: list[dict], conditionings: list[dict], found: dict, prefix: str) -> list[str]:
  """The paper's trends as sentences, read off one space's mean FIDs (`found`: trends() in that space)."""
  key = f"{prefix}fid_mean_se"
  lines = []
  rho = found["rho"]
  if np.isfinite(rho):
    lines.append(f"- FID falls as Gflops grow (paper: yes): Spearman rank correlation of Gflops and mean FID over "
                 f"the {len(cells)} cells ρ = {rho:.2f} — " + ("shows" if rho < 0 else "does not show") + ".")
  for size, monotone in found["monotone"].items():
    row = sorted((c for c in cells if c["size"] == size), key=lambda c: -c["patch"])
    if len(row) < 2:
      continue  # one patch size: nothing to compare
    path = " → ".join(f"/{c['patch']} {c[key][0]:.2f}" for c in row)
    lines.append(f"- {size}, smaller patches at nearly equal parameters: FID {path} — "
                 + ("falls with every smaller patch" if monotone else "does not fall with every smaller patch") + ".")
  if found["pairs"]:
    wins = sum(w for _, _, w in found["pairs"])
    examples = "; ".join(f"{a} vs {b}: {'lower' if w else 'higher'}" for a, b, w in found["pairs"])
    lines.append(f"- Tokens over parameters (paper: a smaller model with more Gflops can beat a larger one with "
                 f"fewer): the cell with fewer parameters and more Gflops has the lower FID in {wins} of "
                 f"{len(found['pairs'])} such pairs ({examples}).")
  if len(conditionings) == 1:
    lines.append("- Conditioning: only one mechanism was trained, so there is nothing to compare.")
  elif conditionings:
    best = found["best_conditioning"]
    lines.append(f"- Conditioning (paper: adaLN-Zero lowest FID throughout training): lowest final FID here is "
                 f"{LABELS[best]} — " + ("shows" if best == "adaln_zero" else "does not show") + "; differences "
                 "within a few standard errors are not resolved by this many seeds.")
  return lines


def _fids(rows: dict, prefix: str) -> dict:
  """{row name: mean FID in one space} of {row name: summarize() dict}."""
  return {name: stats[f"{prefix}fid_mean_se"][0] for name, stats in rows.items()}


def disagreements(cells: list[dict], conditionings: list[dict]) -> list[str]:
  """Sentences naming the rows whose FID order differs between the two spaces (cells, then each evaluation)."""
  (mlp, _), (cnn, _) = SPACES
  grid = {c["model"]: c for c in cells}
  lines = [harness.disagreement_note("- Gflops grid, mean FID", _fids(grid, mlp), _fids(grid, cnn))]
  for i, point in enumerate(conditionings[0]["points"] if len(conditionings) > 1 else []):
    rows = {LABELS[c["conditioning"]]: c["points"][i] for c in conditionings}
    lines.append(harness.disagreement_note(f"- Conditioning at step {point['step']}, mean FID", _fids(rows, mlp),
                                           _fids(rows, cnn)))
  return lines


def real_reference(cells: list[dict]) -> dict:
  """The real held-out digits' scores at the members' count, as digits_sample_metrics measured them beside them."""
  return classifier_tasks.real_scores(cells[0]["members"][0])


def markdown(grid: Grid, cells: list[dict], conditionings: list[dict], found: dict, total_s: float) -> str:
  """The two tables in both feature spaces, the trend checks and the setup, with the command that produced them."""
  seeds = len(grid.seeds)
  real = real_reference(cells)
  n = real["num_scored"]
  reals = " and ".join(f"{real[prefix + 'fid_real']:.2f} / KID {real[prefix + 'kid_real']:.3g} ± "
                       f"{real[prefix + 'kid_se_real']:.2g} in the {title}'s features" for prefix, title in SPACES)
  blocks = [f"{seeds} seeds per cell, each cell one vmapped program (research.sweep.run); batch {grid.batch_size}; "
            f"{grid.num_samples} DDIM samples (S = 50, η = 0, labels cycling 0..9, EMA parameters) per member, the "
            f"first {n} scored (research.tasks.classifier.digits_sample_metrics) against the digits training split "
            f"in two feature spaces, beside the real held-out digits' first {n}, which score FID {reals}. FID ratio: "
            "a member's FID over the real digits' at the same count; KID: the unbiased squared MMD (cubic kernel); "
            "precision and recall with k = 3. Values are mean ± standard error over seeds. Whole table: "
            f"{total_s:.0f} s wall on {harness.environment()['devices']['kind']} (shared with other jobs, so the "
            "wall times compare cells only roughly).",
            f"## FID against forward Gflops ({grid.steps} training steps per cell, adaLN-Zero)",
            harness.table(["model", "patch", "tokens", "params", "Gflops", "train s", "sample + score s"],
                          [(c["model"], c["patch"], c["tokens"], f"{c['params'] / 1e6:.3f}M", f"{c['gflops']:.5f}",
                            f"{c['train_s']:.0f}", f"{c['eval_s']:.0f}") for c in cells])]
  for prefix, title in SPACES:
    blocks += [f"### {title}",
               harness.table(["model", *SPACE_HEADER], [(c["model"], *space_columns(c, prefix)) for c in cells],
                             align="l" + "r" * len(SPACE_HEADER))]
  notes = ["Gflops per image are multiply-adds (the paper's convention: half of XLA's flop count)."]
  shared = [c["model"] for c in cells if c["shared_with_conditioning"]]
  if shared:
    notes.append(f"{shared[0]} is the conditioning ablation's adaLN-Zero run (trained in chunks, which end in the "
                 "state one uninterrupted run reaches), not trained twice; its times are that run's.")
  blocks.append("\n".join(notes))
  if conditionings:
    steps = [p["step"] for p in conditionings[0]["points"]]
    blocks += [f"## Conditioning ({grid.cond_model}, FID over training)",
               harness.table(["conditioning", "params", "Gflops", "train s", "sample + score s"],
                             [(LABELS[c["conditioning"]], f"{c['params'] / 1e6:.3f}M", f"{c['gflops']:.5f}",
                               f"{c['train_s']:.0f}", f"{c['eval_s']:.0f}") for c in conditionings])]
    for prefix, title in SPACES:
      header = [*(f"FID @ {s}" for s in steps), *(f"{h} (last)" for h in SPACE_HEADER[1:])]
      blocks += [f"### {title}",
                 harness.table(["conditioning", *header],
                               [(LABELS[c["conditioning"]],
                                 *(harness.pm(p[f"{prefix}fid_mean_se"], 2) for p in c["points"]),
                                 *space_columns(c["points"][-1], prefix)[1:]) for c in conditionings],
                               align="l" + "r" * len(header))]
  blocks += ["## Where the two spaces order rows differently", "\n".join(disagreements(cells, conditionings)),
             "## Do the paper's trends show at this scale?"]
  for prefix, title in SPACES:
    blocks += [f"### {title}", "\n".join(checks(cells, conditionings, found[space_name(prefix)], prefix))]
  blocks.append("Setup: pixel-space DiTs on 8x8x1 digits (the paper's are latent-space on 32x32x4 ImageNet "
                "latents); sizes from research/models/dit.py (DiT-T: depth 4, width 64, 4 heads; DiT-XS: depth 6, "
                "width 128, 4 heads), learn_sigma off, experiments/diffusion.py's training recipe with the warmup cut "
                f"to a tenth of short runs and EMA decay {grid.ema_decay:.3f} (a horizon of a tenth of the first "
                "evaluation's steps; the experiment's 0.999 would leave mostly the initialisation in the EMA of runs "
                "this short). The paper trains for 400K steps at batch 256; this table trains for minutes on a CPU, "
                "so it reproduces the comparisons' shape, not the paper's numbers.")
  return harness.document("DiT ablations in shape on 8x8 digits (Peebles & Xie 2023, Figure 2 / Table 4 and Figure 5)",
                          *blocks)


def figure(grid: Grid, cells: list[dict], conditionings: list[dict]) -> Figure:
  """Per space: FID vs Gflops (log x; a marker per size, a line per patch) and FID over training; and samples."""
  fig = Figure(figsize=(15, 8.4), dpi=100)
  axes = fig.subplot_mosaic([["flops", "flops_cnn", "samples"], ["cond", "cond_cnn", "samples"]],
                            gridspec_kw={"width_ratios": [1.1, 1.1, 0.9]})
  markers = dict(zip(grid.sizes, "osD^v<>"))
  real = real_reference(cells)
  for prefix, title in SPACES:
    key, ax_flops, ax_cond = f"{prefix}fid_mean_se", axes[f"flops{prefix and '_cnn'}"], axes[f"cond{prefix and '_cnn'}"]
    for patch in grid.patches:
      row = [c for c in cells if c["patch"] == patch]
      ax_flops.plot([c["gflops"] for c in row], [c[key][0] for c in row], "-", color="0.6", lw=1)
      ax_flops.annotate(f"/{patch}", (row[-1]["gflops"], row[-1][key][0]), textcoords="offset points",
                        xytext=(5, 3), fontsize=8)
    for size in grid.sizes:
      row = [c for c in cells if c["size"] == size]
      ax_flops.errorbar([c["gflops"] for c in row], [c[key][0] for c in row],
                        yerr=[np.nan_to_num(c[key][1]) for c in row], fmt=markers[size], ms=7, capsize=3, label=size)
    for ax in (ax_flops, ax_cond):
      ax.axhline(real[f"{prefix}fid_real"], color="gray", lw=1, ls=":", label=f"real held-out ({real['num_scored']})")
    ax_flops.set_xscale("log")
    ax_flops.set_xlabel("forward Gflops per image (multiply-adds)")
    ax_flops.set_ylabel("FID")
    ax_flops.set_title(f"FID vs Gflops, {grid.steps} steps (lines: same patch)\n{title}", fontsize=9)
    ax_flops.legend(fontsize=7)
    for c in conditionings:
      steps = [p["step"] for p in c["points"]]
      ax_cond.errorbar(steps, [p[key][0] for p in c["points"]], yerr=[np.nan_to_num(p[key][1]) for p in c["points"]],
                       marker="o", capsize=3, label=LABELS[c["conditioning"]])
    ax_cond.set_xlabel("training steps")
    ax_cond.set_ylabel("FID")
    ax_cond.set_title(f"Conditioning, {grid.cond_model}\n{title}", fontsize=9)
    ax_cond.legend(fontsize=7)
  # One row of seed 0's samples (digits 0..9) per cell of the Gflops grid.
  ax_samples = axes["samples"]
  mosaic = np.concatenate([np.concatenate(list(c["samples_seed0"][..., 0]), axis=1) for c in cells], axis=0)
  ax_samples.imshow(mosaic, cmap="gray_r", vmin=0.0, vmax=1.0)
  ax_samples.set_yticks([IMAGE_SHAPE[0] * (i + 0.5) for i in range(len(cells))], [c["model"] for c in cells],
                        fontsize=8)
  ax_samples.set_xticks([])
  ax_samples.set_title("seed 0 samples, labels 0..9", fontsize=10)
  fig.tight_layout()
  return fig


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Trains and scores every cell and conditioning; writes results.json, dit.md and dit.png into `outdir`."""
  grid = Grid(config)
  start = time.perf_counter()
  split = data_lib.load("digits", "train")
  data = {"image": split["image"], "label": split["label"]}
  conditionings = []
  for conditioning in grid.conditionings:
    conditionings.append(run_conditioning(conditioning, grid, data))
  # The ablation's adaLN-Zero run is the grid's cell of the same model when they train as long.
  shared_run = next((c for c in conditionings if c["conditioning"] == "adaln_zero"), None) \
      if grid.cond_steps == grid.steps else None
  cells = []
  for name in grid.names():
    cells.append(run_gflops_cell(name, grid, data, shared_run if name == grid.cond_model else None))
    c = cells[-1]
    print(f"{name}: {c['gflops']:.5f} Gflops, FID {harness.pm(c['fid_mean_se'], 2)} (MLP) / "
          f"{harness.pm(c[classifier_tasks.CONV_PREFIX + 'fid_mean_se'], 2)} (conv) "
          f"(train {c['train_s']:.0f} s, sample + score {c['eval_s']:.0f} s)", flush=True)
  total = time.perf_counter() - start
  sampler = cell_config(grid.names()[0], "adaln_zero", grid.steps, grid)
  found = {space_name(prefix): trends(cells, conditionings, prefix) for prefix, _ in SPACES}
  text = markdown(grid, cells, conditionings, found, total)
  results = {"steps": grid.steps, "seeds": grid.seeds, "batch_size": grid.batch_size, "num_samples": grid.num_samples,
             "ema_decay": grid.ema_decay, "real_held_out": real_reference(cells),
             "sampler": {k: sampler[k] for k in ("sampler", "sample_steps", "eta", "tau", "guidance_scale")},
             "cells": [{k: v for k, v in c.items() if k != "samples_seed0"} for c in cells],
             "conditioning": {"model": grid.cond_model, "steps": grid.cond_steps,
                              "runs": [{k: v for k, v in c.items() if k != "samples_seed0"} for c in conditionings]},
             "trends": found}
  print(text)
  return harness.write_report(outdir, "dit", results, text, figure=figure(grid, cells, conditionings), config=config,
                              wall_time_s=total)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
