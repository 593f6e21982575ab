"""Tests for prompt_jax.data.seqio_batches on an in-memory task (no data files but vocab).

TensorFlow and seqio are imported once for the whole file (~5-10 s).
"""

import dataclasses

from absl.testing import absltest
import numpy as np

from prompt_jax.data import seqio_batches as data
from tasks import testing_tasks
from tasks import vocab

_TASK = "data_test_cls_v1"
_NUM = 10
_EXAMPLES = [{"inputs": f"example number {i}",
              "targets": ("negative", "positive")[i % 2]} for i in range(_NUM)]
_LENGTHS = {"inputs": 8, "targets": 3}


def _cfg(**overrides) -> data.DatasetConfig:
  kwargs = dict(mixture_or_task_name=_TASK, task_feature_lengths=_LENGTHS,
                split="train", batch_size=4, shuffle=True, seed=0)
  return data.DatasetConfig(**(kwargs | overrides))


def _take(it, n: int) -> list[dict[str, np.ndarray]]:
  return [next(it) for _ in range(n)]


def _decode_rows(tokens: np.ndarray) -> list[str]:
  return [vocab.t5_vocabulary().decode(row.tolist()) for row in tokens]


class TextFeatureLengthsTest(absltest.TestCase):

  def test_subtracts_prompt(self):
    self.assertEqual(data.text_feature_lengths(64, 4, 10),
                     {"inputs": 54, "targets": 4})
    self.assertEqual(data.text_feature_lengths(11, 2, 10),
                     {"inputs": 1, "targets": 2})
    self.assertEqual(data.text_feature_lengths(5, 2, 0),
                     {"inputs": 5, "targets": 2})

  def test_no_room_for_text(self):
    with self.assertRaisesRegex(
        ValueError, r"total_inputs_length=10 .*prompt_length=10.* = 0"):
      data.text_feature_lengths(10, 4, 10)
    with self.assertRaisesRegex(ValueError, r"= -2"):
      data.text_feature_lengths(3, 4, 5)
    with self.assertRaisesRegex(ValueError, "prompt_length >= 0"):
      data.text_feature_lengths(3, 4, -1)


class DatasetConfigTest(absltest.TestCase):

  def test_pack_not_supported(self):
    with self.assertRaisesRegex(ValueError, r"pack=True.*segment"):
      _cfg(pack=True)

  def test_bad_lengths_and_batch(self):
    with self.assertRaisesRegex(ValueError, "task_feature_lengths"):
      _cfg(task_feature_lengths={"inputs": 8})
    with self.assertRaisesRegex(ValueError, "task_feature_lengths"):
      _cfg(task_feature_lengths={"inputs": 0, "targets": 3})
    with self.assertRaisesRegex(ValueError, "batch_size must be > 0"):
      _cfg(batch_size=0)


class DataTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    testing_tasks.register_in_memory_task(_TASK, _EXAMPLES)

  def test_unknown_task_one_line_with_close_names(self):
    with self.assertRaises(ValueError) as ctx:
      data.get_dataset(_cfg(mixture_or_task_name="data_test_cls_v2"))
    msg = str(ctx.exception)
    self.assertNotIn("\n", msg)
    self.assertIn("'data_test_cls_v2'", msg)
    self.assertIn(f"close names: {_TASK}", msg)

  def test_unknown_split(self):
    with self.assertRaisesRegex(ValueError, r"no split 'dev'.*'validation'"):
      data.get_dataset(_cfg(split="dev"))

  def test_keys_shapes_dtypes(self):
    ds = data.get_dataset(_cfg(shuffle=False))
    self.assertTrue(ds.options().deterministic)
    batches = list(ds.as_numpy_iterator())
    self.assertLen(batches, 2)  # 10 rows, batch 4, drop_remainder.
    for batch in batches:
      self.assertCountEqual(batch, data.FEATURE_KEYS)
      self.assertEqual(batch["encoder_input_tokens"].shape, (4, 8))
      for k in data.FEATURE_KEYS[1:]:
        self.assertEqual(batch[k].shape, (4, 3), k)
      for k, v in batch.items():
        self.assertEqual(v.dtype, np.int32, k)
    first = batches[0]
    # Teacher forcing: decoder inputs are the targets shifted right.
    np.testing.assert_array_equal(first["decoder_input_tokens"][:, 1:],
                                  first["decoder_target_tokens"][:, :-1])
    np.testing.assert_array_equal(first["decoder_input_tokens"][:, 0], 0)
    np.testing.assert_array_equal(first["decoder_loss_weights"],
                                  first["decoder_target_tokens"] > 0)

  def test_rows_decode_to_examples(self):
    batch = next(data.get_dataset(_cfg(shuffle=False)).as_numpy_iterator())
    self.assertEqual(_decode_rows(batch["encoder_input_tokens"]),
                     [e["inputs"] for e in _EXAMPLES[:4]])
    self.assertEqual(_decode_rows(batch["decoder_target_tokens"]),
                     [e["targets"] for e in _EXAMPLES[:4]])
    # EOS (1) closes every sequence.
    self.assertIn(1, batch["encoder_input_tokens"][0].tolist())

  def test_resume_is_bit_for_bit(self):
    cfg = _cfg(seed=3)
    full = _take(data.TrainBatches(cfg), 8)  # 32 rows: crosses 3 epochs.
    resumed = data.TrainBatches(cfg, start_position=3)
    self.assertEqual(resumed.position, 3)
    tail = _take(resumed, 5)
    self.assertEqual(resumed.position, 8)
    for want, got in zip(full[3:], tail):
      for k in data.FEATURE_KEYS:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)

  def test_same_seed_same_stream_other_seed_differs(self):
    seed0 = _take(data.TrainBatches(_cfg(seed=0)), 3)
    again = _take(data.TrainBatches(_cfg(seed=0)), 3)
    seed1 = _take(data.TrainBatches(_cfg(seed=1)), 3)
    tokens = lambda bs: np.stack([b["encoder_input_tokens"] for b in bs])
    np.testing.assert_array_equal(tokens(seed0), tokens(again))
    self.assertFalse(np.array_equal(tokens(seed0), tokens(seed1)))
    in_order = _take(data.TrainBatches(_cfg(shuffle=False)), 3)
    self.assertFalse(np.array_equal(tokens(seed0), tokens(in_order)))

  def test_negative_start_position(self):
    with self.assertRaisesRegex(ValueError, "start_position"):
      data.TrainBatches(_cfg(), start_position=-1)

  def test_eval_batches_cover_every_row_once(self):
    # shuffle / drop_remainder are ignored for eval.
    cfg = _cfg(split="validation", shuffle=True, drop_remainder=True)
    batches = list(data.eval_batches(cfg))
    self.assertEqual([n for _, n in batches], [4, 4, 2])
    inputs = []
    for batch, n in batches:
      for k in data.FEATURE_KEYS:
        self.assertEqual(batch[k].shape[0], 4, k)
        np.testing.assert_array_equal(batch[k][n:], 0, err_msg=k)
      inputs += _decode_rows(batch["encoder_input_tokens"][:n])
    self.assertEqual(inputs, [e["inputs"] for e in _EXAMPLES])

  def test_shards_split_rows_and_batch(self):
    seen = []
    for shard_id in range(2):
      for batch, n in data.eval_batches(_cfg(split="validation"),
                                        shard_id=shard_id, num_shards=2):
        self.assertEqual(batch["encoder_input_tokens"].shape, (2, 8))
        seen += _decode_rows(batch["encoder_input_tokens"][:n])
    self.assertCountEqual(seen, [e["inputs"] for e in _EXAMPLES])

  def test_bad_shards(self):
    with self.assertRaisesRegex(ValueError, "batch_size=4 .*num_shards=3"):
      data.get_dataset(_cfg(), num_shards=3)
    with self.assertRaisesRegex(ValueError, r"shard_id=2 not in \[0, 2\)"):
      data.eval_batches(_cfg(), shard_id=2, num_shards=2)

  def test_config_is_frozen(self):
    with self.assertRaises(dataclasses.FrozenInstanceError):
      _cfg().seed = 1  # pytype: disable=not-writable


if __name__ == "__main__":
  absltest.main()


def test_trim_padding_keeps_every_real_slot():
  weights = np.zeros((2, 40), np.int32)
  weights[0, 10:12] = 1
  weights[1, 19] = 1
  tokens = np.arange(80, dtype=np.int32).reshape(2, 40)  # Id 0 is real.
  enc = np.zeros((2, 30), np.int32)
  enc[1, :17] = 5
  batch = {"decoder_target_tokens": tokens, "decoder_loss_weights": weights,
           "encoder_input_tokens": enc}
  out = data.trim_padding(batch, 8)
  assert out["decoder_target_tokens"].shape == (2, 24)
  np.testing.assert_array_equal(out["decoder_target_tokens"],
                                tokens[:, :24])
  assert out["decoder_loss_weights"].sum() == weights.sum()
  assert out["encoder_input_tokens"].shape == (2, 24)
  assert data.trim_padding(batch, 64)["decoder_loss_weights"].shape == (
      2, 40)
