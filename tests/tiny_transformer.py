"""A small pre-LayerNorm transformer block stack with logical axis names, for the sharding tests.

Its parameters name their axes (embed, heads, head_dim, mlp, vocab), so the loop's rules
shard them over fsdp and tensor; the model is a next-token predictor on digit rows.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from research import optim
from research.train import Task

VOCAB = 17  # pixel intensities 0..16 of the 8x8 digits


def _dense(features, axes, name, dtype):
  return nn.DenseGeneral(features, axis=-1, name=name, dtype=dtype,
                         kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), axes))


class Block(nn.Module):
  embed: int
  heads: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    head_dim = self.embed // self.heads
    h = nn.LayerNorm(dtype=self.dtype, scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(x)
    qkv = nn.DenseGeneral((3, self.heads, head_dim), dtype=self.dtype, name="qkv",
                          kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                   ("embed", None, "heads", "head_dim")))(h)
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]  # (batch, time, heads, head_dim)
    mask = jnp.tril(jnp.ones((x.shape[1], x.shape[1]), bool))
    att = jax.nn.dot_product_attention(q, k, v, mask=mask[None, None])
    x = x + nn.DenseGeneral(self.embed, axis=(-2, -1), dtype=self.dtype, name="out",
                            kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                     ("heads", "head_dim", "embed")))(att)
    h = nn.LayerNorm(dtype=self.dtype)(x)
    h = nn.gelu(_dense(4 * self.embed, ("embed", "mlp"), "fc", self.dtype)(h))
    return x + _dense(self.embed, ("mlp", "embed"), "proj", self.dtype)(h)


class TinyTransformer(nn.Module):
  embed: int = 32
  heads: int = 4
  layers: int = 2
  dtype: str = "float32"

  @nn.compact
  def __call__(self, tokens):
    emb = nn.Embed(VOCAB, self.embed, embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                                  ("vocab", "embed")))
    pos = self.param("pos", nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
                     (64, self.embed))
    x = emb(tokens) + pos[:tokens.shape[1]]
    for _ in range(self.layers):
      x = Block(self.embed, self.heads, self.dtype)(x)
    return emb.attend(nn.LayerNorm(dtype=self.dtype)(x)).astype(jnp.float32)  # (batch, time, vocab)


def tokens_of(batch):
  return jnp.round(batch["image"].reshape(batch["image"].shape[0], -1).astype(jnp.float32) * 16 / 255).astype(
      jnp.int32)


def make_task(config) -> Task:
  model = TinyTransformer(dtype=config.dtype)

  def loss(params, batch, key, train, hparams):
    del key, train, hparams
    tokens = tokens_of(batch)
    logits = model.apply(params, tokens[:, :-1])
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1)), {}

  return Task(init=lambda k, b: model.init(k, tokens_of(b)[:, :-1]), tx=optim.make(config.optimizer, config.steps),
              loss=loss, learning_rate=optim.learning_rate_fn(config.optimizer, config.steps))
