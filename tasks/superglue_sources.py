"""Sources for the SuperGLUE jsonl files (FewGLUE train + official dev).

Files live under the data root in `superglue/<Task>/`: `train.jsonl` (the 32
FewGLUE few-shot examples), `dev32.jsonl` (32 more, from unused SuperGLUE
train data) and `val.jsonl` (the full official validation set). Every
source has the splits

  train           train.jsonl (32 rows; MultiRC: 32 passages, one question
                  each)
  dev32           dev32.jsonl (32 rows)
  validation      val.jsonl, the official SuperGLUE dev set
  train_from_val  val.jsonl rows whose key falls in the larger half of a
  test_from_val   deterministic hash split (below), for users who need more
                  than 32 training rows (there is no full train set here,
                  e.g. for BoolQ); disjoint, together = validation

The from_val split orders the distinct keys (`idx`; MultiRC
`paragraph_idx`, so no passage is in both halves) by sha256 of
`superglue/<name>/from_val/v1:<key>` (`sources.hash_split`): the first
floor(n/2) keys are `test_from_val`, the rest `train_from_val`.

Schemas (`label` is a class id; `SCHEMAS[name].label_names` are the
TFDS `super_glue` ClassLabel names, so local and TFDS ids agree):

  name     fields (int64 / string)                     label_names
  boolq    idx, question, passage, label               False True
  cb       idx, premise, hypothesis, label             entailment
                                                       contradiction neutral
  copa     idx, premise, choice1, choice2, question    choice1 choice2
           ("cause"/"effect"), label
  rte      idx, premise, hypothesis, label             entailment
                                                       not_entailment
  wic      idx, word, sentence1, sentence2, start1,    False True
           end1, start2, end2 (char offsets), label
  wsc      idx, text, span1_index, span1_text,         False True
           span2_index, span2_text, label
  multirc  idx (answer idx), paragraph_idx,            False True
           question_idx, paragraph, question, answer,
           label

MultiRC is flattened to one row per answer (validation: 4,848 answers, 953
questions, 83 passages); `question_idx` is unique per file, so it is the
group key for per-question metrics (`tasks.metrics.multirc_metrics`).
Validation sizes: BoolQ 3270, CB 56, COPA 100, RTE 277, WiC 638, WSC 104.

Example:
  rte_source().examples("validation")[0]
  → {"idx": 0, "premise": "Dana Reeve, the widow of ...",
     "hypothesis": "Christopher Reeve had an accident.", "label": 1}
  rte_source(source="tfds")  # super_glue/rte from TFDS, same schema.
"""

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import seqio
import tensorflow as tf

from tasks import sources
from tasks import tfds_sources

_I, _S = tf.int64, tf.string
_BOOL = ("False", "True")
_NLI = {"idx": _I, "premise": _S, "hypothesis": _S, "label": _I}

SCHEMAS: dict[str, sources.Schema] = {
    "boolq": sources.Schema(
        "boolq", {"idx": _I, "question": _S, "passage": _S, "label": _I},
        _BOOL, ("passage", "question")),
    "cb": sources.Schema(
        "cb", _NLI, ("entailment", "contradiction", "neutral"),
        ("premise", "hypothesis")),
    "copa": sources.Schema(
        "copa", {"idx": _I, "premise": _S, "choice1": _S, "choice2": _S,
                 "question": _S, "label": _I},
        ("choice1", "choice2"), ("premise", "choice1", "choice2")),
    "rte": sources.Schema(
        "rte", _NLI, ("entailment", "not_entailment"),
        ("premise", "hypothesis")),
    "wic": sources.Schema(
        "wic", {"idx": _I, "word": _S, "sentence1": _S, "sentence2": _S,
                "start1": _I, "end1": _I, "start2": _I, "end2": _I,
                "label": _I},
        _BOOL, ("word", "sentence1", "sentence2")),
    "wsc": sources.Schema(
        "wsc", {"idx": _I, "text": _S, "span1_index": _I, "span1_text": _S,
                "span2_index": _I, "span2_text": _S, "label": _I},
        _BOOL, ("text", "span1_text", "span2_text")),
    "multirc": sources.Schema(
        "multirc", {"idx": _I, "paragraph_idx": _I, "question_idx": _I,
                    "paragraph": _S, "question": _S, "answer": _S,
                    "label": _I},
        _BOOL, ("paragraph", "question", "answer")),
}
NAMES = tuple(SCHEMAS)
_DIRS = {"boolq": "BoolQ", "cb": "CB", "copa": "COPA", "rte": "RTE",
         "wic": "WiC", "wsc": "WSC", "multirc": "MultiRC"}
_FILES = {"train": "train.jsonl", "dev32": "dev32.jsonl",
          "validation": "val.jsonl"}
FROM_VAL_PARTS = (("test_from_val", 0.5), ("train_from_val", 0.5))
SPLITS = ("train", "dev32", "validation", "train_from_val", "test_from_val")

# JSON field types per flat task; "label" is mapped by `sources.label_id`.
_ROW_TYPES: dict[str, sources.FieldTypes] = {
    "boolq": {"idx": int, "question": str, "passage": str, "label": bool},
    "cb": {"idx": int, "premise": str, "hypothesis": str, "label": str},
    "copa": {"idx": int, "premise": str, "choice1": str, "choice2": str,
             "question": str, "label": int},
    "rte": {"idx": int, "premise": str, "hypothesis": str, "label": str},
    "wic": {"idx": int, "word": str, "sentence1": str, "sentence2": str,
            "start1": int, "end1": int, "start2": int, "end2": int,
            "label": bool},
    "wsc": {"idx": int, "text": str, "target": dict, "label": bool},
}
_WSC_TARGET = {"span1_index": int, "span1_text": str, "span2_index": int,
               "span2_text": str}
_MULTIRC_TYPES = {"idx": int, "passage": dict}
_PASSAGE = {"text": str, "questions": list}
_QUESTION = {"idx": int, "question": str, "answers": list}
_ANSWER = {"idx": int, "text": str, "label": int}

Row = dict[str, Any]


def _flat_rows(task: str, row: Row, where: str) -> list[Row]:
  sources.check_fields(row, _ROW_TYPES[task], where)
  out = {k: row[k] for k in SCHEMAS[task].features if k in row}
  if task == "wsc":
    sources.check_fields(row["target"], _WSC_TARGET, f"{where}: target")
    out.update({k: row["target"][k] for k in _WSC_TARGET})
  out["label"] = sources.label_id(row["label"], SCHEMAS[task].label_names,
                                  where)
  return [out]


def _multirc_rows(row: Row, where: str) -> list[Row]:
  """Flattens one passage into one row per answer."""
  sources.check_fields(row, _MULTIRC_TYPES, where)
  passage = row["passage"]
  sources.check_fields(passage, _PASSAGE, f"{where}: passage")
  out = []
  for qi, question in enumerate(passage["questions"]):
    q_where = f"{where}: passage.questions[{qi}]"
    sources.check_fields(_as_dict(question, q_where), _QUESTION, q_where)
    for ai, answer in enumerate(question["answers"]):
      a_where = f"{q_where}.answers[{ai}]"
      sources.check_fields(_as_dict(answer, a_where), _ANSWER, a_where)
      out.append({
          "idx": answer["idx"], "paragraph_idx": row["idx"],
          "question_idx": question["idx"], "paragraph": passage["text"],
          "question": question["question"], "answer": answer["text"],
          "label": sources.label_id(answer["label"], _BOOL, a_where),
      })
  return out


def _as_dict(value: Any, where: str) -> Mapping[str, Any]:
  if not isinstance(value, dict):
    raise ValueError(f"{where}: expected an object, got {value!r:.60}")
  return value


@dataclasses.dataclass(frozen=True)
class SuperGlueReader:
  """A `sources.Reader` for one SuperGLUE task's jsonl file."""

  task: str

  def __call__(self, data: bytes, path: str) -> sources.Columns:
    rows = sources.read_jsonl(data, path, {})
    flat: list[Row] = []
    for lineno, row in enumerate(rows, start=1):
      where = f"{path}:{lineno}"
      if self.task == "multirc":
        flat.extend(_multirc_rows(row, where))
      else:
        flat.extend(_flat_rows(self.task, row, where))
    return sources.columns_from_rows(flat, SCHEMAS[self.task])


def _split_specs(name: str) -> dict[str, sources.SplitSpec]:
  specs = {split: sources.SplitSpec(f"superglue/{_DIRS[name]}/{file}")
           for split, file in _FILES.items()}
  key = "paragraph_idx" if name == "multirc" else "idx"
  salt = f"superglue/{name}/from_val/v1"
  for part, _ in FROM_VAL_PARTS:
    specs[part] = sources.SplitSpec(
        specs["validation"].file,
        sources.hash_split_subset(key, salt, FROM_VAL_PARTS, part))
  return {split: specs[split] for split in SPLITS}


def get_superglue_source(
    name: str, *, source: str = "local",
    root: str | os.PathLike[str] | None = None,
    tfds_data_dir: str | None = None,
) -> seqio.DataSource:
  """Returns the source of SuperGLUE task `name` (one of `NAMES`).

  Args:
    name: "boolq", "cb", "copa", "rte", "wic", "wsc" or "multirc".
    source: "local" (the jsonl files; splits `SPLITS`) or "tfds" (TFDS
      `super_glue/<name>`; splits train / validation / test, see
      `tasks.tfds_sources`).
    root: the data root for "local"; None means `data_root()` at read time.
    tfds_data_dir: the TFDS data directory for "tfds"; None is TFDS's.

  Raises:
    ValueError: (one line) an unknown name or source.
  """
  sources.check_source_name(source)
  if name not in SCHEMAS:
    raise ValueError(f"Unknown SuperGLUE task {name!r}; one of {NAMES}.")
  if source == "tfds":
    return tfds_sources.tfds_source(SCHEMAS[name], data_dir=tfds_data_dir)
  return sources.ColumnSource(SCHEMAS[name], _split_specs(name),
                              SuperGlueReader(name), root=root)


def _factory(name: str) -> Callable[..., seqio.DataSource]:
  def factory(root: str | os.PathLike[str] | None = None, *,
              source: str = "local",
              tfds_data_dir: str | None = None) -> seqio.DataSource:
    return get_superglue_source(name, source=source, root=root,
                                tfds_data_dir=tfds_data_dir)

  factory.__name__ = f"{name}_source"
  factory.__doc__ = (f"The {_DIRS[name]} source; see `get_superglue_source`"
                     " for the arguments.")
  return factory


boolq_source = _factory("boolq")
cb_source = _factory("cb")
copa_source = _factory("copa")
rte_source = _factory("rte")
wic_source = _factory("wic")
wsc_source = _factory("wsc")
multirc_source = _factory("multirc")
