"""The contract of research.models.layers.blocks for a model: every scan_layers x remat setting
computes the plain model's loss and gradients from the same (restacked) parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import layers


def _restacked(params, where: tuple, name: str, count: int | None):
  """params with the blocks at params[where...] stacked (count given) or unstacked (count None)."""
  if not where:
    return layers.stack_blocks(params, name, count) if count else layers.unstack_blocks(params, name)
  return {**params, where[0]: _restacked(params[where[0]], where[1:], name, count)}


SETTINGS = tuple((scan, remat) for scan in (False, True) for remat in layers.REMATS)


def check_scan_and_remat(build, inputs, loss, *, name: str, count: int, where: tuple = (), atol: float = 1e-5,
                         settings=SETTINGS):
  """Asserts that `build(scan_layers, remat)` gives `build(False, "none")`'s loss and gradients for each setting.

  Args:
    build: (scan_layers, remat) -> the model.
    inputs: the arguments of the model's init after the key.
    loss: (model, params) -> a scalar.
    name: the blocks' name ("h" for h_0, h_1, ...).
    count: the number of blocks.
    where: the keys of the subtree of params that holds the blocks.
    atol: the absolute tolerance of values and gradients (both also to a relative 1e-6, float32's rounding
      over a few blocks of sums).
    settings: the (scan_layers, remat) pairs checked (default: all).
  """
  plain = build(False, "none")
  rng = np.random.default_rng(0)
  # Weights moved off their initial values (zero-initialised layers too), so that every layer matters.
  params = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape, np.float32),
                        nn.unbox(jax.jit(plain.init)(jax.random.key(0), *inputs))["params"])
  value, grads = jax.jit(jax.value_and_grad(lambda p: loss(plain, p)))(params)
  assert all(float(jnp.max(jnp.abs(x))) > 0 for x in jax.tree.leaves(grads))  # every parameter matters
  for scan, remat in settings:
    model = build(scan, remat)
    ours = _restacked(params, where, name, count) if scan else params
    expected = jax.eval_shape(lambda model=model: nn.unbox(model.init(jax.random.key(0), *inputs))["params"])
    assert jax.tree.structure(expected) == jax.tree.structure(ours), (scan, remat)
    assert [x.shape for x in jax.tree.leaves(expected)] == [x.shape for x in jax.tree.leaves(ours)]
    v, g = jax.jit(jax.value_and_grad(lambda p, model=model: loss(model, p)))(ours)
    if scan:
      g = _restacked(g, where, name, None)
    np.testing.assert_allclose(v, value, rtol=1e-6, atol=atol, err_msg=f"scan_layers={scan}, remat={remat}")
    assert jax.tree.structure(g) == jax.tree.structure(grads)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(g)[0], jax.tree.leaves(grads)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=atol, err_msg=f"scan_layers={scan}, remat={remat}: "
                                 f"{jax.tree_util.keystr(path)}")
