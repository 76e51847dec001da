"""Burda et al. (2016) Table 1 in shape: test NLL of VAEs trained with the VAE bound and the IWAE bound.

Rows: the VAE objective (ELBO, reconstruction averaged over k samples, analytic KL) and the
IWAE objective (log-mean-exp of k importance weights) at k = 1, 5, 50, each trained for the
same number of steps on the bundled digits (dynamically binarised, as in the paper) with
the seeds vmapped in one program (research.sweep.run), and evaluated by the importance-
sampled test NLL with `eval_k` samples per test image (the paper: 5000). The paper's MNIST
numbers are printed beside ours for the shape of the table only: MNIST (784 pixels,
3280 epochs) and digits (64 pixels, a few hundred epochs) are not comparable in value.

Run:
  python -m experiments.tables.vae_iwae --outdir=experiments/tables/results/vae_iwae
  python -m experiments.tables.vae_iwae --outdir=/tmp/vae_iwae --config.steps=200 --config.eval_k=100   # quick look
  python -m experiments.tables.vae_iwae --outdir=/tmp/vae_iwae --config=experiments/tables/vae_iwae.py:smoke
"""

import time

import jax
import ml_collections
import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from experiments import autoencoder as experiment
from experiments import harness
from research import data as data_lib
from research import sweep
from research.tasks import autoencoder
from research.train import check_positive, cli

# Burda, Grosse & Salakhutdinov (2016), Table 1, MNIST, one stochastic layer (50 units,
# 2x200 tanh deterministic layers): test NLL in nats evaluated with k = 5000.
PAPER_MNIST_NLL = {("elbo", 1): 86.76, ("elbo", 5): 86.47, ("elbo", 50): 86.35,
                   ("iwae", 1): 86.76, ("iwae", 5): 85.54, ("iwae", 50): 84.78}
OBJECTIVE_NAMES = {"elbo": "VAE", "iwae": "IWAE"}
EVAL_SEED = 1234  # one evaluation key for every row: the same test binarisation (common random numbers)


def _smoke(config: ml_collections.ConfigDict) -> None:
  """A few steps and importance samples, two k, two seeds, for tests."""
  config.steps, config.eval_k, config.seeds, config.ks = 20, 16, 2, (1, 5)


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The paper's rows at the digits' budget; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.steps = 2000  # training steps per row (batch 100)
  config.eval_k = 5000  # importance samples per test image for the test NLL (the paper's)
  config.seeds = 1  # seeds per row, vmapped in one program; mean and standard error shown
  config.ks = (1, 5, 50)  # sample counts k of the training bounds
  return cli.apply_presets(config, preset, PRESETS)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad field."""
  for name in ("steps", "eval_k", "seeds"):
    check_positive(name, config[name])
  harness.check_counts("ks", config.ks)


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


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Trains and evaluates every row; writes results.json, vae_iwae.md and vae_iwae.png into `outdir`."""
  check_config(config)
  start = time.perf_counter()
  steps, eval_k, ks = config.steps, config.eval_k, list(config.ks)
  seeds = list(range(config.seeds))
  train_images = data_lib.load("digits", "train")["image"]
  test_images = data_lib.load("digits", "test")["image"]
  rows = []
  for objective in ("elbo", "iwae"):
    for k in ks:
      rows.append(run_row(objective, k, steps, eval_k, seeds, train_images, test_images))
      print(f"{OBJECTIVE_NAMES[objective]} k={k}: test NLL {_fmt(rows[-1])} nats "
            f"(train {rows[-1]['train_s']:.0f}s, eval {rows[-1]['eval_s']:.0f}s)", flush=True)
  wall_s = time.perf_counter() - start

  model_config = row_config("elbo", 1, steps, eval_k)
  env = harness.environment()
  devices = env["devices"]
  table = harness.table(["training bound", "k", "test NLL, digits (nats)", "Burda et al., MNIST (nats)"],
                        [(OBJECTIVE_NAMES[row["objective"]], row["k"], _fmt(row),
                          PAPER_MNIST_NLL.get((row["objective"], row["k"]), "-")) for row in rows])
  spread = (f"mean ± standard error over {len(seeds)} seeds" if len(seeds) > 1
            else "one seed (no error bar; --config.seeds=N adds them)")
  md = harness.document(
      "VAE vs IWAE bound: test NLL (Burda et al. 2016, Table 1 in shape)",
      f"Each row trains the experiment's default VAE (tanh MLP {model_config.hidden}, {model_config.latent_dim} "
      f"Gaussian latents, Bernoulli decoder; Adam lr {model_config.optimizer.learning_rate}, eps "
      f"{model_config.optimizer.eps}, batch {model_config.batch_size}) for {steps} steps on the {len(train_images)} "
      f"bundled training digits, dynamically binarised per batch, with {spread}. The test NLL is "
      f"importance-sampled with k = {eval_k} per test image on the {len(test_images)} test digits, each binarised "
      "once with the same key for every row.",
      table,
      "The MNIST column is Burda et al.'s one-stochastic-layer model (Table 1) and is there for the shape "
      "of the comparison only: MNIST images have 784 pixels and the paper trained for 3280 epochs, so its "
      "values are not comparable with the 64-pixel digits in absolute terms. The paper's pattern: the IWAE "
      "bound's NLL falls as k grows, and more than the VAE bound's does with the same k.",
      f"Wall time {wall_s:.0f} s on {devices['count']} {devices['platform']} device(s) ({devices['kind']}); "
      f"jax {env['versions']['jax']}. Per row (train / eval seconds): "
      + "; ".join(f"{OBJECTIVE_NAMES[r['objective']]} k={r['k']}: {r['train_s']:.0f} / {r['eval_s']:.0f}"
                  for r in rows) + ".")
  print(table)
  return harness.write_report(outdir, "vae_iwae", {"rows": rows, "eval_k": eval_k, "steps": steps, "seeds": seeds,
                                                   "paper_mnist_nll": {f"{OBJECTIVE_NAMES[o]} k={k}": v
                                                                       for (o, k), v in PAPER_MNIST_NLL.items()},
                                                   "model_config": model_config.to_dict()},
                              md, figure=_figure(rows, ks), config=config, wall_time_s=wall_s)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
