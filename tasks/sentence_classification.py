"""Single-sentence classification tasks read from the Kim (2014) files.

The files live under the data root (`prompt_jax.data.root.data_root()`) in
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
The sources (and the other Kim datasets) are in `tasks.sentence_sources`.
"""

import functools
from collections.abc import Sequence

import seqio
import tensorflow as tf

from tasks import metrics
from tasks import sentence_sources
from tasks import vocab

SST2_TASK = "sst2_v100"
# Every task this module registers, spelled out for grep.
TASK_NAMES = (SST2_TASK,)

SST2_LABELS = ("negative", "positive")
UNKNOWN_LABEL = -1
# Larger than every split here, so the post-repeat shuffle mixes a whole epoch.
SHUFFLE_BUFFER_SIZE = 10_000


# ------------------------------- reading ----------------------------------

# The Kim-format reader and sources live in `tasks.sentence_sources`; these
# names stay importable from here.
parse_kim_lines = sentence_sources.parse_kim_lines
sst2_source = sentence_sources.sst2_source
# Exact-match accuracy in percent (moved to `tasks.metrics`).
accuracy = metrics.accuracy


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


# ------------------------------ registration -------------------------------


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
