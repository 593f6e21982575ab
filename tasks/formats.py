"""Unified formats over the classification sources: UnifiedQA and EFL.

Generation (UnifiedQA style, `unifiedqa_<task>_v100`): the question first,
then the lettered choices, then the context, joined by UnifiedQA's separator
` \\n ` (a literal backslash + n, not a newline), all lower-cased; the target
is the gold choice's text. SST-2 validation row 0 becomes

  inputs:  `what is the sentiment of this review? \\n (a) negative
            (b) positive \\n one long string of cliches .`
  targets: `negative`

and BoolQ (no choices shown, as UnifiedQA encodes yes/no questions)
`<question>? \\n <passage>` → `yes` / `no`. Predictions are decoded text
mapped back to the choice index (unknown text → -1, counted as wrong);
metric: accuracy (CB: also macro-F1).

Entailment (EFL, "Entailment as Few-Shot Learner", `efl_<task>_v100`):
every example becomes one pair per label,

  inputs:  `hypothesis: <label description> premise: <the example>`
  targets: `yes` for the gold label's pair, `no` for the others (training)

e.g. SST-2 `hypothesis: It was terrible. premise: one long string of
cliches .` → `yes`. The description comes first (T5's MNLI order), so
truncating a long example (a BoolQ passage) never cuts it off. In eval
splits every pair's target is `yes`: the model scores log p(yes | pair)
(seqio `score_fn`), the pairs of one example are grouped back by `idx` and
the label with the highest score is the prediction
(`prompt_jax.scoring.rank`). Label descriptions are a dict per task
(`EFL_DESCRIPTIONS`, overridable in `register_efl_task`).

Rows of rank-classified formats carry `is_train_split` from
`SplitFlagSource`: training splits (`TRAIN_SPLITS`) yield yes/no pairs,
every other split the all-"yes" pairs to rank, so one task serves both.
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from prompt_jax.scoring import rank as rank_classification
from tasks import metrics as metrics_lib
from tasks import preprocessors
from tasks import sentence_sources
from tasks import sources
from tasks import superglue_sources
from tasks import tfds_sources
from tasks import vocab

SHUFFLE_BUFFER_SIZE = 10_000
UNKNOWN_LABEL = -1
# Splits whose rank-classification rows are training rows (gold options or
# yes/no pairs); every other split yields all options for ranking.
TRAIN_SPLITS = ("train", "train_from_val")

# ------------------------------ shared pieces ------------------------------


class SplitFlagSource(tfds_sources.MappedSource):
  """Wraps a source; adds `is_train_split` (bool) to every example.

  `rank_classification_rows` uses it: in `train_splits` only gold options
  (or yes/no pairs) are produced, elsewhere every option for ranking.
  """

  def __init__(self, inner: seqio.DataSource,
               train_splits: Sequence[str] = TRAIN_SPLITS):
    super().__init__(inner, lambda ex: ex, getattr(inner, "schema", None))
    self.train_splits = tuple(train_splits)

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None,
                  **kwargs) -> tf.data.Dataset:
    """The wrapped split with `is_train_split = split in train_splits`."""
    ds = self.inner.get_dataset(split, shuffle=shuffle, seed=seed,
                                shard_info=shard_info)
    flag = tf.constant(split in self.train_splits)
    return ds.map(lambda ex: {**ex, preprocessors.TRAIN_SPLIT_KEY: flag},
                  num_parallel_calls=tf.data.AUTOTUNE)


def dataset_source(name: str) -> seqio.DataSource:
  """The local source of a classification dataset, by schema name."""
  if name in sentence_sources.SCHEMAS:
    return sentence_sources.get_sentence_source(name)
  if name in superglue_sources.SCHEMAS:
    return superglue_sources.get_superglue_source(name)
  raise ValueError(f"no source for dataset {name!r}")


def dataset_schema(name: str) -> sources.Schema:
  """The schema (fields, label names) of a dataset, by name."""
  for schemas in (sentence_sources.SCHEMAS, superglue_sources.SCHEMAS):
    if name in schemas:
      return schemas[name]
  raise ValueError(f"no schema for dataset {name!r}")


def metric_fns(name: str) -> tuple[Callable[..., dict], ...]:
  """The benchmark's label metrics: accuracy; CB adds macro-F1 (3 classes)."""
  if name == "cb":
    return (metrics_lib.accuracy,
            functools.partial(metrics_lib.macro_f1, labels=(0, 1, 2)))
  return (metrics_lib.accuracy,)


def add_task(name: str, source: seqio.DataSource, prep: Sequence[Callable],
             postprocess_fn: Callable, metrics: Sequence[Callable],
             token_prep: Sequence[Callable] = ()) -> None:
  """(Re-)registers a task (idempotent).

  Preprocessors: `prep` (text), tokenize, trim + EOS, then `token_prep`.
  """
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=source, output_features=vocab.t5_output_features(),
      preprocessors=[*prep, seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim, *token_prep],
      postprocess_fn=postprocess_fn, metric_fns=list(metrics),
      shuffle_buffer_size=SHUFFLE_BUFFER_SIZE)


# ------------------------------- UnifiedQA ---------------------------------

_SENTIMENT = dict(question="what is the sentiment of this review?",
                  choices=("negative", "positive"), context="{sentence}")

# Dataset → `preprocessors.unifiedqa_text` arguments; `choices` follow the
# schema's label order.
UNIFIEDQA_SPECS: dict[str, dict[str, Any]] = {
    "sst2": _SENTIMENT,
    "sst5": dict(_SENTIMENT, choices=("very negative", "negative", "neutral",
                                      "positive", "very positive")),
    "mr": _SENTIMENT,
    "cr": _SENTIMENT,
    "mpqa": dict(question="what is the polarity of this opinion?",
                 choices=("negative", "positive"), context="{sentence}"),
    "subj": dict(question="is this sentence subjective or objective?",
                 choices=("subjective", "objective"), context="{sentence}"),
    "trec": dict(question="what kind of answer does this question ask for?",
                 choices=("description", "entity", "abbreviation", "person",
                          "location", "number"),
                 context="{sentence}"),
    # Yes/no questions: no choices shown (as UnifiedQA encodes BoolQ).
    "boolq": dict(question="{question}?", choices=("no", "yes"),
                  context="{passage}", show_choices=False),
    "rte": dict(question="based on the passage, is this true? {hypothesis}",
                choices=("yes", "no"), context="{premise}"),
    "cb": dict(question="based on the passage, is this true? {hypothesis}",
               choices=("yes", "no", "maybe"), context="{premise}"),
    "copa": dict(question="what was the {question} of this?",
                 choices=("{choice1}", "{choice2}"), context="{premise}"),
    "wic": dict(
        question='does the word "{word}" mean the same thing in these two'
        " sentences?", choices=("no", "yes"),
        context="{sentence1}" + preprocessors.UNIFIEDQA_SEPARATOR
        + "{sentence2}"),
}


def choice_to_label(text: str, example: Mapping[str, Any] | None = None,
                    is_target: bool = False) -> int:
  """seqio postprocess_fn: decoded text → index in the example's choices.

  Compares stripped, lower-cased text with the example's `choices`
  feature; text that is no choice → -1 (wrong, never dropped).

  Raises:
    ValueError: if a target is not its example's gold choice (a data bug).
  """
  if example is None:
    raise ValueError("choice_to_label needs the example (its choices)")
  choices = [c.decode("utf-8") if isinstance(c, bytes) else str(c)
             for c in np.asarray(example["choices"]).tolist()]
  text = text.strip().lower()
  if is_target:
    label = int(example["label"])
    if choices[label] != text:
      raise ValueError(f"target {text!r} is not choice {label} of {choices}")
    return label
  return choices.index(text) if text in choices else UNKNOWN_LABEL


def register_unifiedqa_task(name: str, source: seqio.DataSource, *,
                            metrics: Sequence[Callable],
                            **spec: Any) -> None:
  """(Re-)registers a UnifiedQA generation task.

  Args:
    name: the task name.
    source: examples with `idx`, `label` and the template fields.
    metrics: `(targets, predictions)` metrics over label ids.
    **spec: `preprocessors.unifiedqa_text` arguments (question, choices,
      context, show_choices, lowercase).
  """
  add_task(name, source,
           [functools.partial(preprocessors.unifiedqa_text, **spec)],
           choice_to_label, metrics)


# ---------------------------------- EFL ------------------------------------

# T5's MNLI order (hypothesis first): truncating a long example never cuts
# off the description, which is all that differs between the pairs.
EFL_INPUT = "hypothesis: {description} premise: {sentence}"

# Dataset → (sentence template, {label name: description}).
EFL_DESCRIPTIONS: dict[str, tuple[str, dict[str, str]]] = {
    "sst2": ("{sentence}", {"negative": "It was terrible.",
                            "positive": "It was great."}),
    "mr": ("{sentence}", {"negative": "It was terrible.",
                          "positive": "It was great."}),
    "cr": ("{sentence}", {"negative": "It was terrible.",
                          "positive": "It was great."}),
    "rte": ("Claim: {hypothesis} Text: {premise}", {
        "entailment": "The claim follows from the text.",
        "not_entailment": "The claim does not follow from the text.",
    }),
    "cb": ("Claim: {hypothesis} Text: {premise}", {
        "entailment": "The claim follows from the text.",
        "contradiction": "The text contradicts the claim.",
        "neutral": "The text neither implies nor contradicts the claim.",
    }),
    "boolq": ("Question: {question}? Passage: {passage}", {
        "False": "The answer is no.",
        "True": "The answer is yes.",
    }),
}


def efl_rows(sentence: str, descriptions: Mapping[str, str],
             label_names: Sequence[str]) -> list[preprocessors.OptionRow]:
  """One `OptionRow` per label: (sentence, description) → scored "yes".

  Raises:
    ValueError: if a label has no description or a description names an
      unknown label.
  """
  unknown = sorted(set(descriptions) - set(label_names))
  missing = [n for n in label_names if n not in descriptions]
  if unknown or missing:
    raise ValueError(f"EFL label descriptions: missing {missing}, unknown"
                     f" {unknown}; labels are {list(label_names)}")
  return [
      preprocessors.OptionRow(
          EFL_INPUT.replace("{sentence}", sentence).replace(
              "{description}", descriptions[label]),
          "yes", i)
      for i, label in enumerate(label_names)
  ]


def register_efl_task(name: str, source: seqio.DataSource,
                      schema: sources.Schema, *, sentence: str,
                      descriptions: Mapping[str, str],
                      metrics: Sequence[Callable],
                      train_splits: Sequence[str] = TRAIN_SPLITS) -> None:
  """(Re-)registers an EFL entailment task with score-based evaluation.

  Args:
    name: the task name.
    source: the classification source.
    schema: its schema (label names).
    sentence: template of the example's text (first sentence of a pair).
    descriptions: label name → its description (may use `{field}`s).
    metrics: `(targets, predictions)` metrics over label ids.
    train_splits: splits that yield yes/no training pairs.
  """
  rows = efl_rows(sentence, descriptions, schema.label_names)
  add_task(
      name, SplitFlagSource(source, train_splits),
      [functools.partial(preprocessors.rank_classification_rows, rows=rows,
                         train_negative_target="no")],
      rank_classification.option_postprocessor,
      [functools.partial(rank_classification.rank_metric,
                         metric_fns=tuple(metrics),
                         num_labels=len(schema.label_names))])


# ------------------------------ registration -------------------------------

UNIFIEDQA_TASKS = {
    "unifiedqa_sst2_v100": "sst2",
    "unifiedqa_sst5_v100": "sst5",
    "unifiedqa_mr_v100": "mr",
    "unifiedqa_cr_v100": "cr",
    "unifiedqa_mpqa_v100": "mpqa",
    "unifiedqa_subj_v100": "subj",
    "unifiedqa_trec_v100": "trec",
    "unifiedqa_boolq_v100": "boolq",
    "unifiedqa_cb_v100": "cb",
    "unifiedqa_copa_v100": "copa",
    "unifiedqa_rte_v100": "rte",
    "unifiedqa_wic_v100": "wic",
}
EFL_TASKS = {
    "efl_sst2_v100": "sst2",
    "efl_mr_v100": "mr",
    "efl_cr_v100": "cr",
    "efl_rte_v100": "rte",
    "efl_cb_v100": "cb",
    "efl_boolq_v100": "boolq",
}
# Every task this module registers, spelled out for grep.
TASK_NAMES = (
    "unifiedqa_sst2_v100",
    "unifiedqa_sst5_v100",
    "unifiedqa_mr_v100",
    "unifiedqa_cr_v100",
    "unifiedqa_mpqa_v100",
    "unifiedqa_subj_v100",
    "unifiedqa_trec_v100",
    "unifiedqa_boolq_v100",
    "unifiedqa_cb_v100",
    "unifiedqa_copa_v100",
    "unifiedqa_rte_v100",
    "unifiedqa_wic_v100",
    "efl_sst2_v100",
    "efl_mr_v100",
    "efl_cr_v100",
    "efl_rte_v100",
    "efl_cb_v100",
    "efl_boolq_v100",
)


def register_all() -> None:
  """Registers every task in `TASK_NAMES` (idempotent)."""
  for task, data in UNIFIEDQA_TASKS.items():
    spec = UNIFIEDQA_SPECS[data]
    if len(spec["choices"]) != dataset_schema(data).num_classes:
      raise ValueError(f"{task}: {len(spec['choices'])} choices for"
                       f" {dataset_schema(data).num_classes} labels")
    register_unifiedqa_task(task, dataset_source(data),
                            metrics=metric_fns(data), **spec)
  for task, data in EFL_TASKS.items():
    sentence, descriptions = EFL_DESCRIPTIONS[data]
    register_efl_task(task, dataset_source(data), dataset_schema(data),
                      sentence=sentence, descriptions=descriptions,
                      metrics=metric_fns(data))
  registered = {*UNIFIEDQA_TASKS, *EFL_TASKS}
  if registered != set(TASK_NAMES):
    raise AssertionError(f"TASK_NAMES out of date: {sorted(registered)}")


register_all()
