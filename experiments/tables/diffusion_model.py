"""The trained diffusion model the DDIM and guidance tables sample from, and how they score samples.

Both tables (experiments/tables/ddim.py, experiments/tables/guidance.py) import this module,
whose `add_model_fields` gives their configs the fields they share:

  model          the model: experiments/diffusion.py's config with its `long` preset (the
                 default class-conditional DDPM U-Net on digits, trained 12000 steps instead
                 of 3000: at 3000 steps its noise prediction leaves speckle that the
                 deterministic samplers keep, so the tables would measure the model's
                 residual error, not the samplers); `--config.model.<field>=...` overrides a field;
  model_workdir  where that model is trained through `experiments.diffusion.run` (the one
                 training loop); a rerun finds the finished checkpoint and reuses it, and an
                 unfinished one resumes;
  num_samples    the samples scored per table cell.

`smoke_model` is both tables' smoke preset of these fields: a tiny model trained 2 steps.

Samples are scored as experiments/diffusion.py scores its own
(research.tasks.classifier.digits_sample_metrics): in both digits feature spaces (the MLP
classifier's and the convolutional classifier's), the first min(N, 300) samples against the
digits training split beside the 300 real held-out digits' first as many, FID and its ratio to
theirs, KID with its standard error, precision and recall; plus FID's bootstrap standard error
over the scored samples in each space.
"""

import json
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import diffusion as diffusion_experiment
from research import data as data_lib
from research.metrics import fid as fid_lib
from research.models import diffusion
from research.tasks import classifier as classifier_tasks
from research.tasks import diffusion as diffusion_tasks
from research.train import Checkpointer, ConfigError, Keys, check_workdir, eval_params, init_state, restore_pytree

MIN_SAMPLES = 4  # precision/recall's k-th neighbour (k = 3) needs more samples than k


def add_model_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the model, its directory and the sample count to a table's config; returns it."""
  config.model = diffusion_experiment.get_config("long")  # the model: experiments/diffusion.py's config, `long` preset
  # Where the model is trained and checkpointed; "": <outdir>/model. A rerun reuses a finished model and resumes an
  # unfinished one.
  config.model_workdir = ""
  config.num_samples = 1000  # samples scored per table cell (FID's bias and its standard error depend on it)
  return config


def smoke_model(config: ml_collections.ConfigDict) -> None:
  """Both tables' smoke preset of the model fields: the experiment's smoke model trained 2 steps, 10 samples."""
  config.model = diffusion_experiment.get_config("smoke")
  config.model.steps, config.model.num_samples, config.model.sample_batch = 2, 10, 10
  config.num_samples = 10


class TrainedModel(NamedTuple):
  """A trained denoiser with what sampling it needs.

  Attributes:
    config: the experiments/diffusion.py config it was trained with.
    params: the EMA parameters (what the experiment evaluates and samples with).
    apply: `apply(params, x, t, y, train, key)` from `diffusion_tasks.make_denoiser`.
    schedule: the diffusion Schedule.
    image_shape: (H, W, C).
    num_classes: classes of the labels; 0 for an unconditional model.
    workdir: the model's run directory.
    train_s: seconds spent training in this process (0 when the model was reused).
  """

  config: Any
  params: Any
  apply: Callable
  schedule: diffusion.Schedule
  image_shape: tuple[int, ...]
  num_classes: int
  workdir: str
  train_s: float

  def denoiser(self, params, labels: jax.Array) -> diffusion.DenoiseFn:
    """The conditional (or unconditional) denoiser at `labels`, guided by config.guidance_scale if not 1."""
    cond_fn = lambda x, t, y: self.apply(params, x, t, y, False, None)
    if self.num_classes and self.config.guidance_scale != 1.0:
      return diffusion.classifier_free_guidance(cond_fn, labels, self.num_classes, self.config.guidance_scale)
    return lambda x, t: cond_fn(x, t, labels)

  def labels(self, n: int) -> jax.Array:
    """Labels cycling through the classes, as experiments/diffusion.py samples (zeros if unconditional)."""
    return jnp.arange(n, dtype=jnp.int32) % max(self.num_classes, 1)


def model_workdir(config, outdir: str) -> str:
  """config.model_workdir, or `<outdir>/model`."""
  return config.model_workdir or os.path.join(outdir, "model")


def check_model_fields(config, workdir: str) -> None:
  """Raises ConfigError for a bad model config, model directory or sample count (nothing is written)."""
  diffusion_experiment.check_config(config.model)
  check_workdir(workdir)
  if config.num_samples < MIN_SAMPLES:
    raise ConfigError(f"num_samples must be at least {MIN_SAMPLES}, got {config.num_samples}")


def prepare(config, outdir: str, check: Callable[[Any], Any]) -> tuple[Any, "TrainedModel", "Scorer"]:
  """Checks a table's config, trains or restores its model, and makes its scorer.

  Args:
    config: the table's config (with `add_model_fields`' fields).
    outdir: the table's output directory (the model lives in `model_workdir(config, outdir)`).
    check: `check(config) -> checked`, the table's own checks (raising ConfigError), run before the
      model's and before anything is trained or written.

  Returns:
    (what check returned, the trained model, a Scorer).

  Raises:
    ConfigError: on bad input, before anything is trained or written.
  """
  workdir = model_workdir(config, outdir)
  checked = check(config)
  check_model_fields(config, workdir)
  return checked, trained_model(config.model, workdir), Scorer()


def check_sample_steps(config, steps) -> None:
  """Raises ConfigError unless every S is in [1, T]."""
  for s in steps:
    if not 0 < s <= config.num_train_steps:
      raise ConfigError(f"sample steps must be in [1, T = {config.num_train_steps}], got {s}")


def _finished_step(workdir: str, config) -> int:
  """The newest checkpointed step in workdir (0 if none)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return 0
  checkpoints = Checkpointer(workdir, config.keep_checkpoints)
  steps = checkpoints.steps()
  checkpoints.close()
  return max(steps, default=0)


def _shapes(tree) -> dict:
  return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def trained_model(config, workdir: str) -> TrainedModel:
  """Trains the model of `config` in `workdir` unless it is already trained there, then restores its EMA.

  Training goes through `experiments.diffusion.run` (the one loop, with its evaluation and
  samples). The restore reads the loop's latest checkpoint (`<workdir>/checkpoints/<step>/state`)
  with research.train's `restore_pytree` and keeps only the EMA parameters, checked leaf by
  leaf against the parameters the config builds: sampling needs nothing else, and a finished
  model stays readable when the loop's TrainState gains fields. Nothing in workdir is changed.

  Args:
    config: an experiments/diffusion.py config.
    workdir: the model's run directory.

  Returns:
    The TrainedModel.

  Raises:
    ConfigError: if workdir holds a model of other shapes or of another number of steps.
  """
  train_split = data_lib.load(config.dataset, "train")
  image_shape = tuple(train_split["image"].shape[1:])
  num_classes = 10 if config.conditional else 0
  task = diffusion_tasks.make_task(config, image_shape, num_classes)
  batch = {"image": train_split["image"][:config.batch_size], "label": train_split["label"][:config.batch_size]}
  abstract = jax.eval_shape(lambda k, b: init_state(task, k, b, config.ema_decay), Keys.from_seed(config.seed).init,
                            batch)
  train_s = 0.0
  if _finished_step(workdir, config) < config.steps:
    start = time.perf_counter()
    diffusion_experiment.run(config, workdir)
    train_s = time.perf_counter() - start
  step = _finished_step(workdir, config)
  if step != config.steps:
    raise ConfigError(f"{workdir} holds a model trained for {step} steps, the config asks for {config.steps}; "
                      "use another model_workdir")
  stored = restore_pytree(os.path.join(workdir, "checkpoints", str(step), "state"))
  params = stored["ema_params"] if stored.get("ema_params") is not None else stored["params"]
  built, found = _shapes(eval_params(abstract)), _shapes(params)
  if built != found:
    problem = next((k for k in built if built[k] != found.get(k)), None) or next(k for k in found if k not in built)
    raise ConfigError(f"the model in {workdir} does not match this config ({problem}: {found.get(problem)} stored, "
                      f"{built.get(problem)} built); use another model_workdir")
  _, apply = diffusion_tasks.make_denoiser(config, image_shape, num_classes)
  schedule = diffusion.make_schedule(config.schedule, config.num_train_steps)
  return TrainedModel(config, params, apply, schedule, image_shape, num_classes, workdir, train_s)


def to_images(x: jax.Array) -> jax.Array:
  """Samples in [-1, 1] as images in [0, 1], as experiments/diffusion.py writes them."""
  return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)


class Drawn(NamedTuple):
  """What `draw` returns."""

  images: np.ndarray  # (members, n, H, W, C) float32 in [0, 1]
  compile_s: float  # seconds spent compiling (once per chunk size)
  run_s: float  # seconds the compiled calls took


def draw(program: Callable, model: TrainedModel, key: jax.Array, n: int) -> Drawn:
  """Runs `program(params, key, labels)` on chunks of `config.sample_batch` labels and joins the chunks.

  `program` returns (members, chunk, H, W, C): one chunk of every member of a vmapped sweep.
  Chunk i uses fold_in(key, i), as experiments/diffusion.py does, and every member the same
  key: the members start from the same x_T and see the same step noise.

  Args:
    program: the sampling function (jitted here, compiled ahead of time once per chunk size).
    model: the TrainedModel whose EMA parameters are passed to `program`.
    key: PRNG key.
    n: samples per member.

  Returns:
    Drawn: the images, and the compile and run times.
  """
  labels = model.labels(n)
  batch = model.config.sample_batch
  calls = [(model.params, jax.random.fold_in(key, i), labels[start:start + batch])
           for i, start in enumerate(range(0, n, batch))]
  chunks, compile_s, run_s = timed_calls(program, calls)
  return Drawn(np.concatenate(chunks, axis=1), compile_s, run_s)


def timed_calls(program, calls) -> tuple[list[np.ndarray], float, float]:
  """`program(*args)` for each args of `calls`, compiled once per batch size (the third argument's rows).

  Returns:
    (the outputs as NumPy arrays, seconds compiling, seconds running).
  """
  jitted, compiled = jax.jit(program), {}
  chunks, compile_s, run_s = [], 0.0, 0.0
  for args in calls:
    size = args[2].shape[0]
    if size not in compiled:
      t0 = time.perf_counter()
      compiled[size] = jitted.lower(*args).compile()
      compile_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    chunks.append(np.asarray(jax.block_until_ready(compiled[size](*args))))
    run_s += time.perf_counter() - t0
  return chunks, compile_s, run_s


class Scorer:
  """Digits samples' sample metrics in both feature spaces (`digits_sample_metrics`) and FID's bootstrap error."""

  def __init__(self):
    self.spaces = classifier_tasks.digits_spaces()
    self.real = {prefix: classifier_tasks.digits_reference("train", space).features for space, prefix in self.spaces}

  def features(self, images: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """{prefix: the first n images' features in that space}: what a paired comparison of two cells resamples."""
    return {prefix: space.features(images[:n]) for space, prefix in self.spaces}

  def __call__(self, images: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """Scores (N, H, W, C) images in [0, 1].

    Returns:
      digits_sample_metrics(images), with "<prefix>fid_se" (`research.metrics.fid.frechet_distance_se`
      of the scored samples) in each space and, given labels, "<prefix>label_agreement": the share of
      all N samples that space's classifier reads as their label.
    """
    out = classifier_tasks.digits_sample_metrics(images)
    for prefix, feats in self.features(images, out["num_scored"]).items():
      out[prefix + "fid_se"] = fid_lib.frechet_distance_se(self.real[prefix], feats)
    if labels is not None:
      for space, prefix in self.spaces:
        out[prefix + "label_agreement"] = float(np.mean(space.predict(images) == np.asarray(labels)))
    return out


def train_summary(workdir: str) -> dict:
  """What the tables keep of the model's results.json (its own scores, its training time), or {} if absent."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    train_results = json.load(f)
  keys = ("step", "train_loss", "fid", "precision", "recall", "classes_covered", "num_samples", "steps_per_second",
          "wall_time_s")
  return {k: train_results[k] for k in keys if k in train_results}
