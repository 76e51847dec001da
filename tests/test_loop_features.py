"""The loop's features for real models: any optax optimizer, accumulation, evaluation, samples,
interval averages, several steps per call, non-trained state, mixed precision, data sources."""

import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tiny_run
from trees import assert_trees_close, leaf_pairs
from research import data as data_lib
from research import optim
from research.models import autoencoder
from research.tasks import autoencoder as autoencoder_tasks
from research.train import ConfigError, NonFiniteLossError, Task, TrainState, base_config, init_state, make_train_step, train
from research.train.step import Keys


def _ae_config(steps, **overrides):
  config = base_config()
  config.model, config.latent_dim, config.hidden = "ae", 4, (32,)
  config.corruption, config.noise_level, config.objective, config.k, config.eval_k = "gaussian", 0.3, "elbo", 1, 4
  config.kl_weight = 1.0
  config.steps, config.batch_size, config.log_every, config.checkpoint_every = steps, 32, 5, 100
  for name, value in overrides.items():
    config[name] = value
  return config


def _events(workdir):
  """{tag: [(step, value)]} of the scalars in a workdir's TensorBoard events."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
  acc = event_accumulator.EventAccumulator(str(workdir), size_guidance={"tensors": 0, "scalars": 0})
  acc.Reload()
  out = {}
  for tag in acc.Tags()["tensors"]:
    values = [(e.step, _tensor_value(e)) for e in acc.Tensors(tag)]
    if all(np.ndim(v) == 0 for _, v in values):  # images are tensors too
      out[tag] = [(step, float(v)) for step, v in values]
  return out


def _tensor_value(event):
  from tensorboard.util import tensor_util  # pylint: disable=import-outside-toplevel
  return tensor_util.make_ndarray(event.tensor_proto)


def _classifier_task(tx, learning_rate=None):
  model = tiny_run.Classifier(16)

  def loss(params, batch, key, train, hparams):
    del key, train, hparams
    logits = model.apply(params, batch["image"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean(), {}

  return Task(init=lambda k, b: model.init(k, b["image"]), tx=tx, loss=loss, learning_rate=learning_rate)


@pytest.mark.parametrize("make_tx", [lambda: optax.adam(1e-3), lambda: optax.MultiSteps(optax.adam(1e-3), 2)],
                         ids=["adam", "multisteps"])
def test_any_optax_transformation_trains(tmp_path, digits_train, make_tx):
  config = tiny_run.make_config(20)
  run = train(_classifier_task(make_tx()), config, str(tmp_path), digits_train)
  assert run.results["step"] == 20 and np.isfinite(run.results["train_loss"])
  assert "learning_rate" not in _events(tmp_path)  # no rate function given: none logged, nothing guessed


def test_logged_learning_rate_comes_from_the_task(tmp_path, digits_train):
  config = tiny_run.make_config(20)  # warmup 5 steps, then cosine
  train(tiny_run.make_task(config), config, str(tmp_path), digits_train)
  logged = dict(_events(tmp_path)["learning_rate"])
  multiplier = optim.schedule(config.optimizer, config.steps)
  # Logged at step 10: the mean over the interval's updates 0..9 of peak * schedule(update).
  expected = np.mean([config.optimizer.learning_rate * float(multiplier(s)) for s in range(10)])
  np.testing.assert_allclose(logged[10], expected, rtol=1e-5)


def test_grad_accum_gives_the_same_update(tmp_path, digits_train):
  """A deterministic model (the plain AE): 4 microbatches and 1 give the same parameters."""
  runs = {}
  for k in (1, 4):
    config = _ae_config(5, grad_accum=k)
    task = autoencoder_tasks.make_task(config, digits_train["image"][:32])
    runs[k] = train(task, config, str(tmp_path / f"k{k}"), {"image": digits_train["image"]},
                    {"image": digits_train["image"][:64]})
  assert_trees_close(runs[4].state.params, runs[1].state.params, atol=1e-6)
  np.testing.assert_allclose(runs[4].results["train_loss"], runs[1].results["train_loss"], rtol=1e-6)
  # And it did train: the parameters moved.
  init = init_state(autoencoder_tasks.make_task(_ae_config(5), digits_train["image"][:32]), Keys.from_seed(0).init,
                    {"image": digits_train["image"][:32]}, 0.0).params
  assert max(float(jnp.max(jnp.abs(a - b))) for a, b in leaf_pairs(init, runs[1].state.params)) > 1e-3


def test_train_loss_and_logged_scalars_are_interval_means(tmp_path, digits_train):
  config = tiny_run.make_config(10)
  config.log_every = 5
  task = tiny_run.make_task(config)
  run = train(task, config, str(tmp_path / "run"), digits_train)
  # The same steps by hand.
  batcher = data_lib.Batcher(digits_train, config.batch_size, config.seed)
  keys = Keys.from_seed(config.seed)
  state = init_state(task, keys.init, batcher(0), config.ema_decay)
  step = jax.jit(make_train_step(task, config.ema_decay))
  losses = []
  for s in range(10):
    state, metrics = step(state, batcher(s), jax.random.fold_in(keys.train, s))
    losses.append(float(metrics["loss"]))
  np.testing.assert_allclose(run.results["train_loss"], np.mean(losses[5:]), rtol=1e-6)
  logged = dict(_events(tmp_path / "run")["loss"])
  np.testing.assert_allclose([logged[5], logged[10]], [np.mean(losses[:5]), np.mean(losses[5:])], rtol=1e-6)
  assert abs(np.mean(losses[5:]) - losses[-1]) > 1e-6  # a last-step value would fail this test


def test_periodic_evaluation_and_samples_of_every_kind(tmp_path, digits_train):
  seen = []

  def evaluate(params, key, data, hparams):
    assert hparams == {}  # a task without traced hyperparameters gets none
    seen.append(len(data["label"]))
    return {"eval_value": float(jnp.sum(params["params"]["Dense_1"]["bias"])), "count": len(data["label"])}

  def sample(params, key, hparams):
    del params, hparams
    return {"samples": jax.random.uniform(key, (6, 8, 8, 1)), "points": jnp.ones((5, 2)),
            "text": ["first sample", "second"]}

  config = tiny_run.make_config(12)
  config.eval_every, config.sample_every, config.log_every, config.checkpoint_every = 4, 6, 4, 4
  base = tiny_run.make_task(config)
  task = Task(init=base.init, tx=base.tx, loss=base.loss, evaluate=evaluate, sample=sample)
  run = train(task, config, str(tmp_path), digits_train, {"label": np.arange(7)})
  assert seen == [7, 7, 7]  # steps 4, 8, 12 (the last is also the final evaluation)
  evals = _events(tmp_path)
  assert [s for s, _ in evals["eval/eval_value"]] == [4, 8, 12]
  assert not any(tag.startswith("eval/step") or tag.startswith("eval/steps_per") for tag in evals)
  np.testing.assert_allclose(run.results["eval_value"], evals["eval/eval_value"][-1][1], rtol=1e-6)
  images = np.load(tmp_path / "samples.npz")["images"]
  assert images.shape == (6, 8, 8, 1) and images.dtype == np.float32 and 0 <= images.min() and images.max() <= 1
  np.testing.assert_array_equal(np.load(tmp_path / "points.npz")["points"], np.ones((5, 2)))
  text = (tmp_path / "text.txt").read_text()
  assert "first sample" in text and "second" in text
  assert (tmp_path / "samples.png").stat().st_size > 0 and (tmp_path / "points.png").stat().st_size > 0
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
  acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
  acc.Reload()
  assert [e.step for e in acc.Tensors("samples")] == [6, 12]  # the image grid, every sample_every steps


def test_a_failing_sample_does_not_cost_the_results(tmp_path, digits_train, capfd):
  config = tiny_run.make_config(10)
  base = tiny_run.make_task(config)
  task = Task(init=base.init, tx=base.tx, loss=base.loss,
              sample=lambda p, k, h: {"bad": jnp.zeros((3, 3, 3))})  # neither images, points nor text
  run = train(task, config, str(tmp_path), digits_train)
  assert json.loads((tmp_path / "results.json").read_text())["step"] == 10 == run.results["step"]
  assert "could not write samples" in capfd.readouterr().err


def test_non_finite_check_covers_every_metric(tmp_path, digits_train):
  """A finite loss with a NaN elsewhere (a GAN's generator loss) still stops the run."""
  config = tiny_run.make_config(20)
  base = tiny_run.make_task(config)

  def loss(params, batch, key, train, hparams):
    value, metrics = base.loss(params, batch, key, train, hparams)
    return value, {**metrics, "gen_loss": jnp.where(jnp.max(batch["label"]) >= 0, jnp.nan, 0.0)}

  task = Task(init=base.init, tx=base.tx, loss=loss)
  with pytest.raises(NonFiniteLossError, match=r"non-finite gen_loss \(nan\) at step 1;"):
    train(task, config, str(tmp_path), digits_train)


@pytest.mark.parametrize("k", [4, 7])
def test_steps_per_call_matches_one_step_per_call(tmp_path, digits_train, k):
  ref_config = tiny_run.make_config(30)
  ref = train(tiny_run.make_task(ref_config), ref_config, str(tmp_path / "one"), digits_train)
  config = tiny_run.make_config(30)
  config.steps_per_call = k
  run = train(tiny_run.make_task(config), config, str(tmp_path / f"k{k}"), digits_train)
  assert_trees_close(run.state.params, ref.state.params, atol=2e-6)
  np.testing.assert_allclose(run.results["train_loss"], ref.results["train_loss"], rtol=1e-5)
  # Logging and checkpoints stay exact to the step (every 10 steps, whatever k).
  assert sorted(int(p.name) for p in (tmp_path / f"k{k}" / "checkpoints").iterdir() if p.name.isdigit()) == \
      [10, 20, 30]
  assert [s for s, _ in _events(tmp_path / f"k{k}")["loss"]] == [10, 20, 30]


def test_steps_per_call_non_finite_stop_names_the_exact_step(tmp_path, digits_train):
  config = tiny_run.make_config(40)
  config.steps_per_call = 8
  poisoned = dict(digits_train, scale=np.ones(len(digits_train["label"]), np.float32))
  batcher = data_lib.Batcher(poisoned, config.batch_size, config.seed)
  victim = int(batcher.indices(13)[0])
  first_use = next(s for s in range(40) if victim in set(batcher.indices(s).tolist()))
  poisoned["scale"][victim] = np.nan
  with pytest.raises(NonFiniteLossError, match=f"at step {first_use + 1};"):
    train(tiny_run.make_task(config), config, str(tmp_path), poisoned)


def test_extra_state_is_carried_and_checkpointed(tmp_path, digits_train):
  config = tiny_run.make_config(10)
  config.optimizer.schedule = "constant"  # so the run may be extended: the schedule does not depend on steps
  base = tiny_run.make_task(config)
  default = make_train_step(base, 0.0)

  def train_step(state: TrainState, batch, key):
    new_state, metrics = default(state, batch, key)
    return new_state.replace(extra={"seen": state.extra["seen"] + batch["label"].shape[0]}), metrics

  task = Task(init=base.init, tx=base.tx, train_step=train_step,
              init_extra=lambda k, b: {"seen": jnp.zeros((), jnp.int32)})
  run = train(task, config, str(tmp_path), digits_train)
  assert int(run.state.extra["seen"]) == 10 * config.batch_size
  config.steps = 15
  resumed = train(task, config, str(tmp_path), digits_train)
  assert int(resumed.state.extra["seen"]) == 15 * config.batch_size


def test_bfloat16_computes_in_bf16_and_keeps_float32_state(tmp_path, digits_train):
  runs = {}
  for dtype in ("float32", "bfloat16"):
    config = _ae_config(20, dtype=dtype)
    task = autoencoder_tasks.make_task(config, digits_train["image"][:32])
    runs[dtype] = train(task, config, str(tmp_path / dtype), {"image": digits_train["image"]},
                        {"image": digits_train["image"][:64]})
  state = runs["bfloat16"].state
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
  assert {x.dtype for x in jax.tree.leaves(state.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)} == \
      {jnp.dtype("float32")}
  lo, hi = runs["bfloat16"].results["train_loss"], runs["float32"].results["train_loss"]
  assert lo != hi and abs(lo - hi) < 0.02 * abs(hi)  # bf16 rounding, not another model
  # The compiled step really multiplies in bf16.
  model = autoencoder.Autoencoder(autoencoder.AutoencoderConfig(model="ae", latent_dim=4, hidden=(32,),
                                                                dtype="bfloat16"))
  hlo = jax.jit(model.apply).lower(state.params, jnp.zeros((2, 8, 8, 1))).as_text()
  assert "bf16" in hlo


def test_record_source_and_arrays_feed_the_same_batches(tmp_path, digits_train):
  source = data_lib.source("digits", "train")
  arrays = data_lib.Batcher(digits_train, 16, seed=3)
  records = data_lib.Batcher(source, 16, seed=3)
  for step in (0, 5, 200):
    for name in ("image", "label"):
      np.testing.assert_array_equal(records(step)[name], arrays(step)[name])
  config = tiny_run.make_config(10)
  a = train(tiny_run.make_task(config), config, str(tmp_path / "a"), digits_train)
  b = train(tiny_run.make_task(config), config, str(tmp_path / "b"), source)
  assert_trees_close(a.state.params, b.state.params, atol=0)


def test_prefetch_depth_does_not_change_the_run(tmp_path, digits_train):
  runs = []
  for depth in (0, 3):
    config = tiny_run.make_config(15)
    config.prefetch = depth
    runs.append(train(tiny_run.make_task(config), config, str(tmp_path / str(depth)), digits_train))
  assert_trees_close(runs[0].state.params, runs[1].state.params, atol=0)


def test_token_windows_are_windows_of_the_stream_deterministic_in_seed_and_step():
  stream = np.arange(1000, dtype=np.int32)
  windows = data_lib.TokenWindows(stream, seq_len=16)
  assert len(windows) == 1000 - 16
  batcher = data_lib.Batcher(windows, 8, seed=1)
  batch = batcher(3)["tokens"]
  assert batch.shape == (8, 17)
  np.testing.assert_array_equal(batch - batch[:, :1], np.broadcast_to(np.arange(17), (8, 17)))
  np.testing.assert_array_equal(data_lib.Batcher(windows, 8, seed=1)(3)["tokens"], batch)
  assert not np.array_equal(data_lib.Batcher(windows, 8, seed=2)(3)["tokens"], batch)
  assert not np.array_equal(batcher(4)["tokens"], batch)
  starts = np.concatenate([batcher(s)["tokens"][:, 0] for s in range(200)])
  assert starts.min() >= 0 and starts.max() <= 1000 - 17 and starts.max() > 900  # the whole stream is used
  docs = data_lib.TokenWindows([np.array([1, 2, 3]), np.array([4, 5])], seq_len=4, separator=0)
  np.testing.assert_array_equal(docs.stream, [1, 2, 3, 0, 4, 5])
  with pytest.raises(ValueError, match="fewer than seq_len"):
    data_lib.TokenWindows(np.arange(5), seq_len=8)


def test_steps_zero_writes_null_not_nan(tmp_path, digits_train):
  config = tiny_run.make_config(0)
  train(tiny_run.make_task(config), config, str(tmp_path), digits_train)
  text = (tmp_path / "results.json").read_text()
  assert "NaN" not in text and json.loads(text)["train_loss"] is None


def test_one_step_run_labels_its_checkpoint_with_its_step(tmp_path, digits_train):
  config = tiny_run.make_config(1)
  train(tiny_run.make_task(config), config, str(tmp_path), digits_train)
  assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()] == ["1"]


def test_workdir_that_is_a_file_is_refused(tmp_path, digits_train):
  from research.train import ConfigError  # pylint: disable=import-outside-toplevel
  path = tmp_path / "file"
  path.write_text("x")
  config = tiny_run.make_config(5)
  with pytest.raises(ConfigError, match="is a file, not a directory"):
    train(tiny_run.make_task(config), config, str(path), digits_train)


def test_flops_are_reported(tmp_path, digits_train):
  config = tiny_run.make_config(12)
  run = train(tiny_run.make_task(config), config, str(tmp_path), digits_train)
  # Forward and backward of the 64-32-10 MLP on 32 images: about 3 x 2 x 32 x (64*32 + 32*10) FLOPs.
  assert 0.5 * 3 * 2 * 32 * (64 * 32 + 32 * 10) < run.results["flops_per_step"] < 4 * 3 * 2 * 32 * (64 * 32 + 320)
  np.testing.assert_allclose(run.results["flops_per_second"],
                             run.results["flops_per_step"] * run.results["steps_per_second"], rtol=1e-9)
  assert "mfu" not in run.results  # no known peak for a CPU


def test_weight_decay_mask_skips_vectors_and_embeddings():
  params = {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}, "LayerNorm_0": {"scale": jnp.ones(4)},
            "Embed_0": {"embedding": jnp.ones((10, 4))}}
  mask = optim.decay_mask(params)
  assert mask == {"Dense_0": {"kernel": True, "bias": False}, "LayerNorm_0": {"scale": False},
                  "Embed_0": {"embedding": False}}
  assert optim.decay_mask(params, decay_embeddings=True)["Embed_0"]["embedding"] is True
  config = optim.default_config()
  config.name, config.learning_rate, config.weight_decay = "adamw", 0.1, 0.5
  tx = optim.make(config, 10)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  # With zero gradients the update is the decay alone: -lr * wd * p on kernels, nothing elsewhere.
  np.testing.assert_allclose(updates["Dense_0"]["kernel"], -0.05 * np.ones((3, 4)), rtol=1e-6)
  for leaf in (updates["Dense_0"]["bias"], updates["LayerNorm_0"]["scale"], updates["Embed_0"]["embedding"]):
    np.testing.assert_array_equal(leaf, 0.0)


def test_logical_names_and_fsdp_rule_on_one_device():
  """On one device every sharding is trivial; the rules still resolve (names -> mesh axes)."""
  from research.train import parallel  # pylint: disable=import-outside-toplevel
  import tiny_transformer  # pylint: disable=import-outside-toplevel
  config = base_config()
  task = tiny_transformer.make_task(config)
  batch = {"image": np.zeros((2, 8, 8, 1), np.uint8)}
  boxed = jax.eval_shape(task.init, jax.random.key(0), batch)
  assert isinstance(boxed["params"]["Block_0"]["fc"]["kernel"], nn.Partitioned)
  shardings = parallel.param_shardings(boxed, parallel.make_mesh(config.mesh))
  spec = shardings["params"]["Block_0"]["fc"]["kernel"].spec
  assert tuple(spec) == ("fsdp", "tensor")


def test_a_resume_that_changes_training_is_refused_and_a_finished_rerun_does_nothing(tmp_path, digits_train, capsys):
  config = tiny_run.make_config(10)
  task = tiny_run.make_task(config)
  first = train(task, config, str(tmp_path), digits_train)
  results = (tmp_path / "results.json").read_text()
  capsys.readouterr()
  # The training curves beside the events: every logged step's scalars, drawn.
  logged = [json.loads(line) for line in (tmp_path / "scalars.jsonl").read_text().splitlines()]
  assert [row["step"] for row in logged if "loss" in row] == [10]
  assert (tmp_path / "curves.png").stat().st_size > 1000

  # The same command again: nothing trained, evaluated or written; the stored results come back.
  again = train(task, config, str(tmp_path), digits_train)
  assert "already holds this run, finished at step 10: nothing to do" in capsys.readouterr().err
  assert (tmp_path / "results.json").read_text() == results
  assert again.results["train_loss"] == first.results["train_loss"]

  # What training reads may not change (the weight decay; the steps under a decaying schedule) ...
  for field, value, shown in (("optimizer.weight_decay", 0.5, "optimizer.weight_decay 0.0001 (now 0.5)"),
                              ("steps", 20, "steps 10 (now 20)")):
    changed = tiny_run.make_config(10)
    if "." in field:
      changed.optimizer[field.split(".")[1]] = value
    else:
      changed[field] = value
    with pytest.raises(ConfigError, match=re.escape(f"holds a run trained with other settings: {shown}")):
      train(tiny_run.make_task(changed), changed, str(tmp_path), digits_train)
  assert (tmp_path / "results.json").read_text() == results
  # ... what only shapes how the run is carried out may (checkpoints, logging, the mesh).
  carried = tiny_run.make_config(10)
  carried.log_every, carried.checkpoint_every, carried.keep_checkpoints = 5, 5, 2
  train(tiny_run.make_task(carried), carried, str(tmp_path), digits_train)
  assert "nothing to do" in capsys.readouterr().err


def test_a_reconstruction_grid_says_what_its_rows_are(tmp_path, monkeypatch):
  from research.train import images  # pylint: disable=import-outside-toplevel
  titles = []
  monkeypatch.setattr(images, "save_png", lambda path, array, title=None: titles.append(title) or path)
  images.write_samples(str(tmp_path), {"reconstructions": np.zeros((4, 8, 8, 1)), "samples": np.zeros((4, 8, 8, 1))},
                       step=7)
  assert titles == ["reconstructions (step 7)\nrows: test images, then their reconstructions\n"
                    "(denoising AE: clean, corrupted, denoised)", "samples (step 7)"]
