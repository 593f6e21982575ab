"""Tests for the TFDS SQuAD 2.0 source (`tasks.squad.squad_source("tfds")`).

Nothing is downloaded: TFDS `squad/v2.0` runs under `tfds.testing.mock_data`
(random examples from the builder's feature spec) with a data dir that does
not exist.
"""

from absl.testing import absltest
import tensorflow as tf
import tensorflow_datasets as tfds

from tasks import squad

_NO_DATA_DIR = "/nonexistent/tfds_data"


def _fingerprint(text: bytes) -> int:
  return int(tf.strings.to_hash_bucket_fast(text, 2**63 - 1).numpy())


class SquadTfdsTest(absltest.TestCase):

  def test_mock_data_maps_to_local_schema(self):
    local = squad.squad_source("local").get_dataset("validation",
                                                    shuffle=False)
    self.assertEqual(local.element_spec, squad.ELEMENT_SPEC)
    with tfds.testing.mock_data(num_examples=5, data_dir=_NO_DATA_DIR):
      src = squad.squad_source("tfds", tfds_data_dir=_NO_DATA_DIR)
      self.assertEqual(tuple(src.splits), ("train", "validation"))
      ds = src.get_dataset("validation", shuffle=False)
      raw = list(src.inner.get_dataset("validation", shuffle=False)
                 .as_numpy_iterator())
      rows = list(ds.as_numpy_iterator())
    self.assertEqual(ds.element_spec, squad.ELEMENT_SPEC)
    self.assertEqual(ds.element_spec, local.element_spec)
    self.assertLen(rows, 5)
    for row, ex in zip(rows, raw):
      self.assertEqual(set(row), set(squad.ELEMENT_SPEC))
      for name in ("id", "title", "context", "question"):
        self.assertEqual(row[name], ex[name], name)
      self.assertEqual(row["answers"].tolist(), ex["answers"]["text"].tolist())
      self.assertEqual(row["is_impossible"], int(ex["is_impossible"]))
      self.assertEqual(row["idx"], _fingerprint(ex["id"]))
      self.assertEqual(row["paragraph_idx"], _fingerprint(ex["context"]))

  def test_map_tfds_example(self):
    ex = {"id": tf.constant("q1"), "title": tf.constant("Normans"),
          "context": tf.constant("Rollo led."), "question": tf.constant("Who?"),
          "is_impossible": tf.constant(False),
          "answers": {"text": tf.constant(["Rollo", "Rollo led"]),
                      "answer_start": tf.constant([0, 0], tf.int32)},
          "plausible_answers": {"text": tf.constant([], tf.string),
                                "answer_start": tf.constant([], tf.int32)}}
    got = {k: v.numpy() for k, v in squad.map_tfds_example(ex).items()}
    got["answers"] = got["answers"].tolist()
    self.assertEqual(got, {
        "idx": _fingerprint(b"q1"), "id": b"q1", "title": b"Normans",
        "paragraph_idx": _fingerprint(b"Rollo led."),
        "context": b"Rollo led.", "question": b"Who?", "is_impossible": 0,
        "answers": [b"Rollo", b"Rollo led"]})
    self.assertGreaterEqual(got["idx"], 0)

  def test_tfds_rows_format_like_local(self):
    ex = {"id": tf.constant("q2"), "title": tf.constant("t"),
          "context": tf.constant("c"), "question": tf.constant("Why?"),
          "is_impossible": tf.constant(True),
          "answers": {"text": tf.constant([], tf.string),
                      "answer_start": tf.constant([], tf.int32)}}
    mapped = squad.map_tfds_example(ex)
    ds = squad.squad_to_span_text(tf.data.Dataset.from_generator(
        lambda: iter([mapped]), output_signature=squad.ELEMENT_SPEC))
    row = next(ds.as_numpy_iterator())
    self.assertEqual((row["inputs"], row["targets"], row["is_impossible"]),
                     (b"question: Why? context: c", b"unanswerable", 1))

  def test_unknown_source(self):
    with self.assertRaisesRegex(ValueError, "source must be 'local' or"):
      squad.squad_source("hub")


if __name__ == "__main__":
  absltest.main()
