"""BLEU (Papineni et al., 2002) as sacreBLEU (Post, 2018) defines it, so scores compare with published ones.

    corpus_bleu(["the cat sat on the mat"], ["the cat is on the mat"])   # 0 .. 100
    corpus_bleu(hypotheses, [[ref_a, ref_b], ...])                      # several references each
    sentence_bleu("the cat", "the cat sat")

sacreBLEU's defaults, each reproduced here: the 13a tokenizer (mteval-v13a.pl's), case kept,
n-grams up to 4, clipped counts summed over the corpus, the brevity penalty against the
reference length closest to each hypothesis (the shorter on a tie), and "exp" smoothing (NIST's:
the k-th n-gram order without a match counts as 1 / 2^k matches). Sentence BLEU uses the
effective order (only the orders a hypothesis has n-grams of), as sacrebleu.sentence_bleu does.

References are given per hypothesis (a string, or a list of strings), not as sacreBLEU's
reference streams: sacrebleu.corpus_bleu(hyps, [refs]) is corpus_bleu(hyps, refs) here.
"""

import collections
import math
import re
from collections.abc import Sequence

MAX_ORDER = 4
TOKENIZERS = ("13a", "none")
SMOOTHING = {"exp": None, "floor": 0.1, "add-k": 1.0, "none": None}  # method -> its default value

# mteval-v13a.pl's language-dependent rules, applied in this order to " text ".
_13A_RULES = (
    # Punctuation and symbols apart from ' - . , become tokens of their own.
    (re.compile(r"([{-~\[-` -&(-+:-@/])"), r" \1 "),
    # A period or comma is split off unless it stands between digits (3.14, 1,000).
    (re.compile(r"([^0-9])([.,])"), r"\1 \2 "),
    (re.compile(r"([.,])([^0-9])"), r" \1 \2"),
    # A dash after a digit is split off (1990-2000).
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
)
_SGML = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))


def tokenize_13a(text: str) -> str:
  """mteval-v13a.pl's tokenization (sacreBLEU's default): tokens joined by single spaces."""
  text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
  for entity, char in _SGML:
    text = text.replace(entity, char)
  text = f" {text} "
  for pattern, replacement in _13A_RULES:
    text = pattern.sub(replacement, text)
  return " ".join(text.split())


def _words(text: str | bytes, tokenize: str, lowercase: bool) -> list[str]:
  text = text.decode("utf-8") if isinstance(text, bytes) else text
  if not isinstance(text, str):
    raise ValueError(f"BLEU scores text (str or UTF-8 bytes); got {type(text).__name__} {text!r}")
  text = text.lower() if lowercase else text
  return (tokenize_13a(text) if tokenize == "13a" else text).split()


def _ngrams(words: Sequence[str], max_order: int) -> collections.Counter:
  return collections.Counter(tuple(words[i:i + n]) for n in range(1, max_order + 1)
                             for i in range(len(words) - n + 1))


def statistics(hypothesis: str, references: str | Sequence[str], tokenize: str = "13a", lowercase: bool = False,
               max_order: int = MAX_ORDER) -> list[int]:
  """One segment's sufficient statistics, which add over a corpus.

  Returns:
    [hypothesis length, reference length, matches of order 1 .. max_order, n-grams of order
    1 .. max_order in the hypothesis]: the matches clipped by each n-gram's largest count in any
    one reference, the reference length the one closest to the hypothesis's (the shorter on a tie).

  Raises:
    ValueError: for an unknown tokenizer, no references, a text that is not str or bytes, or
      max_order < 1.
  """
  if tokenize not in TOKENIZERS:
    raise ValueError(f"unknown BLEU tokenizer {tokenize!r}; choose one of: {', '.join(TOKENIZERS)}")
  if isinstance(max_order, bool) or not isinstance(max_order, int) or max_order < 1:
    raise ValueError(f"max_order must be a positive integer, got {max_order!r}")
  references = [references] if isinstance(references, (str, bytes)) else list(references)
  if not references:
    raise ValueError(f"no reference for the hypothesis {hypothesis!r}")
  hyp = _words(hypothesis, tokenize, lowercase)
  ref_lengths, ref_counts = [], collections.Counter()
  for reference in references:
    words = _words(reference, tokenize, lowercase)
    ref_lengths.append(len(words))
    ref_counts |= _ngrams(words, max_order)  # n-gram -> its largest count in one reference
  ref_length = min(ref_lengths, key=lambda length: (abs(length - len(hyp)), length))
  matches, totals = [0] * max_order, [max(0, len(hyp) - n) for n in range(max_order)]
  for ngram, count in _ngrams(hyp, max_order).items():
    matches[len(ngram) - 1] += min(count, ref_counts[ngram])
  return [len(hyp), ref_length] + matches + totals


def score(stats: Sequence[float], smooth: str = "exp", smooth_value: float | None = None,
          effective_order: bool = False) -> float:
  """BLEU (0 .. 100) from summed `statistics`, with sacreBLEU's smoothing methods.

  Args:
    stats: [hypothesis length, reference length, matches by order, n-grams by order].
    smooth: "exp" (sacreBLEU's default for corpus and sentence BLEU), "floor" (an order without
      matches counts smooth_value matches), "add-k" (orders above 1 get smooth_value more matches
      and n-grams) or "none".
    smooth_value: for "floor" and "add-k"; by default SMOOTHING[smooth].
    effective_order: average the log precisions only over the orders the hypotheses have n-grams
      of (sentence BLEU); otherwise an order without n-grams scores 0.

  Raises:
    ValueError: for an unknown smoothing method.
  """
  if smooth not in SMOOTHING:
    raise ValueError(f"unknown BLEU smoothing {smooth!r}; choose one of: {', '.join(SMOOTHING)}")
  smooth_value = SMOOTHING[smooth] if smooth_value is None else smooth_value
  hyp_length, ref_length = stats[0], stats[1]
  order = (len(stats) - 2) // 2
  matches, totals = list(stats[2:2 + order]), list(stats[2 + order:])
  if not any(matches):
    return 0.0
  penalty = 1.0 if hyp_length >= ref_length else math.exp(1 - ref_length / hyp_length)
  precisions = [0.0] * order  # in percent
  used, halvings = order, 1.0
  for n in range(order):
    if smooth == "add-k" and n > 0:
      matches[n] += smooth_value
      totals[n] += smooth_value
    if totals[n] == 0:
      break  # no longer n-grams either
    used = n + 1 if effective_order else order
    if matches[n]:
      precisions[n] = 100.0 * matches[n] / totals[n]
    elif smooth == "exp":
      halvings *= 2
      precisions[n] = 100.0 / (halvings * totals[n])
    elif smooth == "floor":
      precisions[n] = 100.0 * smooth_value / totals[n]
  if any(p == 0.0 for p in precisions[:used]):
    return 0.0  # a zero precision makes the geometric mean zero
  return penalty * math.exp(sum(math.log(p) for p in precisions[:used]) / used)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], tokenize: str = "13a",
                lowercase: bool = False, smooth: str = "exp", smooth_value: float | None = None,
                max_order: int = MAX_ORDER) -> float:
  """Corpus BLEU, 0 .. 100, equal to sacrebleu.corpus_bleu(hypotheses, reference streams).score.

  Args:
    hypotheses: one string per segment (an empty one scores no n-grams).
    references: per segment, its reference string or a list of its references.
    tokenize: "13a" (sacreBLEU's default) or "none" (split at whitespace only).
    lowercase: compare lower-cased text.
    smooth: "exp" (the default), "floor", "add-k" or "none"; see `score`.
    smooth_value: for "floor" and "add-k".
    max_order: the longest n-grams counted.

  Raises:
    ValueError: for an empty corpus, hypotheses and references of different counts, a segment
      without references, a text that is not str or bytes, an unknown tokenizer or smoothing, or
      max_order < 1.
  """
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
  if not hypotheses:
    raise ValueError("BLEU of an empty corpus is undefined")
  totals = [0] * (2 + 2 * max_order)
  for hypothesis, refs in zip(hypotheses, references):
    totals = [a + b for a, b in zip(totals, statistics(hypothesis, refs, tokenize, lowercase, max_order))]
  return score(totals, smooth, smooth_value)


def sentence_bleu(hypothesis: str, references: str | Sequence[str], tokenize: str = "13a", lowercase: bool = False,
                  smooth: str = "exp", smooth_value: float | None = None, max_order: int = MAX_ORDER) -> float:
  """One segment's BLEU with the effective order, 0 .. 100: sacrebleu.sentence_bleu(hypothesis, refs).score.

  Arguments as for `corpus_bleu`, for one hypothesis and its reference(s).
  """
  return score(statistics(hypothesis, references, tokenize, lowercase, max_order), smooth, smooth_value,
               effective_order=True)
