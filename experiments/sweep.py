"""Any experiment's ablation as one vmapped program: seeds x values from one command, a table and a plot.

Run:
  python -m experiments.sweep --config=experiments/autoencoder.py --workdir=/tmp/vae_lr --seeds=4 \
      --vary=optimizer.learning_rate=1e-4,3e-4,1e-3 --metric=test_nll_nats
  python -m experiments.sweep --config=experiments/autoencoder.py --workdir=/tmp/beta_vae --seeds=3 \
      --vary=kl_weight=0.25,0.5,1,2 --metric=test_nll_nats
  python -m experiments.sweep --config=experiments/gan.py --workdir=/tmp/wgan_gp --seeds=2 --config.loss=wgan_gp \
      --vary=gp_weight=0.01,0.1,1 --vary=optimizer.learning_rate=3e-4,2e-3 --metric=high_quality_fraction
  python -m experiments.sweep --config=experiments/autoencoder.py:smoke --workdir=/tmp/pairs --seeds=3,7 \
      --zip=optimizer.learning_rate=1e-3,3e-3 --zip=kl_weight=1,0.5
  python -m experiments.sweep --config=experiments/ppo.py:smoke --workdir=/tmp/ppo_ent --seeds=2 \
      --vary=ent_coef=0,0.01,0.1 --metric=final_return_mean

The grid is every seed (`--seeds=N`: 0 ... N-1; `--seeds=3,7`: those) times every combination
of the `--vary` lists (`--zip` lists advance together instead). Its members train side by side
in ONE compiled program, the experiment's own training step under `jax.vmap`
(research.train.train with research.train.Members): member (seed s, values v) is the run
`python -m experiments.<name> --config.seed=s --config.<field>=v` would make, with the same
data order, keys and update, so it ends with the same train_loss to float tolerance. The RL
experiments (experiments/ppo.py, a2c.py, dqn.py) vmap their scans over the members instead, a
chunk of updates at a time as their single runs go (a progress line per chunk, checkpoints, a
stop on Ctrl-C at a chunk's end); their members' train_loss is the final update's loss. EM
(experiments/em_gmm.py) vmaps its whole fit, which takes seconds.
The members are split over the devices when there are several (loop experiments);
`--max_members_per_program=K` trains them K at a time (bounding memory), each group a
program of its own under `<workdir>/programs/<i>/`. A killed sweep resumes when the same command is run again: the
finished groups are read back, and a loop or RL experiment's unfinished group resumes from its
checkpoint to the results of a sweep never stopped (EM's group fits again).

What can be varied: the optimizer's injected hyperparameters (optimizer.learning_rate,
optimizer.weight_decay, optimizer.b1) and the fields an experiment's update reads as traced
values (Task.hparams: the VAE's kl_weight, the DAE's noise_level, WGAN-GP's gp_weight, WGAN's
clip, diffusion's class_dropout and guidance_scale (evaluation), GPT-2's and BERT's dropout
(BERT's attention_dropout too)), the loop's ema_decay when the config keeps an EMA, and PPO's
research.rl.ppo.HParams (learning_rate, gamma, gae_lambda, clip_eps, ent_coef, vf_coef; each
member keeps the config's num_seeds inner seeds) and EM's tol and reg_covar
(experiments/em_gmm.py, a vmap of fit_gmm; its members' train_loss is the negative lower bound). Fields that change
shapes or the program (sizes, steps, the model, PPO's environment or num_envs) are refused by
name.

Writes into the workdir: results.json (`members`: seed, values, train_loss and the
experiment's evaluation metrics of each member; `settings`: mean and standard error over
seeds of each metric per setting), sweep.md (that table, with the command) and sweep.png
(`--metric` against the varied field; a heatmap for two), and each program's own run files.
`--metric` is train_loss or a scalar the experiment reports with this config (its module's
`metric_names(config)`); any other is refused, listing them, before anything is compiled.
"""

import importlib
import inspect
import itertools
import json
import math
import os
import sys
import time

import numpy as np
from absl import flags
from matplotlib.figure import Figure
from ml_collections import config_flags

from experiments import harness
from research.train import ConfigError, Members, check_workdir, cli

_SEEDS = flags.DEFINE_string("seeds", "1", "N (seeds 0 ... N-1) or a comma-separated list of seeds.")
_VARY = flags.DEFINE_multi_string("vary", [], "field=v1,v2,...: a grid axis (repeat for more axes).")
_ZIP = flags.DEFINE_multi_string("zip", [], "field=v1,v2,...: lists that advance together (equal lengths).")
_MAX_MEMBERS = flags.DEFINE_integer("max_members_per_program", 0, "Members per compiled program (0: all in one).")
_METRIC = flags.DEFINE_string("metric", "train_loss", "The metric plotted in sweep.png: train_loss or one of the "
                             "experiment's (a wrong one is refused, listing them).")


def parse_seeds(text: str) -> list[int]:
  """"4" -> [0, 1, 2, 3]; "3,7" -> [3, 7]."""
  try:
    if "," in text:
      seeds = [int(s) for s in text.split(",") if s.strip()]
    else:
      seeds = list(range(int(text)))
  except ValueError:
    raise ConfigError(f"--seeds must be a count or a comma-separated list of integers, got {text!r}") from None
  if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise ConfigError(f"--seeds must name at least one seed, each once and >= 0, got {text!r}")
  return seeds


def _field(config, name: str):
  node = config
  for part in name.split("."):
    if not hasattr(node, "keys") or part not in node.keys():
      raise ConfigError(f"unknown config field {name!r}")
    node = node[part]
  return node


def parse_axes(specs: list[str], config, flag: str) -> dict[str, list[float]]:
  """["field=a,b"] -> {field: [a, b]}, checking that each field exists and holds a number."""
  axes = {}
  for spec in specs:
    name, sep, values = spec.partition("=")
    name = name.strip()
    if not sep or not name or not values.strip():
      raise ConfigError(f"--{flag} must be field=value1,value2,..., got {spec!r}")
    current = _field(config, name)
    if isinstance(current, bool) or not isinstance(current, (int, float)):
      raise ConfigError(f"cannot vary {name}: it holds {current!r}, not a number")
    try:
      parsed = [float(v) for v in values.split(",")]
    except ValueError:
      raise ConfigError(f"--{flag}={spec}: every value must be a number") from None
    if name in axes:
      raise ConfigError(f"{name} is varied twice")
    axes[name] = parsed
  return axes


def settings_grid(vary: dict[str, list[float]], zipped: dict[str, list[float]]) -> list[dict[str, float]]:
  """Every combination of the `vary` lists, each with every step of the `zip` lists."""
  lengths = {len(v) for v in zipped.values()}
  if len(lengths) > 1:
    raise ConfigError(f"--zip lists must have equal lengths, got {sorted(lengths)}")
  overlap = set(vary) & set(zipped)
  if overlap:
    raise ConfigError(f"{sorted(overlap)[0]} is both in --vary and --zip")
  zipped_rows = [dict(zip(zipped, row)) for row in zip(*zipped.values())] if zipped else [{}]
  vary_rows = [dict(zip(vary, row)) for row in itertools.product(*vary.values())]
  return [{**v, **z} for v in vary_rows for z in zipped_rows]


def experiment_module(config_file: str):
  """The experiment module of a config file (experiments/autoencoder.py[:preset] -> experiments.autoencoder)."""
  path = config_file.split(":")[0]
  module_name = "experiments." + os.path.splitext(os.path.basename(path))[0]
  try:
    module = importlib.import_module(module_name)
  except ImportError:
    module = None
  if module is None or not os.path.samefile(module.__file__, path):
    raise ConfigError(f"--config {config_file}: not an experiment of this package (experiments/<name>.py)")
  run_fn = getattr(module, "run", None)
  if run_fn is None or "members" not in inspect.signature(run_fn).parameters:
    raise ConfigError(f"{module_name} cannot be swept: its run() takes no members")
  return module


def check_settings(module, config, settings: list[dict[str, float]]) -> None:
  """Checks each setting as the single run with those values would be checked (before anything is compiled).

  Raises:
    ConfigError: the experiment's own message for the first refused setting, naming the setting.
  """
  check = getattr(module, "check_config", None)
  if check is None:
    return  # a scan experiment checks each member's config itself (research.train.member_configs)
  for values in settings:
    member = config.copy_and_resolve_references()
    for name, value in values.items():
      parent, _, leaf = name.rpartition(".")
      node = _field(member, parent) if parent else member
      current = node[leaf]
      if isinstance(current, int) and not float(value).is_integer():
        raise ConfigError(f"cannot set {name} to {value:g}: it holds an integer")
      node[leaf] = int(value) if isinstance(current, int) else float(value)
    try:
      check(member)
    except ConfigError as e:
      shown = ", ".join(f"{name}={value:g}" for name, value in values.items())
      raise ConfigError(f"the member {shown} is refused: {e}") from None


def check_metric(module, config, metric: str) -> None:
  """Raises ConfigError unless `metric` is train_loss or one the experiment reports for `config` (its
  `metric_names`), listing them: a mistyped --metric is found before anything trains."""
  names = ("train_loss",) + tuple(module.metric_names(config))
  if metric not in names:
    name = module.__name__.split(".")[-1]
    raise ConfigError(f"--metric {metric!r} is not a metric of {name} with this config; choose one of: "
                      f"{', '.join(names)}")


def _mean_se(values: list) -> tuple[float, float]:
  finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
  if not len(finite):
    return math.nan, math.nan
  se = float(finite.std(ddof=1) / math.sqrt(len(finite))) if len(finite) > 1 else math.nan
  return float(finite.mean()), se


def _scalar_names(members: list[dict]) -> list[str]:
  skip = {"seed", "values", "diverged_at_step"}
  names = []
  for member in members:
    for name, value in member.items():
      if name not in skip and name not in names and isinstance(value, (int, float)) and not isinstance(value, bool):
        names.append(name)
  return names


def summarize(members: list[dict], settings: list[dict[str, float]]) -> list[dict]:
  """Per setting: its values, seeds, and (mean, standard error) over seeds of every scalar metric."""
  names = _scalar_names(members)
  rows = []
  for values in settings:
    group = [m for m in members if m["values"] == values]
    rows.append({"values": values, "seeds": [m["seed"] for m in group],
                 "diverged": sum("diverged_at_step" in m for m in group),
                 "metrics": {name: _mean_se([m.get(name) for m in group]) for name in names}})
  return rows


def _fmt(mean_se: tuple[float, float]) -> str:
  mean, se = mean_se
  if not math.isfinite(mean):
    return "—"
  return f"{mean:.4g} ± {se:.2g}" if math.isfinite(se) else f"{mean:.4g}"


def markdown(rows: list[dict], fields: list[str], seeds: list[int], name: str, wall_s: float) -> str:
  """The sweep table: one row per setting, mean ± standard error over seeds of each metric."""
  names = list(rows[0]["metrics"]) if rows else []
  return harness.document(
      f"Sweep of experiments.{name}",
      f"{len(rows)} settings x {len(seeds)} seeds (seeds {', '.join(map(str, seeds))}) = "
      f"{len(rows) * len(seeds)} members in one vmapped program per group; mean ± standard error over "
      f"seeds; {wall_s:.0f} s wall.",
      harness.table(fields + names + ["diverged"],
                    [[f"{row['values'][f]:g}" for f in fields] + [_fmt(row["metrics"][n]) for n in names]
                     + [row["diverged"]] for row in rows]))


def figure(rows: list[dict], members: list[dict], fields: list[str], metric: str) -> Figure:
  """`metric` against the varied field (seeds as dots, mean ± s.e. as a line), or a heatmap of two fields."""
  fig = Figure(figsize=(5.5, 4.2), dpi=100)
  ax = fig.subplots()
  if len(fields) == 2 and len({tuple(r["values"].values()) for r in rows}) == len(rows):
    xs = sorted({r["values"][fields[0]] for r in rows})
    ys = sorted({r["values"][fields[1]] for r in rows})
    grid = np.full((len(ys), len(xs)), np.nan)
    for r in rows:
      grid[ys.index(r["values"][fields[1]]), xs.index(r["values"][fields[0]])] = r["metrics"][metric][0]
    image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=ax, label=f"{metric} (mean over seeds)")
    ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
    ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
    ax.set_xlabel(fields[0])
    ax.set_ylabel(fields[1])
    for i, j in itertools.product(range(len(ys)), range(len(xs))):
      if math.isfinite(grid[i, j]):
        ax.text(j, i, f"{grid[i, j]:.3g}", ha="center", va="center", fontsize=7, color="white")
  else:
    field = fields[0] if fields else None
    xs = [r["values"][field] if field else 0.0 for r in rows]
    means = [r["metrics"][metric][0] for r in rows]
    errors = [r["metrics"][metric][1] if math.isfinite(r["metrics"][metric][1]) else 0.0 for r in rows]
    ax.errorbar(xs, means, yerr=errors, marker="o", capsize=3, label="mean ± s.e.")
    dots = [(m["values"][field] if field else 0.0, m.get(metric)) for m in members]
    dots = [(x, y) for x, y in dots if y is not None and math.isfinite(y)]
    if dots:
      ax.scatter(*zip(*dots), s=10, alpha=0.5, color="gray", label="seeds")
    if field and min(xs) > 0 and max(xs) / min(xs) >= 10:
      ax.set_xscale("log")
    ax.set_xlabel(field or "(no varied field)")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
  ax.set_title(f"{metric} over the sweep", fontsize=9)
  fig.tight_layout()
  return fig


def _groups(items: list, size: int) -> list[list]:
  size = size or len(items)
  return [items[i:i + size] for i in range(0, len(items), size)]


def run(config, workdir: str) -> dict:
  """Trains the grid as members of vmapped programs and writes results.json, sweep.md and sweep.png."""
  start = time.perf_counter()
  config_file = config_flags.get_config_filename(flags.FLAGS["config"])
  module = experiment_module(config_file)
  check_workdir(workdir)
  seeds = parse_seeds(_SEEDS.value)
  vary = parse_axes(_VARY.value, config, "vary")
  zipped = parse_axes(_ZIP.value, config, "zip")
  settings = settings_grid(vary, zipped)
  if _MAX_MEMBERS.value < 0:
    raise ConfigError(f"--max_members_per_program must be >= 0, got {_MAX_MEMBERS.value}")
  fields = list(vary) + list(zipped)
  check_settings(module, config, settings)
  check_metric(module, config, _METRIC.value)
  grid = [(seed, values) for values in settings for seed in seeds]
  members = []
  for i, group in enumerate(_groups(grid, _MAX_MEMBERS.value)):
    group_members = Members(seeds=tuple(seed for seed, _ in group),
                            hparams={f: tuple(values[f] for _, values in group) for f in fields})
    directory = os.path.join(workdir, "programs", str(i))
    done = os.path.join(directory, "results.json")
    if os.path.exists(done):  # a finished group of a resumed sweep is read, not trained again
      try:
        with open(done) as f:
          previous = json.load(f)
      except (OSError, ValueError):
        previous = {}  # half-written: the group's run restores its checkpoints and writes it again
      previous = previous if isinstance(previous, dict) else {}
      if [(m["seed"], m["values"]) for m in previous.get("members", [])] == \
          [(seed, values) for seed, values in group]:
        members += previous["members"]
        continue
    members += module.run(config, directory, members=group_members)["members"]
  rows = summarize(members, settings)
  metric = _METRIC.value
  if rows and metric not in rows[0]["metrics"]:
    # A declared metric that no member reported (all diverged): plot the loss rather than lose the sweep.
    print(f"warning: no member reported --metric {metric!r} (their metrics: "
          f"{', '.join(rows[0]['metrics'])}); sweep.png shows train_loss", file=sys.stderr)
    metric = "train_loss"
  wall = time.perf_counter() - start
  name = module.__name__.split(".")[-1]
  text = markdown(rows, fields, seeds, name, wall)
  out = harness.write_report(workdir, "sweep", {"experiment": module.__name__, "seeds": seeds, "vary": vary,
                                                "zip": zipped, "metric": metric, "members": members,
                                                "settings": rows},
                             text, figure=figure(rows, members, fields, metric), config=config, wall_time_s=wall)
  print(text)
  return out


if __name__ == "__main__":
  cli.main(None, run)
