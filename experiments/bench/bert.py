"""BERT on CPU: our MLM training step and inference vs transformers' BertForMaskedLM in PyTorch eager.

One model on both sides, by default experiments/bert.py's (4 layers, 128 wide, 4 heads, MLP
512, sequences of 128, vocabulary 2048, float32, dropout 0): research.models.bert and
transformers' BertForMaskedLM built from the same BertConfig fields (weights moved with
bert.save_hf and from_pretrained); the parameter counts are checked equal.

Training step (batch --batch_size). JAX: the task of experiments/bert.py
(research.models.bert.make_pretrain_task: 15% of the non-special, non-padding tokens chosen
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

PyTorch runs at each thread count of --torch_threads (the host's cores, and 1: a pool that
spans every core stalls when other processes use one of them); the faster one of a repeat is
the one compared. Everything runs in this process. Each repeat runs every side (--warmup
untimed steps or calls, then --steps timed ones, each waited for; a repeat's time is the
median of its steps) in an order rotated from repeat to repeat, so a drift in the host's load
spreads over all; a ratio divides PyTorch's time by ours in the same repeat (above 1: JAX is
faster). Medians over repeats are reported, with each repeat's ratio.

Run:
  python -m experiments.bench.bert --outdir=experiments/bench/results/bert
  python -m experiments.bench.bert --outdir=/tmp/bert_bench --num_hidden_layers=1 --hidden_size=32 \\
      --num_attention_heads=2 --seq_len=16 --vocab_size=64 --batch_size=2 --steps=2 --repeats=1
"""

import dataclasses
import os
import statistics
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from absl import app, flags

from experiments import bert as bert_experiment
from experiments import report
from experiments.bench.steps import StepTimer
from research.models import bert

_LAYERS = flags.DEFINE_integer("num_hidden_layers", 4, "Encoder blocks.")
_WIDTH = flags.DEFINE_integer("hidden_size", 128, "Model width.")
_HEADS = flags.DEFINE_integer("num_attention_heads", 4, "Attention heads.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 128, "Tokens per sequence and max_position_embeddings.")
_VOCAB = flags.DEFINE_integer("vocab_size", 2048, "Vocabulary size.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Sequences per training step and per inference call.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed training steps (and inference calls) per repeat and side.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps (and calls) before each timing.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Repeats of every measurement (medians reported).")
_TORCH_THREADS = flags.DEFINE_list("torch_threads", None, "torch.set_num_threads values timed, the faster one per "
                                   "repeat compared (default: the host's cores and 1).")

PACKAGES = ("torch", "transformers")
SPECIAL = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}  # the ids our WordPiece gives them


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


def _rotated(items: list, r: int) -> list:
  return items[r % len(items):] + items[:r % len(items)]


class JaxSide(StepTimer):
  """research.train's jitted step on experiments/bert.py's MLM task, and the jitted forward pass."""

  def __init__(self, setup: Setup, batches: list[dict[str, np.ndarray]]):
    config = setup.config()
    self.optimizer = config.optimizer
    self.cfg = setup.model_config()
    task = dataclasses.replace(bert.make_pretrain_task(config, self.cfg, SPECIAL), evaluate=None)
    super().__init__(task, [{k: jnp.asarray(v) for k, v in b.items()} for b in batches], config.seed)
    model = bert.BertForMaskedLM(self.cfg)
    self.forward = jax.jit(lambda params, b: model.apply({"params": params}, b["input_ids"],
                                                         attention_mask=b["attention_mask"],
                                                         token_type_ids=b["token_type_ids"]))
    self.params = None  # inference weights, set by the caller

  def train(self, steps: int) -> list[float]:
    return self.run(steps)

  def infer(self, calls: int, batch) -> tuple[list[float], np.ndarray]:
    times, logits = [], None
    for _ in range(calls):
      start = time.perf_counter()
      logits = np.asarray(self.forward(self.params, batch))  # waits and copies to the host
      times.append(time.perf_counter() - start)
    return times, logits


class TorchSide:
  """transformers' BertForMaskedLM with the same masking, loss and AdamW update, in eager mode."""

  def __init__(self, setup: Setup, optimizer, batches: list[dict[str, np.ndarray]], weights_dir: str):
    if (optimizer.name, optimizer.schedule, optimizer.decay_embeddings) != ("adamw", "constant", False):
      raise ValueError(f"the PyTorch side implements constant-rate AdamW without embedding decay, got "
                       f"{optimizer.to_dict()}")
    self.train_model = transformers.BertForMaskedLM.from_pretrained(weights_dir).train()
    self.eval_model = transformers.BertForMaskedLM.from_pretrained(weights_dir).eval()
    named = dict(self.train_model.named_parameters())  # the tied decoder appears once, as word_embeddings
    # research.optim.decay_mask: kernels decay; embedding tables (a name with "embed") and vectors do not.
    decays = lambda n, p: p.ndim >= 2 and "embeddings" not in n
    self.opt = torch.optim.AdamW([{"params": [p for n, p in named.items() if decays(n, p)],
                                   "weight_decay": optimizer.weight_decay},
                                  {"params": [p for n, p in named.items() if not decays(n, p)], "weight_decay": 0.0}],
                                 lr=optimizer.learning_rate, betas=(optimizer.b1, optimizer.b2), eps=optimizer.eps)
    self.clip = optimizer.grad_clip_norm
    self.vocab_size = setup.vocab_size
    self.batches = [{k: torch.from_numpy(v.astype(np.int64)) for k, v in b.items()} for b in batches]
    self.param_count = sum(p.numel() for p in named.values())
    self.generator = torch.Generator().manual_seed(0)
    self.steps = 0
    self.losses: list[float] = []

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

  def train(self, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
      batch = self.batches[self.steps % len(self.batches)]
      start = time.perf_counter()
      inputs, labels = self._masked(batch)
      loss = self.train_model(input_ids=inputs, attention_mask=batch["attention_mask"],
                              token_type_ids=batch["token_type_ids"], labels=labels).loss
      self.opt.zero_grad(set_to_none=True)
      loss.backward()
      if self.clip > 0:
        torch.nn.utils.clip_grad_norm_(self.train_model.parameters(), self.clip)
      self.opt.step()
      times.append(time.perf_counter() - start)
      self.losses.append(float(loss.detach()))
      self.steps += 1
    return times

  def infer(self, calls: int, batch) -> tuple[list[float], np.ndarray]:
    inputs = {k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()}
    times, logits = [], None
    for _ in range(calls):
      start = time.perf_counter()
      with torch.no_grad():
        logits = self.eval_model(**inputs).logits.numpy()
      times.append(time.perf_counter() - start)
    return times, logits


def _summary(times: dict[str, list[float]], per: float) -> dict:
  """Medians and per-repeat values: ms per call and items per second of each side; the faster PyTorch's time over ours."""
  best_torch = [min(ts) for ts in zip(*(v for k, v in times.items() if k != "jax"))]
  ratios = [t / j for t, j in zip(best_torch, times["jax"])]
  out = {side: {"ms": 1e3 * statistics.median(ts), "ms_per_repeat": [1e3 * t for t in ts],
                "per_s": per / statistics.median(ts)} for side, ts in times.items()}
  out.update({"ratio_vs_torch": statistics.median(ratios), "ratios_per_repeat": ratios})
  return out


def run_bench(outdir: str, setup: Setup, steps: int, warmup: int, repeats: int, threads: list[int]) -> dict:
  """Measures every side in this process, writes bert.json / bert.md into `outdir`, returns the JSON dict."""
  if min(setup.num_hidden_layers, setup.hidden_size, setup.num_attention_heads, steps, repeats) < 1 or warmup < 0:
    raise app.UsageError("model sizes, --steps and --repeats must be positive, --warmup >= 0")
  if setup.hidden_size % setup.num_attention_heads:
    raise app.UsageError(f"--hidden_size {setup.hidden_size} is not divisible by --num_attention_heads "
                         f"{setup.num_attention_heads}")
  if setup.seq_len < 4 or setup.vocab_size <= len(SPECIAL) or setup.batch_size < 1:
    raise app.UsageError("--seq_len must be >= 4, --vocab_size > 5 and --batch_size >= 1")
  if not threads or min(threads) < 1:
    raise app.UsageError(f"--torch_threads must be positive, got {threads}")
  load_start = os.getloadavg()[0]
  start = time.perf_counter()
  batches = setup.batches()
  jax_side = JaxSide(setup, batches)
  compile_start = time.perf_counter()
  jax_side.train(1)
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
  train_times = {name: [] for name in sides}
  infer_times = {name: [] for name in sides}
  logits = {}
  for r in range(repeats):
    for name in _rotated(list(sides), r):
      side = sides[name]
      if name != "jax":
        torch.set_num_threads(int(name.split("_")[1]))
      side.train(warmup)
      train_times[name].append(statistics.median(side.train(steps)))
      side.infer(warmup, batches[0])
      times, logits[name] = side.infer(steps, batches[0])
      infer_times[name].append(statistics.median(times))
    print(f"repeat {r}: train " + ", ".join(f"{n} {1e3 * train_times[n][-1]:.0f} ms" for n in sides) +
          "; inference " + ", ".join(f"{n} {1e3 * infer_times[n][-1]:.0f} ms" for n in sides), flush=True)
  tokens = setup.batch_size * setup.seq_len
  first_torch = sides[f"torch_{threads[0]}"]
  results = {
      "model": dataclasses.asdict(setup), "param_count": counts, "steps": steps, "warmup": warmup,
      "repeats": repeats, "torch_threads": threads,
      "train": {**_summary(train_times, tokens), "jax_compile_and_first_step_s": compile_s,
                "jax_loss": [jax_side.losses[0], jax_side.losses[-1]],
                "torch_loss": [first_torch.losses[0], first_torch.losses[-1]]},
      "inference": {**_summary(infer_times, tokens),
                    "max_abs_logit_difference": float(max(np.max(np.abs(logits["jax"] - v))
                                                          for k, v in logits.items() if k != "jax"))},
      "timing": "median of each repeat's timed steps (perf_counter around each, waited for); "
                "ratio = the faster PyTorch setting's time / JAX's, per repeat",
      "load_average": {"start": load_start, "end": os.getloadavg()[0]},
  }
  markdown = _markdown(results)
  print(markdown)
  return report.write_report(outdir, "bert", results, markdown, json_file="bert.json", packages=PACKAGES,
                             wall_time_s=time.perf_counter() - start)


def _markdown(results: dict) -> str:
  env = report.environment(*PACKAGES)
  versions, devices = env["versions"], env["devices"]
  m, load = results["model"], results["load_average"]
  lines = [
      "# BERT: research.models.bert vs transformers' BertForMaskedLM in PyTorch eager",
      "",
      f"Command: `{report.command()}`",
      "",
      f"Machine: {devices['cpu_count']} CPU cores shared with other work (1-minute load average "
      f"{load['start']:.1f} at the start, {load['end']:.1f} at the end), {devices['count']} "
      f"{devices['platform']} device(s); jax {versions['jax']}, torch {versions['torch']}, transformers "
      f"{versions['transformers']}.",
      f"Model: {m['num_hidden_layers']} layers, {m['hidden_size']} wide, {m['num_attention_heads']} heads, MLP "
      f"{4 * m['hidden_size']}, vocabulary {m['vocab_size']}, {results['param_count']['jax']:,} parameters on both "
      f"sides; batches of {m['batch_size']} sequences of {m['seq_len']} tokens (padded tails). Medians of "
      f"{results['repeats']} repeats of {results['steps']} timed steps each; a ratio is the faster PyTorch "
      "setting's time over ours in the same repeat (above 1: JAX is faster).",
      "",
      "| measurement | side | ms | tokens/s | PyTorch / JAX | per repeat |",
      "|---|---|---:|---:|---:|---|",
  ]
  for name, title in (("train", "MLM training step (masking, loss, AdamW)"), ("inference", "MLM logits, eval mode")):
    r = results[name]
    for side in ["jax"] + [f"torch_{t}" for t in results["torch_threads"]]:
      label = "research.models.bert, jitted" if side == "jax" else \
          f"PyTorch eager, {side.split('_')[1]} thread{'' if side == 'torch_1' else 's'}"
      ratio = (f"**{r['ratio_vs_torch']:.2f}x** | {', '.join(f'{v:.2f}x' for v in r['ratios_per_repeat'])}"
               if side == "jax" else " | ")
      lines.append(f"| {title} | {label} | {r[side]['ms']:,.1f} | {r[side]['per_s']:,.0f} | {ratio} |")
  t = results["train"]
  lines += [
      "",
      f"JAX's first (compiling) training step took {t['jax_compile_and_first_step_s']:.1f} s. Training loss, first "
      f"-> last timed step: JAX {t['jax_loss'][0]:.3f} -> {t['jax_loss'][1]:.3f}, PyTorch {t['torch_loss'][0]:.3f} "
      f"-> {t['torch_loss'][1]:.3f} (each from its own initialisation and masks). Inference logits of the same "
      f"weights differ by at most {results['inference']['max_abs_logit_difference']:.1e}.",
  ]
  return "\n".join(lines) + "\n"


def main(outdir: str) -> None:
  setup = Setup(_LAYERS.value, _WIDTH.value, _HEADS.value, _SEQ_LEN.value, _VOCAB.value, _BATCH.value)
  threads = _TORCH_THREADS.value or [str(os.cpu_count()), "1"]
  try:
    threads = list(dict.fromkeys(int(t) for t in threads))
  except ValueError:
    raise app.UsageError(f"--torch_threads must be integers, got {threads}") from None
  run_bench(outdir, setup, _STEPS.value, _WARMUP.value, _REPEATS.value, threads)


if __name__ == "__main__":
  report.main(main)
