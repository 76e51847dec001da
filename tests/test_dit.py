"""DiT: the paper's sizes and Gflops from shapes alone, adaLN-Zero's identity at init, the variants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
  np.testing.assert_array_equal(block.apply({"params": params}, h, c, None), h)
  # With the modulation moved off zero the block is no longer the identity.
  moved = jax.tree.map(lambda p: p + 0.1, params)
  assert float(jnp.max(jnp.abs(block.apply({"params": moved}, h, c, None) - h))) > 1e-3


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


def test_sincos_embedding_is_fixed_and_distinguishes_positions():
  emb = dit.sincos_2d(64, 4)
  assert emb.shape == (16, 64)
  np.testing.assert_allclose(emb[:, :16] ** 2 + emb[:, 16:32] ** 2, 1.0, rtol=1e-6)  # sin^2 + cos^2 per frequency
  gram = emb @ emb.T
  np.testing.assert_array_equal(np.argmax(gram, axis=1), np.arange(16))  # each position matches itself best
  cfg = dit.config("DiT-T/2", input_size=8, in_channels=1, num_classes=10)
  _, variables, *_ = _init(cfg)
  assert "pos_embed" not in str(jax.tree_util.tree_structure(variables))  # not a parameter


def test_label_dropout_rate_and_bad_configs():
  y = jnp.zeros((100_000,), jnp.int32)
  dropped = dit.drop_labels(jax.random.key(0), y, 0.1, 10)
  assert set(np.unique(dropped).tolist()) == {0, 10}
  np.testing.assert_allclose(float(jnp.mean(dropped == 10)), 0.1, atol=0.005)
  with pytest.raises(ValueError, match="unknown DiT 'DiT-Q/2'"):
    dit.config("DiT-Q/2")
  with pytest.raises(ValueError, match="patch size 4 does not divide the input size 10"):
    dit.config("DiT-T/4", input_size=10)
  with pytest.raises(ValueError, match="unknown conditioning"):
    dit.config("DiT-T/2", conditioning="film")
