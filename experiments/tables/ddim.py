"""DDIM Table 1 (Song et al., 2021) in shape: FID against the number of sampling steps S and η, from one model.

One model, experiments/diffusion.py's default (a class-conditional DDPM U-Net on the bundled
digits, T = 1000, EMA) with its `long` preset (12000 steps, about 15 minutes on 2 CPU cores), is
trained through the one loop into `model_workdir` (a rerun reuses it). Its EMA weights then
sample `num_samples` digits per cell (1000), scored as the experiment scores its samples
(research.tasks.classifier.digits_sample_metrics, see experiments/tables/diffusion_model.py): in
both digits feature spaces, the first 300 against the training digits beside the 300 real
held-out digits, FID with its bootstrap standard error and its ratio to the real digits', KID
with its standard error, and precision and recall in results.json:

  * rows η ∈ `etas` (DDIM's σ_t(η), eq. 16) on the first τ of `taus` (linear: the paper's
    uniform skip), plus one η = 0 row for each further τ (quadratic);
  * the σ̂ row: the DDPM-like update on the sub-sequence with the larger variance
    σ̂² = 1 - ᾱ_t / ᾱ_prev (`research.models.diffusion.sigma_hat_step`);
  * columns S ∈ `sample_steps`.

The η and τ rows of one S are ONE vmapped program (jax.vmap of the lax.scan sampler over η and
τ); the σ̂ row is a second program. Every cell of every S starts from the same x_T and sees the
same step noise (one key), so the comparison is paired: the trend is read against the paired
bootstrap standard error of each row's difference from η = 0, in each space. The paper's CIFAR-10 numbers are
printed beside ours for the shape of the table only. The default takes about 45 minutes on 2 CPU
cores after training, most of it the S = 1000 column.

Run:
  python -m experiments.tables.ddim --outdir=experiments/tables/results/ddim
  python -m experiments.tables.ddim --outdir=/tmp/ddim --config=experiments/tables/ddim.py:smoke
  python -m experiments.tables.ddim --outdir=/tmp/ddim --config.model.steps=3000 --config.sample_steps=10,50 \\
      --config.num_samples=200
"""

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from experiments import harness
from experiments.tables import diffusion_model
from research.metrics import fid as fid_lib
from research.models import diffusion
from research.tasks import classifier as classifier_tasks
from research.train import ConfigError, cli
from research.train.images import image_grid

# Song et al. (2021), Table 1, CIFAR-10 (32 x 32) FID for S = 10, 20, 50, 100, 1000.
PAPER_S = (10, 20, 50, 100, 1000)
PAPER_CIFAR10 = {
    "0.0": (13.36, 6.84, 4.67, 4.16, 4.04),
    "0.2": (14.04, 7.11, 4.77, 4.25, 4.09),
    "0.5": (16.66, 8.35, 5.25, 4.46, 4.29),
    "1.0": (41.07, 18.36, 8.01, 5.78, 4.73),
    "sigma_hat": (367.43, 133.37, 32.72, 9.99, 3.17),
}
SIGMA_HAT = "sigma_hat"


def _smoke(config: ml_collections.ConfigDict) -> None:
  """A tiny model trained 2 steps, two S and two η, 10 samples per cell, for tests."""
  diffusion_model.smoke_model(config)
  config.sample_steps, config.etas = (2, 4), (0.0, 1.0)


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The paper's columns and rows from the `long` digits model; preset "smoke" for tests."""
  config = diffusion_model.add_model_fields(ml_collections.ConfigDict())
  config.sample_steps = (10, 20, 50, 100, 1000)  # sampling steps S (columns)
  config.etas = (0.0, 0.2, 0.5, 1.0)  # DDIM η of the rows (on the first of taus)
  # Timestep sub-sequences τ: the first carries the η rows and the σ̂ row, each further one adds an η = 0 row.
  config.taus = ("linear", "quadratic")
  config.sample_seed = 0  # seeds x_T and the step noise (shared by every cell)
  return cli.apply_presets(config, preset, PRESETS)


class Rows:
  """The table's checked rows and columns."""

  def __init__(self, config):
    if not all(isinstance(s, int) for s in config.sample_steps) or not all(
        isinstance(e, (int, float)) for e in config.etas):
      raise ConfigError(f"sample_steps takes integers and etas numbers, got {config.sample_steps} and {config.etas}")
    self.steps, self.etas = list(config.sample_steps), [float(e) for e in config.etas]
    if not self.steps or not self.etas:
      raise ConfigError("sample_steps and etas must not be empty")
    diffusion_model.check_sample_steps(config.model, self.steps)
    for eta in self.etas:
      if eta < 0:
        raise ConfigError(f"η must be >= 0, got {eta}")
    harness.check_names("taus", config.taus, diffusion.TIMESTEP_KINDS)
    if len(set(self.etas)) != len(self.etas):
      raise ConfigError("etas must not repeat a value")
    self.taus = list(config.taus)
    # The vmapped members of one S: every η on the first τ, then η = 0 on each further τ.
    self.members = [(eta, self.taus[0]) for eta in self.etas] + [(0.0, tau) for tau in self.taus[1:]]


def row_name(eta: float, tau: str) -> str:
  return f"η = {eta:g}, {tau} τ"


def sample_one_s(model: diffusion_model.TrainedModel, members, steps: int, key: jax.Array, n: int) -> dict:
  """Samples every row of one S: the η / τ members as one vmapped program, then the σ̂ program."""
  etas = jnp.asarray([eta for eta, _ in members], jnp.float32)  # (M,)
  taus = jnp.stack([diffusion.ddim_timesteps(model.config.num_train_steps, steps, tau) for _, tau in members])
  sigma_hat_taus = taus[0]  # the first τ: linear by default, as the paper's σ̂ row
  prediction = model.config.prediction

  def eta_program(params, key, labels):
    denoise = model.denoiser(params, labels)
    shape = (labels.shape[0],) + model.image_shape

    def one(eta, tau):
      return diffusion.sample_ddim(model.schedule, denoise, key, shape, tau, eta, prediction=prediction)

    return diffusion_model.to_images(jax.vmap(one)(etas, taus))  # (M, batch, H, W, C)

  def sigma_hat_program(params, key, labels):
    x = diffusion.sample_sigma_hat(model.schedule, model.denoiser(params, labels), key,
                                   (labels.shape[0],) + model.image_shape, sigma_hat_taus, prediction=prediction)
    return diffusion_model.to_images(x)[None]  # (1, batch, H, W, C)

  eta_drawn = diffusion_model.draw(eta_program, model, key, n)
  hat_drawn = diffusion_model.draw(sigma_hat_program, model, key, n)
  return {"images": {**{m: eta_drawn.images[i] for i, m in enumerate(members)}, SIGMA_HAT: hat_drawn.images[0]},
          "eta_program": {"members": len(members), "compile_s": eta_drawn.compile_s, "run_s": eta_drawn.run_s},
          "sigma_hat_program": {"compile_s": hat_drawn.compile_s, "run_s": hat_drawn.run_s}}


def _se(cell: dict, prefix: str = "") -> float:
  return cell.get(prefix + "fid_se", 0.0)


def _apart(eta0: dict, other: dict, prefix: str = "") -> float:
  """Two standard errors of FID(other) − FID(η = 0) at one S and τ, in the space of `prefix`.

  The paired bootstrap one (`fid_se_vs_eta0`, both rows resampled with the same indices: they start
  from the same x_T) where main measured it, otherwise the unpaired standard errors combined, and 0
  where neither was measured.
  """
  if prefix + "fid_se_vs_eta0" in other:
    return 2.0 * other[prefix + "fid_se_vs_eta0"]
  return 2.0 * float(np.hypot(_se(eta0, prefix), _se(other, prefix)))


def trend(cells: dict, etas: list[float], tau: str, steps: list[int], prefix: str = "") -> list[str]:
  """Sentences on the paper's trend, read off the numbers: η = 0 best at few steps, the gap closing as S grows.

  Differences are read against their noise: a row counts as different from η = 0 only when the
  FIDs are more than two standard errors of their difference apart (see `_apart`). `prefix` picks
  the feature space (digits_sample_metrics' prefixes).
  """
  fid = prefix + "fid"
  if len(etas) < 2 or 0.0 not in etas or len(steps) < 2:
    return ["(The trend needs η = 0, another η and two step counts.)"]
  largest_eta, few = max(etas), min(steps)
  at_few = {eta: cells[(eta, tau)][few] for eta in etas}
  best = min(at_few, key=lambda eta: at_few[eta][fid])
  best_at_few = at_few[0.0][fid] - at_few[best][fid] <= _apart(at_few[0.0], at_few[best], prefix)
  pairs = [(cells[(0.0, tau)][s], cells[(largest_eta, tau)][s]) for s in steps]
  gaps = [hi[fid] - lo[fid] for lo, hi in pairs]
  noise = [_apart(lo, hi, prefix) for lo, hi in pairs]
  opened = gaps[0] > noise[0]
  closed = opened and (abs(gaps[-1]) <= noise[-1] or abs(gaps[-1]) < 0.25 * gaps[0])
  narrowing = all(abs(b) < abs(a) for a, b in zip(gaps, gaps[1:]))
  at_s = {eta: [cells[(eta, tau)][i_s][fid] for i_s in steps] for eta in etas}
  ordered = [s for i, s in enumerate(steps) if all(at_s[a][i] <= at_s[b][i] for a, b in zip(etas, etas[1:]))]
  verdict = "holds" if best_at_few and closed else ("holds in part" if best_at_few or closed else "does not hold")
  return [f"- η = 0 has the lowest FID of the η rows at the fewest steps (S = {few}), or is within two standard "
          f"errors of the lowest: **{'yes' if best_at_few else 'no'}** ("
          + ", ".join(f"η = {eta:g}: {at_few[eta][fid]:.2f} ± {_se(at_few[eta], prefix):.2f}" for eta in etas) + ").",
          f"- gap FID(η = {largest_eta:g}) − FID(η = 0) at S = {', '.join(map(str, steps))}: "
          + ", ".join(f"{g:+.2f} (± {n / 2:.2f})" for g, n in zip(gaps, noise))
          + " (positive: η = 0 better; ± one paired bootstrap standard error of the difference). "
          f"Above two standard errors at S = {few}: **{'yes' if opened else 'no'}**; within two standard errors "
          f"of zero or under a quarter of that at S = {steps[-1]}: **{'yes' if closed else 'no'}**; its size falls "
          f"at every larger S: {'yes' if narrowing else 'no'}.",
          "- S at which FID rises (weakly) with η through every η row: "
          f"{', '.join(map(str, ordered)) if ordered else 'none'}.",
          f"- The paper's trend (η = 0 best at few steps, the gap closing as S grows) **{verdict}** here."]


def markdown(rows_: Rows, cells: dict, timings: dict, model, n: int, total_s: float) -> str:
  """The table in both feature spaces, the paper's numbers, the per-S wall times and the trend, with the command."""
  steps = rows_.steps
  rows = [(m, row_name(*m)) for m in rows_.members] + [(SIGMA_HAT, f"σ̂, {rows_.taus[0]} τ")]
  env = harness.environment()
  train = diffusion_model.train_summary(model.workdir)
  real = classifier_tasks.real_scores(cells[SIGMA_HAT][steps[0]])
  blocks = [f"One model: experiments/diffusion.py's config ({model.config.model}, T = {model.config.num_train_steps} "
            f"{model.config.schedule} β, {model.config.prediction}-prediction, {model.config.steps} steps of batch "
            f"{model.config.batch_size}, EMA {model.config.ema_decay}, class-conditional: "
            f"{bool(model.num_classes)}), trained through the one loop"
            + (f" in this run ({model.train_s:.0f} s)" if model.train_s else " earlier and reused from its checkpoint")
            + (f"; its own evaluation (DDIM, S = {model.config.sample_steps}, {train['num_samples']} samples): "
               f"FID {train['fid']:.2f}" if "fid" in train else "") + ".\n"
            f"Each cell: {n} samples (labels cycling 0-9), the first {real['num_scored']} scored as the experiments "
            "score theirs (`research.tasks.classifier.digits_sample_metrics`) against the digits training split in "
            "two feature spaces, beside the real held-out digits' first as many: FID ± its bootstrap standard error "
            "over the samples (`research.metrics.fid.frechet_distance_se`) with its ratio to the real digits' FID, "
            "and KID ± its jackknife standard error; every cell starts from the same x_T and step noise. Whole table "
            f"{total_s:.0f} s wall on {env['devices']['kind']} ({env['devices']['cpu_count']} CPUs, shared).",
            "Real held-out digits at the same count: " + "; ".join(
                f"{title}: FID {real[prefix + 'fid_real']:.2f}, KID {harness.kid(real, prefix, '_real')}"
                for prefix, title in classifier_tasks.SPACE_TITLES) + ". Precision, recall and class shares of every "
            "cell are in results.json; experiments/tables/results/sample_metrics places these numbers on the "
            "scale of known cases."]
  for prefix, title in classifier_tasks.SPACE_TITLES:
    blocks += [f"## {title}: FID (its ratio to real digits') and KID (this codebase, digits 8 x 8)",
               harness.table(["row", *(f"S = {s}" for s in steps)],
                             [(name, *(f"{cells[key][s][prefix + 'fid']:.2f} ± {_se(cells[key][s], prefix):.2f} "
                                       f"({cells[key][s][prefix + 'fid_ratio']:.2f}x)" for s in steps))
                              for key, name in rows]),
               harness.table(["row", *(f"KID, S = {s}" for s in steps)],
                             [(name, *(harness.kid(cells[key][s], prefix) for s in steps)) for key, name in rows])]
  (mlp, _), (cnn, _) = classifier_tasks.SPACE_TITLES
  fids = lambda prefix, s: {name: cells[key][s][prefix + "fid"] for key, name in rows}  # {row: FID} at one S
  blocks += ["## Where the two spaces order rows differently",
             "\n".join(harness.disagreement_note(f"- S = {s}, FID", fids(mlp, s), fids(cnn, s)) for s in steps)]
  paper_steps = [s for s in steps if s in PAPER_S]
  if paper_steps:
    blocks += ["## Song et al. (2021), Table 1, CIFAR-10 FID (for the table's shape only)",
               harness.table(["row", *(f"S = {s}" for s in paper_steps)],
                             [("σ̂" if key == SIGMA_HAT else f"η = {float(key):g}",
                               *(f"{values[PAPER_S.index(s)]:.2f}" for s in paper_steps))
                              for key, values in PAPER_CIFAR10.items()]),
               "CIFAR-10 at 32 x 32 with Inception features and 50k samples is not comparable in value with "
               "digits at 8 x 8 with a small classifier's features; compare the shape: how FID moves along a row "
               "and down a column."]
  blocks += ["## Wall time per S",
             harness.table(["S", "η / τ program: members", "compile (s)", "sampling (s)", "σ̂ program: compile (s)",
                            "sampling (s)"],
                           [(s, timings[s]["eta_program"]["members"], f"{timings[s]['eta_program']['compile_s']:.1f}",
                             f"{timings[s]['eta_program']['run_s']:.1f}",
                             f"{timings[s]['sigma_hat_program']['compile_s']:.1f}",
                             f"{timings[s]['sigma_hat_program']['run_s']:.1f}") for s in steps]),
             f"Sampling is {n} images per member on a CPU shared with other jobs: the times compare S with S "
             "within this run, not with other machines.",
             "## The paper's trend, read from the numbers above"]
  for prefix, title in classifier_tasks.SPACE_TITLES:
    blocks += [f"### {title}", "\n".join(trend(cells, rows_.etas, rows_.taus[0], steps, prefix))]
  blocks.append("The σ̂ row and each η row use the same τ; the σ̂ update is DDPM's ancestral step on the "
                "sub-sequence with β̂ = 1 − ᾱ_t / ᾱ_prev (`research.models.diffusion.sigma_hat_step`), "
                "no clipping of x0.")
  return harness.document("DDIM Table 1 in shape: FID against sampling steps S and η (digits)", *blocks)


def figure(rows_: Rows, cells: dict, images: dict) -> Figure:
  """FID against S per row (log x) in each feature space, and the first ten samples of every row at the smallest S."""
  steps = rows_.steps
  rows = list(rows_.members) + [SIGMA_HAT]
  real = classifier_tasks.real_scores(cells[SIGMA_HAT][steps[0]])
  fig = Figure(figsize=(17, 4.6), dpi=100)
  *spaces, right = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.2, 1.2, 1]})
  for ax, (prefix, title) in zip(spaces, classifier_tasks.SPACE_TITLES):
    for key in rows:
      label = f"σ̂, {rows_.taus[0]} τ" if key == SIGMA_HAT else row_name(*key)
      style = "--" if key == SIGMA_HAT else (":" if key[1] != rows_.taus[0] else "-")
      ax.plot(steps, [cells[key][s][prefix + "fid"] for s in steps], style, marker="o", label=label)
    ax.axhline(real[prefix + "fid_real"], color="gray", lw=1, label=f"held-out digits ({real['num_scored']})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("sampling steps S")
    ax.set_ylabel("FID")
    ax.set_title(f"FID against S, {title}", fontsize=10)
    ax.legend(fontsize=7)
  few = min(steps)
  grid = np.concatenate([image_grid(images[few][key][:10], columns=10) for key in rows], axis=0)
  right.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
  height = grid.shape[0] / len(rows)
  right.set_yticks([height * (i + 0.5) for i in range(len(rows))],
                   ["σ̂" if key == SIGMA_HAT else f"η={key[0]:g}, {key[1]}" for key in rows], fontsize=7)
  right.set_xticks([])
  right.set_title(f"samples at S = {few} (same x_T per column)")
  fig.tight_layout()
  return fig


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Trains (or reuses) the model, samples and scores every cell; writes results.json, ddim.md and ddim.png."""
  start = time.perf_counter()
  rows_, model, scorer = diffusion_model.prepare(config, outdir, Rows)
  workdir, n = model.workdir, config.num_samples
  key = jax.random.key(config.sample_seed)
  cells = {m: {} for m in rows_.members + [SIGMA_HAT]}
  timings, images = {}, {}
  for steps in rows_.steps:
    drawn = sample_one_s(model, rows_.members, steps, key, n)
    timings[steps] = {k: v for k, v in drawn.items() if k != "images"}
    images[steps] = {k: v[:10] for k, v in drawn["images"].items()}
    feats = {}
    for member, member_images in drawn["images"].items():
      cells[member][steps] = scorer(member_images)
      feats[member] = scorer.features(member_images, cells[member][steps]["num_scored"])
    for eta, tau in rows_.members:  # paired: row i of every member starts from the same x_T
      if eta != 0.0 and (0.0, tau) in feats:
        for prefix, real in scorer.real.items():
          cells[(eta, tau)][steps][prefix + "fid_se_vs_eta0"] = fid_lib.frechet_difference_se(
              real, feats[(eta, tau)][prefix], feats[(0.0, tau)][prefix])
    print(f"S = {steps}: FID (MLP / conv) " + ", ".join(
        f"{'σ̂' if m == SIGMA_HAT else row_name(*m)} {cells[m][steps]['fid']:.2f} / {cells[m][steps]['cnn_fid']:.2f}"
        for m in cells)
          + f" ({timings[steps]['eta_program']['run_s']:.0f} s + {timings[steps]['sigma_hat_program']['run_s']:.0f} s)",
          flush=True)
  total_s = time.perf_counter() - start
  text = markdown(rows_, cells, timings, model, n, total_s)
  names = {m: SIGMA_HAT if m == SIGMA_HAT else f"eta={m[0]:g},tau={m[1]}" for m in cells}
  results = {"sample_steps": rows_.steps, "etas": rows_.etas, "taus": rows_.taus, "num_samples": n,
             "cells": {names[m]: {str(s): v for s, v in row.items()} for m, row in cells.items()},
             "timings": {str(s): v for s, v in timings.items()},
             "real_held_out": classifier_tasks.real_scores(cells[SIGMA_HAT][rows_.steps[0]]),
             "model_workdir": workdir, "model_train_results": diffusion_model.train_summary(workdir),
             "model_train_s": model.train_s,
             "paper_cifar10": {"sample_steps": list(PAPER_S), **PAPER_CIFAR10}}
  print(text)
  return harness.write_report(outdir, "ddim", results, text, figure=figure(rows_, cells, images), config=config,
                              wall_time_s=total_s)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
