"""Tests for tasks.pet: PVP rows on real data (exact strings and tokens,
row counts) and the one-line errors of bad PVPs.

Scoring these tasks with a model is tested end to end in
tests/scoring/rank_test.py.
"""

from absl.testing import absltest
from absl.testing import parameterized
import seqio
import tensorflow as tf

import tasks
from tasks import pet
from tasks import sentence_sources
from tasks import vocab

_LENGTHS = {"inputs": 256, "targets": 32}


def _rows(task_name: str, split: str, n: int | None = None) -> list[dict]:
  ds = seqio.get_mixture_or_task(task_name).get_dataset(
      _LENGTHS, split=split, shuffle=False)
  return list((ds if n is None else ds.take(n)).as_numpy_iterator())


def _pairs(rows: list[dict]) -> list[tuple[str, str, int]]:
  return [(r["inputs_pretokenized"].decode(),
           r["targets_pretokenized"].decode(), int(r["option_label"]))
          for r in rows]


class PetRowsTest(absltest.TestCase):

  def test_task_names_registered_and_listed(self):
    self.assertLen(pet.TASK_NAMES, 46)
    self.assertEqual(set(pet.TASK_NAMES), set(pet.task_variants()))
    for name in pet.TASK_NAMES:
      self.assertIn(name, seqio.TaskRegistry.names())
      self.assertIn(name, tasks.TASK_NAMES)

  def test_sst2_pattern0_exact(self):
    inputs = "one long string of cliches . It was <extra_id_0>."
    self.assertEqual(_pairs(_rows("pet_sst2_p0_v100", "validation", 2)), [
        (inputs, "<extra_id_0> terrible <extra_id_1>", 0),
        (inputs, "<extra_id_0> great <extra_id_1>", 1)])
    (row, _) = _rows("pet_sst2_p0_v100", "validation", 2)
    v = vocab.t5_vocabulary()
    self.assertEqual(row["targets"].tolist(), [32099, 9412, 32098, 1])
    self.assertEqual(row["targets"].tolist(),
                     v.encode("<extra_id_0> terrible <extra_id_1>") + [1])
    self.assertEqual(row["inputs"].tolist()[-4:], [47, 32099, 5, 1])

  def test_training_split_keeps_only_gold_option(self):
    rows = _rows("pet_sst2_p1_v100", "train", 2)  # Train rows 0 (+), 1 (-).
    self.assertEqual([(int(r["idx"]), *p) for r, p in zip(rows, _pairs(rows))],
                     [(0, "Just <extra_id_0>! a stirring , funny and finally"
                          " transporting re-imagining of beauty and the beast"
                          " and 1930s horror films",
                       "<extra_id_0> great <extra_id_1>", 1),
                      (1, "Just <extra_id_0>! apparently reassembled from the"
                          " cutting-room floor of any given daytime soap .",
                       "<extra_id_0> terrible <extra_id_1>", 0)])

  def test_trec_several_words_per_label(self):
    rows = _rows("pet_trec_p0_v100", "test", 9)
    words = [p[1].split()[1] for p in _pairs(rows)]
    self.assertEqual(words, ["description", "definition", "entity", "thing",
                             "abbreviation", "person", "human", "location",
                             "place"])
    self.assertEqual([int(r["option_label"]) for r in rows],
                     [0, 0, 1, 1, 2, 3, 3, 4, 4])
    self.assertEqual(_pairs(rows)[0][0],
                     "<extra_id_0>: How far is it from Denver to Aspen ?")
    self.assertLen(_rows("pet_trec_p0_v100", "test"), 500 * 10)

  def test_rte_hypothesis_is_quoted_without_full_stop(self):
    inputs = ('"Christopher Reeve had an accident"? <extra_id_0>, "Dana'
              " Reeve, the widow of the actor Christopher Reeve, has died of"
              ' lung cancer at age 44, according to the Christopher Reeve'
              ' Foundation."')
    self.assertEqual(_pairs(_rows("pet_rte_p0_v100", "validation", 2)), [
        (inputs, "<extra_id_0> yes <extra_id_1>", 0),
        (inputs, "<extra_id_0> no <extra_id_1>", 1)])

  def test_copa_options_are_the_choices(self):
    inputs = "The man turned on the faucet. What was the effect? <extra_id_0>"
    self.assertEqual(_pairs(_rows("pet_copa_p0_v100", "validation", 2)), [
        (inputs, "<extra_id_0> The toilet filled with water.", 0),
        (inputs, "<extra_id_0> Water flowed from the spout.", 1)])

  def test_boolq_mask_precedes_the_passage(self):
    (row,) = _rows("pet_boolq_p0_v100", "validation", 1)
    self.assertTrue(row["inputs_pretokenized"].decode().startswith(
        "Question: does ethanol take more energy make that produces? Answer:"
        " <extra_id_0>. Passage: Ethanol fuel -- All biomass"))

  def test_ensemble_has_every_pattern(self):
    rows = _rows("pet_cb_ensemble_v100", "validation", 9)
    self.assertEqual([(int(r["pattern"]), int(r["option_label"]))
                      for r in rows],
                     [(p, k) for p in range(3) for k in range(3)])
    self.assertEqual(_pairs(rows)[8][1], "<extra_id_0> neither <extra_id_1>")
    self.assertLen(_rows("pet_cb_ensemble_v100", "validation"), 56 * 9)


class PvpErrorsTest(parameterized.TestCase):

  _LABELS = ("negative", "positive")

  def test_options_without_verbalizer(self):
    with self.assertRaisesRegex(ValueError, "PET task t pattern 0: the task"
                                " has options .* but no verbalizer"):
      pet.realise(pet.PVP("{sentence} It was <mask>.", None), self._LABELS,
                  task="t")

  @parameterized.named_parameters(
      ("no_mask", "{sentence}", {"negative": ("bad",),
                                 "positive": ("good",)}, "exactly one"),
      ("two_masks", "<mask> <mask>", {"negative": ("bad",),
                                      "positive": ("good",)}, "exactly one"),
      ("missing", "<mask>", {"negative": ("bad",)},
       r"no words for \['positive'\]"),
      ("unknown", "<mask>", {"negative": ("bad",), "positive": ("good",),
                             "neutral": ("ok",)}, r"unknown labels \['neu"),
      ("shared_word", "<mask>", {"negative": ("ok",), "positive": ("ok",)},
       "a word verbalizes two labels"))
  def test_bad_pvp(self, pattern, verbalizer, message):
    with self.assertRaisesRegex(ValueError, message):
      pet.realise(pet.PVP(pattern, verbalizer), self._LABELS)

  def test_registration_fails_without_verbalizer(self):
    spec = pet.PetSpec((pet.PVP("{sentence} <mask>", None),))
    with self.assertRaisesRegex(ValueError, "but no verbalizer"):
      pet.register_pet_task(
          "pet_bad_tmp", sentence_sources.sst2_source(),
          sentence_sources.SCHEMAS["sst2"], spec, pattern_ids=(0,),
          metrics=())
    self.assertNotIn("pet_bad_tmp", seqio.TaskRegistry.names())

  def test_truncated_mask_is_an_error(self):
    ds = seqio.get_mixture_or_task("pet_sst2_p0_v100").get_dataset(
        {"inputs": 8, "targets": 8}, split="validation", shuffle=False)
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                "PET mask <extra_id_0> truncated away"):
      next(ds.as_numpy_iterator())

  def test_mask_at_end_has_no_closing_sentinel(self):
    (row,) = pet.realise(pet.PVP("Q? <mask>", {"a": ("x",)}), ("a",))
    self.assertEqual(row.targets, "<extra_id_0> x")


if __name__ == "__main__":
  absltest.main()
