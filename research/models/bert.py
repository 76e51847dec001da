"""BERT (Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding", 2019).

    cfg = bert.config("base")                                      # or BertConfig(vocab_size=..., hidden_size=...)
    model = bert.BertForMaskedLM(cfg)
    logits = model.apply({"params": params}, input_ids, attention_mask=mask, token_type_ids=types)  # (B, T, vocab)
    model, params = bert.load_hf("path/to/saved/bert")             # transformers' files, no torch
    masked = bert.mask_tokens(key, input_ids, eligible, vocab_size=cfg.vocab_size, mask_id=4)

An encoder-only transformer: token + learned position + token-type (segment) embeddings and a
LayerNorm, then num_hidden_layers post-LayerNorm blocks x = LN(x + attn(x)); x = LN(x + mlp(x))
with bidirectional multi-head attention over the non-padding keys (research/models/attention.py)
and an exact (erf) GELU MLP. Two heads:

  BertForMaskedLM                 dense + GELU + LayerNorm, then the output projection tied to
                                  the word embeddings plus an output bias: (B, T, vocab) logits.
  BertForSequenceClassification   the pooler (dense + tanh on the [CLS] position) and a linear
                                  classifier: (B, num_labels) logits.

Both hold the encoder under "bert", so a pre-trained encoder moves into a classifier by
copying that subtree. Weights are N(0, initializer_range), biases zero, LayerNorms one (the
paper's and transformers' initialisation). In training, dropout (hidden_dropout_prob) acts on
the embeddings, on each residual branch and on the pooled output, and attention dropout
(attention_probs_dropout_prob) on the attention probabilities, which only the reference
attention forms (research/models/attention.py refuses it elsewhere). A call may override
both rates with traced scalars, so a sweep over them is one compiled program.

Pre-training masks tokens inside the compiled step from the step's key (section 3.1, "Task #1"):
15% of the non-special, non-padding positions are chosen; of those 80% become [MASK], 10% a
random token and 10% stay; the loss counts only the chosen positions. The mix is an argument,
for the ablation of the paper's Table 8.
"""

import dataclasses
import json
import os
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import attention as attention_lib
from research.models import hf
from research.models import layers

# The published sizes: name -> (num_hidden_layers, hidden_size, num_attention_heads, intermediate_size).
SIZES = {"tiny": (2, 128, 2, 512), "mini": (4, 256, 4, 1024), "small": (4, 512, 8, 2048), "medium": (8, 512, 8, 2048),
         "base": (12, 768, 12, 3072), "large": (24, 1024, 16, 4096)}
HF_NAMES = {"bert-base-uncased": "base", "bert-base-cased": "base", "bert-large-uncased": "large",
            "bert-large-cased": "large"}
ARCHITECTURES = ("BertForMaskedLM", "BertForSequenceClassification")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """BERT's hyperparameters under transformers' field names, plus this codebase's options.

  Attributes:
    vocab_size, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
      max_position_embeddings, type_vocab_size, layer_norm_eps, initializer_range,
      hidden_dropout_prob, attention_probs_dropout_prob, pad_token_id: as transformers'
      BertConfig (the dropout rates default to 0 here: dropout is asked for, not assumed).
    num_labels: classes of the sequence-classification head.
    attention: the kernel, one of research.models.attention.IMPLEMENTATIONS ("auto": the
      platform's; the reference where training drops attention probabilities).
    scan_layers: the encoder blocks as one `nn.scan` (parameters "layer" with a leading layer
      axis) instead of a Python loop ("layer_0", "layer_1", ...): one block to compile.
    remat: recompute in the backward pass: "none", "block" or "dots" (research.models.layers.REMATS).
    dtype: compute dtype; parameters stay float32 and logits are float32.
  """

  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  initializer_range: float = 0.02
  hidden_dropout_prob: float = 0.0
  attention_probs_dropout_prob: float = 0.0
  pad_token_id: int = 0
  num_labels: int = 2
  attention: str = "auto"
  scan_layers: bool = False
  remat: str = "none"
  dtype: str = "float32"

  def __post_init__(self):
    layers.check_stacking(self.scan_layers, self.remat)
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                       f"{self.num_attention_heads}")
    if self.attention not in attention_lib.IMPLEMENTATIONS:
      raise ValueError(f"unknown attention {self.attention!r}; choose one of: "
                       f"{', '.join(attention_lib.IMPLEMENTATIONS)}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


def config(name: str, **overrides) -> BertConfig:
  """A published size by name ("base", "large", the compact "tiny" .. "medium", or "bert-base-uncased", ...)."""
  size = HF_NAMES.get(name, name)
  if size not in SIZES:
    raise ValueError(f"unknown BERT size {name!r}; choose one of: {', '.join(list(SIZES) + list(HF_NAMES))}")
  layers, width, heads, inner = SIZES[size]
  return BertConfig(num_hidden_layers=layers, hidden_size=width, num_attention_heads=heads, intermediate_size=inner,
                    **overrides)


# ---------------------------------------------------------------------------------------
# The model.


def _init(std, axes):
  return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


def _dense(cfg: BertConfig, features: int, axes, name: str):
  return layers.Dense(features, name=name, kernel_init=_init(cfg.initializer_range, axes), dtype=cfg.dtype)


def _layer_norm(cfg: BertConfig, name: str):
  return nn.LayerNorm(cfg.layer_norm_eps, name=name, dtype=cfg.dtype)


def check_inputs(cfg: BertConfig, input_ids, attention_mask=None, token_type_ids=None) -> None:
  """Raises ValueError for inputs the model cannot read (shapes are static, so this runs under jit too)."""
  if input_ids.ndim != 2:
    raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
  if input_ids.shape[1] > cfg.max_position_embeddings:
    raise ValueError(f"a sequence of {input_ids.shape[1]} tokens is longer than max_position_embeddings "
                     f"{cfg.max_position_embeddings}")
  for name, value in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
    if value is not None and tuple(value.shape) != tuple(input_ids.shape):
      raise ValueError(f"{name} has shape {tuple(value.shape)}; input_ids have {tuple(input_ids.shape)}")


class Rates(NamedTuple):
  """A call's dropout rates in place of the config's: Python floats, traced scalars, or None (the config's)."""

  hidden: object = None
  attention: object = None


class Layer(nn.Module):
  """LN(x + attn(x)), then LN(x + mlp(x)): BERT's post-LayerNorm block."""

  cfg: BertConfig

  @nn.compact
  def __call__(self, x, unused, *, mask, train: bool, rates: Rates):
    """(x after the block, None): the signature of research.models.layers.blocks."""
    del unused  # the blocks take no per-layer input
    cfg = self.cfg
    init = nn.initializers.normal(cfg.initializer_range)
    attn = attention_lib.MultiHeadAttention(
        num_heads=cfg.num_attention_heads, head_dim=cfg.head_dim, implementation=cfg.attention,
        dropout=cfg.hidden_dropout_prob, attention_dropout=cfg.attention_probs_dropout_prob, kernel_init=init,
        out_init=init, dtype=cfg.dtype, name="attention")
    out = attn(x, mask=mask, train=train, dropout_rate=rates.hidden, attention_dropout_rate=rates.attention)
    x = _layer_norm(cfg, "attention_ln")(x + out)
    h = _dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "intermediate")(x)  # (B, T, intermediate)
    h = nn.with_logical_constraint(h, layers.ACTIVATION_MLP)
    h = _dense(cfg, cfg.hidden_size, ("mlp", "embed"), "output")(nn.gelu(h, approximate=False))
    h = layers.Dropout(cfg.hidden_dropout_prob)(h, train, rate=rates.hidden)
    return _layer_norm(cfg, "output_ln")(x + h), None


class BertEncoder(nn.Module):
  """Embeddings and the encoder blocks: (B, T) ids -> ((B, T, hidden), the word-embedding table)."""

  cfg: BertConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids, train: bool, rates: Rates):
    cfg = self.cfg
    check_inputs(cfg, input_ids, attention_mask, token_type_ids)
    t = input_ids.shape[1]
    mask = jnp.ones(input_ids.shape, bool) if attention_mask is None else attention_mask.astype(bool)
    types = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
    word = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings", dtype=cfg.dtype,
                    embedding_init=_init(cfg.initializer_range, ("vocab", "embed")))
    position = self.param("position_embeddings", _init(cfg.initializer_range, (None, "embed")),
                          (cfg.max_position_embeddings, cfg.hidden_size))
    token_type = self.param("token_type_embeddings", _init(cfg.initializer_range, (None, "embed")),
                            (cfg.type_vocab_size, cfg.hidden_size))
    x = word(input_ids) + position[None, :t].astype(cfg.dtype) + jnp.take(token_type, types, axis=0).astype(cfg.dtype)
    x = _layer_norm(cfg, "embeddings_ln")(x)  # (B, T, hidden)
    x = layers.Dropout(cfg.hidden_dropout_prob)(x, train, rate=rates.hidden)
    x, _ = layers.blocks(lambda: Layer(cfg), cfg.num_hidden_layers, x, name="layer", scan=cfg.scan_layers,
                         remat=cfg.remat, mask=mask, train=train, rates=rates)
    return x, word.embedding


class BertForMaskedLM(nn.Module):
  """`apply({"params": p}, input_ids, attention_mask=, token_type_ids=, train=)` -> (B, T, vocab) float32.

  `attention_mask` (B, T) is 1/True at real tokens and 0/False at padding; `token_type_ids`
  (B, T) the segment of each token (default 0); `train` enables dropout (rngs={'dropout'});
  `dropout_rate` and `attention_dropout_rate` replace hidden_dropout_prob and
  attention_probs_dropout_prob in training (Python floats or traced scalars).
  """

  cfg: BertConfig

  @nn.compact
  def __call__(self, input_ids, *, attention_mask=None, token_type_ids=None, train: bool = False,
               dropout_rate=None, attention_dropout_rate=None):
    cfg = self.cfg
    x, table = BertEncoder(cfg, name="bert")(input_ids, attention_mask, token_type_ids, train,
                                             Rates(dropout_rate, attention_dropout_rate))
    h = nn.gelu(_dense(cfg, cfg.hidden_size, ("embed", None), "mlm_dense")(x), approximate=False)
    h = _layer_norm(cfg, "mlm_ln")(h)
    bias = self.param("mlm_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)), (cfg.vocab_size,))
    # The output projection is the word-embedding table itself (tied), plus its own bias, on
    # (B * T, hidden) rows (see layers.Dense).
    b, t, e = h.shape
    logits = jnp.einsum("ne,ve->nv", h.reshape(b * t, e), table.astype(h.dtype), preferred_element_type=jnp.float32)
    return logits.reshape(b, t, -1) + bias  # (B, T, vocab)


class BertForSequenceClassification(nn.Module):
  """`apply({"params": p}, input_ids, attention_mask=, token_type_ids=, train=)` -> (B, num_labels) float32.

  The keyword arguments are BertForMaskedLM's.
  """

  cfg: BertConfig

  @nn.compact
  def __call__(self, input_ids, *, attention_mask=None, token_type_ids=None, train: bool = False,
               dropout_rate=None, attention_dropout_rate=None):
    cfg = self.cfg
    x, _ = BertEncoder(cfg, name="bert")(input_ids, attention_mask, token_type_ids, train,
                                         Rates(dropout_rate, attention_dropout_rate))
    pooled = jnp.tanh(_dense(cfg, cfg.hidden_size, ("embed", None), "pooler")(x[:, 0]))  # (B, hidden) from [CLS]
    pooled = layers.Dropout(cfg.hidden_dropout_prob)(pooled, train, rate=dropout_rate)
    return _dense(cfg, cfg.num_labels, ("embed", None), "classifier")(pooled).astype(jnp.float32)


MODELS = {"BertForMaskedLM": BertForMaskedLM, "BertForSequenceClassification": BertForSequenceClassification}


def count_params(cfg: BertConfig, architecture: str = "BertForMaskedLM") -> int:
  """Parameters from shapes alone."""
  return layers.count_params(MODELS[architecture](cfg), jax.ShapeDtypeStruct((1, 1), jnp.int32))


# ---------------------------------------------------------------------------------------
# Masked language modelling: the masking, inside the compiled step, and the loss.


class MaskedTokens(NamedTuple):
  """What the model reads and where the loss looks."""

  input_ids: jax.Array  # (B, T) with the chosen positions replaced
  chosen: jax.Array  # (B, T) bool: the positions whose original token the loss predicts


def mask_tokens(key, input_ids, eligible, *, vocab_size: int, mask_id: int, rate=0.15, mix=(0.8, 0.1, 0.1)):
  """Chooses positions for the MLM loss and corrupts them (Devlin et al., section 3.1 and appendix C.2).

  Each eligible position is chosen independently with probability `rate`; a chosen position
  becomes [MASK], stays, or becomes a uniformly random token of the vocabulary with the
  probabilities `mix` = (MASK, same, random), the order of the paper's Table 8.

  Args:
    key: the step's masking key.
    input_ids: (B, T) token ids.
    eligible: (B, T) bool, False at padding and special tokens ([CLS], [SEP], ...).
    vocab_size: random replacements are drawn from 0 .. vocab_size - 1.
    mask_id: the [MASK] id.
    rate: the chosen fraction of eligible positions (may be traced).
    mix: (MASK, same, random) probabilities summing to 1 (may be traced).

  Returns:
    MaskedTokens(input_ids with the corruption, chosen).
  """
  k_choose, k_kind, k_random = jax.random.split(key, 3)
  p_mask, p_same = mix[0], mix[1]
  chosen = eligible & (jax.random.uniform(k_choose, input_ids.shape) < rate)
  kind = jax.random.uniform(k_kind, input_ids.shape)  # < p_mask: [MASK]; then same; the rest random
  random_ids = jax.random.randint(k_random, input_ids.shape, 0, vocab_size, input_ids.dtype)
  out = jnp.where(chosen & (kind < p_mask), jnp.asarray(mask_id, input_ids.dtype), input_ids)
  out = jnp.where(chosen & (kind >= p_mask + p_same), random_ids, out)
  return MaskedTokens(out, chosen)


def parse_mix(mix: str) -> tuple[float, float, float]:
  """"80/10/10" -> (0.8, 0.1, 0.1): percentages of chosen tokens made [MASK], kept, made random.

  Raises:
    ValueError: unless three non-negative numbers summing to 100.
  """
  try:
    parts = tuple(float(p) for p in mix.split("/"))
  except ValueError:
    parts = ()
  if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 100.0) > 1e-6:
    raise ValueError(f"a masking mix is MASK/same/random percentages summing to 100, like 80/10/10; got {mix!r}")
  return tuple(p / 100.0 for p in parts)


def mlm_loss(logits, targets, chosen):
  """(Mean cross-entropy in nats, accuracy) over the chosen positions only."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # (B, T)
  weight = chosen.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(weight), 1.0)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return jnp.sum(nll * weight) / count, jnp.sum(correct * weight) / count


# ---------------------------------------------------------------------------------------
# Weights to and from transformers: one explicit name table.


def _hf_table(cfg: BertConfig, architecture: str) -> list[hf.Tensor]:
  """Every tensor of `architecture` and its parameter in the Python-loop layout.

  torch's Linear stores (out, in): kernels are transposed; the attention's query/key/value
  kernels (hidden, hidden) become (hidden, heads, head_dim), its output (heads, head_dim, hidden).
  The MLM decoder is tied to the word embeddings, so only its bias is a tensor of its own.
  """
  e, h, d = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
  ln = lambda theirs, ours: [hf.Tensor(theirs + ".weight", ours + ("scale",)),
                             hf.Tensor(theirs + ".bias", ours + ("bias",))]
  dense = lambda theirs, ours: [hf.Tensor(theirs + ".weight", ours + ("kernel",), np.transpose, np.transpose),
                                hf.Tensor(theirs + ".bias", ours + ("bias",))]
  emb, enc = "bert.embeddings.", ("bert",)
  table = [hf.Tensor(emb + "word_embeddings.weight", enc + ("word_embeddings", "embedding")),
           hf.Tensor(emb + "position_embeddings.weight", enc + ("position_embeddings",)),
           hf.Tensor(emb + "token_type_embeddings.weight", enc + ("token_type_embeddings",))]
  table += ln(emb + "LayerNorm", enc + ("embeddings_ln",))
  for i in range(cfg.num_hidden_layers):
    p, ours = f"bert.encoder.layer.{i}.", enc + (f"layer_{i}",)
    for name in ("query", "key", "value"):
      table += [hf.Tensor(p + f"attention.self.{name}.weight", ours + ("attention", name, "kernel"),
                          lambda w: w.T.reshape(e, h, d), lambda w: w.reshape(e, e).T),
                hf.Tensor(p + f"attention.self.{name}.bias", ours + ("attention", name, "bias"),
                          lambda b: b.reshape(h, d), lambda b: b.reshape(e))]
    table += [hf.Tensor(p + "attention.output.dense.weight", ours + ("attention", "out", "kernel"),
                        lambda w: w.T.reshape(h, d, e), lambda w: w.reshape(e, e).T),
              hf.Tensor(p + "attention.output.dense.bias", ours + ("attention", "out", "bias"))]
    table += ln(p + "attention.output.LayerNorm", ours + ("attention_ln",))
    table += dense(p + "intermediate.dense", ours + ("intermediate",))
    table += dense(p + "output.dense", ours + ("output",))
    table += ln(p + "output.LayerNorm", ours + ("output_ln",))
  if architecture == "BertForMaskedLM":
    table += dense("cls.predictions.transform.dense", ("mlm_dense",))
    table += ln("cls.predictions.transform.LayerNorm", ("mlm_ln",))
    table.append(hf.Tensor("cls.predictions.bias", ("mlm_bias",)))
  else:
    table += dense("bert.pooler.dense", ("pooler",)) + dense("classifier", ("classifier",))
  return table


def _config_from_hf(saved: dict, path: str) -> BertConfig:
  if saved.get("model_type") != "bert":
    raise ValueError(f"{path}/config.json describes a {saved.get('model_type')!r} model, not bert")
  if saved.get("hidden_act", "gelu") != "gelu":
    raise ValueError(f"unsupported hidden_act {saved['hidden_act']!r} (BERT uses gelu)")
  if saved.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"unsupported position_embedding_type {saved['position_embedding_type']!r} (BERT uses absolute)")
  labels = saved.get("num_labels") or len(saved.get("id2label") or {}) or 2
  return BertConfig(vocab_size=saved["vocab_size"], hidden_size=saved["hidden_size"],
                    num_hidden_layers=saved["num_hidden_layers"], num_attention_heads=saved["num_attention_heads"],
                    intermediate_size=saved["intermediate_size"],
                    max_position_embeddings=saved["max_position_embeddings"],
                    type_vocab_size=saved.get("type_vocab_size", 2), layer_norm_eps=saved.get("layer_norm_eps", 1e-12),
                    initializer_range=saved.get("initializer_range", 0.02),
                    hidden_dropout_prob=saved.get("hidden_dropout_prob", 0.1),
                    attention_probs_dropout_prob=saved.get("attention_probs_dropout_prob", 0.1),
                    pad_token_id=saved.get("pad_token_id") or 0, num_labels=labels)


def read_hf_config(path: str) -> tuple[BertConfig, str]:
  """(BertConfig, architecture) of a directory saved by transformers.

  Raises:
    ValueError: without config.json, or for another model type or architecture.
  """
  config_path = os.path.join(path, "config.json")
  if not os.path.exists(config_path):
    raise ValueError(f"{path} is not a saved BERT: config.json is missing")
  with open(config_path) as f:
    hf = json.load(f)
  cfg = _config_from_hf(hf, path)
  architecture = (hf.get("architectures") or ["BertForMaskedLM"])[0]
  if architecture not in ARCHITECTURES:
    raise ValueError(f"{path} holds a {architecture}; readable: {', '.join(ARCHITECTURES)}")
  return cfg, architecture


def load_hf(path: str, architecture: str | None = None, **overrides):
  """Reads a directory saved by transformers (config.json + model.safetensors) without torch.

  Args:
    path: the directory.
    architecture: "BertForMaskedLM" or "BertForSequenceClassification" (default: the one in
      config.json). Reading an encoder-only subset is done by taking params["bert"].
    **overrides: BertConfig fields to replace (attention, dtype, hidden_dropout_prob, scan_layers, ...).

  Returns:
    (module, params) with params the dict to pass as {"params": params}, in the layout of the
    config's scan_layers.

  Raises:
    ValueError: without config.json or model.safetensors, for another architecture, or when a
      tensor is missing or has another shape (the message names it).
  """
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  cfg, saved_architecture = read_hf_config(path)
  architecture = architecture or saved_architecture
  if architecture not in ARCHITECTURES:
    raise ValueError(f"unknown architecture {architecture!r}; choose one of: {', '.join(ARCHITECTURES)}")
  weights_path = os.path.join(path, "model.safetensors")
  if not os.path.exists(weights_path):
    raise ValueError(f"{path} is not a saved BERT: model.safetensors is missing")
  cfg = dataclasses.replace(cfg, **overrides)
  tensors = load_file(weights_path)
  loop_model = MODELS[architecture](dataclasses.replace(cfg, scan_layers=False))  # the table's layout
  shapes = nn.unbox(jax.eval_shape(lambda: loop_model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))))
  params = hf.read(_hf_table(cfg, architecture), tensors, shapes["params"], weights_path)
  if cfg.scan_layers:
    params["bert"] = layers.stack_blocks(params["bert"], "layer", cfg.num_hidden_layers)
  model = MODELS[architecture](cfg)
  return model, params


def save_hf(path: str, cfg: BertConfig, params, architecture: str = "BertForMaskedLM") -> None:
  """Writes config.json + model.safetensors that transformers' `architecture`.from_pretrained loads.

  `params` are in the layout of cfg.scan_layers (stacked blocks are written one by one).
  """
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  params = nn.unbox(params)
  if cfg.scan_layers:
    params = {**params, "bert": layers.unstack_blocks(params["bert"], "layer")}
  os.makedirs(path, exist_ok=True)
  save_file(hf.write(_hf_table(cfg, architecture), params), os.path.join(path, "model.safetensors"),
            metadata={"format": "pt"})
  saved = {"model_type": "bert", "architectures": [architecture], "vocab_size": cfg.vocab_size,
           "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers,
           "num_attention_heads": cfg.num_attention_heads, "intermediate_size": cfg.intermediate_size,
           "max_position_embeddings": cfg.max_position_embeddings, "type_vocab_size": cfg.type_vocab_size,
           "layer_norm_eps": cfg.layer_norm_eps, "initializer_range": cfg.initializer_range, "hidden_act": "gelu",
           "hidden_dropout_prob": cfg.hidden_dropout_prob,
           "attention_probs_dropout_prob": cfg.attention_probs_dropout_prob,
           "pad_token_id": cfg.pad_token_id, "tie_word_embeddings": True, "position_embedding_type": "absolute"}
  if architecture == "BertForSequenceClassification":
    saved["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
    saved["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(saved, f, indent=2)


# ---------------------------------------------------------------------------------------
# Fine-tuning from pre-trained weights (the loop's plug-ins are research/tasks/bert.py).


def with_encoder(variables, encoder):
  """`variables` (a classifier's init, boxed) with its "bert" subtree replaced by `encoder`'s values.

  The logical axis names of the fresh init are kept, so the loop shards the copied weights
  like any others. Shapes must agree (the caller builds the classifier from the same config).
  """
  keep_box = lambda box, value: box.replace_boxed(jnp.asarray(value)) if isinstance(box, nn.meta.AxisMetadata) \
      else jnp.asarray(value)
  params = dict(variables["params"])
  params["bert"] = jax.tree.map(keep_box, params["bert"], nn.unbox(encoder),
                                is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
  return {**variables, "params": params}
