"""The loop's evaluations and samples: every member's, with the keys and hparams of its own run."""

import math
import os
from typing import Any

import jax
import numpy as np

from research.train import images
from research.train import monitor
from research.train.members import Engine
from research.train.step import Keys, TrainState, eval_params


def summarize(task, arrays: dict[str, Any]) -> dict[str, Any]:
  """One member's pure evaluation (NumPy arrays) as results.json holds it: the task's `summarize`, or floats."""
  if task.summarize is not None:
    return dict(task.summarize(arrays))
  return {name: np.asarray(value).item() if np.ndim(value) == 0 else np.asarray(value).tolist()
          for name, value in arrays.items() if name not in task.pictures}


def member_means(evaluations: list[dict[str, Any]]) -> dict[str, Any]:
  """The mean over members of every scalar evaluation metric (NaN-free members only)."""
  out = {}
  for name, value in evaluations[0].items():
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
      column = np.asarray([e[name] for e in evaluations], np.float64)
      out[name] = float(np.nanmean(column)) if np.isfinite(column).any() else math.nan
  return out


class Evaluator:
  """Evaluates every member and writes its samples (a sweep's member i into `member_<i>/`).

  A pure evaluation (Task.evaluate_pure) is compiled once, for every member at once; the
  pictures it returns are the samples written at its step.
  """

  def __init__(self, engine: Engine, workdir: str, eval_data, writer, seed: int | None = None):
    task = engine.task
    self.engine, self.task, self.workdir, self.eval_data, self.writer = engine, task, workdir, eval_data, writer
    # Each member evaluates and samples with the keys of its own single run (or of `seed`'s run).
    seeds = engine.members.seeds if seed is None else [seed] * engine.count
    keys = [jax.random.split(Keys.from_seed(s).eval) for s in seeds]
    self._evaluate_keys, self._sample_keys = [k[0] for k in keys], [k[1] for k in keys]
    self._evaluate, self._sample = task.evaluate, task.sample
    if task.evaluate_pure and self._evaluate is not None:
      self._pure = jax.jit(engine.over_members(self._evaluate, in_axes=(0, 0, None, 0)))
      self._pure_keys = engine.stack(self._evaluate_keys)
    self._pictures: dict[str, Any] = {}  # the step of the last pure evaluation and each member's pictures
    self.metrics: dict[str, Any] = {}  # the last evaluation's (a sweep's: the mean over members)
    self.member_metrics: list[dict[str, Any]] = []  # the last evaluation of each member
    self.evaluated_step: int | None = None
    self.sampled_step: int | None = None

  def evaluate(self, state: TrainState, step: int) -> None:
    """Evaluates every member; writes the scalars under `eval/` and a console line."""
    if self._evaluate is None:
      return
    engine = self.engine
    if self.task.evaluate_pure:
      # One compiled program for every member: their params, keys and hparams batched, the data shared.
      arrays = jax.device_get(self._pure(eval_params(state), self._pure_keys, self.eval_data,
                                         self.task.traced(state.hparams)))
      member_arrays = [engine.member(arrays, i) for i in range(engine.count)]
      self.member_metrics = [summarize(self.task, a) for a in member_arrays]
      # The pictures the evaluation made (the samples it scored) are what `write_samples` writes at this step.
      self._pictures = {"step": step, "pictures": [{name: a[name] for name in self.task.pictures
                                                    if a.get(name) is not None} for a in member_arrays]}
    else:
      self.member_metrics = [dict(self._evaluate(engine.member(eval_params(state), i), self._evaluate_keys[i],
                                                 self.eval_data, engine.member(self.task.traced(state.hparams), i)))
                             for i in range(engine.count)]
    self.metrics = member_means(self.member_metrics) if engine.sweep else self.member_metrics[0]
    scalars = {f"eval/{k}": v for k, v in self.metrics.items() if isinstance(v, (int, float, np.number))
               and not isinstance(v, bool)}
    self.writer.write_scalars(step, scalars)
    monitor.say(f"eval at step {step}{' (mean over members)' if engine.sweep else ''}: "
                f"{monitor.format_metrics(self.metrics)}")
    self.evaluated_step = step

  def write_samples(self, state: TrainState, step: int, diverged) -> None:
    """Writes every finite member's samples: its evaluation's pictures at this step, else `sample`'s."""
    self.sampled_step = step
    if self._sample is None or jax.process_index() != 0:
      return
    engine = self.engine
    for i in range(engine.count):
      if i in diverged:
        continue  # nothing to look at
      try:
        directory = os.path.join(self.workdir, f"member_{i}") if engine.sweep else self.workdir
        os.makedirs(directory, exist_ok=True)
        if self._pictures.get("step") == step and self._pictures["pictures"][i]:
          drawn = self._pictures["pictures"][i]
        else:
          drawn = self._sample(engine.member(eval_params(state), i), self._sample_keys[i],
                               engine.member(self.task.traced(state.hparams), i))
        images.write_samples(directory, drawn, self.writer if i == 0 else None, step, self.task.picture_notes)
      except Exception as e:  # pylint: disable=broad-except
        # A picture must never cost the run its results.
        monitor.say(f"warning: could not write samples at step {step}: {type(e).__name__}: {e}")
