"""Tests for tasks.metrics on hand-computed cases."""

import functools
import math

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import seqio

from tasks import metrics
from tasks import sentence_classification
from tasks import testing_tasks


class ClassificationMetricsTest(parameterized.TestCase):

  def test_accuracy_counts_unknown_predictions(self):
    self.assertEqual(metrics.accuracy([1, 0, 1, 0], [1, 0, -1, -1]),
                     {"accuracy": 50.0})
    self.assertIs(sentence_classification.accuracy, metrics.accuracy)

  @parameterized.named_parameters(
      ("length", metrics.accuracy, [0, 1], [0], "2 targets but 1 pred"),
      ("empty", metrics.macro_f1, [], [], "zero examples"),
      ("mcc_length", metrics.mcc, [0], [0, 1], "1 targets but 2 pred"),
      ("squad_empty", metrics.squad, [], [], "zero examples"),
  )
  def test_bad_lengths(self, fn, targets, predictions, msg):
    with self.assertRaisesRegex(ValueError, msg):
      fn(targets, predictions)

  def test_macro_f1_by_hand(self):
    # Class 0: tp 1 fp 0 fn 1 → 2/3. Class 1: tp 1 fp 1 fn 1 → 1/2.
    got = metrics.macro_f1([0, 0, 1, 1], [0, 1, 1, -1])["macro_f1"]
    self.assertAlmostEqual(got, 100 * (2 / 3 + 1 / 2) / 2)

  def test_macro_f1_three_classes(self):
    # Confusion (rows true, cols pred) for CB-like labels:
    #        e  c  n
    #   e  [ 3, 1, 0 ]
    #   c  [ 0, 2, 1 ]
    #   n  [ 1, 0, 0 ]
    targets = [0, 0, 0, 0, 1, 1, 1, 2]
    preds = [0, 0, 0, 1, 1, 1, 2, 0]
    f1_e = 2 * 3 / (2 * 3 + 1 + 1)  # tp 3, fp 1 (from n), fn 1.
    f1_c = 2 * 2 / (2 * 2 + 1 + 1)  # tp 2, fp 1 (from e), fn 1.
    f1_n = 0.0                      # tp 0.
    got = metrics.macro_f1(targets, preds)["macro_f1"]
    self.assertAlmostEqual(got, 100 * (f1_e + f1_c + f1_n) / 3)
    self.assertAlmostEqual(got, 100 * (0.75 + 2 / 3) / 3)

  def test_macro_f1_explicit_labels(self):
    cb_f1 = functools.partial(metrics.macro_f1, labels=[0, 1, 2])
    # Class 2 never occurs: F1 0 counts in the mean (zero_division=0).
    self.assertAlmostEqual(cb_f1([0, 1], [0, 1])["macro_f1"], 200 / 3)
    self.assertEqual(metrics.macro_f1([0, 1], [0, 1]), {"macro_f1": 100.0})

  def test_mcc_binary_by_hand(self):
    # tp 3, tn 2, fp 1, fn 2: (6 - 2) / sqrt(4 * 5 * 3 * 4).
    targets = [1, 1, 1, 1, 1, 0, 0, 0]
    preds = [1, 1, 1, 0, 0, 0, 0, 1]
    want = 100 * (3 * 2 - 1 * 2) / math.sqrt(4 * 5 * 3 * 4)
    self.assertAlmostEqual(metrics.mcc(targets, preds)["mcc"], want)

  def test_mcc_multiclass_matches_formula(self):
    targets = [0, 0, 0, 0, 1, 1, 1, 2]
    preds = [0, 0, 0, 1, 1, 1, 2, 0]
    # c = 5, s = 8, t = (4, 3, 1), p = (4, 3, 1).
    cov = 5 * 8 - (4 * 4 + 3 * 3 + 1 * 1)
    var = 8 * 8 - (16 + 9 + 1)
    self.assertAlmostEqual(metrics.mcc(targets, preds)["mcc"],
                           100 * cov / var)

  def test_mcc_degenerate_and_perfect(self):
    self.assertEqual(metrics.mcc([0, 1, 1], [1, 1, 1]), {"mcc": 0.0})
    self.assertEqual(metrics.mcc([0, 1, 1], [0, 1, 1]), {"mcc": 100.0})
    self.assertAlmostEqual(metrics.mcc([0, 1], [1, 0])["mcc"], -100.0)
    # An unknown prediction only lowers the score.
    self.assertLess(metrics.mcc([0, 1, 1, 0], [0, 1, -1, 0])["mcc"], 100.0)

  def test_against_numpy_confusion_matrix(self):
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, 200).tolist()
    preds = rng.integers(0, 3, 200).tolist()
    cm = np.zeros((3, 3))
    for t, p in zip(targets, preds):
      cm[t, p] += 1
    tp = np.diag(cm)
    f1 = 2 * tp / (cm.sum(0) + cm.sum(1))
    self.assertAlmostEqual(metrics.macro_f1(targets, preds)["macro_f1"],
                           100 * f1.mean())
    t, p, c, s = cm.sum(1), cm.sum(0), tp.sum(), cm.sum()
    want = (c * s - t @ p) / math.sqrt((s * s - p @ p) * (s * s - t @ t))
    self.assertAlmostEqual(metrics.mcc(targets, preds)["mcc"], 100 * want)


class SeqioSignatureTest(absltest.TestCase):

  def test_all_are_seqio_predict_metrics(self):
    task = testing_tasks.register_in_memory_task(
        "metrics_test_tmp_v1", [{"inputs": "x", "targets": "y"}],
        metric_fns=[metrics.accuracy, metrics.macro_f1, metrics.mcc,
                    metrics.squad, metrics.multirc_metrics,
                    functools.partial(metrics.macro_f1, labels=[0, 1, 2])])
    self.addCleanup(seqio.TaskRegistry.remove, "metrics_test_tmp_v1")
    self.assertLen(task.predict_metric_fns, 6)


class SquadMetricsTest(parameterized.TestCase):

  @parameterized.parameters(
      ("The  Cat's hat!", "cats hat"),
      ("an apple, a pear and THE end.", "apple pear and end"),
      ("theatre another", "theatre another"),  # Articles as whole words only.
      ("  ", ""),
  )
  def test_normalize(self, text, want):
    self.assertEqual(metrics.normalize_squad_answer(text), want)

  def test_hand_computed_f1(self):
    # [cat, sat] vs [cat, sat, on]: P 1, R 2/3, F1 0.8; not an exact match.
    got = metrics.squad([["a cat sat on"]], ["the cat sat"])
    self.assertEqual(got["em"], 0.0)
    self.assertAlmostEqual(got["f1"], 80.0)

  def test_max_over_references_and_mean(self):
    targets = [["Denver Broncos", "The Denver Broncos!"], "1066",
               ["in France"]]
    preds = ["denver broncos", "in 1066", "Normandy, France"]
    got = metrics.squad(targets, preds)
    # EM: 1, 0, 0. F1: 1; [in, 1066] vs [1066] → 2/3; [normandy, france]
    # vs [in, france] → 1/2.
    self.assertAlmostEqual(got["em"], 100 / 3)
    self.assertAlmostEqual(got["f1"], 100 * (1 + 2 / 3 + 1 / 2) / 3)

  def test_repeated_tokens_use_multiset_overlap(self):
    # [the→removed] [cat, cat, cat] vs [cat]: common 1, P 1/3, R 1 → 1/2.
    got = metrics.squad(["cat"], ["cat cat cat"])
    self.assertAlmostEqual(got["f1"], 50.0)

  def test_unanswerable(self):
    got = metrics.squad([[], "", ["the"], []], ["", "", "", "Paris"])
    # "the" normalises to "" → treated as no answer. Last: answer given.
    self.assertEqual(got, {"em": 75.0, "f1": 75.0})
    self.assertEqual(metrics.squad(["Paris"], [""]), {"em": 0.0, "f1": 0.0})


class MultiRcMetricsTest(absltest.TestCase):

  def test_grouped_by_hand(self):
    # Question 0: answers all right. Question 1: one wrong. Question 2: right.
    targets = [{"group": 0, "value": 1}, {"group": 0, "value": 0},
               {"group": 1, "value": 1}, {"group": 1, "value": 1},
               {"group": 2, "value": 0}]
    preds = [1, 0, 1, 0, 0]
    got = metrics.multirc_metrics(targets, preds)
    self.assertAlmostEqual(got["exact_match"], 200 / 3)
    # Positive answers: tp 2, fp 0, fn 1 → F1a 0.8.
    self.assertAlmostEqual(got["f1a"], 80.0)
    dict_preds = [{"value": p} for p in [1, 0, 1, -1, 1]]  # -1 unknown.
    got = metrics.multirc_metrics(targets, dict_preds)
    self.assertAlmostEqual(got["exact_match"], 100 / 3)
    self.assertAlmostEqual(got["f1a"], 100 * 4 / (4 + 1 + 1))

  def test_grouped_postprocessor(self):
    def to_int(text, example=None, is_target=False):
      del example, is_target
      return {"True": 1, "False": 0}.get(text, -1)

    fn = metrics.grouped_postprocessor(to_int)
    example = {"question_idx": np.int64(12), "idx": 3}
    self.assertEqual(fn("True", example=example, is_target=True),
                     {"group": 12, "value": 1})
    self.assertEqual(fn("Maybe", example=example, is_target=False), -1)
    with self.assertRaisesRegex(ValueError, "needs 'question_idx'"):
      fn("True", example={"idx": 3}, is_target=True)


if __name__ == "__main__":
  absltest.main()
