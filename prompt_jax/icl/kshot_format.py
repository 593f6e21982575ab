"""k-shot (in-context) formatting of MetaICL examples, in text and tokens.

No seqio or TensorFlow: `tasks.kshot` wraps this into seqio tasks, and the
unseen-task evaluation and the seqio-free meta-training path
(`meta_train_examples`, `prompt_jax.data.array_batches`) call it directly.

Formats (MetaICL, `metaicl/data.py`; `separator` between a demonstration's
two halves and `demo_separator` between examples, both " " by default):

  direct  (P(y|x)):  x_1 y_1 ... x_k y_k x      → target y
  channel (P(x|y)):  y_1 x_1 ... y_k x_k y      → target x

Layouts: `enc_dec` (T5: demonstrations + query are the encoder inputs) and
`decoder` (one prefix-LM sequence; the target keeps its leading separator,
e.g. " contradiction", and the loss falls on it only).

Lengths are in TOKENS, pieces tokenized separately as MetaICL does. Per
example, x is cut from its end so that len(x) + len(y) <=
`max_length_per_example` (256); in total, `max_length` (1024 for k=16) bounds
the encoder inputs with EOS (`enc_dec`) or inputs + targets (`decoder`), the
context cut from the LEFT so the query and target stay whole. What cannot
fit raises a one-line ValueError naming the task and example.

  fmt = KShotFormat(method="direct", layout="decoder")
  ids = format_ids([("2+2", "4")], ("3+3", "6"), fmt, encode, where="t")
  # ids.inputs = encode("2+2") + encode(" 4") + encode(" 3+3")
  # ids.targets = encode(" 6")
"""

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

METHODS = ("direct", "channel")
LAYOUTS = ("enc_dec", "decoder")
MAX_LENGTH = 1024  # MetaICL, k=16.
MAX_LENGTH_ZERO_SHOT = 256  # MetaICL, k=0.
MAX_LENGTH_PER_EXAMPLE = 256
META_TRAIN_SPLIT = "meta_train"

Demo = tuple[str, str]  # (input, output) of one demonstration.


@dataclasses.dataclass(frozen=True)
class KShotFormat:
  """How to lay out k demonstrations and a query.

  Attributes:
    method: "direct" (condition on x, score y) or "channel" (condition on y,
      score x).
    layout: "enc_dec" (T5) or "decoder" (one prefix-LM sequence).
    separator: between x and y inside one example.
    demo_separator: between examples (and before the query).
    max_length: total token budget (see the module docstring).
    max_length_per_example: token budget of one x + y.
  """

  method: str = "direct"
  layout: str = "enc_dec"
  separator: str = " "
  demo_separator: str = " "
  max_length: int = MAX_LENGTH
  max_length_per_example: int = MAX_LENGTH_PER_EXAMPLE

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"method {self.method!r} not in {METHODS}")
    if self.layout not in LAYOUTS:
      raise ValueError(f"layout {self.layout!r} not in {LAYOUTS}")
    if self.max_length <= 0 or self.max_length_per_example <= 0:
      raise ValueError(f"max lengths must be > 0, got {self.max_length} and"
                       f" {self.max_length_per_example}")


# --------------------------- demonstration choice --------------------------


def train_file_demonstrations(rows: Sequence[Demo], k: int, seed: int, *,
                              task: str) -> list[Demo]:
  """k demonstrations from a seed's train file: all of it if k = len(rows),
  else a subset drawn with `seed`, kept in file order.

  Raises:
    ValueError: (one line, naming the task) if k > len(rows) or k < 0.
  """
  if not 0 <= k <= len(rows):
    raise ValueError(f"task {task!r}: k={k} demonstrations requested but the"
                     f" train file of seed {seed} has {len(rows)} rows")
  if k == len(rows):
    return list(rows)
  chosen = np.random.default_rng(seed).choice(len(rows), k, replace=False)
  return [rows[i] for i in sorted(chosen)]


def sampled_demonstrations(pool: Sequence[Demo], query_index: int, k: int,
                           seed: int, *, task: str) -> list[Demo]:
  """k demonstrations for pool[query_index], drawn (seeded by seed and the
  index, in drawn order) from the pool rows that differ from the query.

  Raises:
    ValueError: (one line, naming the task and row) if fewer than k rows
      differ from the query.
  """
  query = pool[query_index]
  candidates = [i for i, row in enumerate(pool) if row != query]
  if k > len(candidates):
    raise ValueError(f"task {task!r} row {query_index}: k={k} demonstrations"
                     f" requested but only {len(candidates)} other training"
                     " rows exist")
  rng = np.random.default_rng([seed, query_index])
  return [pool[candidates[i]]
          for i in rng.choice(len(candidates), k, replace=False)]


# ---------------------------------- text -----------------------------------


def kshot_text(demonstrations: Sequence[Demo], text: str,
               separator: str = " ") -> str:
  """MetaICL's direct k-shot input: `in_1 out_1 ... in_k out_k text`.

  Example: `kshot_text([("2+2", "4")], "3+3")` → `"2+2 4 3+3"`.
  """
  parts = [s for pair in demonstrations for s in pair]
  return separator.join([*parts, text])


def _pair_text(x: str, y: str, method: str) -> tuple[str, str]:
  """(conditioning half, scored half) of one example."""
  return (x, y) if method == "direct" else (y, x)


def kshot_pieces(demos: Sequence[Demo], query: Demo, fmt: KShotFormat
                 ) -> tuple[list[str], str, str]:
  """The text pieces of one k-shot example, each tokenized on its own.

  Returns:
    (context pieces [2k]: first, second half of each demonstration, with
    their separators; the query piece; the target piece). `"".join` of the
    context pieces + the query piece is the full inputs text.
  """
  context = []
  for i, (x, y) in enumerate(demos):
    first, second = _pair_text(x, y, fmt.method)
    context += [(fmt.demo_separator if i else "") + first,
                fmt.separator + second]
  cond, scored = _pair_text(*query, fmt.method)
  query_piece = (fmt.demo_separator if demos else "") + cond
  target = (fmt.separator if fmt.layout == "decoder" else "") + scored
  return context, query_piece, target


def option_pairs(demos: Sequence[Demo], query_input: str,
                 options: Sequence[str], fmt: KShotFormat
                 ) -> list[tuple[str, str]]:
  """Per-option (inputs, targets) text for rank classification.

  direct: every option is the target after the same inputs; channel: every
  option ends the inputs and the target is the query input.

  Example (direct, enc_dec, k=1): demos [("a", "yes")], query "b",
  options ["yes", "no"] → [("a yes b", "yes"), ("a yes b", "no")];
  channel → [("yes a yes", "b"), ("yes a no", "b")].
  """
  pairs = []
  for option in options:
    context, query, target = kshot_pieces(demos, (query_input, option), fmt)
    pairs.append(("".join(context) + query, target))
  return pairs


# --------------------------------- tokens ----------------------------------


@dataclasses.dataclass(frozen=True)
class KShotIds:
  """One formatted example: token ids (EOS not included) and text."""

  inputs: list[int]
  targets: list[int]
  num_truncated: int  # Context tokens cut from the left.
  inputs_text: str  # Before any token truncation.
  targets_text: str


def _fit_pair(x_ids: list[int], y_ids: list[int], fmt: KShotFormat,
              where: str) -> list[int]:
  """x cut from its end so that len(x) + len(y) fits one example."""
  room = fmt.max_length_per_example - len(y_ids)
  if room < 1:
    raise ValueError(f"{where}: output of {len(y_ids)} tokens leaves no room"
                     f" for the input within max_length_per_example="
                     f"{fmt.max_length_per_example}")
  return x_ids[:room]


def format_ids(demos: Sequence[Demo], query: Demo, fmt: KShotFormat,
               encode: Callable[[str], list[int]], *, where: str) -> KShotIds:
  """Tokenizes and fits one k-shot example (see the module docstring).

  Args:
    demos: k (input, output) demonstrations.
    query: the (input, output) query.
    fmt: the format and budgets.
    encode: text → ids (no EOS).
    where: `task ... example ...`, for error messages.

  Raises:
    ValueError: (one line) if an output exceeds the per-example budget or
      the query + target exceed `max_length`.
  """
  context_text, query_text, target_text = kshot_pieces(demos, query, fmt)
  context = []
  for i in range(0, len(context_text), 2):
    first, second = encode(context_text[i]), encode(context_text[i + 1])
    if fmt.method == "direct":
      context += _fit_pair(first, second, fmt, where) + second
    else:
      context += first + _fit_pair(second, first, fmt, where)
  query_ids, target_ids = encode(query_text), encode(target_text)
  if fmt.method == "direct":
    query_ids = _fit_pair(query_ids, target_ids, fmt, where)
  else:
    target_ids = _fit_pair(target_ids, query_ids, fmt, where)
  budget = (fmt.max_length - 1 if fmt.layout == "enc_dec"
            else fmt.max_length - len(target_ids))
  room = budget - len(query_ids)
  if room < 0:
    raise ValueError(
        f"{where}: query ({len(query_ids)} tokens) and target"
        f" ({len(target_ids)}) do not fit max_length={fmt.max_length}"
        f" ({fmt.layout}, {fmt.method})")
  kept = context[max(0, len(context) - room):]
  return KShotIds(kept + query_ids, target_ids, len(context) - len(kept),
                  "".join(context_text) + query_text, target_text)


def meta_train_examples(pairs: Sequence[Demo], k: int, seed: int,
                        fmt: KShotFormat, encode: Callable[[str], list[int]],
                        *, task: str, errors: list[str] | None = None
                        ) -> list[KShotIds]:
  """Every row of a task's `meta_train` rows as a k-shot example: k
  demonstrations sampled per row (`sampled_demonstrations`), then
  `format_ids`.

  Args:
    pairs: the task's (input, output) rows.
    k, seed: demonstrations per row and the sampling seed.
    fmt: layout and budgets; encode: text → ids (no EOS).
    task: the task name, for error messages.
    errors: None: an example that cannot be formatted raises; a list: its
      one-line message is appended and the example left out (the caller
      reports them).
  """
  out = []
  for i, query in enumerate(pairs):
    try:
      out.append(format_ids(
          sampled_demonstrations(pairs, i, k, seed, task=task), query, fmt,
          encode, where=f"task {task!r} meta_train example {i}"))
    except ValueError as e:
      if errors is None:
        raise
      errors.append(str(e))
  return out
