"""PET pattern-verbalizer pairs (PVPs) as rank-classification tasks.

A PVP is a pattern, a template over the example's fields with one `<mask>`,
and a verbalizer, label name → one or more words (templates too, so COPA's
words are its choices). T5 realisation, as its span-corruption
pre-training: the mask becomes the sentinel `<extra_id_0>` in the inputs and
the target is the sentinel followed by the word, closed by `<extra_id_1>`
when text follows the mask (T5 marks the end of a span that way):

  pattern  `{sentence} It was <mask>.`, words {negative: terrible,
           positive: great}; SST-2 validation row 0 →
  inputs   `one long string of cliches . It was <extra_id_0>.`
  targets  `<extra_id_0> terrible <extra_id_1>`  (option of label 0)
           `<extra_id_0> great <extra_id_1>`     (option of label 1)

Evaluation is rank classification: every option's target is scored
(seqio `score_fn`: summed log-likelihood), the options of one example are
grouped back by `idx`, a label with several words takes the max over its
words, and the best label wins (`prompt_jax.scoring.rank`; COPA
length-normalises, its choices differ in length). Training splits yield
only the gold option(s), so the same task trains and evaluates.

Tasks: `pet_<data>_p<i>_v100` (PVP i alone) and `pet_<data>_ensemble_v100`
(all PVPs of a dataset in one task: each pattern's label distribution is a
softmax over its label scores; the distributions are averaged, then the
argmax taken). Long contexts (BoolQ passages, RTE/CB premises) come after
the mask, so truncation never cuts it off; where it still would (the mask
after a long field and too short an inputs length), reading the task fails
naming the example (`preprocessors.check_mask_kept`).
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence

import seqio

from prompt_jax.scoring import rank as rank_classification
from tasks import formats
from tasks import preprocessors
from tasks import sources

MASK = "<mask>"
SPAN_START, SPAN_END = "<extra_id_0>", "<extra_id_1>"


@dataclasses.dataclass(frozen=True)
class PVP:
  """A pattern with one `<mask>` and its verbalizer (label name → words)."""
  pattern: str
  verbalizer: Mapping[str, Sequence[str]] | None


@dataclasses.dataclass(frozen=True)
class PetSpec:
  """The PVPs of a dataset and how its options are ranked.

  Attributes:
    pvps: the pattern-verbalizer pairs; task `p<i>` uses `pvps[i]`.
    length_normalize: rank by mean (not summed) token log-likelihood.
    word_reduce: "max" or "logsumexp" over a label's words.
    strip_fields: fields whose final punctuation is removed first.
  """
  pvps: tuple[PVP, ...]
  length_normalize: bool = False
  word_reduce: str = "max"
  strip_fields: tuple[str, ...] = ()


def realise(pvp: PVP, label_names: Sequence[str], pattern_id: int = 0,
            task: str = "?") -> list[preprocessors.OptionRow]:
  """The T5 rows of one PVP: one per (label, word), labels in id order.

  Raises:
    ValueError: (one line, naming the task) a pattern without exactly one
      mask, options (labels) but no verbalizer, a label without words, an
      unknown label, or a word shared by two labels.
  """
  where = f"PET task {task} pattern {pattern_id}"
  if pvp.pattern.count(MASK) != 1:
    raise ValueError(f"{where}: pattern {pvp.pattern!r} must contain"
                     f" exactly one {MASK}")
  if not pvp.verbalizer:
    raise ValueError(f"{where}: the task has options (labels"
                     f" {list(label_names)}) but no verbalizer")
  unknown = sorted(set(pvp.verbalizer) - set(label_names))
  missing = [n for n in label_names if not pvp.verbalizer.get(n)]
  if unknown or missing:
    raise ValueError(f"{where}: verbalizer has no words for {missing} and"
                     f" unknown labels {unknown}; labels are"
                     f" {list(label_names)}")
  words = [w for n in label_names for w in pvp.verbalizer[n]]
  if len(set(words)) != len(words):
    raise ValueError(f"{where}: a word verbalizes two labels: {words}")
  head, tail = pvp.pattern.split(MASK)
  inputs = head + SPAN_START + tail
  close = f" {SPAN_END}" if tail.strip() else ""
  return [preprocessors.OptionRow(inputs, f"{SPAN_START} {word}{close}",
                                  label, pattern_id)
          for label, name in enumerate(label_names)
          for word in pvp.verbalizer[name]]


def register_pet_task(name: str, source: seqio.DataSource,
                      schema: sources.Schema, spec: PetSpec, *,
                      pattern_ids: Sequence[int],
                      metrics: Sequence[Callable],
                      train_splits: Sequence[str] = formats.TRAIN_SPLITS
                      ) -> None:
  """(Re-)registers a PET task over the PVPs `pattern_ids` of `spec`.

  One id gives a single-pattern task; several give an ensemble task whose
  metric averages the patterns' label distributions.
  """
  rows = [row for i in pattern_ids
          for row in realise(spec.pvps[i], schema.label_names, i, name)]
  prep = []
  if spec.strip_fields:
    prep.append(functools.partial(preprocessors.strip_final_punctuation,
                                  fields=spec.strip_fields))
  prep.append(functools.partial(preprocessors.rank_classification_rows,
                                rows=rows))
  metric = functools.partial(
      rank_classification.rank_metric, metric_fns=tuple(metrics),
      length_normalize=spec.length_normalize, word_reduce=spec.word_reduce,
      num_labels=schema.num_classes)
  formats.add_task(name, formats.SplitFlagSource(source, train_splits), prep,
                   rank_classification.option_postprocessor, [metric],
                   token_prep=[preprocessors.check_mask_kept])


# --------------------------------- PVPs ------------------------------------

_GREAT = {"negative": ("terrible",), "positive": ("great",)}
_SENTIMENT = PetSpec((
    PVP("{sentence} It was <mask>.", _GREAT),
    PVP("Just <mask>! {sentence}", _GREAT),
    PVP("{sentence} All in all, it was <mask>.", _GREAT),
    PVP("Review: {sentence} Sentiment: <mask>",
        {"negative": ("negative",), "positive": ("positive",)}),
))
_FIVE = {"very negative": ("terrible",), "negative": ("bad",),
         "neutral": ("okay",), "positive": ("good",),
         "very positive": ("great",)}
_TREC = {"DESC": ("description", "definition"), "ENTY": ("entity", "thing"),
         "ABBR": ("abbreviation",), "HUM": ("person", "human"),
         "LOC": ("location", "place"), "NUM": ("number",)}
_BOOL_YES = {"False": ("no",), "True": ("yes",)}
_RTE_YES = {"entailment": ("yes",), "not_entailment": ("no",)}
_CB_YES = {"entailment": ("yes",), "contradiction": ("no",),
           "neutral": ("maybe",)}
_COPA = {"choice1": ("{choice1}",), "choice2": ("{choice2}",)}

PET_SPECS: dict[str, PetSpec] = {
    "sst2": _SENTIMENT,
    "mr": _SENTIMENT,
    "cr": _SENTIMENT,
    "sst5": PetSpec((
        PVP("{sentence} It was <mask>.", _FIVE),
        PVP("Just <mask>! {sentence}", _FIVE),
        PVP("{sentence} All in all, it was <mask>.", _FIVE),
    )),
    "mpqa": PetSpec((
        PVP("{sentence} It was <mask>.",
            {"negative": ("bad",), "positive": ("good",)}),
        PVP("{sentence} This is <mask>.",
            {"negative": ("negative",), "positive": ("positive",)}),
    )),
    "subj": PetSpec((
        PVP("{sentence} This is <mask>.",
            {"subjective": ("subjective",), "objective": ("objective",)}),
        PVP("{sentence} It is a <mask> statement.",
            {"subjective": ("personal",), "objective": ("factual",)}),
    )),
    "trec": PetSpec((
        PVP("<mask>: {sentence}", _TREC),
        PVP("{sentence} Answer type: <mask>.", _TREC),
    )),
    "boolq": PetSpec((
        PVP("Question: {question}? Answer: <mask>. Passage: {passage}",
            _BOOL_YES),
        PVP("Based on the following passage, {question}? <mask>. {passage}",
            _BOOL_YES),
        PVP("{question}? True or false? <mask>. {passage}",
            {"False": ("false",), "True": ("true",)}),
    )),
    "rte": PetSpec((
        PVP('"{hypothesis}"? <mask>, "{premise}"', _RTE_YES),
        PVP("{hypothesis}? <mask>, {premise}", _RTE_YES),
        PVP("Question: {hypothesis}? True or false? <mask>. Text:"
            " {premise}",
            {"entailment": ("true",), "not_entailment": ("false",)}),
    ), strip_fields=("hypothesis",)),
    "cb": PetSpec((
        PVP('"{hypothesis}"? <mask>, "{premise}"', _CB_YES),
        PVP("{hypothesis}? <mask>, {premise}", _CB_YES),
        PVP("Question: {hypothesis}? True, false or neither? <mask>. Text:"
            " {premise}", {"entailment": ("true",),
                           "contradiction": ("false",),
                           "neutral": ("neither",)}),
    ), strip_fields=("hypothesis",)),
    "copa": PetSpec((
        PVP("{premise} What was the {question}? <mask>", _COPA),
        PVP("Premise: {premise} Question: what was the {question}? Answer:"
            " <mask>", _COPA),
    ), length_normalize=True),
    "wic": PetSpec((
        PVP('"{sentence1}" / "{sentence2}". Similar sense of "{word}"?'
            " <mask>.", _BOOL_YES),
        PVP("{sentence1} {sentence2} Does {word} have the same meaning in"
            " both sentences? <mask>", _BOOL_YES),
    )),
}

# Every task this module registers, spelled out for grep:
# `pet_<data>_p<i>_v100` uses PVP i, `pet_<data>_ensemble_v100` all PVPs.
TASK_NAMES = (
    "pet_sst2_p0_v100", "pet_sst2_p1_v100", "pet_sst2_p2_v100",
    "pet_sst2_p3_v100", "pet_sst2_ensemble_v100",
    "pet_mr_p0_v100", "pet_mr_p1_v100", "pet_mr_p2_v100", "pet_mr_p3_v100",
    "pet_mr_ensemble_v100",
    "pet_cr_p0_v100", "pet_cr_p1_v100", "pet_cr_p2_v100", "pet_cr_p3_v100",
    "pet_cr_ensemble_v100",
    "pet_sst5_p0_v100", "pet_sst5_p1_v100", "pet_sst5_p2_v100",
    "pet_sst5_ensemble_v100",
    "pet_mpqa_p0_v100", "pet_mpqa_p1_v100", "pet_mpqa_ensemble_v100",
    "pet_subj_p0_v100", "pet_subj_p1_v100", "pet_subj_ensemble_v100",
    "pet_trec_p0_v100", "pet_trec_p1_v100", "pet_trec_ensemble_v100",
    "pet_boolq_p0_v100", "pet_boolq_p1_v100", "pet_boolq_p2_v100",
    "pet_boolq_ensemble_v100",
    "pet_rte_p0_v100", "pet_rte_p1_v100", "pet_rte_p2_v100",
    "pet_rte_ensemble_v100",
    "pet_cb_p0_v100", "pet_cb_p1_v100", "pet_cb_p2_v100",
    "pet_cb_ensemble_v100",
    "pet_copa_p0_v100", "pet_copa_p1_v100", "pet_copa_ensemble_v100",
    "pet_wic_p0_v100", "pet_wic_p1_v100", "pet_wic_ensemble_v100",
)


def task_variants() -> dict[str, tuple[str, tuple[int, ...]]]:
  """Task name → (dataset, PVP ids), for every task in `TASK_NAMES`."""
  out = {}
  for data, spec in PET_SPECS.items():
    ids = tuple(range(len(spec.pvps)))
    for i in ids:
      out[f"pet_{data}_p{i}_v100"] = (data, (i,))
    out[f"pet_{data}_ensemble_v100"] = (data, ids)
  return out


def register_all() -> None:
  """Registers every task in `TASK_NAMES` (idempotent)."""
  variants = task_variants()
  if set(variants) != set(TASK_NAMES):
    raise AssertionError(f"TASK_NAMES out of date: {sorted(variants)}")
  for name in TASK_NAMES:
    data, ids = variants[name]
    register_pet_task(name, formats.dataset_source(data),
                      formats.dataset_schema(data), PET_SPECS[data],
                      pattern_ids=ids, metrics=formats.metric_fns(data))


register_all()
