"""CLIP (Radford et al. 2021) and SigLIP's sigmoid loss (Zhai et al. 2023): contrastive image-text models.

    model = clip.CLIP(clip.CLIPConfig(image_size=32, patch_size=4, vocab_size=64))
    logits_per_image, logits_per_text = model.apply({"params": params}, pixel_values, input_ids, attention_mask)
    # pixel_values (B, H, W, 3) float NHWC; input_ids (B', L) int; attention_mask (B', L) 1 / 0
    states = model.apply({"params": params}, input_ids, attention_mask, method=model.text_states)  # (B', L, D)
    model, params = clip.load_hf(path)              # a directory transformers' CLIPModel saved
    clip.save_hf(model, params, path)               # one that CLIPModel.from_pretrained loads
    params = clip.from_hf(path); clip.to_hf(params, path)   # the same, the config read off the shapes
    metrics = clip.evaluate(model, params, images, caption_ids, caption_mask, prompt_ids, prompt_mask,
                            {"colour": clip.ZeroShot(labels, prompt_labels)})   # jittable, vmappable
    scores = clip.clip_score(model, params, images, caption_ids, caption_mask)  # (N,) 100 x cosine

Top-down, as transformers' CLIPModel lays it out (the parameter names follow it):
  (1) the image tower, a ViT: p x p patches through a bias-free convolution, a learned class
      token in front, learned position embeddings, a LayerNorm ("pre_layrnorm"), pre-LN
      Transformer blocks, the class token's state through "post_layernorm";
  (2) the text tower, GPT-2-like: token and learned position embeddings, causal pre-LN blocks
      (padding keys masked), a final LayerNorm; the state at the end-of-text token is pooled;
  (3) bias-free projections of both pooled states to one width, L2-normalised; the logits are
      their cosine similarities times exp(t), t a learned log-temperature (initially log(1/0.07))
      whose exp is clamped at 100, as in CLIP's training code (transformers' CLIPModel does not
      clamp: the two agree wherever exp(t) <= 100).
Blocks use the shared attention (research/models/attention.py) with CLIP's quick GELU MLP.

Losses (numbered as in the papers):
  (1) `contrastive_loss`: the symmetric InfoNCE of CLIP: cross-entropy of each image against
      the batch's texts and of each text against the images, averaged;
  (2) `sigmoid_loss`: SigLIP's pairwise binary loss, -1/B sum_ij log sigmoid(z_ij (t x_i.y_j + b)),
      z_ij = 1 on the diagonal and -1 off it, with a learned bias b (initially -10) and t
      (initially log 10); the config's `loss` picks it.
`evaluate` is zero-shot classification with prompt ensembles and image<->text recall@k in one
pure function; `clip_score` scores generated images against their captions.
"""

import dataclasses
import functools
import json
import math
import os
from collections.abc import Mapping
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import attention as attention_lib
from research.models import hf
from research.models import layers

LOSSES = ("softmax", "sigmoid")
ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
}
MAX_LOGIT_SCALE = 100.0  # exp(t) is clamped here (CLIP, section 2.5)


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Sizes and options of both towers.

  Attributes:
    image_size: H = W of the images.
    patch_size: p of the image tower's patches (must divide image_size).
    vision_width, vision_layers, vision_heads, vision_mlp: the image tower's width, blocks,
      heads and MLP width.
    vocab_size: the text tower's vocabulary.
    context_length: positions of the text tower (transformers' max_position_embeddings).
    text_width, text_layers, text_heads, text_mlp: the text tower's sizes.
    projection_dim: the width of the joint embedding.
    hidden_act: the MLPs' activation, a key of ACTIVATIONS (CLIP's is quick_gelu).
    layer_norm_eps: every LayerNorm's epsilon.
    eos_token_id: the token whose state the text tower pools (its first occurrence; transformers'
      legacy id 2 pools at the largest id instead, and so does this model).
    pad_token_id, bos_token_id: recorded in transformers' config.
    loss: "softmax" (CLIP's InfoNCE) or "sigmoid" (SigLIP: adds a learned logit bias).
    logit_scale_init: the initial log-temperature t; None: log(1/0.07) for softmax, log(10) for sigmoid.
    logit_bias_init: SigLIP's initial bias b.
    attention: the kernel, one of research.models.attention.IMPLEMENTATIONS.
    scan_layers: each tower's blocks as one `nn.scan`.
    remat: "none", "block" or "dots" (research.models.layers.REMATS).
    dtype: compute dtype (parameters stay float32).
  """

  image_size: int = 32
  patch_size: int = 4
  vision_width: int = 128
  vision_layers: int = 4
  vision_heads: int = 4
  vision_mlp: int = 512
  vocab_size: int = 64
  context_length: int = 16
  text_width: int = 128
  text_layers: int = 4
  text_heads: int = 4
  text_mlp: int = 512
  projection_dim: int = 128
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  eos_token_id: int = 1
  pad_token_id: int = 0
  bos_token_id: int = 2
  loss: str = "softmax"
  logit_scale_init: float | None = None
  logit_bias_init: float = -10.0
  attention: str = "auto"
  scan_layers: bool = False
  remat: str = "none"
  dtype: str = "float32"

  def __post_init__(self):
    layers.check_stacking(self.scan_layers, self.remat)
    if self.image_size % self.patch_size:
      raise ValueError(f"patch size {self.patch_size} does not divide the image size {self.image_size}")
    for tower, width, heads in (("vision", self.vision_width, self.vision_heads),
                                ("text", self.text_width, self.text_heads)):
      if width % heads:
        raise ValueError(f"the {tower} width {width} is not divisible by {heads} heads")
    if self.loss not in LOSSES:
      raise ValueError(f"unknown loss {self.loss!r}; choose one of: {', '.join(LOSSES)}")
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"unknown hidden_act {self.hidden_act!r}; choose one of: {', '.join(ACTIVATIONS)}")

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def initial_logit_scale(self) -> float:
    if self.logit_scale_init is not None:
      return self.logit_scale_init
    return math.log(1 / 0.07) if self.loss == "softmax" else math.log(10.0)


# ---------------------------------------------------------------------------------------
# The towers.


def _init(std: float, axes):
  return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


def _layer_norm(cfg: CLIPConfig, name: str):
  # Two-pass variance: E[x^2] - E[x]^2 loses digits that parity with transformers needs.
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_fast_variance=False, dtype=cfg.dtype, name=name)


class EncoderLayer(nn.Module):
  """Pre-LN block: x + attention(LN(x)), then x + MLP(LN(x)); (x, None) -> (x, None) for `layers.blocks`."""

  cfg: CLIPConfig
  width: int
  heads: int
  mlp: int
  depth: int

  @nn.compact
  def __call__(self, x, unused=None, *, mask=None, causal: bool = False):
    del unused
    cfg = self.cfg
    in_std = self.width ** -0.5 * (2 * self.depth) ** -0.5  # transformers' CLIP initialisation
    attn = attention_lib.MultiHeadAttention(num_heads=self.heads, implementation=cfg.attention,
                                            kernel_init=nn.initializers.normal(in_std),
                                            out_init=nn.initializers.normal(self.width ** -0.5), dtype=cfg.dtype,
                                            name="self_attn")
    x = x + attn(_layer_norm(cfg, "layer_norm1")(x), mask=mask, causal=causal)
    h = layers.Dense(self.mlp, kernel_init=_init((2 * self.width) ** -0.5, ("embed", "mlp")), dtype=cfg.dtype,
                     name="fc1")(_layer_norm(cfg, "layer_norm2")(x))  # (B, T, mlp)
    h = layers.Dense(self.width, kernel_init=_init(in_std, ("mlp", "embed")), dtype=cfg.dtype,
                     name="fc2")(ACTIVATIONS[cfg.hidden_act](nn.with_logical_constraint(h, layers.ACTIVATION_MLP)))
    return x + h, None


class VisionTransformer(nn.Module):
  """pixel_values (B, H, W, 3) -> the class token's state after post_layernorm, (B, vision_width)."""

  cfg: CLIPConfig

  @nn.compact
  def __call__(self, pixel_values):
    cfg = self.cfg
    b, p, width = pixel_values.shape[0], cfg.patch_size, cfg.vision_width
    if pixel_values.shape[1:] != (cfg.image_size, cfg.image_size, 3):
      raise ValueError(f"expected images (B, {cfg.image_size}, {cfg.image_size}, 3), got {pixel_values.shape}")
    patches = nn.Conv(width, (p, p), strides=(p, p), padding="VALID", use_bias=False, dtype=cfg.dtype,
                      kernel_init=_init(0.02, (None, None, None, "embed")), name="patch_embedding")(pixel_values)
    patches = patches.reshape(b, cfg.num_patches, width)  # (B, T, D), row-major over the grid
    cls = self.param("class_embedding", _init(width ** -0.5, ("embed",)), (width,))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(patches.dtype), (b, 1, width)), patches], axis=1)  # (B, T + 1, D)
    x = x + nn.Embed(cfg.num_patches + 1, width, embedding_init=_init(0.02, (None, "embed")),
                     name="position_embedding")(jnp.arange(cfg.num_patches + 1))[None].astype(x.dtype)
    x = _layer_norm(cfg, "pre_layrnorm")(x)
    x, _ = layers.blocks(lambda: EncoderLayer(cfg, width, cfg.vision_heads, cfg.vision_mlp, cfg.vision_layers),
                         cfg.vision_layers, x, name="layers", scan=cfg.scan_layers, remat=cfg.remat)
    return _layer_norm(cfg, "post_layernorm")(x[:, 0])


class TextTransformer(nn.Module):
  """input_ids (B, L), attention_mask (B, L) -> (every token's state (B, L, D), the pooled state (B, D))."""

  cfg: CLIPConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask=None):
    cfg = self.cfg
    length = input_ids.shape[1]
    if length > cfg.context_length:
      raise ValueError(f"{length} tokens do not fit the context length {cfg.context_length}")
    embed = lambda n, axis, name: nn.Embed(n, cfg.text_width, embedding_init=_init(0.02, (axis, "embed")), name=name)
    x = embed(cfg.vocab_size, "vocab", "token_embedding")(input_ids) + embed(cfg.context_length, None,
                                                                               "position_embedding")(
        jnp.arange(length))[None]  # (B, L, D)
    mask = None if attention_mask is None else attention_mask.astype(bool)
    x, _ = layers.blocks(lambda: EncoderLayer(cfg, cfg.text_width, cfg.text_heads, cfg.text_mlp, cfg.text_layers),
                         cfg.text_layers, x.astype(cfg.dtype), name="layers", scan=cfg.scan_layers, remat=cfg.remat,
                         mask=mask, causal=True)
    states = _layer_norm(cfg, "final_layer_norm")(x)
    if cfg.eos_token_id == 2:  # transformers' legacy configs: the end token has the largest id
      eos = jnp.argmax(input_ids, axis=-1)
    else:
      eos = jnp.argmax(input_ids == cfg.eos_token_id, axis=-1)  # the first end-of-text token
    return states, states[jnp.arange(input_ids.shape[0]), eos]


class CLIP(nn.Module):
  """`apply({"params": p}, pixel_values, input_ids, attention_mask)` -> (logits_per_image (B, B'), logits_per_text)."""

  cfg: CLIPConfig

  def setup(self):
    cfg = self.cfg
    self.vision_model = VisionTransformer(cfg)
    self.text_model = TextTransformer(cfg)
    self.visual_projection = layers.Dense(cfg.projection_dim, use_bias=False, dtype=cfg.dtype,
                                          kernel_init=_init(cfg.vision_width ** -0.5, ("embed", None)))
    self.text_projection = layers.Dense(cfg.projection_dim, use_bias=False, dtype=cfg.dtype,
                                        kernel_init=_init(cfg.text_width ** -0.5, ("embed", None)))
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(cfg.initial_logit_scale), ())
    if cfg.loss == "sigmoid":
      self.logit_bias = self.param("logit_bias", nn.initializers.constant(cfg.logit_bias_init), ())

  def image_features(self, pixel_values):
    """(B, H, W, 3) -> projected, unnormalised image embeddings (B, projection_dim)."""
    return self.visual_projection(self.vision_model(pixel_values.astype(self.cfg.dtype))).astype(jnp.float32)

  def text_features(self, input_ids, attention_mask=None):
    """(B, L) -> projected, unnormalised text embeddings (B, projection_dim)."""
    return self.text_projection(self.text_model(input_ids, attention_mask)[1]).astype(jnp.float32)

  def text_states(self, input_ids, attention_mask=None):
    """(B, L) -> every token's state after the final LayerNorm, (B, L, text_width): a diffusion model's context."""
    return self.text_model(input_ids, attention_mask)[0].astype(jnp.float32)

  def scale(self):
    """exp(t), clamped at MAX_LOGIT_SCALE."""
    return jnp.exp(jnp.minimum(self.logit_scale, math.log(MAX_LOGIT_SCALE)))

  def bias(self):
    """SigLIP's logit bias b (0 for the softmax loss)."""
    return self.logit_bias if self.cfg.loss == "sigmoid" else jnp.zeros(())

  def __call__(self, pixel_values, input_ids, attention_mask=None):
    image = normalize(self.image_features(pixel_values))  # (B, P)
    text = normalize(self.text_features(input_ids, attention_mask))  # (B', P)
    logits_per_text = text @ image.T * self.scale() + self.bias()  # (B', B)
    return logits_per_text.T, logits_per_text


def normalize(x):
  """x / |x| along the last axis."""
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))


def count_params(cfg: CLIPConfig) -> int:
  """Number of parameters, from shapes alone."""
  return layers.count_params(CLIP(cfg), jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, 3), jnp.float32),
                             jax.ShapeDtypeStruct((1, cfg.context_length), jnp.int32))


# ---------------------------------------------------------------------------------------
# Losses.


def contrastive_loss(logits_per_image):
  """(1) CLIP's symmetric InfoNCE of a (B, B) logit matrix whose diagonal holds the matching pairs."""
  labels = jnp.arange(logits_per_image.shape[0])
  image_to_text = -jnp.mean(jax.nn.log_softmax(logits_per_image, axis=1)[labels, labels])
  text_to_image = -jnp.mean(jax.nn.log_softmax(logits_per_image, axis=0)[labels, labels])
  return (image_to_text + text_to_image) / 2


def sigmoid_loss(logits_per_image):
  """(2) SigLIP's loss of (B, B) logits t x_i.y_j + b: -1/B sum_ij log sigmoid(z_ij logits_ij), z = 2 I - 1."""
  z = 2.0 * jnp.eye(logits_per_image.shape[0]) - 1.0
  return -jnp.sum(jax.nn.log_sigmoid(z * logits_per_image)) / logits_per_image.shape[0]


def loss(cfg: CLIPConfig, logits_per_image):
  """The config's loss of a batch of matching pairs."""
  return contrastive_loss(logits_per_image) if cfg.loss == "softmax" else sigmoid_loss(logits_per_image)


# ---------------------------------------------------------------------------------------
# Evaluation.


class ZeroShot(NamedTuple):
  """One zero-shot classification: each image's class and the class each prompt names.

  Every classification of an evaluation draws its prompts from one shared pool, so a prompt that
  names several attributes ("a small red circle at the top left") serves each of them.
  """

  labels: jax.Array  # (N,) int: the class of each image
  prompt_labels: jax.Array  # (M,) int: the class each prompt of the pool names; -1: none of this classification's


def class_embeddings(prompts, prompt_labels):
  """A prompt ensemble per class (CLIP, section 3.1.4): the normalised mean of its prompts' embeddings.

  Args:
    prompts: (M, P) normalised prompt embeddings.
    prompt_labels: (M,) the class of each prompt, in [0, M); -1 leaves a prompt out.

  Returns:
    ((M, P) class embeddings, (M,) whether a class has any prompt): row c is class c, so the
    number of classes need not be static; rows of classes without prompts are zero.
  """
  m = prompts.shape[0]
  one_hot = jax.nn.one_hot(prompt_labels, m, dtype=prompts.dtype)  # (M prompts, M classes); -1 is all zeros
  sums = one_hot.T @ prompts  # (M, P)
  present = jnp.sum(one_hot, axis=0) > 0
  norm = jnp.sqrt(jnp.sum(sums * sums, axis=-1, keepdims=True))
  return jnp.where(present[:, None], sums / jnp.where(norm > 0, norm, 1.0), 0.0), present


def zero_shot_accuracy(images, prompts, task: ZeroShot):
  """The share of images whose most similar class ensemble is their own, from normalised embeddings (N, P), (M, P)."""
  classes, present = class_embeddings(prompts, task.prompt_labels)
  scores = jnp.where(present[None], images @ classes.T, -jnp.inf)  # (N, M): classes without prompts never win
  return jnp.mean(jnp.argmax(scores, axis=1) == task.labels)


def recall_at_k(similarity, ks=(1, 5), query_groups=None, item_groups=None):
  """recall@k of retrieval: the share of queries with a correct item among their k most similar.

  Args:
    similarity: (Q, I) scores of each query against each item.
    ks: the k of recall@k.
    query_groups, item_groups: (Q,), (I,) ints; an item is correct for a query of the same group
      (two captions of one picture, two pictures one caption describes alike). None: item i is
      the one correct item of query i (Q = I).

  Returns:
    {k: recall@k}. A correct item ranks by how many wrong items score strictly higher than the
    best correct one, so ties count in its favour.
  """
  if query_groups is None:
    correct = jnp.eye(similarity.shape[0], similarity.shape[1], dtype=bool)
  else:
    correct = query_groups[:, None] == item_groups[None, :]  # (Q, I)
  best = jnp.max(jnp.where(correct, similarity, -jnp.inf), axis=1, keepdims=True)  # (Q, 1)
  rank = jnp.sum(~correct & (similarity > best), axis=1)  # (Q,) wrong items above the best correct one
  return {k: jnp.mean(rank < k) for k in ks}


def embed_images(model: "CLIP", params, images, batch_size: int = 256):
  """Normalised image embeddings (N, P) of images (N, H, W, 3), batch_size at a time (`lax.map`)."""
  one = lambda x: model.apply({"params": params}, x[None], method=model.image_features)[0]
  return normalize(jax.lax.map(one, images, batch_size=min(batch_size, images.shape[0])))


def embed_texts(model: "CLIP", params, input_ids, attention_mask, batch_size: int = 256):
  """Normalised text embeddings (N, P) of token ids (N, L) and their mask, batch_size at a time."""
  one = lambda xs: model.apply({"params": params}, xs[0][None], xs[1][None], method=model.text_features)[0]
  return normalize(jax.lax.map(one, (input_ids, attention_mask), batch_size=min(batch_size, input_ids.shape[0])))


def evaluate(model: "CLIP", params, images, caption_ids, caption_mask, prompt_ids, prompt_mask,
             zero_shot: Mapping[str, ZeroShot], groups=None, ks=(1, 5), batch_size: int = 256):
  """Zero-shot classification with prompt ensembles and image<->caption retrieval, one pure function.

  Jittable, and `jax.vmap`-able over params (a sweep's members share the data).

  Args:
    model: the CLIP module.
    params: its parameters.
    images: (N, H, W, 3) float pixel values.
    caption_ids, caption_mask: (N, L) each image's own caption.
    prompt_ids, prompt_mask: (M, L) the pool of class prompts.
    zero_shot: name -> ZeroShot, the classifications to score.
    groups: (N,) optional: images (and their captions) of one group describe each other
      (`recall_at_k`); None: each image's own caption is its one match.
    ks: the k of recall@k.
    batch_size: examples per forward pass.

  Returns:
    {"<name>_accuracy" for each classification, "image_to_text_recall@k", "text_to_image_recall@k"}
    as scalars.
  """
  image = embed_images(model, params, images, batch_size)  # (N, P)
  prompts = embed_texts(model, params, prompt_ids, prompt_mask, batch_size)  # (M, P)
  text = embed_texts(model, params, caption_ids, caption_mask, batch_size)  # (N, P)
  metrics = {f"{name}_accuracy": zero_shot_accuracy(image, prompts, task) for name, task in zero_shot.items()}
  similarity = image @ text.T  # (N images, N captions)
  metrics.update({f"image_to_text_recall@{k}": v for k, v in recall_at_k(similarity, ks, groups, groups).items()})
  metrics.update({f"text_to_image_recall@{k}": v for k, v in recall_at_k(similarity.T, ks, groups, groups).items()})
  return metrics


@functools.partial(jax.jit, static_argnames=("model", "batch_size"))
def clip_score(model: "CLIP", params, images, input_ids, attention_mask, batch_size: int = 256):
  """CLIP score of images against their captions: 100 x the cosine similarity of the embeddings, (N,).

  Hessel et al. (2021) and torchmetrics clip it at 0 (w max(cos, 0)); this is the unclipped
  value, so a mean over samples keeps negative scores.

  Args:
    model, params: a trained CLIP.
    images: (N, H, W, 3) pixel values, prepared as the model was trained on them.
    input_ids, attention_mask: (N, L) the caption each image was generated from.
    batch_size: examples per forward pass.
  """
  image = embed_images(model, params, images, batch_size)
  text = embed_texts(model, params, input_ids, attention_mask, batch_size)
  return 100.0 * jnp.sum(image * text, axis=-1)


# ---------------------------------------------------------------------------------------
# transformers' CLIPModel, both ways.


def _linear(theirs: str, ours: tuple, bias: bool = True) -> list[hf.Tensor]:
  """A torch Linear (out, in) as a Dense kernel (in, out)."""
  rows = [hf.Tensor(theirs + ".weight", ours + ("kernel",), lambda w: w.T, lambda w: w.T)]
  return rows + [hf.Tensor(theirs + ".bias", ours + ("bias",))] if bias else rows


def _norm(theirs: str, ours: tuple) -> list[hf.Tensor]:
  return [hf.Tensor(theirs + ".weight", ours + ("scale",)), hf.Tensor(theirs + ".bias", ours + ("bias",))]


def _encoder_table(prefix: str, ours: tuple, count: int, width: int, heads: int) -> list[hf.Tensor]:
  d = width // heads
  table = []
  for i in range(count):
    p, o = f"{prefix}.encoder.layers.{i}.", ours + (f"layers_{i}",)
    for theirs, name in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
      table += [hf.Tensor(p + f"self_attn.{theirs}.weight", o + ("self_attn", name, "kernel"),
                          lambda w: w.T.reshape(width, heads, d), lambda w: w.reshape(width, heads * d).T),
                hf.Tensor(p + f"self_attn.{theirs}.bias", o + ("self_attn", name, "bias"),
                          lambda b: b.reshape(heads, d), lambda b: b.reshape(heads * d))]
    table += [hf.Tensor(p + "self_attn.out_proj.weight", o + ("self_attn", "out", "kernel"),
                        lambda w: w.T.reshape(heads, d, width), lambda w: w.reshape(heads * d, width).T),
              hf.Tensor(p + "self_attn.out_proj.bias", o + ("self_attn", "out", "bias"))]
    table += _norm(p + "layer_norm1", o + ("layer_norm1",)) + _norm(p + "layer_norm2", o + ("layer_norm2",))
    table += _linear(p + "mlp.fc1", o + ("fc1",)) + _linear(p + "mlp.fc2", o + ("fc2",))
  return table


def _hf_table(cfg: CLIPConfig) -> list[hf.Tensor]:
  """Every tensor of a CLIPModel and its parameter (the blocks in the Python-loop layout)."""
  v, t = ("vision_model",), ("text_model",)
  nchw_to_hwio = lambda w: np.transpose(w, (2, 3, 1, 0))
  table = [
      hf.Tensor("vision_model.embeddings.patch_embedding.weight", v + ("patch_embedding", "kernel"), nchw_to_hwio,
                lambda w: np.transpose(w, (3, 2, 0, 1))),
      hf.Tensor("vision_model.embeddings.class_embedding", v + ("class_embedding",)),
      hf.Tensor("vision_model.embeddings.position_embedding.weight", v + ("position_embedding", "embedding")),
      *_norm("vision_model.pre_layrnorm", v + ("pre_layrnorm",)),
      *_encoder_table("vision_model", v, cfg.vision_layers, cfg.vision_width, cfg.vision_heads),
      *_norm("vision_model.post_layernorm", v + ("post_layernorm",)),
      hf.Tensor("text_model.embeddings.token_embedding.weight", t + ("token_embedding", "embedding")),
      hf.Tensor("text_model.embeddings.position_embedding.weight", t + ("position_embedding", "embedding")),
      *_encoder_table("text_model", t, cfg.text_layers, cfg.text_width, cfg.text_heads),
      *_norm("text_model.final_layer_norm", t + ("final_layer_norm",)),
      *_linear("visual_projection", ("visual_projection",), bias=False),
      *_linear("text_projection", ("text_projection",), bias=False),
      hf.Tensor("logit_scale", ("logit_scale",)),
  ]
  return table


def _config_from_hf(saved: dict) -> CLIPConfig:
  if saved.get("model_type") != "clip":
    raise ValueError(f"config.json describes a {saved.get('model_type')!r} model, not clip")
  vision, text = saved["vision_config"], saved["text_config"]
  if vision.get("hidden_act", "quick_gelu") != text.get("hidden_act", "quick_gelu"):
    raise ValueError("the towers use different activations; this CLIP has one hidden_act")
  if isinstance(vision.get("image_size"), (list, tuple)) or isinstance(vision.get("patch_size"), (list, tuple)):
    raise ValueError("only square images and patches are supported")
  eos = text.get("eos_token_id", 49407)
  return CLIPConfig(
      image_size=vision.get("image_size", 224), patch_size=vision.get("patch_size", 32),
      vision_width=vision.get("hidden_size", 768), vision_layers=vision.get("num_hidden_layers", 12),
      vision_heads=vision.get("num_attention_heads", 12), vision_mlp=vision.get("intermediate_size", 3072),
      vocab_size=text.get("vocab_size", 49408), context_length=text.get("max_position_embeddings", 77),
      text_width=text.get("hidden_size", 512), text_layers=text.get("num_hidden_layers", 12),
      text_heads=text.get("num_attention_heads", 8), text_mlp=text.get("intermediate_size", 2048),
      projection_dim=saved.get("projection_dim", 512), hidden_act=text.get("hidden_act", "quick_gelu"),
      layer_norm_eps=text.get("layer_norm_eps", 1e-5), eos_token_id=eos[0] if isinstance(eos, list) else eos,
      pad_token_id=text.get("pad_token_id", 1), bos_token_id=text.get("bos_token_id", 49406),
      loss=saved.get("research_loss", "softmax"))


def _shapes(cfg: CLIPConfig):
  loop = dataclasses.replace(cfg, scan_layers=False)
  images = jnp.zeros((1, cfg.image_size, cfg.image_size, 3))
  return nn.unbox(jax.eval_shape(lambda: CLIP(loop).init(jax.random.key(0), images, jnp.ones((1, 2), jnp.int32))))


def load_hf(path: str, **overrides) -> tuple[CLIP, dict]:
  """Reads a directory transformers' CLIPModel saved (config.json + model.safetensors), without torch.

  Args:
    path: the directory.
    **overrides: CLIPConfig fields to replace (attention, dtype, scan_layers, remat).

  Returns:
    (CLIP module, params) for `model.apply({"params": params}, ...)`.

  Raises:
    ValueError: without config.json or model.safetensors, for another architecture, or when a
      tensor is missing or has another shape (the message names it).
  """
  saved, weights_path = hf.saved_config(path, "CLIP")
  cfg = dataclasses.replace(_config_from_hf(saved), **overrides)
  tensors = hf.load_weights(weights_path)
  params = hf.read(_hf_table(cfg), tensors, _shapes(cfg)["params"], weights_path)
  if cfg.loss == "sigmoid":
    params["logit_bias"] = jnp.asarray(saved.get("research_logit_bias", cfg.logit_bias_init), jnp.float32)
  if cfg.scan_layers:
    for tower in ("vision_model", "text_model"):
      count = cfg.vision_layers if tower == "vision_model" else cfg.text_layers
      params[tower] = layers.stack_blocks(params[tower], "layers", count)
  return CLIP(cfg), params


def save_hf(model: CLIP, params, path: str) -> None:
  """Writes config.json + model.safetensors that transformers' CLIPModel.from_pretrained loads.

  A sigmoid-loss model's logit bias is not a CLIPModel parameter: it is kept in config.json
  ("research_logit_bias"), which transformers ignores and `load_hf` reads back.
  """
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  cfg = model.cfg
  params = nn.unbox(params)
  if cfg.scan_layers:
    params = dict(params)
    for tower in ("vision_model", "text_model"):
      params[tower] = layers.unstack_blocks(params[tower], "layers")
  os.makedirs(path, exist_ok=True)
  save_file(hf.write(_hf_table(cfg), params), os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  common = {"hidden_act": cfg.hidden_act, "layer_norm_eps": cfg.layer_norm_eps, "attention_dropout": 0.0,
            "projection_dim": cfg.projection_dim}
  config = {
      "model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": cfg.projection_dim,
      "logit_scale_init_value": cfg.initial_logit_scale,
      "vision_config": {**common, "model_type": "clip_vision_model", "image_size": cfg.image_size,
                        "patch_size": cfg.patch_size, "hidden_size": cfg.vision_width,
                        "num_hidden_layers": cfg.vision_layers, "num_attention_heads": cfg.vision_heads,
                        "intermediate_size": cfg.vision_mlp, "num_channels": 3},
      "text_config": {**common, "model_type": "clip_text_model", "vocab_size": cfg.vocab_size,
                      "max_position_embeddings": cfg.context_length, "hidden_size": cfg.text_width,
                      "num_hidden_layers": cfg.text_layers, "num_attention_heads": cfg.text_heads,
                      "intermediate_size": cfg.text_mlp, "eos_token_id": cfg.eos_token_id,
                      "pad_token_id": cfg.pad_token_id, "bos_token_id": cfg.bos_token_id},
  }
  if cfg.loss == "sigmoid":
    config.update(research_loss="sigmoid", research_logit_bias=float(np.asarray(params["logit_bias"])))
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f, indent=2)


def from_hf(path: str):
  """The parameters of a directory transformers' CLIPModel saved: `load_hf(path)[1]`, the inverse of `to_hf`."""
  return load_hf(path)[1]


def to_hf(params, path: str, cfg: CLIPConfig | None = None) -> None:
  """Writes `params` as a directory transformers' CLIPModel loads: `save_hf` with the config read off their shapes.

  Args:
    params: CLIP parameters (boxed or not; blocks looped or stacked).
    path: the directory.
    cfg: the model's config; None: `config_from_params(params)` (the shapes' sizes, the other
      fields CLIPConfig's defaults).
  """
  save_hf(CLIP(config_from_params(params) if cfg is None else cfg), params, path)


def config_from_params(params, **fields) -> CLIPConfig:
  """The CLIPConfig whose parameters have these shapes; fields no shape tells (hidden_act, token ids) from `fields`.

  Raises:
    ValueError: when `params` are not a CLIP's.
  """
  params = nn.unbox(params)
  try:
    vision, text = params["vision_model"], params["text_model"]
    p, _, _, vision_width = vision["patch_embedding"]["kernel"].shape
    positions = vision["position_embedding"]["embedding"].shape[0] - 1
    vocab_size, text_width = text["token_embedding"]["embedding"].shape
    projection_dim = params["visual_projection"]["kernel"].shape[1]

    def tower(tree):  # (layers, heads, mlp) of a tower's blocks, looped or stacked
      stacked = "layers" in tree
      block = tree["layers"] if stacked else tree["layers_0"]
      count = block["fc1"]["kernel"].shape[0] if stacked else sum(1 for name in tree if name.startswith("layers_"))
      return count, block["self_attn"]["query"]["kernel"].shape[-2], block["fc1"]["kernel"].shape[-1]

    (vision_layers, vision_heads, vision_mlp), (text_layers, text_heads, text_mlp) = tower(vision), tower(text)
    context_length = text["position_embedding"]["embedding"].shape[0]
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"these parameters are not a CLIP's: {type(e).__name__} {e}") from None
  grid = math.isqrt(positions)
  if grid * grid != positions:
    raise ValueError(f"{positions} patch positions are not a square grid")
  sizes = dict(image_size=grid * p, patch_size=p, vision_width=vision_width, vision_layers=vision_layers,
               vision_heads=vision_heads, vision_mlp=vision_mlp, vocab_size=vocab_size, context_length=context_length,
               text_width=text_width, text_layers=text_layers, text_heads=text_heads, text_mlp=text_mlp,
               projection_dim=projection_dim, loss="sigmoid" if "logit_bias" in params else "softmax",
               scan_layers="layers" in vision)
  return CLIPConfig(**{**sizes, **fields})
