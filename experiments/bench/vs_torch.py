"""Training speed of small models: research.train.train vs the same models in PyTorch eager.

Two models, each as its experiment's default config defines it:
  vae  experiments/autoencoder.py's default: MLP encoder 64-100-100-(16 + 16) with tanh, the
       mirrored decoder, batch 100, Adam(1e-3, eps 1e-4), dynamic binarisation and the
       analytic-KL ELBO; runs of its 10,000 steps, logging every 1000, checkpoints every 5000.
  gan  experiments/gan.py's preset small_conv (its digits GAN before the DCGAN-style image
       settings): the two-layer conv pair (32 base channels, latent 2),
       batch 128, the non-saturating loss, one critic update per generator update,
       Adam(1e-3, b1 0.5) for both; logging every 250, checkpoints every 1000, runs of
       --gan_steps steps.

JAX: research.train.train on the experiment's own task and config with
config.steps_per_call = k, for each k of --vae_steps_per_call / --gan_steps_per_call. Its
rate is the run's results.json `steps_per_second`: the steps after the first (compiling)
call over their wall time, so it includes the loop's prefetching, logging and checkpoints
at the config's cadence. The final evaluation and samples come after that rate is taken;
they are left out. Every k divides the run's steps and both cadences, so no call of
another length is compiled inside the timed steps.

PyTorch: the same networks (the parameter counts are checked equal) and the same update,
written plainly: a Python loop over steps, batches indexed from a uint8 tensor by a
per-epoch torch.randperm, loss.backward() and torch.optim.Adam; no checkpoints, no
logging. Each timing trains from a fresh initialisation, `torch_warmup` untimed steps,
then up to `torch_steps` steps or `torch_seconds`, for each thread count of
`torch_threads` (torch.set_num_threads: this host's core count, and 1, since a pool that
spans every core stalls when another process uses one of them).

Both run in this process. Each repeat times every PyTorch setting and every k, in an order
rotated from repeat to repeat (experiments/harness.py's timer), so a drift in the host's load
spreads over all of them; a ratio divides a JAX rate by the faster PyTorch setting of the same
repeat. Medians over repeats are reported, with each repeat's ratio.

Run:
  python -m experiments.bench.vs_torch --outdir=experiments/bench/results/vs_torch
  python -m experiments.bench.vs_torch --outdir=/tmp/vs_torch --config.models=vae --config.vae_steps_per_call=1,10 \
      --config.repeats=1
  python -m experiments.bench.vs_torch --outdir=/tmp/vs_torch --config=experiments/bench/vs_torch.py:smoke
"""

import dataclasses
import statistics
import tempfile
import time

import jax
import ml_collections
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from experiments import autoencoder as autoencoder_experiment
from experiments import gan as gan_experiment
from experiments import harness
from research import data as data_lib
from research.data import Batcher
from research.tasks import autoencoder, gan
from research.train import ConfigError, Keys, check_positive, cli, init_state, make_train_step, train

MODELS = ("vae", "gan")
# The peer's stack, recorded beside jax/flax/optax.
PACKAGES = ("torch", "numpy", "orbax-checkpoint")


def _smoke(config: ml_collections.ConfigDict) -> None:
  """Short runs of both models, one thread, one repeat, for tests."""
  config.vae_steps, config.gan_steps = 40, 10
  config.vae_steps_per_call, config.gan_steps_per_call = (1, 10), (1,)
  config.torch_steps, config.torch_seconds, config.torch_warmup = 40, 600.0, 2
  config.torch_threads, config.repeats = (1,), 1


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The benchmark's models and protocol; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.models = MODELS  # models compared: vae, gan
  config.vae_steps_per_call = (1, 5, 10, 25, 100, 1000)  # values of config.steps_per_call timed for the VAE
  config.gan_steps_per_call = (1, 5, 25)  # values of config.steps_per_call timed for the GAN
  config.vae_steps = 0  # steps of each JAX VAE run; 0: the experiment's (10,000)
  # The experiment's 3000 steps take minutes per run on 2 cores; the rate leaves out the
  # compiling call, so a shorter run only averages fewer steps.
  config.gan_steps = 500  # steps of each JAX GAN run
  config.torch_steps = 2000  # timed steps of each PyTorch run (at most)
  config.torch_seconds = 20.0  # a PyTorch timing stops after this many seconds
  config.torch_warmup = 20  # untimed steps before each PyTorch timing
  config.torch_threads = harness.host_threads()  # torch.set_num_threads values timed; the faster per repeat compared
  config.repeats = 3  # repeats of every measurement, in rotated order; medians are reported
  return cli.apply_presets(config, preset, PRESETS)


# ---------------------------------------------------------------------------------------
# The two experiments' defaults, as research.train runs them.


@dataclasses.dataclass(frozen=True)
class Problem:
  """One model as both sides train it: the experiment's config and task, and its data."""

  name: str
  config: object  # the experiment's ml_collections config
  task: object  # research.train.Task, without evaluation or samples
  images: np.ndarray  # uint8 (N, 8, 8, 1) training images


def vae_problem(steps: int) -> Problem:
  """experiments/autoencoder.py's default VAE (`steps` per run; 0: the experiment's)."""
  config = autoencoder_experiment.get_config()
  if steps:
    config.steps = steps
  if (config.model, config.objective, config.k) != ("vae", "elbo", 1):
    raise ValueError("the PyTorch VAE implements the default config: model vae, objective elbo, k 1")
  images = data_lib.load(config.dataset, "train")["image"]
  test_images = data_lib.load(config.dataset, "test")["image"]
  task = dataclasses.replace(autoencoder.make_task(config, test_images), evaluate=None, sample=None)
  return Problem("vae", config, task, images)


def gan_problem(steps: int) -> Problem:
  """experiments/gan.py's two-layer conv pair on digits (preset small_conv), which the PyTorch side mirrors."""
  config = gan_experiment.get_config("small_conv")
  if steps:
    config.steps = steps
  if (config.loss, config.n_critic, config.pack) != ("gan", 1, 1):
    raise ValueError("the PyTorch GAN implements the default config: loss gan, n_critic 1, pack 1")
  gan_experiment.check_config(config)
  images = data_lib.load(config.dataset, "train")["image"]
  task = dataclasses.replace(gan.make_task(config), evaluate=None, sample=None)
  return Problem("gan", config, task, images)


def check_adam(optimizer) -> None:
  """The PyTorch side builds a plain torch.optim.Adam: the config must ask for no more."""
  if (optimizer.name, optimizer.schedule, optimizer.weight_decay, optimizer.grad_clip_norm) != (
      "adam", "constant", 0.0, 0.0):
    raise ValueError(f"expected constant-rate Adam without decay or clipping, got {optimizer.to_dict()}")


def jax_first_step(problem: Problem) -> tuple[int, dict[str, float]]:
  """The JAX model's parameter count and the metrics of its first step (the loss at initialisation)."""
  config = problem.config
  batcher = Batcher({"image": problem.images}, config.batch_size * problem.task.batches_per_step, config.seed)
  keys = Keys.from_seed(config.seed)
  state = init_state(problem.task, keys.init, batcher(0), config.ema_decay)
  step = jax.jit(make_train_step(problem.task, config.ema_decay))
  _, metrics = step(state, batcher(0), jax.random.fold_in(keys.train, 0))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  return count, {k: float(v) for k, v in jax.device_get(metrics).items() if np.ndim(v) == 0}


def time_jax(problem: Problem, steps_per_call: int) -> harness.Timing:
  """One research.train.train run with `steps_per_call`; its rate from results.json."""
  config = problem.config.copy_and_resolve_references()
  config.steps_per_call = steps_per_call
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    results = train(problem.task, config, workdir, {"image": problem.images}).results
    wall = time.perf_counter() - start
  out = {"steps": config.steps, "wall_s": wall, "steps_per_s_with_compile": config.steps / wall,
         "train_loss": results["train_loss"]}
  if "flops_per_step" in results:
    out["flops_per_step"] = results["flops_per_step"]
  return harness.Timing.from_rate(results["steps_per_second"], info=out)


# ---------------------------------------------------------------------------------------
# The same models in PyTorch, written plainly.


def mlp(widths: list[int]) -> nn.Sequential:
  """Linear layers of `widths`, tanh between them (research.models.autoencoder.MLP)."""
  layers = []
  for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
    layers.append(nn.Linear(n_in, n_out))
    if i < len(widths) - 2:
      layers.append(nn.Tanh())
  return nn.Sequential(*layers)


class TorchVAE(nn.Module):
  """The VAE of research.models.autoencoder: Gaussian encoder, Bernoulli decoder, ELBO."""

  def __init__(self, pixels: int, hidden: tuple[int, ...], latent_dim: int):
    super().__init__()
    self.encoder = mlp([pixels, *hidden, 2 * latent_dim])
    self.decoder = mlp([latent_dim, *reversed(hidden), pixels])

  def loss(self, images: torch.Tensor) -> torch.Tensor:
    """-ELBO per image, averaged over the batch, of a dynamically binarised uint8 batch (batch, pixels)."""
    x = torch.bernoulli(images.float() / 255.0)  # a fresh binarisation every step
    mean, log_var = self.encoder(x).chunk(2, dim=-1)  # (batch, latent) each
    z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)  # reparameterised sample
    logits = self.decoder(z)  # (batch, pixels)
    log_px_z = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    kl = 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var).sum(-1)  # analytic KL to N(0, I)
    return -(log_px_z - kl).mean()


class TorchGenerator(nn.Module):
  """research.models.gan.ConvGenerator: z -> 2x2 map -> two stride-2 transposed convs -> 8x8 in [-1, 1]."""

  def __init__(self, latent_dim: int, features: int, channels: int):
    super().__init__()
    self.features = features
    self.dense = nn.Linear(latent_dim, 2 * 2 * 2 * features)
    self.up1 = nn.ConvTranspose2d(2 * features, features, 4, stride=2, padding=1)
    self.up2 = nn.ConvTranspose2d(features, channels, 4, stride=2, padding=1)

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    h = torch.relu(self.dense(z)).view(-1, 2 * self.features, 2, 2)  # (batch, 2f, 2, 2)
    h = torch.relu(self.up1(h))  # (batch, f, 4, 4)
    return torch.tanh(self.up2(h))  # (batch, c, 8, 8)


def torch_discriminator(features: int, channels: int) -> nn.Sequential:
  """research.models.gan.ConvDiscriminator: two stride-2 convs with leaky ReLU, then one logit."""
  return nn.Sequential(
      nn.Conv2d(channels, features, 3, stride=2, padding=1), nn.LeakyReLU(0.2),  # (batch, f, 4, 4)
      nn.Conv2d(features, 2 * features, 3, stride=2, padding=1), nn.LeakyReLU(0.2),  # (batch, 2f, 2, 2)
      nn.Flatten(), nn.Linear(2 * 2 * 2 * features, 1))


def adam(params, optimizer) -> torch.optim.Adam:
  return torch.optim.Adam(params, lr=optimizer.learning_rate, betas=(optimizer.b1, optimizer.b2),
                          eps=optimizer.eps)


def epoch_batches(n: int, batch_size: int):
  """Index batches of a fresh permutation each epoch, the remainder dropped, forever."""
  while True:
    perm = torch.randperm(n)
    for i in range(n // batch_size):
      yield perm[i * batch_size:(i + 1) * batch_size]


def torch_vae(config, images: np.ndarray):
  """(parameter count, step(batch) -> loss) of the VAE in PyTorch."""
  check_adam(config.optimizer)
  model = TorchVAE(int(np.prod(images.shape[1:])), tuple(config.hidden), config.latent_dim)
  opt = adam(model.parameters(), config.optimizer)
  data = torch.from_numpy(images.reshape(len(images), -1))  # uint8 (N, pixels)
  batches = epoch_batches(len(images), config.batch_size)

  def step():
    loss = model.loss(data[next(batches)])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()

  return sum(p.numel() for p in model.parameters()), step


def torch_gan(config, images: np.ndarray):
  """(parameter count, step(batch) -> discriminator loss) of the digits GAN in PyTorch."""
  check_adam(config.optimizer)
  channels = images.shape[-1]
  gen = TorchGenerator(config.latent_dim, config.conv_features, channels)
  disc = torch_discriminator(config.conv_features, channels)
  gen_opt, disc_opt = adam(gen.parameters(), config.optimizer), adam(disc.parameters(), config.optimizer)
  data = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # uint8 (N, C, H, W)
  batches = epoch_batches(len(images), config.batch_size)
  b, latent = config.batch_size, config.latent_dim

  def step():
    real = data[next(batches)].float() / 127.5 - 1.0  # (batch, C, H, W) in [-1, 1]
    # 1. The discriminator against the current generator: -log s(D(x)) - log(1 - s(D(G(z)))).
    with torch.no_grad():
      fake = gen(torch.randn(b, latent))
    disc_loss = F.softplus(-disc(real)).mean() + F.softplus(disc(fake)).mean()
    disc_opt.zero_grad(set_to_none=True)
    disc_loss.backward()
    disc_opt.step()
    # 2. The generator against the updated discriminator (non-saturating); only its own gradients.
    for p in disc.parameters():
      p.requires_grad_(False)
    gen_loss = F.softplus(-disc(gen(torch.randn(b, latent)))).mean()
    gen_opt.zero_grad(set_to_none=True)
    gen_loss.backward()
    gen_opt.step()
    for p in disc.parameters():
      p.requires_grad_(True)
    return disc_loss.detach()

  count = sum(p.numel() for p in gen.parameters()) + sum(p.numel() for p in disc.parameters())
  return count, step


TORCH_MODELS = {"vae": torch_vae, "gan": torch_gan}


def time_torch(problem: Problem, steps: int, warmup: int, max_seconds: float) -> harness.Timing:
  """Trains the PyTorch model from a fresh initialisation; up to `steps` steps timed after `warmup`.

  The timing ends after `steps` steps or `max_seconds`, whichever comes first: a thread
  pool stalled by a busy host can run a hundred times slower than usual.
  """
  torch.manual_seed(problem.config.seed)
  count, step = TORCH_MODELS[problem.name](problem.config, problem.images)
  losses = [step() for _ in range(warmup)]
  start = time.perf_counter()
  deadline = start + max_seconds
  timed = 0
  while timed < steps and (timed == 0 or time.perf_counter() < deadline):
    losses.append(step())
    timed += 1
  seconds = time.perf_counter() - start
  losses = torch.stack(losses).numpy()
  tail = max(1, len(losses) // 10)
  return harness.Timing(seconds, timed, {"param_count": count, "first_loss": float(losses[0]),
                                         "final_loss": float(losses[-tail:].mean())})


# ---------------------------------------------------------------------------------------
# The benchmark.


def recommended_steps_per_call(rates: dict[int, float], share: float = 0.9) -> int:
  """The smallest k whose gain over k = 1 is at least `share` of the best gain (1 if nothing gains)."""
  if 1 not in rates:
    return max(rates, key=rates.get)
  best = max(rates.values()) - rates[1]
  return min(k for k, rate in rates.items() if best <= 0 or rate - rates[1] >= share * best)


def check_steps_per_call(problem: Problem, ks) -> None:
  """Raises ConfigError unless every k divides the run's steps and both cadences."""
  config = problem.config
  for k in ks:
    for field in ("steps", "log_every", "checkpoint_every"):
      # A chunk shorter than k would compile another program inside the timed steps.
      if config[field] % k:
        raise ConfigError(f"steps_per_call {k} does not divide the {problem.name} config's {field} "
                          f"({config[field]})")


def compare(problem: Problem, ks: list[int], threads: list[int], repeats: int, torch_steps: int,
            torch_warmup: int, torch_seconds: float) -> dict:
  """All measurements of one model; see the module docstring for the protocol."""
  config = problem.config
  jax_params, first = jax_first_step(problem)
  torch_names = [f"torch_{t}" for t in threads]
  sides = {f"torch_{t}": harness.Side(lambda: time_torch(problem, torch_steps, torch_warmup, torch_seconds),
                                      torch_threads=t) for t in threads}
  sides.update({f"jax_{k}": harness.Side(lambda k=k: time_jax(problem, k)) for k in ks})
  timings = harness.compare(sides, repeats, label=problem.name, unit=" steps/s")
  torch_counts = {info["param_count"] for name in torch_names for info in timings.info(name)}
  if torch_counts != {jax_params}:
    raise AssertionError(f"{problem.name}: PyTorch has {torch_counts} parameters, JAX {jax_params}")
  jax_out = {}
  for k in ks:
    infos = timings.info(f"jax_{k}")
    jax_out[str(k)] = {
        "steps_per_s": timings.median_rate(f"jax_{k}"),
        "steps_per_s_with_compile": statistics.median(info["steps_per_s_with_compile"] for info in infos),
        "ratio_vs_torch": timings.median_ratio(f"jax_{k}", torch_names),
        "ratios_per_repeat": timings.ratios(f"jax_{k}", torch_names),
        "steps_per_s_per_repeat": timings.rates(f"jax_{k}"),
        "train_loss": infos[-1]["train_loss"],
    }
  rates = {k: jax_out[str(k)]["steps_per_s"] for k in ks}
  best_k = max(ks, key=rates.get)
  torch_out = {str(t): {
      "steps_per_s": timings.median_rate(f"torch_{t}"),
      "timed_steps_per_repeat": [int(m.work) for m in timings.measurements[f"torch_{t}"]],
      "steps_per_s_per_repeat": timings.rates(f"torch_{t}"),
      "first_loss": timings.info(f"torch_{t}")[-1]["first_loss"],
      "final_loss": timings.info(f"torch_{t}")[-1]["final_loss"]} for t in threads}
  return {
      "param_count": {"jax": jax_params, "torch": torch_counts.pop()},
      "jax_steps": config.steps, "batch_size": config.batch_size,
      "log_every": config.log_every, "checkpoint_every": config.checkpoint_every,
      "flops_per_step": timings.info(f"jax_{ks[0]}")[0].get("flops_per_step"),
      "jax_first_loss": first["loss"], "jax": jax_out, "torch": torch_out,
      "torch_best_steps_per_s": statistics.median(timings.best_rates(torch_names)), "best_steps_per_call": best_k,
      "best_ratio_vs_torch": jax_out[str(best_k)]["ratio_vs_torch"],
      "recommended_steps_per_call": recommended_steps_per_call(rates),
      "timing": timings.record(),
  }


def _markdown(results: dict) -> str:
  env = harness.environment(*PACKAGES)
  titles = {"vae": "VAE (experiments/autoencoder.py defaults)",
            "gan": "digits GAN (experiments/gan.py, preset small_conv)"}
  blocks = [
      harness.machine(env, results["load_average"], ("jax", "torch")) + "\n"
      "JAX rates are the runs' results.json `steps_per_second` (after the first, compiling call; prefetching, "
      "logging and checkpoints included); PyTorch rates are timed around its step loop. Medians of "
      f"{results['repeats']} repeats in rotated order; a ratio divides a JAX rate by the faster PyTorch setting of "
      "the same repeat.",
  ]
  for name in results["models"]:
    m = results[name]
    torch_steps = sorted({n for t in m["torch"].values() for n in t["timed_steps_per_repeat"]})
    rows = [(f"PyTorch eager, {threads} thread{'' if threads == '1' else 's'}", f"{t['steps_per_s']:,.1f}",
             f"{t['steps_per_s'] / m['torch_best_steps_per_s']:.2f}x",
             f"{', '.join(f'{v:,.1f}' for v in t['steps_per_s_per_repeat'])} steps/s", "")
            for threads, t in m["torch"].items()]
    rows += [(f"research.train, steps_per_call={k}{' (best)' if int(k) == m['best_steps_per_call'] else ''}",
              f"{j['steps_per_s']:,.1f}", f"**{j['ratio_vs_torch']:.2f}x**",
              ", ".join(f"{v:.2f}x" for v in j["ratios_per_repeat"]), f"{j['steps_per_s_with_compile']:,.1f}")
             for k, j in m["jax"].items()]
    torch_losses = "; ".join(f"{t} thread(s) {v['first_loss']:.3f} -> {v['final_loss']:.3f}"
                             for t, v in m["torch"].items())
    last_k = list(m["jax"])[-1]
    blocks += [
        f"## {titles[name]}",
        f"{m['param_count']['jax']:,} parameters on both sides; batch {m['batch_size']}; "
        f"{m['flops_per_step'] / 1e6:.1f} MFLOP per step (XLA's count); JAX runs of {m['jax_steps']:,} steps "
        f"(log every {m['log_every']}, checkpoint every {m['checkpoint_every']}); PyTorch timed over "
        f"{torch_steps[0]:,}-{torch_steps[-1]:,} steps (at most {results['torch_steps']:,} or "
        f"{results['torch_seconds']:g} s).",
        harness.table(["implementation", "steps/s", "vs PyTorch eager", "per repeat", "steps/s incl. compile"], rows,
                      align="lrrlr"),
        f"Best steps_per_call: {m['best_steps_per_call']} ({m['best_ratio_vs_torch']:.2f}x PyTorch); the smallest "
        f"with 90% of the best gain over 1: {m['recommended_steps_per_call']}.\n"
        f"Loss (first step -> mean of the last interval): JAX {m['jax_first_loss']:.3f} -> "
        f"{m['jax'][last_k]['train_loss']:.3f} (steps_per_call={last_k}); PyTorch {torch_losses} (last 10% of "
        "its steps)." + (" The GAN's loss is the discriminator's." if name == "gan" else ""),
    ]
  return harness.document("Small models: research.train.train vs PyTorch eager", *blocks)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad field (the steps_per_call values against each run: `run`)."""
  harness.check_names("models", config.models, MODELS)
  for name in ("vae_steps_per_call", "gan_steps_per_call", "torch_threads"):
    harness.check_counts(name, config[name])
  for name in ("repeats", "torch_steps", "torch_seconds"):
    check_positive(name, config[name])
  for name in ("vae_steps", "gan_steps", "torch_warmup"):
    check_positive(name, config[name], allow_zero=True)


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Measures the models in this process, writes vs_torch.json / vs_torch.md into `outdir`, returns the JSON dict."""
  check_config(config)
  start = time.perf_counter()
  models, threads = list(config.models), list(config.torch_threads)
  build = {"vae": lambda: vae_problem(config.vae_steps), "gan": lambda: gan_problem(config.gan_steps)}
  problems = {name: build[name]() for name in models}
  steps_per_call = {"vae": list(config.vae_steps_per_call), "gan": list(config.gan_steps_per_call)}
  for name in models:
    check_steps_per_call(problems[name], steps_per_call[name])
  results = {name: compare(problems[name], steps_per_call[name], threads, config.repeats, config.torch_steps,
                           config.torch_warmup, config.torch_seconds) for name in models}
  results.update({"models": models, "torch_threads": threads, "repeats": config.repeats,
                  "torch_steps": config.torch_steps, "torch_warmup": config.torch_warmup,
                  "torch_seconds": config.torch_seconds,
                  "timing": "jax: results.json steps_per_second; torch: perf_counter around the timed steps",
                  "load_average": {"start": results[models[0]]["timing"]["load_average"]["start"],
                                   "end": results[models[-1]]["timing"]["load_average"]["end"]}})
  markdown = _markdown(results)
  print(markdown)
  return harness.write_report(outdir, "vs_torch", results, markdown, json_file="vs_torch.json", packages=PACKAGES,
                              wall_time_s=time.perf_counter() - start)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
