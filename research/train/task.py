"""What a model family hands the training loop."""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import optax

Params = Any
Batch = Mapping[str, Any]
Metrics = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Task:
  """A model family's plug-in for the one training loop.

  Attributes:
    init: `init(key, batch) -> params`.
    tx: the optimizer (see research/optim.py); for a task whose params are a dict of
      groups trained by separate optimizer states (GAN: 'gen' and 'disc'), a mapping
      group -> transformation.
    loss: `loss(params, batch, key, train, hparams) -> (scalar, metrics)`; the loop
      differentiates it and applies `tx`. Give either `loss` or `train_step`. Every function of
      a task has one signature whether or not it has traced hyperparameters: `hparams` is
      always passed, {name: traced float32 scalar} of `Task.hparams` ({} for a task without).
    train_step: `train_step(state, batch, key) -> (state, metrics)` for updates that are
      not one optimizer on one loss; metrics must contain 'loss'. Build it from
      research.train.step.apply_gradients so the health metrics come for free.
    evaluate: `evaluate(params, key, data, hparams) -> metrics` on the evaluation split `data`
      (as handed to `train`, or None), every `config.eval_every` steps and at the end, on the
      EMA parameters when there are any. Scalars go to TensorBoard under `eval/`, the last
      evaluation's metrics into results.json. `hparams` are the member's own (as `loss` gets
      them), so a hyperparameter that only the evaluation reads (a sampler's guidance scale)
      is swept like one the loss reads.
    evaluate_pure: True when `evaluate` (if any) is a pure, jittable function of (params, key, data,
      hparams) returning a dict of arrays (NLL, accuracy, the classifier features of generated
      samples, mode counts): the loop then compiles it once, and a sweep evaluates all its members
      in one `jax.vmap`ped program (params, keys and hparams batched over members, the data shared)
      instead of one Python evaluation per member.
    pictures: with `evaluate_pure`, the entries of the evaluation that are pictures (images in
      [0, 1], (N, H, W, C)): generated samples the evaluation scored, reconstructions of the test
      images. At a step whose evaluation returned any of them, the loop writes those as the
      step's samples (each as `sample` output is written) instead of calling `sample`, so
      samples.npz holds exactly the scored images and no sampler runs twice; at other sample
      steps it calls `sample`. They stay out of results.json.
    summarize: with `evaluate_pure`, `summarize(metrics) -> metrics` turns one member's
      evaluation arrays (NumPy) into what results.json holds (a Fréchet distance from the
      features, Python floats); by default every scalar array becomes a float and other
      arrays lists (`pictures` left out).
    sample: `sample(params, key, hparams) -> {name: sample}`, every `config.sample_every`
      steps and at the end (a member's pictures drawn with its own hparams, as its evaluation
      draws them): images (N, H, W, C) in [0, 1] become
      `<name>.png` (a grid) and `<name>.npz` (`images`), points (N, 2) a scatter plot and
      `<name>.npz` (`points`), text (a string or a list of strings) `<name>.txt`.
    learning_rate: `learning_rate(opt_state, step) -> scalar`, the rate the update at
      `step` applies (research.optim.learning_rate_fn gives it for its optimizers); logged
      when given. The loop never reads an optimizer's state layout itself.
    init_extra: `init_extra(key, batch) -> extra`, the state carried but not trained
      (TrainState.extra); only a task with its own `train_step` can update it.
    batches_per_step: how many batches one step consumes (GAN: n_critic); the loop hands
      `train_step` batch_size * batches_per_step examples.
    hparams: {config field: value} of the hyperparameters the update reads as traced
      float32 scalars (loss weights, noise levels), never as Python constants: they live
      in TrainState.hparams, so one compiled program serves every value and a sweep
      (research.train.Members) gives each member its own. `loss`, `evaluate` and `sample`
      receive them as their last argument (`traced`); a `train_step` reads `state.hparams`. The optimizer's injected
      hyperparameters (research/optim.py) are swept through its state instead.
  """

  init: Callable[..., Params]
  tx: optax.GradientTransformation | Mapping[str, optax.GradientTransformation]
  loss: Callable[..., tuple[Any, Metrics]] | None = None
  train_step: Callable[..., tuple[Any, Metrics]] | None = None
  evaluate: Callable[..., Metrics] | None = None
  evaluate_pure: bool = False
  pictures: tuple[str, ...] = ("samples",)
  summarize: Callable[..., Metrics] | None = None
  sample: Callable[..., Mapping[str, Any]] | None = None
  learning_rate: Callable[..., Any] | None = None
  init_extra: Callable[..., Any] | None = None
  batches_per_step: int = 1
  hparams: Mapping[str, float] | None = None
  picture_notes: Mapping[str, str] | None = None  # a line under a picture's title: what its rows or columns are

  def traced(self, hparams) -> dict[str, Any]:
    """This task's traced hyperparameters out of TrainState.hparams (which a sweep over the EMA
    decay extends with the loop's own): what `loss`, `evaluate` and `sample` get, {} without any."""
    return {name: hparams[name] for name in self.hparams or {}}

  def __post_init__(self):
    if (self.loss is None) == (self.train_step is None):
      raise ValueError("a Task needs exactly one of `loss` and `train_step`")
