r"""Text-to-image latent diffusion on shapes: a KL autoencoder, CLIP, then a text-conditioned denoiser on the latents.

  python -m experiments.text_to_image --workdir=/tmp/t2i
  python -m experiments.text_to_image --workdir=/tmp/t2i --config=experiments/text_to_image.py:smoke
  python -m experiments.text_to_image --workdir=/tmp/t2i --prompt="a large blue square at the bottom right" \
      --num_samples=16 --config.guidance_scale=3

Three stages (research.train.stages.Pipeline), each a run in `workdir/<stage>` that resumes from
its checkpoints when killed and is only read back once finished:

  autoencoder       research/tasks/autoencoder_kl.py on the shapes images (f = 2^(len(channel_mult) - 1));
                    its last evaluation measures the latent scaling factor.
  clip              research/tasks/clip.py on the shapes captions (its tokenizer in clip/tokenizer.json).
  latent_diffusion  research/tasks/latent_diffusion.py: the denoiser on the frozen autoencoder's scaled
                    latents, conditioned on the frozen CLIP text tower's token states, caption dropout for
                    classifier-free guidance.

A full run writes `samples.png` (each sample with its prompt under it) and `samples.npz` (images
(N, 32, 32, 3) float32 in [0, 1], prompts (N,)): the latent_diffusion stage's final evaluation
samples, for `latent_diffusion.num_samples` prompts cycling over the seen and held-out (colour,
shape) pairs with `latent_diffusion.guidance_scale`; and results.json with, of those samples:

  clip_score (_seen, _held_out)   CLIP score (100 x cosine) against their prompts, over all prompts and over the
                                  seen / held-out (colour, shape) pairs.
  prompt_accuracy (_seen,         the share of samples whose colour, shape, size and position the shapes
    _held_out)                    attribute reader (research/tasks/shapes_reader.py, trained apart on the
                                  shapes training split, its accuracy in its classifier.json) reads back as
                                  prompted; colour_accuracy, shape_accuracy, size_accuracy, position_accuracy
                                  each attribute's share.
  fid, kid (kid_se), precision,   in the reader's feature space against 5,000 shapes training images, at
    recall; fid_real, kid_real,   num_scored = min(num_samples, 2000) samples; "_real": the same of as many real
    ...; fid_ratio                test images (a perfect model's score at that count); fid_ratio = fid / fid_real.
  class_shares, classes_covered,  the reader's (colour, shape) pair of each sample: the 21 pairs' shares, how
    confidence                    many hold >= 2% of the samples, the mean largest pair probability.

and the autoencoder's test PSNR and scaling factor, CLIP's zero-shot accuracies, the stages' losses.

With --prompt, a workdir whose stages have all finished only samples: --num_samples images for
the prompt with `config.guidance_scale`, written as `prompt_samples.png` and `prompt_samples.npz`,
and a line with their prompt accuracy (all the attributes the prompt names read back, and each
one's share).
"""

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags

from research import data as data_lib
from research.data import captions
from research.models import autoencoder_kl as autoencoder_kl_lib
from research.models import clip as clip_lib
from research.tasks import autoencoder_kl as autoencoder_tasks
from research.tasks import clip as clip_tasks
from research.tasks import latent_diffusion as ld
from research.tasks import shapes_reader
from research.train import ConfigError, Pipeline, base_config, check_workdir, cli, train, write_results
from research.train import stages as stages_lib

STAGES = ("autoencoder", "clip", "latent_diffusion")
IMAGE_SHAPE = (32, 32, 3)

def _autoencoder_config() -> ml_collections.ConfigDict:
  """The KL autoencoder's loop config: f = 4 (32x32x3 -> 8x8x4)."""
  config = base_config()
  config.dataset = "shapes"
  config.channels = 32
  config.channel_mult = (1, 2, 2)
  config.layers_per_block = 1
  config.latent_channels = 4
  config.norm_groups = 8
  config.mid_attention = False
  config.attention = "auto"
  # l2, not the paper's l1 (which LDM pairs with perceptual and adversarial terms): under l1 alone a
  # pixel whose colour the latent does not carry yet decodes to the median of the colours, and the
  # median of red (1,0,0), green (0,1,0) and blue (0,0,1) per channel is black.
  config.reconstruction = "l2"
  config.kl_weight = 1e-6
  config.eval_batch_size = 250
  config.scaling_images = 1000
  config.steps = 500
  config.batch_size = 32
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.log_every = 100
  config.checkpoint_every = 250
  return config


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Seconds per stage, for tests."""
  config.train_images = 256
  ae = config.autoencoder
  ae.channels, ae.channel_mult, ae.norm_groups = 8, (1, 1, 1), 4
  ae.steps, ae.batch_size, ae.log_every, ae.checkpoint_every = 10, 8, 5, 10
  ae.eval_batch_size, ae.scaling_images, ae.prefetch = 64, 64, 0
  clip_tasks.smoke(config.clip)
  config.clip.steps, config.clip.log_every, config.clip.checkpoint_every = 20, 10, 20
  config.clip.steps_per_call, config.clip.eval_examples, config.clip.eval_batch_size = 10, 64, 64
  ld.smoke(config.latent_diffusion)
  # One call of 10 steps at batch 8: under the tests' cheap XLA flags the denoiser's step is the costliest part.
  config.latent_diffusion.steps, config.latent_diffusion.batch_size = 10, 8
  config.latent_diffusion.num_samples = config.latent_diffusion.sample_batch = 6


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config (63 minutes on 2 CPU cores shared with other work, 31.5 minutes of CPU time); "smoke".

  Measured with these models on 2 cores shared with other work (load average about 7): the
  autoencoder 0.9 steps/s (37 GFLOP per step), CLIP 1.2 steps/s (20 GFLOP), the latent denoiser
  0.9 steps/s (34 GFLOP), all about 30 GFLOP/s. At an assumed 2.5x that on idle cores, the 500 +
  500 + 1000 steps take about 230 + 170 + 450 s, plus compiles, encoding and sampling.
  """
  config = ml_collections.ConfigDict()
  config.seed = 0  # the final samples' key
  config.train_images = 20_000  # training images of every stage (the first ones of the split)
  config.guidance_scale = 3.0  # classifier-free guidance w of --prompt samples (the run's: latent_diffusion's)
  config.autoencoder = _autoencoder_config()  # stage autoencoder: research/tasks/autoencoder_kl.py
  config.clip = clip_tasks.default_config()  # stage clip: research/tasks/clip.py
  config.clip.steps = 500
  config.clip.optimizer.warmup_steps = 50
  config.clip.eval_every = 0
  config.clip.checkpoint_every = 250
  config.latent_diffusion = ld.default_config()  # stage latent_diffusion: research/tasks/latent_diffusion.py
  config.latent_diffusion.steps = 1000
  config.latent_diffusion.optimizer.warmup_steps = 50
  return cli.apply_presets(config, preset, PRESETS)


def check_config(config) -> None:
  """Raises ConfigError on a bad field, before anything is loaded, compiled or written."""
  ae = autoencoder_tasks.model_config(config.autoencoder, IMAGE_SHAPE)  # f must divide the image size
  clip_tasks.check_config(config.clip)
  ld.check_config(config.latent_diffusion)
  # The denoiser must fit the latents and the text states (built, not initialised).
  ld.make_denoiser(config.latent_diffusion, ae.latent_shape(*IMAGE_SHAPE[:2]), config.clip.text_width)
  if config.train_images < max(config.autoencoder.batch_size, config.clip.batch_size,
                               config.latent_diffusion.batch_size):
    raise ConfigError(f"train_images {config.train_images} is fewer than a stage's batch")


def _train_split(config):
  split = data_lib.load("shapes", "train")
  return {k: v[:config.train_images] for k, v in split.items()}


def train_autoencoder(config, workdir: str, train_split) :
  """Stage autoencoder: the model, its params and the latent scaling factor."""
  cfg = config.autoencoder
  test = data_lib.load("shapes", "test")
  task = autoencoder_tasks.make_task(cfg, test["image"][:cfg.eval_batch_size])
  out = Pipeline(workdir).stage("autoencoder", cfg.steps, lambda d: train(
      task, cfg, d, {"image": train_split["image"]},
      autoencoder_tasks.eval_data({"image": test["image"][:cfg.eval_batch_size]}, train_split, cfg)))
  model = autoencoder_kl_lib.AutoencoderKL(autoencoder_tasks.model_config(cfg, IMAGE_SHAPE))
  return model, out.params["params"], float(out.results["scaling_factor"]), out.results


def train_clip(config, workdir: str):
  """Stage clip: the model, its params, the tokenizer and the stage's results."""
  cfg = config.clip

  def run(directory):
    tokenizer, data, eval_data = clip_tasks.prepare(cfg)
    data = {k: v[:config.train_images] for k, v in data.items()}
    os.makedirs(directory, exist_ok=True)
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    train(clip_tasks.make_task(cfg, tokenizer), cfg, directory, data, eval_data)

  out = Pipeline(workdir).stage("clip", cfg.steps, run)
  tokenizer = captions.CaptionTokenizer.load(os.path.join(out.directory, "tokenizer.json"))
  model = clip_lib.CLIP(clip_tasks.model_config(cfg, tokenizer.vocab_size))
  return model, out.params["params"], tokenizer, out.results


def _finished(config, workdir: str) -> bool:
  return all(stages_lib.finished(workdir, name, config[name].steps) for name in STAGES)


def sample_prompt(config, workdir: str, prompt: str, num_samples: int) -> dict:
  """Draws `num_samples` images for `prompt` from a finished workdir; writes prompt_samples.{png,npz}."""
  if not prompt or not prompt.strip():
    raise ConfigError("--prompt is empty")
  if num_samples < 1:
    raise ConfigError(f"--num_samples must be positive, got {num_samples}")
  if not _finished(config, workdir):
    raise ConfigError(f"{workdir} has no finished text_to_image run (stages {', '.join(STAGES)}) to sample from")
  tokenizer = captions.CaptionTokenizer.load(os.path.join(workdir, "clip", "tokenizer.json"))
  try:
    tokenizer.encode([prompt], config.clip.context_length)
  except ValueError as e:
    raise ConfigError(f"--prompt: {e}") from None
  ae_model, ae_params, scale, _ = train_autoencoder(config, workdir, None)
  clip_model, clip_params, tokenizer, _ = train_clip(config, workdir)
  frozen = ld.Frozen(ae_model, ae_params, scale, clip_model, clip_params, tokenizer)
  images = _sample(config, workdir, frozen, [prompt] * num_samples)
  ld.write_samples(os.path.join(workdir, "prompt_samples"), images, [prompt] * num_samples)
  # What the attribute reader reads back, of the attributes the prompt names.
  reader = shapes_reader.shapes_reader()
  labels = shapes_reader.prompt_labels([prompt] * num_samples)
  logits, _ = shapes_reader.model().apply(reader.params, jnp.asarray(images))
  accuracy = {name: float(value) for name, value in
              shapes_reader.prompt_accuracy(logits, labels, ld.held_out_pairs(labels)).items()}
  named = {name: accuracy[f"{name}_accuracy"] for i, name in enumerate(shapes_reader.ATTRIBUTES) if labels[0, i] >= 0}
  each = ", ".join(f"{name} {value:.2f}" for name, value in named.items())
  print(f"prompt accuracy {accuracy['prompt_accuracy']:.2f} over {num_samples} samples: the share the shapes "
        f"attribute reader reads as prompted ({each})")
  return {"prompt": prompt, "num_samples": num_samples, "prompt_accuracy": accuracy["prompt_accuracy"],
          **{f"{name}_accuracy": value for name, value in named.items()}}


def _sample(config, workdir: str, frozen: ld.Frozen, texts) -> np.ndarray:
  """Images for `texts` from the finished latent_diffusion stage, with config.guidance_scale."""
  cfg = config.latent_diffusion
  out = stages_lib.stage_output(workdir, "latent_diffusion")
  ids, mask = ld.null_ids(frozen)
  task = ld.make_task(cfg, frozen, ld.text_states(frozen, ids, mask))
  data = ld.eval_data(frozen, cfg, texts)
  hparams = {"caption_dropout": np.float32(cfg.caption_dropout), "guidance_scale": np.float32(config.guidance_scale)}
  return task.sample(out.params, jax.random.PRNGKey(config.seed), hparams, data)["samples"]


def run(config, workdir: str, prompt: str | None = None, num_samples: int = 16) -> dict:
  """All stages in `workdir` (each resumes from its own checkpoints), then samples.{png,npz} and results.json.

  With `prompt`, only samples it from a finished workdir (see the module docstring).
  """
  t0 = time.perf_counter()
  check_config(config)
  check_workdir(workdir)
  if prompt is not None:
    return sample_prompt(config, workdir, prompt, num_samples)
  train_split = _train_split(config)
  ae_model, ae_params, scale, ae_results = train_autoencoder(config, workdir, train_split)
  clip_model, clip_params, tokenizer, clip_results = train_clip(config, workdir)
  reader = shapes_reader.shapes_reader()  # trained once (about a minute) and cached
  frozen = ld.Frozen(ae_model, ae_params, scale, clip_model, clip_params, tokenizer, shapes_reader.model(),
                     reader.params)
  cfg = config.latent_diffusion

  def run_diffusion(directory):
    data, contexts = ld.prepare(cfg, frozen, train_split)
    train(ld.make_task(cfg, frozen, contexts), cfg, directory, data, ld.eval_data(frozen, cfg))

  out = Pipeline(workdir).stage("latent_diffusion", cfg.steps, run_diffusion)
  # The stage's final evaluation drew and scored the samples: its pictures are this run's samples.
  texts, _ = ld.eval_prompts(cfg.num_samples)
  with np.load(os.path.join(out.directory, "samples.npz")) as drawn:
    images = drawn["images"]
  ld.write_samples(os.path.join(workdir, "samples"), images, texts)
  results = {name: out.results[name] for name in ("clip_score", "clip_score_seen", "clip_score_held_out")}
  # A stage finished before the reader scored its evaluations has no prompt accuracy.
  results.update({name: out.results.get(name) for name in shapes_reader.PROMPT_METRICS})
  results.update(shapes_reader.shapes_sample_metrics(images, reader))
  results.update(autoencoder_psnr=ae_results["test_psnr"], scaling_factor=scale,
                 diffusion_train_loss=out.results.get("train_loss"))
  results.update({f"clip_{name}_accuracy": clip_results.get(f"{name}_accuracy") for name in clip_tasks.ATTRIBUTES})
  return write_results(workdir, results, config, time.perf_counter() - t0)


def main() -> None:
  # Defined here, not on import: the config flag imports this file again as the config module.
  prompt = flags.DEFINE_string("prompt", None, "Sample this prompt from a finished workdir instead of training.")
  num_samples = flags.DEFINE_integer("num_samples", 16, "Images drawn for --prompt.")
  cli.main(__file__, lambda config, workdir: run(config, workdir, prompt.value, num_samples.value))


if __name__ == "__main__":
  main()
