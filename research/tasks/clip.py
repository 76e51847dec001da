"""CLIP's plug-in for the loop: contrastive training on the shapes captions, zero-shot and retrieval evaluation.

    config = clip.default_config()                     # research.train.base_config() + the fields below
    tokenizer, train_data, eval_data = clip.prepare(config)
    task = clip.make_task(config, tokenizer)           # a research.train.Task
    run = research.train.train(task, config, workdir, train_data, eval_data)

Training pairs each image with its caption (templates 0 .. TRAIN_TEMPLATES - 1 only); `config.loss`
picks CLIP's softmax or SigLIP's sigmoid loss. The evaluation (pure: a sweep's members are scored in
one vmapped program) reports, on the first `eval_examples` test images:

  <attribute>_accuracy   zero-shot classification of colour, shape, size and position. The class
                         prompts are the captions of every attribute combination in the held-out
                         templates (`prompt_templates`), never seen in training; a class's
                         ensemble averages every prompt that names it (e.g. "red": every red
                         shape of any size at any position), so the other attributes are
                         marginalised out. Chance is 1/7, 1/3, 1/2 and 1/9.
  image_to_text_recall@k, text_to_image_recall@k   retrieval between the test images and their
                         captions; a caption of another image with the same four attributes counts
                         as a match (it describes the image equally well).

The model, its losses and the evaluation's parts are research/models/clip.py.
"""

import jax.numpy as jnp
import ml_collections
import numpy as np

from research import data as data_lib
from research import optim
from research.checks import ConfigError, check_choice, check_positive
from research.data import captions, shapes
from research.models import attention as attention_lib
from research.models import clip as clip_lib
from research.models import layers
from research.train import Task, base_config, check_common

ATTRIBUTES = tuple(shapes.ATTRIBUTES)  # colour, shape, size, position: each scored zero-shot
PROMPT_TEMPLATES = ("held_out", "train", "all")  # config.prompt_templates


def default_config() -> ml_collections.ConfigDict:
  """The loop's fields and CLIP's, with defaults that train on shapes in minutes on a laptop CPU."""
  config = base_config()
  config.dataset = "shapes"  # the captioned images (research/data/shapes.py)
  config.loss = "softmax"  # softmax (CLIP's symmetric InfoNCE) or sigmoid (SigLIP, with a learned bias)
  config.logit_bias_init = -10.0  # sigmoid: the initial bias b (SigLIP's -10 suits its batches of thousands)
  config.patch_size = 4  # ViT patches (p x p pixels; divides the 32-pixel images)
  config.vision_width = 96  # image tower: width
  config.vision_layers = 3  # image tower: blocks
  config.vision_heads = 4  # image tower: attention heads
  config.vision_mlp = 384  # image tower: MLP width
  config.text_width = 64  # text tower: width
  config.text_layers = 2  # text tower: blocks
  config.text_heads = 4  # text tower: attention heads
  config.text_mlp = 256  # text tower: MLP width
  config.context_length = 16  # text positions (the longest caption is 13 tokens with <sot> and <eot>)
  config.projection_dim = 64  # the joint embedding's width
  config.attention = "auto"  # one of research.models.attention.IMPLEMENTATIONS
  config.scan_layers = False  # each tower's blocks as one nn.scan
  config.remat = "none"  # recompute activations in the backward pass: none, block or dots
  config.steps = 2000
  config.batch_size = 128  # image-caption pairs per update (the contrastive negatives)
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 1e-3  # peak, after warmup
  config.optimizer.b2 = 0.98  # CLIP's
  config.optimizer.weight_decay = 0.1  # kernels only (research.optim.decay_mask)
  config.optimizer.schedule = "warmup_cosine"
  config.optimizer.warmup_steps = 100
  config.log_every = 100
  config.eval_every = 500  # zero-shot accuracies and recall every this many steps
  config.checkpoint_every = 500
  config.eval_examples = 1000  # test images scored (the first ones of the test split)
  config.eval_batch_size = 250  # images or texts per forward pass of the evaluation
  config.prompt_templates = "held_out"  # templates of the zero-shot prompts: held_out, train or all
  return config


def smoke(config: ml_collections.ConfigDict) -> None:
  """Shrinks `config` to a run of seconds (tests): one small block per tower, 8-pixel patches, 100 steps."""
  config.patch_size = 8
  config.vision_width = config.text_width = config.projection_dim = 32
  config.vision_layers = config.text_layers = 1
  config.vision_heads = config.text_heads = 2
  config.vision_mlp = config.text_mlp = 64
  config.steps, config.batch_size = 100, 32
  config.optimizer.learning_rate = 5e-3
  config.optimizer.warmup_steps = 10
  config.steps_per_call = 25  # a tiny model: one dispatch per 25 steps
  config.log_every, config.checkpoint_every = 50, 100
  config.eval_every = 0
  config.prefetch = 0
  config.eval_examples, config.eval_batch_size = 200, 200


def check_config(config) -> None:
  """Raises ConfigError on a bad field, before anything is loaded, compiled or written."""
  check_common(config)
  check_choice("dataset", config.dataset, ("shapes",))
  check_choice("loss", config.loss, clip_lib.LOSSES)
  check_choice("attention", config.attention, attention_lib.IMPLEMENTATIONS)
  check_choice("remat", config.remat, layers.REMATS)
  check_choice("prompt_templates", config.prompt_templates, PROMPT_TEMPLATES)
  for name in ("patch_size", "vision_width", "vision_layers", "vision_heads", "vision_mlp", "text_width",
               "text_layers", "text_heads", "text_mlp", "context_length", "projection_dim", "eval_examples",
               "eval_batch_size"):
    check_positive(name, config[name])
  if shapes.SIZE % config.patch_size:
    raise ConfigError(f"patch_size {config.patch_size} does not divide the {shapes.SIZE}-pixel images")
  for tower in ("vision", "text"):
    if config[f"{tower}_width"] % config[f"{tower}_heads"]:
      raise ConfigError(f"{tower}_width {config[f'{tower}_width']} is not divisible by {tower}_heads "
                        f"{config[f'{tower}_heads']}")


def model_config(config, vocab_size: int) -> clip_lib.CLIPConfig:
  """The CLIPConfig of an experiment config, for a tokenizer of `vocab_size` ids."""
  return clip_lib.CLIPConfig(
      image_size=shapes.SIZE, patch_size=config.patch_size, vision_width=config.vision_width,
      vision_layers=config.vision_layers, vision_heads=config.vision_heads, vision_mlp=config.vision_mlp,
      vocab_size=vocab_size, context_length=config.context_length, text_width=config.text_width,
      text_layers=config.text_layers, text_heads=config.text_heads, text_mlp=config.text_mlp,
      projection_dim=config.projection_dim, eos_token_id=captions.EOT_ID, pad_token_id=captions.PAD_ID,
      bos_token_id=captions.SOT_ID, loss=config.loss, logit_bias_init=config.logit_bias_init,
      attention=config.attention, scan_layers=config.scan_layers,
      remat=config.remat, dtype=config.dtype)


def pixel_values(images):
  """Images (N, H, W, 3), uint8 or float in [0, 1] (a generator's samples), as the model reads them: in [-1, 1]."""
  x = images.astype(jnp.float32)
  return (x / 127.5 - 1.0) if images.dtype == jnp.uint8 else x * 2.0 - 1.0


# ---------------------------------------------------------------------------------------
# Data: captions as token ids, the zero-shot prompts and the retrieval groups.


def group_of(split) -> np.ndarray:
  """(N,) one id per combination of the four attributes: examples of one group describe each other."""
  group = np.zeros(len(split["shape"]), np.int32)
  for name in ATTRIBUTES:
    group = group * len(shapes.ATTRIBUTES[name]) + np.asarray(split[name], np.int32)
  return group


def prompts(tokenizer: captions.CaptionTokenizer, context_length: int, templates: str = "held_out"):
  """The zero-shot prompt pool: the caption of every attribute combination in each chosen template.

  Args:
    tokenizer: the training captions' tokenizer.
    context_length: token positions.
    templates: "held_out" (never seen in training), "train" or "all".

  Returns:
    {"prompt_ids", "prompt_mask": (M, context_length), "prompt_<attribute>": (M,) the class each
    prompt names}.
  """
  first, count = captions.TRAIN_TEMPLATES["shapes"], len(captions.SHAPE_TEMPLATES)
  chosen = {"held_out": range(first, count), "train": range(first), "all": range(count)}[templates]
  texts, labels = [], {name: [] for name in ATTRIBUTES}
  for template in chosen:
    for index in np.ndindex(*(len(shapes.ATTRIBUTES[name]) for name in ATTRIBUTES)):
      texts.append(captions.shapes_caption({name: shapes.ATTRIBUTES[name][i] for name, i in zip(ATTRIBUTES, index)},
                                           template))
      for name, i in zip(ATTRIBUTES, index):
        labels[name].append(i)
  ids, mask = tokenizer.encode(texts, context_length)
  return {"prompt_ids": ids, "prompt_mask": mask, **{f"prompt_{k}": np.asarray(v, np.int32) for k, v in labels.items()}}


def encode(split, tokenizer: captions.CaptionTokenizer, context_length: int) -> dict[str, np.ndarray]:
  """A shapes split (research.data.load's arrays) as arrays: image, caption ids and mask, attributes, group."""
  ids, mask = tokenizer.encode(list(split["caption"]), context_length)
  out = {"image": np.asarray(split["image"]), "input_ids": ids, "attention_mask": mask, "group": group_of(split)}
  out.update({name: np.asarray(split[name], np.int32) for name in ATTRIBUTES})
  return out


def prepare(config, directory: str | None = None):
  """(tokenizer, training data, evaluation data) of `config.dataset`, for `make_task` and research.train.train.

  The tokenizer is fitted on the training captions; the training data are the images and their
  captions' ids and masks; the evaluation data are the first `config.eval_examples` test examples
  (`encode`) and the prompt pool of `config.prompt_templates` (`prompts`).

  Args:
    config: a config of `default_config`'s fields.
    directory: the TFDS data directory (default: research.data.data_dir()).
  """
  check_config(config)
  train = data_lib.load(config.dataset, "train", directory)
  test = data_lib.load(config.dataset, "test", directory)
  tokenizer = captions.CaptionTokenizer.fit(train["caption"])
  test = {k: v[:config.eval_examples] for k, v in test.items()}
  eval_data = {**encode(test, tokenizer, config.context_length),
               **prompts(tokenizer, config.context_length, config.prompt_templates)}
  pairs = encode(train, tokenizer, config.context_length)
  return tokenizer, {k: pairs[k] for k in ("image", "input_ids", "attention_mask")}, eval_data


# ---------------------------------------------------------------------------------------
# The task.


def make_task(config, tokenizer: captions.CaptionTokenizer) -> Task:
  """CLIP (or SigLIP) on image-caption pairs as a research.train.Task.

  Args:
    config: a config of `default_config`'s fields.
    tokenizer: the captions' tokenizer (its vocabulary sizes the text tower).

  Returns:
    A Task whose loss is `config.loss` over a batch of pairs (metrics: the in-batch image-to-caption
    accuracy and the logit scale), and whose pure `evaluate(params, key, eval_data, hparams)` gives
    the zero-shot accuracies and recall@1/5 of the module docstring. No hyperparameter is traced:
    the towers have no dropout, and the temperature (and SigLIP's bias) are learned parameters.
    The loss contrasts the pairs of one (micro)batch: with grad_accum > 1 each microbatch is its
    own set of negatives.
  """
  check_config(config)
  cfg = model_config(config, tokenizer.vocab_size)
  model = clip_lib.CLIP(cfg)

  def init(key, batch):
    return model.init(key, pixel_values(batch["image"]), batch["input_ids"], batch["attention_mask"])

  def loss(params, batch, key, train, hparams):
    del key, train, hparams  # nothing random, nothing traced
    logits_per_image, _ = model.apply(params, pixel_values(batch["image"]), batch["input_ids"],
                                      batch["attention_mask"])  # (B, B)
    labels = jnp.arange(logits_per_image.shape[0])
    metrics = {"batch_accuracy": jnp.mean(jnp.argmax(logits_per_image, axis=1) == labels),
               "logit_scale": model.apply(params, method=model.scale)}
    return clip_lib.loss(cfg, logits_per_image), metrics

  def evaluate(params, key, eval_data, hparams):
    del key, hparams  # deterministic
    zero_shot = {name: clip_lib.ZeroShot(eval_data[name], eval_data[f"prompt_{name}"]) for name in ATTRIBUTES}
    return clip_lib.evaluate(model, params["params"], pixel_values(eval_data["image"]), eval_data["input_ids"],
                             eval_data["attention_mask"], eval_data["prompt_ids"], eval_data["prompt_mask"],
                             zero_shot, groups=eval_data["group"], batch_size=config.eval_batch_size)

  return Task(init=init, tx=optim.make(config.optimizer, config.steps), loss=loss, evaluate=evaluate,
              evaluate_pure=True, learning_rate=optim.learning_rate_fn(config.optimizer, config.steps))


def clip_score(model: clip_lib.CLIP, params, images, tokenizer: captions.CaptionTokenizer, texts,
               batch_size: int = 256):
  """CLIP scores (N,) of generated images (uint8, or float in [0, 1]) against the captions they were drawn for.

  Args:
    model, params: a CLIP trained by this task (`params` without the "params" key).
    images: (N, H, W, 3).
    tokenizer: the training captions' tokenizer.
    texts: N captions.
    batch_size: examples per forward pass.

  Raises:
    ValueError: for a word outside the tokenizer's vocabulary, or a caption too long (named).
  """
  ids, mask = tokenizer.encode(list(texts), model.cfg.context_length)
  return clip_lib.clip_score(model, params, pixel_values(jnp.asarray(images)), ids, mask, batch_size)
