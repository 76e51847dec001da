"""Burda et al. (2016) Table 1 in shape: test NLL of VAEs trained with the VAE bound and the IWAE bound.

Rows: the VAE objective (ELBO, reconstruction averaged over k samples, analytic KL) and the
IWAE objective (log-mean-exp of k importance weights) at k = 1, 5, 50, each trained for the
same number of steps on the bundled digits (dynamically binarised, as in the paper) with
the seeds vmapped in one program (research.sweep.run), and evaluated by the importance-
sampled test NLL with --eval_k samples per test image (the paper: 5000). The paper's MNIST
numbers are printed beside ours for the shape of the table only: MNIST (784 pixels,
3280 epochs) and digits (64 pixels, a few hundred epochs) are not comparable in value.

Run:
  python -m experiments.tables.vae_iwae --outdir=experiments/tables/results/vae_iwae
  python -m experiments.tables.vae_iwae --outdir=/tmp/vae_iwae --steps=200 --eval_k=100   # quick look
"""

import time

import jax
import numpy as np
from absl import flags
from matplotlib import ticker
from matplotlib.figure import Figure

from experiments import autoencoder as experiment
from experiments import report
from research import data as data_lib
from research import sweep
from research.models import autoencoder

_STEPS = flags.DEFINE_integer("steps", 2000, "Training steps per row (batch 100).")
_EVAL_K = flags.DEFINE_integer("eval_k", 5000, "Importance samples per test image for the test NLL.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Seeds per row, vmapped in one program; mean and standard error shown.")
_KS = flags.DEFINE_list("ks", ["1", "5", "50"], "Sample counts k of the training bounds.")

# Burda, Grosse & Salakhutdinov (2016), Table 1, MNIST, one stochastic layer (50 units,
# 2x200 tanh deterministic layers): test NLL in nats evaluated with k = 5000.
PAPER_MNIST_NLL = {("elbo", 1): 86.76, ("elbo", 5): 86.47, ("elbo", 50): 86.35,
                   ("iwae", 1): 86.76, ("iwae", 5): 85.54, ("iwae", 50): 84.78}
OBJECTIVE_NAMES = {"elbo": "VAE", "iwae": "IWAE"}
EVAL_SEED = 1234  # one evaluation key for every row: the same test binarisation (common random numbers)


def row_config(objective: str, k: int, steps: int, eval_k: int):
  """The experiment's default VAE config with this row's training bound."""
  config = experiment.get_config()
  config.objective = objective
  config.k = k
  config.steps = steps
  config.eval_k = eval_k
  return config


def run_row(objective: str, k: int, steps: int, eval_k: int, seeds: list[int], train_images, test_images) -> dict:
  """Trains one row's seeds in one vmapped program and evaluates each member's test NLL."""
  config = row_config(objective, k, steps, eval_k)
  task = autoencoder.make_task(config, test_images)
  start = time.perf_counter()
  result = sweep.run(task, config, {"image": train_images}, seeds=seeds)
  jax.block_until_ready(result.state.params)
  train_s = time.perf_counter() - start
  start = time.perf_counter()
  members = []
  for i in range(len(seeds)):
    params = jax.tree.map(lambda a, i=i: a[i], result.state.params)
    members.append(task.summarize(jax.device_get(task.evaluate(params, jax.random.key(EVAL_SEED), {"image": test_images}))))
  eval_s = time.perf_counter() - start
  nll = np.asarray([m["test_nll_nats"] for m in members])
  return {"objective": objective, "k": k, "test_nll_nats": nll.tolist(), "mean": float(nll.mean()),
          "stderr": float(nll.std(ddof=1) / np.sqrt(len(nll))) if len(nll) > 1 else None,
          "test_elbo_nats": [m["test_elbo_nats"] for m in members],
          "final_train_loss": np.asarray(result.metrics["loss"][:, -1]).tolist(),
          "train_s": round(train_s, 2), "eval_s": round(eval_s, 2)}


def _fmt(row: dict) -> str:
  return f"{row['mean']:.2f} ± {row['stderr']:.2f}" if row["stderr"] is not None else f"{row['mean']:.2f}"


def _figure(rows: list[dict], ks: list[int]) -> Figure:
  fig = Figure(figsize=(9, 3.6), dpi=100)
  ours, paper = fig.subplots(1, 2)
  for objective, marker in (("elbo", "o"), ("iwae", "s")):
    mine = [r for r in rows if r["objective"] == objective]
    if mine:
      ours.errorbar([r["k"] for r in mine], [r["mean"] for r in mine],
                    yerr=[r["stderr"] or 0.0 for r in mine], marker=marker, capsize=3,
                    label=f"{OBJECTIVE_NAMES[objective]} bound")
    paper.plot(ks, [PAPER_MNIST_NLL.get((objective, k), np.nan) for k in ks], marker=marker,
               label=f"{OBJECTIVE_NAMES[objective]} bound")
  for ax, title in ((ours, "digits 8x8 (this codebase)"), (paper, "MNIST (Burda et al. Table 1)")):
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("k (training samples)")
    ax.set_ylabel("test NLL (nats)")
    ax.set_title(title)
    ax.legend()
  fig.tight_layout()
  return fig


def main(outdir: str) -> None:
  start = time.perf_counter()
  steps, eval_k = _STEPS.value, _EVAL_K.value
  ks = [int(k) for k in _KS.value]
  seeds = list(range(_SEEDS.value))
  train_images = data_lib.load("digits", "train")["image"]
  test_images = data_lib.load("digits", "test")["image"]
  rows = []
  for objective in ("elbo", "iwae"):
    for k in ks:
      rows.append(run_row(objective, k, steps, eval_k, seeds, train_images, test_images))
      print(f"{OBJECTIVE_NAMES[objective]} k={k}: test NLL {_fmt(rows[-1])} nats "
            f"(train {rows[-1]['train_s']:.0f}s, eval {rows[-1]['eval_s']:.0f}s)", flush=True)
  wall_s = time.perf_counter() - start

  config = row_config("elbo", 1, steps, eval_k)
  env = report.environment()
  devices = env["devices"]
  header = "| training bound | k | test NLL, digits (nats) | Burda et al., MNIST (nats) |"
  lines = [header, "|---|---|---|---|"]
  for row in rows:
    paper = PAPER_MNIST_NLL.get((row["objective"], row["k"]))
    lines.append(f"| {OBJECTIVE_NAMES[row['objective']]} | {row['k']} | {_fmt(row)} | "
                 f"{paper if paper is not None else '-'} |")
  table = "\n".join(lines)
  spread = (f"mean ± standard error over {len(seeds)} seeds" if len(seeds) > 1
            else "one seed (no error bar; --seeds=N adds them)")
  md = "\n".join([
      "# VAE vs IWAE bound: test NLL (Burda et al. 2016, Table 1 in shape)",
      "",
      f"Command: `{report.command()}`",
      "",
      f"Each row trains the experiment's default VAE (tanh MLP {config.hidden}, {config.latent_dim} Gaussian "
      f"latents, Bernoulli decoder; Adam lr {config.optimizer.learning_rate}, eps {config.optimizer.eps}, batch "
      f"{config.batch_size}) for {steps} steps on the {len(train_images)} bundled training digits, dynamically binarised per "
      f"batch, with {spread}. The test NLL is importance-sampled with k = {eval_k} per test image on the "
      f"{len(test_images)} test digits, each binarised once with the same key for every row.",
      "",
      table,
      "",
      "The MNIST column is Burda et al.'s one-stochastic-layer model (Table 1) and is there for the shape "
      "of the comparison only: MNIST images have 784 pixels and the paper trained for 3280 epochs, so its "
      "values are not comparable with the 64-pixel digits in absolute terms. The paper's pattern: the IWAE "
      "bound's NLL falls as k grows, and more than the VAE bound's does with the same k.",
      "",
      f"Wall time {wall_s:.0f} s on {devices['count']} {devices['platform']} device(s) ({devices['kind']}); "
      f"jax {env['versions']['jax']}. Per row (train / eval seconds): "
      + "; ".join(f"{OBJECTIVE_NAMES[r['objective']]} k={r['k']}: {r['train_s']:.0f} / {r['eval_s']:.0f}"
                  for r in rows) + ".",
      "",
  ])
  report.write_report(outdir, "vae_iwae", {"rows": rows, "eval_k": eval_k, "steps": steps, "seeds": seeds,
                                           "paper_mnist_nll": {f"{OBJECTIVE_NAMES[o]} k={k}": v
                                                               for (o, k), v in PAPER_MNIST_NLL.items()}},
                      md, figure=_figure(rows, ks), config=config, wall_time_s=wall_s)
  print(table)


if __name__ == "__main__":
  report.main(main)
