"""The small DDPM U-Net: shapes, zero-initialised output, conditioning on time and class, dropout."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import unet


@functools.lru_cache
def _setup(num_classes=10, dropout=0.0):
  cfg = unet.UNetConfig(channels=(16, 32), groups=4, attention_heads=2, num_classes=num_classes, dropout=dropout)
  model = _Jitted(unet.UNet(cfg))
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
  t, y = jnp.array([0, 500, 999]), jnp.array([1, 2, 10])  # 10: the null class
  return model, model.init(jax.random.key(1), x, t, y), x, t, y


def _perturbed(variables):
  """Every parameter plus N(0, 0.02^2) noise (the zero-initialised layers too), drawn by numpy."""
  rng = np.random.default_rng(5)
  return jax.tree.map(lambda p: p + 0.02 * rng.standard_normal(p.shape, np.float32), variables)


class _Jitted:
  """The model's init and apply, each compiled once per input shape (op by op, the file took 90 s)."""

  def __init__(self, model):
    self.init = jax.jit(model.init)
    self.apply = jax.jit(model.apply, static_argnames="train")


def test_output_shape_and_zero_init_output():
  model, variables, x, t, y = _setup()
  out = model.apply(variables, x, t, y)
  assert out.shape == (3, 8, 8, 1)
  np.testing.assert_array_equal(out, 0.0)  # zero-initialised last conv: the first prediction is 0


def test_prediction_depends_on_time_class_and_pixels():
  model, variables, x, t, y = _setup()
  variables = _perturbed(variables)
  base = model.apply(variables, x, t, y)
  for changed in (model.apply(variables, x, t + 1, y), model.apply(variables, x, t, (y + 1) % 11),
                  model.apply(variables, x.at[:, 0, 0].add(1.0), t, y)):
    assert float(jnp.max(jnp.abs(changed - base))) > 1e-5
  # Examples do not interact (GroupNorm normalises per example).
  np.testing.assert_allclose(model.apply(variables, x[:1], t[:1], y[:1]), base[:1], rtol=1e-5, atol=1e-6)


def test_unconditional_model_has_no_class_embedding_and_dropout_is_train_only():
  model, variables, x, t, _ = _setup(num_classes=0, dropout=0.5)
  assert "class_embedding" not in variables["params"]
  variables = _perturbed(variables)
  a = model.apply(variables, x, t)
  np.testing.assert_array_equal(a, model.apply(variables, x, t))
  noisy = model.apply(variables, x, t, train=True, rngs={"dropout": jax.random.key(3)})
  assert float(jnp.max(jnp.abs(noisy - a))) > 1e-6


def test_attention_keeps_the_layout_of_earlier_checkpoints_and_any_kernel_agrees():
  """The shared attention in its fused layout: SelfAttention_0 holds GroupNorm_0, the (ch, 3, heads, d) kernel
  DenseGeneral_0 and the output DenseGeneral_1, as before; "auto" (dense on CPU) agrees with the reference."""
  model, variables, x, t, y = _setup()
  block = jax.tree.map(lambda p: p.shape, nn.unbox(variables)["params"]["SelfAttention_0"])
  assert block == {"GroupNorm_0": {"scale": (32,), "bias": (32,)},
                   "DenseGeneral_0": {"kernel": (32, 3, 2, 16), "bias": (3, 2, 16)},
                   "DenseGeneral_1": {"kernel": (2, 16, 32), "bias": (32,)}}
  variables = _perturbed(variables)
  cfg = unet.UNetConfig(channels=(16, 32), groups=4, attention_heads=2, num_classes=10, attention="auto")
  auto = _Jitted(unet.UNet(cfg)).apply(variables, x, t, y)
  reference = model.apply(variables, x, t, y)
  np.testing.assert_allclose(auto, reference, atol=1e-6)
  assert float(jnp.std(reference)) > 1e-3


def test_attention_levels_attend_after_each_of_their_blocks_in_the_encoder_and_decoder():
  """Level 0 of two, one block per level: one attention in the encoder, two in the decoder, and the middle's."""
  x, t = jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,))

  def params(levels):
    cfg = unet.UNetConfig(channels=(16, 32), groups=4, attention_heads=2, attention_levels=levels)
    return nn.unbox(jax.eval_shape(unet.UNet(cfg).init, jax.random.key(0), x, t))["params"]

  plain, attending = params(()), params((0,))
  assert sorted(k for k in attending if k.startswith("SelfAttention")) == [f"SelfAttention_{i}" for i in range(4)]
  width = lambda tree: {k: v.shape[-1] for k, v in tree["GroupNorm_0"].items()}
  assert [width(attending[f"SelfAttention_{i}"])["scale"] for i in range(4)] == [16, 32, 16, 16]
  count = lambda tree: sum(np.prod(p.shape) for p in jax.tree.leaves(tree))
  one = 2 * 16 + (16 * 3 * 16 + 3 * 16) + (16 * 16 + 16)  # GroupNorm, fused qkv, output at 16 channels
  assert count(attending) - count(plain) == 3 * one
  with pytest.raises(ValueError, match=r"attention_levels \(2,\) must be levels of channels \(16, 32\)"):
    params((2,))
