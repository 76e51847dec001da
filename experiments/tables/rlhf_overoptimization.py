"""Reward-model over-optimisation (Gao, Schulman & Hilton 2022, Figure 1 in shape): gold and proxy reward vs sqrt(KL).

The setting is experiments/rlhf.py's, through its stage functions and its config (the table's
`rlhf` field: the experiment's default config, or its smoke config in the table's smoke preset):
a character-level GPT pretrained on python_docs and fine-tuned on demonstrations, and rankings of
K of its completions per training prompt labelled by the hidden gold scorer (distinct Python
keywords minus repeats) through the noisy Plackett-Luce model. These are built once into
<outdir>/model and reused on a rerun. Then, for each size of `rm_sizes`, a reward model (the
proxy) is trained on those rankings into <outdir>/model/rm_<size>; a reward
model of the policy's size starts from the SFT model, others from scratch (the library's rule).

PPO: for each reward model, the library's whole-training program (research.rl.rlhf.make_ppo_train)
vmapped over the KL coefficients of `ppo_betas`, one compiled lax.scan of `ppo_steps` rollout +
update iterations with the experiment's PPO hyperparameters (beta fixed: no adaptive controller).
Along training, each update's rollout is a point: the mean proxy score of its completions, their
mean gold score and their KL (the mean over sequences of the summed log pi - log pi_ref of the
sampled tokens), averaged over blocks of `window` updates. At the end, each policy completes the
held-out prompts.

DPO: one vmapped sweep over `dpo_betas` (research.train.train with Members) of the experiment's
DPO stage on the same rankings from the same SFT model. DPO never sees a reward model; its proxy
here is what each reward model says of its completions.

Held-out points (research.rl.rlhf.sample_policy): every policy completes the same test-split
prompts with the same key; gold and proxy means with standard errors over prompts, and the KL as
the mean over prompts of the exact summed per-position KL(pi || pi_ref) along each completion.

The verdict is computed, not asserted: along a PPO run, the gold reward "peaks and falls" when
its last block is below its best block by more than twice their combined standard error (over the
block's updates), and the proxy "keeps rising" when its last block is above its value at the gold
peak by the same margin. Across DPO's betas (ordered by KL) the same test is applied to the
held-out points, with standard errors over prompts.

Run:
  python -m experiments.tables.rlhf_overoptimization --outdir=experiments/tables/results/rlhf_overoptimization
  python -m experiments.tables.rlhf_overoptimization --outdir=/tmp/rlhf_oo \\
      --config=experiments/tables/rlhf_overoptimization.py:smoke --config.rm_sizes=1x16x2 --config.rm_sizes=1x32x2
"""

import math
import os
import time

import jax
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from experiments import harness
from experiments import rlhf as rlhf_experiment
from research import optim
from research.rl import rlhf
from research.tasks import rlhf as rlhf_tasks
from research.train import ConfigError, Members, check_positive, cli, train


def _smoke(config: ml_collections.ConfigDict) -> None:
  """experiments/rlhf.py's smoke setting, one reward-model size, short PPO and DPO sweeps, for tests."""
  config.rlhf = rlhf_experiment.get_config("smoke")
  config.rm_sizes, config.ppo_betas, config.ppo_steps = ("1x32x2",), (0.0, 0.1), 4
  config.dpo_betas, config.window = (0.1, 1.0), 2


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The table's reward models and sweeps on experiments/rlhf.py's setting; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.rlhf = rlhf_experiment.get_config()  # experiments/rlhf.py's config: the policy, the rankings, the stages
  config.rm_sizes = ("1x32x2", "2x64x4")  # reward-model sizes, each n_layer x n_embd x n_head (the policy is 2x64x4)
  config.ppo_betas = (0.0, 0.01, 0.05)  # KL coefficients of the vmapped PPO runs
  config.ppo_steps = 200  # rollout + update iterations of every PPO run
  config.dpo_betas = (0.01, 0.03, 0.1, 0.3)  # betas of the vmapped DPO sweep
  config.window = 20  # PPO updates per block of the along-training curves
  return cli.apply_presets(config, preset, PRESETS)


def parse_size(text: str) -> tuple[int, int, int]:
  """(n_layer, n_embd, n_head) of "LxExH".

  Raises:
    ConfigError: for anything else, or a width the heads do not divide.
  """
  parts = text.lower().split("x")
  try:
    n_layer, n_embd, n_head = (int(p) for p in parts)
  except ValueError:
    raise ConfigError(f"a reward-model size is n_layer x n_embd x n_head, e.g. 2x64x4; got {text!r}") from None
  if min(n_layer, n_embd, n_head) < 1 or n_embd % n_head:
    raise ConfigError(f"reward-model size {text!r}: sizes must be positive and n_embd divisible by n_head")
  return n_layer, n_embd, n_head


def _floats(name: str, values, allow_zero: bool) -> list[float]:
  """`values` as floats; ConfigError unless they are distinct non-negative (or positive) numbers."""
  try:
    out = [float(v) for v in values]
  except (TypeError, ValueError):
    raise ConfigError(f"{name} must be numbers, got {values}") from None
  if not out or any(v < 0 or (v == 0 and not allow_zero) for v in out) or len(set(out)) != len(out):
    raise ConfigError(f"{name} must be distinct {'non-negative' if allow_zero else 'positive'} numbers, got {values}")
  return out


def _size_name(size: tuple[int, int, int]) -> str:
  return "x".join(str(s) for s in size)


# ---------------------------------------------------------------------------------------
# The verdict.


def block_means(values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
  """Means and standard errors of consecutive blocks of `window` values (a shorter last block is dropped).

  Args:
    values: (T,) per-update values.
    window: values per block.

  Returns:
    ((T // window,) means, (T // window,) standard errors over each block's values).
  """
  blocks = np.asarray(values, np.float64)[:len(values) // window * window].reshape(-1, window)
  se = blocks.std(axis=1, ddof=1) / math.sqrt(window) if window > 1 else np.zeros(len(blocks))
  return blocks.mean(axis=1), se


def peak_and_fall(gold: np.ndarray, gold_se: np.ndarray, proxy: np.ndarray, proxy_se: np.ndarray) -> dict:
  """Does the gold reward peak and fall while the proxy keeps rising, along a sequence of points?

  Points are ordered by KL (training time for PPO, KL for a sweep). The gold reward peaks and
  falls when the last point is below the best one by more than twice their combined standard
  error; the proxy keeps rising when its last point is above its value at the gold peak by the
  same margin.

  Args:
    gold, gold_se: (T,) gold means and their standard errors.
    proxy, proxy_se: (T,) proxy means and their standard errors.

  Returns:
    {"peak": index of the best gold point, "gold_falls": bool, "proxy_rises": bool,
     "overoptimized": both}.
  """
  gold, gold_se, proxy, proxy_se = (np.asarray(x, np.float64) for x in (gold, gold_se, proxy, proxy_se))
  peak = int(np.argmax(gold))
  margin = lambda se: 2.0 * math.hypot(se[peak], se[-1])
  falls = bool(peak < len(gold) - 1 and gold[-1] < gold[peak] - margin(gold_se))
  rises = bool(peak < len(proxy) - 1 and proxy[-1] > proxy[peak] + margin(proxy_se))
  return {"peak": peak, "gold_falls": falls, "proxy_rises": rises, "overoptimized": falls and rises}


# ---------------------------------------------------------------------------------------
# The stages.


def _mean_se(values) -> tuple[float, float]:
  values = np.asarray(values, np.float64)
  se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
  return float(values.mean()), se


def _gold(config, tokenizer, completions: np.ndarray) -> np.ndarray:
  """Gold scores of completions (..., N) of token ids."""
  flat = np.asarray(completions).reshape(-1, completions.shape[-1])
  texts = [tokenizer.decode(row.tolist()) for row in flat]
  return rlhf.gold_scores(texts, config.repeat_penalty).reshape(completions.shape[:-1])


def held_out(config, setup, lm_params, sft_params, reward_models: dict) -> dict:
  """A policy's held-out completions scored by the gold scorer and every reward model.

  Every policy uses the same prompts and key, so the completions do not depend on the reward
  model scoring them (sample_policy draws them again for each).

  Returns:
    {"gold", "gold_se", "kl", "kl_se", "proxy": {rm name: (mean, se)}}.
  """
  key = jax.random.fold_in(jax.random.key(config.seed), 5)
  out = {}
  for name, (rm_cfg, rm_params, _) in reward_models.items():
    samples = rlhf.sample_policy(setup.cfg, lm_params, sft_params, rm_params, setup.eval_prompts, key,
                                 config.new_tokens, config.eval_batch_size, rm_cfg)
    if not out:
      out["gold"], out["gold_se"] = _mean_se(_gold(config, setup.tokenizer, samples.completions))
      out["kl"], out["kl_se"] = _mean_se(samples.kl)
      out["proxy"] = {}
    out["proxy"][name] = _mean_se(samples.proxy)
  return out


def ppo_sweep(config, setup, sft_params, rm_name: str, reward_models: dict, betas: list[float], steps: int,
              window: int, cache: str) -> dict:
  """The vmapped PPO runs against one reward model: along-training blocks and held-out points (cached in `cache`)."""
  if os.path.exists(cache):
    with np.load(cache) as saved:
      arrays = dict(saved)
  else:
    rm_cfg, rm_params, _ = reward_models[rm_name]
    stage = config.ppo
    settings = rlhf.PPOSettings(new_tokens=config.new_tokens, update_epochs=stage.update_epochs,
                                num_minibatches=stage.num_minibatches, kl_target=0.0, reward_model=rm_cfg)
    tx = optim.make(stage.optimizer, steps * stage.update_epochs * stage.num_minibatches)
    run = rlhf.make_ppo_train(setup.cfg, settings, tx, setup.train_prompts, stage.batch_size, steps)
    hparams = rlhf.ppo_hparams(kl_coef=np.asarray(betas), clip_eps=stage.clip_eps, vf_coef=stage.vf_coef,
                               ent_coef=stage.ent_coef, gamma=stage.gamma, gae_lambda=stage.gae_lambda)
    over_betas = rlhf.PPOHParams(0, None, None, None, None, None)
    key = jax.random.fold_in(jax.random.key(config.seed), 6)
    out = jax.jit(jax.vmap(run, in_axes=(None, None, None, None, over_betas)))(key, sft_params, sft_params,
                                                                                 rm_params, hparams)
    arrays = {"proxy": np.asarray(out.metrics.score), "kl": np.asarray(out.metrics.kl),  # (betas, steps)
              "gold": _gold(config, setup.tokenizer, np.asarray(out.completions)).mean(axis=-1)}
    for i in range(len(betas)):
      lm = jax.tree.map(lambda x, i=i: x[i], out.params)["params"]["backbone"]
      point = held_out(config, setup, lm, sft_params, {rm_name: reward_models[rm_name]})
      arrays[f"held_out_{i}"] = np.asarray([point["gold"], point["gold_se"], point["kl"], point["kl_se"],
                                            *point["proxy"][rm_name]])
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    np.savez(cache + ".tmp.npz", **arrays)
    os.replace(cache + ".tmp.npz", cache)  # a killed run never leaves half a file
  runs = {}
  for i, beta in enumerate(betas):
    gold, gold_se = block_means(arrays["gold"][i], window)
    proxy, proxy_se = block_means(arrays["proxy"][i], window)
    kl, _ = block_means(arrays["kl"][i], window)
    g, g_se, k, k_se, p, p_se = arrays[f"held_out_{i}"].tolist()
    runs[str(beta)] = {
        "beta": beta,
        "along": {"update": ((np.arange(len(gold)) + 0.5) * window).tolist(), "kl": kl.tolist(),
                  "sqrt_kl": np.sqrt(np.maximum(kl, 0.0)).tolist(), "gold": gold.tolist(),
                  "gold_se": gold_se.tolist(), "proxy": proxy.tolist(), "proxy_se": proxy_se.tolist()},
        "verdict": peak_and_fall(gold, gold_se, proxy, proxy_se),
        "held_out": {"gold": g, "gold_se": g_se, "kl": k, "kl_se": k_se, "proxy": p, "proxy_se": p_se},
    }
  return runs


def dpo_sweep(config, model_dir: str, setup, sft_params, rankings, betas: list[float]) -> list:
  """The experiment's DPO stage for every beta as one vmapped run; returns each member's lm_params."""
  stage = config.dpo
  task = rlhf_tasks.make_dpo_task(setup.cfg, sft_params, optim.make(stage.optimizer, stage.steps), stage.beta,
                                  config.eval_batch_size, optim.learning_rate_fn(stage.optimizer, stage.steps))
  strip = lambda r: {"tokens": r["tokens"], "completion": r["completion"]}
  members = Members(seeds=(stage.seed,) * len(betas), hparams={"beta": tuple(betas)})
  run = train(task, stage, os.path.join(model_dir, "dpo_sweep"), strip(rankings[0]), strip(rankings[1]),
              members=members)
  return [jax.tree.map(lambda x, i=i: x[i], run.state.params)["params"] for i in range(len(betas))]


# ---------------------------------------------------------------------------------------
# The report.


def _figure(results: dict) -> Figure:
  rms = list(results["reward_models"])
  fig = Figure(figsize=(4.2 * len(rms), 7.0), dpi=110)
  axes = fig.subplots(2, len(rms), squeeze=False)
  colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
  dpo = results["dpo"]
  dpo_order = sorted(dpo, key=lambda b: dpo[b]["kl"])
  for col, rm in enumerate(rms):
    ref = results["reference"]
    for row, quantity in enumerate(("gold", "proxy")):
      ax = axes[row, col]
      ref_y = ref["gold"] if quantity == "gold" else ref["proxy"][rm][0]
      ax.plot([0.0], [ref_y], "k*", markersize=10, label="SFT reference")
      for i, (beta, r) in enumerate(results["ppo"][rm].items()):
        c = colors[i % len(colors)]
        along = r["along"]
        ax.plot(along["sqrt_kl"], along[quantity], "-", color=c, marker=".", label=f"PPO beta={beta} (training)")
        h = r["held_out"]
        ax.plot([math.sqrt(h["kl"])], [h[quantity]], "o", color=c, markeredgecolor="k", markersize=8,
                label=f"PPO beta={beta} (held-out, end)")
      xs = [math.sqrt(dpo[b]["kl"]) for b in dpo_order]
      ys = [dpo[b]["gold"] if quantity == "gold" else dpo[b]["proxy"][rm][0] for b in dpo_order]
      ax.plot(xs, ys, "s--", color="k", label="DPO, beta sweep (held-out)")
      ax.set_xlabel("sqrt(KL(pi || pi_ref)) (sqrt nats)")
      ax.set_ylabel("gold reward (keywords)" if quantity == "gold" else f"proxy reward (RM {rm})")
      ax.set_title(f"RM {rm}: {quantity}")
      ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=6)
  fig.tight_layout()
  return fig


def _pm(mean: float, se: float) -> str:
  return f"{mean:+.3f} ± {se:.3f}"


def _markdown(results: dict, config, wall_s: float) -> str:
  rms, ref, dpo = results["reward_models"], results["reference"], results["dpo"]
  pre = config.pretrain
  blocks = [
      f"Policy: experiments/rlhf.py's character-level GPT ({pre.n_layer} layers x {pre.n_embd} wide x {pre.n_head} "
      f"heads, {pre.steps} pretraining steps on python_docs, {config.sft.steps} SFT steps), prompts of "
      f"{config.prompt_len} characters, {config.new_tokens} sampled per completion. Preferences: rankings of "
      f"{config.ranking_size} SFT completions for each of {config.num_train_prompts} training prompts, labelled by "
      f"the gold scorer (distinct Python keywords minus {config.repeat_penalty:g} per repeat) at Plackett-Luce "
      f"temperature {config.label_temperature:g}. PPO: {results['ppo_steps']} rollouts of {config.ppo.batch_size} "
      f"prompts, {config.ppo.update_epochs} epochs x {config.ppo.num_minibatches} minibatches, fixed beta, one "
      f"vmapped program per reward model; along-training points are blocks of {results['window']} updates. DPO: "
      f"{config.dpo.steps} steps of {config.dpo.batch_size} rankings, one vmapped sweep. Held-out: "
      f"{config.num_eval_prompts} test-split prompts, the same key for every policy; ± is a standard error.",
      "## Reward models (the proxies)",
      harness.table(["reward model (layers x width x heads)", "parameters", "starts from", "held-out pair accuracy"],
                    [(name, f"{rm['parameters']:,}", "the SFT model" if rm["from_sft"] else "scratch",
                      f"{rm['pair_accuracy']:.3f}") for name, rm in rms.items()], align="lrlr"),
  ]
  for name in rms:
    points = [("SFT reference", "0", "0", _pm(ref["gold"], ref["gold_se"]), _pm(*ref["proxy"][name]))]
    for beta, r in results["ppo"][name].items():
      h = r["held_out"]
      points.append((f"PPO beta={beta}", f"{h['kl']:.2f}", f"{math.sqrt(h['kl']):.2f}", _pm(h["gold"], h["gold_se"]),
                     _pm(h["proxy"], h["proxy_se"])))
    for beta in sorted(dpo, key=lambda b: dpo[b]["kl"]):
      d = dpo[beta]
      points.append((f"DPO beta={beta}", f"{d['kl']:.2f}", f"{math.sqrt(d['kl']):.2f}", _pm(d["gold"], d["gold_se"]),
                     _pm(*d["proxy"][name])))
    blocks += [f"## Held-out points, reward model {name}",
               harness.table(["policy", "KL (nats)", "sqrt KL", "gold", "proxy"], points, align="lrrrr")]
  along = []
  for name in rms:
    for beta, r in results["ppo"][name].items():
      a, v = r["along"], r["verdict"]
      k = v["peak"]
      along.append((name, beta, f"{a['gold'][0]:+.2f} / {a['proxy'][0]:+.2f}",
                    f"{a['gold'][k]:+.2f} ({a['sqrt_kl'][k]:.2f})",
                    f"{a['gold'][-1]:+.2f} / {a['proxy'][-1]:+.2f} ({a['sqrt_kl'][-1]:.2f})", f"{a['proxy'][k]:+.2f}",
                    "yes" if v["gold_falls"] else "no", "yes" if v["proxy_rises"] else "no"))
  blocks += ["## Along PPO training",
             "Blocks of updates on the training prompts' rollouts; KL is the sampled estimate (mean summed log pi - "
             "log pi_ref).",
             harness.table(["reward model", "beta", "first block gold / proxy", "best gold (sqrt KL there)",
                            "last block gold / proxy (sqrt KL)", "proxy at the gold peak", "gold peaks and falls",
                            "proxy keeps rising"], along, align="lrlllrll")]
  runs = [(name, beta, r["verdict"]) for name in rms for beta, r in results["ppo"][name].items()]
  over = [f"RM {n}, beta {b}" for n, b, v in runs if v["overoptimized"]]
  lines = []
  if over:
    lines.append(f"Along training, the proxy kept rising while the gold reward peaked and fell in {len(over)} of "
                 f"{len(runs)} PPO runs ({'; '.join(over)}).")
  else:
    lines.append(f"Along training, in none of the {len(runs)} PPO runs did the proxy keep rising while the gold reward "
                 "peaked and fell by more than twice its standard error.")
  # Where the best block is the first, the shape's rising half is not resolved by the blocks: compare the
  # first block with the SFT reference (held-out prompts, the blocks are training prompts' rollouts).
  first = [(n, b, results["ppo"][n][b]["along"]["gold"][0]) for n, b, v in runs if v["peak"] == 0]
  rose = [f"RM {n}, beta {b} ({g:+.2f})" for n, b, g in first if g > ref["gold"] + 2 * ref["gold_se"]]
  never = [f"RM {n}, beta {b} ({g:+.2f})" for n, b, g in first if g <= ref["gold"] + 2 * ref["gold_se"]]
  if first:
    lines.append(
        f"In {len(first)} of the {len(runs)} runs the best gold block is the first ({results['window']} updates). Its "
        f"gold is above the SFT reference's held-out {ref['gold']:+.2f} ± {ref['gold_se']:.2f} by more than twice "
        f"that error in {len(rose)} ({'; '.join(rose) or 'none'}): the gold rose within the first block and fell "
        f"after it. It is not above it in {len(never)} ({'; '.join(never) or 'none'}): the gold never rose, those "
        "runs only lost gold reward while the proxy climbed.")
  falls_only = [f"RM {n}, beta {b}" for n, b, v in runs if v["gold_falls"] and not v["proxy_rises"]]
  if falls_only:
    lines.append(f"The gold reward fell after a peak without the proxy still rising in: {'; '.join(falls_only)}.")
  for name in rms:
    v = results["dpo_verdict"][name]
    lines.append(f"DPO across betas (ordered by KL), proxy of RM {name}: gold "
                 + ("peaks and falls" if v["gold_falls"] else "does not peak and fall")
                 + ", proxy " + ("keeps rising beyond the gold peak" if v["proxy_rises"] else "does not keep rising")
                 + ".")
  above = [b for b, d in dpo.items() if d["gold"] - 2 * math.hypot(d["gold_se"], ref["gold_se"]) > ref["gold"]]
  lines.append(f"DPO's gold is above the SFT reference's by more than twice their combined error at {len(above)} of "
               f"{len(dpo)} betas" + (f" ({', '.join(sorted(above, key=float))})." if above else "."))
  return harness.document(
      "Reward-model over-optimisation (Gao et al. 2022, Figure 1 in shape)", *blocks, "## Verdict", "\n".join(lines),
      f"Whole table: {wall_s:.0f} s wall (stages already in {results['model_dir_name']}/ are reused).")


# ---------------------------------------------------------------------------------------
# The table.


def check_config(table: ml_collections.ConfigDict) -> dict:
  """The parsed sizes and betas; raises ConfigError on a bad field, before anything is trained or written.

  Returns:
    {"configs": {size name: experiments/rlhf.py config with that reward model}, "ppo_betas", "dpo_betas"}.
  """
  rm_sizes = [parse_size(s) for s in table.rm_sizes]
  if not rm_sizes or len(set(rm_sizes)) != len(rm_sizes):
    raise ConfigError(f"rm_sizes must name distinct sizes, got {table.rm_sizes}")
  ppo_betas = _floats("ppo_betas", table.ppo_betas, allow_zero=True)
  dpo_betas = _floats("dpo_betas", table.dpo_betas, allow_zero=False)
  check_positive("ppo_steps", table.ppo_steps)
  check_positive("window", table.window)
  if table.ppo_steps // table.window < 2:
    raise ConfigError(f"ppo_steps {table.ppo_steps} must hold at least two blocks of window {table.window} updates")
  configs = {}
  for size in rm_sizes:
    c = table.rlhf.copy_and_resolve_references()
    c.reward.n_layer, c.reward.n_embd, c.reward.n_head = size
    rlhf_experiment.check_config(c)
    configs[_size_name(size)] = c
  return {"configs": configs, "ppo_betas": ppo_betas, "dpo_betas": dpo_betas}


def run(table: ml_collections.ConfigDict, outdir: str) -> dict:
  """Trains what is missing, measures every point and writes the report into `outdir`; returns the results."""
  start = time.perf_counter()
  checked = check_config(table)
  config, configs, ppo_steps, window = table.rlhf, checked["configs"], table.ppo_steps, table.window
  ppo_betas, dpo_betas = checked["ppo_betas"], checked["dpo_betas"]
  model_dir = os.path.join(outdir, "model")
  setup = rlhf_experiment.pretrain(config, model_dir)
  sft_params = rlhf_experiment.supervised_finetune(config, model_dir, setup)
  rankings = rlhf_experiment.preferences(config, model_dir, setup, sft_params)
  reward_models = {name: rlhf_experiment.train_reward_model(c, os.path.join(model_dir, f"rm_{name}"), setup,
                                                            sft_params, rankings)
                   for name, c in configs.items()}
  results = {"rm_sizes": list(configs), "ppo_betas": ppo_betas, "ppo_steps": ppo_steps, "dpo_betas": dpo_betas,
             "window": window, "model_dir_name": "model", "reward_models": {}}
  for name, (rm_cfg, rm_params, accuracy) in reward_models.items():
    results["reward_models"][name] = {
        "n_layer": rm_cfg.n_layer, "n_embd": rm_cfg.n_embd, "n_head": rm_cfg.n_head,
        "parameters": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(rm_params)),
        "from_sft": rm_cfg == setup.cfg, "pair_accuracy": float(accuracy)}
  results["reference"] = held_out(config, setup, sft_params, sft_params, reward_models)
  results["ppo"] = {name: ppo_sweep(config, setup, sft_params, name, reward_models, ppo_betas, ppo_steps, window,
                                    os.path.join(model_dir, f"rm_{name}", f"ppo_{ppo_steps}.npz"))
                    for name in reward_models}
  dpo_params = dpo_sweep(config, model_dir, setup, sft_params, rankings, dpo_betas)
  results["dpo"] = {str(beta): held_out(config, setup, lm, sft_params, reward_models)
                    for beta, lm in zip(dpo_betas, dpo_params)}
  order = sorted(results["dpo"], key=lambda b: results["dpo"][b]["kl"])
  d = [results["dpo"][b] for b in order]
  results["dpo_verdict"] = {
      name: peak_and_fall([p["gold"] for p in d], [p["gold_se"] for p in d], [p["proxy"][name][0] for p in d],
                          [p["proxy"][name][1] for p in d])
      for name in reward_models}
  wall = time.perf_counter() - start
  markdown = _markdown(results, config, wall)
  print(markdown)
  return harness.write_report(outdir, "rlhf_overoptimization", results, markdown, figure=_figure(results),
                              config=table, wall_time_s=wall)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
