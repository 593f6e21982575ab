"""The MetaICL task pool as seqio tasks, one per task folder.

The files live under the data root in `metaicl/<task>/` (MetaICL / CrossFit
format, see the data README): one JSON object per line,
`{"task", "input", "output", "options"}`, where `options` lists the answer
strings of a classification or multiple-choice task and is `[]` for free-form
(generation) tasks.

Each task is text-to-text, with the input left as MetaICL writes it (no task
prefix: unseen-task evaluation must not lean on the task name). For
`superglue-cb` (`metaicl_superglue_cb_v100`):

  file line: {"task": "superglue-cb", "input": "premise: ... [SEP]
              hypothesis: ...", "output": "contradiction",
              "options": ["entailment", "contradiction", "neutral"]}
  example:   {"idx": 0, "inputs": "premise: ... [SEP] hypothesis: ...",
              "targets": "contradiction",
              "options": ["entailment", "contradiction", "neutral"]}

`options` stays in the example as a variable-length string feature (seqio
mixtures and feature converters keep only `inputs`/`targets`), for rank
classification: score every option as the target, take the best
(`prompt_jax.evaluators.unseen`). Decode-based evaluation (`--mode=eval`) compares
the generated string with the target: accuracy, plus MetaICL's macro-F1 for
classification tasks (`metaicl_metrics`).

Splits, per task: `train_<seed>` and `dev_<seed>` (the 16-shot files of
seeds 13, 21, 42, 87, 100), `test` (only the tasks in `TASKS_WITH_TEST_FILE`),
`meta_train` (every k-shot file plus the test file when there is one,
concatenated in that order; rows repeated across seeds are kept) and, for
`glue-rte` only, `train_full` (the whole RTE train set). Splits are declared
statically: importing lists no folder and reads no file; files are read and
validated when a split is first used (a malformed line raises
`path:line: ...`).
"""

import functools
import os
from collections.abc import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from prompt_jax.icl import metaicl_pool
from prompt_jax.icl.kshot_format import kshot_text
# The pool's names, re-exported: tasks.metaicl stays the one place to read.
from prompt_jax.icl.metaicl_pool import (  # pylint: disable=unused-import
    FOLDER_OF, K_SHOT, METAICL_DIR, NAME_OF, SEEDS, TASK_FOLDERS, TASK_NAMES,
    TASK_TYPES, TASKS_WITH_TEST_FILE, Row, exact_match_accuracy, macro_f1,
    parse_metaicl_lines, split_files, task_name, task_type)
from tasks import sources
from tasks import vocab

SHUFFLE_BUFFER_SIZE = 20_000  # Larger than every split here.


def _rows_to_dataset(rows: Sequence[Row]) -> tf.data.Dataset:
  flat = [o for _, _, options in rows for o in options]
  options = tf.RaggedTensor.from_row_lengths(
      tf.constant(flat, tf.string, shape=[len(flat)]),
      tf.constant([len(r[2]) for r in rows], tf.int64))
  return tf.data.Dataset.from_tensor_slices({
      "idx": np.arange(len(rows), dtype=np.int64),
      "input": tf.constant([r[0] for r in rows], tf.string),
      "output": tf.constant([r[1] for r in rows], tf.string),
      "options": options,
  })

class MetaICLSource(seqio.DataSource):
  """A seqio `DataSource` over one MetaICL task folder
  (`prompt_jax.icl.metaicl_pool.MetaICLFiles` reads the files).

  Examples are `{"idx": int64, "input": string, "output": string,
  "options": string [n_options]}` (`n_options` is 0 for free-form tasks).
  """

  def __init__(self, folder: str, *,
               root: str | os.PathLike[str] | None = None):
    """Creates the source.

    Args:
      folder: the task folder under `metaicl/`, e.g. `glue-rte`.
      root: the data root; None means `data_root()` at read time (which
        honours `$PROMPT_JAX_DATA_ROOT`).
    """
    self._files = metaicl_pool.MetaICLFiles(folder, root=root)
    super().__init__(splits=self._files.splits)
    self.folder = folder

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def paths(self, split: str):
    """The files of `split` (raises a one-line error if one is missing)."""
    return self._files.paths(split)

  def read(self, split: str) -> tuple[Row, ...]:
    """The (input, output, options) rows of `split`, parsed and validated."""
    return self._files.read(split)

  def num_input_examples(self, split: str) -> int:
    return len(self.read(split))

  def get_dataset(
      self,
      split: str = "train_100",
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
    rows = self.read(split)
    return sources.shard_and_shuffle(_rows_to_dataset(rows), len(rows),
                                     shuffle, seed, shard_info)


# ------------------------ formatting and metrics ---------------------------


def metaicl_to_text(ds: tf.data.Dataset) -> tf.data.Dataset:
  """`{idx, input, output, options}` → `{idx, inputs, targets, options}`."""
  def fn(ex):
    return {"idx": ex["idx"], "inputs": ex["input"], "targets": ex["output"],
            "options": ex["options"]}
  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def prepend_demonstrations(ds: tf.data.Dataset, *,
                           demonstrations: Sequence[tuple[str, str]],
                           separator: str = " ") -> tf.data.Dataset:
  """A seqio preprocessor: `inputs` → `kshot_text(demonstrations, inputs)`.

  The same k demonstrations go before every example, as in MetaICL. Use it
  before tokenization; seqio trims long inputs from the END, which would cut
  the example itself, so size `inputs` for the demonstrations (the unseen
  evaluation tokenizes itself and trims from the start instead).
  """
  prefix = kshot_text(demonstrations, "", separator) if demonstrations else ""

  def fn(ex):
    return {**ex, "inputs": tf.strings.join([prefix, ex["inputs"]])}
  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def strip_text(text: str, example=None, is_target: bool = False) -> str:
  """seqio postprocessor: surrounding whitespace removed (as MetaICL)."""
  del example, is_target
  return text.strip()

def metaicl_metrics(targets: Sequence[str], predictions: Sequence[str], *,
                    folder: str) -> dict[str, float]:
  """seqio metric: `accuracy`, plus `macro_f1` for classification tasks."""
  metrics = {"accuracy": exact_match_accuracy(targets, predictions)}
  if task_type(folder) == "classification":
    metrics["macro_f1"] = macro_f1(targets, predictions)
  return metrics


# ------------------------------ registration -------------------------------


def register_metaicl_task(folder: str, *,
                          root: str | os.PathLike[str] | None = None,
                          name: str | None = None) -> seqio.Task:
  """(Re-)registers the text-to-text task of one MetaICL folder.

  Idempotent: an existing task of the same name is replaced.

  Args:
    folder: the task folder under `metaicl/`.
    root: the data root (None: `data_root()` at read time).
    name: the task name; default `task_name(folder)`.
  """
  name = name or task_name(folder)
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=MetaICLSource(folder, root=root),
      output_features=vocab.t5_output_features(),
      preprocessors=[
          metaicl_to_text,
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim,
      ],
      postprocess_fn=strip_text,
      metric_fns=[functools.partial(metaicl_metrics, folder=folder)],
      shuffle_buffer_size=SHUFFLE_BUFFER_SIZE,
  )


for _folder in TASK_FOLDERS:
  register_metaicl_task(_folder)
del _folder
