"""RLHF's PPO on CPU: rollout + update throughput of research.rl.rlhf vs the same algorithm in PyTorch eager.

The peer. TRL, the PyTorch ecosystem's usual tool, has no PPO trainer in its current release
(TRL 1.16.0, the one PyPI offers here, has SFT, reward, DPO, KTO, GRPO, RLOO and distillation
trainers, and more under trl.experimental, but no PPOTrainer), so the peer is the same algorithm
written directly with transformers and PyTorch eager, the way TRL's PPOTrainer with its
AutoModelForCausalLMWithValueHead did it: transformers' GPT2LMHeadModel with a linear value head
on the final hidden states, a frozen copy as the reference, a GPT2Model with a linear head on the
last token as the reward model; rollouts by `generate(do_sample=True)` with its KV cache; one
forward pass each of policy (log-probabilities and values), reference and reward model; the
per-token reward -beta (log pi - log pi_ref) plus the score on the last token; GAE as a reversed
loop over the completion's tokens; then `update_epochs` passes of `num_minibatches` shuffled
minibatches of whole sequences, each a forward pass, the clipped surrogate plus the clipped value
loss, loss.backward(), clip_grad_norm_ and torch.optim.Adam.

Ours: research.rl.rlhf's PPO (the KV-cache sampler, the same three forward passes, GAE and the
epochs of minibatches, all one XLA program), timed two ways: `make_ppo_train`, the whole run of
`iterations` rollout + update iterations as one `lax.scan`, and `make_ppo_update` jitted and
called once per iteration from Python (what the training loop runs, through make_ppo_task).

The default sizes are experiments/rlhf.py's (a 2-layer, 64-wide GPT on python_docs' 104
characters, a reward model of the same size, 16-character prompts, 48 new tokens, 32 prompts per
rollout, 4 epochs x 4 minibatches). Both sides start from the same weights (ours moved with
gpt2.save_hf, the heads copied), draw `batch_size` prompts per iteration from the same
`num_prompts` random prompts, sample `new_tokens` tokens per prompt at temperature 1 and use
the same hyperparameters (beta `kl_coef`, clip 0.2 for the surrogate and the value loss, value
weight 0.1, no entropy bonus, gamma 1, lambda 0.95, per-minibatch advantage whitening, Adam with
eps 1e-5 at `learning_rate` after clipping the gradient's global norm at 1). The value head
starts random (make_ppo_train starts its own at zero, as the library does; the speed does not
depend on it). The run checks that both sides compute the same: the completions of our first
rollout are scored again by the peer's forward passes and GAE from the same starting weights,
and the largest differences in log-probabilities, values, scores, rewards and advantages are
reported.

Throughput is completion tokens per second: batch_size * new_tokens per rollout + update
iteration (each token is sampled once and trained on update_epochs times). Each repeat times
every entry (`iterations` iterations after `warmup` untimed ones for the Python loops; one
call of the compiled whole run for the scan) in an order rotated from repeat to repeat
(experiments/harness.py's timer). The peer is timed at every thread count of `torch_threads`
(by default the host's cores and 1: a pool spanning every core stalls when other processes share
them); a ratio divides the peer's seconds
per iteration at its faster setting by an entry's in the same repeat (above 1: faster than the
peer). Medians over repeats are reported, with each repeat's ratio. Compilation is timed apart.

Run:
  python -m experiments.bench.rlhf --outdir=experiments/bench/results/rlhf
  python -m experiments.bench.rlhf --outdir=/tmp/rlhf_bench --config=experiments/bench/rlhf.py:smoke
"""

import dataclasses
import os
import statistics
import tempfile
import time
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import torch
import transformers
from torch import nn as torch_nn
from torch.nn import functional as F

from experiments import harness
from experiments.bench.steps import param_count
from research.models import gpt2
from research.rl import rlhf
from research.train import ConfigError, check_positive, cli

PACKAGES = ("torch", "transformers")
# The hyperparameters both sides use besides the flags' (research.rl.rlhf.ppo_hparams' defaults).
CLIP_EPS, VF_COEF, GAMMA, GAE_LAMBDA, ADAM_EPS, GRAD_CLIP = 0.2, 0.1, 1.0, 0.95, 1e-5, 1.0


def _smoke(config: ml_collections.ConfigDict) -> None:
  """One-block models, one short iteration, one thread, one repeat, for tests."""
  config.n_layer, config.n_embd, config.n_head = 1, 32, 2
  config.rm_n_layer, config.rm_n_embd, config.rm_n_head = 1, 16, 2
  config.vocab_size, config.prompt_len, config.new_tokens, config.batch_size, config.num_prompts = 96, 4, 4, 4, 8
  config.update_epochs, config.num_minibatches = 1, 2
  config.iterations, config.warmup, config.repeats, config.torch_threads = 1, 0, 1, (1,)


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """experiments/rlhf.py's sizes and the benchmark's protocol; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.n_layer = 2  # policy (and reference) transformer blocks
  config.n_embd = 64  # policy width
  config.n_head = 4  # policy attention heads
  config.rm_n_layer = 2  # reward model transformer blocks
  config.rm_n_embd = 64  # reward model width
  config.rm_n_head = 4  # reward model attention heads
  config.vocab_size = 104  # vocabulary size (104: the character vocabulary of python_docs)
  config.prompt_len = 16  # prompt tokens
  config.new_tokens = 48  # completion tokens sampled per prompt
  config.batch_size = 32  # prompts per rollout
  config.num_prompts = 256  # random prompts the rollouts draw from
  config.update_epochs = 4  # PPO passes over each rollout
  config.num_minibatches = 4  # minibatches per pass
  config.learning_rate = 1e-4  # Adam step size
  config.kl_coef = 0.05  # beta of the per-token KL penalty
  config.iterations = 2  # timed rollout + update iterations per repeat and entry
  config.warmup = 1  # untimed iterations before each timing of a Python loop
  config.repeats = 3  # repeats of every measurement, in rotated order; medians are reported
  config.torch_threads = harness.host_threads()  # torch.set_num_threads values timed; the faster per repeat compared
  config.seed = 0  # seeds the weights, the prompts and both samplers
  return cli.apply_presets(config, preset, PRESETS)


@dataclasses.dataclass(frozen=True)
class Setup:
  """What both sides share: the models' shapes, the rollout and the update's schedule."""

  n_layer: int
  n_embd: int
  n_head: int
  rm_n_layer: int
  rm_n_embd: int
  rm_n_head: int
  vocab_size: int
  prompt_len: int
  new_tokens: int
  batch_size: int
  num_prompts: int
  update_epochs: int
  num_minibatches: int
  learning_rate: float
  kl_coef: float

  def gpt2_config(self, reward: bool = False) -> gpt2.GPT2Config:
    """Our GPT2Config of the policy (or, with `reward`, of the reward model's backbone)."""
    n_layer, n_embd, n_head = ((self.rm_n_layer, self.rm_n_embd, self.rm_n_head) if reward
                               else (self.n_layer, self.n_embd, self.n_head))
    return gpt2.GPT2Config(vocab_size=self.vocab_size, n_positions=self.prompt_len + self.new_tokens, n_embd=n_embd,
                           n_layer=n_layer, n_head=n_head)

  def settings(self) -> rlhf.PPOSettings:
    return rlhf.PPOSettings(new_tokens=self.new_tokens, update_epochs=self.update_epochs,
                            num_minibatches=self.num_minibatches, clip_value_loss=True,
                            reward_model=self.gpt2_config(reward=True))

  def hparams(self) -> rlhf.PPOHParams:
    return rlhf.ppo_hparams(kl_coef=self.kl_coef, clip_eps=CLIP_EPS, vf_coef=VF_COEF, ent_coef=0.0, gamma=GAMMA,
                            gae_lambda=GAE_LAMBDA)

  def tx(self) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(GRAD_CLIP), optax.adam(self.learning_rate, eps=ADAM_EPS))

  def tokens_per_iteration(self) -> int:
    return self.batch_size * self.new_tokens



class Weights(NamedTuple):
  """The starting weights both sides load."""

  lm: Any  # the policy's (and the reference's) language model: GPT-2's inner params dict
  value_head: Any  # {"kernel": (E, 1), "bias": (1,)}
  rm: Any  # the reward model's variables {"params": {"backbone": ..., "head": ...}}


def make_weights(setup: Setup, seed: int) -> Weights:
  """Random starting weights for both sides.

  The value head is random too (the library starts it at zero), so that the values and the
  advantages built on them take part in the check that both sides compute the same.
  """
  k_lm, k_rm, k_head = jax.random.split(jax.random.key(seed), 3)
  lm = nn.unbox(gpt2.GPT2(setup.gpt2_config()).init(k_lm, jnp.zeros((1, 1), jnp.int32)))["params"]
  rm = rlhf.init_reward_model(setup.gpt2_config(reward=True), k_rm, setup.prompt_len + setup.new_tokens)
  # A float32 bias, not a weakly typed one: the step returns float32, and a changed type would recompile it.
  head = {"kernel": 0.1 * jax.random.normal(k_head, (setup.n_embd, 1)), "bias": jnp.full((1,), 0.1, jnp.float32)}
  return Weights(lm=lm, value_head=head, rm=rm)


def policy_variables(weights: Weights) -> dict:
  """Our PolicyWithValue variables from `weights`."""
  return {"params": {"backbone": weights.lm, "value_head": weights.value_head}}


# ---------------------------------------------------------------------------------------
# The peer: PPO for a language model with transformers and PyTorch eager.


def _linear(kernel, bias) -> torch_nn.Linear:
  """A torch Linear holding a Dense layer's (in, out) kernel and bias."""
  kernel = np.array(kernel, np.float32)
  layer = torch_nn.Linear(*kernel.shape)
  with torch.no_grad():
    layer.weight.copy_(torch.from_numpy(kernel.T.copy()))
    layer.bias.copy_(torch.from_numpy(np.array(bias, np.float32)))
  return layer


class TorchRollout(NamedTuple):
  """The peer's rollout, (B, ...) tensors as our rlhf.Rollout holds them."""

  tokens: torch.Tensor  # (B, P + N) int64
  log_prob: torch.Tensor  # (B, N)
  ref_log_prob: torch.Tensor  # (B, N)
  value: torch.Tensor  # (B, N)
  score: torch.Tensor  # (B,)
  reward: torch.Tensor  # (B, N)
  advantage: torch.Tensor  # (B, N)
  target: torch.Tensor  # (B, N)


class TorchPPO:
  """RLHF's PPO written plainly with transformers and PyTorch eager; see the module docstring."""

  def __init__(self, setup: Setup, weights: Weights, prompts: np.ndarray, seed: int):
    self.setup = setup
    with tempfile.TemporaryDirectory() as path:
      gpt2.save_hf(os.path.join(path, "lm"), setup.gpt2_config(), weights.lm)
      gpt2.save_hf(os.path.join(path, "rm"), setup.gpt2_config(reward=True), weights.rm["params"]["backbone"])
      self.policy = transformers.GPT2LMHeadModel.from_pretrained(os.path.join(path, "lm"))
      self.reference = transformers.GPT2LMHeadModel.from_pretrained(os.path.join(path, "lm")).eval()
      self.reward_backbone = transformers.GPT2Model.from_pretrained(os.path.join(path, "rm")).eval()
    # save_hf names the last token end-of-text; every completion here runs to new_tokens, as ours.
    self.policy.generation_config.eos_token_id = None
    self.reference.requires_grad_(False)
    self.reward_backbone.requires_grad_(False)
    self.value_head = _linear(weights.value_head["kernel"], weights.value_head["bias"])
    self.reward_head = _linear(weights.rm["params"]["head"]["kernel"], weights.rm["params"]["head"]["bias"])
    self.reward_head.requires_grad_(False)
    self.params = list(self.policy.parameters()) + list(self.value_head.parameters())
    self.opt = torch.optim.Adam(self.params, lr=setup.learning_rate, eps=ADAM_EPS)
    self.prompts = torch.from_numpy(prompts.astype(np.int64))
    self.generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    self.param_count = {"policy": sum(p.numel() for p in self.params),
                        "reward_model": sum(p.numel() for p in self.reward_backbone.parameters())
                                        + sum(p.numel() for p in self.reward_head.parameters())}
    self.scores: list[float] = []

  def _policy(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, N, vocab), values (B, N)) at the states each completion token is chosen in."""
    p = self.setup.prompt_len
    hidden = self.policy.transformer(tokens[:, :-1]).last_hidden_state[:, p - 1:]  # (B, N, E), after ln_f
    return self.policy.lm_head(hidden), self.value_head(hidden)[..., 0]

  def _log_prob(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    actions = tokens[:, self.setup.prompt_len:]  # (B, N)
    return torch.gather(F.log_softmax(logits, dim=-1), 2, actions[..., None])[..., 0]

  @torch.no_grad()
  def score(self, tokens: torch.Tensor) -> TorchRollout:
    """Log-probabilities, values, reward-model scores, per-token rewards and GAE of sampled sequences."""
    s, p = self.setup, self.setup.prompt_len
    logits, values = self._policy(tokens)
    log_prob = self._log_prob(logits, tokens)
    ref_log_prob = self._log_prob(self.reference(tokens[:, :-1]).logits[:, p - 1:], tokens)
    score = self.reward_head(self.reward_backbone(tokens).last_hidden_state[:, -1])[..., 0]  # (B,): last token
    rewards = -s.kl_coef * (log_prob - ref_log_prob)
    rewards[:, -1] += score
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros(rewards.shape[0])
    next_value = torch.zeros(rewards.shape[0])
    for t in reversed(range(s.new_tokens)):  # the completion ends after its last token
      delta = rewards[:, t] + GAMMA * next_value - values[:, t]
      next_advantage = delta + GAMMA * GAE_LAMBDA * next_advantage
      advantages[:, t] = next_advantage
      next_value = values[:, t]
    return TorchRollout(tokens, log_prob, ref_log_prob, values, score, rewards, advantages, advantages + values)

  @torch.no_grad()
  def rollout(self) -> TorchRollout:
    s = self.setup
    prompts = self.prompts[torch.randint(len(self.prompts), (s.batch_size,), generator=self.generator)]
    tokens = self.policy.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, temperature=1.0,
                                  top_k=0, top_p=1.0, max_new_tokens=s.new_tokens, min_new_tokens=s.new_tokens,
                                  use_cache=True, pad_token_id=0)
    return self.score(tokens)

  def update(self, batch: TorchRollout) -> None:
    s = self.setup
    size = s.batch_size // s.num_minibatches
    for _ in range(s.update_epochs):
      order = torch.randperm(s.batch_size, generator=self.generator)
      for m in range(s.num_minibatches):
        mb = TorchRollout(*(x[order[m * size:(m + 1) * size]] for x in batch))
        logits, values = self._policy(mb.tokens)
        log_prob = self._log_prob(logits, mb.tokens)
        advantage = (mb.advantage - mb.advantage.mean()) / (mb.advantage.std() + 1e-8)
        ratio = torch.exp(log_prob - mb.log_prob)
        policy_loss = -torch.mean(torch.minimum(ratio * advantage,
                                                torch.clamp(ratio, 1 - CLIP_EPS, 1 + CLIP_EPS) * advantage))
        clipped = mb.value + torch.clamp(values - mb.value, -CLIP_EPS, CLIP_EPS)
        value_loss = 0.5 * torch.mean(torch.maximum((values - mb.target) ** 2, (clipped - mb.target) ** 2))
        loss = policy_loss + VF_COEF * value_loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, GRAD_CLIP)
        self.opt.step()
        with torch.no_grad():  # the statistics a PPO trainer logs, as ours computes them
          logp = F.log_softmax(logits, dim=-1)
          _ = (-(logp.exp() * logp).sum(-1).mean(), (ratio - 1 - torch.log(ratio)).mean(),
               ((ratio - 1).abs() > CLIP_EPS).float().mean())

  def run(self, iterations: int) -> tuple[float, float]:
    """(rollout seconds, update seconds) summed over `iterations` iterations."""
    rollout_s = update_s = 0.0
    for _ in range(iterations):
      start = time.perf_counter()
      batch = self.rollout()
      middle = time.perf_counter()
      self.update(batch)
      rollout_s, update_s = rollout_s + middle - start, update_s + time.perf_counter() - middle
      self.scores.append(float(batch.score.mean()))
    return rollout_s, update_s


# ---------------------------------------------------------------------------------------
# Ours: research.rl.rlhf's PPO.


class JaxScan:
  """`make_ppo_train`: `iterations` rollout + update iterations as one compiled lax.scan; `run()` times one call."""

  def __init__(self, setup: Setup, weights: Weights, prompts: np.ndarray, iterations: int, seed: int):
    train = rlhf.make_ppo_train(setup.gpt2_config(), setup.settings(), setup.tx(), prompts, setup.batch_size,
                                iterations)
    self.args = (weights.lm, weights.lm, weights.rm, setup.hparams())
    self.key = jax.random.key(seed)
    self.calls = 0
    start = time.perf_counter()
    self.fn = jax.jit(train).lower(self.key, *self.args).compile()
    self.compile_s = time.perf_counter() - start
    self.scores: list[float] = []
    self.first_call_s = self.run()  # a first call pays one-time costs (allocation, thread pools) the others do not

  def run(self) -> float:
    start = time.perf_counter()
    out = self.fn(jax.random.fold_in(self.key, self.calls), *self.args)
    scores = np.asarray(out.metrics.score)  # waits for the run
    seconds = time.perf_counter() - start
    self.calls += 1
    self.scores += scores.tolist()
    return seconds


class JaxUpdate:
  """`make_ppo_update` jitted (state donated) and called once per iteration from Python, as the loop runs it."""

  def __init__(self, setup: Setup, weights: Weights, prompts: np.ndarray, seed: int):
    tx = setup.tx()
    self.setup = setup
    # A copy: the policy's state is donated, while the reference keeps the starting weights.
    self.params = jax.tree.map(jnp.copy, policy_variables(weights))
    self.opt_state = tx.init(self.params)
    self.frozen = rlhf.Frozen(weights.lm, weights.rm, jnp.ones((), jnp.float32))
    self.prompts = jnp.asarray(prompts, jnp.int32)
    self.hparams = setup.hparams()
    self.key = jax.random.key(seed)
    self.rng = np.random.default_rng(seed)
    self.iterations = 0
    self.step = jax.jit(rlhf.make_ppo_update(setup.gpt2_config(), setup.settings(), tx), donate_argnums=(0, 1))
    self.param_count = param_count(self.params)
    self.rm_param_count = param_count(weights.rm)
    self.scores: list[float] = []
    start = time.perf_counter()
    self.run(1)  # compiles
    self.compile_s = time.perf_counter() - start
    self.first_rollout = self.rollout  # sampled from the starting weights

  def run(self, iterations: int) -> float:
    start = time.perf_counter()
    for _ in range(iterations):
      index = self.rng.integers(0, len(self.prompts), self.setup.batch_size)
      self.params, self.opt_state, self.frozen, metrics, self.rollout = self.step(
          self.params, self.opt_state, self.frozen, self.prompts[index], jax.random.fold_in(self.key, self.iterations),
          self.hparams)
      self.scores.append(float(metrics.score))  # waits for the iteration
      self.iterations += 1
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------
# The benchmark.


def check_same_computation(ours: rlhf.Rollout, peer: TorchPPO) -> dict[str, float]:
  """Largest |ours - peer's| of each rollout quantity, the peer scoring the completions our rollout sampled.

  Args:
    ours: a rollout of our PPO update, sampled from the weights the (untrained) peer holds.
    peer: the peer, before it has trained.

  Returns:
    {quantity: max absolute difference} for the log-probabilities under the policy and the
    reference, the values, the reward model's scores, the per-token rewards, GAE and the targets.
  """
  theirs = peer.score(torch.from_numpy(np.asarray(ours.tokens).astype(np.int64)))
  return {name: float(np.max(np.abs(np.asarray(getattr(ours, name)) - getattr(theirs, name).numpy())))
          for name in ("log_prob", "ref_log_prob", "value", "score", "reward", "advantage", "target")}


JAX_ENTRIES = {"jax_scan": "research.rl.rlhf.make_ppo_train: the whole run as one lax.scan",
               "jax_update": "research.rl.rlhf.make_ppo_update jitted, one call per iteration"}


def compare(setup: Setup, iterations: int, warmup: int, repeats: int, torch_threads: list[int], seed: int) -> dict:
  """Seconds per iteration of every entry, repeat by repeat; see the module docstring."""
  weights = make_weights(setup, seed)
  prompts = np.random.default_rng(seed).integers(0, setup.vocab_size, (setup.num_prompts, setup.prompt_len),
                                                 dtype=np.int32)
  update = JaxUpdate(setup, weights, prompts, seed)
  peer = TorchPPO(setup, weights, prompts, seed)
  check = check_same_computation(update.first_rollout, peer)
  print("same computation, max |ours - peer|: " + ", ".join(f"{k} {v:.2g}" for k, v in check.items()), flush=True)
  scan = JaxScan(setup, weights, prompts, iterations, seed)
  counts = {"policy": {"jax": update.param_count, "torch": peer.param_count["policy"]},
            "reward_model": {"jax": update.rm_param_count, "torch": peer.param_count["reward_model"]}}
  if any(c["jax"] != c["torch"] for c in counts.values()):
    raise AssertionError(f"parameter counts differ: {counts}")
  descriptions = {f"torch_{t}": f"transformers + PyTorch eager, {t} thread{'s' if t > 1 else ''}"
                  for t in torch_threads}
  descriptions.update(JAX_ENTRIES)

  def peer_iterations():
    rollout_s, update_s = peer.run(iterations)
    return harness.Timing(rollout_s + update_s, iterations, rollout_s / (rollout_s + update_s))

  torch_names = [f"torch_{t}" for t in torch_threads]
  warm = (lambda side: (lambda: side.run(warmup))) if warmup else (lambda side: None)
  sides = {name: harness.Side(peer_iterations, warm(peer), torch_threads=t)
           for name, t in zip(torch_names, torch_threads)}
  sides["jax_scan"] = harness.Side(lambda: harness.Timing(scan.run(), iterations))
  sides["jax_update"] = harness.Side(lambda: harness.Timing(update.run(iterations), iterations), warm(update))
  timings = harness.compare(sides, repeats, label="rlhf", unit=" iterations/s")
  # The peer's faster thread setting in each repeat.
  best_torch = [1.0 / rate for rate in timings.best_rates(torch_names)]
  tokens = setup.tokens_per_iteration()
  out = {"param_count": counts, "same_computation_max_abs_diff": check, "entries": {},
         "torch_best_s_per_iteration_per_repeat": best_torch, "timing": timings.record()}
  for name, description in descriptions.items():
    out["entries"][name] = {
        "description": description,
        "s_per_iteration": timings.median_seconds(name), "s_per_iteration_per_repeat": timings.seconds(name),
        "tokens_per_s": tokens / timings.median_seconds(name),
        "ratio_vs_torch": timings.median_ratio(name, torch_names),
        "ratios_per_repeat": timings.ratios(name, torch_names),
    }
    if name in torch_names:
      out["entries"][name]["rollout_share"] = statistics.median(timings.info(name))
  out["entries"]["jax_scan"]["compile_s"] = scan.compile_s
  out["entries"]["jax_update"]["compile_and_first_iteration_s"] = update.compile_s
  out["mean_score"] = {"torch": float(np.mean(peer.scores)), "jax_scan": float(np.mean(scan.scores)),
                       "jax_update": float(np.mean(update.scores))}
  return out


def _markdown(results: dict) -> str:
  env = harness.environment(*PACKAGES)
  s, check = results["setup"], results["same_computation_max_abs_diff"]
  counts = results["param_count"]
  rows = []
  for e in results["entries"].values():
    compile_s = e.get("compile_s", e.get("compile_and_first_iteration_s"))
    rows.append((e["description"], f"{e['s_per_iteration']:.2f}", f"{e['tokens_per_s']:,.0f}",
                 f"**{e['ratio_vs_torch']:.2f}x**", ", ".join(f"{r:.2f}x" for r in e["ratios_per_repeat"]),
                 "" if compile_s is None else f"{compile_s:.1f}"))
  shares = ", ".join(f"{e['rollout_share']:.0%} at {name.removeprefix('torch_')} thread(s)"
                     for name, e in results["entries"].items() if "rollout_share" in e)
  return harness.document(
      "RLHF's PPO on CPU: research.rl.rlhf vs the same algorithm in transformers + PyTorch eager",
      harness.machine(env, results["load_average"], ("jax", "flax", "torch", "transformers"))
      + f" PyTorch timed at {' and '.join(str(t) for t in results['torch_threads'])} threads. TRL's current "
      "release has no PPO trainer, so the peer is PPO written with transformers and PyTorch eager as TRL's "
      "PPOTrainer did (see the script's docstring).",
      f"Models: policy and reference GPT-2 {s['n_layer']} layers x {s['n_embd']} wide x {s['n_head']} heads with a "
      f"value head ({counts['policy']['jax']:,} trained parameters on both sides), reward model {s['rm_n_layer']} x "
      f"{s['rm_n_embd']} x {s['rm_n_head']} with a scalar head ({counts['reward_model']['jax']:,} parameters on both "
      f"sides), vocabulary {s['vocab_size']}, float32. Each iteration: {s['batch_size']} prompts of "
      f"{s['prompt_len']} tokens, {s['new_tokens']} completion tokens sampled per prompt at temperature 1, then "
      f"{s['update_epochs']} epochs x {s['num_minibatches']} minibatches (beta {s['kl_coef']:g}, Adam "
      f"{s['learning_rate']:g}). Timed: {results['iterations']} iterations per repeat (after {results['warmup']} "
      f"untimed for the Python loops), medians of {results['repeats']} repeats in rotated order. Throughput: "
      "completion tokens per second of rollout + update; ratio: the peer's seconds per iteration at its faster "
      "thread setting / this entry's, in the same repeat (above 1: faster than the peer).",
      harness.table(["implementation", "s per iteration", "tokens/s", "vs PyTorch", "per repeat", "compile (s)"], rows,
                    align="lrrrlr"),
      f"The peer spends {shares} of an iteration in the rollout (generation and the three scoring passes), the "
      "rest in the update. The compile column of the per-call entry includes its first iteration.",
      "Same computation: the completions of our first rollout, scored again by the peer's forward passes and GAE "
      "from the same starting weights, give quantities that differ from ours by at most "
      + ", ".join(f"{v:.1e} ({k})" for k, v in check.items()) + ".")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad field, before anything is built or timed."""
  for name in ("n_layer", "n_embd", "n_head", "rm_n_layer", "rm_n_embd", "rm_n_head", "vocab_size", "prompt_len",
               "new_tokens", "batch_size", "num_prompts", "update_epochs", "num_minibatches", "iterations", "repeats",
               "learning_rate"):
    check_positive(name, config[name])
  check_positive("warmup", config.warmup, allow_zero=True)
  check_positive("kl_coef", config.kl_coef, allow_zero=True)
  harness.check_counts("torch_threads", config.torch_threads)
  for prefix in ("", "rm_"):
    width, heads = config[f"{prefix}n_embd"], config[f"{prefix}n_head"]
    if width % heads:
      raise ConfigError(f"{prefix}n_embd {width} is not divisible by {prefix}n_head {heads}")
  if config.batch_size % config.num_minibatches or config.batch_size // config.num_minibatches < 2:
    raise ConfigError(f"batch_size {config.batch_size} must split into num_minibatches "
                      f"{config.num_minibatches} minibatches of at least 2 sequences")


def run(config: ml_collections.ConfigDict, outdir: str) -> dict:
  """Measures every entry, writes rlhf.json / rlhf.md into `outdir`; returns the JSON dict."""
  check_config(config)
  setup = Setup(*(config[field.name] for field in dataclasses.fields(Setup)))
  threads = list(dict.fromkeys(config.torch_threads))
  transformers.logging.disable_progress_bar()
  start = time.perf_counter()
  results = compare(setup, config.iterations, config.warmup, config.repeats, threads, config.seed)
  results.update({"setup": dataclasses.asdict(setup), "iterations": config.iterations, "warmup": config.warmup,
                  "repeats": config.repeats, "seed": config.seed, "torch_threads": threads,
                  "hyperparameters": {"clip_eps": CLIP_EPS, "vf_coef": VF_COEF, "ent_coef": 0.0, "gamma": GAMMA,
                                      "gae_lambda": GAE_LAMBDA, "adam_eps": ADAM_EPS, "grad_clip_norm": GRAD_CLIP},
                  "load_average": results["timing"]["load_average"]})
  markdown = _markdown(results)
  print(markdown)
  return harness.write_report(outdir, "rlhf", results, markdown, json_file="rlhf.json", packages=PACKAGES,
                              wall_time_s=time.perf_counter() - start)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
