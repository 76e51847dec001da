"""research.models.layers' dense layers: DenseParams creates DenseGeneral's parameters, and
dense_group's one product equals the separate projections."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import layers

# Query, key and value of a grouped-query layer: two runs of equal shapes, (4, 8) then (2, 8) x 2.
FEATURES = {"query": (4, 8), "key": (2, 8), "value": (2, 8)}


class _Separate(nn.Module):
  """flax's DenseGeneral layers, one per name."""

  use_bias: bool = True
  dtype: str | None = None

  @nn.compact
  def __call__(self, x):
    init = nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ("embed", "heads", "head_dim"))
    return [nn.DenseGeneral(f, name=n, kernel_init=init, use_bias=self.use_bias, dtype=self.dtype,
                            bias_init=nn.initializers.normal(0.5))(x) for n, f in FEATURES.items()]


class _Grouped(nn.Module):
  """The same projections through DenseParams and dense_group."""

  use_bias: bool = True
  dtype: str | None = None

  @nn.compact
  def __call__(self, x):
    init = nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ("embed", "heads", "head_dim"))
    params = [layers.DenseParams(f, name=n, kernel_init=init, use_bias=self.use_bias,
                                 bias_init=nn.initializers.normal(0.5))(x.shape[-1]) for n, f in FEATURES.items()]
    return layers.dense_group(x, params, dtype=self.dtype)


@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_params_are_dense_generals_and_the_group_equals_separate_layers(use_bias):
  x = jax.random.normal(jax.random.key(1), (3, 5, 24))
  separate, grouped = _Separate(use_bias), _Grouped(use_bias)
  variables = separate.init(jax.random.key(7), x)
  theirs = jax.tree_util.tree_flatten_with_path(nn.unbox(variables))[0]
  ours = jax.tree_util.tree_flatten_with_path(nn.unbox(grouped.init(jax.random.key(7), x)))[0]
  assert [jax.tree_util.keystr(p) for p, _ in ours] == [jax.tree_util.keystr(p) for p, _ in theirs]
  for (path, a), (_, b) in zip(ours, theirs):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))  # same initial values
  # The logical partitioning survives: the same axis names on the kernels.
  boxed = grouped.init(jax.random.key(7), x)["params"]["query"]["kernel"]
  assert isinstance(boxed, nn.Partitioned) and boxed.names == ("embed", "heads", "head_dim")

  outs = grouped.apply(variables, x)
  expected = separate.apply(variables, x)
  assert [o.shape for o in outs] == [(3, 5) + f for f in FEATURES.values()]
  for o, e in zip(outs, expected):
    np.testing.assert_allclose(o, e, rtol=1e-5, atol=1e-5)

  # Gradients with respect to the input and every parameter agree too.
  loss = lambda module: lambda v, x: sum(jnp.sum(jnp.sin(o)) for o in module.apply(v, x))
  g_ours = jax.grad(loss(grouped), argnums=(0, 1))(variables, x)
  g_theirs = jax.grad(loss(separate), argnums=(0, 1))(variables, x)
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_dense_group_promotes_to_the_compute_dtype():
  x = jax.random.normal(jax.random.key(1), (2, 24))
  variables = _Separate(dtype="bfloat16").init(jax.random.key(0), x)
  outs = _Grouped(dtype="bfloat16").apply(variables, x)
  expected = _Separate(dtype="bfloat16").apply(variables, x)
  for o, e in zip(outs, expected):
    assert o.dtype == e.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(o), np.float32(e), rtol=2e-2, atol=2e-2)
