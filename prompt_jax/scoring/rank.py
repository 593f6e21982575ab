"""Rank classification on the host: option scores → label predictions.

A rank-classification task (PET patterns, EFL pairs; `tasks/pet.py`,
`tasks/formats.py`) turns every example into rows, one per (pattern,
option), each with a target whose log-likelihood the model scores (seqio's
`score_fn`: the summed log-probability of the target tokens, EOS included).
This module groups the rows of one example back together and decides:

1. a row's score is its summed log-likelihood, or, with
   `length_normalize=True`, that sum divided by the number of target tokens
   (EOS included), so long options are not penalised for their length;
2. a label with several verbalizer words takes the MAX of its words' scores
   (`word_reduce="max"`, the default: the best word wins) or their
   LOGSUMEXP (`"logsumexp"`: the label's total probability mass);
3. each pattern's label scores become a distribution (softmax over
   labels); the distributions of all patterns are AVERAGED (a PVP ensemble;
   with one pattern this is just the argmax) and the argmax is the
   prediction.

Worked example (one example, one pattern, labels 0/1 with words
{0: ["bad"], 1: ["great", "good"]}):

  rows:   (label 0, "bad": -2.0), (label 1, "great": -3.0),
          (label 1, "good": -1.5)
  max:    label scores [-2.0, -1.5] → prediction 1

seqio wiring: the task's `postprocess_fn` is `option_postprocessor`, which
turns each target row into a `RankTarget` (read from the example's
features); its metric is `functools.partial(rank_metric, metric_fns=...)`,
a `(targets, scores)` metric that seqio's Evaluator feeds with our
`score_fn`. This module uses numpy only (no model code), so `tasks/` may
import it.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

WORD_REDUCTIONS = ("max", "logsumexp")


class RankTarget(NamedTuple):
  """What the metric needs to know about one scored row."""
  idx: int           # The example the row belongs to (group key).
  pattern: int       # The pattern (PVP) of the row.
  option_label: int  # The label the row's target stands for.
  label: int         # The example's gold label.
  num_tokens: int    # Scored target tokens (EOS included).


def option_postprocessor(text: str, example: Mapping[str, Any] | None = None,
                         is_target: bool = False) -> Any:
  """seqio postprocess_fn of rank-classification tasks.

  Targets become `RankTarget`s built from the example's `idx`, `pattern`,
  `option_label`, `label` and tokenized `targets`; model outputs (decoded
  text, unused by rank metrics) pass through unchanged.

  Raises:
    ValueError: for a target without its example.
  """
  if not is_target:
    return text
  if example is None:
    raise ValueError("option_postprocessor needs the example of a target")
  targets = np.asarray(example["targets"])
  return RankTarget(int(example["idx"]), int(example["pattern"]),
                    int(example["option_label"]), int(example["label"]),
                    int(np.count_nonzero(targets)))


def _reduce(values: list[float], word_reduce: str) -> float:
  if word_reduce == "max":
    return max(values)
  top = max(values)
  return top + float(np.log(np.sum(np.exp(np.asarray(values) - top))))


def label_scores(targets: Sequence[RankTarget], scores: Sequence[float], *,
                 length_normalize: bool = False, word_reduce: str = "max",
                 num_labels: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Groups row scores into per-example, per-pattern label scores.

  Args:
    targets: one `RankTarget` per scored row (any order).
    scores: the rows' summed target log-likelihoods, aligned with targets.
    length_normalize: divide each row's score by its `num_tokens`.
    word_reduce: "max" or "logsumexp" over a label's words.
    num_labels: L; default: the number of distinct option labels.

  Returns:
    (idx [N], gold [N], scores [N, P, L]) with examples sorted by idx and
    patterns sorted by pattern id.

  Raises:
    ValueError: (one line) on misaligned inputs, an unknown reduction, or an
      example/pattern that lacks a label (e.g. a training split, which keeps
      only gold options, or a truncated eval set).
  """
  if len(targets) != len(scores):
    raise ValueError(f"{len(targets)} targets but {len(scores)} scores")
  if not targets:
    raise ValueError("rank classification of zero rows is undefined")
  if word_reduce not in WORD_REDUCTIONS:
    raise ValueError(f"word_reduce={word_reduce!r}; use one of"
                     f" {WORD_REDUCTIONS}")
  words: dict[tuple[int, int, int], list[float]] = {}
  gold: dict[int, int] = {}
  for t, s in zip(targets, scores):
    s = float(s) / max(t.num_tokens, 1) if length_normalize else float(s)
    words.setdefault((t.idx, t.pattern, t.option_label), []).append(s)
    if gold.setdefault(t.idx, t.label) != t.label:
      raise ValueError(f"example idx {t.idx} has two gold labels")
  ids = sorted(gold)
  patterns = sorted({k[1] for k in words})
  labels = sorted({k[2] for k in words})
  num_labels = len(labels) if num_labels is None else num_labels
  if labels != list(range(num_labels)):
    raise ValueError(f"option labels {labels} are not 0..{num_labels - 1}")
  out = np.empty((len(ids), len(patterns), num_labels), np.float64)
  for i, idx in enumerate(ids):
    for p, pattern in enumerate(patterns):
      for label in range(num_labels):
        values = words.get((idx, pattern, label))
        if values is None:
          raise ValueError(
              f"example idx {idx} pattern {pattern} has no option for label"
              f" {label} (a training split keeps only gold options; an eval"
              " set must keep all rows of an example)")
        out[i, p, label] = _reduce(values, word_reduce)
  return np.asarray(ids), np.asarray([gold[i] for i in ids]), out


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
  """Numerically stable softmax."""
  z = np.exp(x - np.max(x, axis=axis, keepdims=True))
  return z / np.sum(z, axis=axis, keepdims=True)


def ensemble_probs(scores: np.ndarray) -> np.ndarray:
  """[N, P, L] label scores → [N, L]: the mean over P of softmax over L.

  Example: three patterns with distributions [0.9, 0.1], [0.4, 0.6] and
  [0.4, 0.6] average to [0.567, 0.433] → label 0, where a majority vote of
  the patterns would say 1: a confident pattern outweighs two unsure ones.
  """
  return softmax(np.asarray(scores, np.float64), axis=-1).mean(axis=1)


def predict(scores: np.ndarray) -> np.ndarray:
  """[N, P, L] label scores → [N] predicted labels (ensemble argmax)."""
  return np.argmax(ensemble_probs(scores), axis=-1)


MetricFn = Callable[[Sequence[Any], Sequence[Any]], Mapping[str, float]]


def rank_metric(targets: Sequence[RankTarget], scores: Sequence[float], *,
                metric_fns: Sequence[MetricFn],
                length_normalize: bool = False, word_reduce: str = "max",
                num_labels: int | None = None) -> dict[str, float]:
  """A seqio score metric: rank the options, then apply label metrics.

  Bind the keywords with `functools.partial`; seqio recognises the
  `(targets, scores)` signature and calls the task's `score_fn`.

  Args:
    targets: `RankTarget`s from `option_postprocessor`, one per row.
    scores: summed log-likelihood per row.
    metric_fns: `(targets, predictions)` metrics over label ids, e.g.
      accuracy, macro-F1.
    length_normalize, word_reduce, num_labels: see `label_scores`.

  Returns:
    The merged results of `metric_fns` on (gold labels, predictions).
  """
  _, gold, by_label = label_scores(targets, scores,
                                   length_normalize=length_normalize,
                                   word_reduce=word_reduce,
                                   num_labels=num_labels)
  predictions = predict(by_label).tolist()
  results: dict[str, float] = {}
  for fn in metric_fns:
    results.update(fn(gold.tolist(), predictions))
  return results
