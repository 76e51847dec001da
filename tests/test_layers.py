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


@pytest.mark.parametrize("features,axis", [((4, 8), -1), (24, (-2, -1))])
def test_dense_general_is_flaxs_and_initialises_under_a_mesh(features, axis):
  """layers.DenseGeneral: flax's parameters, values and outputs, also when initialised under jax.set_mesh."""
  from research.train import parallel  # pylint: disable=import-outside-toplevel
  x = jax.random.normal(jax.random.key(1), (3, 5, 6, 4))
  names = ("embed", "heads", "head_dim")
  init = nn.with_logical_partitioning(nn.initializers.normal(0.5), names if axis == -1 else names[1:] + ("embed",))
  ours, theirs = (cls(features, axis=axis, kernel_init=init, bias_init=nn.initializers.normal(0.5))
                  for cls in (layers.DenseGeneral, nn.DenseGeneral))
  variables = theirs.init(jax.random.key(7), x)
  mine = ours.init(jax.random.key(7), x)
  assert jax.tree.structure(mine) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(nn.unbox(mine)), jax.tree.leaves(nn.unbox(variables))):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(ours.apply(variables, x), theirs.apply(variables, x))
  with jax.set_mesh(parallel.make_mesh()), nn.logical_axis_rules(parallel.RULES):
    boxed = jax.jit(ours.init)(jax.random.key(7), x)["params"]["kernel"]
  assert boxed.names == init(jax.random.key(0), (2, 2)).names
  np.testing.assert_array_equal(boxed.value, variables["params"]["kernel"].value)


class _Block(nn.Module):
  """x + tanh(x W) * scale; its output is its own input plus one, to check the per-layer plumbing."""

  @nn.compact
  def __call__(self, x, layer_input, *, scale):
    init = nn.with_logical_partitioning(nn.initializers.normal(0.5), ("embed", "mlp"))
    x = x + jnp.tanh(nn.Dense(x.shape[-1], kernel_init=init)(x)) * scale
    return x, None if layer_input is None else layer_input + 1


class _Stack(nn.Module):
  scan: bool
  remat: str

  @nn.compact
  def __call__(self, x, per_layer=None):
    return layers.blocks(_Block, 3, x, per_layer, name="block", scan=self.scan, remat=self.remat, scale=0.5)


def test_blocks_in_a_loop_or_a_scan_under_each_remat():
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  plain = _Stack(False, "none")
  params = nn.unbox(plain.init(jax.random.key(1), x))["params"]
  assert sorted(params) == ["block_0", "block_1", "block_2"]
  loss = lambda model, p: jnp.sum(jnp.sin(model.apply({"params": p}, x)[0]))
  value, grads = jax.value_and_grad(lambda p: loss(plain, p))(params)
  stacked = layers.stack_blocks(params, "block", 3)
  assert stacked["block"]["Dense_0"]["kernel"].shape == (3, 8, 8)
  for scan in (False, True):
    for remat in layers.REMATS:
      model = _Stack(scan, remat)
      p = stacked if scan else params
      init = jax.eval_shape(lambda model=model: nn.unbox(model.init(jax.random.key(1), x))["params"])
      assert jax.tree.structure(init) == jax.tree.structure(p)
      v, g = jax.value_and_grad(lambda p, model=model: loss(model, p))(p)
      g = layers.unstack_blocks(g, "block") if scan else g
      np.testing.assert_allclose(v, value, rtol=1e-6)
      for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Each block gets its own input: a list in the loop, a leading axis under scan.
  _, outs = plain.apply({"params": params}, x, [jnp.zeros(2) + i for i in range(3)])
  np.testing.assert_array_equal(np.stack(outs), [[1, 1], [2, 2], [3, 3]])
  _, outs = _Stack(True, "none").apply({"params": stacked}, x, jnp.arange(6.0).reshape(3, 2))
  np.testing.assert_array_equal(outs, [[1, 2], [3, 4], [5, 6]])
  # The scanned parameters' leading axis is named "layers".
  boxed = _Stack(True, "none").init(jax.random.key(1), x)["params"]["block"]["Dense_0"]["kernel"]
  assert boxed.names == ("layers", "embed", "mlp")


def test_stacking_round_trips_and_refuses_bad_input():
  params = {"h_0": {"w": jnp.ones(2)}, "h_1": {"w": jnp.zeros(2)}, "ln": {"b": jnp.ones(3)}}
  stacked = layers.stack_blocks(params, "h", 2)
  assert sorted(stacked) == ["h", "ln"]
  np.testing.assert_array_equal(stacked["h"]["w"], [[1, 1], [0, 0]])
  again = layers.unstack_blocks(stacked, "h")
  assert jax.tree.structure(again) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="cannot stack 3 blocks: h_2 is missing"):
    layers.stack_blocks(params, "h", 3)
  with pytest.raises(ValueError, match="no stacked blocks 'g' to unstack"):
    layers.unstack_blocks(stacked, "g")
  with pytest.raises(ValueError, match="unknown remat 'full'; choose one of: none, block, dots"):
    layers.check_stacking(False, "full")
  with pytest.raises(ValueError, match="scan_layers must be True or False"):
    layers.check_stacking("yes", "none")


def test_count_params_from_shapes():
  model = _Stack(False, "none")
  x = jax.ShapeDtypeStruct((2, 5, 8), jnp.float32)
  assert layers.count_params(model, x) == 3 * (8 * 8 + 8)
  assert layers.count_params(model, x, skip=("bias",)) == 3 * 8 * 8
  assert layers.count_params(_Stack(True, "block"), x) == 3 * (8 * 8 + 8)
