"""Single-sentence classification tasks read from the Kim (2014) files.

The files live under the data root (`prompt_jax.data_root.data_root()`) in
`sentence_cls/<dataset>/`: one example per line, `LABEL<space>text`, with
integer labels, tokenised and lower-cased text (see the data README).

Each task is T5-style text-to-text. For SST-2 (`sst2_v100`):

  file line: `1 a stirring , funny and finally transporting ...`
  inputs:    `sst2 sentence: a stirring , funny and finally transporting ...`
  targets:   `positive`

Predictions and targets are mapped back to label ids by a postprocessor;
the metric is accuracy in percent, where an unknown prediction counts as
wrong (it is never dropped).

Splits use seqio names: `train`, `validation` (the `.dev` file) and `test`.
"""

import functools
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from prompt_jax import data_root as data_root_lib
from tasks import vocab

SST2_TASK = "sst2_v100"
# Every task this module registers, spelled out for grep.
TASK_NAMES = (SST2_TASK,)

SST2_LABELS = ("negative", "positive")
UNKNOWN_LABEL = -1
# Larger than every split here, so the post-repeat shuffle mixes a whole epoch.
SHUFFLE_BUFFER_SIZE = 10_000


# ------------------------------- reading ----------------------------------


def parse_kim_lines(
    data: bytes, path: str | os.PathLike[str], num_classes: int,
    encoding: str = "utf-8",
) -> tuple[np.ndarray, list[str]]:
  """Parses `LABEL<space>text` lines.

  Splits on `\\n` only: some Kim files are Latin-1 with NEL (0x85) bytes,
  which `str.splitlines()` would treat as line breaks. One trailing newline
  is allowed; every other line, including a blank one, must be an example.

  Args:
    data: the raw file contents.
    path: the file, named in error messages.
    num_classes: labels must be integers in `[0, num_classes)`.
    encoding: the text encoding of the file.

  Returns:
    (labels [N] int64, texts: N strings).

  Raises:
    ValueError: `path:line: ...` for the first malformed line.
  """
  lines = data.split(b"\n")
  if lines and not lines[-1]:
    lines.pop()
  labels, texts = [], []
  for lineno, raw in enumerate(lines, start=1):
    try:
      line = raw.rstrip(b"\r").decode(encoding)
    except UnicodeDecodeError as e:
      raise ValueError(f"{path}:{lineno}: not valid {encoding}: {e}") from None
    label, _, text = line.partition(" ")
    valid_label = label.isascii() and label.isdigit()
    if not (valid_label and int(label) < num_classes and text.strip()):
      raise ValueError(
          f"{path}:{lineno}: expected 'LABEL text' with LABEL in"
          f" 0..{num_classes - 1}, got {line[:80]!r}"
      )
    labels.append(int(label))
    texts.append(text)
  return np.asarray(labels, np.int64), texts


@functools.lru_cache(maxsize=32)
def _read_cached(path: str, mtime_ns: int, size: int, num_classes: int,
                 encoding: str) -> tuple[np.ndarray, tuple[str, ...]]:
  del mtime_ns, size  # Part of the cache key only: a changed file is re-read.
  labels, texts = parse_kim_lines(
      pathlib.Path(path).read_bytes(), path, num_classes, encoding)
  return labels, tuple(texts)


class KimFormatSource(seqio.DataSource):
  """A seqio `DataSource` over one Kim-format file per split.

  Files are found, read and validated when a split is first used (never at
  import or registration), so a task can be registered without its data.
  Examples are `{"idx": int64, "label": int64, "sentence": string}`.
  """

  def __init__(self, split_files: Mapping[str, str], num_classes: int, *,
               root: str | os.PathLike[str] | None = None,
               encoding: str = "utf-8"):
    """Creates the source.

    Args:
      split_files: split name → file path relative to the data root.
      num_classes: the number of integer labels.
      root: the data root; None means `data_root()` at read time (which
        honours `$PROMPT_JAX_DATA_ROOT`).
      encoding: the text encoding of the files.
    """
    super().__init__(splits=tuple(split_files))
    self._split_files = dict(split_files)
    self._num_classes = num_classes
    self._root = root
    self._encoding = encoding

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def path(self, split: str) -> pathlib.Path:
    """Returns the file of `split` (raises a one-line error if missing)."""
    if split not in self._split_files:
      raise ValueError(
          f"Unknown split {split!r}; this source has {sorted(self.splits)}.")
    root = (data_root_lib.data_root() if self._root is None
            else pathlib.Path(self._root))
    path = root / self._split_files[split]
    if not path.is_file():
      raise FileNotFoundError(
          f"Data file for split {split!r} not found: {path}")
    return path

  def read(self, split: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Returns (labels [N] int64, texts) of `split`, parsed and validated."""
    path = self.path(split)
    stat = path.stat()
    return _read_cached(str(path), stat.st_mtime_ns, stat.st_size,
                        self._num_classes, self._encoding)

  def num_input_examples(self, split: str) -> int:
    return len(self.read(split)[0])

  def get_dataset(
      self,
      split: str = "train",
      shuffle: bool = True,
      seed: int | None = None,
      shard_info: seqio.ShardInfo | None = None,
      *,
      sequence_length: Mapping[str, int] | None = None,  # Unused.
      use_cached: bool = False,  # Unused.
      num_epochs: int | None = 1,  # Unused.
  ) -> tf.data.Dataset:
    """Returns the examples of `split`, fully shuffled if `shuffle`."""
    del sequence_length, use_cached, num_epochs
    labels, texts = self.read(split)
    ds = tf.data.Dataset.from_tensor_slices({
        "idx": np.arange(len(labels), dtype=np.int64),
        "label": labels,
        "sentence": tf.constant(texts, tf.string),
    })
    if shard_info is not None and shard_info.num_shards > 1:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    if shuffle:
      ds = ds.shuffle(len(labels), seed=seed)
    return ds


# ------------------------ formatting and metrics ---------------------------


def sentence_to_text(ds: tf.data.Dataset, *, prefix: str,
                     label_words: Sequence[str]) -> tf.data.Dataset:
  """Formats `{label, sentence}` examples as text-to-text.

  Example (prefix `"sst2 sentence: "`, words `("negative", "positive")`):
    {"idx": 0, "label": 1, "sentence": "good fun ."} →
    {"idx": 0, "label": 1, "inputs": "sst2 sentence: good fun .",
     "targets": "positive"}
  """
  words = tf.constant(list(label_words), tf.string)

  def fn(ex):
    return {
        "idx": ex["idx"],
        "label": ex["label"],
        "inputs": tf.strings.join([prefix, ex["sentence"]]),
        "targets": tf.gather(words, ex["label"]),
    }

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def label_word_to_id(text: str, example=None, is_target: bool = False, *,
                     label_words: Sequence[str]) -> int:
  """Maps a decoded string to its label id; unknown predictions → -1.

  Matches whole words after stripping whitespace, so `"positive."` is
  unknown. Bind `label_words` with `functools.partial` to get a seqio
  `postprocess_fn`.

  Raises:
    ValueError: if a *target* is not a label word (a data bug).
  """
  del example
  text = text.strip()
  if text in label_words:
    return label_words.index(text)
  if is_target:
    raise ValueError(f"Target {text!r} is not one of {list(label_words)}.")
  return UNKNOWN_LABEL


def accuracy(targets: Sequence, predictions: Sequence) -> dict[str, float]:
  """Exact-match accuracy in percent (T5 convention) over all examples.

  Every prediction counts: one that matches no target (e.g. the -1 of an
  unknown label word) is wrong, not skipped.
  """
  if len(targets) != len(predictions):
    raise ValueError(
        f"{len(targets)} targets but {len(predictions)} predictions.")
  if not targets:
    raise ValueError("accuracy of zero examples is undefined.")
  hits = sum(t == p for t, p in zip(targets, predictions))
  return {"accuracy": 100.0 * hits / len(targets)}


# ------------------------------ registration -------------------------------


def sst2_source(root: str | os.PathLike[str] | None = None) -> KimFormatSource:
  """SST-2 binary sentences: train 6920, validation 872, test 1821 rows."""
  return KimFormatSource(
      {
          "train": "sentence_cls/sst2/stsa.binary.train",
          "validation": "sentence_cls/sst2/stsa.binary.dev",
          "test": "sentence_cls/sst2/stsa.binary.test",
      },
      num_classes=len(SST2_LABELS),
      root=root,
  )


def register_sentence_task(name: str, source: seqio.DataSource, *,
                           prefix: str, label_words: Sequence[str]) -> None:
  """(Re-)registers a text-to-text sentence classification task.

  Idempotent: an existing task of the same name is replaced, so importing
  this module twice (or re-registering in a test) never fails.
  """
  label_words = tuple(label_words)
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=source,
      output_features=vocab.t5_output_features(),
      preprocessors=[
          functools.partial(sentence_to_text, prefix=prefix,
                            label_words=label_words),
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim,
      ],
      postprocess_fn=functools.partial(label_word_to_id,
                                       label_words=label_words),
      metric_fns=[accuracy],
      shuffle_buffer_size=SHUFFLE_BUFFER_SIZE,
  )


register_sentence_task(SST2_TASK, sst2_source(), prefix="sst2 sentence: ",
                       label_words=SST2_LABELS)
