"""In-memory seqio tasks for tests (trainer, data pipeline, evaluation).

A task built here behaves like a catalogue task (same T5 vocabulary, the
same `inputs`/`targets` features with EOS, same accuracy metric) but reads
its examples from a Python list, so tests need no data files beyond the
vocabulary:

  register_in_memory_task("tiny_cls", [
      {"inputs": "good movie", "targets": "positive"},
      {"inputs": "bad movie", "targets": "negative"},
  ])
  data.get_dataset(data.DatasetConfig("tiny_cls", ...))
"""

from collections.abc import Callable, Mapping, Sequence

import seqio
import tensorflow as tf

from tasks import sentence_classification
from tasks import vocab

Example = Mapping[str, str]
DEFAULT_SPLITS = ("train", "validation", "test")


def _check_examples(name: str, split: str,
                    examples: Sequence[Example]) -> None:
  if not examples:
    raise ValueError(f"Task {name!r} split {split!r}: no examples.")
  for i, ex in enumerate(examples):
    if set(ex) != {"inputs", "targets"} or not all(
        isinstance(v, str) for v in ex.values()):
      raise ValueError(
          f"Task {name!r} split {split!r} example {i}: expected"
          f" {{'inputs': str, 'targets': str}}, got {ex!r}")


def register_in_memory_task(
    name: str,
    examples: Sequence[Example] | Mapping[str, Sequence[Example]],
    *,
    splits: Sequence[str] = DEFAULT_SPLITS,
    postprocess_fn: Callable[..., object] | None = None,
    metric_fns: Sequence[Callable[..., dict]] = (
        sentence_classification.accuracy,),
    shuffle_buffer_size: int = 1000,
) -> seqio.Task:
  """(Re-)registers a seqio task over in-memory text examples.

  Replaces any task of the same name, so tests may re-register freely.

  Args:
    name: the task name.
    examples: `[{"inputs": str, "targets": str}, ...]` used for every split
      in `splits`, or a mapping split → such a list.
    splits: the splits, when `examples` is a list.
    postprocess_fn: seqio postprocessor; None compares raw strings.
    metric_fns: seqio metric fns over (targets, predictions); the default
      is exact-match accuracy in percent.
    shuffle_buffer_size: the task's shuffle buffer.

  Returns:
    The registered `seqio.Task`.

  Raises:
    ValueError: (one line) naming a malformed example or an empty split.
  """
  if isinstance(examples, Mapping):
    per_split = {s: list(v) for s, v in examples.items()}
  else:
    per_split = {s: list(examples) for s in splits}
  for split, rows in per_split.items():
    _check_examples(name, split, rows)

  def dataset_fn(split: str, shuffle_files: bool,
                 seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # One "file"; the task shuffles examples.
    rows = per_split[split]
    return tf.data.Dataset.from_tensor_slices({
        "inputs": tf.constant([r["inputs"] for r in rows], tf.string),
        "targets": tf.constant([r["targets"] for r in rows], tf.string),
    })

  source = seqio.FunctionDataSource(
      dataset_fn, splits=tuple(per_split),
      num_input_examples={s: len(v) for s, v in per_split.items()})
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=source,
      output_features=vocab.t5_output_features(),
      preprocessors=[seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim],
      postprocess_fn=postprocess_fn,
      metric_fns=list(metric_fns),
      shuffle_buffer_size=shuffle_buffer_size,
  )
