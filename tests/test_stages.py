"""research.train.stages: a pipeline of runs, each stage read by the next through stage_output, resumed stage by stage."""

import dataclasses
import json

import pytest

import tiny_run
from trees import assert_trees_equal
from research.train import ConfigError, Pipeline, stage_output, train
from research.train.stages import finished


class Killed(Exception):
  """Stands for a kill of the process in the middle of a stage."""


def _pipeline(workdir, data, calls: list, kill_second_at: int | None = None):
  """Stage "first" trains the tiny classifier; stage "second" fine-tunes what it ends with."""
  config = _config()
  task = tiny_run.make_task(config)
  pipeline = Pipeline(str(workdir))

  def first(directory):
    calls.append("first")
    train(task, config, directory, data)

  out = pipeline.stage("first", config.steps, first)

  def second(directory):
    calls.append("second")
    fine_tune = dataclasses.replace(task, init=lambda key, batch: out.params)
    if kill_second_at is not None:
      train(fine_tune, _with(config, steps=kill_second_at), directory, data)
      raise Killed()
    return train(fine_tune, config, directory, data)

  return out, pipeline.stage("second", config.steps, second)


def _config():
  """The tiny run, 6 steps at a constant learning rate: a kill is stood for by a run of fewer steps."""
  config = _with(tiny_run.make_config(6), log_every=3, checkpoint_every=3)  # a kill at step 3 loses no log
  config.optimizer.schedule = "constant"
  return config


def _with(config, **fields):
  config = config.copy_and_resolve_references()
  for name, value in fields.items():
    config[name] = value
  return config


def test_each_stage_reads_the_last_one_s_results_and_final_parameters(tmp_path, digits_train):
  calls = []
  first, second = _pipeline(tmp_path, digits_train, calls)
  assert calls == ["first", "second"]
  assert first.directory == str(tmp_path / "first") and second.name == "second"
  config = _config()
  alone = train(tiny_run.make_task(config), config, str(tmp_path / "alone"), digits_train)
  assert_trees_equal(first.params, alone.state.params)
  assert first.results["train_loss"] == alone.results["train_loss"]
  assert json.loads((tmp_path / "second" / "results.json").read_text()) == second.results
  assert finished(str(tmp_path), "second", 6) and not finished(str(tmp_path), "second", 7)


def test_a_killed_pipeline_resumes_in_its_stage_to_the_same_bits(tmp_path, digits_train, capfd):
  _, whole = _pipeline(tmp_path / "whole", digits_train, [])
  calls = []
  with pytest.raises(Killed):
    _pipeline(tmp_path / "killed", digits_train, calls, kill_second_at=3)
  again = []
  _, resumed = _pipeline(tmp_path / "killed", digits_train, again)
  assert calls == ["first", "second"] and again == ["second"]  # the finished stage is not run again
  err = capfd.readouterr().err
  assert "stage first: finished (6 steps)" in err and "stage second: training 6 steps" in err
  assert f"resuming from step 3 of {tmp_path / 'killed' / 'second'}" in err
  # A stage's own lines are led by its name; each phase says what it is doing.
  assert f"[second] resuming from step 3 of {tmp_path / 'killed' / 'second'}" in err
  assert "[second] training steps 3..6: compiling the step first" in err
  assert "[second] evaluating at step 6" in err and "[second] final: " in err
  assert_trees_equal(resumed.params, whole.params)
  assert resumed.results["train_loss"] == whole.results["train_loss"]


def test_a_half_written_results_file_runs_the_stage_again_from_its_checkpoint(tmp_path, digits_train):
  _, second = _pipeline(tmp_path, digits_train, [])
  path = tmp_path / "second" / "results.json"
  path.write_text(path.read_text()[:40])
  calls = []
  _, again = _pipeline(tmp_path, digits_train, calls)
  assert calls == ["second"]  # restored from its final checkpoint: no step is trained again
  assert again.results["train_loss"] == second.results["train_loss"]
  assert_trees_equal(again.params, second.params)


def test_a_stage_without_its_run_s_files_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="stage pretrain has no results.json"):
    stage_output(str(tmp_path), "pretrain")
  (tmp_path / "pretrain").mkdir()
  (tmp_path / "pretrain" / "results.json").write_text("{}")
  with pytest.raises(ConfigError, match="holds no checkpoint"):
    stage_output(str(tmp_path), "pretrain")
