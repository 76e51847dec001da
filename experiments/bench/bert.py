"""BERT on CPU: our MLM training step and inference vs transformers' BertForMaskedLM in PyTorch eager.

One model on both sides, by default experiments/bert.py's (4 layers, 128 wide, 4 heads, MLP
512, sequences of 128, vocabulary 2048, float32, dropout 0): research.models.bert and
transformers' BertForMaskedLM built from the same BertConfig fields (weights moved with
bert.save_hf and from_pretrained); the parameter counts are checked equal.

Training step (batch `batch_size`). JAX: the task of experiments/bert.py
(research.tasks.bert.make_pretrain_task: 15% of the non-special, non-padding tokens chosen
and corrupted 80/10/10 inside the step from its key, cross-entropy on the chosen positions,
research.optim's AdamW with weight decay on kernels and clipping at global norm 1) through
research.train's jitted, donated step (make_train_step). PyTorch: the same masking written
with torch ops (torch.rand / torch.randint on every step), the model's loss with labels -100
away from the chosen positions, loss.backward(), clip_grad_norm_ and torch.optim.AdamW with
the same hyperparameters on the same decayed tensors. Both train on the same batches of
random token ids framed as [CLS] ... [SEP] with a padded tail (the speed does not depend on
the text).

Inference: the MLM logits of a padded batch in evaluation mode. JAX: a jitted model.apply;
PyTorch: the forward pass under torch.no_grad(). Their logits are compared.

PyTorch runs at each thread count of `torch_threads` (the host's cores, and 1: a pool that
spans every core stalls when other processes use one of them); the faster one of a repeat is
the one compared. Everything runs in this process. Each repeat runs every side's training and
inference (`warmup` untimed steps or calls, then `steps` timed ones, each waited for; a repeat's
time is the median of its steps) in an order rotated from repeat to repeat
(experiments/harness.py's timer), so a drift in the host's load spreads over all; a ratio
divides PyTorch's time by ours in the same repeat (above 1: JAX is faster). Medians over repeats
are reported, with each repeat's ratio.

Run:
  python -m experiments.bench.bert --outdir=experiments/bench/results/bert
  python -m experiments.bench.bert --outdir=/tmp/bert_bench --config=experiments/bench/bert.py:smoke
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

from experiments import bert as bert_experiment
from experiments import harness
from experiments.bench.steps import StepTimer, TorchSteps, torch_adamw
from research.models import bert
from research.tasks import bert as bert_tasks
from research.train import ConfigError, check_positive, cli

PACKAGES = ("torch", "transformers")
SPECIAL = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}  # the ids our WordPiece gives them


def _smoke(config: ml_collections.ConfigDict) -> None:
  """A one-block model, two steps, one thread, one repeat, for tests."""
  config.num_hidden_layers, config.hidden_size, config.num_attention_heads = 1, 32, 2
  config.seq_len, config.vocab_size, config.batch_size = 16, 64, 2
  config.steps, config.repeats, config.torch_threads = 2, 1, (1,)


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The benchmark's model (experiments/bert.py's sizes) and protocol; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.num_hidden_layers = 4  # encoder blocks
  config.hidden_size = 128  # model width (MLP 4x)
  config.num_attention_heads = 4  # attention heads
  config.seq_len = 128  # tokens per sequence and max_position_embeddings
  config.vocab_size = 2048  # vocabulary size
  config.batch_size = 32  # sequences per training step and per inference call
  config.steps = 5  # timed training steps (and inference calls) per repeat and side
  config.warmup = 1  # untimed steps (and calls) before each timing
  config.repeats = 3  # repeats of every measurement, in rotated order; medians are reported
  config.torch_threads = harness.host_threads()  # torch.set_num_threads values timed; the faster per repeat compared
  return cli.apply_presets(config, preset, PRESETS)


@dataclasses.dataclass(frozen=True)
class Setup:
  """What both sides share: the model's shape, the batch, the optimizer and the data."""

  num_hidden_layers: int
  hidden_size: int
  num_attention_heads: int
  seq_len: int
  vocab_size: int
  batch_size: int

  def config(self):
    """experiments/bert.py's config for this model, with a constant learning rate and no dropout."""
    config = bert_experiment.get_config()
    config.num_hidden_layers, config.hidden_size = self.num_hidden_layers, self.hidden_size
    config.num_attention_heads, config.intermediate_size = self.num_attention_heads, 4 * self.hidden_size
    config.max_position_embeddings = config.seq_len = self.seq_len
    config.batch_size, config.dropout = self.batch_size, 0.0
    config.optimizer.schedule, config.optimizer.warmup_steps = "constant", 0
    return config

  def model_config(self) -> bert.BertConfig:
    return bert_experiment.model_config(self.config(), self.vocab_size, pad_token_id=SPECIAL["[PAD]"])

  def batches(self, count: int = 4) -> list[dict[str, np.ndarray]]:
    """`count` batches of [CLS] random ids [SEP] + padding (lengths from half to all of seq_len)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
      lengths = rng.integers(self.seq_len // 2, self.seq_len + 1, self.batch_size)
      ids = rng.integers(len(SPECIAL), self.vocab_size, (self.batch_size, self.seq_len)).astype(np.int32)
      positions = np.arange(self.seq_len)[None]
      ids[:, 0] = SPECIAL["[CLS]"]
      ids[np.arange(self.batch_size), lengths - 1] = SPECIAL["[SEP]"]
      ids = np.where(positions < lengths[:, None], ids, SPECIAL["[PAD]"]).astype(np.int32)
      mask = (positions < lengths[:, None]).astype(np.int32)
      out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    return out


class JaxSide(StepTimer):
  """research.train's jitted step on experiments/bert.py's MLM task, and the jitted forward pass."""

  def __init__(self, setup: Setup, batches: list[dict[str, np.ndarray]]):
    config = setup.config()
    self.optimizer = config.optimizer
    self.cfg = setup.model_config()
    task = dataclasses.replace(bert_tasks.make_pretrain_task(config, self.cfg, SPECIAL), evaluate=None)
    super().__init__(task, [{k: jnp.asarray(v) for k, v in b.items()} for b in batches], config.seed)
    model = bert.BertForMaskedLM(self.cfg)
    self.forward = jax.jit(lambda params, b: model.apply({"params": params}, b["input_ids"],
                                                         attention_mask=b["attention_mask"],
                                                         token_type_ids=b["token_type_ids"]))
    self.params = None  # inference weights, set by the caller
    self.logits = None  # of the last inference call

  def infer(self, batch) -> None:
    self.logits = np.asarray(self.forward(self.params, batch))  # waits and copies to the host


class TorchSide(TorchSteps):
  """transformers' BertForMaskedLM with the same masking, loss and AdamW update, in eager mode."""

  def __init__(self, setup: Setup, optimizer, batches: list[dict[str, np.ndarray]], weights_dir: str):
    self.train_model = transformers.BertForMaskedLM.from_pretrained(weights_dir).train()
    self.eval_model = transformers.BertForMaskedLM.from_pretrained(weights_dir).eval()
    named = dict(self.train_model.named_parameters())  # the tied decoder appears once, as word_embeddings
    # research.optim.decay_mask: kernels decay; embedding tables (a name with "embed") and vectors do not.
    opt = torch_adamw(named, optimizer, lambda n, p: p.ndim >= 2 and "embeddings" not in n)
    self.vocab_size = setup.vocab_size
    self.param_count = sum(p.numel() for p in named.values())
    self.generator = torch.Generator().manual_seed(0)
    self.logits = None  # of the last inference call

    def loss(batch):
      inputs, labels = self._masked(batch)
      return self.train_model(input_ids=inputs, attention_mask=batch["attention_mask"],
                              token_type_ids=batch["token_type_ids"], labels=labels).loss

    super().__init__(loss, self.train_model.parameters(), opt,
                     [{k: torch.from_numpy(v.astype(np.int64)) for k, v in b.items()} for b in batches],
                     optimizer.grad_clip_norm)

  def _masked(self, batch):
    """15% of the eligible tokens chosen; 80% [MASK], 10% random, 10% kept; labels -100 elsewhere."""
    ids = batch["input_ids"]
    special = torch.tensor([i for t, i in SPECIAL.items() if t != "[UNK]"])
    eligible = batch["attention_mask"].bool() & ~torch.isin(ids, special)
    chosen = eligible & (torch.rand(ids.shape, generator=self.generator) < 0.15)
    kind = torch.rand(ids.shape, generator=self.generator)
    random_ids = torch.randint(0, self.vocab_size, ids.shape, generator=self.generator)
    out = torch.where(chosen & (kind < 0.8), torch.full_like(ids, SPECIAL["[MASK]"]), ids)
    out = torch.where(chosen & (kind >= 0.9), random_ids, out)
    return out, torch.where(chosen, ids, torch.full_like(ids, -100))

  def infer(self, batch) -> None:
    inputs = {k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()}
    with torch.no_grad():
      self.logits = self.eval_model(**inputs).logits.numpy()


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
  for name in ("num_hidden_layers", "hidden_size", "num_attention_heads", "batch_size", "steps", "repeats"):
    check_positive(name, config[name])
  check_positive("warmup", config.warmup, allow_zero=True)
  if config.hidden_size % config.num_attention_heads:
    raise ConfigError(f"hidden_size {config.hidden_size} is not divisible by num_attention_heads "
                      f"{config.num_attention_heads}")
  if config.seq_len < 4 or config.vocab_size <= len(SPECIAL):
    raise ConfigError(f"seq_len must be >= 4 and vocab_size > {len(SPECIAL)}, got {config.seq_len} and "
                      f"{config.vocab_size}")
  harness.check_counts("torch_threads", config.torch_threads)


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Measures every side in this process, writes bert.json / bert.md into `outdir`, returns the JSON dict."""
  check_config(config)
  setup = Setup(config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.seq_len,
                config.vocab_size, config.batch_size)
  steps, warmup, repeats, threads = config.steps, config.warmup, config.repeats, list(config.torch_threads)
  start = time.perf_counter()
  batches = setup.batches()
  jax_side = JaxSide(setup, batches)
  compile_start = time.perf_counter()
  jax_side.step()
  compile_s = time.perf_counter() - compile_start
  sides = {"jax": jax_side}
  with tempfile.TemporaryDirectory() as path:
    # Inference weights: a fresh init; the trained state keeps training below.
    jax_side.params = nn.unbox(bert.BertForMaskedLM(jax_side.cfg).init(
        jax.random.key(1), jnp.zeros((1, 1), jnp.int32))["params"])
    bert.save_hf(path, jax_side.cfg, jax_side.params)
    for t in threads:
      sides[f"torch_{t}"] = TorchSide(setup, jax_side.optimizer, batches, path)
  counts = {"jax": jax_side.param_count, "torch": sides[f"torch_{threads[0]}"].param_count}
  if counts["jax"] != counts["torch"]:
    raise AssertionError(f"parameter counts differ: {counts}")
  entries = {}
  for name, side in sides.items():
    threads_of = None if name == "jax" else int(name.removeprefix("torch_"))
    entries[f"{name}/train"] = harness.steps(side.step, steps, warmup, torch_threads=threads_of)
    entries[f"{name}/infer"] = harness.steps(lambda side=side: side.infer(batches[0]), steps, warmup,
                                             torch_threads=threads_of)
  timings = harness.compare(entries, repeats, label="bert", unit=" calls/s")
  logits = {name: side.logits for name, side in sides.items()}
  tokens = setup.batch_size * setup.seq_len
  first_torch = sides[f"torch_{threads[0]}"]
  results = {
      "model": dataclasses.asdict(setup), "param_count": counts, "steps": steps, "warmup": warmup,
      "repeats": repeats, "torch_threads": threads,
      "train": {**_summary(timings, "train", tokens), "jax_compile_and_first_step_s": compile_s,
                "jax_loss": [jax_side.losses[0], jax_side.losses[-1]],
                "torch_loss": [first_torch.losses[0], first_torch.losses[-1]]},
      "inference": {**_summary(timings, "infer", tokens),
                    "max_abs_logit_difference": float(max(np.max(np.abs(logits["jax"] - v))
                                                          for k, v in logits.items() if k != "jax"))},
      "timing_method": "median of each repeat's timed steps (perf_counter around each, waited for); "
                "ratio = the faster PyTorch setting's time / JAX's, per repeat",
      "load_average": timings.load_average, "timing": timings.record(),
  }
  markdown = _markdown(results)
  print(markdown)
  return harness.write_report(outdir, "bert", results, markdown, json_file="bert.json", packages=PACKAGES,
                              wall_time_s=time.perf_counter() - start)


def _markdown(results: dict) -> str:
  env = harness.environment(*PACKAGES)
  m = results["model"]
  rows = []
  for name, title in (("train", "MLM training step (masking, loss, AdamW)"), ("inference", "MLM logits, eval mode")):
    r = results[name]
    for side in ["jax"] + [f"torch_{t}" for t in results["torch_threads"]]:
      label = "research.models.bert, jitted" if side == "jax" else \
          f"PyTorch eager, {side.split('_')[1]} thread{'' if side == 'torch_1' else 's'}"
      ratio = ((f"**{r['ratio_vs_torch']:.2f}x**", ", ".join(f"{v:.2f}x" for v in r["ratios_per_repeat"]))
               if side == "jax" else ("", ""))
      rows.append((title, label, f"{r[side]['ms']:,.1f}", f"{r[side]['per_s']:,.0f}", *ratio))
  t = results["train"]
  return harness.document(
      "BERT: research.models.bert vs transformers' BertForMaskedLM in PyTorch eager",
      harness.machine(env, results["load_average"], ("jax", "torch", "transformers")) + "\n"
      f"Model: {m['num_hidden_layers']} layers, {m['hidden_size']} wide, {m['num_attention_heads']} heads, MLP "
      f"{4 * m['hidden_size']}, vocabulary {m['vocab_size']}, {results['param_count']['jax']:,} parameters on both "
      f"sides; batches of {m['batch_size']} sequences of {m['seq_len']} tokens (padded tails). Medians of "
      f"{results['repeats']} repeats of {results['steps']} timed steps each; a ratio is the faster PyTorch "
      "setting's time over ours in the same repeat (above 1: JAX is faster).",
      harness.table(["measurement", "side", "ms", "tokens/s", "PyTorch / JAX", "per repeat"], rows, align="llrrrl"),
      f"JAX's first (compiling) training step took {t['jax_compile_and_first_step_s']:.1f} s. Training loss, first "
      f"-> last timed step: JAX {t['jax_loss'][0]:.3f} -> {t['jax_loss'][1]:.3f}, PyTorch {t['torch_loss'][0]:.3f} "
      f"-> {t['torch_loss'][1]:.3f} (each from its own initialisation and masks). Inference logits of the same "
      f"weights differ by at most {results['inference']['max_abs_logit_difference']:.1e}.")


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
