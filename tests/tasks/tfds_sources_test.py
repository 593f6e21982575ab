"""Tests for tasks.tfds_sources: TFDS data mapped onto the local schemas.

Nothing is downloaded: the TFDS builders run under `tfds.testing.mock_data`
(random examples from the builders' feature specs) with a data dir that
does not exist.
"""

from absl.testing import absltest
from absl.testing import parameterized
import tensorflow as tf
import tensorflow_datasets as tfds

from tasks import sentence_sources as ss
from tasks import superglue_sources as sg
from tasks import tfds_sources

_NO_DATA_DIR = "/nonexistent/tfds_data"


def _tfds_source(name: str):
  if name == "sst2":
    return ss.sst2_source(source="tfds", tfds_data_dir=_NO_DATA_DIR)
  return sg.get_superglue_source(name, source="tfds",
                                 tfds_data_dir=_NO_DATA_DIR)


def _schema(name: str):
  return ss.SCHEMAS["sst2"] if name == "sst2" else sg.SCHEMAS[name]


class TfdsSourcesTest(parameterized.TestCase):

  @parameterized.parameters("sst2", *sg.NAMES)
  def test_mock_data_maps_to_local_schema(self, name):
    with tfds.testing.mock_data(num_examples=4, data_dir=_NO_DATA_DIR):
      src = _tfds_source(name)
      self.assertEqual(tuple(src.splits), ("train", "validation", "test"))
      ds = src.get_dataset("validation", shuffle=False)
      inner = src.inner.get_dataset("validation", shuffle=False)
      self.assertEqual(ds.element_spec, _schema(name).element_spec())
      rows = list(ds.as_numpy_iterator())
      raw = list(inner.as_numpy_iterator())
    self.assertLen(rows, 4)
    paths = tfds_sources.TFDS_DATASETS[name][1]
    for row, ex in zip(rows, raw):
      for field, value in row.items():
        want = ex
        for key in paths.get(field, field).split("/"):
          want = want[key]
        self.assertEqual(value, want, field)

  def test_same_label_names_as_tfds(self):
    for name, (tfds_name, _) in tfds_sources.TFDS_DATASETS.items():
      builder = tfds.builder(tfds_name, data_dir=_NO_DATA_DIR)
      self.assertEqual(tuple(builder.info.features["label"].names),
                       _schema(name).label_names, name)

  def test_map_to_schema_multirc(self):
    ex = {"paragraph": tf.constant("p"), "question": tf.constant("q"),
          "answer": tf.constant("a"), "label": tf.constant(1, tf.int64),
          "idx": {"paragraph": tf.constant(3, tf.int32),
                  "question": tf.constant(5, tf.int32),
                  "answer": tf.constant(7, tf.int32)}}
    got = tfds_sources.map_to_schema(
        ex, sg.SCHEMAS["multirc"], tfds_sources.TFDS_DATASETS["multirc"][1])
    self.assertEqual({k: v.numpy() for k, v in got.items()},
                     {"idx": 7, "paragraph_idx": 3, "question_idx": 5,
                      "paragraph": b"p", "question": b"q", "answer": b"a",
                      "label": 1})
    self.assertTrue(all(v.dtype in (tf.int64, tf.string)
                        for v in got.values()))
    del ex["idx"]["question"]
    with self.assertRaisesRegex(KeyError, "has no 'idx/question'"):
      tfds_sources.map_to_schema(ex, sg.SCHEMAS["multirc"],
                                 tfds_sources.TFDS_DATASETS["multirc"][1])

  def test_no_tfds_source(self):
    with self.assertRaisesRegex(ValueError, r"No TFDS source for 'trec'"):
      tfds_sources.tfds_source(ss.SCHEMAS["trec"])


if __name__ == "__main__":
  absltest.main()
