"""Contextual calibration and PMI scoring of per-option log-scores.

Inputs are per-option log-scores [N, C]: for each of N examples and C
answer options, the summed log-likelihood of the option given the (k-shot)
input, as `TunedModel.score_batch`
return and `prompt_jax.scoring.rank` groups. Everything here is
numpy on the host (float64), after scoring.

Contextual calibration (Zhao et al. 2021, "Calibrate Before Use"):
  1. Score the options once per content-free input (`CONTENT_FREE_INPUTS`,
     each placed where the query goes, after the same demonstrations):
     log-scores [M, C].
  2. `content_free_probs`: softmax each row over the C options, average the
     M rows, renormalise -> p_cf [C].
  3. `calibrate`: q = softmax(scores) per example, then W q + b with
     W = diag(p_cf)^-1 and b = 0, renormalised. An option the context
     favours a priori (large p_cf) is scaled down.
  With multi-token options the softmax of summed log-likelihoods stands in
  for the paper's single label-token probability.

PMI scoring (Holtzman et al. 2021, "Surface Form Competition"; domain-
conditional PMI): score(y) = log p(y | x) - log p(y | null), where the
"null" input is a task-domain string (e.g. "Answer:") that carries no
information about the example. Unlike calibration it works on the raw
log-likelihoods, so option length is divided out too.

Worked example (two options, one example):

  >>> p_cf = content_free_probs(np.log([[0.8, 0.2]]))       # [0.8, 0.2]
  >>> calibrate(np.log([[0.6, 0.4]]), p_cf)
  array([[0.2727..., 0.7272...]])      # W q = [0.75, 2.0], / 2.75
  >>> calibrated_predictions(np.log([[0.6, 0.4]]), p_cf)    # array([1])

Uncalibrated the argmax is option 0; after dividing out the context's bias
toward option 0 it flips to option 1.
"""

import numpy as np
import numpy.typing as npt

# Zhao et al.'s content-free inputs; average their p_cf (step 2 above).
CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")


def _as_scores(scores: npt.ArrayLike, name: str, ndim: int) -> np.ndarray:
  """float64 array of rank `ndim`, no NaN, at least one option."""
  array = np.asarray(scores, dtype=np.float64)
  if array.ndim != ndim or array.shape[-1] == 0 or array.size == 0:
    raise ValueError(f"calibration: {name} must be a non-empty {ndim}-D "
                     f"array [.., C]; got shape {array.shape}")
  bad = np.isnan(array) | np.isposinf(array)
  bad |= np.isneginf(array).all(axis=-1, keepdims=True)
  if bad.any():
    raise ValueError(f"calibration: {name} holds NaN, +inf or an all -inf "
                     f"row (first at index {np.argwhere(bad)[0].tolist()})")
  return array


def option_probs(option_log_scores: npt.ArrayLike) -> np.ndarray:
  """Softmax over the options of each row.

  Args:
    option_log_scores: [N, C] log-scores (any additive constant per row).

  Returns:
    [N, C] probabilities, each row summing to 1.
  """
  scores = _as_scores(option_log_scores, "option_log_scores", 2)
  shifted = scores - scores.max(axis=-1, keepdims=True)
  exp = np.exp(shifted)
  return exp / exp.sum(axis=-1, keepdims=True)


def content_free_probs(option_log_scores: npt.ArrayLike) -> np.ndarray:
  """p_cf: the mean option distribution over the content-free inputs.

  Args:
    option_log_scores: [M, C] log-scores of the C options for each of M
      content-free inputs (e.g. `CONTENT_FREE_INPUTS` after the same
      demonstrations). Each row is normalised before averaging, so a row's
      overall likelihood does not weight it.

  Returns:
    [C] probabilities summing to 1.
  """
  mean = option_probs(option_log_scores).mean(axis=0)
  return mean / mean.sum()


def calibrate(option_log_scores: npt.ArrayLike,
              p_cf: npt.ArrayLike) -> np.ndarray:
  """Calibrated option distributions: normalise(diag(p_cf)^-1 q), b = 0.

  Args:
    option_log_scores: [N, C] log-scores of the C options per example.
    p_cf: [C] content-free distribution from `content_free_probs`; every
      entry must be > 0.

  Returns:
    [N, C] calibrated probabilities, each row summing to 1.

  Raises:
    ValueError: if p_cf is not [C] or has an entry <= 0.
  """
  q = option_probs(option_log_scores)
  p_cf = _as_scores(p_cf, "p_cf", 1)
  if p_cf.shape[0] != q.shape[1]:
    raise ValueError(f"calibration: p_cf has {p_cf.shape[0]} options but "
                     f"option_log_scores has {q.shape[1]}")
  if (p_cf <= 0).any():
    raise ValueError(f"calibration: p_cf must be > 0 (W = diag(p_cf)^-1); "
                     f"got {p_cf.tolist()}")
  weighted = q / p_cf  # W q with W = diag(p_cf)^-1, b = 0.
  return weighted / weighted.sum(axis=-1, keepdims=True)


def calibrated_predictions(option_log_scores: npt.ArrayLike,
                           p_cf: npt.ArrayLike) -> np.ndarray:
  """[N] int option indices: argmax of `calibrate` (ties: lowest index)."""
  return np.argmax(calibrate(option_log_scores, p_cf), axis=-1)


def pmi_scores(conditional: npt.ArrayLike,
               unconditional: npt.ArrayLike) -> np.ndarray:
  """Domain-conditional PMI: log p(y | x) - log p(y | null).

  Args:
    conditional: [N, C] log p(option | example input).
    unconditional: [C] log p(option | null input) shared by all examples,
      or [N, C] per example (e.g. when the null input follows each
      example's own demonstrations).

  Returns:
    [N, C] PMI scores; argmax over C is the prediction.

  Raises:
    ValueError: on mismatched shapes.
  """
  cond = _as_scores(conditional, "conditional", 2)
  uncond = np.asarray(unconditional, dtype=np.float64)
  if uncond.shape not in (cond.shape[1:], cond.shape):
    raise ValueError(f"calibration: unconditional must be [C] or [N, C] = "
                     f"{cond.shape}; got {uncond.shape}")
  uncond = _as_scores(uncond, "unconditional", uncond.ndim)
  return cond - uncond
