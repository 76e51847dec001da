"""GPT-2 on CPU: our training step and greedy generation vs transformers' GPT2LMHeadModel in PyTorch eager.

One model on both sides (by default 6 layers, 384 wide, 6 heads, context 256, vocabulary 96,
float32, dropout 0, tied input/output embeddings): research.models.gpt2.GPT2 and transformers'
GPT2LMHeadModel built from the same GPT2Config fields; the parameter counts are checked equal.

Training step (batch 16 windows of 256 + 1 tokens). JAX: the task of experiments/gpt2.py
(research.tasks.gpt2.make_task: next-token cross-entropy, research.optim's AdamW with weight
decay on kernels and clipping at global norm 1) through research.train's jitted, donated step
(make_train_step), once per attention implementation of `attention`. PyTorch: the same loss
(F.cross_entropy of the logits of tokens[:, :-1] against tokens[:, 1:]), loss.backward(),
clip_grad_norm_ and torch.optim.AdamW with the same hyperparameters and the same decayed
tensors. Both train on the same windows of uniformly random token ids (the speed does not
depend on the text). Each repeat runs `warmup` untimed steps, then `train_steps` timed steps,
each waited for; the per-step time is the median of a repeat's steps.

Generation: greedy decoding of `new_tokens` tokens after a `prompt_len`-token prompt, for each
batch size of `gen_batches`. JAX: research.models.gpt2.generate (prefill into a KV cache, then
one compiled lax.scan of decoding steps), timed after a first (compiling) call. PyTorch:
`generate(do_sample=False, use_cache=True)` of the same weights (moved with gpt2.save_hf and
from_pretrained): the initial weights times WEIGHT_SCALE, so that greedy decoding does not repeat
one token. The tokens are compared too.

The physical limit of batch-1 decoding: every new token reads every weight once. The run
measures how fast this machine reads that many bytes (a jitted sum over one array of the
parameters' size: from the last-level cache where they fit) and, for memory, a numpy copy of a
`bandwidth_mb` array (bytes read plus bytes written per second); each divided by the
parameters' bytes is a bound on tokens per second.

Everything runs in this process. Each repeat times every entry (PyTorch and each JAX
implementation) in an order rotated from repeat to repeat (experiments/harness.py's timer), so a
drift in the host's load spreads over all of them; a ratio divides the PyTorch time of a repeat by the JAX time of the
same repeat (above 1: JAX is faster). Medians over repeats are reported, with each repeat's ratio.

Run:
  python -m experiments.bench.gpt2 --outdir=experiments/bench/results/gpt2
  python -m experiments.bench.gpt2 --outdir=/tmp/gpt2_bench --config=experiments/bench/gpt2.py:smoke
  python -m experiments.bench.gpt2 --outdir=/tmp/gpt2_bench --config=experiments/bench/gpt2.py:smoke \\
      --config.attention=reference --config.gen_batches=1,8
"""

import dataclasses
import os
import statistics
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch
import transformers
from torch.nn import functional as F

from experiments import gpt2 as gpt2_experiment
from experiments import harness
from experiments.bench.steps import StepTimer, TorchSteps, torch_adamw
from research.models import attention as attention_lib
from research.models import gpt2
from research.tasks import gpt2 as gpt2_tasks
from research.train import ConfigError, check_positive, cli

PACKAGES = ("torch", "transformers")


def _smoke(config: ml_collections.ConfigDict) -> None:
  """A one-block model, two steps, short generations, one repeat, for tests."""
  config.n_layer, config.n_embd, config.n_head, config.seq_len, config.batch_size = 1, 32, 2, 16, 2
  config.train_steps, config.warmup, config.repeats = 2, 0, 1
  config.prompt_len, config.new_tokens, config.gen_batches = 4, 8, (1, 2)
  config.attention, config.bandwidth_mb = ("reference", "flash"), 8


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The benchmark's model and protocol; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.n_layer = 6  # transformer blocks
  config.n_embd = 384  # model width
  config.n_head = 6  # attention heads
  config.seq_len = 256  # context: tokens per training window and n_positions
  config.vocab_size = 96  # vocabulary size
  config.batch_size = 16  # windows per training step
  config.train_steps = 5  # timed training steps per repeat and side
  config.warmup = 1  # untimed training steps before each timing
  # JAX attention implementations timed in the training step (the first one also generates).
  config.attention = ("dense", "reference", "xla", "flash")
  config.gen_batches = (1, 8)  # batch sizes of greedy generation
  config.new_tokens = 200  # new tokens per generated sequence
  config.prompt_len = 16  # prompt tokens per generated sequence
  config.repeats = 3  # repeats of every measurement, in rotated order; medians are reported
  # torch.set_num_threads values timed, the faster one per repeat compared (default: the host's cores).
  config.torch_threads = (os.cpu_count() or 1,)
  config.bandwidth_mb = 512  # size of the array copied to measure memory bandwidth
  return cli.apply_presets(config, preset, PRESETS)


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
  """research.train's jitted step on the GPT-2 task; `step()` trains one step."""

  def __init__(self, setup: Setup, attention: str, batches: list[np.ndarray]):
    config = setup.config(attention)
    self.optimizer = config.optimizer
    task = gpt2_tasks.make_task(config, setup.vocab_size, lambda ids: "", [[0]])
    self.task = dataclasses.replace(task, evaluate=None, sample=None)
    super().__init__(self.task, [{"tokens": jnp.asarray(b)} for b in batches], config.seed)
    start = time.perf_counter()
    self.step()  # compiles
    self.compile_s = time.perf_counter() - start


class TorchTrainer(TorchSteps):
  """transformers' GPT2LMHeadModel with the same loss and AdamW update, in eager mode; `step()` trains one step."""

  def __init__(self, setup: Setup, optimizer, batches: list[np.ndarray]):
    torch.manual_seed(0)
    self.model = transformers.GPT2LMHeadModel(setup.hf_config()).train()
    named = dict(self.model.named_parameters())  # the tied head appears once, as wte
    # research.optim.decay_mask: tensors of rank >= 2 decay, except embedding tables; its path test
    # ("embed" in a name) exempts our wte ("wte/embedding") but not the position table wpe.
    opt = torch_adamw(named, optimizer, lambda n, p: p.ndim >= 2 and n != "transformer.wte.weight")
    vocab_size = setup.vocab_size

    def loss(tokens):
      logits = self.model(tokens[:, :-1]).logits  # (B, T, vocab)
      return F.cross_entropy(logits.reshape(-1, vocab_size), tokens[:, 1:].reshape(-1))

    super().__init__(loss, self.model.parameters(), opt, [torch.from_numpy(b.astype(np.int64)) for b in batches],
                     optimizer.grad_clip_norm)
    self.param_count = sum(p.numel() for p in named.values())


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
    raise ConfigError(f"prompt_len + new_tokens ({prompt_len + new_tokens}) exceeds the context {cfg.n_positions}")
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
  best = min(harness.call_times(lambda: np.copyto(dst, src), repeats))
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

  return calls * x.nbytes / min(harness.call_times(run, repeats))


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


# ---------------------------------------------------------------------------------------
# The benchmark.


def compare_training(setup: Setup, attentions: list[str], repeats: int, steps: int, warmup: int,
                     threads: list[int]) -> dict:
  """Training-step times of PyTorch and every JAX implementation; see the module docstring."""
  batches = setup.batches()
  jax_side = {name: JaxTrainer(setup, name, batches) for name in attentions}
  torch_side = TorchTrainer(setup, jax_side[attentions[0]].optimizer, batches)
  counts = {"jax": jax_side[attentions[0]].param_count, "torch": torch_side.param_count}
  if counts["jax"] != counts["torch"]:
    raise AssertionError(f"parameter counts differ: {counts}")
  torch_names = [f"torch_{t}" for t in threads]
  timings = harness.compare({**{name: harness.steps(torch_side.step, steps, warmup, torch_threads=t)
                                for name, t in zip(torch_names, threads)},
                             **{name: harness.steps(jax_side[name].step, steps, warmup) for name in attentions}},
                            repeats, label="training", unit=" steps/s")
  best = timings.best_seconds(torch_names)  # the faster thread setting of each repeat
  torch_out = {"ms_per_step": 1e3 * statistics.median(best), "ms_per_step_per_repeat": [1e3 * t for t in best],
               "ms_per_step_per_threads": {str(t): 1e3 * timings.median_seconds(name)
                                           for name, t in zip(torch_names, threads)},
               "first_loss": torch_side.losses[0], "last_loss": torch_side.losses[-1]}
  hf_attention = torch_side.model.config._attn_implementation  # pylint: disable=protected-access
  out = {"param_count": counts, "hf_attention": hf_attention, "torch": torch_out, "jax": {},
         "timing": timings.record()}
  for name in attentions:
    out["jax"][name] = {"ms_per_step": 1e3 * timings.median_seconds(name),
                        "ms_per_step_per_repeat": [1e3 * t for t in timings.seconds(name)],
                        "ratio_vs_torch": timings.median_ratio(name, torch_names),
                        "ratios_per_repeat": timings.ratios(name, torch_names),
                        "compile_and_first_step_s": jax_side[name].compile_s,
                        "first_loss": jax_side[name].losses[0], "last_loss": jax_side[name].losses[-1]}
  return out


def compare_generation(setup: Setup, attention: str, batch_sizes: list[int], repeats: int, prompt_len: int,
                       new_tokens: int, threads: list[int]) -> dict:
  """Greedy tokens/s of both sides at each batch size, and whether their tokens agree."""
  model, params, hf_model = generators(setup, attention, prompt_len, new_tokens)
  rng = np.random.default_rng(1)
  out = {}
  for b in batch_sizes:
    prompts = rng.integers(0, setup.vocab_size, (b, prompt_len), dtype=np.int32)
    start = time.perf_counter()
    jax_generate(model, params, prompts, new_tokens)  # compiles
    compile_s = time.perf_counter() - start
    tokens = {}

    def side(name, generate, *args, prompts=prompts):
      def measure():
        tokens[name], seconds = generate(*args, prompts, new_tokens)
        return seconds
      return measure

    torch_names = [f"torch_{t}" for t in threads]
    timings = harness.compare({**{name: harness.Side(side(name, torch_generate, hf_model), torch_threads=t)
                                  for name, t in zip(torch_names, threads)},
                               "jax": harness.Side(side("jax", jax_generate, model, params))}, repeats,
                              label=f"generation, batch {b}", unit=" calls/s")
    seconds = {"jax": timings.seconds("jax"), "torch": timings.best_seconds(torch_names)}
    ours, theirs = tokens["jax"], tokens[torch_names[0]]
    if theirs.shape != ours.shape:
      raise AssertionError(f"transformers generated {theirs.shape[1]} tokens, we {ours.shape[1]}")
    agree = (theirs == ours).all(axis=0)
    ratios = timings.ratios("jax", torch_names)
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
        "timing": timings.record(),
    }
  return out


def _markdown(results: dict) -> str:
  env = harness.environment(*PACKAGES)
  m, train, gen, bound = results["model"], results["train"], results["generate"], results["batch1_bound"]
  optimizer = results["optimizer"]
  torch_row = ("transformers GPT2LMHeadModel, PyTorch eager", f"{train['torch']['ms_per_step']:,.0f}", "1.00x",
               f"{', '.join(f'{t:,.0f}' for t in train['torch']['ms_per_step_per_repeat'])} ms", "")
  jax_rows = [(f'research.train step, attention="{name}"', f"{j['ms_per_step']:,.0f}",
               f"**{j['ratio_vs_torch']:.2f}x**", ", ".join(f"{r:.2f}x" for r in j["ratios_per_repeat"]),
               f"{j['compile_and_first_step_s']:.1f}")
              for name, j in train["jax"].items()]
  gen_rows = [(b, f"{g['torch_tokens_per_s']:,.0f}", f"{g['jax_tokens_per_s']:,.0f}", f"**{g['ratio_vs_torch']:.2f}x**",
               ", ".join(f"{r:.2f}x" for r in g["ratios_per_repeat"]),
               "yes" if g["tokens_equal"] else f"first {g['equal_prefix']} of {results['new_tokens']}")
              for b, g in gen.items()]
  first = next(iter(train["jax"].values()))
  return harness.document(
      "GPT-2 on CPU: research.train's step and gpt2.generate vs transformers in PyTorch eager",
      harness.machine(env, results["load_average"], ("jax", "flax", "torch", "transformers"))
      + f" PyTorch at {' and '.join(map(str, results['torch_threads']))} thread(s), the faster compared in each "
      f"repeat; transformers' attention: {results['hf_attention']}.",
      f"Model: {m['n_layer']} layers, {m['n_embd']} wide, {m['n_head']} heads, context {m['seq_len']}, vocabulary "
      f"{m['vocab_size']}, float32, dropout 0, tied embeddings: {train['param_count']['jax']:,} parameters on both "
      f"sides. Training: batch {m['batch_size']}, AdamW (lr {optimizer['learning_rate']:g}, betas "
      f"({optimizer['b1']:g}, {optimizer['b2']:g}), weight decay "
      f"{optimizer['weight_decay']:g} on kernels and wpe, clipping at {optimizer['grad_clip_norm']:g}),"
      f" {results['warmup']} untimed then {results['train_steps']} timed steps per repeat; medians of "
      f"{results['repeats']} repeats in rotated order. Ratios: PyTorch time / JAX time in the same repeat "
      "(above 1: JAX faster).",
      "## Training step",
      harness.table(["implementation", "ms per step", "vs PyTorch eager", "per repeat", "compile + first step (s)"],
                    [torch_row, *jax_rows], align="lrrlr"),
      f"Loss over the timed steps (random tokens, ln {m['vocab_size']} = {np.log(m['vocab_size']):.3f}): JAX "
      f"{first['first_loss']:.3f} -> {first['last_loss']:.3f}; PyTorch {train['torch']['first_loss']:.3f} -> "
      f"{train['torch']['last_loss']:.3f}.",
      f"## Greedy generation ({results['prompt_len']}-token prompts, {results['new_tokens']} new tokens)",
      harness.table(["batch", "transformers generate (tokens/s)", "gpt2.generate (tokens/s)", "vs transformers",
                     "per repeat", "same tokens"], gen_rows, align="rrrrll"),
      "## The limit at batch 1",
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
      "so larger batches go faster per token, until the products' arithmetic, not the reading, sets the pace.")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad field, before anything is built or timed."""
  for name in ("n_layer", "n_embd", "n_head", "seq_len", "vocab_size", "batch_size", "repeats", "train_steps",
               "prompt_len", "new_tokens", "bandwidth_mb"):
    check_positive(name, config[name])
  check_positive("warmup", config.warmup, allow_zero=True)
  harness.check_counts("torch_threads", config.torch_threads)
  if config.n_embd % config.n_head:
    raise ConfigError(f"n_embd {config.n_embd} is not divisible by n_head {config.n_head}")
  harness.check_names("attention", config.attention, attention_lib.IMPLEMENTATIONS)
  harness.check_counts("gen_batches", config.gen_batches)
  if config.prompt_len + config.new_tokens > config.seq_len:
    raise ConfigError(f"prompt_len + new_tokens ({config.prompt_len + config.new_tokens}) exceeds the context "
                      f"seq_len {config.seq_len}")


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Measures training and generation on both sides, writes gpt2.json / gpt2.md into `outdir`; returns the JSON dict."""
  check_config(config)
  setup = Setup(config.n_layer, config.n_embd, config.n_head, config.seq_len, config.vocab_size, config.batch_size)
  attentions, gen_batches = list(config.attention), list(config.gen_batches)
  prompt_len, new_tokens = config.prompt_len, config.new_tokens
  threads = list(dict.fromkeys(config.torch_threads))
  start = time.perf_counter()
  train = compare_training(setup, attentions, config.repeats, config.train_steps, config.warmup, threads)
  generate = compare_generation(setup, attentions[0], gen_batches, config.repeats, prompt_len, new_tokens, threads)
  bandwidth = copy_bandwidth(config.bandwidth_mb)
  param_bytes = 4 * train["param_count"]["jax"]
  cache_bytes = 4 * 2 * setup.n_layer * setup.n_embd * (gpt2.bucket(prompt_len) + new_tokens)
  weight_read = read_bandwidth(param_bytes)
  bound = {"param_bytes": param_bytes, "cache_bytes": cache_bytes, "copy_bandwidth_gb_s": bandwidth / 1e9,
           "tokens_per_s": bandwidth / param_bytes, "cache_size_bytes": last_level_cache_bytes(),
           "weight_read_gb_s": weight_read / 1e9, "weight_read_tokens_per_s": weight_read / param_bytes}
  share = lambda rate: (generate["1"]["jax_tokens_per_s"] / rate) if "1" in generate else None
  bound["jax_batch1_share"] = share(bound["tokens_per_s"])
  bound["jax_batch1_share_of_weight_read"] = share(bound["weight_read_tokens_per_s"])
  model_config = setup.config(attentions[0])
  last_generation = generate[str(gen_batches[-1])]["timing"]
  results = {
      "model": dataclasses.asdict(setup), "train": train, "generate": generate, "batch1_bound": bound,
      "optimizer": model_config.optimizer.to_dict(), "attention": attentions, "repeats": config.repeats,
      "train_steps": config.train_steps, "warmup": config.warmup, "prompt_len": prompt_len, "new_tokens": new_tokens,
      "torch_threads": threads, "bandwidth_mb": config.bandwidth_mb,
      "hf_attention": train.pop("hf_attention"),
      "load_average": {"start": train["timing"]["load_average"]["start"],
                       "end": last_generation["load_average"]["end"]},
  }
  markdown = _markdown(results)
  print(markdown)
  return harness.write_report(outdir, "gpt2", results, markdown, json_file="gpt2.json", packages=PACKAGES,
                              wall_time_s=time.perf_counter() - start)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
