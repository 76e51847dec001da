"""Text-to-image latent diffusion's plug-in for the loop: a denoiser on a frozen autoencoder's latents,
conditioned on a frozen CLIP text tower's token states.

    frozen = latent_diffusion.Frozen(ae_model, ae_params, scaling_factor, clip_model, clip_params, tokenizer)
    data, contexts = latent_diffusion.prepare(config, frozen, train)          # latents and caption ids, once
    task = latent_diffusion.make_task(config, frozen, contexts)               # a research.train.Task
    run = research.train.train(task, config, workdir, data, latent_diffusion.eval_data(frozen, config))

The training images are encoded once with the autoencoder's posterior mean, times its scaling
factor (Rombach et al., section 4.3.2), and each distinct training caption's token states
(research/models/clip.py `text_states`) once: an example is its latent and the index of its
caption's states. `config.caption_dropout` (traced) replaces a caption's states by the empty
caption's (<sot> <eot>), the null context of classifier-free guidance (`config.guidance_scale`,
traced). Samples are drawn with research/models/diffusion.py's DDIM sampler and decoded with the
autoencoder.

The evaluation (pure) draws `num_samples` images for prompts cycling over every (colour, shape)
pair, seen and held out of training (research.data.shapes.HELD_OUT_PAIRS), and reports their
CLIP scores (research.models.clip.clip_score, 100 x cosine) against their prompts:
`clip_score`, `clip_score_seen`, `clip_score_held_out`. Given the shapes attribute reader
(`Frozen.reader`, research/tasks/shapes_reader.py), it also reports how often the reader reads
back what each prompt names: `prompt_accuracy` (every named attribute right), its `_seen` and
`_held_out` shares, and `colour_accuracy`, `shape_accuracy`, `size_accuracy`, `position_accuracy`.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import optim
from research.checks import ConfigError, check_choice, check_positive
from research.data import captions, shapes
from research.models import clip as clip_lib
from research.models import cond_unet as cond_unet_lib
from research.models import dit as dit_lib
from research.models.autoencoder_kl import AutoencoderKL
from research.models.diffusion import (PREDICTIONS, SCHEDULES, classifier_free_guidance, ddim_timesteps, loss,
                                       make_schedule, sample_ddim)
from research.tasks import clip as clip_tasks
from research.tasks import shapes_reader
from research.train import Task, base_config, check_common

DENOISERS = ("unet", "dit")
TAUS = ("linear", "quadratic")
# Sizes and positions of the evaluation prompts cycle with the (colour, shape) pairs.
PROMPT_TEMPLATE = 0  # "a {size} {colour} {shape} at the {position}"


def default_config() -> ml_collections.ConfigDict:
  """The loop's fields and the latent denoiser's (a small text-conditioned U-Net)."""
  config = base_config()
  config.dataset = "shapes"
  config.model = "unet"  # unet (research/models/cond_unet.py) or dit (research/models/dit.py with context_dim)
  config.unet_channels = (64, 128)  # block_out_channels: one level per entry, each after the first halves H, W
  config.unet_layers = 1  # ResNet blocks per down level
  config.unet_heads = 4  # attention heads per level
  config.unet_groups = 16  # GroupNorm groups
  config.dit = "DiT-T/1"  # a research.models.dit name (model=dit); cross-attention to the context
  config.dropout = 0.0  # U-Net ResNet dropout
  config.caption_dropout = 0.1  # share of training captions replaced by the empty caption (traced)
  config.guidance_scale = 3.0  # classifier-free guidance w of the sampler (traced; 1: conditional only)
  config.schedule = "linear"
  config.num_train_steps = 1000  # T
  config.prediction = "epsilon"
  config.sample_steps = 25  # DDIM steps
  config.tau = "linear"  # DDIM sub-sequence
  config.eta = 0.0  # DDIM eta (0: deterministic)
  config.num_samples = 42  # evaluation samples: two per (colour, shape) pair
  config.sample_batch = 42  # samples drawn at once
  config.steps = 3000
  config.batch_size = 64
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.weight_decay = 0.0
  config.optimizer.schedule = "warmup_cosine"
  config.optimizer.warmup_steps = 100
  config.log_every = 100
  config.eval_every = 0
  config.checkpoint_every = 500
  return config


def smoke(config: ml_collections.ConfigDict) -> None:
  """Shrinks `config` to a run of seconds (tests)."""
  config.unet_channels = (32,)
  config.unet_heads, config.unet_groups = 2, 8
  config.steps, config.batch_size = 20, 16
  config.sample_steps = 4
  config.num_samples = config.sample_batch = 8
  config.steps_per_call = 10
  config.log_every = config.checkpoint_every = 10
  config.optimizer.warmup_steps = 5
  config.prefetch = 0


def check_config(config) -> None:
  """Raises ConfigError on a bad field, before anything is loaded, compiled or written."""
  check_common(config)
  check_choice("model", config.model, DENOISERS)
  check_choice("schedule", config.schedule, SCHEDULES)
  check_choice("prediction", config.prediction, PREDICTIONS)
  check_choice("tau", config.tau, TAUS)
  for name in ("unet_layers", "unet_heads", "unet_groups", "num_train_steps", "sample_steps", "num_samples",
               "sample_batch"):
    check_positive(name, config[name])
  if not 0.0 <= config.caption_dropout < 1.0:
    raise ConfigError(f"caption_dropout must be in [0, 1), got {config.caption_dropout}")
  if config.sample_steps > config.num_train_steps:
    raise ConfigError(f"sample_steps {config.sample_steps} exceeds num_train_steps {config.num_train_steps}")


class Frozen(NamedTuple):
  """The frozen models a latent denoiser reads: the autoencoder and CLIP (params without the "params" key), and
  optionally the shapes attribute reader that scores its samples (research.tasks.shapes_reader: `model()` and
  the cached space's params)."""

  autoencoder: AutoencoderKL
  autoencoder_params: Any
  scaling_factor: float
  clip: clip_lib.CLIP
  clip_params: Any
  tokenizer: captions.CaptionTokenizer
  reader: Any = None
  reader_params: Any = None

  @property
  def latent_shape(self) -> tuple[int, int, int]:
    return self.autoencoder.cfg.latent_shape(shapes.SIZE, shapes.SIZE)

  @property
  def context_length(self) -> int:
    return self.clip.cfg.context_length


def encode_prompts(frozen: Frozen, texts) -> tuple[np.ndarray, np.ndarray]:
  """Token ids and mask (N, context_length) of `texts`.

  Raises:
    ValueError: for an empty text, a word outside the vocabulary (named) or a text too long.
  """
  return frozen.tokenizer.encode(list(texts), frozen.context_length)


def null_ids(frozen: Frozen) -> tuple[np.ndarray, np.ndarray]:
  """The empty caption, <sot> <eot>, as ids and mask (1, context_length)."""
  ids = np.full((1, frozen.context_length), captions.PAD_ID, np.int32)
  ids[0, :2] = (captions.SOT_ID, captions.EOT_ID)
  return ids, ids != captions.PAD_ID


def text_states(frozen: Frozen, ids, mask, batch_size: int = 256) -> np.ndarray:
  """CLIP's token states (N, context_length, text_width) of ids (N, context_length)."""
  fn = jax.jit(lambda i, m: frozen.clip.apply({"params": frozen.clip_params}, i, m,
                                              method=clip_lib.CLIP.text_states))
  return np.concatenate([np.asarray(fn(ids[i:i + batch_size], mask[i:i + batch_size]))
                         for i in range(0, len(ids), batch_size)])


def encode_images(frozen: Frozen, images, batch_size: int = 256) -> np.ndarray:
  """Scaled latents (N, h, w, c) of uint8 images: the posterior mean x the scaling factor."""
  fn = jax.jit(lambda x: frozen.autoencoder.apply({"params": frozen.autoencoder_params},
                                                  x.astype(jnp.float32) / 127.5 - 1.0,
                                                  method=AutoencoderKL.encode)[0] * frozen.scaling_factor)
  return np.concatenate([np.asarray(fn(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])


def prepare(config, frozen: Frozen, train) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """The training data, computed once: ({"latent": (N, h, w, c), "caption": (N,) int32}, contexts).

  `contexts` (U + 1, context_length, text_width) holds the states of the U distinct training
  captions, then the empty caption's (the null context); "caption" indexes it.
  """
  check_config(config)
  texts = [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in train["caption"]]
  unique, index = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
  ids, mask = encode_prompts(frozen, unique)
  nids, nmask = null_ids(frozen)
  contexts = text_states(frozen, np.concatenate([ids, nids]), np.concatenate([mask, nmask]))
  data = {"latent": encode_images(frozen, np.asarray(train["image"])), "caption": index.astype(np.int32)}
  return data, contexts


def eval_prompts(count: int) -> tuple[list[str], np.ndarray]:
  """`count` prompts cycling over every (colour, shape) pair, and whether each pair is held out (N,) bool.

  Sizes and positions cycle too (coprime with the 21 pairs), in the first training template.
  """
  pairs = [(c, s) for c in captions.COLOURS for s in captions.SHAPES]
  texts, held = [], []
  for i in range(count):
    colour, shape = pairs[i % len(pairs)]
    attributes = {"colour": colour, "shape": shape, "size": captions.SIZES[i % len(captions.SIZES)],
                  "position": captions.POSITIONS[(i // len(pairs) + i) % len(captions.POSITIONS)]}
    texts.append(captions.shapes_caption(attributes, PROMPT_TEMPLATE))
    held.append((colour, shape) in shapes.HELD_OUT_PAIRS)
  return texts, np.asarray(held)


def held_out_pairs(labels: np.ndarray) -> np.ndarray:
  """Whether each prompt names a held-out (colour, shape) pair, (N,) bool, from its `shapes_reader.prompt_labels`."""
  colours, kinds = shapes.ATTRIBUTES["colour"], shapes.ATTRIBUTES["shape"]
  held = {(colours.index(c), kinds.index(k)) for c, k in shapes.HELD_OUT_PAIRS}
  pairs = labels[:, [shapes_reader.ATTRIBUTES.index("colour"), shapes_reader.ATTRIBUTES.index("shape")]]
  return np.asarray([tuple(pair) in held for pair in pairs.tolist()], bool).reshape(len(labels))


def eval_data(frozen: Frozen, config, texts=None) -> dict[str, np.ndarray]:
  """The evaluation split (default prompts: `eval_prompts`): the prompts' ids, mask and states, the attribute
  indices they name (`shapes_reader.prompt_labels`, -1 where none) and whether their pair is held out."""
  if texts is None:
    texts, _ = eval_prompts(config.num_samples)
  ids, mask = encode_prompts(frozen, texts)
  labels = shapes_reader.prompt_labels(texts)
  return {"input_ids": ids, "attention_mask": mask, "context": text_states(frozen, ids, mask),
          "attributes": labels, "held_out": held_out_pairs(labels)}


def make_denoiser(config, latent_shape, context_dim: int):
  """The denoiser module and `apply(params, x, t, context, train, key)`."""
  h, _, c = latent_shape
  if config.model == "unet":
    levels = len(config.unet_channels)
    try:
      cfg = cond_unet_lib.CondUNetConfig(
          sample_size=h, in_channels=c, out_channels=c,
          down_block_types=("CrossAttnDownBlock2D",) * levels, up_block_types=("CrossAttnUpBlock2D",) * levels,
          block_out_channels=tuple(config.unet_channels), layers_per_block=config.unet_layers,
          num_attention_heads=config.unet_heads, cross_attention_dim=context_dim, norm_num_groups=config.unet_groups,
          dropout=config.dropout, dtype=config.dtype)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    if h % 2 ** (levels - 1):
      raise ConfigError(f"{levels} U-Net levels do not fit the {h}x{h} latents")
    model = cond_unet_lib.CondUNet(cfg)

    def apply(params, x, t, context, train, key):
      return model.apply(params, x, t, context, train=train, rngs={"dropout": key} if train else None)
  else:
    try:
      cfg = dit_lib.config(config.dit, input_size=h, in_channels=c, num_classes=0, learn_sigma=False,
                           conditioning="cross_attention", context_dim=context_dim, dtype=config.dtype)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    model = dit_lib.DiT(cfg)

    def apply(params, x, t, context, train, key):
      del train, key
      return model.apply(params, x, t, context)
  return model, apply


def make_task(config, frozen: Frozen, contexts: np.ndarray) -> Task:
  """The text-conditioned latent denoiser as a research.train.Task.

  Args:
    config: a config of `default_config`'s fields.
    frozen: the autoencoder and CLIP.
    contexts: `prepare`'s caption states, the null context last.

  Returns:
    A Task whose loss is the denoising loss of `config.prediction` on the batch's latents with
    its captions' states (each replaced by the null context with probability `caption_dropout`),
    whose pure `evaluate` draws one image per prompt of the evaluation data (`eval_data`) with
    DDIM and guidance `guidance_scale`, decodes them and reports their CLIP scores and, with
    `frozen.reader`, their prompt accuracy (module docstring); its picture is `samples`. Traced hyperparameters: caption_dropout, guidance_scale.
  """
  check_config(config)
  latent_shape = frozen.latent_shape
  contexts = jnp.asarray(contexts)  # (U + 1, L, D)
  null = contexts[-1:]  # (1, L, D)
  schedule = make_schedule(config.schedule, config.num_train_steps)
  model, apply = make_denoiser(config, latent_shape, contexts.shape[-1])
  timesteps = ddim_timesteps(config.num_train_steps, config.sample_steps, config.tau)

  def init(key, batch):
    x = batch["latent"]
    return model.init(key, x, jnp.zeros((x.shape[0],), jnp.int32), contexts[batch["caption"]])

  def loss_fn(params, batch, key, train, hparams=None):
    k_drop, k_loss, k_dropout = jax.random.split(key, 3)
    context = contexts[batch["caption"]]  # (B, L, D)
    if train:
      rate = config.caption_dropout if not hparams else hparams["caption_dropout"]
      drop = jax.random.bernoulli(k_drop, rate, (context.shape[0],))
      context = jnp.where(drop[:, None, None], null, context)
    value = loss(schedule, lambda x_t, t: apply(params, x_t, t, context, train, k_dropout), batch["latent"], k_loss,
                 config.prediction)
    return value, {}

  def decode(z):
    x = frozen.autoencoder.apply({"params": frozen.autoencoder_params}, z / frozen.scaling_factor,
                                 method=AutoencoderKL.decode)
    return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)  # (B, H, W, C) in [0, 1]

  def draw(params, key, context, guidance):
    """Images (B, H, W, 3) in [0, 1] for contexts (B, L, D)."""
    cond_fn = lambda x, t, c: apply(params, x, t, c, False, None)
    denoise = classifier_free_guidance(cond_fn, context, null[0], guidance)
    z = sample_ddim(schedule, denoise, key, (context.shape[0],) + tuple(latent_shape), timesteps,
                    jnp.float32(config.eta), prediction=config.prediction)
    return decode(z)

  def generate(params, key, context, guidance):
    # Chunks of sample_batch (the last padded) as one lax.map; chunk i uses fold_in(key, i).
    n = context.shape[0]
    batch = min(config.sample_batch, n)
    chunks = -(-n // batch)
    padded = jnp.concatenate([context, jnp.broadcast_to(null, (chunks * batch - n,) + null.shape[1:])])
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(chunks))
    images = jax.lax.map(lambda a: draw(params, a[0], a[1], guidance),
                         (keys, padded.reshape((chunks, batch) + context.shape[1:])))
    return images.reshape((chunks * batch,) + images.shape[2:])[:n]

  def guidance_scale(hparams):
    return hparams["guidance_scale"] if hparams else jnp.float32(config.guidance_scale)

  def evaluate(params, key, data, hparams=None):
    images = generate(params, key, data["context"], guidance_scale(hparams))
    scores = clip_lib.clip_score(frozen.clip, frozen.clip_params, clip_tasks.pixel_values(images), data["input_ids"],
                                 data["attention_mask"])  # (N,)
    held = data["held_out"]
    out = {"samples": images, "clip_score": jnp.mean(scores), "clip_score_seen": shapes_reader.masked_mean(scores, ~held),
           "clip_score_held_out": shapes_reader.masked_mean(scores, held)}
    if frozen.reader is not None:
      logits, _ = frozen.reader.apply(frozen.reader_params, images)
      out.update(shapes_reader.prompt_accuracy(logits, data["attributes"], held))
    return out

  draw_all = jax.jit(generate)

  def sample(params, key, hparams=None, data=None):
    """{"samples": images} for the prompts of `data` (an `eval_data`; default: the evaluation prompts)."""
    data = eval_data(frozen, config) if data is None else data
    return {"samples": np.asarray(draw_all(params, key, jnp.asarray(data["context"]), guidance_scale(hparams)))}

  return Task(init=init, tx=optim.make(config.optimizer, config.steps), loss=loss_fn, evaluate=evaluate,
              evaluate_pure=True, pictures=("samples",), sample=sample,
              hparams={"caption_dropout": config.caption_dropout, "guidance_scale": config.guidance_scale},
              learning_rate=optim.learning_rate_fn(config.optimizer, config.steps))


def write_samples(path_prefix: str, images: np.ndarray, prompts) -> None:
  """`<prefix>.npz` (images (N, H, W, 3) float32 in [0, 1], prompts (N,) str) and `<prefix>.png` (a grid, each
  image with its prompt under it)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  images = np.asarray(images, np.float32)
  prompts = np.asarray([str(p) for p in prompts])
  np.savez(path_prefix + ".npz", images=images, prompts=prompts)
  cols = min(len(images), 6)
  rows = -(-len(images) // cols)
  height = 2.2 * rows  # inches: 1.8 for an image, 0.4 for its two caption lines
  fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, height), squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, image, prompt in zip(axes.ravel(), images, prompts):
    ax.imshow(image, interpolation="nearest")
    words = prompt.split()
    half = (len(words) + 1) // 2
    ax.text(0.5, -0.04, " ".join(words[:half]) + "\n" + " ".join(words[half:]), fontsize=7, ha="center", va="top",
            transform=ax.transAxes)
  fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.05 / height, bottom=0.4 / height, wspace=0.1,
                      hspace=0.25)
  fig.savefig(path_prefix + ".png", dpi=100)
  plt.close(fig)

