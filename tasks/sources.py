"""Shared pieces of the local data sources: schemas, readers, splits.

Every dataset in `tasks/` is read by a seqio `DataSource` whose examples
follow a documented `Schema` (flat scalar fields; `label` an int64 class id
with `Schema.label_names` for classification tasks). The family modules
build on this one:

  tasks.sentence_sources   Kim-format sentence files (SST-2, SST-5, TREC,
                           MR, CR, MPQA, Subj)
  tasks.superglue_sources  SuperGLUE jsonl (BoolQ, CB, COPA, RTE, WiC, WSC,
                           MultiRC)
  tasks.tfds_sources       the same schemas over TFDS data

A `ColumnSource` parses a whole file into column arrays the first time a
split is used (never at import or registration), caches the parse keyed by
(path, mtime, size, reader) and serves the rows as a `tf.data.Dataset`:

  source = ColumnSource(
      schema, {"train": SplitSpec("superglue/RTE/train.jsonl")}, reader)
  source.num_input_examples("train")        # parses once → 32
  source.examples("train")[0]["premise"]    # plain Python values
  source.get_dataset("train", shuffle=False)

Malformed input fails with one line naming `file:line`; rows are never
dropped silently. Files live under the data root
(`prompt_jax.data.root.data_root()`, env `PROMPT_JAX_DATA_ROOT`) and are
only read.
"""

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import seqio
import tensorflow as tf

from prompt_jax.data import root as data_root_lib

# A parsed split: field name → [N] array (int64, or object arrays of str).
Columns = dict[str, np.ndarray]
# Python types a JSON field may have, checked per row by `read_jsonl`.
FieldTypes = Mapping[str, type | tuple[type, ...]]


@dataclasses.dataclass(frozen=True)
class Schema:
  """The field layout of a source's examples (every field a scalar).

  Attributes:
    name: the dataset name, e.g. "rte".
    features: field name → dtype (`tf.int64` or `tf.string`).
    label_names: for classification, the name of each class id; the
      `label` field holds the id (`label_names[label]` is its name). Empty
      when the dataset is not classification.
    text_fields: the string fields a format would show, in reading order.
  """

  name: str
  features: Mapping[str, tf.dtypes.DType]
  label_names: tuple[str, ...] = ()
  text_fields: tuple[str, ...] = ()

  @property
  def num_classes(self) -> int:
    return len(self.label_names)

  def element_spec(self) -> dict[str, tf.TensorSpec]:
    """The `tf.data` element spec of the examples (all scalars)."""
    return {k: tf.TensorSpec((), d) for k, d in self.features.items()}


class Reader(Protocol):
  """Parses one file into `Columns`; hashable, so parses can be cached.

  Implementations are frozen dataclasses: equal readers share a cache entry.
  Raises ValueError (`path:line: ...`) on malformed input.
  """

  def __call__(self, data: bytes, path: str) -> Columns:
    ...


@dataclasses.dataclass(frozen=True)
class SplitSpec:
  """Where a split's rows come from.

  Attributes:
    file: the file, relative to the data root.
    subset: optional `Columns → sorted row indices`, for splits carved out
      of a file (see `hash_split_subset`); None keeps every row.
  """

  file: str
  subset: Callable[[Columns], np.ndarray] | None = None


# ------------------------------- files -------------------------------------


def resolve_data_file(relpath: str, split: str,
                      root: str | os.PathLike[str] | None = None
                      ) -> pathlib.Path:
  """Returns `root/relpath` (root None: `data_root()` now).

  Raises:
    FileNotFoundError: one line, naming the split and the missing path.
  """
  base = data_root_lib.data_root() if root is None else pathlib.Path(root)
  path = base / relpath
  if not path.is_file():
    raise FileNotFoundError(
        f"Data file for split {split!r} not found: {path}")
  return path


def split_lines(data: bytes) -> list[bytes]:
  """Splits on `\\n` only, allowing one trailing newline.

  Some Kim files are Latin-1 with NEL (0x85) bytes, which `str.splitlines()`
  would treat as line breaks. A `\\r` before the `\\n` is removed.
  """
  lines = data.split(b"\n")
  if lines and not lines[-1]:
    lines.pop()
  return [line.removesuffix(b"\r") for line in lines]


@functools.lru_cache(maxsize=64)
def _read_cached(path: str, mtime_ns: int, size: int,
                 reader: Reader) -> Columns:
  del mtime_ns, size  # Part of the cache key only: a changed file is re-read.
  columns = reader(pathlib.Path(path).read_bytes(), path)
  for column in columns.values():
    column.flags.writeable = False  # Shared by every caller of the cache.
  return columns


def read_file(path: pathlib.Path, reader: Reader) -> Columns:
  """Parses `path` with `reader`, cached until the file changes."""
  stat = path.stat()
  return _read_cached(str(path), stat.st_mtime_ns, stat.st_size, reader)


# ------------------------------- JSONL -------------------------------------


def read_jsonl(data: bytes, path: str,
               fields: FieldTypes) -> list[dict[str, Any]]:
  """Parses JSON Lines, checking that each row has the typed `fields`.

  Extra keys are allowed. `bool` never passes as `int`. One trailing newline
  is allowed; a blank line elsewhere is an error, not skipped.

  Example:
    read_jsonl(b'{"idx": 0, "premise": "p"}\\n', "f.jsonl",
               {"idx": int, "premise": str})  →  [{"idx": 0, "premise": "p"}]

  Raises:
    ValueError: `path:line: ...` for the first row that is not valid UTF-8,
      not a JSON object, lacks a field or has a field of the wrong type.
  """
  rows = []
  for lineno, raw in enumerate(split_lines(data), start=1):
    where = f"{path}:{lineno}"
    try:
      row = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ValueError(f"{where}: malformed JSON: {e}") from None
    if not isinstance(row, dict):
      raise ValueError(
          f"{where}: expected a JSON object, got {type(row).__name__}")
    check_fields(row, fields, where)
    rows.append(row)
  return rows


def check_fields(row: Mapping[str, Any], fields: FieldTypes,
                 where: str) -> None:
  """Raises a one-line ValueError at `where` unless `row` has `fields`."""
  for name, types in fields.items():
    if name not in row:
      raise ValueError(f"{where}: missing field {name!r}")
    value = row[name]
    allowed = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in allowed:
      ok = False
    else:
      ok = isinstance(value, allowed)
    if not ok:
      names = "/".join(t.__name__ for t in allowed)
      raise ValueError(f"{where}: field {name!r} must be {names}, got"
                       f" {type(value).__name__} {value!r:.60}")


def label_id(value: Any, label_names: Sequence[str], where: str) -> int:
  """Maps a raw label to its class id in `label_names`.

  A string must be one of the names; a bool maps through "False"/"True";
  an int (as COPA's 0/1) must be a valid id.

  Raises:
    ValueError: `where: unknown label ...` (one line).
  """
  if isinstance(value, bool):
    value = str(value)
  if isinstance(value, str) and value in label_names:
    return label_names.index(value)
  if (isinstance(value, int) and not isinstance(value, bool)
      and 0 <= value < len(label_names)):
    return value
  raise ValueError(
      f"{where}: unknown label {value!r}; expected one of {list(label_names)}")


def columns_from_rows(rows: Sequence[Mapping[str, Any]],
                      schema: Schema) -> Columns:
  """Builds `Columns` (int64 / object-of-str arrays) from schema'd dicts."""
  columns = {}
  for name, dtype in schema.features.items():
    values = [row[name] for row in rows]
    if dtype == tf.string:
      column = np.empty(len(values), dtype=object)
      column[:] = values
    else:
      column = np.asarray(values, dtype=np.int64).reshape(len(values))
    columns[name] = column
  return columns


# ------------------------------- splits ------------------------------------


def hash_split(keys: Sequence[Hashable], salt: str,
               parts: Sequence[tuple[str, float]]) -> dict[str, np.ndarray]:
  """Deterministically partitions rows into named parts by key.

  The distinct keys are ordered by `sha256(f"{salt}:{key}")` (stable across
  machines and library versions); part i takes the next
  `floor(fraction_i * num_keys)` keys and the last part takes the rest.
  Rows sharing a key (e.g. the answers of one MultiRC passage) stay
  together.

  Example: `hash_split(range(10), "s", [("test", .1), ("validation", .1),
  ("train", .8)])` gives 1 / 1 / 8 rows.

  Returns:
    part name → sorted row indices (int64); disjoint and covering all rows.
  """
  distinct = sorted(set(keys), key=lambda k: _digest(salt, k))
  n = len(distinct)
  part_of, start = {}, 0
  for i, (name, fraction) in enumerate(parts):
    stop = n if i == len(parts) - 1 else start + int(fraction * n)
    for key in distinct[start:stop]:
      part_of[key] = name
    start = stop
  rows = {name: [] for name, _ in parts}
  for row, key in enumerate(keys):
    rows[part_of[key]].append(row)
  return {name: np.asarray(r, np.int64) for name, r in rows.items()}


def _digest(salt: str, key: Hashable) -> bytes:
  return hashlib.sha256(f"{salt}:{key}".encode()).digest()


def _subset(columns: Columns, *, key_field: str, salt: str,
            parts: tuple[tuple[str, float], ...], part: str) -> np.ndarray:
  return hash_split(columns[key_field].tolist(), salt, parts)[part]


def hash_split_subset(key_field: str, salt: str,
                      parts: Sequence[tuple[str, float]],
                      part: str) -> Callable[[Columns], np.ndarray]:
  """A `SplitSpec.subset`: the rows of `part` in `hash_split(key_field)`."""
  return functools.partial(_subset, key_field=key_field, salt=salt,
                           parts=tuple(parts), part=part)


# ------------------------------- source ------------------------------------


class ColumnSource(seqio.DataSource):
  """A seqio `DataSource` over files parsed fully into memory.

  Files are found and parsed when a split is first used, so a task can be
  registered without its data. Examples follow `schema` exactly.
  """

  def __init__(self, schema: Schema, splits: Mapping[str, SplitSpec],
               reader: Reader, *,
               root: str | os.PathLike[str] | None = None):
    """Creates the source.

    Args:
      schema: the fields of every example.
      splits: split name → where its rows come from.
      reader: parses one file into columns with exactly `schema`'s fields.
      root: the data root; None means `data_root()` at read time (which
        honours `$PROMPT_JAX_DATA_ROOT`).
    """
    super().__init__(splits=tuple(splits))
    self.schema = schema
    self._split_specs = dict(splits)
    self._reader = reader
    self._root = root
    # split → (the parsed file's columns, the subset of them).
    self._subsets: dict[str, tuple[Columns, Columns]] = {}

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def path(self, split: str) -> pathlib.Path:
    """Returns the file of `split` (raises a one-line error if missing)."""
    return resolve_data_file(self._spec(split).file, split, self._root)

  def columns(self, split: str) -> Columns:
    """Returns the (read-only) columns of `split`, parsed and validated."""
    spec = self._spec(split)
    columns = read_file(self.path(split), self._reader)
    if set(columns) != set(self.schema.features):
      raise ValueError(f"Reader for {self.schema.name!r} returned fields"
                       f" {sorted(columns)}, schema has"
                       f" {sorted(self.schema.features)}.")
    if spec.subset is None:
      return columns
    cached = self._subsets.get(split)
    if cached is None or cached[0] is not columns:  # New parse: recompute.
      rows = spec.subset(columns)
      cached = (columns, {k: v[rows] for k, v in columns.items()})
      for column in cached[1].values():
        column.flags.writeable = False
      self._subsets[split] = cached
    return cached[1]

  def examples(self, split: str) -> list[dict[str, Any]]:
    """Returns the rows of `split` as dicts of Python values, in order."""
    columns = self.columns(split)
    names = list(columns)
    return [dict(zip(names, values))
            for values in zip(*(columns[k].tolist() for k in names))]

  def num_input_examples(self, split: str) -> int:
    return len(next(iter(self.columns(split).values())))

  def get_dataset(
      self,
      split: str = "train",
      shuffle: bool = True,
      seed: int | None = None,
      shard_info: seqio.ShardInfo | None = None,
      *,
      sequence_length: Mapping[str, int] | None = None,  # Unused.
      use_cached: bool = False,  # Unused.
      num_epochs: int | None = 1,  # Unused.
  ) -> tf.data.Dataset:
    """Returns the examples of `split`, fully shuffled if `shuffle`."""
    del sequence_length, use_cached, num_epochs
    columns = self.columns(split)
    ds = tf.data.Dataset.from_tensor_slices({
        k: tf.constant(columns[k].tolist(), dtype=d, shape=[len(columns[k])])
        for k, d in self.schema.features.items()
    })
    return shard_and_shuffle(ds, self.num_input_examples(split), shuffle,
                             seed, shard_info)

  def _spec(self, split: str) -> SplitSpec:
    if split not in self._split_specs:
      raise ValueError(
          f"Unknown split {split!r}; this source has {sorted(self.splits)}.")
    return self._split_specs[split]


def shard_and_shuffle(ds: tf.data.Dataset, num_rows: int, shuffle: bool,
                      seed: int | None,
                      shard_info: seqio.ShardInfo | None) -> tf.data.Dataset:
  """This host's shard of an in-memory split, fully shuffled if asked."""
  if shard_info is not None and shard_info.num_shards > 1:
    ds = ds.shard(shard_info.num_shards, shard_info.index)
  if shuffle:
    ds = ds.shuffle(num_rows, seed=seed)
  return ds


def check_source_name(source: str) -> None:
  """Raises a one-line ValueError unless `source` is 'local' or 'tfds'."""
  if source not in ("local", "tfds"):
    raise ValueError(f"source must be 'local' or 'tfds', got {source!r}.")
