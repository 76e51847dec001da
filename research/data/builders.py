"""TFDS builders for the bundled, offline datasets (no download ever happens).

digits       scikit-learn's 8x8 handwritten digits, a fixed 1497/300 train/test split.
toy2d        ring8, grid25 and swissroll point clouds (research/data/toy2d.py).
python_docs  the English documentation text shipped with CPython (pydoc_data.topics).
python_docs_topics  paragraphs of that text labelled with the part of the documentation they come
             from (statements, expressions, data model, built-in types, execution): a small
             sentence-classification task for fine-tuning encoders offline.
number_words  numbers and their English words, a translation task (research/data/number_words.py).
python_docs_tasks  python_docs with generated few-shot task documents added to its train split
             (research/data/prompt_tasks.py): an LM corpus on which in-context learning can appear.
python_docs_code  python_docs with the python_functions train problems (signature, docstring and
             reference body) added to its train split: text plus code, for a Codex-style model.
"""

import numpy as np
import tensorflow_datasets as tfds

from research.data import toy2d
from research.data.number_words import NumberWords  # pylint: disable=unused-import  # registers the builder
from research.data.python_functions import PythonFunctions  # pylint: disable=unused-import  # registers the builder
from research.data.shapes import DigitsCaptions, Shapes  # pylint: disable=unused-import  # registers the builders

DIGITS_TEST_SIZE = 300
TASK_DOCUMENTS = 150  # python_docs_tasks: documents of each task in the train split
TASK_DEMONSTRATIONS = (4, 12)  # python_docs_tasks: demonstrations per document, drawn uniformly in this range
TASK_SEED = 0  # python_docs_tasks: draws the documents
CODE_COPIES = 2  # python_docs_code: copies of each train problem in the train split (code is ~25% of the text)
TOY2D_SIZES = {"train": 20_000, "test": 5_000}


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits as uint8 images in 0..255 (stored raw, not PNG-encoded)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "Prepared as ArrayRecord files (random access).", "1.0.0": "First release."}

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),  # raw bytes: fast random reads
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset")

  def _split_generators(self, dl_manager):
    del dl_manager  # bundled with scikit-learn
    from sklearn import datasets  # pylint: disable=import-outside-toplevel
    digits = datasets.load_digits()
    # 0..16 intensities -> 0..255.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    order = np.random.default_rng(0).permutation(len(images))
    test, train = order[:DIGITS_TEST_SIZE], order[DIGITS_TEST_SIZE:]
    return {"train": self._generate_examples(images[train], digits.target[train], train),
            "test": self._generate_examples(images[test], digits.target[test], test)}

  def _generate_examples(self, images, labels, ids):
    for image, label, i in zip(images, labels, ids):
      yield int(i), {"image": image, "label": int(label)}


class Toy2d(tfds.core.GeneratorBasedBuilder):
  """Generated 2D distributions: mixtures of Gaussians and a swiss roll."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "Prepared as ArrayRecord files (random access).", "1.0.0": "First release."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in toy2d.NAMES]

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "point": tfds.features.Tensor(shape=(2,), dtype=np.float32),
            "mode": tfds.features.Scalar(dtype=np.int32),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, seed) for seed, split in enumerate(TOY2D_SIZES)}

  def _generate_examples(self, split, seed):
    data = toy2d.generate(self.builder_config.name, TOY2D_SIZES[split], seed)
    for i in range(len(data["point"])):
      yield i, {"point": data["point"][i], "mode": data["mode"][i]}


def _python_docs_documents() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
  """python_docs' (train, test) documents as (topic, text): every 10th topic (in name order) is held out."""
  from pydoc_data import topics  # pylint: disable=import-outside-toplevel
  names = sorted(topics.topics)
  return ([(name, topics.topics[name]) for i, name in enumerate(names) if i % 10],
          [(name, topics.topics[name]) for name in names[::10]])


def _documents(documents):
  """Examples {topic, text} keyed by topic, of (topic, text) pairs."""
  for name, text in documents:
    yield name, {"topic": name, "text": text}


class PythonDocs(tfds.core.GeneratorBasedBuilder):
  """CPython's English documentation topics (an offline LM corpus), one text per topic."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "Prepared as ArrayRecord files (random access).", "1.0.0": "First release."}

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"topic": tfds.features.Text(), "text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    train, test = _python_docs_documents()
    return {"train": self._generate_examples(train + self._added()), "test": self._generate_examples(test)}

  def _added(self) -> list[tuple[str, str]]:
    """(topic, text) documents a variant adds to the train split after python_docs' own."""
    return []

  def _generate_examples(self, documents):
    yield from _documents(documents)


class PythonDocsTasks(PythonDocs):
  """python_docs plus task documents: the train split adds TASK_DOCUMENTS documents of each task of
  research.data.prompt_tasks, each its description line and TASK_DEMONSTRATIONS (low, high) "Q: ... A: ..."
  demonstrations of train-split examples; the test split is python_docs' test split unchanged."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release (ArrayRecord files)."}

  def _added(self) -> list[tuple[str, str]]:
    from research.data import prompt_tasks  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(TASK_SEED)
    low, high = TASK_DEMONSTRATIONS
    return [(f"task:{task}/{i}", prompt_tasks.document(task, int(rng.integers(low, high + 1)), rng))
            for task in prompt_tasks.TASKS for i in range(TASK_DOCUMENTS)]


class PythonDocsCode(PythonDocs):
  """python_docs plus code: the train split adds CODE_COPIES copies of every python_functions train problem,
  each one document holding its prompt (signature and docstring) followed by its reference body; the
  test split is python_docs' test split unchanged (no test problem is in either split)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release (ArrayRecord files)."}

  def _added(self) -> list[tuple[str, str]]:
    from research.data import python_functions  # pylint: disable=import-outside-toplevel
    problems = python_functions.problems("train")
    return [(f"code:{p['task_id']}/{copy}", p["prompt"] + p["solution"])
            for copy in range(CODE_COPIES) for p in problems]


# The part of the documentation each pydoc topic belongs to: the classes of PythonDocsTopics.
# Grouped by hand from the Language and Library Reference chapters the topics are taken from.
TOPIC_GROUPS = {
    "statements": ("assert", "assignment", "async", "augassign", "break", "class", "compound", "continue", "del",
                   "else", "for", "function", "global", "if", "import", "nonlocal", "pass", "raise", "return", "try",
                   "while", "with", "yield"),
    "expressions": ("atom-identifiers", "atom-literals", "attribute-references", "await", "binary", "bitwise",
                    "booleans", "calls", "comparisons", "conversions", "dict", "exprlists", "floating", "id-classes",
                    "identifiers", "imaginary", "in", "integers", "lambda", "lists", "numbers", "operator-summary",
                    "power", "shifting", "slicings", "strings", "subscriptions", "unary"),
    "data_model": ("attribute-access", "callable-types", "context-managers", "customization", "numeric-types",
                   "objects", "sequence-types", "specialattrs", "specialnames", "types"),
    "builtin_types": ("bltin-code-objects", "bltin-ellipsis-object", "bltin-null-object", "bltin-type-objects",
                      "formatstrings", "string-methods", "truth", "typesfunctions", "typesmapping", "typesmethods",
                      "typesmodules", "typesseq", "typesseq-mutable"),
    "execution": ("debugger", "dynamic-features", "exceptions", "execmodel", "naming"),
}
MIN_PARAGRAPH_WORDS = 12  # shorter paragraphs are headings, grammar rules or fragments
TOPICS_TEST_EVERY = 2  # every 2nd paragraph (in class, topic, paragraph order) is held out: ~630 test examples


class PythonDocsTopics(tfds.core.GeneratorBasedBuilder):
  """Which part of the Python documentation a paragraph comes from: 5 classes, about 1,260 paragraphs.

  Paragraphs are the blank-line separated blocks of each pydoc topic with at least
  MIN_PARAGRAPH_WORDS words, each kept once (topics repeat one another: "else" is "if",
  "compound" holds every compound statement). In the order class, topic name, paragraph,
  every TOPICS_TEST_EVERY-th is in "test" and the rest in "train": deterministic, and every
  class is in both. Topics of another CPython version that TOPIC_GROUPS does not name are left out.
  """

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "Every 2nd paragraph held out (was every 5th): a test split of ~630, not 252, examples.",
                   "1.0.0": "First release (ArrayRecord files)."}

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=list(TOPIC_GROUPS)),
            "topic": tfds.features.Text(),
        }),
        supervised_keys=("text", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager
    from pydoc_data import topics  # pylint: disable=import-outside-toplevel
    seen, examples = set(), []
    for label, group in enumerate(TOPIC_GROUPS.values()):
      for name in sorted(n for n in group if n in topics.topics):
        for paragraph in topics.topics[name].split("\n\n"):
          paragraph = paragraph.strip()
          if len(paragraph.split()) >= MIN_PARAGRAPH_WORDS and paragraph not in seen:
            seen.add(paragraph)
            examples.append((f"{name}/{len(examples)}", {"text": paragraph, "label": label, "topic": name}))
    return {"train": self._generate_examples([e for i, e in enumerate(examples) if i % TOPICS_TEST_EVERY]),
            "test": self._generate_examples(examples[::TOPICS_TEST_EVERY])}

  def _generate_examples(self, examples):
    yield from examples
