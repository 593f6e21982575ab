"""seqio metric functions shared by tasks: `(targets, predictions) → dict`.

Scores are percentages (T5 convention). Every prediction counts: one that
matches no class (e.g. the -1 a postprocessor returns for an unknown label
word) is wrong, never skipped.

  accuracy          {"accuracy"}
  macro_f1          {"macro_f1"}: mean per-class F1 over the target classes
                    (or `labels`); an unknown prediction is a false negative
  mcc               {"mcc"}: Matthews correlation (multiclass, Gorodkin)
  squad             {"em", "f1"}: SQuAD v2 official normalisation and
                    scoring, max over reference answers; "" = no answer
  multirc_metrics   {"exact_match", "f1a"}: per-question all-correct and
                    binary F1 over all answers (targets carry a group id)

Example:
  squad([["a cat sat on"]], ["the cat sat"])  → {"em": 0.0, "f1": 80.0}
  macro_f1([0, 0, 1, 1], [0, 1, 1, -1])       → {"macro_f1": 58.33...}
"""

import collections
import re
import string
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def _check_lengths(targets: Sequence, predictions: Sequence) -> None:
  if len(targets) != len(predictions):
    raise ValueError(
        f"{len(targets)} targets but {len(predictions)} predictions.")
  if not targets:
    raise ValueError("a metric over zero examples is undefined.")


def accuracy(targets: Sequence, predictions: Sequence) -> dict[str, float]:
  """Exact-match accuracy in percent over all examples.

  Raises:
    ValueError: (one line) mismatched lengths or no examples.
  """
  _check_lengths(targets, predictions)
  hits = sum(t == p for t, p in zip(targets, predictions))
  return {"accuracy": 100.0 * hits / len(targets)}


def _f1(tp: int, fp: int, fn: int) -> float:
  """F1 from counts; 0 when there is nothing to match (tp = 0)."""
  return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def macro_f1(targets: Sequence[Hashable], predictions: Sequence[Hashable],
             labels: Sequence[Hashable] | None = None) -> dict[str, float]:
  """Unweighted mean of per-class F1, in percent.

  Classes are `labels` if given (bind with `functools.partial`, e.g. all 3
  CB classes), else the distinct targets. A prediction outside the classes
  counts as a false negative of its target's class and a false positive of
  none. A class with no targets and no predictions has F1 0 (as sklearn's
  `zero_division=0`).

  Example: targets [0, 0, 1, 1], predictions [0, 1, 1, -1]:
    class 0: tp 1, fp 0, fn 1 → F1 2/3; class 1: tp 1, fp 1, fn 1 → 1/2;
    macro = 7/12 → {"macro_f1": 58.33...}.
  """
  _check_lengths(targets, predictions)
  classes = list(labels) if labels is not None else sorted(set(targets))
  per_class = []
  for c in classes:
    tp = sum(t == c and p == c for t, p in zip(targets, predictions))
    fp = sum(t != c and p == c for t, p in zip(targets, predictions))
    fn = sum(t == c and p != c for t, p in zip(targets, predictions))
    per_class.append(_f1(tp, fp, fn))
  return {"macro_f1": 100.0 * sum(per_class) / len(per_class)}


def mcc(targets: Sequence[Hashable],
        predictions: Sequence[Hashable]) -> dict[str, float]:
  """Matthews correlation coefficient × 100 (multiclass, as sklearn).

  With confusion counts over the union of classes, c = correct, s = total,
  t_k / p_k = true / predicted counts of class k:
    MCC = (c·s − Σ p_k t_k) / sqrt((s² − Σ p_k²)(s² − Σ t_k²)),
  0 when a denominator factor is 0 (e.g. a constant predictor). Unknown
  predictions are a class of their own, so they only ever lower the score.
  """
  _check_lengths(targets, predictions)
  s = len(targets)
  c = sum(t == p for t, p in zip(targets, predictions))
  t_counts = collections.Counter(targets)
  p_counts = collections.Counter(predictions)
  cov_tp = c * s - sum(p_counts[k] * t_counts[k] for k in t_counts)
  var_p = s * s - sum(n * n for n in p_counts.values())
  var_t = s * s - sum(n * n for n in t_counts.values())
  if var_p == 0 or var_t == 0:
    return {"mcc": 0.0}
  return {"mcc": 100.0 * cov_tp / (var_p * var_t) ** 0.5}


# ------------------------------ SQuAD --------------------------------------


def normalize_squad_answer(text: str) -> str:
  """The official SQuAD normalisation: lower, drop punctuation, articles
  (a/an/the) and extra whitespace.

  Example: "The  Cat's hat!" → "cats hat".
  """
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  text = _ARTICLES.sub(" ", text)
  return " ".join(text.split())


def _squad_f1(target: str, prediction: str) -> float:
  gold = normalize_squad_answer(target).split()
  pred = normalize_squad_answer(prediction).split()
  if not gold or not pred:  # No-answer: right only if both are empty.
    return float(gold == pred)
  common = sum((collections.Counter(gold) & collections.Counter(pred))
               .values())
  if not common:
    return 0.0
  precision, recall = common / len(pred), common / len(gold)
  return 2 * precision * recall / (precision + recall)


def _references(target: str | Sequence[str]) -> list[str]:
  refs = [target] if isinstance(target, str) else list(target)
  # As the official v2 script: references that normalise to "" are dropped
  # and an unanswerable question's only gold answer is "".
  return [r for r in refs if normalize_squad_answer(r)] or [""]


def squad(targets: Sequence[str | Sequence[str]],
          predictions: Sequence[str]) -> dict[str, float]:
  """SQuAD exact match and token F1 in percent, max over references.

  Each target is an answer string or a list of reference answers (an empty
  list or "" means unanswerable: only an empty prediction scores).

  Example: target "a cat sat on", prediction "the cat sat": normalised
  tokens [cat, sat, on] vs [cat, sat] → P 1, R 2/3, F1 0.8; EM 0.
  """
  _check_lengths(targets, predictions)
  em = f1 = 0.0
  for target, prediction in zip(targets, predictions):
    refs = _references(target)
    norm = normalize_squad_answer(prediction)
    em += max(float(normalize_squad_answer(r) == norm) for r in refs)
    f1 += max(_squad_f1(r, prediction) for r in refs)
  n = len(targets)
  return {"em": 100.0 * em / n, "f1": 100.0 * f1 / n}


# ----------------------------- MultiRC -------------------------------------


def _value(x: Any) -> Any:
  return x["value"] if isinstance(x, Mapping) else x


def multirc_metrics(targets: Sequence[Mapping[str, Any]],
                    predictions: Sequence[Any]) -> dict[str, float]:
  """MultiRC per-question exact match and answer-level F1a, in percent.

  Targets are `{"group": question id, "value": 0/1}` (see
  `grouped_postprocessor`); predictions are 0/1 (anything else is wrong) or
  such dicts. `exact_match` is the share of groups whose every answer is
  right; `f1a` is binary F1 of the positive class over all answers.
  """
  _check_lengths(targets, predictions)
  group_ok: dict[Hashable, bool] = {}
  tp = fp = fn = 0
  for target, prediction in zip(targets, predictions):
    t, p = _value(target), _value(prediction)
    group = target["group"]
    group_ok[group] = group_ok.get(group, True) and t == p
    tp += t == 1 and p == 1
    fp += t != 1 and p == 1
    fn += t == 1 and p != 1
  exact = sum(group_ok.values()) / len(group_ok)
  return {"exact_match": 100.0 * exact, "f1a": 100.0 * _f1(tp, fp, fn)}


def grouped_postprocessor(
    postprocess_fn: Callable[..., Any], group_key: str = "question_idx",
) -> Callable[..., Any]:
  """Wraps a postprocessor so targets carry their group for grouped metrics.

  The wrapped fn returns `{"group": example[group_key], "value": v}` for
  targets and the plain value for predictions, as `multirc_metrics` expects.
  """

  def fn(output: str, example: Mapping[str, Any] | None = None,
         is_target: bool = False) -> Any:
    value = postprocess_fn(output, example=example, is_target=is_target)
    if not is_target:
      return value
    if example is None or group_key not in example:
      raise ValueError(
          f"Grouped metric needs {group_key!r} in the example; got"
          f" {sorted(example or {})}.")
    group = example[group_key]
    return {"group": group.item() if hasattr(group, "item") else group,
            "value": value}

  return fn
