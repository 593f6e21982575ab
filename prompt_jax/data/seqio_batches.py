"""Input pipeline: a seqio task or mixture → encoder-decoder numpy batches.

The trainer reaches tasks by name through this module; it never imports
`tasks/` (import `tasks` once, before gin parsing, to register them).

  cfg = DatasetConfig("sst2_v100", text_feature_lengths(64, 4, 100),
                      split="train", batch_size=32)
  batches = TrainBatches(cfg)                 # endless, resumable
  for batch, num_real in eval_batches(dataclasses.replace(cfg, split=...)):
    ...

Batches hold `FEATURE_KEYS`, each int32 [B, L]: encoder_input_tokens
[B, Ti], decoder_input_tokens, decoder_target_tokens and decoder_loss_weights
[B, To].

Sequence lengths account for P: `task_feature_lengths["inputs"]` counts
TEXT tokens only. The model prepends P prompt positions, so the encoder
sees P + Ti positions; `text_feature_lengths` derives Ti from a total budget.

Packing is not supported. A packed row holds several examples, and each
would need its own prompt: prompt insertion would have to be aware of
segments (positions, segment ids, masks per segment). Prompt tuning trains
unpacked, as in prompt-tuning's `prompt_finetune.gin`.

This is the only library module that imports TensorFlow; importing it hides
all GPUs from TensorFlow so that JAX keeps the accelerator memory.
"""

import dataclasses
import difflib
from collections.abc import Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf

from prompt_jax.data.array_batches import PREFIX_LM_KEYS

from prompt_jax.data.array_batches import trim_padding


def _hide_gpus_from_tensorflow() -> None:
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialized its devices; too late.
    pass


_hide_gpus_from_tensorflow()

FEATURE_KEYS = ("encoder_input_tokens", "decoder_input_tokens",
                "decoder_target_tokens", "decoder_loss_weights")
Batch = dict[str, np.ndarray]

_CONVERTERS = {
    "enc_dec": lambda: seqio.EncDecFeatureConverter(pack=False),
    "prefix_lm": lambda: seqio.PrefixLMFeatureConverter(
        loss_on_targets_only=True, pack=False),
}


def text_feature_lengths(total_inputs_length: int, targets_length: int,
                         prompt_length: int) -> dict[str, int]:
  """Returns seqio task feature lengths with room for P prompt positions.

  Args:
    total_inputs_length: encoder positions available, prompt included.
    targets_length: decoder positions (EOS included).
    prompt_length: P, the prompt positions the model adds to the encoder.

  Returns:
    `{"inputs": total_inputs_length - P, "targets": targets_length}`.

  Raises:
    ValueError: if no text position is left, or a length is negative.
  """
  if prompt_length < 0 or targets_length <= 0:
    raise ValueError(
        f"Need prompt_length >= 0 and targets_length > 0, got"
        f" {prompt_length} and {targets_length}.")
  inputs = total_inputs_length - prompt_length
  if inputs <= 0:
    raise ValueError(
        f"total_inputs_length={total_inputs_length} leaves no text positions"
        f" after prompt_length={prompt_length} (inputs = total - P ="
        f" {inputs}; must be > 0).")
  return {"inputs": inputs, "targets": targets_length}


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """What to read and how to batch it.

  Attributes:
    mixture_or_task_name: a registered seqio task or mixture.
    task_feature_lengths: `{"inputs": Ti, "targets": To}` in TEXT tokens;
      the model adds P prompt positions on top (see `text_feature_lengths`).
    split: the split, e.g. "train" or "validation".
    batch_size: the GLOBAL batch size; each of `num_shards` shards (hosts)
      reads `batch_size // num_shards` rows per batch.
    shuffle: whether to shuffle (seeded by `seed`); ignored by
      `eval_batches`, which always reads in order.
    seed: the shuffle seed. A fixed seed makes the order reproducible, which
      `TrainBatches` relies on to resume.
    use_cached: read seqio's offline cache of the task.
    pack: must stay False: packing is not supported with prompts.
    drop_remainder: drop a last partial batch (finite datasets only);
      ignored by `eval_batches`, which keeps every row.
    feature_converter: 'enc_dec' (T5: `FEATURE_KEYS`) or 'prefix_lm'
      (decoder-only: `PREFIX_LM_KEYS`, inputs then targets in one [B, Ti +
      To] sequence, loss weights on the targets only; see
      `prompt_jax.models.DecoderOnlyLM`).
    trim_to_multiple: `TrainBatches` cut each batch's trailing padding down
      to its longest row rounded up to this multiple (short rows then cost
      less; the step compiles once per distinct length). None: fixed shapes.
  """

  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str
  batch_size: int
  shuffle: bool = True
  seed: int = 0
  use_cached: bool = False
  pack: bool = False
  drop_remainder: bool = True
  feature_converter: str = "enc_dec"
  trim_to_multiple: int | None = None

  def __post_init__(self):
    if self.feature_converter not in _CONVERTERS:
      raise ValueError(
          f"DatasetConfig.feature_converter={self.feature_converter!r};"
          f" expected one of {sorted(_CONVERTERS)}.")
    if self.pack:
      raise ValueError(
          "DatasetConfig.pack=True is not supported with prompts: each packed"
          " segment would need its own prompt (segment-aware prompt"
          " insertion); set pack=False.")
    lengths = dict(self.task_feature_lengths)
    if set(lengths) != {"inputs", "targets"} or not all(
        isinstance(v, int) and v > 0 for v in lengths.values()):
      raise ValueError(
          "DatasetConfig.task_feature_lengths must be {'inputs': int > 0,"
          f" 'targets': int > 0}}, got {lengths!r}.")
    if self.batch_size <= 0:
      raise ValueError(f"DatasetConfig.batch_size must be > 0, got"
                       f" {self.batch_size}.")


def _provider(name: str) -> seqio.DatasetProviderBase:
  """Returns the task or mixture `name`, or raises a one-line error."""
  names = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  if name not in names:
    close = difflib.get_close_matches(name, sorted(names), n=5, cutoff=0.4)
    hint = (f"close names: {', '.join(close)}" if close else
            f"{len(names)} registered, none close")
    raise ValueError(
        f"Unknown seqio task or mixture {name!r} ({hint}); was `tasks` (or"
        " the module registering it) imported?")
  return seqio.get_mixture_or_task(name)


def shard_batch_size(batch_size: int, num_shards: int) -> int:
  """Returns the rows per batch of one shard; must divide evenly."""
  if num_shards <= 0 or batch_size % num_shards:
    raise ValueError(f"batch_size={batch_size} is not divisible into"
                     f" num_shards={num_shards} equal shards.")
  return batch_size // num_shards


def get_dataset(cfg: DatasetConfig, *, shard_id: int = 0, num_shards: int = 1,
                num_epochs: int | None = 1) -> tf.data.Dataset:
  """Returns batched, feature-converted examples of one shard.

  Args:
    cfg: what to read.
    shard_id: this shard (host), in `[0, num_shards)`.
    num_shards: shards (hosts) splitting the examples and the global batch.
    num_epochs: passes over the split; None repeats forever. seqio repeats
      before shuffling, so the shuffle buffer spans epoch boundaries.

  Returns:
    A deterministic `tf.data.Dataset` of dicts with `FEATURE_KEYS` (or
    `PREFIX_LM_KEYS`), each int32 [B / num_shards, L].

  Raises:
    ValueError: (one line) for an unknown task/mixture or split, or a bad
      shard.
  """
  if not 0 <= shard_id < num_shards:
    raise ValueError(f"shard_id={shard_id} not in [0, {num_shards}).")
  batch_size = shard_batch_size(cfg.batch_size, num_shards)
  provider = _provider(cfg.mixture_or_task_name)
  if cfg.split not in provider.splits:
    raise ValueError(
        f"{cfg.mixture_or_task_name!r} has no split {cfg.split!r}; it has"
        f" {sorted(provider.splits)}.")
  ds = provider.get_dataset(
      sequence_length=dict(cfg.task_feature_lengths),
      split=cfg.split,
      use_cached=cfg.use_cached,
      shuffle=cfg.shuffle,
      seed=cfg.seed,
      shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards),
      num_epochs=num_epochs,
  )
  converter = _CONVERTERS[cfg.feature_converter]()
  ds = converter(ds, dict(cfg.task_feature_lengths))
  ds = ds.batch(batch_size, drop_remainder=cfg.drop_remainder)
  options = tf.data.Options()
  options.deterministic = True  # Parallel maps keep order: resumable.
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


class TrainBatches:
  """An endless, resumable iterator over numpy training batches.

  The stream is the repeated, seeded-shuffled, batched dataset, which is the
  same on every run with the same config. `position` counts the batches
  consumed; save it with the checkpoint and pass it back as
  `start_position` to continue exactly where the run stopped:
  `TrainBatches(cfg, start_position=k)` yields the batches k, k+1, ... of an
  uninterrupted iterator.

  Resuming re-reads and skips k batches (`tf.data.Dataset.skip`), so its
  cost grows with k (input processing only, no model work).
  """

  def __init__(self, cfg: DatasetConfig, *, start_position: int = 0,
               shard_id: int = 0, num_shards: int = 1):
    if start_position < 0:
      raise ValueError(f"start_position must be >= 0, got {start_position}.")
    self.cfg = cfg
    ds = get_dataset(cfg, shard_id=shard_id, num_shards=num_shards,
                     num_epochs=None)
    self._iterator = ds.skip(start_position).as_numpy_iterator()
    self._position = start_position

  @property
  def position(self) -> int:
    """The number of batches consumed since the start of the stream."""
    return self._position

  def __iter__(self) -> "TrainBatches":
    return self

  def __next__(self) -> Batch:
    batch = next(self._iterator)
    self._position += 1
    if self.cfg.trim_to_multiple:
      batch = trim_padding(batch, self.cfg.trim_to_multiple)
    return batch


def _pad_rows(batch: Batch, batch_size: int) -> Batch:
  """Pads every [n, L] array to [batch_size, L] with all-zero rows."""
  return {
      k: np.pad(v, [(0, batch_size - v.shape[0])] + [(0, 0)] * (v.ndim - 1))
      for k, v in batch.items()
  }


def _padded(ds: tf.data.Dataset,
            batch_size: int) -> Iterator[tuple[Batch, int]]:
  for batch in ds.as_numpy_iterator():
    num_real = len(batch["decoder_target_tokens"])
    yield _pad_rows(batch, batch_size), num_real


def eval_batches(cfg: DatasetConfig, *, shard_id: int = 0,
                 num_shards: int = 1) -> Iterator[tuple[Batch, int]]:
  """Returns an iterator over every example of the split once, in order.

  `cfg.shuffle` and `cfg.drop_remainder` are ignored. The last batch is
  padded with all-zero rows (zero loss weights, fully masked encoder).
  Config errors are raised here, not on the first `next`.

  Returns:
    An iterator of (batch, num_real): a batch of full size
    B / num_shards whose first `num_real` rows are real examples. With
    several shards, the shards may yield different numbers of batches.
  """
  cfg = dataclasses.replace(cfg, shuffle=False, drop_remainder=False)
  batch_size = shard_batch_size(cfg.batch_size, num_shards)
  ds = get_dataset(cfg, shard_id=shard_id, num_shards=num_shards,
                   num_epochs=1)
  return _padded(ds, batch_size)
