"""Prefix-LM training batches from pre-tokenized examples, without seqio.

For machines whose Python has JAX but no seqio/TensorFlow (e.g. MetaICL
meta-training on a GPU host): the examples are tokenized beforehand and held
in memory; this module only mixes, lays out and pads them. It imports numpy
and the standard library only.

  tasks = {"sst2": [([5, 6, 7], [9, 2]), ...],     # (input ids, target ids)
           "rte": [([8, 4], [3, 2]), ...]}
  batches = MixtureBatches(tasks, batch_size=4, max_length=8, cap=16384)
  batch = next(batches)        # numpy int32 [4, 8] arrays, see below
  batches.position             # 1; save it with the checkpoint, then
  MixtureBatches(tasks, batch_size=4, max_length=8, cap=16384,
                 start_position=1)  # yields what `batches` yields next

The layout is that of seqio's `PrefixLMFeatureConverter(pack=False,
loss_on_targets_only=True)` (see `prompt_jax.models.DecoderOnlyLM`). For the example
([9, 4, 6, 1], [3, 9, 1]) and max_length 9:

  decoder_target_tokens    = [9, 4, 6, 1, 3, 9, 1, 0, 0]
  decoder_input_tokens     = [0, 9, 4, 6, 1, 3, 9, 1, 0]
  decoder_loss_weights     = [0, 0, 0, 0, 1, 1, 1, 0, 0]
  decoder_causal_attention = [1, 1, 1, 1, 1, 0, 0, 0, 0]

One difference: seqio finds padding by token id 0, so a real id-0 token gets
the wrong loss weight there; here the weights come from the example lengths
(SmolLM2's id 0 is a real token).

`trim_padding` (also used by `prompt_jax.data.seqio_batches`) cuts a batch's trailing
padding columns.
"""

from collections.abc import Mapping, Sequence

import numpy as np

Batch = dict[str, np.ndarray]
Example = tuple[Sequence[int], Sequence[int]]

PREFIX_LM_KEYS = ("decoder_input_tokens", "decoder_target_tokens",
                  "decoder_loss_weights", "decoder_causal_attention")


def _used_length(mask: np.ndarray) -> int:
  """1 + the last column where any row of a [B, L] mask is set (0: none)."""
  columns = np.flatnonzero(mask.any(axis=0))
  return int(columns[-1]) + 1 if columns.size else 0


def trim_padding(batch: Batch, multiple: int) -> Batch:
  """Drops trailing all-padding columns, keeping a multiple of `multiple`.

  Decoder-side keys (`decoder_*`) end at the last slot with a loss weight
  (token ids cannot tell padding: SmolLM2's id 0 is a real token);
  `encoder_input_tokens` ends at its last non-zero id (T5 pads with 0).

  Args:
    batch: {key: [B, L]} arrays of one feature converter.
    multiple: round kept lengths up to this (capped at L).
  """
  out = dict(batch)
  weights = batch.get("decoder_loss_weights")
  if weights is not None:
    keep = _used_length(weights > 0)
    keep = min(-(-max(keep, 1) // multiple) * multiple, weights.shape[1])
    for key, value in batch.items():
      if key.startswith("decoder_"):
        out[key] = value[:, :keep]
  enc = batch.get("encoder_input_tokens")
  if enc is not None:
    keep = min(-(-max(_used_length(enc != 0), 1) // multiple) * multiple,
               enc.shape[1])
    out["encoder_input_tokens"] = enc[:, :keep]
  return out


def _check_positive(name: str, value: int | None) -> None:
  if value is not None and value <= 0:
    raise ValueError(f"MixtureBatches: {name} must be > 0, got {value}.")


def _checked_task(name: str, examples: Sequence[Example], max_length: int
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
  """The examples of task `name` as int32 arrays, or a one-line error."""
  if not examples:
    raise ValueError(f"MixtureBatches: task {name!r} has no examples.")
  out = []
  for index, (inputs, targets) in enumerate(examples):
    inputs = np.asarray(inputs, np.int32).reshape(-1)
    targets = np.asarray(targets, np.int32).reshape(-1)
    if not targets.size:
      raise ValueError(f"MixtureBatches: task {name!r} example {index} has"
                       " empty targets (it would carry no loss).")
    if inputs.size + targets.size > max_length:
      raise ValueError(
          f"MixtureBatches: task {name!r} example {index} has"
          f" {inputs.size} input + {targets.size} target tokens ="
          f" {inputs.size + targets.size} > max_length={max_length}.")
    out.append((inputs, targets))
  return out


def layout_prefix_lm(examples: Sequence[tuple[np.ndarray, np.ndarray]],
                     max_length: int) -> Batch:
  """Lays (inputs, targets) rows out as one prefix-LM batch [B, L].

  Args:
    examples: B (input ids, target ids) pairs; each pair fits in L.
    max_length: L.

  Returns:
    `PREFIX_LM_KEYS`, each int32 [B, L] (see the module docstring).
  """
  shape = (len(examples), max_length)
  targets = np.zeros(shape, np.int32)
  weights = np.zeros(shape, np.int32)
  causal = np.zeros(shape, np.int32)
  for row, (inputs, outputs) in enumerate(examples):
    end = inputs.size + outputs.size
    targets[row, :inputs.size] = inputs
    targets[row, inputs.size:end] = outputs
    weights[row, inputs.size:end] = 1
    causal[row, :inputs.size + 1] = 1  # The inputs plus one, as seqio.
  shifted = np.zeros(shape, np.int32)
  shifted[:, 1:] = targets[:, :-1]
  return {"decoder_input_tokens": shifted, "decoder_target_tokens": targets,
          "decoder_loss_weights": weights, "decoder_causal_attention": causal}


class MixtureBatches:
  """An endless, resumable iterator of prefix-LM batches mixed over tasks.

  Mixing is examples-proportional: task t is drawn with probability
  proportional to `min(len(tasks[t]), cap)` (seqio's
  `mixing_rate_num_examples`). Each row draws a task by these rates, then an
  example of it uniformly, with replacement. seqio instead reads a shuffled
  stream of each task; the expected mixture is the same, but here an example
  may repeat before its task's others are seen.

  The batch at position p depends only on (seed, p) (its generator is
  `np.random.default_rng([seed, p])`), so resuming needs no replay:
  `MixtureBatches(..., start_position=k)` yields the batches k, k+1, ... of
  an uninterrupted iterator at once. Tasks are taken in sorted name order, so
  the stream does not depend on the mapping's order.

  Args:
    tasks: task name -> its (input ids, target ids) examples.
    batch_size: B, rows per batch.
    max_length: L, the slots of a row (inputs + targets must fit).
    cap: the most examples a task counts for its rate; None: no cap.
    seed: the stream's seed (>= 0).
    start_position: the first batch to yield.
    trim_to_multiple: cut each batch's trailing padding down to its longest
      row rounded up to this multiple (`trim_padding`); None: [B, L] always.

  Raises:
    ValueError: (one line, naming the task and example index) for an example
      that does not fit or has empty targets, an empty task or no task, or a
      non-positive size/cap or negative position/seed.
  """

  def __init__(self, tasks: Mapping[str, Sequence[Example]], *,
               batch_size: int, max_length: int, cap: int | None = None,
               seed: int = 0, start_position: int = 0,
               trim_to_multiple: int | None = None):
    for name, value in (("batch_size", batch_size), ("max_length", max_length),
                        ("cap", cap), ("trim_to_multiple", trim_to_multiple)):
      _check_positive(name, value)
    if start_position < 0 or seed < 0:
      raise ValueError(f"MixtureBatches: start_position and seed must be >= 0,"
                       f" got {start_position} and {seed}.")
    if not tasks:
      raise ValueError("MixtureBatches: no tasks given.")
    self.task_names = sorted(tasks)
    self._examples = [_checked_task(name, tasks[name], max_length)
                      for name in self.task_names]
    self.batch_size = batch_size
    self.max_length = max_length
    self.seed = seed
    self.trim_to_multiple = trim_to_multiple
    self._sizes = np.array([len(e) for e in self._examples], np.int64)
    self._rates = np.minimum(self._sizes, cap) if cap else self._sizes
    self._probabilities = self._rates / self._rates.sum()
    self._position = start_position

  @property
  def num_examples(self) -> dict[str, int]:
    """Task name -> its number of examples."""
    return dict(zip(self.task_names, self._sizes.tolist()))

  @property
  def rates(self) -> dict[str, int]:
    """Task name -> its mixing rate `min(num_examples, cap)`."""
    return dict(zip(self.task_names, self._rates.tolist()))

  @property
  def probabilities(self) -> dict[str, float]:
    """Task name -> the chance that a row comes from it (rates / sum)."""
    return dict(zip(self.task_names, self._probabilities.tolist()))

  @property
  def max_target_length(self) -> int:
    """The most target tokens of any example (a bound for `target_length`)."""
    return max(t.size for examples in self._examples for _, t in examples)

  @property
  def settings(self) -> dict:
    """What defines the stream (checked when a run resumes)."""
    return {"tasks": self.num_examples, "rates": self.rates,
            "batch_size": self.batch_size, "max_length": self.max_length,
            "seed": self.seed, "trim_to_multiple": self.trim_to_multiple}

  @property
  def position(self) -> int:
    """The number of batches consumed since the start of the stream."""
    return self._position

  def __iter__(self) -> "MixtureBatches":
    return self

  def __next__(self) -> Batch:
    batch = self.batch_at(self._position)
    self._position += 1
    return batch

  def batch_at(self, position: int) -> Batch:
    """The batch at `position` of the stream (a pure function of it)."""
    rows = self.draw(position)
    batch = layout_prefix_lm(
        [self._examples[t][i] for t, i in rows], self.max_length)
    if self.trim_to_multiple:
      batch = trim_padding(batch, self.trim_to_multiple)
    return batch

  def draw(self, position: int) -> list[tuple[int, int]]:
    """The (task index, example index) of each row of batch `position`."""
    rng = np.random.default_rng([self.seed, position])
    task_ids = rng.choice(len(self._sizes), size=self.batch_size,
                          p=self._probabilities)
    example_ids = rng.integers(0, self._sizes[task_ids])
    return list(zip(task_ids.tolist(), example_ids.tolist()))
