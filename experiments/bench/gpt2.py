"""GPT-2 on CPU: our training step and greedy generation vs transformers' GPT2LMHeadModel in PyTorch eager.

One model on both sides (by default 6 layers, 384 wide, 6 heads, context 256, vocabulary 96,
float32, dropout 0, tied input/output embeddings): research.models.gpt2.GPT2 and transformers'
GPT2LMHeadModel built from the same GPT2Config fields; the parameter counts are checked equal.

Training step (batch 16 windows of 256 + 1 tokens). JAX: the task of experiments/gpt2.py
(research.models.gpt2.make_task: next-token cross-entropy, research.optim's AdamW with weight
decay on kernels and clipping at global norm 1) through research.train's jitted, donated step
(make_train_step), once per attention implementation of --attention. PyTorch: the same loss
(F.cross_entropy of the logits of tokens[:, :-1] against tokens[:, 1:]), loss.backward(),
clip_grad_norm_ and torch.optim.AdamW with the same hyperparameters and the same decayed
tensors. Both train on the same windows of uniformly random token ids (the speed does not
depend on the text). Each repeat runs --warmup untimed steps, then --train_steps timed steps,
each waited for; the per-step time is the median of a repeat's steps.

Generation: greedy decoding of --new_tokens tokens after a --prompt_len-token prompt, for each
batch size of --gen_batches. JAX: research.models.gpt2.generate (prefill into a KV cache, then
one compiled lax.scan of decoding steps), timed after a first (compiling) call. PyTorch:
`generate(do_sample=False, use_cache=True)` of the same weights (moved with gpt2.save_hf and
from_pretrained): the initial weights times WEIGHT_SCALE, so that greedy decoding does not repeat
one token. The tokens are compared too.

The physical limit of batch-1 decoding: every new token reads every weight once. The run
measures how fast this machine reads that many bytes (a jitted sum over one array of the
parameters' size: from the last-level cache where they fit) and, for memory, a numpy copy of a
--bandwidth_mb array (bytes read plus bytes written per second); each divided by the
parameters' bytes is a bound on tokens per second.

Everything runs in this process. Each repeat times every entry (PyTorch, then each JAX
implementation) in an order rotated from repeat to repeat, so a drift in the host's load
spreads over all of them; a ratio divides the PyTorch time of a repeat by the JAX time of the
same repeat (above 1: JAX is faster). Medians over repeats are reported, with each repeat's ratio.

Run:
  python -m experiments.bench.gpt2 --outdir=experiments/bench/results/gpt2
  python -m experiments.bench.gpt2 --outdir=/tmp/gpt2_bench --n_layer=1 --n_embd=32 --n_head=2 --seq_len=16 \\
      --batch_size=2 --train_steps=2 --repeats=1 --new_tokens=8 --gen_batches=1,2 --attention=reference
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
from torch.nn import functional as F

from experiments import gpt2 as gpt2_experiment
from experiments import report
from experiments.bench.steps import StepTimer
from research import optim
from research.models import attention as attention_lib
from research.models import gpt2

_N_LAYER = flags.DEFINE_integer("n_layer", 6, "Transformer blocks.")
_N_EMBD = flags.DEFINE_integer("n_embd", 384, "Model width.")
_N_HEAD = flags.DEFINE_integer("n_head", 6, "Attention heads.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "Context: tokens per training window and n_positions.")
_VOCAB = flags.DEFINE_integer("vocab_size", 96, "Vocabulary size.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Windows per training step.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 5, "Timed training steps per repeat and side.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed training steps before each timing.")
_ATTENTION = flags.DEFINE_list("attention", ["dense", "reference", "xla", "flash"],
                               "JAX attention implementations timed in the training step (the first one also "
                               "generates).")
_GEN_BATCHES = flags.DEFINE_list("gen_batches", ["1", "8"], "Batch sizes of greedy generation.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 200, "New tokens per generated sequence.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 16, "Prompt tokens per generated sequence.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Repeats of every measurement (medians reported).")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", None, "torch.set_num_threads (default: the host's cores).")
_BANDWIDTH_MB = flags.DEFINE_integer("bandwidth_mb", 512, "Size of the array copied to measure memory bandwidth.")

PACKAGES = ("torch", "transformers")


@dataclasses.dataclass(frozen=True)
class Setup:
  """What both sides share: the model's shape, the batch, the optimizer and the data."""

  n_layer: int
  n_embd: int
  n_head: int
  seq_len: int
  vocab_size: int
  batch_size: int

  def config(self, attention: str):
    """experiments/gpt2.py's config for this model, with a constant learning rate (PyTorch needs no schedule)."""
    config = gpt2_experiment.get_config()
    config.n_layer, config.n_embd, config.n_head = self.n_layer, self.n_embd, self.n_head
    config.n_positions = config.seq_len = self.seq_len
    config.batch_size, config.attention, config.dropout = self.batch_size, attention, 0.0
    config.optimizer.schedule, config.optimizer.warmup_steps = "constant", 0
    return config

  def hf_config(self) -> transformers.GPT2Config:
    return transformers.GPT2Config(vocab_size=self.vocab_size, n_positions=self.seq_len, n_embd=self.n_embd,
                                   n_layer=self.n_layer, n_head=self.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                                   attn_pdrop=0.0, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None)

  def batches(self, count: int = 4) -> list[np.ndarray]:
    """`count` windows (batch, seq_len + 1) of random token ids, cycled through by both sides."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, self.vocab_size, (self.batch_size, self.seq_len + 1), dtype=np.int32)
            for _ in range(count)]


# ---------------------------------------------------------------------------------------
# The training step on both sides.


class JaxTrainer(StepTimer):
  """research.train's jitted step on the GPT-2 task; `run(n)` trains n steps and returns seconds per step."""

  def __init__(self, setup: Setup, attention: str, batches: list[np.ndarray]):
    config = setup.config(attention)
    self.optimizer = config.optimizer
    task = gpt2.make_task(config, setup.vocab_size, lambda ids: "", [[0]])
    self.task = dataclasses.replace(task, evaluate=None, sample=None)
    super().__init__(self.task, [{"tokens": jnp.asarray(b)} for b in batches], config.seed)
    self.compile_s = 0.0  # the first call's seconds, set by the caller


class TorchTrainer:
  """transformers' GPT2LMHeadModel with the same loss and AdamW update, in eager mode."""

  def __init__(self, setup: Setup, optimizer, batches: list[np.ndarray]):
    if (optimizer.name, optimizer.schedule, optimizer.decay_embeddings) != ("adamw", "constant", False):
      raise ValueError(f"the PyTorch side implements constant-rate AdamW without embedding decay, got "
                       f"{optimizer.to_dict()}")
    torch.manual_seed(0)
    self.model = transformers.GPT2LMHeadModel(setup.hf_config()).train()
    named = dict(self.model.named_parameters())  # the tied head appears once, as wte
    # research.optim.decay_mask: tensors of rank >= 2 decay, except embedding tables; its path test
    # ("embed" in a name) exempts our wte ("wte/embedding") but not the position table wpe.
    decay = [p for n, p in named.items() if p.ndim >= 2 and n != "transformer.wte.weight"]
    rest = [p for n, p in named.items() if not (p.ndim >= 2 and n != "transformer.wte.weight")]
    self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": optimizer.weight_decay},
                                  {"params": rest, "weight_decay": 0.0}], lr=optimizer.learning_rate,
                                 betas=(optimizer.b1, optimizer.b2), eps=optimizer.eps)
    self.clip = optimizer.grad_clip_norm
    self.vocab_size = setup.vocab_size
    self.batches = [torch.from_numpy(b.astype(np.int64)) for b in batches]
    self.param_count = sum(p.numel() for p in named.values())
    self.decayed = len(decay)
    self.steps = 0
    self.losses: list[float] = []

  def run(self, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
      tokens = self.batches[self.steps % len(self.batches)]
      start = time.perf_counter()
      logits = self.model(tokens[:, :-1]).logits  # (B, T, vocab)
      loss = F.cross_entropy(logits.reshape(-1, self.vocab_size), tokens[:, 1:].reshape(-1))
      self.opt.zero_grad(set_to_none=True)
      loss.backward()
      if self.clip > 0:
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
      self.opt.step()
      times.append(time.perf_counter() - start)
      self.losses.append(float(loss.detach()))
      self.steps += 1
    return times


# ---------------------------------------------------------------------------------------
# Greedy generation on both sides, from the same weights.


# Generation starts from the initial weights times this: at the initialisation's scale the logits
# are nearly flat and greedy decoding repeats one token, which any implementation matches.
WEIGHT_SCALE = 10.0


def generators(setup: Setup, attention: str, prompt_len: int, new_tokens: int, weight_scale: float = WEIGHT_SCALE):
  """(our model, its params, the same weights in transformers) for generation.

  Args:
    setup: the model's shape.
    attention: our attention implementation.
    prompt_len, new_tokens: checked against the context.
    weight_scale: multiplies every initial weight (see WEIGHT_SCALE).
  """
  cfg = gpt2.GPT2Config(vocab_size=setup.vocab_size, n_positions=setup.seq_len, n_embd=setup.n_embd,
                        n_layer=setup.n_layer, n_head=setup.n_head, attention=attention)
  if prompt_len + new_tokens > cfg.n_positions:
    raise app.UsageError(f"--prompt_len + --new_tokens ({prompt_len + new_tokens}) exceeds the context "
                         f"{cfg.n_positions}")
  model = gpt2.GPT2(cfg)
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"])
  params = jax.tree.map(lambda p: p * weight_scale, params)
  with tempfile.TemporaryDirectory() as path:
    gpt2.save_hf(path, cfg, params)
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(path).eval()
  # save_hf names the last token end-of-text; here every sequence runs to new_tokens on both sides.
  hf_model.generation_config.eos_token_id = None
  return model, params, hf_model


def jax_generate(model, params, prompts: np.ndarray, new_tokens: int) -> tuple[np.ndarray, float]:
  start = time.perf_counter()
  out = gpt2.generate(model, params, prompts, new_tokens)  # a numpy array: the tokens are on the host
  return out[:, prompts.shape[1]:], time.perf_counter() - start


def torch_generate(hf_model, prompts: np.ndarray, new_tokens: int) -> tuple[np.ndarray, float]:
  ids = torch.from_numpy(prompts.astype(np.int64))
  start = time.perf_counter()
  with torch.no_grad():
    out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                            do_sample=False, use_cache=True, pad_token_id=0)
  seconds = time.perf_counter() - start
  return out[:, prompts.shape[1]:].numpy(), seconds


def copy_bandwidth(megabytes: int, repeats: int = 3) -> float:
  """Bytes moved per second (read + written) by the fastest of `repeats` numpy copies of a `megabytes` array."""
  src = np.ones(megabytes * 2**20 // 8)
  dst = np.empty_like(src)
  np.copyto(dst, src)  # touches the pages first
  best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
  return 2 * src.nbytes / best


def read_bandwidth(nbytes: int, repeats: int = 5, calls: int = 20) -> float:
  """Bytes read per second by a jitted sum over one float32 array of `nbytes` (all cores; cached if it fits)."""
  x = jnp.ones(nbytes // 4, jnp.float32)
  total = jax.jit(jnp.sum)
  total(x).block_until_ready()  # compiles and touches the pages

  def run():
    for _ in range(calls):
      out = total(x)
    out.block_until_ready()

  return calls * x.nbytes / min(_timed(run) for _ in range(repeats))


def last_level_cache_bytes() -> int | None:
  """The largest CPU cache of cpu0 as Linux reports it (None elsewhere)."""
  sizes = []
  root = "/sys/devices/system/cpu/cpu0/cache"
  for index in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    try:
      with open(os.path.join(root, index, "size")) as f:
        text = f.read().strip()
    except OSError:
      continue
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    sizes.append(int(text.rstrip("KMG")) * scale)
  return max(sizes) if sizes else None


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


# ---------------------------------------------------------------------------------------
# The benchmark.


def _rotated(items: list, r: int) -> list:
  return items[r % len(items):] + items[:r % len(items)]


def compare_training(setup: Setup, attentions: list[str], repeats: int, steps: int, warmup: int) -> dict:
  """Training-step times of PyTorch and every JAX implementation; see the module docstring."""
  batches = setup.batches()
  jax_side = {}
  for name in attentions:
    start = time.perf_counter()
    jax_side[name] = JaxTrainer(setup, name, batches)
    jax_side[name].run(1)  # compiles
    jax_side[name].compile_s = time.perf_counter() - start
  torch_side = TorchTrainer(setup, jax_side[attentions[0]].optimizer, batches)
  counts = {"jax": jax_side[attentions[0]].param_count, "torch": torch_side.param_count}
  if counts["jax"] != counts["torch"]:
    raise AssertionError(f"parameter counts differ: {counts}")
  entries = ["torch"] + attentions
  times = {name: [] for name in entries}
  for r in range(repeats):
    for name in _rotated(entries, r):
      side = torch_side if name == "torch" else jax_side[name]
      side.run(warmup)
      times[name].append(statistics.median(side.run(steps)))
    print(f"training repeat {r}: " + ", ".join(f"{n} {1e3 * times[n][-1]:.0f} ms" for n in entries), flush=True)
  torch_out = {"ms_per_step": 1e3 * statistics.median(times["torch"]),
               "ms_per_step_per_repeat": [1e3 * t for t in times["torch"]],
               "first_loss": torch_side.losses[0], "last_loss": torch_side.losses[-1]}
  hf_attention = torch_side.model.config._attn_implementation  # pylint: disable=protected-access
  out = {"param_count": counts, "hf_attention": hf_attention, "torch": torch_out, "jax": {}}
  for name in attentions:
    ratios = [t / j for t, j in zip(times["torch"], times[name])]
    out["jax"][name] = {"ms_per_step": 1e3 * statistics.median(times[name]),
                        "ms_per_step_per_repeat": [1e3 * t for t in times[name]],
                        "ratio_vs_torch": statistics.median(ratios), "ratios_per_repeat": ratios,
                        "compile_and_first_step_s": jax_side[name].compile_s,
                        "first_loss": jax_side[name].losses[0], "last_loss": jax_side[name].losses[-1]}
  return out


def compare_generation(setup: Setup, attention: str, batch_sizes: list[int], repeats: int, prompt_len: int,
                       new_tokens: int) -> dict:
  """Greedy tokens/s of both sides at each batch size, and whether their tokens agree."""
  model, params, hf_model = generators(setup, attention, prompt_len, new_tokens)
  rng = np.random.default_rng(1)
  out = {}
  for b in batch_sizes:
    prompts = rng.integers(0, setup.vocab_size, (b, prompt_len), dtype=np.int32)
    start = time.perf_counter()
    ours, _ = jax_generate(model, params, prompts, new_tokens)  # compiles
    compile_s = time.perf_counter() - start
    seconds = {"jax": [], "torch": []}
    theirs = None
    for r in range(repeats):
      for side in _rotated(["torch", "jax"], r):
        if side == "jax":
          ours, s = jax_generate(model, params, prompts, new_tokens)
        else:
          theirs, s = torch_generate(hf_model, prompts, new_tokens)
        seconds[side].append(s)
    if theirs.shape != ours.shape:
      raise AssertionError(f"transformers generated {theirs.shape[1]} tokens, we {ours.shape[1]}")
    agree = (theirs == ours).all(axis=0)
    ratios = [t / j for t, j in zip(seconds["torch"], seconds["jax"])]
    rate = lambda s: b * new_tokens / s
    out[str(b)] = {
        "jax_tokens_per_s": rate(statistics.median(seconds["jax"])),
        "torch_tokens_per_s": rate(statistics.median(seconds["torch"])),
        "jax_tokens_per_s_per_repeat": [rate(s) for s in seconds["jax"]],
        "torch_tokens_per_s_per_repeat": [rate(s) for s in seconds["torch"]],
        "ratio_vs_torch": statistics.median(ratios), "ratios_per_repeat": ratios,
        "jax_compile_and_first_call_s": compile_s,
        "tokens_equal": bool(agree.all()),
        "equal_prefix": int(new_tokens if agree.all() else np.argmin(agree)),
    }
  return out


def _markdown(results: dict) -> str:
  env = report.environment(*PACKAGES)
  versions, devices = env["versions"], env["devices"]
  m, train, gen, bound = results["model"], results["train"], results["generate"], results["batch1_bound"]
  load = results["load_average"]
  lines = [
      "# GPT-2 on CPU: research.train's step and gpt2.generate vs transformers in PyTorch eager",
      "",
      f"Command: `{report.command()}`",
      "",
      f"Machine: {devices['cpu_count']} CPU cores shared with other work (1-minute load average {load['start']:.1f} "
      f"at the start, {load['end']:.1f} at the end), {devices['count']} {devices['platform']} device(s); "
      f"jax {versions['jax']}, flax {versions['flax']}, torch {versions['torch']} ({results['torch_threads']} "
      f"threads), transformers {versions['transformers']} (attention: {results['hf_attention']}).",
      "",
      f"Model: {m['n_layer']} layers, {m['n_embd']} wide, {m['n_head']} heads, context {m['seq_len']}, vocabulary "
      f"{m['vocab_size']}, float32, dropout 0, tied embeddings: {train['param_count']['jax']:,} parameters on both "
      f"sides. Training: batch {m['batch_size']}, AdamW (lr {results['optimizer']['learning_rate']:g}, betas "
      f"({results['optimizer']['b1']:g}, {results['optimizer']['b2']:g}), weight decay "
      f"{results['optimizer']['weight_decay']:g} on kernels and wpe, clipping at {results['optimizer']['grad_clip_norm']:g}),"
      f" {results['warmup']} untimed then {results['train_steps']} timed steps per repeat; medians of "
      f"{results['repeats']} repeats in rotated order. Ratios: PyTorch time / JAX time in the same repeat "
      "(above 1: JAX faster).",
      "",
      "## Training step",
      "",
      "| implementation | ms per step | vs PyTorch eager | per repeat | compile + first step (s) |",
      "|---|---:|---:|---|---:|",
      f"| transformers GPT2LMHeadModel, PyTorch eager | {train['torch']['ms_per_step']:,.0f} | 1.00x | "
      f"{', '.join(f'{t:,.0f}' for t in train['torch']['ms_per_step_per_repeat'])} ms | |",
  ]
  for name, j in train["jax"].items():
    lines.append(f"| research.train step, attention=\"{name}\" | {j['ms_per_step']:,.0f} | **{j['ratio_vs_torch']:.2f}x** | "
                 f"{', '.join(f'{r:.2f}x' for r in j['ratios_per_repeat'])} | {j['compile_and_first_step_s']:.1f} |")
  first = next(iter(train["jax"].values()))
  lines += [
      "",
      f"Loss over the timed steps (random tokens, ln {m['vocab_size']} = {np.log(m['vocab_size']):.3f}): JAX "
      f"{first['first_loss']:.3f} -> {first['last_loss']:.3f}; PyTorch {train['torch']['first_loss']:.3f} -> "
      f"{train['torch']['last_loss']:.3f}.",
      "",
      f"## Greedy generation ({results['prompt_len']}-token prompts, {results['new_tokens']} new tokens)",
      "",
      "| batch | transformers generate (tokens/s) | gpt2.generate (tokens/s) | vs transformers | per repeat | "
      "same tokens |",
      "|---:|---:|---:|---:|---|---|",
  ]
  for b, g in gen.items():
    same = "yes" if g["tokens_equal"] else f"first {g['equal_prefix']} of {results['new_tokens']}"
    lines.append(f"| {b} | {g['torch_tokens_per_s']:,.0f} | {g['jax_tokens_per_s']:,.0f} | "
                 f"**{g['ratio_vs_torch']:.2f}x** | {', '.join(f'{r:.2f}x' for r in g['ratios_per_repeat'])} | "
                 f"{same} |")
  lines += [
      "",
      "## The limit at batch 1",
      "",
      f"Decoding one token at batch 1 reads every weight once: {bound['param_bytes'] / 1e6:.1f} MB of float32 "
      f"parameters (the KV cache adds {bound['cache_bytes'] / 1e6:.2f} MB at the longest). "
      + ("This CPU's last-level cache size is unknown. " if bound["cache_size_bytes"] is None else
         f"This CPU's last-level cache holds {bound['cache_size_bytes'] / 2**20:.0f} MiB, so "
         + ("the weights stream from memory for each token. " if bound["cache_size_bytes"] < bound["param_bytes"]
            else "the weights can stay in it between tokens. "))
      + f"A jitted sum over one array of the parameters' size read {bound['weight_read_gb_s']:.1f} GB/s in this run "
      f"(all cores), which bounds batch-1 decoding at about {bound['weight_read_tokens_per_s']:,.0f} tokens/s"
      + ("" if bound["jax_batch1_share_of_weight_read"] is None else
         f"; ours reached {bound['jax_batch1_share_of_weight_read']:.0%} of it")
      + f". From memory instead, a numpy copy of a {results['bandwidth_mb']} MB array moved "
      f"{bound['copy_bandwidth_gb_s']:.1f} GB/s (bytes read plus bytes written), about "
      f"{bound['tokens_per_s']:,.0f} tokens/s. A batch of b sequences reads the weights once per step for b tokens, "
      "so larger batches go faster per token, until the products' arithmetic, not the reading, sets the pace.",
      "",
  ]
  return "\n".join(lines)


def run_bench(outdir: str, setup: Setup, attentions: list[str], gen_batches: list[int], repeats: int,
              train_steps: int, warmup: int, prompt_len: int, new_tokens: int, torch_threads: int | None,
              bandwidth_mb: int) -> dict:
  """Measures training and generation on both sides, writes gpt2.json / gpt2.md into `outdir`; returns the JSON dict."""
  if min(setup.n_layer, setup.n_embd, setup.n_head, setup.seq_len, setup.vocab_size, setup.batch_size) < 1:
    raise app.UsageError("--n_layer, --n_embd, --n_head, --seq_len, --vocab_size and --batch_size must be positive")
  if setup.n_embd % setup.n_head:
    raise app.UsageError(f"--n_embd {setup.n_embd} is not divisible by --n_head {setup.n_head}")
  unknown = sorted(set(attentions) - set(attention_lib.IMPLEMENTATIONS))
  if unknown or not attentions:
    raise app.UsageError(f"--attention must name some of {', '.join(attention_lib.IMPLEMENTATIONS)}; got "
                         f"{attentions}")
  if (not gen_batches or min(gen_batches) < 1 or repeats < 1 or train_steps < 1 or warmup < 0 or prompt_len < 1
      or new_tokens < 1 or bandwidth_mb < 1 or (torch_threads is not None and torch_threads < 1)):
    raise app.UsageError("--gen_batches, --repeats, --train_steps, --prompt_len, --new_tokens, --bandwidth_mb and "
                         "--torch_threads must be positive, --warmup not negative")
  if prompt_len + new_tokens > setup.seq_len:
    raise app.UsageError(f"--prompt_len + --new_tokens ({prompt_len + new_tokens}) exceeds the context "
                         f"--seq_len {setup.seq_len}")
  threads = torch_threads or os.cpu_count() or 1
  torch.set_num_threads(threads)
  load_start = os.getloadavg()[0]
  start = time.perf_counter()
  train = compare_training(setup, attentions, repeats, train_steps, warmup)
  generate = compare_generation(setup, attentions[0], gen_batches, repeats, prompt_len, new_tokens)
  bandwidth = copy_bandwidth(bandwidth_mb)
  param_bytes = 4 * train["param_count"]["jax"]
  cache_bytes = 4 * 2 * setup.n_layer * setup.n_embd * (gpt2.bucket(prompt_len) + new_tokens)
  weight_read = read_bandwidth(param_bytes)
  bound = {"param_bytes": param_bytes, "cache_bytes": cache_bytes, "copy_bandwidth_gb_s": bandwidth / 1e9,
           "tokens_per_s": bandwidth / param_bytes, "cache_size_bytes": last_level_cache_bytes(),
           "weight_read_gb_s": weight_read / 1e9, "weight_read_tokens_per_s": weight_read / param_bytes}
  share = lambda rate: (generate["1"]["jax_tokens_per_s"] / rate) if "1" in generate else None
  bound["jax_batch1_share"] = share(bound["tokens_per_s"])
  bound["jax_batch1_share_of_weight_read"] = share(bound["weight_read_tokens_per_s"])
  config = setup.config(attentions[0])
  results = {
      "model": dataclasses.asdict(setup), "train": train, "generate": generate, "batch1_bound": bound,
      "optimizer": config.optimizer.to_dict(), "attention": attentions, "repeats": repeats,
      "train_steps": train_steps, "warmup": warmup, "prompt_len": prompt_len, "new_tokens": new_tokens,
      "torch_threads": threads, "bandwidth_mb": bandwidth_mb,
      "hf_attention": train.pop("hf_attention"),
      "load_average": {"start": load_start, "end": os.getloadavg()[0]},
  }
  markdown = _markdown(results)
  print(markdown)
  return report.write_report(outdir, "gpt2", results, markdown, json_file="gpt2.json", packages=PACKAGES,
                             wall_time_s=time.perf_counter() - start)


def main(outdir: str) -> None:
  try:
    gen_batches = [int(b) for b in _GEN_BATCHES.value]
  except ValueError:
    raise app.UsageError(f"--gen_batches must be integers, got {_GEN_BATCHES.value}") from None
  setup = Setup(_N_LAYER.value, _N_EMBD.value, _N_HEAD.value, _SEQ_LEN.value, _VOCAB.value, _BATCH.value)
  run_bench(outdir, setup, _ATTENTION.value, gen_batches, _REPEATS.value, _TRAIN_STEPS.value, _WARMUP.value,
            _PROMPT_LEN.value, _NEW_TOKENS.value, _TORCH_THREADS.value, _BANDWIDTH_MB.value)


if __name__ == "__main__":
  report.main(main)
