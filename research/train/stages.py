"""Pipelines of runs: named stages, each a run in `workdir/<stage>`, read by the next through one function.

    pipeline = Pipeline(workdir)
    lm = pipeline.stage("pretrain", config.pretrain.steps, lambda d: train(lm_task, config.pretrain, d, text))
    sft = pipeline.stage("sft", config.sft.steps, lambda d: train(make_sft_task(lm.params), config.sft, d, demos))
    sft.results["train_loss"], sft.params   # the stage's results.json and final parameters

A stage is finished when its results.json reports the stage's steps; a finished stage is
never run again, only read (`stage_output`). A pipeline killed in a stage resumes in that
stage when it is run again (the loop resumes the stage's run from its checkpoints), and
one run again with more steps for a stage continues that stage. The next stage reads the
results and final parameters through `stage_output`, never the checkpoint layout.
"""

import json
import os
from collections.abc import Callable
from typing import Any, NamedTuple

from research.train import monitor
from research.train.checkpoint import Checkpointer


class StageOutput(NamedTuple):
  """What a finished stage hands the next.

  Attributes:
    name: the stage's name.
    directory: its run's directory, `workdir/<name>` (other files it wrote, a tokenizer, are there).
    results: its results.json.
    params: its final parameters (TrainState.params of its last checkpoint), as saved: nested
      dicts of arrays, replicated over this process's devices.
  """

  name: str
  directory: str
  results: dict[str, Any]
  params: Any


def _results(directory: str) -> dict[str, Any] | None:
  """The results.json of a run in `directory`; None where there is none (or a half-written one)."""
  try:
    with open(os.path.join(directory, "results.json")) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def finished(workdir: str, name: str, steps: int) -> bool:
  """Whether stage `name` of the pipeline in `workdir` has trained all its `steps`."""
  results = _results(os.path.join(workdir, name))
  return results is not None and results.get("step") == steps


def stage_output(workdir: str, name: str) -> StageOutput:
  """The results and final parameters of stage `name` of the pipeline in `workdir`.

  Raises:
    ConfigError: if the stage has no checkpoint.
    FileNotFoundError: if it has no results.json.
  """
  directory = os.path.join(workdir, name)
  results = _results(directory)
  if results is None:
    raise FileNotFoundError(f"stage {name} has no results.json in {directory}")
  checkpoints = Checkpointer(directory, keep=1)
  try:
    _, state = checkpoints.restore_saved()
  finally:
    checkpoints.close()
  return StageOutput(name, directory, results, state["params"])


class Pipeline:
  """The stages of one experiment in one workdir, run in the order they are asked for."""

  def __init__(self, workdir: str):
    self.workdir = workdir

  def directory(self, name: str) -> str:
    return os.path.join(self.workdir, name)

  def stage(self, name: str, steps: int, run: Callable[[str], Any]) -> StageOutput:
    """Runs stage `name` unless it has finished, then returns its output.

    Args:
      name: the stage's name; its run's directory is `workdir/<name>`.
      steps: the steps its run trains (a finished stage's results.json reports them).
      run: `run(directory)` trains the stage there (research.train.train or an
        experiment's run), resuming from the checkpoints a killed run left.

    Returns:
      The stage's StageOutput, read back from its directory whether it trained now or before.
    """
    directory = self.directory(name)
    if finished(self.workdir, name, steps):
      monitor.say(f"stage {name}: finished ({steps} steps) in {directory}; restored")
    else:
      monitor.say(f"stage {name}: training {steps} steps in {directory}")
      with monitor.labelled(name):
        run(directory)
    return stage_output(self.workdir, name)
