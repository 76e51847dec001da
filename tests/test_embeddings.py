"""Diffusion embeddings: the fixed 2-D sin-cos positions, the timestep features, label dropout."""

import jax
import jax.numpy as jnp
import numpy as np

from research.models import embeddings


def test_sincos_embedding_is_fixed_and_distinguishes_positions():
  emb = embeddings.sincos_2d(64, 4)
  assert emb.shape == (16, 64)
  np.testing.assert_allclose(emb[:, :16] ** 2 + emb[:, 16:32] ** 2, 1.0, rtol=1e-6)  # sin^2 + cos^2 per frequency
  gram = emb @ emb.T
  np.testing.assert_array_equal(np.argmax(gram, axis=1), np.arange(16))  # each position matches itself best


def test_timestep_features_are_cos_then_sin_of_geometric_frequencies():
  t = jnp.array([0.0, 1.0, 999.0])
  feats = embeddings.timestep_frequencies(t, dim=8)
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 4)
  np.testing.assert_allclose(feats, np.concatenate([np.cos(np.outer(t, freqs)), np.sin(np.outer(t, freqs))], 1),
                             rtol=1e-5, atol=1e-5)
  params = embeddings.TimestepEmbedder(16).init(jax.random.key(0), t)["params"]
  assert {k: v["kernel"].shape for k, v in params.items()} == {"fc1": (256, 16), "fc2": (16, 16)}


def test_label_dropout_rate_and_the_null_class():
  y = jnp.zeros((100_000,), jnp.int32)
  dropped = embeddings.drop_labels(jax.random.key(0), y, 0.1, 10)
  assert set(np.unique(dropped).tolist()) == {0, 10}
  np.testing.assert_allclose(float(jnp.mean(dropped == 10)), 0.1, atol=0.005)
  table = embeddings.LabelEmbedder(10, 8).init(jax.random.key(0), y[:2])["params"]["embedding_table"]["embedding"]
  assert table.shape == (11, 8)  # the null class has its own row
