"""RePaint (Lugmayr et al., 2022) in shape: inpainting error and FID against the number of resamplings r.

One model, experiments/diffusion.py's default (a class-conditional DDPM U-Net on the bundled
digits, T = 1000, EMA; 3000 steps, minutes on 2 CPU cores), is trained through the one loop into
`model_workdir` (a rerun reuses it; a finished default run of experiments.diffusion can be named
there). Its EMA weights with the null class (the unconditional model that label dropout trained)
complete the first `num_samples` digits of the test split under one mask kind
(research.models.diffusion.inpaint_masks, "center" by default) with RePaint
(research.models.diffusion.repaint): every reverse step keeps the known pixels noised to its level,
and every `jump` levels the sample is noised forward again and walked back down, r times.

Rows r ∈ `resamples` (the paper's resampling ablation: more resampling, more coherent fills). Every
row inpaints the same images under the same masks from the same x_T, so the rows are paired: the
masked-region error (mean squared error on the unknown pixels, images in [0, 1]) with the standard
error of its per-image mean and of its paired difference from r = 1, and FID of the completions
against the training digits in the digits classifier's features with its bootstrap standard error
and the paired one of its difference from r = 1 (research/metrics/fid.py), beside the test split's
own FID (the originals) and the masked inputs'. A row costs T + (r − 1)(j + 1) K denoiser calls
(K jump points), about 10x for r = 10 what r = 1 costs.

Run:
  python -m experiments.tables.repaint --outdir=experiments/tables/results/repaint
  python -m experiments.tables.repaint --outdir=/tmp/repaint --config.model_workdir=/tmp/diffusion
  python -m experiments.tables.repaint --outdir=/tmp/repaint --config=experiments/tables/repaint.py:smoke
"""

import time

import jax
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from experiments import diffusion as diffusion_experiment
from experiments import harness
from experiments.tables import diffusion_model
from research import data as data_lib
from research.metrics import fid as fid_lib
from research.models import diffusion
from research.train import ConfigError, check_choice, cli
from research.train.images import image_grid


def _smoke(config: ml_collections.ConfigDict) -> None:
  """The tables' smoke model (T = 100, 2 steps), r = 1 and 2 with j = 25, 10 digits, for tests."""
  diffusion_model.smoke_model(config)
  config.resamples, config.jump = (1, 2), 25


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The paper's r from the default digits model, its j = 10, centre masks; preset "smoke" for tests."""
  config = diffusion_model.add_model_fields(ml_collections.ConfigDict())
  config.model = diffusion_experiment.get_config()  # the model: experiments/diffusion.py's default config
  config.num_samples = 100  # test digits inpainted per row (of the test split's 300: r = 10 takes 10x r = 1's time)
  config.mask = "center"  # research.models.diffusion.inpaint_masks kind: center, half or pixels
  config.resamples = (1, 2, 5, 10)  # RePaint's r of the rows
  config.jump = 10  # RePaint's jump length j
  config.sample_seed = 0  # seeds the masks, x_T and the noise (shared by every row)
  return cli.apply_presets(config, preset, PRESETS)


def check_config(config) -> list[int]:
  """The rows' r, after checking every field (ConfigError on bad input)."""
  resamples = config.resamples
  if not resamples or not all(isinstance(r, int) and not isinstance(r, bool) for r in resamples):
    raise ConfigError(f"resamples takes integers, got {resamples}")
  if len(set(resamples)) != len(resamples):
    raise ConfigError("resamples must name distinct values")
  if 1 not in resamples:
    raise ConfigError("resamples must include 1 (the row the others are compared with)")
  check_choice("mask", config.mask, diffusion.INPAINT_MASKS)
  try:
    diffusion.repaint_timesteps(config.model.num_train_steps, config.jump, min(resamples))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  test_size = len(data_lib.load(config.model.dataset, "test")["image"])
  if config.num_samples > test_size:
    raise ConfigError(f"num_samples must be at most {test_size} (the test split), got {config.num_samples}")
  return sorted(resamples)


def _se(values: np.ndarray) -> float:
  return float(np.std(values, ddof=1) / np.sqrt(len(values)))


def trend(rows: dict, resamples: list[int]) -> list[str]:
  """Sentences on the paper's trend, read against two paired standard errors of each difference from r = 1."""
  most = max(resamples)
  if most == 1:
    return ["(The trend needs an r above 1.)"]
  lines, verdicts = [], []
  for metric, name in (("masked_mse", "masked-region MSE"), ("fid", "FID")):
    gap = rows[most][metric] - rows[1][metric]
    noise = rows[most][f"{metric}_se_vs_r1"]
    falls = gap < -2 * noise
    monotone = all(rows[b][metric] <= rows[a][metric] for a, b in zip(resamples, resamples[1:]))
    verdicts.append(falls)
    lines.append(f"- {name} at r = {most} minus at r = 1: {gap:+.4g} (± {noise:.2g}, one paired standard error); "
                 f"below two standard errors of zero: **{'yes' if falls else 'no'}**; it falls (weakly) with every "
                 f"larger r: {'yes' if monotone else 'no'}.")
  verdict = "holds" if all(verdicts) else ("holds in part" if any(verdicts) else "does not hold")
  lines.append(f"- The paper's trend (more resampling, more coherent fills: lower error and FID) **{verdict}** here.")
  return lines


def markdown(config, resamples, rows: dict, references: dict, model, total_s: float) -> str:
  """The table, the references, the trend and the command."""
  env = harness.environment()
  train = diffusion_model.train_summary(model.workdir)
  n = config.num_samples
  cfg = model.config
  header = ["r", "denoiser calls", "masked-region MSE", "Δ vs r = 1", "FID", "Δ vs r = 1", "conv-net FID",
            "precision", "recall", "sampling (s)"]
  body = [(r, rows[r]["denoiser_evaluations"], f"{rows[r]['masked_mse']:.4f} ± {rows[r]['masked_mse_se']:.4f}",
           f"{rows[r]['masked_mse'] - rows[1]['masked_mse']:+.4f} ± {rows[r]['masked_mse_se_vs_r1']:.4f}",
           f"{rows[r]['fid']:.2f} ± {rows[r]['fid_se']:.2f}",
           f"{rows[r]['fid'] - rows[1]['fid']:+.2f} ± {rows[r]['fid_se_vs_r1']:.2f}", f"{rows[r]['cnn_fid']:.2f}",
           f"{rows[r]['precision']:.3f}", f"{rows[r]['recall']:.3f}", f"{rows[r]['sampling_s']:.0f}")
          for r in resamples]
  blocks = [f"One model: experiments/diffusion.py's config ({cfg.model}, T = {cfg.num_train_steps} {cfg.schedule} β, "
            f"{cfg.prediction}-prediction, {cfg.steps} steps of batch {cfg.batch_size}, EMA {cfg.ema_decay}), trained "
            "through the one loop" + (f" in this run ({model.train_s:.0f} s)" if model.train_s else
                                       " earlier and reused from its checkpoint")
            + (f"; its own samples' FID {train['fid']:.2f}" if "fid" in train else "") + ". Inpainting uses its EMA "
            "weights with the null class (unconditional; the true labels are not used).\n"
            f"Each row: the first {n} test digits under the `{config.mask}` mask "
            f"({references['unknown_share']:.0%} of the pixels unknown), RePaint with jump length j = {config.jump} "
            f"and r resamplings, DDPM steps with {cfg.variance} variance"
            + (", x0 estimates clipped to [-1, 1]" if cfg.clip_sample else "") + "; every row from the same masks, "
            "x_T and noise. Masked-region MSE: mean squared error on the unknown pixels (images in [0, 1]) ± the "
            "standard error over images; FID: the completions against the digits training split in the digits "
            "classifier's features ± its bootstrap standard error; Δ: the difference from r = 1 ± its paired "
            f"standard error. Whole table {total_s:.0f} s wall on {env['devices']['kind']} "
            f"({env['devices']['cpu_count']} CPUs, shared).",
            "## Masked-region error and FID against r (this codebase, digits 8 x 8)",
            harness.table(header, body),
            f"References at the same count: filling the unknown pixels with the training digits' mean image scores "
            f"masked-region MSE {references['masked_mse_mean_fill']:.4f}; the originals (the test split) score FID "
            f"{references['fid_real']:.2f} (conv net {references['cnn_fid_real']:.2f}), the masked inputs (unknown "
            f"pixels 0) {references['fid_masked_input']:.2f} (conv net {references['cnn_fid_masked_input']:.2f}).",
            "## The paper's trend, read from the numbers above",
            "\n".join(trend(rows, resamples)),
            "Lugmayr et al. show it on faces and ImageNet at 256 x 256 with LPIPS (their resampling ablation; "
            "T = 250, j = 10, r = 10 in their main results); the values here are not comparable with theirs, only the "
            "direction."]
  return harness.document("RePaint in shape: inpainting error and FID against resamplings r (digits)", *blocks)


def figure(resamples, rows: dict, references: dict, originals, masks, completions) -> Figure:
  """Error and FID against r, and ten digits: original, masked, then each r's completion."""
  fig = Figure(figsize=(12, 4.6), dpi=100)
  left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.1]})
  left.errorbar(resamples, [rows[r]["masked_mse"] for r in resamples],
                yerr=[rows[r]["masked_mse_se"] for r in resamples], marker="o", color="C0", label="masked-region MSE")
  left.axhline(references["masked_mse_mean_fill"], color="C0", ls=":", lw=1, label="mean-image fill")
  left.set_xscale("log")
  left.set_xticks(resamples, [str(r) for r in resamples])
  left.set_xlabel("resamplings r")
  left.set_ylabel("masked-region MSE", color="C0")
  twin = left.twinx()
  twin.errorbar(resamples, [rows[r]["fid"] for r in resamples], yerr=[rows[r]["fid_se"] for r in resamples],
                marker="s", color="C1", label="FID")
  twin.axhline(references["fid_real"], color="C1", ls=":", lw=1, label="FID of the originals")
  twin.set_ylabel("FID (digits classifier features)", color="C1")
  left.legend(loc="upper left", fontsize=7)
  twin.legend(loc="upper right", fontsize=7)
  left.set_title("error and FID against r")
  shown = np.asarray(masks)[:10]
  images = [originals[:10], originals[:10] * shown + diffusion_experiment.UNKNOWN_GREY * (1 - shown)]
  images += [completions[r][:10] for r in resamples]
  grid = np.concatenate([image_grid(row, columns=10) for row in images], axis=0)
  right.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
  height = grid.shape[0] / len(images)
  right.set_yticks([height * (i + 0.5) for i in range(len(images))],
                   ["original", "masked"] + [f"r = {r}" for r in resamples], fontsize=7)
  right.set_xticks([])
  right.set_title("completions (same masks and noise per column)")
  fig.tight_layout()
  return fig


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Trains (or reuses) the model, inpaints at every r and scores; writes results.json, repaint.md and repaint.png."""
  start = time.perf_counter()
  resamples, model, scorer = diffusion_model.prepare(config, outdir, check_config)
  n = config.num_samples
  originals = data_lib.load(model.config.dataset, "test")["image"][:n].astype(np.float32) / 255.0
  k_mask, k_sample = jax.random.split(jax.random.key(config.sample_seed))
  masks = diffusion.inpaint_masks(config.mask, originals.shape, k_mask)
  unknown = 1.0 - np.asarray(masks)
  mean_image = data_lib.load(model.config.dataset, "train")["image"].astype(np.float32).mean(axis=0) / 255.0
  rows, completions, per_image, feats = {}, {}, {}, {}
  for r in resamples:
    images, compile_s, run_s = diffusion_experiment.complete(model, originals, masks, k_sample, r, config.jump)
    completions[r] = images
    per_image[r] = (unknown * np.square(images - originals)).sum(axis=(1, 2, 3)) / unknown.sum(axis=(1, 2, 3))
    feats[r] = scorer.features(images, len(images))[""]  # the MLP space, as "fid"
    scores = diffusion_experiment.inpaint_scores(images, originals, masks, mean_image)
    steps = diffusion.repaint_timesteps(model.config.num_train_steps, config.jump, r)
    rows[r] = {**scores, "masked_mse_se": _se(per_image[r]),
               "fid_se": fid_lib.frechet_distance_se(scorer.real[""], feats[r]),
               "denoiser_evaluations": int(np.sum(~steps.up)), "compile_s": compile_s, "sampling_s": run_s}
    print(f"r = {r}: masked-region MSE {rows[r]['masked_mse']:.4f}, FID {rows[r]['fid']:.2f} ({run_s:.0f} s)",
          flush=True)
  for r in resamples:  # paired with r = 1: the same images, masks and starting noise
    rows[r]["masked_mse_se_vs_r1"] = _se(per_image[r] - per_image[1]) if r != 1 else 0.0
    rows[r]["fid_se_vs_r1"] = fid_lib.frechet_difference_se(scorer.real[""], feats[r], feats[1]) if r != 1 else 0.0
  references = {k: rows[1][k] for k in ("masked_mse_mean_fill", "fid_real", "cnn_fid_real", "fid_masked_input",
                                        "cnn_fid_masked_input")}
  references["unknown_share"] = float(unknown.mean())
  total_s = time.perf_counter() - start
  text = markdown(config, resamples, rows, references, model, total_s)
  results = {"resamples": resamples, "jump": config.jump, "mask": config.mask, "num_samples": n,
             "conditioning": "null class (unconditional)", "rows": {str(r): row for r, row in rows.items()},
             "references": references, "model_workdir": model.workdir,
             "model_train_results": diffusion_model.train_summary(model.workdir), "model_train_s": model.train_s}
  print(text)
  return harness.write_report(outdir, "repaint", results, text,
                              figure=figure(resamples, rows, references, originals, masks, completions),
                              config=config, wall_time_s=total_s)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
