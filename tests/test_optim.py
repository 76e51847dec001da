"""The optimizer factory against optax's own optimizers and the AdamW paper's update rules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import optim
from research.train import ConfigError


def _params():
  return {"w": jnp.array([[0.5, -1.0], [2.0, 0.1]]), "b": jnp.array([0.3, -0.2])}


def _grads(t):
  return {"w": jnp.array([[0.1, -0.2], [0.05, 0.3]]) * (1 + t), "b": jnp.array([-0.4, 0.2]) / (1 + t)}


def _run(tx, steps=5):
  params = _params()
  state = tx.init(params)
  for t in range(steps):
    updates, state = tx.update(_grads(t), state, params)
    params = optax.apply_updates(params, updates)
  return params


def _config(**fields):
  config = optim.default_config()
  for name, value in fields.items():
    config[name] = value
  return config


@pytest.mark.parametrize("fields,reference", [
    (dict(name="adam", learning_rate=0.01), optax.adam(0.01)),
    # Decay on kernels only (rank >= 2), as optim.decay_mask says.
    (dict(name="adamw", learning_rate=0.01, weight_decay=0.1),
     optax.adamw(0.01, weight_decay=0.1, mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p))),
    (dict(name="sgd", learning_rate=0.1, b1=0.9), optax.sgd(0.1, momentum=0.9)),
    (dict(name="sgd", learning_rate=0.1, b1=0.9, nesterov=True), optax.sgd(0.1, momentum=0.9, nesterov=True)),
    (dict(name="rmsprop", learning_rate=0.01, b2=0.9, eps=1e-6), optax.rmsprop(0.01, decay=0.9, eps=1e-6)),
])
def test_matches_optax(fields, reference):
  ours = _run(optim.make(_config(**fields), total_steps=5))
  theirs = _run(reference)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_adam_l2_couples_the_decay_into_the_moments():
  lr, wd = 0.01, 0.1
  ours = _run(optim.make(_config(name="adam_l2", learning_rate=lr, weight_decay=wd), total_steps=5))
  # Coupled L2 (the form AdamW argues against): Adam on g + wd * theta.
  params = _params()
  tx = optax.adam(lr)
  state = tx.init(params)
  for t in range(5):
    grads = jax.tree.map(lambda g, p: g + wd * p * (p.ndim >= 2), _grads(t), params)  # kernels only
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  adamw = _run(optim.make(_config(name="adamw", learning_rate=lr, weight_decay=wd), total_steps=5))
  assert not np.allclose(adamw["w"], ours["w"])  # the kernel, which both decay
  np.testing.assert_allclose(adamw["b"], ours["b"], rtol=1e-6)  # the bias, which neither decays


def test_warmup_cosine_schedule_and_injected_learning_rate():
  config = _config(schedule="warmup_cosine", warmup_steps=10, final_lr_fraction=0.1, learning_rate=2.0)
  multiplier = optim.schedule(config, total_steps=110)
  np.testing.assert_allclose([float(multiplier(s)) for s in (0, 5, 10, 60, 110)],
                             [0.0, 0.5, 1.0, 0.1 + 0.9 * 0.5, 0.1], atol=1e-6)
  tx = optim.make(config, total_steps=110)
  state = tx.init(_params())
  assert float(optim.hyperparams(state)["learning_rate"]) == 2.0
  swept = optim.with_hyperparams(state, {"learning_rate": 0.5})
  assert float(optim.hyperparams(swept)["learning_rate"]) == 0.5
  with pytest.raises(ValueError, match="cannot sweep"):
    optim.with_hyperparams(state, {"momentum": 0.5})


def test_gradient_clipping_bounds_the_first_sgd_step():
  config = _config(name="sgd", learning_rate=1.0, b1=0.0, grad_clip_norm=0.1)
  tx = optim.make(config, total_steps=1)
  params = _params()
  updates, _ = tx.update(_grads(0), tx.init(params), params)
  np.testing.assert_allclose(float(optax.tree.norm(updates)), 0.1, rtol=1e-5)


def test_vmapped_learning_rates_in_one_program():
  tx = optim.make(_config(name="sgd", b1=0.0), total_steps=1)
  params = _params()

  def one(lr):
    state = optim.with_hyperparams(tx.init(params), {"learning_rate": lr})
    updates, _ = tx.update(_grads(0), state, params)
    return updates["b"]

  out = jax.jit(jax.vmap(one))(jnp.array([0.1, 1.0]))
  np.testing.assert_allclose(out[1], 10 * out[0], rtol=1e-6)
  np.testing.assert_allclose(out[1], -_grads(0)["b"], rtol=1e-6)


@pytest.mark.parametrize("fields,message", [
    (dict(name="adagrad"), "unknown optimizer.name 'adagrad'"),
    (dict(learning_rate=-0.1), "optimizer.learning_rate must be >= 0"),
    (dict(b1=1.0), r"optimizer.b1 must be in \[0, 1\)"),
    (dict(schedule="linear"), "unknown optimizer.schedule"),
])
def test_bad_optimizer_config(fields, message):
  with pytest.raises(ConfigError, match=message):
    optim.make(_config(**fields), total_steps=10)


def _paper_run(name, lr, wd, b1, steps, multiplier):
  """Loshchilov & Hutter's Algorithms 1 (SGDW, momentum without dampening) and 2 (AdamW), written directly."""
  params = {k: np.asarray(v, np.float64) for k, v in _params().items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in params.items()}
  b2, eps = 0.999, 1e-8
  for t in range(steps):
    eta = multiplier(t)
    for k, p in params.items():
      g = np.asarray(_grads(t)[k], np.float64)
      decay = wd * p * (p.ndim >= 2)  # kernels only
      if name == "sgdw":
        m[k] = b1 * m[k] + g
        params[k] = p - eta * (lr * m[k] + decay)
      else:
        m[k] = b1 * m[k] + (1 - b1) * g
        v[k] = b2 * v[k] + (1 - b2) * g * g
        m_hat, v_hat = m[k] / (1 - b1 ** (t + 1)), v[k] / (1 - b2 ** (t + 1))
        params[k] = p - eta * (lr * m_hat / (np.sqrt(v_hat) + eps) + decay)
  return params


@pytest.mark.parametrize("name", ["adamw_paper", "sgdw"])
def test_paper_forms_scale_the_decay_by_the_schedule_only(name):
  config = _config(name=name, learning_rate=0.02, weight_decay=0.3, b1=0.9, schedule="warmup_cosine",
                   warmup_steps=2, final_lr_fraction=0.1)
  multiplier = optim.schedule(config, 8)
  ours = _run(optim.make(config, total_steps=8), steps=8)
  theirs = _paper_run(name, 0.02, 0.3, 0.9, 8, lambda t: float(multiplier(t)))
  for key in ours:
    np.testing.assert_allclose(ours[key], theirs[key], rtol=2e-5, atol=1e-7)
  # The decay does not scale with the learning rate: with a zero rate only the decay acts,
  # shrinking kernels by (1 - η_t λ) each step, and leaving biases alone.
  config.learning_rate = 0.0
  frozen = _run(optim.make(config, total_steps=8), steps=8)
  shrink = np.prod([1 - float(multiplier(t)) * 0.3 for t in range(8)])
  np.testing.assert_allclose(frozen["w"], _params()["w"] * shrink, rtol=1e-5)
  np.testing.assert_allclose(frozen["b"], _params()["b"], rtol=1e-7)


def test_sgd_l2_adds_the_decay_to_the_gradient():
  ours = _run(optim.make(_config(name="sgd_l2", learning_rate=0.1, b1=0.9, weight_decay=0.05), total_steps=5))
  params = _params()
  tx = optax.sgd(0.1, momentum=0.9)
  state = tx.init(params)
  for t in range(5):
    grads = jax.tree.map(lambda g, p: g + 0.05 * p * (p.ndim >= 2), _grads(t), params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
