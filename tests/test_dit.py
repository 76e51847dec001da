"""DiT: the paper's sizes and Gflops from shapes alone, adaLN-Zero's identity at init, the variants,
the blocks scanned and rematerialised."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stacking
from research.models import dit

# Peebles & Xie, Table 4: forward Gflops at 256x256 (a 32x32x4 latent), 1000 classes.
PAPER_GFLOPS = {"DiT-S/2": 6.06, "DiT-B/2": 23.01, "DiT-L/2": 80.71, "DiT-XL/2": 118.64}


def test_dit_xl2_has_the_papers_675m_parameters():
  cfg = dit.config("DiT-XL/2", input_size=32, in_channels=4, num_classes=1000, learn_sigma=True)
  assert 674e6 < dit.count_params(cfg) < 676e6


@pytest.mark.parametrize("name", ["DiT-S/2", "DiT-B/2"])
def test_forward_gflops_match_the_paper(name):
  cfg = dit.config(name, input_size=32, in_channels=4, num_classes=1000, learn_sigma=True)
  # XLA counts 2 FLOPs per multiply-add; the paper counts multiply-adds.
  np.testing.assert_allclose(dit.forward_flops(cfg) / 2e9, PAPER_GFLOPS[name], rtol=0.01)


def test_gflops_scale_with_patch_size_as_tokens():
  small = [dit.forward_flops(dit.config(f"DiT-T/{p}", 16, 1, 10, False)) for p in (1, 2, 4)]
  assert small[0] > 3 * small[1] > 9 * small[2]  # 4x fewer tokens per doubling of p


def _init(cfg, n=3, seed=0):
  x = jax.random.normal(jax.random.key(seed), (n, cfg.input_size, cfg.input_size, cfg.in_channels))
  t = jnp.arange(n) * 100
  y = jnp.arange(n) % max(cfg.num_classes, 1)
  model = dit.DiT(cfg)
  return model, model.init(jax.random.key(1), x, t, y), x, t, y


def test_adaln_zero_blocks_are_the_identity_and_the_output_is_zero_at_init():
  cfg = dit.config("DiT-T/2", input_size=8, in_channels=1, num_classes=10, learn_sigma=True)
  model, variables, x, t, y = _init(cfg)
  out = model.apply(variables, x, t, y)
  assert out.shape == (3, 8, 8, 2)  # learn_sigma: 2C channels
  np.testing.assert_array_equal(out, 0.0)  # the zero-initialised final layer
  block = dit.DiTBlock(cfg)
  h = jax.random.normal(jax.random.key(2), (3, 16, cfg.hidden_size))
  c = jax.random.normal(jax.random.key(3), (3, cfg.hidden_size))
  params = variables["params"]["blocks_0"]
  apply = lambda params: block.apply({"params": params}, h, c=c, cond_tokens=None)[0]
  np.testing.assert_array_equal(apply(params), h)
  # With the modulation moved off zero the block is no longer the identity.
  moved = jax.tree.map(lambda p: p + 0.1, params)
  assert float(jnp.max(jnp.abs(apply(moved) - h))) > 1e-3


@pytest.mark.parametrize("conditioning", dit.CONDITIONINGS)
def test_every_conditioning_runs_and_depends_on_the_label(conditioning):
  cfg = dit.config("DiT-T/2", input_size=8, in_channels=1, num_classes=10, learn_sigma=False,
                   conditioning=conditioning)
  model, variables, x, t, y = _init(cfg)
  # Perturb the zero-initialised layers so the output depends on its inputs.
  variables = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(7), p.shape), variables)
  out = model.apply(variables, x, t, y)
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
  other = model.apply(variables, x, t, (y + 1) % 10)
  assert float(jnp.max(jnp.abs(out - other))) > 1e-4
  null = model.apply(variables, x, t, jnp.full_like(y, 10))  # the null class is a valid label
  assert bool(jnp.all(jnp.isfinite(null)))


def test_sincos_position_embedding_is_not_a_parameter():
  cfg = dit.config("DiT-T/2", input_size=8, in_channels=1, num_classes=10)
  _, variables, *_ = _init(cfg)
  assert "pos_embed" not in str(jax.tree_util.tree_structure(variables))


def test_bad_configs():
  with pytest.raises(ValueError, match="unknown DiT 'DiT-Q/2'"):
    dit.config("DiT-Q/2")
  with pytest.raises(ValueError, match="patch size 4 does not divide the input size 10"):
    dit.config("DiT-T/4", input_size=10)
  with pytest.raises(ValueError, match="unknown conditioning"):
    dit.config("DiT-T/2", conditioning="film")
  with pytest.raises(ValueError, match="unknown attention 'fast'"):
    dit.config("DiT-T/2", attention="fast")
  with pytest.raises(ValueError, match="unknown remat 'all'"):
    dit.config("DiT-T/2", remat="all")


@pytest.mark.parametrize("conditioning", dit.CONDITIONINGS)
def test_scanned_and_rematerialised_blocks_equal_the_loop(conditioning):
  """scan_layers x remat: the same loss and gradients from the same (restacked) parameters (every setting for
  adaLN-Zero and cross-attention; the scanned, dots-rematerialised blocks for the other two)."""
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
  t, y = jnp.array([3, 500, 999]), jnp.array([1, 2, 10])
  build = lambda scan, remat: dit.DiT(dit.config("DiT-T/4", input_size=8, in_channels=1, num_classes=10,
                                                 learn_sigma=False, conditioning=conditioning, depth=3,
                                                 scan_layers=scan, remat=remat))
  loss = lambda model, p: jnp.sum(jnp.sin(model.apply({"params": p}, x, t, y)))
  settings = stacking.SETTINGS if conditioning in ("adaln_zero", "cross_attention") else ((True, "dots"),)
  stacking.check_scan_and_remat(build, (x, t, y), loss, name="blocks", count=3, settings=settings)


def test_attention_is_the_shared_module_in_the_layout_of_earlier_checkpoints():
  """Query, key and value kernels (width, heads, head_dim) and the output under the block's attn (and cross_attn)."""
  cfg = dit.config("DiT-T/2", input_size=8, in_channels=1, num_classes=10, conditioning="cross_attention")
  _, variables, *_ = _init(cfg)
  block = nn.unbox(variables)["params"]["blocks_0"]
  for name in ("attn", "cross_attn"):
    assert {k: {n: w.shape for n, w in v.items()} for k, v in block[name].items()} == {
        "query": {"kernel": (64, 4, 16), "bias": (4, 16)}, "key": {"kernel": (64, 4, 16), "bias": (4, 16)},
        "value": {"kernel": (64, 4, 16), "bias": (4, 16)}, "out": {"kernel": (4, 16, 64), "bias": (64,)}}
  assert cfg.attention == "auto"
  x, t, y = jnp.ones((2, 8, 8, 1)), jnp.array([1, 2]), jnp.array([3, 4])
  moved = jax.tree.map(lambda p: p + 0.05, nn.unbox(variables))
  np.testing.assert_array_equal(dit.DiT(cfg).apply(moved, x, t, y),  # auto is the dense kernel on CPU
                                dit.DiT(dataclasses.replace(cfg, attention="dense")).apply(moved, x, t, y))


def test_text_context_through_cross_attention_starts_unheard_and_is_heard_once_trained():
  """context_dim: the cross-attention variant over [t_emb, the context's tokens]; the zero-initialised
  cross-attention output makes the fresh blocks ignore the condition tokens, which they hear once it moves."""
  cfg = dit.config("DiT-T/2", input_size=8, in_channels=4, num_classes=0, learn_sigma=False,
                   conditioning="cross_attention", context_dim=20, depth=2)
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 4))
  t = jnp.array([3, 500, 999])
  context = jax.random.normal(jax.random.key(1), (3, 5, 20))  # (N, L, context_dim), e.g. text encoder states
  other = jax.random.normal(jax.random.key(2), (3, 5, 20))
  model = dit.DiT(cfg)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(3), x, t, context))["params"]

  @jax.jit
  def run(params, t, context):  # the output, and the gradient of a loss at the first block's cross-attention output
    def loss(p):
      out = model.apply({"params": p}, x, t, context)
      return jnp.sum(jnp.sin(out)), out
    grads, out = jax.grad(loss, has_aux=True)(params)
    return out, grads["blocks_0"]["cross_attn"]["out"]["kernel"]

  apply = lambda p, t, c: run(p, t, c)[0]
  assert "y_embedder" not in params and params["context_embedder"]["kernel"].shape == (20, 64)
  out = apply(params, t, context)
  assert out.shape == (3, 8, 8, 4)
  np.testing.assert_array_equal(out, 0.0)  # the zero-initialised final layer
  for i in range(cfg.depth):
    for leaf in jax.tree.leaves(params[f"blocks_{i}"]["cross_attn"]["out"]):
      np.testing.assert_array_equal(leaf, 0.0)
  # With only the final layer moved off zero, the output ignores the context (and t, which shares the
  # cross-attention), but the cross-attention's output projection gets a gradient: it can learn to listen.
  final = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(4), p.shape), params["final_layer"])
  trained_last = {**params, "final_layer": final}
  out, grad = run(trained_last, t, context)
  np.testing.assert_array_equal(out, apply(trained_last, t, other))
  np.testing.assert_array_equal(out, apply(trained_last, t[::-1], context))
  assert float(jnp.max(jnp.abs(grad))) > 1e-6
  # Every weight moved: the output depends on the context, on each example's own, and on t.
  moved = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(5), p.shape), params)
  base = apply(moved, t, context)
  assert float(jnp.max(jnp.abs(base - apply(moved, t, other)))) > 1e-3
  assert float(jnp.max(jnp.abs(base - apply(moved, t[::-1], context)))) > 1e-3
  half = apply(moved, t, context.at[1:].set(other[1:]))
  np.testing.assert_allclose(half[0], base[0], atol=1e-6)
  assert float(jnp.max(jnp.abs(half[1:] - base[1:]))) > 1e-3


def test_text_context_bad_input():
  with pytest.raises(ValueError, match="set conditioning='cross_attention' and num_classes=0"):
    dit.config("DiT-T/2", num_classes=0, context_dim=20)  # adaLN-Zero
  with pytest.raises(ValueError, match="set conditioning='cross_attention' and num_classes=0"):
    dit.config("DiT-T/2", num_classes=10, conditioning="cross_attention", context_dim=20)
  with pytest.raises(ValueError, match="context_dim must be a non-negative integer"):
    dit.config("DiT-T/2", num_classes=0, conditioning="cross_attention", context_dim=-1)
  cfg = dit.config("DiT-T/2", input_size=8, in_channels=1, num_classes=0, conditioning="cross_attention",
                   context_dim=20)
  x, t = jnp.zeros((2, 8, 8, 1)), jnp.array([1, 2])
  for y, shape in [(jnp.array([1, 2]), r"\(2,\)"), (jnp.zeros((2, 5, 19)), r"\(2, 5, 19\)"), (None, "None")]:
    with pytest.raises(ValueError, match=rf"expected a context of shape \(2, L, 20\), got {shape}"):
      jax.eval_shape(lambda: dit.DiT(cfg).init(jax.random.key(0), x, t, y))
  without = dataclasses.replace(cfg, context_dim=0)
  assert dit.count_params(cfg) == dit.count_params(without) + 20 * 64 + 64  # the context embedder
