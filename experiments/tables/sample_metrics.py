"""The digits sample metrics' scale: FID and KID of cases whose order is known, in both feature spaces.

Every generative digits run reports its samples beside real held-out digits at the same count,
in two feature spaces (research/tasks/classifier.py: the MLP classifier's features, which average
pixel noise away, and the convolutional classifier's, which see it). This table scores five cases
as those runs score their samples (`digits_known_cases`: `num_samples` drawn of each model, at
min(num_samples, 300) beside the 300 held-out digits), from best to worst: the real held-out
digits; them with Gaussian pixel noise of σ = 0.05 and 0.1; a full-covariance Gaussian mixture
fitted to the training pixels (its size chosen by BIC); independent pixels. A model's scores sit
on this scale.

Run:
  python -m experiments.tables.sample_metrics --outdir=experiments/tables/results/sample_metrics
  python -m experiments.tables.sample_metrics --outdir=/tmp/scale --config=experiments/tables/sample_metrics.py:smoke
"""

import time

import ml_collections

from experiments import harness
from research.tasks import classifier as classifier_tasks
from research.train import check_positive, cli

NAME = "sample_metrics"
COLUMNS = ("fid", "fid_ratio", "kid", "precision", "recall", "confidence")


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Fewer model samples, for tests."""
  config.num_samples = 100


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config: the experiments' sample count."""
  config = ml_collections.ConfigDict()
  config.num_samples = 1000  # images drawn of the mixture and of independent pixels (the experiments draw 1000)
  config.seed = 0  # seeds the noise, the mixture and the independent pixels
  return cli.apply_presets(config, preset, PRESETS)


def _cell(metrics: dict, prefix: str, name: str) -> str:
  value = metrics[prefix + name]
  if name == "kid":
    return harness.kid(metrics, prefix)
  return f"{value:.3g}" if name in ("fid", "fid_ratio") else f"{value:.3f}"


def markdown(config, cases: dict, wall_time_s: float) -> str:
  blocks = []
  for prefix, title in classifier_tasks.SPACE_TITLES:
    blocks += [f"## {title}",
               harness.table(["case"] + list(COLUMNS),
                             [[name] + [_cell(metrics, prefix, c) for c in COLUMNS] for name, metrics in cases.items()],
                             align="l" + "r" * len(COLUMNS))]
  scored = next(iter(cases.values()))["num_scored"]
  return harness.document(
      "Digits sample metrics on known cases",
      f"Each case scored at {scored} images against the training split's features, as the experiments score their "
      f"samples (fid_ratio: the case's FID over the real held-out digits' at that count; KID ± its jackknife "
      f"standard error; precision/recall k = 3; confidence: the classifier's mean largest class probability). "
      f"The mixture and the independent pixels: {config.num_samples} images drawn, the first {scored} scored.",
      *blocks,
      f"Wall time: {wall_time_s:.0f} s.")


def run(config, outdir: str) -> dict:
  """Scores the known cases and writes results.json and sample_metrics.md into outdir."""
  check_positive("num_samples", config.num_samples)
  start = time.time()
  cases = classifier_tasks.digits_known_cases(config.num_samples, config.seed)
  wall_time_s = time.time() - start
  return harness.write_report(outdir, NAME, {"cases": cases}, markdown(config, cases, wall_time_s), config=config,
                              wall_time_s=wall_time_s)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
