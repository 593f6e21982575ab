"""TFDS sources mapped onto the local schemas (for users with TFDS data).

`tfds_source(schema)` wraps a `seqio.TfdsDataSource` in a `MappedSource`
whose examples have exactly `schema`'s fields and dtypes, so a task written
against the local source (`tasks.sentence_sources`,
`tasks.superglue_sources`) runs unchanged on TFDS data. The TFDS builders
used (their label order is the local `label_names` order):

  schema   TFDS name                  mapping
  sst2     glue/sst2:2.0.0            int32 → int64
  boolq    super_glue/boolq:1.0.2     int32 → int64
  cb       super_glue/cb:1.0.2        int32 → int64
  copa     super_glue/copa:1.0.2      int32 → int64
  rte      super_glue/rte:1.0.2       int32 → int64
  wic      super_glue/wic:1.0.2       int32 → int64
  wsc      super_glue/wsc:1.0.2       int32 → int64
  multirc  super_glue/multirc:1.0.2   idx/answer → idx, idx/paragraph →
                                      paragraph_idx, idx/question →
                                      question_idx

Splits are TFDS's `train`, `validation`, `test` (test labels are -1, as in
TFDS). Note TFDS `train` is the full train set, not the 32 FewGLUE rows of
the local `train` split. Nothing is downloaded at import or registration;
`get_dataset` loads (and, like `tfds.load`, may download and prepare) the
data. Tests use `tfds.testing.mock_data`.

Example:
  src = tfds_source(superglue_sources.SCHEMAS["multirc"])
  next(src.get_dataset("validation").as_numpy_iterator())
  → {"idx": ..., "paragraph_idx": ..., "question_idx": ..., "paragraph": ...,
     "question": ..., "answer": ..., "label": ...}
"""

from collections.abc import Callable, Mapping, Sequence

import seqio
import tensorflow as tf

from tasks import sources

# Schema name → (TFDS name, {schema field: "/"-path in the TFDS example}).
TFDS_DATASETS: dict[str, tuple[str, dict[str, str]]] = {
    "sst2": ("glue/sst2:2.0.0", {}),
    "boolq": ("super_glue/boolq:1.0.2", {}),
    "cb": ("super_glue/cb:1.0.2", {}),
    "copa": ("super_glue/copa:1.0.2", {}),
    "rte": ("super_glue/rte:1.0.2", {}),
    "wic": ("super_glue/wic:1.0.2", {}),
    "wsc": ("super_glue/wsc:1.0.2", {}),
    "multirc": ("super_glue/multirc:1.0.2", {
        "idx": "idx/answer",
        "paragraph_idx": "idx/paragraph",
        "question_idx": "idx/question",
    }),
}
TFDS_SPLITS = ("train", "validation", "test")

Example = Mapping[str, tf.Tensor]


def map_to_schema(ex: Example, schema: sources.Schema,
                  paths: Mapping[str, str]) -> dict[str, tf.Tensor]:
  """Maps one TFDS example onto `schema` (select, rename, cast).

  Example (multirc, `paths` as in `TFDS_DATASETS`):
    {"idx": {"answer": 7, "paragraph": 0, "question": 1}, "label": 1, ...}
    → {"idx": 7, "paragraph_idx": 0, "question_idx": 1, "label": 1, ...}
    with every int cast to int64.

  Raises:
    KeyError: (one line) if the TFDS example lacks a field of the schema.
  """
  out = {}
  for name, dtype in schema.features.items():
    value = ex
    for key in paths.get(name, name).split("/"):
      if key not in value:
        raise KeyError(f"TFDS example for {schema.name!r} has no"
                       f" {paths.get(name, name)!r}; keys: {sorted(value)}")
      value = value[key]
    out[name] = tf.cast(value, dtype)
  return out


class MappedSource(seqio.DataSource):
  """A `DataSource` applying `map_fn` to every example of another source.

  Splits, sizes and shards are those of the wrapped source.
  """

  def __init__(self, inner: seqio.DataSource,
               map_fn: Callable[[Example], Example],
               schema: sources.Schema | None = None):
    super().__init__(splits=(), caching_permitted=inner.caching_permitted)
    self.inner = inner
    self.schema = schema
    self._map_fn = map_fn

  @property
  def splits(self) -> Sequence[str]:
    return self.inner.splits

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return self.inner.supports_arbitrary_sharding

  def list_shards(self, split: str) -> Sequence[str]:
    return self.inner.list_shards(split)

  def num_input_examples(self, split: str) -> int | None:
    return self.inner.num_input_examples(split)

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
    """Returns the wrapped source's `split`, mapped."""
    del sequence_length, use_cached, num_epochs
    ds = self.inner.get_dataset(split, shuffle=shuffle, seed=seed,
                                shard_info=shard_info)
    return ds.map(self._map_fn, num_parallel_calls=tf.data.AUTOTUNE)


def tfds_source(schema: sources.Schema, *,
                data_dir: str | None = None) -> MappedSource:
  """Returns the TFDS source of `schema.name`, yielding `schema` examples.

  Args:
    schema: a schema named in `TFDS_DATASETS`.
    data_dir: the TFDS data directory; None is TFDS's default.

  Raises:
    ValueError: (one line) if the dataset has no TFDS source here.
  """
  if schema.name not in TFDS_DATASETS:
    raise ValueError(f"No TFDS source for {schema.name!r}; TFDS sources:"
                     f" {sorted(TFDS_DATASETS)}.")
  tfds_name, paths = TFDS_DATASETS[schema.name]
  inner = seqio.TfdsDataSource(tfds_name, tfds_data_dir=data_dir,
                               splits=TFDS_SPLITS)

  def map_fn(ex: Example) -> dict[str, tf.Tensor]:
    return map_to_schema(ex, schema, paths)

  return MappedSource(inner, map_fn, schema)
