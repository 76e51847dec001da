"""RLHF on a small GPT-2 trained on python_docs: pretraining, SFT, a reward model, PPO and DPO, end to end.

Run:
  python -m experiments.rlhf --workdir=/tmp/rlhf
  python -m experiments.rlhf --workdir=/tmp/rlhf --config.ppo.kl_coef=0.02 --config.ppo.kl_target=6
  python -m experiments.rlhf --workdir=/tmp/rlhf_smoke --config=experiments/rlhf.py:smoke

The task (research/rl/rlhf.py `gold_score`): continue a prompt of the documentation with text
that uses many different Python keywords without repeating any. Its gold score is hidden from
every model; it only labels preferences (through a noisy Bradley-Terry / Plackett-Luce model)
and scores the final policies. The stages are a research.train.stages.Pipeline: each a run of
the one training loop in its own sub-directory of the workdir, whose results and final
parameters the next reads back (so a killed run resumes at its stage, and a finished stage
is only restored):

  pretrain/  a character-level GPT trained by experiments/gpt2.py (config.pretrain is its config);
  sft/       supervised fine-tuning on demonstrations: windows of the training text whose
             continuations score in the top `sft.demo_fraction` (a labeller's good examples);
  reward/    a reward model (the SFT model with a scalar head) on rankings of K completions the
             SFT model wrote for training prompts; accuracy on rankings of held-out prompts;
  ppo/       PPO against the reward model with a per-token KL penalty to the SFT model;
  dpo/       DPO on the same rankings, from the same SFT model.

Then every policy (the SFT reference, PPO, DPO) completes the same held-out prompts of the test
split: `samples.txt` shows some of them with gold and proxy (reward-model) scores, and
`results.json` holds the gold reward's means and standard errors (gold_reward_ref,
gold_reward_ppo, gold_reward_dpo and *_se), the mean per-sequence KL to the reference (kl_ppo,
kl_dpo) and the reward model's held-out pair accuracy (reward_model_accuracy); `preferences.npz`
keeps the rankings, so a resumed run labels nothing again. The stages are importable functions
(`pretrain`, `supervised_finetune`, `preferences`, `train_reward_model`, `run_ppo`, `run_dpo`,
`evaluate`) for tables that vary their sizes.

Default run (`python -m experiments.rlhf --workdir=/tmp/rlhf`, a 2-layer, 64-wide character GPT;
438 s on 2 shared CPU cores at a load average of 10-15; two runs gave the same numbers), on 256
held-out prompts:

  policy  gold reward (mean +- s.e.)  KL to the SFT model (nats per completion)
  SFT     1.156 +- 0.062              0
  PPO     2.234 +- 0.084              13.69
  DPO     2.570 +- 0.112              12.24

reward_model_accuracy 0.656 on the held-out rankings' noisy labels, where the gold score itself
gets 0.658 (samples.txt's first line: 28% of the held-out pairs tie in gold, and the label of a
tie is a coin flip). Run again on the finished workdir, every stage is restored (26 s). PPO's
held-out evaluations at rollouts 50 / 100 / 150: gold 2.17 / 2.14 / 2.23, proxy 0.94 / 0.86 / 1.01,
KL 13.2 / 12.9 / 13.7; some of its samples repeat keywords ("not not", "for ... for"), which the
gold score penalises (samples.txt).
"""

import dataclasses
import os
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from experiments import gpt2 as gpt2_experiment
from research import data as data_lib
from research import optim
from research.data import tokenizers, tokens
from research.models import gpt2
from research.rl import rlhf
from research.tasks import rlhf as rlhf_tasks
from research.train import (ConfigError, Pipeline, base_config, check_common, check_positive, check_workdir, cli,
                            train, write_results)

STAGES = ("pretrain", "sft", "reward", "ppo", "dpo")


def _stage_config(steps: int, batch_size: int, learning_rate: float) -> ml_collections.ConfigDict:
  """A training-loop config for one stage (base_config's fields; its dataset field is unused)."""
  config = base_config()
  del config.dataset  # every stage reads the pretraining dataset
  config.steps = steps
  config.batch_size = batch_size
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = learning_rate
  config.optimizer.grad_clip_norm = 1.0
  config.log_every = 25
  config.checkpoint_every = 100
  return config


def _smoke(config: ml_collections.ConfigDict) -> None:
  """A one-block policy, a few prompts and a few steps of every stage, for tests."""
  pre = config.pretrain
  gpt2_experiment.PRESETS["smoke"](pre)  # experiments/gpt2.py's smoke GPT, trained shorter still
  pre.steps = 6
  pre.log_every = pre.eval_every = pre.checkpoint_every = 3
  pre.eval_windows, pre.num_prompts = 8, 1
  config.prompt_len, config.new_tokens = 8, 12
  config.num_train_prompts, config.num_eval_prompts, config.ranking_size = 32, 16, 3
  config.eval_batch_size, config.samples_shown = 16, 2
  for stage in (config.sft, config.reward, config.ppo, config.dpo):
    stage.steps, stage.batch_size = 4, 8
    stage.log_every = stage.checkpoint_every = 2
  config.sft.demo_candidates = 64
  config.ppo.eval_every = 0
  config.ppo.update_epochs, config.ppo.num_minibatches = 1, 2


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config (minutes on 2 CPU cores); preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # draws the prompts, the demonstrations, the preference labels and the evaluation samples
  pre = config.pretrain = gpt2_experiment.get_config()  # stage pretrain: experiments/gpt2.py's config
  pre.n_layer, pre.n_embd, pre.n_head = 2, 64, 4  # a small character-level GPT (GPT-2 architecture)
  pre.n_positions = pre.seq_len = 64
  pre.steps = 1000
  pre.eval_every = pre.checkpoint_every = 500
  pre.eval_windows = 128
  pre.num_prompts, pre.prompt_len, pre.sample_tokens = 4, 16, 48
  config.prompt_len = 16  # P: tokens (characters) of each prompt, starting at a word
  config.new_tokens = 48  # N: tokens every policy adds to a prompt
  config.repeat_penalty = 1.0  # gold score: cost of each repeated keyword
  config.label_temperature = 0.5  # noise of the preference labels (Plackett-Luce temperature; 0: exact ranks)
  config.num_train_prompts = 2048  # prompts from the training split: rankings for the reward model and DPO, PPO
  config.num_eval_prompts = 256  # prompts from the test split: held-out rankings and the final evaluation
  config.ranking_size = 4  # K completions ranked per prompt (all K choose 2 pairs in one batch)
  config.eval_batch_size = 128  # prompts per compiled sampling / scoring call
  config.samples_shown = 8  # held-out prompts written to samples.txt with each policy's completion

  config.sft = _stage_config(steps=200, batch_size=32, learning_rate=3e-4)  # stage sft: loop config
  config.sft.demo_candidates = 8192  # training-text windows the demonstrations are chosen from
  config.sft.demo_fraction = 0.25  # the best-scoring share of them kept as demonstrations

  config.reward = _stage_config(steps=300, batch_size=16, learning_rate=3e-4)  # stage reward: loop config
  config.reward.n_layer = 0  # reward-model size; 0 (all three): the policy's size, started from the SFT model
  config.reward.n_embd = 0  # width (0: the policy's)
  config.reward.n_head = 0  # heads (0: the policy's)

  config.ppo = _stage_config(steps=150, batch_size=32, learning_rate=1e-4)  # stage ppo: steps are rollouts
  config.ppo.eval_every = 50  # gold, proxy and KL on the held-out prompts along training
  config.ppo.update_epochs = 4  # passes over each rollout
  config.ppo.num_minibatches = 4  # minibatches of whole sequences per pass
  config.ppo.kl_coef = 0.05  # beta of the per-token KL penalty (initial value when adaptive)
  config.ppo.kl_target = 0.0  # adaptive KL controller's target KL per sequence (nats); 0: beta fixed
  config.ppo.kl_horizon = 10_000.0  # adaptive controller's horizon in sequences
  config.ppo.clip_eps = 0.2  # ratio (and value) clipping range
  config.ppo.vf_coef = 0.1  # value loss weight
  config.ppo.ent_coef = 0.0  # entropy bonus weight
  config.ppo.gamma = 1.0  # discount over tokens
  config.ppo.gae_lambda = 0.95  # GAE lambda over tokens

  config.dpo = _stage_config(steps=200, batch_size=16, learning_rate=1e-4)  # stage dpo: rankings per step
  config.dpo.beta = 0.1  # DPO's KL strength

  return cli.apply_presets(config, preset, PRESETS)


# ---------------------------------------------------------------------------------------
# Checks.


def _reward_size(config) -> tuple[int, int, int]:
  """The reward model's (n_layer, n_embd, n_head): the policy's where config.reward says 0."""
  pre = config.pretrain
  return (config.reward.n_layer or pre.n_layer, config.reward.n_embd or pre.n_embd, config.reward.n_head or pre.n_head)


def check_config(config) -> None:
  """Raises ConfigError on a bad field, before anything is loaded, compiled or written."""
  gpt2_experiment.check_config(config.pretrain)
  if config.pretrain.model != "gpt":
    raise ConfigError(f"the policy is a GPT: pretrain.model must be gpt, got {config.pretrain.model!r}")
  for name in STAGES[1:]:
    check_common(config[name])
  for name in ("prompt_len", "new_tokens", "num_train_prompts", "num_eval_prompts", "eval_batch_size",
               "samples_shown"):
    value = config[name]
    if not isinstance(value, int) or isinstance(value, bool):
      raise ConfigError(f"{name} must be an integer, got {value!r}")
    check_positive(name, value)
  if config.ranking_size < 2:
    raise ConfigError(f"ranking_size must be at least 2 (a ranking needs a pair), got {config.ranking_size}")
  check_positive("label_temperature", config.label_temperature, allow_zero=True)
  check_positive("repeat_penalty", config.repeat_penalty, allow_zero=True)
  length = config.prompt_len + config.new_tokens
  if config.pretrain.positions == "learned" and length > config.pretrain.n_positions:
    raise ConfigError(f"prompt_len + new_tokens ({length}) exceeds the model's context pretrain.n_positions "
                      f"{config.pretrain.n_positions}")
  if config.samples_shown > config.num_eval_prompts:
    raise ConfigError(f"samples_shown {config.samples_shown} exceeds num_eval_prompts {config.num_eval_prompts}")
  check_positive("sft.demo_candidates", config.sft.demo_candidates)
  if not 0.0 < config.sft.demo_fraction <= 1.0:
    raise ConfigError(f"sft.demo_fraction must be in (0, 1], got {config.sft.demo_fraction}")
  demos = int(config.sft.demo_candidates * config.sft.demo_fraction)
  for name, examples in (("sft", demos), ("reward", config.num_train_prompts), ("dpo", config.num_train_prompts)):
    if config[name].batch_size > examples:
      raise ConfigError(f"{name}.batch_size {config[name].batch_size} exceeds its {examples} training examples")
  for name in ("n_layer", "n_embd", "n_head"):
    check_positive(f"reward.{name}", config.reward[name], allow_zero=True)
  n_layer, n_embd, n_head = _reward_size(config)
  if n_embd % n_head:
    raise ConfigError(f"reward model: n_embd {n_embd} is not divisible by n_head {n_head}")
  _ppo_settings(config, None).check(config.ppo.batch_size)
  for name in ("kl_coef", "clip_eps", "vf_coef", "ent_coef", "gamma", "gae_lambda"):
    check_positive(f"ppo.{name}", config.ppo[name], allow_zero=name != "clip_eps")
  for name in ("gamma", "gae_lambda"):
    if config.ppo[name] > 1.0:
      raise ConfigError(f"ppo.{name} must be in [0, 1], got {config.ppo[name]}")
  check_positive("dpo.beta", config.dpo.beta)
  if config.ppo.batch_size > config.num_train_prompts:
    raise ConfigError(f"ppo.batch_size {config.ppo.batch_size} exceeds num_train_prompts {config.num_train_prompts}")


def _ppo_settings(config, reward_cfg) -> rlhf.PPOSettings:
  return rlhf.PPOSettings(new_tokens=config.new_tokens, update_epochs=config.ppo.update_epochs,
                          num_minibatches=config.ppo.num_minibatches, kl_target=float(config.ppo.kl_target),
                          kl_horizon=float(config.ppo.kl_horizon), reward_model=reward_cfg)


# ---------------------------------------------------------------------------------------
# Stage 0: pretraining, and the prompts.


class Setup(NamedTuple):
  """What every stage after pretraining shares."""

  tokenizer: Any
  cfg: gpt2.GPT2Config  # the policy's (and reference's) model
  lm_params: Any  # the pretrained language model
  train_stream: np.ndarray  # token ids of the training split
  train_prompts: np.ndarray  # (num_train_prompts, P)
  eval_prompts: np.ndarray  # (num_eval_prompts, P), from the test split


def _word_starts(stream: np.ndarray, tokenizer, length: int) -> np.ndarray:
  """Offsets of windows of `length` tokens that begin a word: a letter after a space or a newline."""
  letters = [i for i in range(tokenizer.vocab_size) if tokenizer.decode([i])[:1].isalpha()]
  breaks = np.isin(stream[:-1], [tokenizer.encode(c)[0] for c in (" ", "\n")]) & np.isin(stream[1:], letters)
  starts = np.flatnonzero(breaks) + 1
  return starts[starts + length <= len(stream)]


def _windows(stream: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
  return np.stack([np.asarray(stream[s:s + length], np.int32) for s in starts])


def _draw(stream, tokenizer, count: int, length: int, rng: np.random.Generator) -> np.ndarray:
  starts = _word_starts(stream, tokenizer, length)
  if len(starts) < count:
    raise ConfigError(f"the text has {len(starts)} windows of {length} tokens starting at a word, fewer than {count}")
  return _windows(stream, np.sort(rng.choice(starts, count, replace=False)), length)


def pretrain(config, workdir: str) -> Setup:
  """Stage 0: the GPT of experiments/gpt2.py (config.pretrain) in `workdir`/pretrain, then the prompts.

  Args:
    config: the experiment config.
    workdir: the run's directory.

  Returns:
    The Setup of the later stages.
  """
  pre = config.pretrain
  output = Pipeline(workdir).stage("pretrain", pre.steps, lambda directory: gpt2_experiment.run(pre, directory))
  tokenizer = tokenizers.load(os.path.join(output.directory, "tokenizer.json"))
  vocab_size = -(-tokenizer.vocab_size // pre.vocab_multiple) * pre.vocab_multiple
  cfg = gpt2.model_config(pre, vocab_size)
  separator = gpt2_experiment._separator(tokenizer)  # pylint: disable=protected-access
  train_stream = tokens.token_stream(pre.dataset, pre.train_split, tokenizer, separator, pre.max_train_tokens)
  eval_stream = tokens.token_stream(pre.dataset, pre.eval_split, tokenizer, separator)
  train_prompts = _draw(train_stream, tokenizer, config.num_train_prompts, config.prompt_len,
                        np.random.default_rng([config.seed, 0]))
  eval_prompts = _draw(eval_stream, tokenizer, config.num_eval_prompts, config.prompt_len,
                       np.random.default_rng([config.seed, 1]))
  lm_params = output.params["params"]
  return Setup(tokenizer, cfg, lm_params, train_stream, train_prompts, eval_prompts)


def _gold(config, tokenizer, completions: np.ndarray) -> np.ndarray:
  """Gold scores of completions (..., N) of token ids."""
  flat = completions.reshape(-1, completions.shape[-1])
  texts = [tokenizer.decode(row.tolist()) for row in flat]
  return rlhf.gold_scores(texts, config.repeat_penalty).reshape(completions.shape[:-1])


# ---------------------------------------------------------------------------------------
# Stage 1: supervised fine-tuning.


def supervised_finetune(config, workdir: str, setup: Setup):
  """Stage 1: fine-tunes the pretrained model on the best-scoring continuations of training text.

  Args:
    config: the experiment config (config.sft is the loop's).
    workdir: the run's directory; the stage trains in `workdir`/sft.
    setup: from `pretrain`.

  Returns:
    The SFT model's lm_params (the reference of PPO and DPO).
  """
  stage = config.sft

  def run(directory: str):
    p, length = config.prompt_len, config.prompt_len + config.new_tokens
    windows = _draw(setup.train_stream, setup.tokenizer, stage.demo_candidates, length,
                    np.random.default_rng([config.seed, 2]))
    gold = _gold(config, setup.tokenizer, windows[:, p:])
    keep = np.sort(np.argsort(-gold, kind="stable")[:int(len(windows) * stage.demo_fraction)])
    completion = np.broadcast_to(np.arange(length) >= p, (len(keep), length))
    demos = {"tokens": windows[keep], "completion": np.ascontiguousarray(completion)}
    task = rlhf_tasks.make_sft_task(setup.cfg, setup.lm_params, optim.make(stage.optimizer, stage.steps),
                                    optim.learning_rate_fn(stage.optimizer, stage.steps))
    train(task, stage, directory, demos)

  return Pipeline(workdir).stage("sft", stage.steps, run).params["params"]


# ---------------------------------------------------------------------------------------
# Stage 2: preferences and the reward model.


def _rankings(config, setup: Setup, lm_params, prompts: np.ndarray, key: jax.Array) -> dict[str, np.ndarray]:
  """K completions per prompt from `lm_params`, ranked by noisy gold labels (best first)."""
  k, n, p = config.ranking_size, config.new_tokens, config.prompt_len
  model = gpt2.GPT2(setup.cfg)
  k_generate, k_label = jax.random.split(key)
  repeated = np.repeat(prompts, k, axis=0)  # (M K, P)
  rows = []
  for i, start in enumerate(range(0, len(repeated), config.eval_batch_size)):
    rows.append(gpt2.generate(model, lm_params, repeated[start:start + config.eval_batch_size], n,
                              key=jax.random.fold_in(k_generate, i), temperature=1.0))
  sequences = np.concatenate(rows).reshape(len(prompts), k, p + n).astype(np.int32)
  gold = _gold(config, setup.tokenizer, sequences[..., p:])  # (M, K)
  order = np.asarray(rlhf.sample_rankings(k_label, gold, config.label_temperature))
  ranked = np.take_along_axis(sequences, order[..., None], axis=1)
  completion = np.broadcast_to(np.arange(p + n) >= p, ranked.shape)
  return {"tokens": ranked, "completion": np.ascontiguousarray(completion),
          "gold": np.take_along_axis(gold, order, axis=1)}


def preferences(config, workdir: str, setup: Setup, sft_params) -> tuple[dict, dict]:
  """Rankings of the SFT model's completions of the training and held-out prompts (cached in workdir).

  Args:
    config: the experiment config.
    workdir: the run's directory; the rankings are kept in `workdir`/preferences.npz.
    setup: from `pretrain`.
    sft_params: the SFT model that writes the completions.

  Returns:
    (train rankings, held-out rankings): {"tokens": (M, K, L), "completion": (M, K, L), "gold": (M, K)}.
  """
  path = os.path.join(workdir, "preferences.npz")
  if os.path.exists(path):
    with np.load(path) as saved:
      split = {name: {k[len(name) + 1:]: saved[k] for k in saved.files if k.startswith(name + "/")}
               for name in ("train", "eval")}
    return split["train"], split["eval"]
  key = jax.random.fold_in(jax.random.key(config.seed), 3)
  train_rankings = _rankings(config, setup, sft_params, setup.train_prompts, jax.random.fold_in(key, 0))
  eval_rankings = _rankings(config, setup, sft_params, setup.eval_prompts, jax.random.fold_in(key, 1))
  arrays = {f"{name}/{k}": v for name, r in (("train", train_rankings), ("eval", eval_rankings)) for k, v in r.items()}
  os.makedirs(workdir, exist_ok=True)
  np.savez(path + ".tmp.npz", **arrays)
  os.replace(path + ".tmp.npz", path)  # a killed run never leaves half a file
  return train_rankings, eval_rankings


def _strip(rankings: dict) -> dict:
  """The rankings as a training split: the sequences and their completion masks (not the gold scores)."""
  return {"tokens": rankings["tokens"], "completion": rankings["completion"]}


def reward_model_config(config, setup: Setup) -> gpt2.GPT2Config:
  """The reward model's GPT-2 config: the policy's, with config.reward's size where given."""
  n_layer, n_embd, n_head = _reward_size(config)
  return dataclasses.replace(setup.cfg, n_layer=n_layer, n_embd=n_embd, n_head=n_head)


def train_reward_model(config, workdir: str, setup: Setup, sft_params, rankings: tuple[dict, dict]):
  """Stage 2: the reward model on the training rankings; it starts from the SFT model when it has its size.

  Args:
    config: the experiment config (config.reward is the loop's).
    workdir: the directory whose `reward` sub-directory the stage trains in.
    setup: from `pretrain`.
    sft_params: the SFT model.
    rankings: (train, held-out) rankings from `preferences`.

  Returns:
    (reward-model config, its variables, held-out pair accuracy).
  """
  rm_cfg = reward_model_config(config, setup)
  start = sft_params if rm_cfg == setup.cfg else None
  stage = config.reward

  def run(directory: str):
    task = rlhf_tasks.make_reward_task(rm_cfg, optim.make(stage.optimizer, stage.steps), start, config.eval_batch_size,
                                       optim.learning_rate_fn(stage.optimizer, stage.steps))
    train(task, stage, directory, _strip(rankings[0]), _strip(rankings[1]))

  output = Pipeline(workdir).stage("reward", stage.steps, run)
  return rm_cfg, output.params, output.results["pair_accuracy"]


# ---------------------------------------------------------------------------------------
# Stages 3 and 4: PPO and DPO.


def _policy_scores(config, setup: Setup, rm_cfg, lm_params, ref_params, rm_params, key) -> dict[str, Any]:
  """Held-out completions of a policy with their gold and proxy scores and KL to the reference."""
  samples = rlhf.sample_policy(setup.cfg, lm_params, ref_params, rm_params, setup.eval_prompts, key,
                               config.new_tokens, config.eval_batch_size, rm_cfg)
  return {"completions": samples.completions, "gold": _gold(config, setup.tokenizer, samples.completions),
          "proxy": samples.proxy, "kl": samples.kl}


def _summary(scores: dict[str, Any]) -> dict[str, float]:
  return {"gold_reward": float(np.mean(scores["gold"])), "proxy_reward": float(np.mean(scores["proxy"])),
          "kl": float(np.mean(scores["kl"]))}


def run_ppo(config, workdir: str, setup: Setup, sft_params, rm_cfg, rm_params):
  """Stage 3: PPO from the SFT model against the reward model, KL-penalised towards the SFT model.

  Args:
    config: the experiment config (config.ppo is the loop's; its steps are rollouts).
    workdir: the run's directory; the stage trains in `workdir`/ppo.
    setup: from `pretrain`.
    sft_params: the SFT model: the starting policy and the reference.
    rm_cfg: the reward model's config.
    rm_params: its variables.

  Returns:
    The PPO policy's lm_params.
  """
  stage = config.ppo
  eval_key = jax.random.fold_in(jax.random.key(config.seed), 4)

  def evaluate(params, key, data):
    del key, data
    return _summary(_policy_scores(config, setup, rm_cfg, params["params"]["backbone"], sft_params, rm_params,
                                   eval_key))

  def run(directory: str):
    hparams = {name: float(stage[name]) for name in rlhf.PPOHParams._fields}
    total_updates = stage.steps * stage.update_epochs * stage.num_minibatches
    tx = optim.make(stage.optimizer, total_updates)
    task = rlhf_tasks.make_ppo_task(setup.cfg, _ppo_settings(config, rm_cfg), tx, sft_params, sft_params, rm_params,
                                    hparams, evaluate)
    train(task, stage, directory, {"prompts": setup.train_prompts})

  return Pipeline(workdir).stage("ppo", stage.steps, run).params["params"]["backbone"]


def run_dpo(config, workdir: str, setup: Setup, sft_params, rankings: tuple[dict, dict]):
  """Stage 4: DPO from the SFT model on the reward model's training rankings.

  Args:
    config: the experiment config (config.dpo is the loop's).
    workdir: the run's directory; the stage trains in `workdir`/dpo.
    setup: from `pretrain`.
    sft_params: the SFT model: the starting policy and the reference.
    rankings: (train, held-out) rankings from `preferences`.

  Returns:
    The DPO policy's lm_params.
  """
  stage = config.dpo

  def run(directory: str):
    task = rlhf_tasks.make_dpo_task(setup.cfg, sft_params, optim.make(stage.optimizer, stage.steps), stage.beta,
                                    config.eval_batch_size, optim.learning_rate_fn(stage.optimizer, stage.steps))
    train(task, stage, directory, _strip(rankings[0]), _strip(rankings[1]))

  return Pipeline(workdir).stage("dpo", stage.steps, run).params["params"]


# ---------------------------------------------------------------------------------------
# Evaluation and the whole run.


def gold_label_agreement(rankings: dict[str, np.ndarray]) -> tuple[float, float]:
  """How well the gold score itself predicts noisy labels: (share of pairs it orders strictly right, share tied).

  A tie's label is a coin flip no strict scorer can beat, so the first number bounds what the
  reward model's strict pair accuracy can be expected to reach on these labels.
  """
  better, worse = rlhf.ranked_pairs(rankings["gold"].shape[1])
  gold = rankings["gold"]
  return float(np.mean(gold[:, better] > gold[:, worse])), float(np.mean(gold[:, better] == gold[:, worse]))


def evaluate(config, setup: Setup, rm_cfg, rm_params, policies: dict[str, Any]) -> tuple[dict[str, dict], str]:
  """Every policy completes the same held-out prompts with the same key; gold, proxy and KL to the first.

  Args:
    config: the experiment config.
    setup: the shared Setup.
    rm_cfg: the reward model's config.
    rm_params: its variables.
    policies: {name: lm_params}, the reference first.

  Returns:
    ({name: {"completions", "gold", "proxy", "kl"}}, the text of samples.txt).
  """
  key = jax.random.fold_in(jax.random.key(config.seed), 5)
  ref = next(iter(policies.values()))
  scores = {name: _policy_scores(config, setup, rm_cfg, params, ref, rm_params, key)
            for name, params in policies.items()}
  decode = setup.tokenizer.decode
  lines = [f"Held-out prompts (test split) completed by each policy with {config.new_tokens} sampled tokens "
           "(temperature 1); gold = distinct Python keywords - repeats, proxy = the reward model's score, "
           "KL = summed per-token KL to the reference.", ""]
  for name, s in scores.items():
    lines.append(f"{name}: mean gold {np.mean(s['gold']):.3f}, mean proxy {np.mean(s['proxy']):.3f}, "
                 f"mean KL {np.mean(s['kl']):.2f} over {len(s['gold'])} prompts")
  for i in range(config.samples_shown):
    lines += ["", f"--- prompt {i}: {decode(setup.eval_prompts[i].tolist())!r}"]
    for name, s in scores.items():
      lines.append(f"{name:>4} (gold {s['gold'][i]:+.0f}, proxy {s['proxy'][i]:+.2f}, KL {s['kl'][i]:.2f}): "
                   f"{decode(s['completions'][i].tolist())!r}")
  return scores, "\n".join(lines) + "\n"


def _mean_se(values: np.ndarray) -> tuple[float, float]:
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def run(config, workdir: str) -> dict:
  """All stages in `workdir` (each resumes from its own checkpoints); writes samples.txt and results.json."""
  t0 = time.perf_counter()
  check_config(config)
  check_workdir(workdir)
  data_lib.check_name(config.pretrain.dataset)
  setup = pretrain(config, workdir)
  sft_params = supervised_finetune(config, workdir, setup)
  rankings = preferences(config, workdir, setup, sft_params)
  rm_cfg, rm_params, accuracy = train_reward_model(config, workdir, setup, sft_params, rankings)
  ppo_params = run_ppo(config, workdir, setup, sft_params, rm_cfg, rm_params)
  dpo_params = run_dpo(config, workdir, setup, sft_params, rankings)
  scores, text = evaluate(config, setup, rm_cfg, rm_params, {"ref": sft_params, "ppo": ppo_params, "dpo": dpo_params})
  agreement, ties = gold_label_agreement(rankings[1])
  with open(os.path.join(workdir, "samples.txt"), "w") as f:
    f.write(f"Reward model: held-out pair accuracy {accuracy:.4f}; the gold score itself orders {agreement:.4f} "
            f"of the held-out pairs as their noisy labels do ({ties:.4f} of the pairs tie in gold).\n")
    f.write(text)
  results = {}
  for name in ("ref", "ppo", "dpo"):
    results[f"gold_reward_{name}"], results[f"gold_reward_{name}_se"] = _mean_se(scores[name]["gold"])
  results["kl_ppo"] = float(np.mean(scores["ppo"]["kl"]))
  results["kl_dpo"] = float(np.mean(scores["dpo"]["kl"]))
  results["reward_model_accuracy"] = float(accuracy)
  return write_results(workdir, results, config, time.perf_counter() - t0)


if __name__ == "__main__":
  cli.main(__file__, run)
