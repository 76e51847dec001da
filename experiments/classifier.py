"""A classifier of the bundled 8x8 digits, trained by research.train: the network whose features score FID.

Run:
  python -m experiments.classifier --workdir=/tmp/classifier
  python -m experiments.classifier --workdir=/tmp/sgdw --config.optimizer.name=sgdw \
      --config.optimizer.learning_rate=0.05 --config.optimizer.weight_decay=1e-3
  python -m experiments.classifier --workdir=/tmp/cnn --config.network=cnn --config.steps=3000 \
      --config.log_every=3000 --config.checkpoint_every=3000     # the conv net of the second feature space
  python -m experiments.classifier --workdir=/tmp/smoke --config=experiments/classifier.py:smoke

The default config is the one the cached feature network of research/tasks/classifier.py is
trained with (an MLP 64-256-64-10 with ReLU, AdamW 3e-3 with warmup and cosine decay, 600
steps of batch 64): this command retrains it and reports the same test accuracy. It is also
the model of the Adam vs AdamW study (experiments/tables/adamw.py). Writes checkpoints,
TensorBoard events and results.json with test_accuracy, test_error and test_loss
(cross-entropy, nats) on the 300 held-out digits.
"""

from research import data as data_lib
from research.tasks import classifier as classifier_tasks
from research.train import base_config, check_choice, check_common, check_workdir, cli, train

def _smoke(config) -> None:
  """A run of a few compiled calls, for tests."""
  config.steps = config.log_every = config.checkpoint_every = 40
  config.steps_per_call = 20
  config.optimizer.warmup_steps = 5


PRESETS = {"smoke": _smoke}


def get_config(preset: str = ""):
  """The feature network's training config plus the dataset; preset "smoke" for tests."""
  config = base_config()
  config.update(classifier_tasks.train_config())  # every loop field as the cached feature network uses it
  config.dataset = "digits"  # the bundled 8x8 digits (the only dataset the network's input fits)
  return cli.apply_presets(config, preset, PRESETS)


# What experiments.sample / experiments.evaluate may change in a finished run (they train nothing).
SAMPLING_FIELDS = ()


def metric_names(config) -> tuple[str, ...]:
  """The scalar metrics a run of `config` reports (a sweep's `--metric` is one of these or train_loss)."""
  return classifier_tasks.METRICS


def run(config, workdir: str, members=None) -> dict:
  """Trains the classifier; returns what results.json holds.

  `members` (research.train.Members) trains a sweep of runs as one program (experiments/sweep.py).
  """
  check_common(config)
  check_choice("dataset", config.dataset, ("digits",))
  check_choice("network", config.network, classifier_tasks.NETWORKS)
  check_workdir(workdir)
  train_split, test_split = data_lib.load("digits", "train"), data_lib.load("digits", "test")
  task = classifier_tasks.make_task(config)
  return train(task, config, workdir, {"image": train_split["image"], "label": train_split["label"]},
               {"image": test_split["image"], "label": test_split["label"]}, members).results


if __name__ == "__main__":
  cli.main(__file__, run)
