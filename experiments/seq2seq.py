"""A T5 encoder-decoder trained by research.train to translate numbers to English words (or back).

Run:
  python -m experiments.seq2seq --workdir=/tmp/seq2seq
  python -m experiments.seq2seq --workdir=/tmp/seq2seq_back --config.direction=words_to_numbers
  python -m experiments.seq2seq --workdir=/tmp/vaswani --config.model=transformer-tiny
  python -m experiments.seq2seq --workdir=/tmp/prefix_lm --config.model=gpt
  python -m experiments.seq2seq --workdir=/tmp/smoke --config=experiments/seq2seq.py:smoke

By default a tiny T5 v1.1 (research/models/seq2seq.py "t5-tiny": 2 + 2 layers, width 64) on the
bundled number_words dataset (research/data/number_words.py): "412" -> "four hundred twelve",
trained on 9,000 numbers of 1 to 4 digits with teacher forcing. The evaluation decodes held-out
numbers greedily and by beam search on `test` (1 to 4 digits, numbers never trained on) and on
`test_longer` (5 and 6 digits: longer sources and targets than any in training), and scores the
decoded strings. Writes into the workdir: checkpoints, TensorBoard events, results.json with
`<split>_<greedy|beam>_<exact_match|bleu>` (exact match as a fraction; corpus BLEU 0 .. 100 over
tokens, a number digit by digit), samples.txt (source | greedy | beam | reference of a few
examples of each split) and attention.png (the last decoder layer's cross-attention, averaged
over heads, of a few test examples: generated tokens down, source tokens across).

`--config.model=gpt` trains a decoder-only GPT (n_layer, n_embd, n_head) on the same pairs as a
prefix LM (research/tasks/prefix_lm.py: source, separator, target in one sequence, the source
attended in both directions, the loss on the target only) and scores its greedy decoding the
same way (`<split>_greedy_<exact_match|bleu>`; no beam search, no attention.png).
"""

import os

import jax
import ml_collections
import numpy as np

from research.data import number_words
from research.models import attention as attention_lib
from research.models import seq2seq as seq2seq_model
from research.tasks import prefix_lm, seq2seq
from research.train import ConfigError, base_config, check_choice, check_common, check_positive, check_workdir
from research.train import cli, train
from research.train.step import eval_params

TOKENIZERS = ("number_words",)
PREFIX_LM = "gpt"  # config.model of the decoder-only prefix LM


def _smoke(config: ml_collections.ConfigDict) -> None:
  """A few steps and a small evaluation, for tests."""
  config.steps, config.batch_size = 6, 8
  config.optimizer.warmup_steps = 2
  config.log_every = config.checkpoint_every = 3
  config.eval_examples, config.eval_batch_size = 4, 4
  config.num_beams = 2
  config.attention_examples = 4  # eval_batch_size: attention.png decodes with the evaluation's greedy program


PRESETS = {"smoke": _smoke}


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  """Default config (a tiny T5 on number_words, minutes on 2 CPU cores); preset "smoke" for tests."""
  config = base_config()
  config.dataset = "number_words"  # the bundled (number, words) pairs; the only dataset with its tokenizer
  config.tokenizer = "number_words"  # digits and number words, pad 0 and eos 1 (research/data/number_words.py)
  config.direction = "numbers_to_words"  # numbers_to_words ("412" -> "four hundred twelve") or words_to_numbers
  config.model = "t5-tiny"  # a named size of research.models.seq2seq.CONFIGS (its vocabulary replaced), or "gpt"
  config.n_layer = 6  # the GPT's blocks (model "gpt": a decoder-only prefix LM; 6 x 64 has t5-tiny's parameters)
  config.n_embd = 64  # the GPT's width (model "gpt")
  config.n_head = 4  # the GPT's attention heads (model "gpt")
  config.max_source_length = 12  # longest source in tokens with eos (the model's limit; sources are padded to it)
  config.max_target_length = 12  # longest target in tokens with eos (and the most tokens decoding writes)
  config.attention = "auto"  # one of research.models.attention.IMPLEMENTATIONS
  config.dropout = 0.0  # dropout on embeddings, sublayers, feed-forward units and attention (traced)
  config.label_smoothing = 0.0  # weight of the uniform distribution in the training targets (traced)
  config.steps = 3000  # optimizer updates
  config.batch_size = 64  # (source, target) pairs per update
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 3e-3  # peak, after warmup
  config.optimizer.weight_decay = 0.01  # kernels only (research.optim.decay_mask)
  config.optimizer.schedule = "warmup_cosine"
  config.optimizer.warmup_steps = 200
  config.optimizer.final_lr_fraction = 0.05
  config.optimizer.grad_clip_norm = 1.0
  config.steps_per_call = 50  # steps compiled into one call: a small model is dispatch-bound on CPU
  config.log_every = 500  # metrics and a progress line every this many steps
  config.checkpoint_every = 1000  # save a checkpoint every this many steps (and at the end)
  config.eval_every = 0  # decode and score every this many steps; 0: only at the end
  config.eval_examples = 500  # examples of each evaluation split decoded (evenly spaced over it; 0: all)
  config.eval_batch_size = 100  # sources per decoding call
  config.num_beams = 4  # beams of the beam-search decoding (greedy is always scored too)
  config.attention_examples = 4  # test examples drawn in attention.png
  return cli.apply_presets(config, preset, PRESETS)


def check_config(config) -> None:
  """Raises ConfigError on a bad field, before anything is loaded, compiled or written."""
  check_common(config)
  check_choice("dataset", config.dataset, ("number_words",))
  check_choice("tokenizer", config.tokenizer, TOKENIZERS)
  check_choice("direction", config.direction, seq2seq.DIRECTIONS)
  check_choice("model", config.model, seq2seq.MODELS + (PREFIX_LM,))
  check_choice("attention", config.attention, attention_lib.IMPLEMENTATIONS)
  for name in ("max_source_length", "max_target_length", "eval_batch_size", "num_beams", "n_layer", "n_embd",
               "n_head"):
    check_positive(name, config[name])
  if config.model == PREFIX_LM and config.n_embd % config.n_head:
    raise ConfigError(f"n_embd {config.n_embd} is not divisible by n_head {config.n_head}")
  check_positive("eval_examples", config.eval_examples, allow_zero=True)
  check_positive("attention_examples", config.attention_examples, allow_zero=True)
  if not 0.0 <= config.dropout < 1.0:
    raise ConfigError(f"dropout must be in [0, 1), got {config.dropout}")
  if not 0.0 <= config.label_smoothing < 1.0:
    raise ConfigError(f"label_smoothing must be in [0, 1), got {config.label_smoothing}")


def _spread(items: list, count: int) -> list:
  """`count` items evenly spaced over `items` (all of them for count 0 or more than there are)."""
  if count == 0:
    return list(items)
  return [items[i] for i in seq2seq.spread_indices(len(items), count)]


def _check_lengths(tokenizer, splits: dict, config) -> None:
  """Every source and target of every split fits the model's lengths (with eos), or ConfigError."""
  for split, (sources, targets) in splits.items():
    for side, texts, limit in (("source", sources, "max_source_length"), ("target", targets, "max_target_length")):
      lengths = [len(tokenizer.encode(t)) for t in texts]
      longest = int(np.argmax(lengths))
      if lengths[longest] > config[limit]:
        raise ConfigError(f"the {split} {side} {texts[longest]!r} has {lengths[longest]} tokens with eos, "
                          f"more than {limit} {config[limit]}")


def draw_attention(path: str, model, params, tokenizer, sources: list[str]) -> None:
  """attention.png: the last decoder layer's head-averaged cross-attention while greedily decoding each source."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

  ids = tokenizer.encode_batch(sources, model.cfg.max_source_length)  # (N, S)
  mask = ids != seq2seq.PAD
  tokens = seq2seq_model.generate(model, params, ids, mask, model.cfg.max_target_length)  # (N, 1 + new)
  maps = np.asarray(seq2seq_model.cross_attention_maps(model, params, ids, mask, tokens[:, :-1]))
  last = maps[-1].mean(axis=1)  # (N, T, S): the last layer, heads averaged
  fig, axes = plt.subplots(1, len(sources), figsize=(3.2 * len(sources), 3.6), squeeze=False)
  for i, ax in enumerate(axes[0]):
    source = [tokenizer.vocabulary[t] for t in ids[i][mask[i]]]
    new = tokens[i, 1:].tolist()
    length = new.index(number_words.EOS_ID) + 1 if number_words.EOS_ID in new else len(new)
    generated = [tokenizer.vocabulary[t] for t in new[:length]]
    ax.imshow(last[i, :length, :len(source)], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(source)), source, rotation=90, fontsize=7)
    ax.set_yticks(range(length), generated, fontsize=7)
    ax.set_title(sources[i], fontsize=8)
  fig.suptitle("cross-attention, last decoder layer, mean over heads (rows: generated, columns: source)", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# What experiments.sample / experiments.evaluate may change in a finished run (they train nothing).
SAMPLING_FIELDS = ("eval_examples", "eval_batch_size", "num_beams")


EVAL_SPLITS = ("test", "test_longer")  # scored by decoding at each evaluation


def metric_names(config) -> tuple[str, ...]:
  """The scalar metrics a run of `config` reports (a sweep's `--metric` is one of these or train_loss)."""
  return seq2seq.metric_names(EVAL_SPLITS, prefix_lm.METHODS if config.model == PREFIX_LM else seq2seq.METHODS)


def run(config, workdir: str, members=None) -> dict:
  """Trains the encoder-decoder described by `config` in `workdir`; returns what results.json holds.

  `members` (research.train.Members) trains a sweep of runs as one program (experiments/sweep.py).
  """
  check_config(config)
  check_workdir(workdir)
  tokenizer = number_words.NumberWordsTokenizer()
  splits = {split: seq2seq.pairs(number_words.generate(split), config.direction) for split in number_words.SPLITS}
  _check_lengths(tokenizer, splits, config)
  family = prefix_lm if config.model == PREFIX_LM else seq2seq
  data = family.encode_pairs(tokenizer, *splits["train"], config.max_source_length, config.max_target_length)
  eval_sets = {split: tuple(_spread(side, config.eval_examples) for side in splits[split]) for split in EVAL_SPLITS}
  task = family.make_task(config, tokenizer, eval_sets)
  trained = train(task, config, workdir, data, eval_sets, members)
  if members is None and config.attention_examples and config.model != PREFIX_LM:
    model = seq2seq_model.Seq2Seq(seq2seq.model_config(config, tokenizer.vocab_size))
    sources = _spread(splits["test"][0], config.attention_examples)
    params = jax.device_get(eval_params(trained.state))["params"]
    draw_attention(os.path.join(workdir, "attention.png"), model, params, tokenizer, sources)
  return trained.results


if __name__ == "__main__":
  cli.main(__file__, run)
