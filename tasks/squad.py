"""SQuAD 2.0 span extraction (reading comprehension) as text-to-text.

The file is the official SQuAD 2.0 JSON (`{"version", "data": [article]}`,
article `{"title", "paragraphs": [{"context", "qas": [...]}]}`), here the
first 5 articles of the dev set under the data root:
`squad/squad_v2_dev_first5articles.json`, 5 articles, 173 paragraphs, 1407
questions: 705 answerable, 702 unanswerable (`is_impossible`).

Source examples (one per question, file order):

  {"idx": int64, "id": str, "title": str, "paragraph_idx": int64 (over the
   file), "context": str, "question": str, "answers": [str] (all gold
   texts, empty when unanswerable), "is_impossible": int64 0/1}

Splits: `validation` = the whole file; `train_from_val` / `test_from_val`
= a deterministic hash split by paragraph (`sources.hash_split` of
`paragraph_idx`, salt `squad/v2/from_val/v1`, half of the paragraphs each,
so no passage is in both), for users who want to train on part of it.

TFDS (`squad_source(source="tfds")`): TFDS `squad/v2.0:3.0.0` (splits
`train`, `validation`: the full official sets), mapped onto the same schema
by `map_tfds_example`: `answers/text` → `answers`, `is_impossible` bool →
int64, and, as TFDS has no row or paragraph index, `idx` / `paragraph_idx`
= a stable 63-bit fingerprint of `id` / `context` (same passage, same
`paragraph_idx`). `plausible_answers` and `answer_start` are dropped. The
registered task stays on the local file.

Task `squad_v2_span_v100` (first validation row):

  inputs:  `question: In what country is Normandy located? context: The
            Normans (Norman: Nourmands; French: Normands; ...`
  targets: `France` (the first gold answer), or `unanswerable`
           (`NO_ANSWER`) for an impossible question.

Metrics: SQuAD 2.0 exact match and token F1 with the official
normalisation (`tasks.metrics.squad`), max over all gold answers; the
postprocessor maps the prediction `unanswerable` to the empty answer, which
is right only for impossible questions (as the official script, a
prediction that normalises to "" such as "the" also counts as no answer).
Reported as `em`, `f1` and the same over the answerable (`has_ans_*`) and
unanswerable (`no_ans_*`) questions.

Constrained decoding (answers are spans of the passage, or `unanswerable`):
the passage follows the first `CONTEXT_MARKER` ("context:", ids [2625, 10])
in the encoder input; `span_constraint_fn()` passes `context_marker_ids()`
and `no_answer_ids()` to
`prompt_jax.decoding.constraints.span_constraint_after_marker` (give it to
`evaluate(constraint_fn=...)`). Every context tokenizes the same alone as
after the marker in this file.
"""

import dataclasses
import functools
import json
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from prompt_jax.decoding import constraints
from tasks import metrics as metrics_lib
from tasks import sources
from tasks import tfds_sources
from tasks import vocab

SQUAD_V2_TASK = "squad_v2_span_v100"
# Every task this module registers, spelled out for grep.
TASK_NAMES = (SQUAD_V2_TASK,)

SQUAD_V2_FILE = "squad/squad_v2_dev_first5articles.json"
NO_ANSWER = "unanswerable"
CONTEXT_MARKER = "context:"
FROM_VAL_SALT = "squad/v2/from_val/v1"
FROM_VAL_PARTS = (("test_from_val", 0.5), ("train_from_val", 0.5))
SPLITS = ("validation", "train_from_val", "test_from_val")
# Covers every row of the file: inputs at most 465 tokens with EOS, gold
# answers at most 28.
FEATURE_LENGTHS = {"inputs": 512, "targets": 32}
SHUFFLE_BUFFER_SIZE = 10_000

_SCALARS = {"idx": tf.int64, "id": tf.string, "title": tf.string,
            "paragraph_idx": tf.int64, "context": tf.string,
            "question": tf.string, "is_impossible": tf.int64}
# The examples of either source (`squad_source`).
ELEMENT_SPEC = {**{k: tf.TensorSpec([], d) for k, d in _SCALARS.items()},
                "answers": tf.TensorSpec([None], tf.string)}
TFDS_NAME = "squad/v2.0:3.0.0"
TFDS_SPLITS = ("train", "validation")


# ------------------------------- reading ----------------------------------


def _get(obj: Any, key: str, kind: type, where: str, path: str) -> Any:
  """obj[key], which must be a `kind`; else a one-line error."""
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: {where}: expected a JSON object, got"
                     f" {type(obj).__name__}")
  if key not in obj:
    raise ValueError(f"{path}: {where}: missing field {key!r}")
  value = obj[key]
  if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
    raise ValueError(f"{path}: {where}.{key}: must be {kind.__name__}, got"
                     f" {type(value).__name__} {value!r:.60}")
  return value


def _question_row(qa: Any, context: str, where: str,
                  path: str) -> dict[str, Any]:
  impossible = _get(qa, "is_impossible", bool, where, path)
  answers = []
  for j, answer in enumerate(_get(qa, "answers", list, where, path)):
    at = f"{where}.answers[{j}]"
    text = _get(answer, "text", str, at, path)
    _get(answer, "answer_start", int, at, path)
    if not text or text not in context:
      raise ValueError(f"{path}: {at}: answer {text!r:.60} is not a span of"
                       " the context")
    answers.append(text)
  if impossible == bool(answers):
    raise ValueError(f"{path}: {where}: is_impossible={impossible} but"
                     f" {len(answers)} answers")
  return {"id": _get(qa, "id", str, where, path),
          "question": _get(qa, "question", str, where, path),
          "answers": tuple(answers), "is_impossible": int(impossible)}


def parse_squad_json(data: bytes, path: str) -> list[dict[str, Any]]:
  """Parses official SQuAD 2.0 JSON into one row per question, file order.

  Raises:
    ValueError: one line `path: <where>: ...`, e.g.
      `f.json: data[0].paragraphs[3].qas[2]: missing field 'question'`, for
      invalid JSON or UTF-8, a missing or mistyped field, an answer that is
      not in its context, or `is_impossible` disagreeing with the answers.
  """
  try:
    doc = json.loads(data.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: malformed JSON: {e}") from None
  rows, paragraph_idx = [], 0
  for a, article in enumerate(_get(doc, "data", list, "top level", path)):
    title = _get(article, "title", str, f"data[{a}]", path)
    for p, para in enumerate(
        _get(article, "paragraphs", list, f"data[{a}]", path)):
      where = f"data[{a}].paragraphs[{p}]"
      context = _get(para, "context", str, where, path)
      for q, qa in enumerate(_get(para, "qas", list, where, path)):
        row = _question_row(qa, context, f"{where}.qas[{q}]", path)
        rows.append({"idx": len(rows), "title": title, "context": context,
                     "paragraph_idx": paragraph_idx, **row})
      paragraph_idx += 1
  return rows


@dataclasses.dataclass(frozen=True)
class SquadJsonReader:
  """A `sources.Reader`: SQuAD 2.0 JSON → columns (answers: tuples)."""

  def __call__(self, data: bytes, path: str) -> sources.Columns:
    rows = parse_squad_json(data, path)
    columns = {}
    for name in (*_SCALARS, "answers"):
      column = np.empty(len(rows), dtype=object)
      column[:] = [row[name] for row in rows]
      columns[name] = column
    for name, dtype in _SCALARS.items():
      if dtype == tf.int64:
        columns[name] = columns[name].astype(np.int64)
    return columns


class SquadSource(seqio.DataSource):
  """A seqio `DataSource` over a SQuAD 2.0 JSON file (see module docs).

  The file is found and parsed when a split is first used (never at import
  or registration) and the parse is cached until the file changes.
  """

  def __init__(self, file: str = SQUAD_V2_FILE, *,
               root: str | os.PathLike[str] | None = None):
    """Creates the source over `root/file` (root None: `data_root()`)."""
    super().__init__(splits=SPLITS)
    self._file = file
    self._root = root

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def path(self, split: str = "validation") -> pathlib.Path:
    """The JSON file (one-line FileNotFoundError if missing)."""
    if split not in SPLITS:
      raise ValueError(f"Unknown split {split!r}; this source has"
                       f" {sorted(SPLITS)}.")
    return sources.resolve_data_file(self._file, split, self._root)

  def columns(self, split: str) -> sources.Columns:
    """The (read-only) columns of `split`."""
    columns = sources.read_file(self.path(split), SquadJsonReader())
    if split == "validation":
      return columns
    rows = sources.hash_split(columns["paragraph_idx"].tolist(),
                              FROM_VAL_SALT, FROM_VAL_PARTS)[split]
    return {k: v[rows] for k, v in columns.items()}

  def counts(self, split: str) -> dict[str, int]:
    """Questions, answerable, unanswerable, paragraphs, articles."""
    c = self.columns(split)
    impossible = int(c["is_impossible"].sum())
    return {"questions": len(c["idx"]),
            "answerable": len(c["idx"]) - impossible,
            "unanswerable": impossible,
            "paragraphs": len(set(c["paragraph_idx"].tolist())),
            "articles": len(set(c["title"].tolist()))}

  def num_input_examples(self, split: str) -> int:
    return len(self.columns(split)["idx"])

  def get_dataset(
      self,
      split: str = "validation",
      shuffle: bool = True,
      seed: int | None = None,
      shard_info: seqio.ShardInfo | None = None,
      *,
      sequence_length: Mapping[str, int] | None = None,  # Unused.
      use_cached: bool = False,  # Unused.
      num_epochs: int | None = 1,  # Unused.
  ) -> tf.data.Dataset:
    """The questions of `split`; `answers` is a [n] string vector."""
    del sequence_length, use_cached, num_epochs
    c = self.columns(split)
    answers = c["answers"].tolist()
    features = {k: tf.constant(c[k].tolist(), dtype=d, shape=[len(c[k])])
                for k, d in _SCALARS.items()}
    features["answers"] = tf.RaggedTensor.from_row_lengths(
        tf.constant([a for row in answers for a in row], tf.string,
                    shape=[sum(map(len, answers))]),
        tf.constant([len(row) for row in answers], tf.int64))
    # The map makes `answers` a dense [n] vector, as from TFDS.
    ds = tf.data.Dataset.from_tensor_slices(features).map(dict)
    return sources.shard_and_shuffle(ds, len(answers), shuffle, seed,
                                     shard_info)


def map_tfds_example(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """Maps a TFDS `squad/v2.0` example onto the local schema (module docs).

  Example:
    {"id": "56dd", "title": "Normans", "context": "The Normans ...",
     "question": "In what country ...?", "is_impossible": False,
     "answers": {"text": ["France"], "answer_start": [159]},
     "plausible_answers": {...}}
    → {"idx": fp("56dd"), "id": "56dd", "title": "Normans",
       "paragraph_idx": fp("The Normans ..."), "context": "The Normans ...",
       "question": "In what country ...?", "is_impossible": 0,
       "answers": ["France"]}   (fp: a 63-bit string fingerprint)
  """
  def fingerprint(text: tf.Tensor) -> tf.Tensor:
    return tf.strings.to_hash_bucket_fast(text, 2**63 - 1)

  return {"idx": fingerprint(ex["id"]), "id": ex["id"],
          "title": ex["title"], "paragraph_idx": fingerprint(ex["context"]),
          "context": ex["context"], "question": ex["question"],
          "is_impossible": tf.cast(ex["is_impossible"], tf.int64),
          "answers": tf.reshape(ex["answers"]["text"], [-1])}


def squad_source(source: str = "local", *,
                 root: str | os.PathLike[str] | None = None,
                 tfds_data_dir: str | None = None) -> seqio.DataSource:
  """The SQuAD 2.0 source: "local" (`SquadSource`) or "tfds" (module docs).

  Both yield `ELEMENT_SPEC` examples. Nothing is read or downloaded until
  `get_dataset` (TFDS: may download and prepare, like `tfds.load`).

  Raises:
    ValueError: (one line) a source other than "local" or "tfds".
  """
  sources.check_source_name(source)
  if source == "local":
    return SquadSource(root=root)
  inner = seqio.TfdsDataSource(TFDS_NAME, tfds_data_dir=tfds_data_dir,
                               splits=TFDS_SPLITS)
  return tfds_sources.MappedSource(inner, map_tfds_example)


# ------------------------ formatting and metrics ---------------------------


def squad_to_span_text(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Formats SQuAD rows as text-to-text; keeps every source field.

  Example:
    {"question": "Who?", "context": "Rollo led.", "answers": ["Rollo"],
     "is_impossible": 0, ...} →
    {..., "inputs": "question: Who? context: Rollo led.",
     "targets": "Rollo"}
    (with "answers": [] and "is_impossible": 1, "targets": "unanswerable")
  """

  def fn(ex):
    first = ex["answers"][:1]
    target = tf.cond(tf.size(first) > 0, lambda: first[0],
                     lambda: tf.constant(NO_ANSWER))
    inputs = tf.strings.join(["question: ", ex["question"],
                              f" {CONTEXT_MARKER} ", ex["context"]])
    return {**ex, "inputs": inputs, "targets": target}

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def squad_postprocessor(output: str, example: Mapping[str, Any] | None = None,
                        is_target: bool = False) -> str | list[str]:
  """Prediction → answer text ("" for `NO_ANSWER`); target → all golds.

  Targets need the example: the result is its list of gold answers (empty
  for an impossible question), as `tasks.metrics.squad` expects.

  Raises:
    ValueError: a target without its example's `answers`.
  """
  if is_target:
    if example is None or "answers" not in example:
      raise ValueError("squad_postprocessor: a target needs its example's"
                       " 'answers'")
    return [_text(a) for a in np.asarray(example["answers"]).tolist()]
  text = _text(output).strip()
  return "" if text == NO_ANSWER else text


def squad_v2_metrics(targets: Sequence[Sequence[str]],
                     predictions: Sequence[str]) -> dict[str, float]:
  """`em`, `f1` (percent) overall, over answerable and unanswerable rows.

  Example: targets [["France"], []], predictions ["france", "Rollo"] →
    em 50, f1 50, has_ans_em 100, has_ans_f1 100, no_ans_em 0, no_ans_f1 0.
  A subset with no rows is left out of the result.
  """
  result = dict(metrics_lib.squad(targets, predictions))
  for name, want_answer in (("has_ans", True), ("no_ans", False)):
    rows = [i for i, t in enumerate(targets) if want_answer == any(
        metrics_lib.normalize_squad_answer(a) for a in t)]
    if rows:
      sub = metrics_lib.squad([targets[i] for i in rows],
                              [predictions[i] for i in rows])
      result.update({f"{name}_{k}": v for k, v in sub.items()})
  return result


def context_marker_ids() -> list[int]:
  """Ids of `CONTEXT_MARKER` as tokenized inside the inputs ([2625, 10])."""
  return list(vocab.t5_vocabulary().encode(CONTEXT_MARKER))


def no_answer_ids() -> list[int]:
  """Ids of the `NO_ANSWER` target, without EOS ([73, 3247, 3321, 179])."""
  return list(vocab.t5_vocabulary().encode(NO_ANSWER))


def span_constraint_fn() -> Callable[[np.ndarray],
                                     constraints.SpanConstraint]:
  """The `Predictor` constraint of this task: a passage span (after
  `CONTEXT_MARKER`) or `NO_ANSWER`, then EOS.

  Returns:
    encoder input ids [B, Ti] -> `SpanConstraint`: `evaluate`'s
    `constraint_fn` (`runs/prompt_eval.gin`:
    `CONSTRAINT_FN = @squad.span_constraint_fn()`).
  """
  return functools.partial(
      constraints.span_constraint_after_marker,
      marker_ids=context_marker_ids(),
      eos_id=vocab.t5_vocabulary().eos_id,
      extra_sequences=[no_answer_ids()])


# ------------------------------ registration -------------------------------


def register_squad_task(name: str, source: seqio.DataSource) -> None:
  """(Re-)registers a SQuAD span task (idempotent: replaces `name`)."""
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name,
      source=source,
      output_features=vocab.t5_output_features(),
      preprocessors=[
          squad_to_span_text,
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim,
      ],
      postprocess_fn=squad_postprocessor,
      metric_fns=[squad_v2_metrics],
      shuffle_buffer_size=SHUFFLE_BUFFER_SIZE,
  )


register_squad_task(SQUAD_V2_TASK, squad_source("local"))
