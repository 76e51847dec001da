"""Sweeps through the one loop (research.train.Members) and from the command line (experiments/sweep.py)."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import FAST_COMPILE, ROOT, assert_declared_metrics, run_python
from experiments import autoencoder as autoencoder_experiment
from experiments import gan as gan_experiment
from research.train import ConfigError, Members


def _single(experiment, config, workdir, **fields):
  config = config.copy_and_resolve_references()
  for name, value in fields.items():
    node = config
    *parents, leaf = name.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return experiment.run(config, str(workdir))


@pytest.mark.slow
def test_autoencoder_members_equal_their_single_runs(tmp_path):
  config = autoencoder_experiment.get_config("smoke")
  members = Members(seeds=(0, 1, 0), hparams={"optimizer.learning_rate": (1e-3, 1e-3, 3e-3),
                                               "kl_weight": (1.0, 1.0, 0.5)})
  swept = autoencoder_experiment.run(config, str(tmp_path / "sweep"), members=members)["members"]
  assert_declared_metrics(autoencoder_experiment, config, swept)
  for i, member in enumerate(swept):
    single = _single(autoencoder_experiment, config, tmp_path / str(i), seed=member["seed"],
                     **{"optimizer.learning_rate": member["values"]["optimizer.learning_rate"],
                        "kl_weight": member["values"]["kl_weight"]})
    np.testing.assert_allclose(member["train_loss"], single["train_loss"], rtol=1e-6)
    np.testing.assert_allclose(member["test_nll_nats"], single["test_nll_nats"], rtol=1e-5)
  # The settings differ, so the members do.
  assert len({round(m["train_loss"], 3) for m in swept}) == 3


@pytest.mark.slow
def test_gan_gradient_penalty_members_equal_their_single_runs(tmp_path):
  config = gan_experiment.get_config("wgan_gp,smoke")
  members = Members(seeds=(2, 2), hparams={"gp_weight": (0.1, 10.0)})
  swept = gan_experiment.run(config, str(tmp_path / "sweep"), members=members)["members"]
  assert_declared_metrics(gan_experiment, config, swept)
  for i, member in enumerate(swept):
    single = _single(gan_experiment, config, tmp_path / str(i), seed=2, gp_weight=member["values"]["gp_weight"])
    np.testing.assert_allclose(member["train_loss"], single["train_loss"], rtol=1e-5)
    assert member["modes_captured"] == single["modes_captured"]
  assert swept[0]["train_loss"] != pytest.approx(swept[1]["train_loss"], rel=1e-3)


def test_a_diverging_member_is_reported_and_the_others_finish(tmp_path):
  config = autoencoder_experiment.get_config("smoke")
  members = Members(seeds=(0, 0), hparams={"optimizer.learning_rate": (1e-3, 1e9)})
  swept = autoencoder_experiment.run(config, str(tmp_path), members=members)["members"]
  assert np.isfinite(swept[0]["train_loss"]) and "diverged_at_step" not in swept[0]
  assert swept[1]["train_loss"] is None and 1 <= swept[1]["diverged_at_step"] <= config.steps
  # The checkpoint remembers it: the same sweep resumed at its end reports the same member.
  resumed = autoencoder_experiment.run(config, str(tmp_path), members=members)["members"]
  assert resumed[1]["diverged_at_step"] == swept[1]["diverged_at_step"] and "diverged_at_step" not in resumed[0]


def test_shape_changing_fields_are_refused_by_name(tmp_path):
  config = autoencoder_experiment.get_config("smoke")
  with pytest.raises(ConfigError, match="cannot vary latent_dim: it is not a traced hyperparameter.*traced: kl_weight, "
                                        "optimizer.b1, optimizer.learning_rate, optimizer.weight_decay"):
    autoencoder_experiment.run(config, str(tmp_path / "w"), members=Members((0, 1), {"latent_dim": (4.0, 8.0)}))
  assert not (tmp_path / "w").exists()


def _sweep_command(workdir, *flags):
  return ["-m", "experiments.sweep", "--config=experiments/autoencoder.py:smoke", f"--workdir={workdir}", *flags]


@pytest.mark.slow
def test_command_line_sweep_writes_members_table_and_plot(tmp_path):
  proc = run_python(_sweep_command(tmp_path / "s", "--seeds=2", "--vary=kl_weight=0.5,1",
                                   "--vary=optimizer.learning_rate=1e-3,3e-3", "--max_members_per_program=4",
                                   "--metric=test_nll_nats"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads((tmp_path / "s" / "results.json").read_text())
  assert [(m["seed"], m["values"]) for m in out["members"]] == [
      (s, {"kl_weight": k, "optimizer.learning_rate": lr}) for k in (0.5, 1.0) for lr in (1e-3, 3e-3) for s in (0, 1)]
  assert sorted(os.listdir(tmp_path / "s" / "programs")) == ["0", "1"]  # 8 members, 4 per program
  # Each setting's mean and standard error are those of its two seeds.
  for row in out["settings"]:
    losses = [m["train_loss"] for m in out["members"] if m["values"] == row["values"]]
    mean, se = row["metrics"]["train_loss"]
    np.testing.assert_allclose(mean, np.mean(losses), rtol=1e-9)
    np.testing.assert_allclose(se, np.std(losses, ddof=1) / np.sqrt(2), rtol=1e-6)
  table = (tmp_path / "s" / "sweep.md").read_text()
  assert "| kl_weight | optimizer.learning_rate | train_loss | test_nll_nats" in table
  assert (tmp_path / "s" / "sweep.png").stat().st_size > 1000
  # A group of 4 members equals the same members trained in another grouping (here: one at a time).
  single = run_python(_sweep_command(tmp_path / "one", "--seeds=1", "--zip=kl_weight=0.5",
                                     "--zip=optimizer.learning_rate=3e-3"))
  assert single.returncode == 0, single.stderr[-3000:]
  alone = json.loads((tmp_path / "one" / "results.json").read_text())["members"][0]
  grouped = next(m for m in out["members"] if m["seed"] == 0 and m["values"] == alone["values"])
  np.testing.assert_allclose(alone["train_loss"], grouped["train_loss"], rtol=1e-6)


def test_an_untraced_field_is_one_line_exit_2(tmp_path):
  proc = run_python(_sweep_command(tmp_path / "w", "--vary=latent_dim=4,8"))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith("error: cannot vary latent_dim: it is not a traced hyperparameter")
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("flags,message", [
    ({"vary": ["latnet_dim=4,8"]}, "unknown config field 'latnet_dim'"),
    ({"vary": ["model=1,2"]}, "cannot vary model: it holds 'vae', not a number"),
    ({"seeds": "two"}, "--seeds must be a count or a comma-separated list of integers"),
    ({"zip": ["kl_weight=1,2", "optimizer.learning_rate=1e-3"]}, "--zip lists must have equal lengths"),
    ({"vary": ["kl_weight"]}, "--vary must be field=value1,value2,..."),
])
def test_bad_sweeps_are_refused_before_anything_runs(flags, message):
  from experiments import sweep  # pylint: disable=import-outside-toplevel
  config = autoencoder_experiment.get_config("smoke")
  with pytest.raises(ConfigError, match=re.escape(message)):
    sweep.parse_seeds(flags.get("seeds", "1"))
    sweep.settings_grid(sweep.parse_axes(flags.get("vary", []), config, "vary"),
                        sweep.parse_axes(flags.get("zip", []), config, "zip"))


def test_a_mistyped_metric_is_one_line_exit_2_before_training(tmp_path):
  proc = run_python(_sweep_command(tmp_path / "w", "--vary=kl_weight=0.5,1", "--metric=test_nll"))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith("error: --metric 'test_nll' is not a metric of autoencoder with this config; choose one "
                             "of: train_loss, test_nll_nats, nll_k, test_bits_per_dim, test_elbo_nats, fid, ")
  assert not (tmp_path / "w").exists()


def test_every_sweepable_experiment_declares_its_metrics_in_every_preset():
  from experiments import sweep  # pylint: disable=import-outside-toplevel
  directory = os.path.dirname(sweep.__file__)
  swept = []
  for name in sorted(os.listdir(directory)):
    try:
      module = sweep.experiment_module(os.path.join(directory, name))
    except ConfigError:
      continue  # not an experiment, or one that cannot be swept
    swept.append(name)
    for preset in ["", *getattr(module, "PRESETS", {})]:
      config = module.get_config(preset)
      names = module.metric_names(config)
      assert names and len(set(names)) == len(names) and "train_loss" not in names, (name, preset, names)
      sweep.check_metric(module, config, names[-1])
      with pytest.raises(ConfigError, match=re.escape(f"choose one of: train_loss, {', '.join(names)}")):
        sweep.check_metric(module, config, "no_such_metric")
  assert {"autoencoder.py", "gan.py", "diffusion.py", "gpt2.py", "bert.py", "ppo.py", "em_gmm.py"} <= set(swept)


def test_missing_config_is_one_line_exit_2(tmp_path):
  proc = run_python(["-m", "experiments.sweep", f"--workdir={tmp_path / 'w'}"])
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      "error: --config is required: --config=experiments/<name>.py[:preset]"]


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_same_members(tmp_path):
  flags = ["--seeds=2", "--vary=optimizer.learning_rate=1e-3,3e-3", "--config.steps=500",
           "--config.log_every=10", "--config.checkpoint_every=200", "--config.steps_per_call=5"]
  env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_FLAGS=FAST_COMPILE)
  reference = run_python(_sweep_command(tmp_path / "reference", *flags))
  assert reference.returncode == 0, reference.stderr[-3000:]
  workdir = tmp_path / "killed"
  proc = subprocess.Popen([sys.executable, *_sweep_command(workdir, *flags)], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for line in proc.stderr:  # wait until training is under way
    if line.startswith("step 20/"):
      break
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, err[-2000:]
  assert not (workdir / "results.json").exists()
  resumed = run_python(_sweep_command(workdir, *flags))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from step" in resumed.stderr
  ours = json.loads((workdir / "results.json").read_text())["members"]
  theirs = json.loads((tmp_path / "reference" / "results.json").read_text())["members"]
  assert [m["train_loss"] for m in ours] == [m["train_loss"] for m in theirs]


def test_gpt2_members_equal_their_single_runs(tmp_path):
  from experiments import gpt2 as gpt2_experiment  # pylint: disable=import-outside-toplevel
  config = gpt2_experiment.get_config("smoke")
  members = Members(seeds=(0, 1), hparams={"optimizer.learning_rate": (2e-3, 5e-3)})
  swept = gpt2_experiment.run(config, str(tmp_path / "sweep"), members=members)["members"]
  assert_declared_metrics(gpt2_experiment, config, swept)
  single = _single(gpt2_experiment, config, tmp_path / "one", seed=1, **{"optimizer.learning_rate": 5e-3})
  np.testing.assert_allclose(swept[1]["train_loss"], single["train_loss"], rtol=1e-5)
  np.testing.assert_allclose(swept[1]["val_loss"], single["val_loss"], rtol=1e-5)
  assert (tmp_path / "sweep" / "member_1" / "samples.txt").exists()


@pytest.mark.slow
def test_pure_evaluation_is_one_vmapped_program_equal_to_single_runs(tmp_path, monkeypatch):
  from experiments import classifier as classifier_experiment  # pylint: disable=import-outside-toplevel
  from research.tasks import classifier as classifier_tasks  # pylint: disable=import-outside-toplevel
  make_task = classifier_tasks.make_task
  traces = []

  def counting_task(config):
    task = make_task(config)
    assert task.evaluate_pure

    def evaluate(params, key, data, hparams):
      traces.append(jax.tree.leaves(params)[0].shape)  # runs when traced, not per call
      return task.evaluate(params, key, data, hparams)
    return dataclasses.replace(task, evaluate=evaluate)

  monkeypatch.setattr(classifier_tasks, "make_task", counting_task)
  config = classifier_experiment.get_config("smoke")
  config.eval_every = 20  # two evaluations: at step 20 and at the end
  members = Members(seeds=(0, 1, 1), hparams={"optimizer.learning_rate": (3e-3, 3e-3, 1e-2)})
  swept = classifier_experiment.run(config, str(tmp_path / "sweep"), members=members)["members"]
  assert_declared_metrics(classifier_experiment, config, swept)
  assert len(traces) == 1  # one compiled evaluation for every member and every evaluation step
  for i, member in enumerate(swept):
    single = _single(classifier_experiment, config, tmp_path / str(i), seed=member["seed"],
                     **{"optimizer.learning_rate": member["values"]["optimizer.learning_rate"]})
    np.testing.assert_allclose(member["train_loss"], single["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(member["test_loss"], single["test_loss"], rtol=1e-4)  # float32 batched sums
    assert member["test_accuracy"] == pytest.approx(single["test_accuracy"], abs=1e-6)
  assert len(traces) == 4  # each single run compiles its own (unbatched) evaluation once
  assert swept[1]["test_loss"] != pytest.approx(swept[2]["test_loss"], rel=1e-4)


def test_ema_decay_members_equal_their_single_runs(tmp_path):
  config = autoencoder_experiment.get_config("smoke")
  config.ema_decay = 0.9  # EMA on: the evaluation reads the EMA parameters
  members = Members(seeds=(4, 4), hparams={"ema_decay": (0.5, 0.9)})
  swept = autoencoder_experiment.run(config, str(tmp_path / "sweep"), members=members)["members"]
  for i, member in enumerate(swept):
    single = _single(autoencoder_experiment, config, tmp_path / str(i), seed=4, ema_decay=member["values"]["ema_decay"])
    np.testing.assert_allclose(member["train_loss"], single["train_loss"], rtol=1e-6)
    np.testing.assert_allclose(member["test_nll_nats"], single["test_nll_nats"], rtol=1e-5)
  # Training does not read the EMA, its evaluation does.
  assert swept[0]["train_loss"] == pytest.approx(swept[1]["train_loss"], rel=1e-6)
  assert swept[0]["test_nll_nats"] != pytest.approx(swept[1]["test_nll_nats"], rel=1e-4)
  config.ema_decay = 0.0
  with pytest.raises(ConfigError, match="cannot vary ema_decay"):
    autoencoder_experiment.run(config, str(tmp_path / "no_ema"), members=members)


@pytest.mark.slow
def test_diffusion_label_dropout_and_guidance_members_equal_their_single_runs(tmp_path):
  from experiments import diffusion as diffusion_experiment  # pylint: disable=import-outside-toplevel
  config = diffusion_experiment.get_config("smoke")
  # The training step reads the label dropout, the evaluation's sampler the guidance scale w.
  members = Members(seeds=(0, 3), hparams={"class_dropout": (0.1, 0.5), "guidance_scale": (1.0, 3.0)})
  swept = diffusion_experiment.run(config, str(tmp_path / "sweep"), members=members)["members"]
  assert_declared_metrics(diffusion_experiment, config, swept)
  single = _single(diffusion_experiment, config, tmp_path / "one", seed=3, class_dropout=0.5, guidance_scale=3.0)
  np.testing.assert_allclose(swept[1]["train_loss"], single["train_loss"], rtol=1e-5)
  # The members' samples come from one vmapped sampler program; scored as the single run's.
  samples = np.load(tmp_path / "sweep" / "member_1" / "samples.npz")["images"]
  assert samples.shape[0] == config.num_samples
  np.testing.assert_allclose(samples, np.load(tmp_path / "one" / "samples.npz")["images"], atol=1e-4)
  np.testing.assert_allclose(swept[1]["fid"], single["fid"], rtol=1e-3)
  assert swept[1]["class_shares"] == pytest.approx(single["class_shares"], abs=0.03)


@pytest.mark.parametrize("experiment,vary,message", [
    ("gpt2", "dropout=0,1.5", "the member dropout=1.5 is refused: dropout must be in [0, 1), got 1.5"),
    ("gpt2", "optimizer.learning_rate=1e-3,-1",
     "the member optimizer.learning_rate=-1 is refused: optimizer.learning_rate must be >= 0, got -1.0"),
    ("bert", "dropout=0,1", "the member dropout=1 is refused: dropout must be in [0, 1), got 1.0"),
    ("autoencoder", "kl_weight=1,-2", "the member kl_weight=-2 is refused"),
])
def test_each_member_gets_the_single_runs_checks(experiment, vary, message):
  from experiments import sweep  # pylint: disable=import-outside-toplevel
  module = sweep.experiment_module(os.path.join(os.path.dirname(sweep.__file__), f"{experiment}.py"))
  config = module.get_config("smoke")
  with pytest.raises(ConfigError, match=re.escape(message)):
    sweep.check_settings(module, config, sweep.settings_grid(sweep.parse_axes([vary], config, "vary"), {}))
