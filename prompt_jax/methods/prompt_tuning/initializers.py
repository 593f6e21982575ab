"""Soft-prompt initializers: pure factories returning `PromptInitializer`s.

Every factory validates what it can when it is called (embedding rank, label
ids, files) and returns an `init(rng, (P, H)) -> [P, H]` function that
`prompts.modules.Prompt` uses as the initializer of its `prompt` parameter.
The init functions use only jax ops on the rng and small constants prepared at
factory time, so they also run under `jax.jit` and `jax.eval_shape`.

Initializers follow Lester et al. 2021, Sec. 2.2 / 3.2:

* `random_uniform`: U[-scale, scale] (the paper's "random uniform", 0.5).
* `from_sampled_vocab`: rows of the embedding table drawn from the first
  `population_size` ids. SentencePiece ids are ordered by frequency, so the
  first 5,000 rows are the paper's "5,000 most common tokens".
* `from_class_labels`: row i is the mean embedding of label i's pieces; the
  remaining rows come from a fill initializer (sampled vocab by default).
* `from_text`: rows are the embeddings of a discrete prompt's tokens; the
  remaining rows come from the fill initializer.
* `from_array` / `from_npy`: a given [P, H] array (prompt transfer, SPoT,
  resuming from an exported prompt).

Initializers return float32; the `Prompt` module casts to its param dtype.
"""

import operator
import os
from typing import Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prompt_jax.types import Array

# The paper samples from the 5,000 most common tokens.

from prompt_jax.types import PRNGKey
DEFAULT_POPULATION_SIZE = 5000


class PromptInitializer(Protocol):
  """`(rng, shape (P, H)) -> [P, H]` float32 array."""

  def __call__(self, rng: PRNGKey, shape: Sequence[int]) -> Array:
    ...


def _prompt_shape(name: str, shape: Sequence[int],
                  embed_dim: int | None = None) -> tuple[int, int]:
  """Validates a requested prompt shape; returns it as (P, H)."""
  try:
    dims = tuple(operator.index(d) for d in shape)
  except TypeError:
    dims = ()
  if len(dims) != 2 or min(dims) < 0:
    raise ValueError(f"{name}: prompt shape must be (P, H) with P, H >= 0, "
                     f"got {tuple(shape)!r}")
  if embed_dim is not None and dims[1] != embed_dim:
    raise ValueError(f"{name}: prompt shape {dims} has width {dims[1]} but "
                     f"the embedding has width {embed_dim}")
  return dims


def _embedding_table(name: str, embedding) -> np.ndarray:
  """The [V, H] table as a host array (any float dtype); checks the rank."""
  table = np.asarray(embedding)
  if table.ndim != 2 or table.shape[0] == 0:
    raise ValueError(f"{name}: embedding must be a non-empty [V, H] array, "
                     f"got shape {table.shape}")
  return table


def _checked_ids(name: str, ids: Sequence[int], vocab_size: int,
                 what: str) -> list[int]:
  """Token ids as a non-empty list of ints in [0, V)."""
  try:
    out = [operator.index(i) for i in ids]
  except TypeError:
    raise ValueError(f"{name}: {what} must be a sequence of int token ids, "
                     f"got {ids!r}") from None
  if not out:
    raise ValueError(f"{name}: {what} has no token ids")
  bad = [i for i in out if not 0 <= i < vocab_size]
  if bad:
    raise ValueError(f"{name}: {what} has ids {bad} outside the vocabulary "
                     f"[0, {vocab_size})")
  return out


def random_uniform(scale: float = 0.5) -> PromptInitializer:
  """Uniform initialization in [-scale, scale].

  Args:
    scale: half-width of the interval; must be positive.

  Returns:
    An initializer of [P, H] float32 prompts.

  Raises:
    ValueError: if `scale` is not positive.
  """
  if not scale > 0:
    raise ValueError(f"random_uniform: scale must be positive, got {scale!r}")

  def init(rng: PRNGKey, shape: Sequence[int]) -> Array:
    shape = _prompt_shape("random_uniform", shape)
    return jax.random.uniform(rng, shape, jnp.float32, -scale, scale)

  return init


def from_sampled_vocab(
    embedding, population_size: int | None = DEFAULT_POPULATION_SIZE
) -> PromptInitializer:
  """Rows of the embedding table sampled from the most frequent tokens.

  The population is the first `min(population_size, V)` rows (SentencePiece
  ids are sorted by frequency). Rows are drawn without replacement when
  P <= population, with replacement otherwise. Only the population is kept,
  so the full table can be freed after this call.

  Args:
    embedding: [V, H] token embedding table of the frozen backbone.
    population_size: how many leading ids to sample from; None for all.

  Returns:
    An initializer of [P, H] float32 prompts.

  Raises:
    ValueError: bad embedding rank or non-positive population size.
  """
  name = "from_sampled_vocab"
  if population_size is not None and operator.index(population_size) < 1:
    raise ValueError(f"{name}: population_size must be >= 1, got "
                     f"{population_size}")
  table = _embedding_table(name, embedding)
  population = table[:population_size].astype(np.float32)
  count, width = population.shape

  def init(rng: PRNGKey, shape: Sequence[int]) -> Array:
    length, _ = _prompt_shape(name, shape, width)
    ids = jax.random.choice(rng, count, (length,), replace=length > count)
    return jnp.take(jnp.asarray(population), ids, axis=0)

  return init


def _with_fill(name: str, rows: np.ndarray,
               fill: PromptInitializer) -> PromptInitializer:
  """Initializer whose first rows are `rows` [n, H]; `fill` gives the rest."""
  count, width = rows.shape

  def init(rng: PRNGKey, shape: Sequence[int]) -> Array:
    length, _ = _prompt_shape(name, shape, width)
    if count > length:
      raise ValueError(f"{name}: {count} rows do not fit a prompt of length "
                       f"{length}")
    rest = fill(rng, (length - count, width))
    return jnp.concatenate([jnp.asarray(rows), rest.astype(jnp.float32)])

  return init


def from_class_labels(
    embedding, label_token_ids: Sequence[Sequence[int]],
    fill: PromptInitializer | None = None) -> PromptInitializer:
  """Class-label ("verbalizer") initialization.

  Row i is the mean embedding of label i's pieces (tokenize each label
  without EOS); rows after the labels come from `fill`. The label rows are
  computed here, in float32 on the host.

  Args:
    embedding: [V, H] token embedding table of the frozen backbone.
    label_token_ids: one sequence of token ids per class label.
    fill: initializer of the remaining [P - num_labels, H] rows; defaults to
      `from_sampled_vocab(embedding)`.

  Returns:
    An initializer of [P, H] float32 prompts. Calling it raises ValueError if
    there are more labels than P.

  Raises:
    ValueError: no labels, an empty label, or ids outside [0, V).
  """
  name = "from_class_labels"
  table = _embedding_table(name, embedding)
  if isinstance(label_token_ids, (str, bytes)) or not label_token_ids:
    raise ValueError(f"{name}: label_token_ids must be a non-empty sequence "
                     f"of token id sequences, got {label_token_ids!r}")
  rows = [table[_checked_ids(name, ids, table.shape[0], f"label {i}")]
          .astype(np.float32).mean(axis=0)
          for i, ids in enumerate(label_token_ids)]
  if fill is None:
    fill = from_sampled_vocab(table)
  return _with_fill(name, np.stack(rows), fill)


def from_text(embedding, token_ids: Sequence[int],
              fill: PromptInitializer | None = None) -> PromptInitializer:
  """Initialization from a discrete prompt's token embeddings.

  Row i is the embedding of the text's i-th token; rows after the text come
  from `fill`. The text is never truncated or repeated: a text longer than
  the prompt is an error when the initializer is called.

  Args:
    embedding: [V, H] token embedding table of the frozen backbone.
    token_ids: the tokenized text (usually without EOS).
    fill: initializer of the remaining [P - len(token_ids), H] rows; defaults
      to `from_sampled_vocab(embedding)`.

  Returns:
    An initializer of [P, H] float32 prompts.

  Raises:
    ValueError: empty text or ids outside [0, V).
  """
  name = "from_text"
  table = _embedding_table(name, embedding)
  ids = _checked_ids(name, token_ids, table.shape[0], "token_ids")
  if fill is None:
    fill = from_sampled_vocab(table)
  return _with_fill(name, table[ids].astype(np.float32), fill)


def from_array(value, source: str = "from_array") -> PromptInitializer:
  """Initialization with a fixed [P, H] array (prompt transfer, SPoT).

  Args:
    value: [P, H] floating-point array with finite values.
    source: name used in error messages (e.g. the file it came from).

  Returns:
    An initializer that returns `value` (float32) and ignores the rng. Calling
    it with any shape other than value's raises ValueError.

  Raises:
    ValueError: non-floating dtype, rank other than 2 or non-finite values.
  """
  array = np.asarray(value)
  if not jnp.issubdtype(array.dtype, jnp.floating):
    raise ValueError(f"{source}: prompt dtype must be floating point, got "
                     f"{array.dtype}")
  array = array.astype(np.float32)
  if array.ndim != 2:
    raise ValueError(f"{source}: prompt must be a [P, H] array, got shape "
                     f"{array.shape}")
  if not np.isfinite(array).all():
    raise ValueError(f"{source}: prompt has non-finite values")

  def init(rng: PRNGKey, shape: Sequence[int]) -> Array:
    del rng
    expected = _prompt_shape(source, shape)
    if array.shape != expected:
      raise ValueError(f"{source}: found shape {array.shape}, expected the "
                       f"prompt shape {expected} (P, H)")
    return jnp.asarray(array)

  return init


def from_npy(path: str | os.PathLike) -> PromptInitializer:
  """Initialization from a `.npy` file holding a [P, H] prompt.

  The file is read now (so a missing or corrupt file fails at configuration
  time); the shape is checked against (P, H) exactly when the initializer is
  called.

  Args:
    path: the `.npy` file, e.g. a prompt exported by `checkpoints`.

  Returns:
    An initializer that returns the file's array as float32.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not a readable `.npy` array, or bad dtype/rank/values.
  """
  source = f"prompt file {os.fspath(path)}"
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{source}: not found")
  try:
    value = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    detail = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"{source}: not a readable .npy array ({detail})") \
        from None
  if not isinstance(value, np.ndarray):
    raise ValueError(f"{source}: not a .npy array (an .npz archive?)")
  return from_array(value, source)
