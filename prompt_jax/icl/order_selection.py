"""Entropy-based demonstration-order selection (Lu et al. 2022).

"Fantastically Ordered Prompts and Where to Find Them" picks, among
orderings of the same k demonstrations, the ones whose predictions on an
unlabelled probing set are least biased, measured by entropy:

  1. `candidate_permutations(k, num, seed)`: the orders to try [P, k].
  2. Probing set: for each order, `format_context` builds the context and
     the model samples a continuation (`generate_fn(context) -> str`, any
     backbone); `probing_set_from_generations` parses the sampled
     "input ... output" pairs back into probe inputs (generated labels are
     ignored, as in the paper) and counts what it dropped.
  3. Score every probe after every order's context: label distributions
     probs [P, N, C] (e.g. `calibration.option_probs` of option scores).
  4. `select_orders(probs, method, top)`: highest entropy first.
       GlobalE_m = H(histogram of argmax predictions over the N probes)
       LocalE_m  = mean_i H(probs[m, i, :])
     Entropies use natural log; argmax ties go to the lowest label.

Worked example (two orders, two probes, two labels):

  probs[0] = [[0.9, 0.1], [0.8, 0.2]]  predictions (0, 0): GlobalE 0
  probs[1] = [[0.6, 0.4], [0.3, 0.7]]  predictions (0, 1): GlobalE ln 2
  >>> select_orders(probs, method="globale")   # array([1])

A template whose separators are not distinctive (MetaICL's single space
between input and output) cannot be parsed back; use one like
`ProbeTemplate("Review: ", "\\nSentiment: ", "\\n\\n")`.
"""

from collections.abc import Callable, Sequence
import dataclasses
import itertools
import math

import numpy as np
import numpy.typing as npt

METHODS = ("globale", "locale")

GenerateFn = Callable[[str], str]


def candidate_permutations(k: int, num: int, seed: int) -> np.ndarray:
  """Orders of k demonstrations to try.

  Args:
    k: number of demonstrations (>= 1).
    num: how many orders at most (>= 1).
    seed: numpy Generator seed, used only when k! > num.

  Returns:
    [P, k] int64: all k! permutations in lexicographic order if k! <= num,
    else `num` distinct seeded ones (P = num) in drawn order.

  Raises:
    ValueError: if k < 1 or num < 1.
  """
  if k < 1 or num < 1:
    raise ValueError(f"candidate_permutations: need k >= 1 and num >= 1; "
                     f"got k={k}, num={num}")
  if math.factorial(k) <= num:
    return np.array(list(itertools.permutations(range(k))), dtype=np.int64)
  rng = np.random.default_rng(seed)
  drawn: dict[tuple[int, ...], None] = {}  # Insertion-ordered set.
  while len(drawn) < num:  # Terminates: k! > num distinct orders exist.
    drawn.setdefault(tuple(rng.permutation(k).tolist()), None)
  return np.array(list(drawn), dtype=np.int64)


def _check_probs(probs: npt.ArrayLike) -> np.ndarray:
  """[P, N, C] float64 distributions (rows sum to 1 within 1e-4)."""
  array = np.asarray(probs, dtype=np.float64)
  if array.ndim != 3 or 0 in array.shape:
    raise ValueError(f"order_selection: probs must be a non-empty "
                     f"[num_perms, N_probe, C] array; got {array.shape}")
  sums = array.sum(axis=-1)
  bad = (array < 0).any(axis=-1) | ~np.isclose(sums, 1.0, atol=1e-4)
  if bad.any():
    m, i = np.argwhere(bad)[0]
    raise ValueError(f"order_selection: probs[{m}, {i}] is not a "
                     f"distribution (sum {sums[m, i]:.6g}); softmax the "
                     f"option scores first")
  return array


def _entropy(p: np.ndarray) -> np.ndarray:
  """Entropy (nats) over the last axis, with 0 log 0 = 0."""
  logs = np.log(np.where(p > 0, p, 1.0))
  return -np.sum(p * logs, axis=-1)


def global_entropy(probs: npt.ArrayLike) -> np.ndarray:
  """GlobalE per order.

  Args:
    probs: [P, N, C] label distributions of N probes after each of P orders.

  Returns:
    [P] entropy of the predicted-label histogram over the probes.
  """
  array = _check_probs(probs)
  num_labels = array.shape[-1]
  predictions = np.argmax(array, axis=-1)  # [P, N]
  counts = np.stack([np.bincount(row, minlength=num_labels)
                     for row in predictions])  # [P, C]
  return _entropy(counts / array.shape[1])


def local_entropy(probs: npt.ArrayLike) -> np.ndarray:
  """LocalE per order.

  Args:
    probs: [P, N, C] label distributions.

  Returns:
    [P] mean over the N probes of each predicted distribution's entropy.
  """
  return _entropy(_check_probs(probs)).mean(axis=-1)


def select_orders(probs: npt.ArrayLike, method: str = "globale",
                  top: int = 1) -> np.ndarray:
  """The `top` orders with the highest GlobalE or LocalE.

  Args:
    probs: [P, N, C] label distributions.
    method: "globale" or "locale".
    top: how many orders to return, 1 <= top <= P.

  Returns:
    [top] int64 order indices, highest entropy first; equal entropies keep
    the lower index first.

  Raises:
    ValueError: on an unknown method or top out of range.
  """
  if method not in METHODS:
    raise ValueError(f"select_orders: method must be one of {METHODS}; "
                     f"got {method!r}")
  scores = (global_entropy if method == "globale" else local_entropy)(probs)
  if not 1 <= top <= scores.shape[0]:
    raise ValueError(f"select_orders: top={top} but only {scores.shape[0]} "
                     f"orders were scored")
  return np.argsort(-scores, kind="stable")[:top].astype(np.int64)


@dataclasses.dataclass(frozen=True)
class ProbeTemplate:
  """How one demonstration is written: prefix x sep y separator.

  Attributes:
    input_prefix: before each input, e.g. "Review: " (may be "").
    output_separator: between input and output, e.g. "\\nSentiment: ".
    example_separator: after each demonstration, e.g. "\\n\\n".
  """
  input_prefix: str
  output_separator: str
  example_separator: str

  def __post_init__(self):
    if not self.output_separator or not self.example_separator or (
        self.output_separator == self.example_separator):
      raise ValueError(f"ProbeTemplate: output_separator and "
                       f"example_separator must be non-empty and differ; "
                       f"got {self.output_separator!r}, "
                       f"{self.example_separator!r}")


def format_context(demonstrations: Sequence[tuple[str, str]],
                   order: Sequence[int], template: ProbeTemplate) -> str:
  """The context for one order: each (input, output) in `template` form.

  Example: pairs [("good", "positive"), ("bad", "negative")], order (1, 0),
  template ("Review: ", "\\nSentiment: ", "\\n\\n") -> "Review: bad\\n
  Sentiment: negative\\n\\nReview: good\\nSentiment: positive\\n\\n" (one
  string, wrapped here).

  Raises:
    ValueError: if `order` is not a permutation of the demonstrations.
  """
  order = [int(i) for i in order]
  if sorted(order) != list(range(len(demonstrations))):
    raise ValueError(f"format_context: order {order} is not a "
                     f"permutation of the {len(demonstrations)} "
                     f"demonstrations")
  return "".join(template.input_prefix + demonstrations[i][0]
                 + template.output_separator + demonstrations[i][1]
                 + template.example_separator for i in order)


@dataclasses.dataclass(frozen=True)
class ProbingSet:
  """Probe inputs parsed from model generations.

  Attributes:
    inputs: the probe inputs, in generation order.
    num_empty: parsed pairs dropped because the input was empty.
    num_incomplete: chunks dropped for lacking the output separator (e.g.
      cut off by the generation length).
  """
  inputs: tuple[str, ...]
  num_empty: int
  num_incomplete: int


def parse_generation(text: str, template: ProbeTemplate
                     ) -> tuple[list[str], int, int]:
  """Splits one generated text into probe inputs.

  Chunks are split on `example_separator`; blank chunks are ignored; the
  input is the text before a chunk's first `output_separator`, stripped
  and without a leading `input_prefix`.

  Returns:
    (inputs, number of empty inputs dropped, number of chunks without an
    output separator dropped).
  """
  inputs, num_empty, num_incomplete = [], 0, 0
  for chunk in text.split(template.example_separator):
    if not chunk.strip():
      continue
    if template.output_separator not in chunk:
      num_incomplete += 1
      continue
    before = chunk.split(template.output_separator, 1)[0].strip()
    probe = before.removeprefix(template.input_prefix.strip()).strip()
    if probe:
      inputs.append(probe)
    else:
      num_empty += 1
  return inputs, num_empty, num_incomplete


def probing_set_from_generations(contexts: Sequence[str],
                                 generate_fn: GenerateFn,
                                 template: ProbeTemplate, *,
                                 samples_per_context: int = 1) -> ProbingSet:
  """Samples from the model after each context and parses probe inputs.

  Args:
    contexts: one context per candidate order (`format_context`).
    generate_fn: `context -> generated continuation` (sampling; the model
      call lives outside this module).
    template: the template the contexts were written with.
    samples_per_context: generations per context.

  Returns:
    The pooled `ProbingSet` with counts of what was dropped.

  Raises:
    ValueError: if no probe input could be parsed at all.
  """
  inputs, num_empty, num_incomplete = [], 0, 0
  for context in contexts:
    for _ in range(samples_per_context):
      parsed, empty, incomplete = parse_generation(generate_fn(context),
                                                   template)
      inputs += parsed
      num_empty += empty
      num_incomplete += incomplete
  if not inputs:
    raise ValueError(f"probing_set_from_generations: no probe input parsed "
                     f"from {len(contexts) * samples_per_context} "
                     f"generations ({num_empty} empty, {num_incomplete} "
                     f"without {template.output_separator!r})")
  return ProbingSet(tuple(inputs), num_empty, num_incomplete)
