"""BERT Table 8 in shape: the masking mix of MLM pre-training, scored by MLM and fine-tuned accuracy.

Devlin et al. (2019, appendix C.2, Table 8) pre-train with different treatments of the 15% of
tokens chosen for the MLM loss: the share replaced by [MASK], kept, or replaced by a random
token (80/10/10 in BERT), and report fine-tuned accuracies that differ by about a point at
most. Here, for the mixes of `mixes` (MASK/same/random percentages) and `seeds` seeds:

  1. pre-training: every (mix, seed) member in ONE vmapped program (research.sweep.run: the
     training loop's own step under lax.scan and vmap) of experiments/bert.py's MLM task on
     python_docs at the table's sizes (warmup at most a tenth of the steps), the mix a traced
     hyperparameter of the task (research.tasks.bert.make_pretrain_task(..., traced_mix=True)); member (mix, s)
     is the run `python -m experiments.bert --config.seed=s --config.mask_mix=mix` would make at
     those sizes, except that its batches are drawn from a fixed set of windows (every
     `window_stride`-th start of the training stream) rather than from every start. Seed s
     gives every mix the same initial weights, batches and masking draws, so the mixes are
     compared pairwise, seed by seed;
  2. MLM accuracy: each member's accuracy at the chosen positions of held-out python_docs
     sequences, all masked the same way ([MASK] at every chosen position, the config's
     eval_mask_mix "100/0/0", with one fixed key), so mixes are compared on the same question;
  3. fine-tuning: each member's encoder, with a fresh pooler and classifier, trained on
     python_docs_topics (which of 5 parts of the documentation a paragraph comes from), again
     one vmapped program over all members and the baseline's (sweep.run continuing from the
     stacked states), and its held-out accuracy.

A row "no pre-training" fine-tunes from random encoders, the floor the mixes improve on.
Numbers are mean +- standard error over the seeds, with every seed's value, and the paired
difference from the first mix (80/10/10 by default), so a reader can tell which differences
exceed the spread.

Run:
  python -m experiments.tables.bert_masking --outdir=experiments/tables/results/bert_masking
  python -m experiments.tables.bert_masking --outdir=/tmp/bert_masking \\
      --config=experiments/tables/bert_masking.py:smoke --config.mixes=80/10/10 --config.mixes=0/0/100
"""

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from experiments import bert as bert_experiment
from experiments import harness
from research import sweep
from research.models import bert
from research.tasks import bert as bert_tasks
from research.train import ConfigError, Keys, check_positive, cli, init_state

PAPER_MIXES = ("80/10/10", "100/0/0", "80/0/20", "80/20/0", "0/20/80", "0/0/100")


def _smoke(config: ml_collections.ConfigDict) -> None:
  """One mix, two seeds of a tiny model, a few steps of each stage, for tests."""
  config.mixes, config.seeds, config.steps, config.finetune_steps = ("0/0/100",), 2, 3, 3
  config.hidden_size, config.num_hidden_layers, config.seq_len = 16, 1, 16
  config.vocab_size, config.eval_sequences, config.batch_size = 256, 16, 8


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """The paper's mixes at the table's sizes; preset "smoke" for tests."""
  config = ml_collections.ConfigDict()
  config.mixes = PAPER_MIXES  # MASK/same/random percentages, one pre-training per mix
  config.seeds = 3  # members (seeds) per mix, vmapped in one program
  config.steps = 600  # MLM pre-training updates
  config.finetune_steps = 150  # fine-tuning updates
  config.batch_size = 32  # sequences per update (pre-training and fine-tuning)
  config.hidden_size = 64  # model width (MLP 4x, one head per 32 channels, at least 1)
  config.num_hidden_layers = 2  # encoder blocks
  config.seq_len = 64  # tokens per sequence, [CLS] and [SEP] included
  config.vocab_size = 2048  # WordPiece vocabulary trained on python_docs
  config.eval_sequences = 512  # held-out python_docs sequences of the MLM accuracy
  config.window_stride = 0  # distance between the training windows' starts; 0: half a window
  return cli.apply_presets(config, preset, PRESETS)


def table_config(table, mix: str):
  """experiments/bert.py's config at the table's sizes, pre-training with the masking `mix`."""
  config = bert_experiment.get_config()
  config.mask_mix = mix
  config.hidden_size, config.num_hidden_layers = table.hidden_size, table.num_hidden_layers
  config.num_attention_heads = max(1, table.hidden_size // 32)
  config.intermediate_size = 4 * table.hidden_size
  config.max_position_embeddings = config.seq_len = table.seq_len
  config.vocab_size, config.eval_sequences = table.vocab_size, table.eval_sequences
  config.steps, config.batch_size = table.steps, table.batch_size
  config.finetune.steps, config.finetune.batch_size = table.finetune_steps, table.batch_size
  config.finetune.warmup_steps = min(config.finetune.warmup_steps, table.finetune_steps // 10)
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, table.steps // 10)
  return config


def _member(tree, i: int):
  return jax.tree.map(lambda x: x[i], tree)


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def finetune(config, cfg: bert.BertConfig, seeds, encoders, train_examples, eval_examples, task=None) -> dict:
  """Fine-tunes one classifier per member (seed), all in one vmapped program.

  `encoders` (stacked "bert" params of the first k members, or None) replace those members'
  random encoders; the others fine-tune from their random initialisation.
  """
  ft_config = bert_experiment.finetune_config(config)
  task = task or bert_tasks.make_classifier_task(ft_config, cfg)
  first = {k: jnp.asarray(v[:ft_config.batch_size]) for k, v in train_examples.items()}
  state = _stack([init_state(task, Keys.from_seed(int(s)).init, first, ft_config.ema_decay) for s in seeds])
  if encoders is not None:
    k = jax.tree.leaves(encoders)[0].shape[0]
    own = state.params["params"]["bert"]
    params = dict(state.params["params"], bert=jax.tree.map(lambda pre, x: jnp.concatenate([pre, x[k:]]), encoders,
                                                            own))
    state = state.replace(params={**state.params, "params": params})
  result = sweep.run(task, ft_config, train_examples, seeds, state=state)
  scores = [task.evaluate(_member(result.state.params, i), None, eval_examples) for i in range(len(seeds))]
  return {"accuracy": [s["accuracy"] for s in scores], "eval_loss": [s["eval_loss"] for s in scores],
          "final_train_loss": np.asarray(result.metrics["loss"])[:, -10:].mean(axis=1).tolist()}


def pretrain(config, cfg: bert.BertConfig, special, mixes, seeds, data) -> tuple[dict, list[dict]]:
  """Pre-trains every (mix, seed) member in one vmapped program; returns their stacked encoders and scores."""
  task = bert_tasks.make_pretrain_task(config, cfg, special, traced_mix=True)
  first = {k: jnp.asarray(v[:config.batch_size]) for k, v in data["train"].items()}
  members = [(mix, s) for mix in mixes for s in seeds]
  states = []
  for mix, s in members:
    state = init_state(task, Keys.from_seed(int(s)).init, first, config.ema_decay)
    fractions = dict(zip(bert_tasks.MIX_HPARAMS, bert.parse_mix(mix)[:2]))
    states.append(state.replace(hparams={**state.hparams, **{k: jnp.float32(v) for k, v in fractions.items()}}))
  result = sweep.run(task, config, data["train"], [s for _, s in members], state=_stack(states))
  scores = [task.evaluate(_member(result.state.params, i), None, data["eval"]) for i in range(len(members))]
  final_loss = np.asarray(result.metrics["loss"])[:, -20:].mean(axis=1)
  for score, loss in zip(scores, final_loss):
    score["final_train_mlm_loss"] = float(loss)
  return result.state.params["params"]["bert"], scores


def _fmt(values) -> str:
  """Mean ± standard error of accuracies, in percent."""
  return harness.pm(harness.mean_se(values), 1, scale=100.0)


def figure(rows: list[dict], baseline: dict) -> Figure:
  fig = Figure(figsize=(9, 3.6), dpi=120)
  names = [r["mix"] for r in rows]
  x = np.arange(len(rows))
  for ax, key, title in zip(fig.subplots(1, 2), ("mlm_accuracy", "finetuned_accuracy"),
                            ("held-out MLM accuracy ([MASK]ed tokens)", "fine-tuned accuracy (python_docs_topics)")):
    for i, r in enumerate(rows):
      ax.scatter(np.full(len(r[key]), i), 100 * np.asarray(r[key]), color="0.6", s=12, zorder=2)
      mean, se = harness.mean_se(r[key])
      ax.errorbar(i, 100 * mean, yerr=100 * se if np.isfinite(se) else None, fmt="o", color="C0", capsize=4,
                  zorder=3)
    if key == "finetuned_accuracy":
      mean, _ = harness.mean_se(baseline["accuracy"])
      ax.axhline(100 * mean, color="C3", ls="--", lw=1, label="no pre-training")
      ax.legend(fontsize=8)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_xlabel("MASK / same / random (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  return fig


def markdown(rows: list[dict], baseline: dict, seeds, config, wall_s: float) -> str:
  per_seed = lambda values: ", ".join(f"{100 * v:.1f}" for v in values)
  table = []
  for r in rows:
    delta = {key: np.asarray(r[key]) - np.asarray(rows[0][key]) for key in ("mlm_accuracy", "finetuned_accuracy")}
    first = r is rows[0]
    table.append((r["mix"], _fmt(r["mlm_accuracy"]), per_seed(r["mlm_accuracy"]),
                  "" if first else _fmt(delta["mlm_accuracy"]), _fmt(r["finetuned_accuracy"]),
                  per_seed(r["finetuned_accuracy"]), "" if first else _fmt(delta["finetuned_accuracy"]),
                  f"{np.mean(r['final_train_mlm_loss']):.3f}"))
  table.append(("no pre-training", "", "", "", _fmt(baseline["accuracy"]), per_seed(baseline["accuracy"]), "", ""))
  best = max(rows, key=lambda r: np.mean(r["finetuned_accuracy"]))
  worst = min(rows, key=lambda r: np.mean(r["finetuned_accuracy"]))
  spread = max(harness.mean_se(r["finetuned_accuracy"])[1] for r in rows)
  return harness.document(
      "BERT Table 8 in shape: the masking mix of MLM pre-training",
      f"Model: {config.num_hidden_layers} layers, {config.hidden_size} wide, {config.num_attention_heads} head(s), "
      f"MLP {config.intermediate_size}, sequences of {config.seq_len} tokens, WordPiece vocabulary of "
      f"{config.vocab_size} trained on python_docs. Pre-training: {config.steps} MLM updates of {config.batch_size} "
      f"sequences on python_docs (15% of the tokens chosen, corrupted by the row's mix); fine-tuning: "
      f"{config.finetune.steps} updates of {config.finetune.batch_size} paragraphs of python_docs_topics (5 classes). "
      f"{len(seeds)} seeds per row; all rows' members train together in one vmapped program (pre-training), and "
      f"again with the baseline's (fine-tuning); mean ± standard error (percent), then every seed's value. "
      f"Total wall time {wall_s / 60:.1f} min.",
      "MLM accuracy is measured alike for every row: the held-out tokens chosen with one fixed key, all replaced by "
      "[MASK]. A mix that never shows [MASK] in training (0/20/80, 0/0/100) meets it first here.",
      f"The Δ columns are paired: each seed's difference from the same seed's {rows[0]['mix']} run (same initial "
      "weights, batches and masking draws), mean ± standard error over the seeds.",
      harness.table(["MASK / same / random", "MLM accuracy", "per seed", f"Δ MLM vs {rows[0]['mix']}",
                     "fine-tuned accuracy", "per seed", f"Δ fine-tuned vs {rows[0]['mix']}", "train MLM loss"], table,
                    align="lrlrrlrr"),
      f"Fine-tuned accuracy ranges from {100 * np.mean(worst['finetuned_accuracy']):.1f} ({worst['mix']}) to "
      f"{100 * np.mean(best['finetuned_accuracy']):.1f} ({best['mix']}), a gap of "
      f"{100 * (np.mean(best['finetuned_accuracy']) - np.mean(worst['finetuned_accuracy'])):.1f} points, against "
      f"standard errors of up to {100 * spread:.1f} points; the paper's MNLI and NER accuracies for these mixes "
      "differ by about a point at most.")


def check_config(table: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad field, then on experiments/bert.py's checks of the table's model."""
  for name in ("seeds", "steps", "finetune_steps", "batch_size", "hidden_size", "num_hidden_layers", "vocab_size",
               "eval_sequences"):
    check_positive(name, table[name])
  check_positive("window_stride", table.window_stride, allow_zero=True)
  if not table.mixes:
    raise ConfigError("mixes must name at least one masking mix")
  for mix in table.mixes:
    try:
      bert.parse_mix(mix)
    except ValueError as e:
      raise ConfigError(f"mixes: {e}") from None
  bert_experiment.check_config(table_config(table, table.mixes[0]))


def run(table: ml_collections.ConfigDict, outdir: str) -> dict:
  """Pre-trains and fine-tunes every member; writes results.json, bert_masking.md and bert_masking.png."""
  check_config(table)
  config = table_config(table, table.mixes[0])
  start = time.perf_counter()
  seeds = list(range(table.seeds))
  tokenizer = bert_experiment.train_tokenizer(config)
  special = tokenizer.special_ids()
  windows, held_out = bert_experiment.mlm_data(config, tokenizer, special)
  stride = table.window_stride or max(1, (config.seq_len - 2) // 2)
  data = {"train": windows.__getitems__(np.arange(0, len(windows), stride)), "eval": held_out,
          "task_train": bert_experiment.classification_examples(config, config.task_train_split, tokenizer, special),
          "task_eval": bert_experiment.classification_examples(config, config.task_eval_split, tokenizer, special)}
  num_labels = int(data["task_train"]["label"].max()) + 1
  cls_cfg = bert_experiment.model_config(config, tokenizer.vocab_size, pad_token_id=special["[PAD]"],
                                         num_labels=num_labels)
  # One classifier task for every row: the fine-tuning program compiles once.
  classifier = {"cfg": cls_cfg,
                "task": bert_tasks.make_classifier_task(bert_experiment.finetune_config(config), cls_cfg)}
  mixes, n = list(table.mixes), len(seeds)
  pretrain_start = time.perf_counter()
  mlm_cfg = bert_experiment.model_config(config, tokenizer.vocab_size, pad_token_id=special["[PAD]"])
  encoders, scores = pretrain(config, mlm_cfg, special, mixes, seeds, data)
  pretrain_s = time.perf_counter() - pretrain_start
  print(f"pre-trained {len(mixes)} mixes x {n} seeds in {pretrain_s:.0f} s", flush=True)
  finetune_start = time.perf_counter()
  tuned = finetune(config, cls_cfg, seeds * len(mixes) + seeds, encoders, data["task_train"], data["task_eval"],
                   classifier["task"])
  finetune_s = time.perf_counter() - finetune_start
  baseline = {k: v[-n:] for k, v in tuned.items()}
  print(f"no pre-training: fine-tuned accuracy {_fmt(baseline['accuracy'])}", flush=True)
  rows = []
  for j, mix in enumerate(mixes):
    part = slice(j * n, (j + 1) * n)
    rows.append({"mix": mix, "mlm_accuracy": [s["mlm_accuracy"] for s in scores[part]],
                 "mlm_loss": [s["mlm_loss"] for s in scores[part]],
                 "final_train_mlm_loss": [s["final_train_mlm_loss"] for s in scores[part]],
                 "finetuned_accuracy": tuned["accuracy"][part], "finetune_eval_loss": tuned["eval_loss"][part]})
    print(f"{mix}: MLM accuracy {_fmt(rows[-1]['mlm_accuracy'])}, fine-tuned accuracy "
          f"{_fmt(rows[-1]['finetuned_accuracy'])}", flush=True)
  wall = time.perf_counter() - start
  results = {"rows": rows, "no_pretraining": baseline, "seeds": seeds, "pretrain_seconds": pretrain_s,
             "finetune_seconds": finetune_s, "train_windows": len(data["train"]["input_ids"]),
             "eval_sequences": len(held_out["input_ids"]), "task_examples": {
                 "train": len(data["task_train"]["label"]), "eval": len(data["task_eval"]["label"])}}
  text = markdown(rows, baseline, seeds, config, wall)
  print(text)
  return harness.write_report(outdir, "bert_masking", {**results, "model_config": config.to_dict()}, text,
                              figure=figure(rows, baseline), config=table, wall_time_s=wall)


if __name__ == "__main__":
  cli.main(__file__, run, dir_flag="outdir")
