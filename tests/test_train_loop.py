"""The training loop: resume to the same bits, checkpoint fallback, NaN stop, devices, results."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import tiny_run
from conftest import ROOT, run_python
from trees import assert_trees_equal, leaf_pairs
from research import data as data_lib
from research.train import ConfigError, NonFiniteLossError, train


def _stored_state(workdir, step):
  return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))


def _assert_same_bits(stored, state):
  """Compares a stored state (nested dicts) with a TrainState, field by field, bit for bit."""
  state = jax.device_get(state)
  state = {"step": state.step, "params": state.params, "ema_params": state.ema_params,
           "opt_state": jax.tree.leaves(state.opt_state)}
  stored = dict(stored, opt_state=jax.tree.leaves(stored["opt_state"]))
  for field in ("step", "params", "ema_params", "opt_state"):
    assert_trees_equal(stored[field], state[field], err_msg=field)


def _train_tiny(workdir, steps, data, **overrides):
  config = tiny_run.make_config(steps)
  for name, value in overrides.items():
    config[name] = value
  return train(tiny_run.make_task(config), config, str(workdir), data)


def test_sigkill_and_restart_gives_bit_identical_params(tmp_path, digits_train):
  steps = 80
  reference = _train_tiny(tmp_path / "reference", steps, digits_train)

  workdir = tmp_path / "killed"
  command = [sys.executable, os.path.join(ROOT, "tests", "tiny_run.py"), str(workdir), str(steps)]
  proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  # Kill once a few checkpoints exist, at a moment the test does not choose.
  while not (workdir / "checkpoints" / "30").exists():
    assert proc.poll() is None, "the run ended before it could be killed"
    assert time.time() < deadline
    time.sleep(0.05)
  time.sleep(np.random.default_rng().uniform(0.0, 0.5))
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (workdir / "results.json").exists(), "the run finished before the kill; nothing was tested"

  kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  resumed = run_python(["tests/tiny_run.py", str(workdir), str(steps)])
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  # It resumed from the newest complete checkpoint and trained only the remaining steps.
  assert f"resuming from step {kept[-1]} of" in resumed.stderr
  if kept[-1] < steps:  # the kill may land after the last checkpoint, before results.json
    assert f"trained steps {kept[-1]}..{steps} at" in resumed.stderr
  _assert_same_bits(_stored_state(workdir, steps), reference.state)
  assert json.loads((workdir / "results.json").read_text())["train_loss"] == reference.results["train_loss"]


def test_a_run_killed_after_its_final_checkpoint_reports_the_same_results(tmp_path, digits_train):
  workdir = tmp_path / "run"
  first = _train_tiny(workdir, 40, digits_train)
  assert first.results["train_loss"] is not None
  # As a kill between the final checkpoint and results.json leaves it: run the command again.
  (workdir / "results.json").unlink()
  again = _train_tiny(workdir, 40, digits_train)
  assert again.results["train_loss"] == first.results["train_loss"]
  assert json.loads((workdir / "results.json").read_text())["train_loss"] == first.results["train_loss"]


def test_unreadable_latest_checkpoint_falls_back_to_previous(tmp_path, digits_train):
  reference = _train_tiny(tmp_path / "reference", 40, digits_train)
  workdir = tmp_path / "run"
  _train_tiny(workdir, 40, digits_train)
  # Truncate every file of the newest checkpoint's state, as a crash mid-copy would.
  for root, _, files in os.walk(workdir / "checkpoints" / "40" / "state"):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(max(0, os.path.getsize(f.name) // 3))
  (workdir / "results.json").unlink()

  resumed = _train_tiny(workdir, 40, digits_train)
  assert (workdir / "checkpoints_unreadable" / "40").is_dir()
  _assert_same_bits(_stored_state(workdir, 40), reference.state)
  assert_trees_equal(resumed.state, reference.state)


def test_no_readable_checkpoint_refuses_to_start_over(tmp_path, digits_train):
  workdir = tmp_path / "run"
  _train_tiny(workdir, 20, digits_train, keep_checkpoints=1)
  for root, _, files in os.walk(workdir / "checkpoints" / "20" / "state"):
    for name in files:
      open(os.path.join(root, name), "wb").close()
  with pytest.raises(RuntimeError, match="refusing to start from scratch"):
    _train_tiny(workdir, 20, digits_train, keep_checkpoints=1)


def test_non_finite_loss_names_the_step_and_keeps_last_checkpoint(tmp_path, digits_train):
  config = tiny_run.make_config(60)
  poisoned = dict(digits_train, scale=np.ones(len(digits_train["label"]), np.float32))
  batcher = data_lib.Batcher(poisoned, config.batch_size, config.seed)
  # Poison one example seen for the first time after step 25 (the step numbers of the
  # loop's messages count completed updates, so batch index s is step s + 1).
  seen_early = set(np.concatenate([batcher.indices(s) for s in range(25)]).tolist())
  bad_step = next(s for s in range(25, 60) if set(batcher.indices(s).tolist()) - seen_early)
  victim = sorted(set(batcher.indices(bad_step).tolist()) - seen_early)[0]
  first_use = next(s for s in range(60) if victim in set(batcher.indices(s).tolist()))
  poisoned["scale"][victim] = np.nan

  workdir = tmp_path / "nan"
  with pytest.raises(NonFiniteLossError, match=f"at step {first_use + 1};") as error:
    train(tiny_run.make_task(config), config, str(workdir), poisoned)
  last_good = (first_use + 1) // config.checkpoint_every * config.checkpoint_every
  assert f"last good checkpoint is step {last_good}" in str(error.value)
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert saved and saved[-1] == last_good
  state = _stored_state(workdir, last_good)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))
  assert not (workdir / "results.json").exists()


def test_one_and_four_simulated_devices_give_the_same_loss(tmp_path):
  losses = {}
  for n in (1, 4):
    proc = run_python(["tests/tiny_run.py", str(tmp_path / f"d{n}"), "20"],
                      env={"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == n
    losses[n] = out["train_loss"]
  np.testing.assert_allclose(losses[4], losses[1], rtol=1e-5)


def test_results_json_logs_and_keep_last_n(tmp_path, digits_train):
  run = _train_tiny(tmp_path, 50, digits_train, keep_checkpoints=2)
  results = json.loads((tmp_path / "results.json").read_text())
  assert results == run.results
  assert results["step"] == 50 and np.isfinite(results["train_loss"])
  assert results["config"]["steps"] == 50
  assert set(results["versions"]) == {"jax", "flax", "optax"}
  assert results["devices"]["count"] == jax.device_count() and results["wall_time_s"] > 0
  assert "final_bias_sum" in results  # the task's evaluate metrics
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["40", "50"]
  assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())


def test_ema_tracks_params(tmp_path, digits_train):
  run = _train_tiny(tmp_path, 20, digits_train)
  ema, params = run.state.ema_params, run.state.params
  # After 20 steps with decay 0.9 the EMA lags the params but stays close to them.
  diffs = [float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in leaf_pairs(ema, params)]
  assert 0 < max(diffs) < 0.1


def test_ema_decay_warms_up():
  from research.train.step import ema_warmup  # pylint: disable=import-outside-toplevel
  steps = np.arange(3000)
  decays = np.asarray(ema_warmup(0.999, steps))
  assert decays[0] == pytest.approx(0.1) and decays[90] == pytest.approx(0.91)
  np.testing.assert_allclose(decays, np.minimum(0.999, (1 + steps) / (10 + steps)), rtol=1e-6)
  # The share of the initial (random) parameters left in the EMA after 3000 updates: 5% with a fixed
  # decay of 0.999, none with the warm-up.
  assert np.prod(np.full(3000, 0.999)) > 0.04
  assert np.prod(decays.astype(np.float64)) < 1e-15
  assert float(ema_warmup(0.9, 1000)) == pytest.approx(0.9)  # the configured decay once reached


def test_completed_run_restarted_does_no_more_steps(tmp_path, digits_train):
  # A run that trained again from its checkpoint, or from scratch, would end in the same state:
  # count the steps the devices execute, and the checkpoints and logged losses written.
  config = tiny_run.make_config(20)
  base, executed = tiny_run.make_task(config), []

  def loss(params, batch, key, train, hparams):
    jax.debug.callback(lambda: executed.append(1))  # runs each time a compiled step runs
    return base.loss(params, batch, key, train, hparams)

  task = dataclasses.replace(base, loss=loss)
  first = train(task, config, str(tmp_path), digits_train)
  assert len(executed) == 20
  checkpoints = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").iterdir()}
  losses = _logged_losses(tmp_path)
  again = train(task, config, str(tmp_path), digits_train)
  assert len(executed) == 20, f"the restarted run trained {len(executed) - 20} steps"
  assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").iterdir()} == checkpoints
  assert _logged_losses(tmp_path) == losses == [10, 20]
  assert_trees_equal(first.state, again.state)
  assert again.results["train_loss"] == first.results["train_loss"]


def _logged_losses(workdir) -> list[int]:
  """The steps at which the training loss was logged, over every TensorBoard events file of the workdir."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
  steps = []
  for path in sorted(workdir.glob("events.out.tfevents*")):
    events = event_accumulator.EventAccumulator(str(path), size_guidance={"tensors": 0})
    events.Reload()
    steps += [e.step for e in events.Tensors("loss")] if "loss" in events.Tags()["tensors"] else []
  return steps


@pytest.mark.parametrize("field,value,message", [
    ("batch_size", 0, "batch_size must be > 0"),
    ("batch_size", -4, "batch_size must be > 0"),
    ("steps", -1, "steps must be >= 0"),
    ("grad_accum", 3, "batch_size 32 is not divisible by grad_accum 3"),
    ("dtype", "float16", "unknown dtype 'float16'"),
    ("eval_every", -1, "eval_every must be >= 0"),
    ("steps_per_call", 0, "steps_per_call must be > 0"),
])
def test_bad_config_fails_before_writing(tmp_path, digits_train, field, value, message):
  config = tiny_run.make_config(10)
  config[field] = value
  with pytest.raises(ConfigError, match=message):
    train(tiny_run.make_task(config), config, str(tmp_path / "w"), digits_train)
  assert not (tmp_path / "w").exists()


def test_negative_learning_rate_fails_before_writing(tmp_path, digits_train):
  config = tiny_run.make_config(10)
  config.optimizer.learning_rate = -1e-3
  with pytest.raises(ConfigError, match="optimizer.learning_rate must be >= 0"):
    task = tiny_run.make_task(config)
    train(task, config, str(tmp_path / "w"), digits_train)
  assert not (tmp_path / "w").exists()


def test_checkpoint_with_other_shapes_is_refused(tmp_path, digits_train):
  config = tiny_run.make_config(10)
  train(tiny_run.make_task(config, hidden=32), config, str(tmp_path), digits_train)
  with pytest.raises(ConfigError, match="does not match this config"):
    train(tiny_run.make_task(config, hidden=16), config, str(tmp_path), digits_train)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["10"]


def test_batch_not_divisible_by_device_count_is_refused(tmp_path):
  proc = run_python(["tests/tiny_run.py", str(tmp_path / "w"), "5", "--batch=30"],
                    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  assert proc.returncode != 0
  assert "batch_size 30 is not divisible by the device count 4" in proc.stderr
  assert not (tmp_path / "w").exists()


def test_two_processes_match_one_process(tmp_path, digits_train):
  """Two JAX processes (one CPU device each, gloo collectives) train like one process."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = []
  for i in range(2):
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i), PYTHONUNBUFFERED="1")
    procs.append(subprocess.Popen([sys.executable, "tests/tiny_run.py", str(tmp_path / "mp"), "20"], cwd=ROOT,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
  assert all(r["processes"] == 2 and r["devices"] == 2 for r in results)
  single = _train_tiny(tmp_path / "single", 20, digits_train)
  np.testing.assert_allclose(results[0]["train_loss"], single.results["train_loss"], rtol=1e-5)
  assert results[1]["train_loss"] == results[0]["train_loss"]


def test_checkpoint_written_before_a_state_field_existed_restores(tmp_path):
  # A state saved without TrainState.hparams (as checkpoints were before the field) restores
  # into a state whose hparams is None, rather than being set aside as unreadable.
  from typing import Any  # pylint: disable=import-outside-toplevel
  import flax  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from research.train import Checkpointer, TrainState  # pylint: disable=import-outside-toplevel

  @flax.struct.dataclass
  class EarlierState:
    step: Any
    params: Any
    opt_state: Any
    ema_params: Any = None
    extra: Any = None

  earlier = EarlierState(step=jnp.int32(7), params={"w": jnp.arange(3.0)}, opt_state=(jnp.ones(3),))
  saver = Checkpointer(str(tmp_path), keep=2)
  saver.save(7, earlier, {"step": 7}, ml_collections.ConfigDict({"seed": 0}))
  saver.close()
  now = TrainState(step=jnp.int32(0), params={"w": jnp.zeros(3)}, opt_state=(jnp.zeros(3),))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), now)
  state, position = Checkpointer(str(tmp_path), keep=2).restore(abstract)
  assert isinstance(state, TrainState) and state.hparams is None and position == {"step": 7}
  np.testing.assert_array_equal(state.params["w"], [0.0, 1.0, 2.0])
  assert int(state.step) == 7 and not (tmp_path / "checkpoints_unreadable").exists()


def test_only_native_completions_into_a_closed_event_loop_are_silenced():
  """After a failed save, tensorstore's in-flight writes call into orbax's closed loop: dropped, nothing else."""
  import asyncio  # pylint: disable=import-outside-toplevel
  import types  # pylint: disable=import-outside-toplevel
  from research.train import checkpoint  # pylint: disable=import-outside-toplevel
  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(print)
  except RuntimeError as e:
    from_python = e
  # As native code sees it: the traceback starts in call_soon_threadsafe, with no Python caller.
  from_native = from_python.__traceback__.tb_next
  seen = []
  quiet = checkpoint._without_late_callbacks(seen.append)  # pylint: disable=protected-access

  def unraisable(exc, tb):
    return types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=tb, err_msg=None, object=None)

  quiet(unraisable(from_python, from_native))
  assert seen == []
  for exc, tb in [(from_python, from_python.__traceback__), (RuntimeError("disk on fire"), from_native),
                  (ValueError("Event loop is closed"), from_native)]:
    quiet(unraisable(exc, tb))
  assert len(seen) == 3
  assert sys.unraisablehook.__qualname__.startswith("_without_late_callbacks")
