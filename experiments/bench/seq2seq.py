"""T5 on CPU: our training step and beam search vs transformers' T5ForConditionalGeneration in PyTorch eager.

One model on both sides: a T5 v1.1 (gated-GELU feed-forward, untied output head, RMSNorm, relative
position buckets) of `num_layers` encoder and decoder layers, `d_model` wide, `num_heads` heads of
`d_kv`, feed-forward `d_ff`, vocabulary `vocab_size`, float32, dropout 0: research.models.seq2seq
and transformers' T5ForConditionalGeneration loading the same weights (seq2seq.save_hf, then
from_pretrained); the parameter counts are checked equal.

Training step (batch `batch_size`, sources of `source_len` tokens with padded tails, targets of
`target_len` with ignored tails). JAX: seq2seq.loss (the labels' cross-entropy, the decoder
reading them shifted right) through research.train's jitted, donated step (make_train_step) with
research.optim's AdamW (weight decay on kernels, clipping at global norm 1). PyTorch: the model's
own loss for the same `labels`, loss.backward(), clip_grad_norm_ and torch.optim.AdamW with the
same hyperparameters on the same decayed tensors. Both train on the same batches of random ids.

Generation: beam search (`num_beams`, `max_new_tokens`, transformers' defaults otherwise) at
each batch size of `generate_batches`. JAX: seq2seq.generate (the source padded to
`source_len`, one compiled while-loop with KV caches); PyTorch: model.generate under no_grad.
Their tokens are compared (the same weights give the same beams).

PyTorch runs at each thread count of `torch_threads` (the host's cores, and 1); the faster one
of a repeat is the one compared. Each repeat runs every side's measurements (`warmup` untimed
calls, then `steps` timed ones; a repeat's time is the median of its calls) in an order rotated
from repeat to repeat (experiments/harness.py's timer); a ratio divides PyTorch's time by ours in
the same repeat (above 1: JAX is faster). Medians over repeats are reported, with each repeat's
ratio.

Run:
  python -m experiments.bench.seq2seq --outdir=experiments/bench/results/seq2seq
  python -m experiments.bench.seq2seq --outdir=/tmp/seq2seq_bench --config=experiments/bench/seq2seq.py:smoke
"""

import dataclasses
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch
import transformers

from experiments import harness
from experiments.bench.steps import StepTimer, TorchSteps, torch_adamw
from research import optim
from research.models import seq2seq
from research.train import ConfigError, Task, check_positive, cli

PACKAGES = ("torch", "transformers")


def _smoke(config: ml_collections.ConfigDict) -> None:
  """A one-layer model, two steps, one thread, one repeat, for tests."""
  config.num_layers, config.d_model, config.d_kv, config.num_heads, config.d_ff = 1, 32, 8, 2, 64
  config.vocab_size, config.source_len, config.target_len, config.batch_size = 64, 12, 6, 2
  config.max_new_tokens, config.generate_batches = 4, (1, 2)
  config.steps, config.repeats, config.torch_threads = 2, 1, (1,)


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The benchmark's model (a small T5 v1.1) and protocol; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.num_layers = 4  # encoder layers, and as many decoder layers
  config.d_model = 256  # model width
  config.d_kv = 32  # per-head width
  config.num_heads = 8  # attention heads
  config.d_ff = 1024  # gated-GELU feed-forward width
  config.vocab_size = 2048  # vocabulary size
  config.source_len = 64  # source tokens (a padded tail in every row but the longest)
  config.target_len = 32  # target tokens per training example
  config.batch_size = 16  # examples per training step
  config.num_beams = 4  # beam search's beams
  config.max_new_tokens = 32  # tokens each generation writes (random weights rarely end early)
  config.generate_batches = (1, 8)  # generation batch sizes timed
  config.steps = 5  # timed calls per repeat, side and measurement
  config.warmup = 1  # untimed calls before each timing
  config.repeats = 3  # repeats of every measurement, in rotated order; medians are reported
  config.torch_threads = harness.host_threads()  # torch.set_num_threads values timed; the faster per repeat compared
  return cli.apply_presets(config, preset, PRESETS)


def _optimizer() -> ml_collections.ConfigDict:
  """research.optim's constant-rate AdamW, decay on kernels, clipping at 1 (what torch_adamw reproduces)."""
  config = optim.default_config()
  config.name, config.learning_rate, config.weight_decay, config.grad_clip_norm = "adamw", 1e-3, 0.01, 1.0
  return config


@dataclasses.dataclass(frozen=True)
class Setup:
  """What both sides share: the model's shape and the data."""

  num_layers: int
  d_model: int
  d_kv: int
  num_heads: int
  d_ff: int
  vocab_size: int
  source_len: int
  target_len: int
  batch_size: int

  def model_config(self) -> seq2seq.Seq2SeqConfig:
    return seq2seq.config("t5-v1_1-small", num_layers=self.num_layers, d_model=self.d_model, d_kv=self.d_kv,
                          num_heads=self.num_heads, d_ff=self.d_ff, vocab_size=self.vocab_size,
                          max_source_length=self.source_len, max_target_length=max(self.target_len, 1))

  def sources(self, rng, batch: int) -> dict[str, np.ndarray]:
    """Random ids (2 and up: not pad or end) with padded tails, lengths from half to all of source_len."""
    lengths = rng.integers(max(1, self.source_len // 2), self.source_len + 1, batch)
    mask = np.arange(self.source_len)[None] < lengths[:, None]
    ids = rng.integers(2, self.vocab_size, (batch, self.source_len)) * mask
    return {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32)}

  def batches(self, count: int = 4) -> list[dict[str, np.ndarray]]:
    """`count` training batches: sources, and labels ending in the end token then IGNORE."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
      batch = self.sources(rng, self.batch_size)
      lengths = rng.integers(max(1, self.target_len // 2), self.target_len + 1, self.batch_size)
      labels = rng.integers(2, self.vocab_size, (self.batch_size, self.target_len))
      labels[np.arange(self.batch_size), lengths - 1] = 1  # the end token
      labels = np.where(np.arange(self.target_len)[None] < lengths[:, None], labels, seq2seq.IGNORE)
      out.append({**batch, "labels": labels.astype(np.int32)})
    return out


class JaxSide(StepTimer):
  """research.train's jitted step on seq2seq.loss, and seq2seq.generate's beam search."""

  def __init__(self, setup: Setup, batches: list[dict[str, np.ndarray]], num_beams: int, max_new_tokens: int):
    self.cfg = setup.model_config()
    self.model = seq2seq.Seq2Seq(self.cfg)
    model = self.model
    self.optimizer = _optimizer()

    def init(key, batch):
      return model.init(key, batch["input_ids"], batch["attention_mask"], batch["labels"])["params"]

    def loss(params, batch, key, train, hparams):
      del key, train, hparams
      value = seq2seq.loss(model, params, batch["input_ids"], batch["attention_mask"], batch["labels"])
      return value, {"loss": value}

    task = Task(init=init, tx=optim.make(self.optimizer, total_steps=1), loss=loss)
    super().__init__(task, [{k: jnp.asarray(v) for k, v in b.items()} for b in batches], seed=0)
    self.num_beams, self.max_new_tokens = num_beams, max_new_tokens
    self.params = None  # generation weights, set by the caller
    self.tokens = None  # of the last generation

  def generate(self, batch) -> None:
    self.tokens = seq2seq.generate(self.model, self.params, batch["input_ids"], batch["attention_mask"],
                                   self.max_new_tokens, self.num_beams)  # a host array: waited for


class TorchSide(TorchSteps):
  """transformers' T5ForConditionalGeneration with its own loss and the same AdamW update, in eager mode."""

  def __init__(self, optimizer, batches: list[dict[str, np.ndarray]], weights_dir: str, num_beams: int,
               max_new_tokens: int):
    self.train_model = transformers.T5ForConditionalGeneration.from_pretrained(weights_dir).train()
    self.eval_model = transformers.T5ForConditionalGeneration.from_pretrained(weights_dir).eval()
    named = dict(self.train_model.named_parameters())  # tied tensors once
    # research.optim.decay_mask: kernels decay; embedding tables (the shared one, the position buckets') do not.
    opt = torch_adamw(named, optimizer, lambda n, p: p.ndim >= 2 and not any(
        s in n for s in ("shared", "embed_tokens", "relative_attention_bias")))
    self.param_count = sum(p.numel() for p in named.values())
    self.num_beams, self.max_new_tokens = num_beams, max_new_tokens
    self.tokens = None  # of the last generation

    def loss(batch):
      return self.train_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              labels=batch["labels"]).loss

    super().__init__(loss, self.train_model.parameters(), opt,
                     [{k: torch.from_numpy(v.astype(np.int64)) for k, v in b.items()} for b in batches],
                     optimizer.grad_clip_norm)

  def generate(self, batch) -> None:
    with torch.no_grad():
      self.tokens = self.eval_model.generate(
          input_ids=torch.from_numpy(batch["input_ids"].astype(np.int64)),
          attention_mask=torch.from_numpy(batch["attention_mask"].astype(np.int64)),
          max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=False).numpy()


def _summary(timings: harness.Timings, kind: str, per: float) -> dict:
  """Medians and per-repeat values of ms per call and items per second; the faster PyTorch's time over ours."""
  names = {name.removesuffix(f"/{kind}"): name for name in timings.measurements if name.endswith(f"/{kind}")}
  torch_names = [name for side, name in names.items() if side != "jax"]
  out = {side: {"ms": 1e3 * timings.median_seconds(name), "ms_per_repeat": [1e3 * t for t in timings.seconds(name)],
                "per_s": per / timings.median_seconds(name)} for side, name in names.items()}
  out.update({"ratio_vs_torch": timings.median_ratio(names["jax"], torch_names),
              "ratios_per_repeat": timings.ratios(names["jax"], torch_names)})
  return out


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad field, before anything is built or timed."""
  for name in ("num_layers", "d_model", "d_kv", "num_heads", "d_ff", "batch_size", "num_beams", "max_new_tokens",
               "steps", "repeats"):
    check_positive(name, config[name])
  check_positive("warmup", config.warmup, allow_zero=True)
  if config.source_len < 2 or config.target_len < 2 or config.vocab_size < 3:
    raise ConfigError(f"source_len and target_len must be >= 2 and vocab_size >= 3, got {config.source_len}, "
                      f"{config.target_len} and {config.vocab_size}")
  harness.check_counts("generate_batches", config.generate_batches)
  harness.check_counts("torch_threads", config.torch_threads)


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Measures every side in this process, writes seq2seq.json / seq2seq.md into `outdir`, returns the JSON dict."""
  check_config(config)
  setup = Setup(config.num_layers, config.d_model, config.d_kv, config.num_heads, config.d_ff, config.vocab_size,
                config.source_len, config.target_len, config.batch_size)
  steps, warmup, repeats, threads = config.steps, config.warmup, config.repeats, list(config.torch_threads)
  sizes = list(config.generate_batches)
  start = time.perf_counter()
  batches = setup.batches()
  rng = np.random.default_rng(1)
  sources = {b: setup.sources(rng, b) for b in sizes}
  jax_side = JaxSide(setup, batches, config.num_beams, config.max_new_tokens)
  compile_start = time.perf_counter()
  jax_side.step()
  compile_s = time.perf_counter() - compile_start
  sides = {"jax": jax_side}
  with tempfile.TemporaryDirectory() as path:
    # Generation weights: a fresh init; the trained state keeps training below.
    ids = jnp.zeros((1, 1), jnp.int32)
    jax_side.params = nn.unbox(jax_side.model.init(jax.random.key(1), ids, ids, ids)["params"])
    seq2seq.save_hf(jax_side.model, jax_side.params, path)
    for t in threads:
      sides[f"torch_{t}"] = TorchSide(jax_side.optimizer, batches, path, config.num_beams, config.max_new_tokens)
  counts = {"jax": jax_side.param_count, "torch": sides[f"torch_{threads[0]}"].param_count}
  if counts["jax"] != counts["torch"]:
    raise AssertionError(f"parameter counts differ: {counts}")
  entries, tokens_equal = {}, {}
  for name, side in sides.items():
    threads_of = None if name == "jax" else int(name.removeprefix("torch_"))
    entries[f"{name}/train"] = harness.steps(side.step, steps, warmup, torch_threads=threads_of)
    for b in sizes:
      entries[f"{name}/beams_b{b}"] = harness.steps(lambda side=side, b=b: side.generate(sources[b]), steps, warmup,
                                                    torch_threads=threads_of)
  timings = harness.compare(entries, repeats, label="seq2seq", unit=" calls/s")
  for b in sizes:  # the tokens every side writes for this batch size, compared
    outs = {}
    for name, side in sides.items():
      side.generate(sources[b])
      outs[name] = side.tokens
    tokens_equal[str(b)] = all(v.shape == outs["jax"].shape and np.array_equal(v, outs["jax"]) for v in outs.values())
  first_torch = sides[f"torch_{threads[0]}"]
  results = {
      "model": dataclasses.asdict(setup), "num_beams": config.num_beams, "max_new_tokens": config.max_new_tokens,
      "param_count": counts, "steps": steps, "warmup": warmup, "repeats": repeats, "torch_threads": threads,
      "train": {**_summary(timings, "train", setup.batch_size), "jax_compile_and_first_step_s": compile_s,
                "jax_loss": [jax_side.losses[0], jax_side.losses[-1]],
                "torch_loss": [first_torch.losses[0], first_torch.losses[-1]]},
      "generate": {str(b): {**_summary(timings, f"beams_b{b}", b), "tokens_equal": tokens_equal[str(b)]}
                   for b in sizes},
      "timing_method": "median of each repeat's timed calls (perf_counter around each, waited for); "
                "ratio = the faster PyTorch setting's time / JAX's, per repeat",
      "load_average": timings.load_average, "timing": timings.record(),
  }
  markdown = _markdown(results)
  print(markdown)
  return harness.write_report(outdir, "seq2seq", results, markdown, json_file="seq2seq.json", packages=PACKAGES,
                              wall_time_s=time.perf_counter() - start)


def _markdown(results: dict) -> str:
  env = harness.environment(*PACKAGES)
  m = results["model"]
  rows = []
  measurements = [("train", results["train"], "training step (loss, AdamW)", "examples/s")] + [
      (b, r, f"beam search, {results['num_beams']} beams, batch {b}", "sources/s")
      for b, r in results["generate"].items()]
  for _, r, title, _ in measurements:
    for side in ["jax"] + [f"torch_{t}" for t in results["torch_threads"]]:
      label = "research.models.seq2seq, jitted" if side == "jax" else \
          f"PyTorch eager, {side.split('_')[1]} thread{'' if side == 'torch_1' else 's'}"
      ratio = ((f"**{r['ratio_vs_torch']:.2f}x**", ", ".join(f"{v:.2f}x" for v in r["ratios_per_repeat"]))
               if side == "jax" else ("", ""))
      rows.append((title, label, f"{r[side]['ms']:,.1f}", f"{r[side]['per_s']:,.1f}", *ratio))
  t = results["train"]
  equal = ", ".join(f"batch {b}: {'equal' if r['tokens_equal'] else 'DIFFERENT'}"
                    for b, r in results["generate"].items())
  return harness.document(
      "T5: research.models.seq2seq vs transformers' T5ForConditionalGeneration in PyTorch eager",
      harness.machine(env, results["load_average"], ("jax", "torch", "transformers")) + "\n"
      f"Model: T5 v1.1, {m['num_layers']} encoder and {m['num_layers']} decoder layers, {m['d_model']} wide, "
      f"{m['num_heads']} heads of {m['d_kv']}, gated-GELU {m['d_ff']}, vocabulary {m['vocab_size']}, "
      f"{results['param_count']['jax']:,} parameters on both sides. Training: batches of {m['batch_size']}, "
      f"sources of {m['source_len']} tokens and targets of {m['target_len']} (padded tails). Generation: "
      f"{results['max_new_tokens']} new tokens at most. Medians of {results['repeats']} repeats of "
      f"{results['steps']} timed calls each; a ratio is the faster PyTorch setting's time over ours in the same "
      "repeat (above 1: JAX is faster).",
      harness.table(["measurement", "side", "ms", "items/s", "PyTorch / JAX", "per repeat"], rows, align="llrrrl"),
      f"JAX's first (compiling) training step took {t['jax_compile_and_first_step_s']:.1f} s. Training loss, first "
      f"-> last timed step: JAX {t['jax_loss'][0]:.3f} -> {t['jax_loss'][1]:.3f}, PyTorch {t['torch_loss'][0]:.3f} "
      f"-> {t['torch_loss'][1]:.3f} (each from its own initialisation). Beam search tokens of the same weights: "
      f"{equal}.")


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
