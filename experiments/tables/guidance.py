"""The quality-diversity trade-off of classifier-free guidance (Ho & Salimans, 2022) on digits.

From one trained class-conditional model (experiments/diffusion.py's default, trained through
the one loop into `model_workdir`, or reused from the DDIM table's), DDIM samples (S = 50,
η = 0, linear τ by default) at every guidance scale w of `scales`, ε = ε_u + w (ε_c − ε_u)
(w = 0 unconditional, 1 conditional, > 1 guided): ALL w as ONE vmapped program over the traced
scale of `research.models.diffusion.classifier_free_guidance`, every w from the same x_T.
Each w is scored as the experiments score their samples (research.tasks.classifier.
digits_sample_metrics, see experiments/tables/diffusion_model.py) in both digits feature spaces
(the MLP classifier's and the convolutional classifier's), the first 300 samples against the
digits training split beside the 300 real held-out digits: FID and its ratio to theirs, KID ±
its standard error, precision (quality: samples inside the real manifold), recall (coverage:
real digits inside the samples' manifold), and the share of samples each space's classifier
reads as the digit asked for.
Ho & Salimans' Figure 4 trend: as w grows, precision (IS in the paper) rises, recall falls,
and FID is best at a small w.

Run:
  python -m experiments.tables.guidance --outdir=experiments/tables/results/guidance \\
      --config.model_workdir=experiments/tables/results/ddim/model
  python -m experiments.tables.guidance --outdir=/tmp/guidance --config=experiments/tables/guidance.py:smoke
"""

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from experiments import harness
from experiments.tables import diffusion_model
from research.models import diffusion
from research.tasks import classifier as classifier_tasks
from research.train import ConfigError, check_choice, cli
from research.train.images import image_grid


def _smoke(config: ml_collections.ConfigDict) -> None:
  """The DDIM table's smoke model, three scales, 4 steps, 10 samples, for tests."""
  diffusion_model.smoke_model(config)
  config.scales, config.sample_steps = (0.0, 1.0, 3.0), 4


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Ho & Salimans' scales from the `long` digits model; preset "smoke" for tests."""
  config = diffusion_model.add_model_fields(ml_collections.ConfigDict())
  config.scales = (0.0, 1.0, 1.5, 2.0, 3.0, 5.0)  # guidance scales w, vmapped in one program
  config.sample_steps = 50  # DDIM steps S
  config.eta = 0.0  # DDIM η
  config.tau = "linear"  # DDIM timestep sub-sequence τ: linear or quadratic
  config.sample_seed = 0  # seeds x_T and the step noise (shared by every w)
  return cli.apply_presets(config, preset, PRESETS)


def check_config(config) -> list[float]:
  """The scales, after checking every field (ConfigError on bad input)."""
  if not config.scales or not all(isinstance(w, (int, float)) for w in config.scales):
    raise ConfigError(f"scales takes numbers, got {config.scales}")
  scales = [float(w) for w in config.scales]
  if len(set(scales)) != len(scales):
    raise ConfigError("scales must name distinct values")
  if min(scales) < 0:
    raise ConfigError(f"guidance scales must be >= 0, got {min(scales)}")
  if not config.model.conditional:
    raise ConfigError("guidance needs a class-conditional model (config.model.conditional)")
  diffusion_model.check_sample_steps(config.model, [config.sample_steps])
  if config.eta < 0:
    raise ConfigError(f"η must be >= 0, got {config.eta}")
  check_choice("τ", config.tau, diffusion.TIMESTEP_KINDS)
  return scales


def sample_scales(model: diffusion_model.TrainedModel, config, scales: list[float], key: jax.Array,
                  n: int) -> diffusion_model.Drawn:
  """Every scale's samples from one vmapped program: (len(scales), n, H, W, C)."""
  ws = jnp.asarray(scales, jnp.float32)  # (W,)
  taus = diffusion.ddim_timesteps(model.config.num_train_steps, config.sample_steps, config.tau)
  eta = jnp.float32(config.eta)

  def program(params, key, labels):
    cond_fn = lambda x, t, y: model.apply(params, x, t, y, False, None)
    shape = (labels.shape[0],) + model.image_shape

    def one(w):
      guided = diffusion.classifier_free_guidance(cond_fn, labels, model.num_classes, w)
      return diffusion.sample_ddim(model.schedule, guided, key, shape, taus, eta, prediction=model.config.prediction)

    return diffusion_model.to_images(jax.vmap(one)(ws))  # (W, batch, H, W, C)

  return diffusion_model.draw(program, model, key, n)


def trend(scales: list[float], rows: list[dict], prefix: str = "") -> list[str]:
  """Sentences on Ho & Salimans' trade-off, read off one feature space's numbers (digits_sample_metrics' prefix)."""
  order = np.argsort(scales)
  ws = [scales[i] for i in order]
  precision = [rows[i][prefix + "precision"] for i in order]
  recall = [rows[i][prefix + "recall"] for i in order]
  fid = [rows[i][prefix + "fid"] for i in order]

  def monotone(values, sign):
    return all(sign * (b - a) >= 0 for a, b in zip(values, values[1:]))

  best = ws[int(np.argmin(fid))]
  return [f"- precision non-decreasing in w: **{'yes' if monotone(precision, 1) else 'no'}** "
          f"({precision[0]:.3f} at w = {ws[0]:g} → {precision[-1]:.3f} at w = {ws[-1]:g}).",
          f"- recall non-increasing in w: **{'yes' if monotone(recall, -1) else 'no'}** "
          f"({recall[0]:.3f} → {recall[-1]:.3f}).",
          f"- best FID at w = {best:g} ({min(fid):.2f}); FID at the largest w = {ws[-1]:g}: {fid[-1]:.2f}."]


SPACE_HEADER = ("FID", "FID ratio", "KID", "precision", "recall", "label agreement")


def space_row(row: dict, prefix: str) -> tuple[str, ...]:
  """One w's cells under SPACE_HEADER in the space of `prefix`."""
  return (f"{row[prefix + 'fid']:.2f} ± {row[prefix + 'fid_se']:.2f}", f"{row[prefix + 'fid_ratio']:.2f}",
          harness.kid(row, prefix), f"{row[prefix + 'precision']:.3f}", f"{row[prefix + 'recall']:.3f}",
          f"{row[prefix + 'label_agreement']:.3f}")


def markdown(config, scales, rows, drawn, model, n, total_s) -> str:
  env = harness.environment()
  c = model.config
  real = classifier_tasks.real_scores(rows[0])
  blocks = []
  for prefix, title in classifier_tasks.SPACE_TITLES:
    blocks += [f"## {title}",
               harness.table(["w", *SPACE_HEADER],
                             [(f"{w:g}", *space_row(row, prefix)) for w, row in zip(scales, rows)],
                             align="l" + "r" * len(SPACE_HEADER)),
               f"Real held-out digits at the same count: FID {real[prefix + 'fid_real']:.2f}, KID "
               f"{harness.kid(real, prefix, '_real')}, precision {real[prefix + 'precision_real']:.3f}, recall "
               f"{real[prefix + 'recall_real']:.3f}."]
  (mlp, _), (cnn, _) = classifier_tasks.SPACE_TITLES
  names = [f"w = {w:g}" for w in scales]
  order = [harness.disagreement_note(f"- {metric}", {w: row[mlp + key] for w, row in zip(names, rows)},
                                     {w: row[cnn + key] for w, row in zip(names, rows)})
           for metric, key in (("FID", "fid"), ("KID", "kid"))]
  blocks += ["## Where the two spaces order the scales differently", "\n".join(order),
             "## The trade-off, read from the numbers above"]
  for prefix, title in classifier_tasks.SPACE_TITLES:
    blocks += [f"### {title}", "\n".join(trend(scales, rows, prefix))]
  return harness.document(
      "Classifier-free guidance: quality against diversity (Ho & Salimans 2022, in shape, digits)",
      f"One class-conditional model (experiments/diffusion.py's config: {c.model}, T = {c.num_train_steps}, "
      f"{c.steps} steps, EMA {c.ema_decay}, label dropout {c.class_dropout}), trained through the one loop"
      + (f" in this run ({model.train_s:.0f} s)" if model.train_s else " earlier and reused from its checkpoint")
      + f". DDIM S = {config.sample_steps}, η = {config.eta:g}, {config.tau} τ; {n} samples per w (labels "
      f"cycling 0-9), all {len(scales)} scales as one vmapped program from the same x_T "
      f"(compile {drawn.compile_s:.0f} s, sampling {drawn.run_s:.0f} s). Whole table {total_s:.0f} s wall on "
      f"{env['devices']['kind']} ({env['devices']['cpu_count']} CPUs, shared).",
      f"Each w's first {real['num_scored']} samples are scored as the experiments score theirs "
      "(`research.tasks.classifier.digits_sample_metrics`) against the digits training split in two feature "
      "spaces, beside the real held-out digits' first as many: FID ± its bootstrap standard error over the samples, "
      "its ratio to the real digits' FID, KID ± its jackknife standard error, precision and recall (k = 3); label "
      "agreement: the share of all the samples the space's classifier reads as the digit they were conditioned on "
      "(w = 0 ignores the label).",
      *blocks)


def figure(scales, rows, images) -> Figure:
  """Per feature space FID, precision, recall and label agreement against w; ten samples (digits 0-9) per w."""
  fig = Figure(figsize=(17, 4.4), dpi=100)
  *spaces, right = fig.subplots(1, 3)
  order = np.argsort(scales)
  ws = [scales[i] for i in order]
  for left, (prefix, title) in zip(spaces, classifier_tasks.SPACE_TITLES):
    left.plot(ws, [rows[i][prefix + "precision"] for i in order], "o-", label="precision")
    left.plot(ws, [rows[i][prefix + "recall"] for i in order], "s-", label="recall")
    left.plot(ws, [rows[i][prefix + "label_agreement"] for i in order], "^:", label="label agreement")
    left.set_xlabel("guidance scale w")
    left.set_ylabel("fraction")
    fid_ax = left.twinx()
    fid_ax.plot(ws, [rows[i][prefix + "fid"] for i in order], "kd--", label="FID (right axis)")
    fid_ax.axhline(rows[0][prefix + "fid_real"], color="gray", lw=1, label="real held-out FID (right axis)")
    fid_ax.set_ylabel("FID")
    handles = left.get_legend_handles_labels()
    fid_handles = fid_ax.get_legend_handles_labels()
    left.legend(handles[0] + fid_handles[0], handles[1] + fid_handles[1], fontsize=7)
    left.set_title(f"quality (precision) against coverage (recall)\n{title}", fontsize=9)
  grid = np.concatenate([image_grid(images[i][:10], columns=10) for i in order], axis=0)
  right.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
  height = grid.shape[0] / len(scales)
  right.set_yticks([height * (k + 0.5) for k in range(len(scales))], [f"w={w:g}" for w in ws], fontsize=7)
  right.set_xticks([])
  right.set_title("samples per w (same x_T per column)")
  fig.tight_layout()
  return fig


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Trains (or reuses) the model, samples and scores every w; writes results.json, guidance.md and guidance.png."""
  start = time.perf_counter()
  scales, model, scorer = diffusion_model.prepare(config, outdir, check_config)
  workdir, n = model.workdir, config.num_samples
  drawn = sample_scales(model, config, scales, jax.random.key(config.sample_seed), n)
  labels = np.asarray(model.labels(n))
  rows = [scorer(images, labels) for images in drawn.images]
  for w, row in zip(scales, rows):
    print(f"w = {w:g}: FID {row['fid']:.2f} (MLP) / {row['cnn_fid']:.2f} (conv), precision {row['precision']:.3f}, "
          f"recall {row['recall']:.3f}, label agreement {row['label_agreement']:.3f}", flush=True)
  total_s = time.perf_counter() - start
  text = markdown(config, scales, rows, drawn, model, n, total_s)
  results = {"scales": scales, "sample_steps": config.sample_steps, "eta": config.eta, "tau": config.tau,
             "num_samples": n, "rows": {f"{w:g}": row for w, row in zip(scales, rows)},
             "compile_s": drawn.compile_s, "sampling_s": drawn.run_s,
             "real_held_out": classifier_tasks.real_scores(rows[0]),
             "model_workdir": workdir, "model_train_s": model.train_s,
             "model_train_results": diffusion_model.train_summary(model.workdir)}
  print(text)
  return harness.write_report(outdir, "guidance", results, text, figure=figure(scales, rows, drawn.images),
                              config=config, wall_time_s=total_s)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
