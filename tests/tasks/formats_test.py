"""Tests for tasks.formats (UnifiedQA + EFL) and tasks.preprocessors.

Real rows from the data root go through the registered tasks and must give
exactly the expected inputs/targets; postprocessors and metrics get known
predictions or hand-made scores with hand-computed results.
"""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import seqio
import tensorflow as tf

import tasks
from prompt_jax.scoring import rank as rc
from tasks import formats
from tasks import preprocessors
from tasks import sentence_sources
from tasks import vocab

_LENGTHS = {"inputs": 512, "targets": 32}


def _rows(task_name: str, split: str, n: int | None = None) -> list[dict]:
  ds = seqio.get_mixture_or_task(task_name).get_dataset(
      _LENGTHS, split=split, shuffle=False)
  if n is not None:
    ds = ds.take(n)
  return list(ds.as_numpy_iterator())


def _text(row: dict, key: str) -> str:
  return row[f"{key}_pretokenized"].decode("utf-8")


# Row 0 of each dataset's first eval split, formatted by hand.
_UNIFIEDQA_ROW0 = {
    "unifiedqa_sst2_v100": (
        "validation",
        "what is the sentiment of this review? \\n (a) negative (b) positive"
        " \\n one long string of cliches .", "negative"),
    "unifiedqa_trec_v100": (
        "test",
        "what kind of answer does this question ask for? \\n (a) description"
        " (b) entity (c) abbreviation (d) person (e) location (f) number \\n"
        " how far is it from denver to aspen ?", "number"),
    "unifiedqa_cb_v100": (
        "validation",
        "based on the passage, is this true? valence was helping \\n (a) yes"
        " (b) no (c) maybe \\n valence the void-brain, valence the virtuous"
        " valet. why couldn't the figger choose his own portion of titanic"
        " anatomy to shaft? did he think he was helping?", "no"),
    "unifiedqa_rte_v100": (
        "validation",
        "based on the passage, is this true? christopher reeve had an"
        " accident. \\n (a) yes (b) no \\n dana reeve, the widow of the actor"
        " christopher reeve, has died of lung cancer at age 44, according to"
        " the christopher reeve foundation.", "no"),
    "unifiedqa_copa_v100": (
        "validation",
        "what was the effect of this? \\n (a) the toilet filled with water."
        " (b) water flowed from the spout. \\n the man turned on the faucet.",
        "water flowed from the spout."),
    "unifiedqa_wic_v100": (
        "validation",
        'does the word "class" mean the same thing in these two sentences?'
        " \\n (a) no (b) yes \\n an emerging professional class. \\n"
        " apologizing for losing your temper, even though you were badly"
        " provoked, showed real class.", "no"),
}


class RegistrationTest(absltest.TestCase):

  def test_task_names_registered_and_listed(self):
    self.assertLen(formats.TASK_NAMES, 18)
    for name in formats.TASK_NAMES:
      self.assertIn(name, seqio.TaskRegistry.names())
      self.assertIn(name, tasks.TASK_NAMES)

  def test_registration_is_idempotent(self):
    formats.register_all()
    formats.register_all()
    self.assertIn("efl_cb_v100", seqio.TaskRegistry.names())


class UnifiedQATest(parameterized.TestCase):

  @parameterized.named_parameters(
      (name, name) for name in sorted(_UNIFIEDQA_ROW0))
  def test_first_row_exact(self, name):
    split, want_inputs, want_targets = _UNIFIEDQA_ROW0[name]
    (row,) = _rows(name, split, 1)
    self.assertEqual(_text(row, "inputs"), want_inputs)
    self.assertEqual(_text(row, "targets"), want_targets)
    v = vocab.t5_vocabulary()
    self.assertEqual(row["inputs"].tolist(), v.encode(want_inputs) + [1])
    self.assertEqual(row["targets"].tolist(), v.encode(want_targets) + [1])
    # The separator is backslash + n; T5 has no backslash piece: UNK (2).
    self.assertIn(2, row["inputs"].tolist())

  def test_boolq_shows_no_choices(self):
    (row,) = _rows("unifiedqa_boolq_v100", "validation", 1)
    inputs = _text(row, "inputs")
    self.assertTrue(inputs.startswith(
        "does ethanol take more energy make that produces? \\n ethanol fuel"
        " -- all biomass goes through at least some of these steps:"))
    self.assertTrue(inputs.endswith(
        "concluded that producing ethanol from corn uses much less petroleum"
        " than producing gasoline."))
    self.assertEqual(inputs.count("\\n"), 1)
    self.assertNotIn("(a)", inputs)
    self.assertEqual(_text(row, "targets"), "no")

  def test_row_counts_match_the_files(self):
    self.assertLen(_rows("unifiedqa_rte_v100", "validation"), 277)
    self.assertLen(_rows("unifiedqa_cb_v100", "validation"), 56)

  def test_postprocessor_and_metrics_on_known_predictions(self):
    task = seqio.get_mixture_or_task("unifiedqa_cb_v100")
    rows = _rows("unifiedqa_cb_v100", "validation", 4)
    targets = [task.postprocess_fn(_text(r, "targets"), example=r,
                                   is_target=True) for r in rows]
    self.assertEqual(targets, [1, 2, 0, 1])  # contra., neutral, ent., contra.
    predictions = [task.postprocess_fn(p, example=r, is_target=False)
                   for p, r in zip(["no", " Maybe ", "yes", "banana"], rows)]
    self.assertEqual(predictions, [1, 2, 0, -1])
    results = {}
    for fn in task.metric_fns:
      results.update(fn(targets, predictions))
    # Class F1s: entailment 1, contradiction 2/3 (one miss), neutral 1.
    self.assertEqual(results["accuracy"], 75.0)
    self.assertAlmostEqual(results["macro_f1"], 100 * (1 + 2 / 3 + 1) / 3)

  def test_target_not_a_choice_raises(self):
    example = {"choices": np.array([b"no", b"yes"]), "label": 1}
    with self.assertRaisesRegex(ValueError, "is not choice 1"):
      formats.choice_to_label("no", example, is_target=True)


class EflTest(absltest.TestCase):

  def test_sst2_eval_pairs_exact(self):
    rows = _rows("efl_sst2_v100", "validation", 2)
    self.assertEqual([_text(r, "inputs") for r in rows], [
        "hypothesis: It was terrible. premise: one long string of cliches .",
        "hypothesis: It was great. premise: one long string of cliches .",
    ])
    self.assertEqual([_text(r, "targets") for r in rows], ["yes", "yes"])
    self.assertEqual([(r["idx"], r["option_label"], r["label"],
                       r["is_correct"]) for r in rows],
                     [(0, 0, 0, True), (0, 1, 0, False)])

  def test_train_pairs_are_yes_no(self):
    rows = _rows("efl_sst2_v100", "train", 4)
    # Train row 0 is positive, row 1 negative.
    self.assertEqual([(r["idx"], _text(r, "targets")) for r in rows],
                     [(0, "no"), (0, "yes"), (1, "yes"), (1, "no")])

  def test_rte_pairs_exact(self):
    rows = _rows("efl_rte_v100", "validation", 2)
    premise = ("Claim: Christopher Reeve had an accident. Text: Dana Reeve,"
               " the widow of the actor Christopher Reeve, has died of lung"
               " cancer at age 44, according to the Christopher Reeve"
               " Foundation.")
    self.assertEqual([_text(r, "inputs") for r in rows], [
        "hypothesis: The claim follows from the text. premise: " + premise,
        "hypothesis: The claim does not follow from the text. premise: "
        + premise])
    self.assertEqual([r["is_correct"] for r in rows], [False, True])

  def test_pair_counts(self):
    self.assertLen(_rows("efl_rte_v100", "validation"), 2 * 277)
    self.assertLen(_rows("efl_cb_v100", "validation"), 3 * 56)

  def test_grouping_and_argmax_on_hand_made_scores(self):
    task = seqio.get_mixture_or_task("efl_sst2_v100")
    rows = _rows("efl_sst2_v100", "validation", 6)  # Examples 0-2, gold 0.
    targets = [task.postprocess_fn(_text(r, "targets"), example=r,
                                   is_target=True) for r in rows]
    self.assertEqual(targets[1], rc.RankTarget(0, 0, 1, 0, 2))  # yes + EOS.
    # log p(yes) per pair: example 0 prefers label 0, 1 and 2 prefer 1.
    scores = [-0.1, -2.0, -3.0, -0.5, -1.0, -0.2]
    (metric,) = task.metric_fns
    self.assertAlmostEqual(metric(targets, scores)["accuracy"], 100 / 3)
    # Row order does not matter: rows are grouped by idx.
    order = [5, 2, 0, 3, 1, 4]
    self.assertAlmostEqual(
        metric([targets[i] for i in order],
               [scores[i] for i in order])["accuracy"], 100 / 3)

  def test_cb_metric_has_macro_f1(self):
    (metric,) = seqio.get_mixture_or_task("efl_cb_v100").metric_fns
    T = rc.RankTarget
    targets = [T(0, 0, k, 0, 2) for k in range(3)] + [
        T(1, 0, k, 2, 2) for k in range(3)]
    scores = [-0.1, -2.0, -3.0, -1.0, -0.5, -2.0]  # Predicts 0, then 1.
    result = metric(targets, scores)
    self.assertEqual(result["accuracy"], 50.0)
    self.assertAlmostEqual(result["macro_f1"], 100 / 3)

  def test_descriptions_are_configurable(self):
    name = "efl_sst2_custom_tmp"
    formats.register_efl_task(
        name, sentence_sources.sst2_source(),
        sentence_sources.SCHEMAS["sst2"], sentence="Review: {sentence}",
        descriptions={"negative": "Bad.", "positive": "Good."},
        metrics=formats.metric_fns("sst2"))
    try:
      rows = _rows(name, "validation", 2)
      self.assertEqual(
          _text(rows[1], "inputs"),
          "hypothesis: Good. premise: Review: one long string of cliches .")
    finally:
      seqio.TaskRegistry.remove(name)

  def test_missing_description_raises(self):
    with self.assertRaisesRegex(ValueError, r"missing \['positive'\]"):
      formats.efl_rows("{sentence}", {"negative": "Bad."},
                       ("negative", "positive"))


class PreprocessorsTest(absltest.TestCase):

  def _ds(self, **features):
    return tf.data.Dataset.from_tensors(
        {k: tf.constant(v) for k, v in features.items()})

  def test_fill_template(self):
    ex = {"premise": tf.constant("The man fell."),
          "question": tf.constant("cause")}
    self.assertEqual(preprocessors.fill_template(
        "{premise} What was the {question}?", ex).numpy().decode(),
                     "The man fell. What was the cause?")
    with self.assertRaisesRegex(KeyError, "uses field 'hypothesis'"):
      preprocessors.fill_template("{hypothesis}", ex)
    with self.assertRaisesRegex(TypeError, "is int64, not a string"):
      preprocessors.fill_template("{idx}", {"idx": tf.constant(3, tf.int64)})
    with self.assertRaisesRegex(ValueError, "plain field name"):
      preprocessors.template_fields("{0} {x!r}")

  def test_unifiedqa_text_worked_example(self):
    ds = preprocessors.unifiedqa_text(
        self._ds(idx=np.int64(3), label=np.int64(1), sentence="Good fun ."),
        question="is this review positive or negative?",
        choices=("negative", "positive"), context="{sentence}")
    ex = next(ds.as_numpy_iterator())
    self.assertEqual(ex["inputs"].decode(),
                     "is this review positive or negative? \\n (a) negative"
                     " (b) positive \\n good fun .")
    self.assertEqual(ex["targets"].decode(), "positive")

  def test_rank_rows_need_the_split_flag(self):
    rows = [preprocessors.OptionRow("{sentence}", "yes", 0)]
    ds = self._ds(idx=np.int64(0), label=np.int64(0), sentence="x")
    with self.assertRaisesRegex(KeyError, "SplitFlagSource"):
      preprocessors.rank_classification_rows(ds, rows=rows)

  def test_strip_final_punctuation(self):
    ds = preprocessors.strip_final_punctuation(
        self._ds(hypothesis="He had an accident. ", other="Keep."),
        fields=("hypothesis",))
    ex = next(ds.as_numpy_iterator())
    self.assertEqual((ex["hypothesis"], ex["other"]),
                     (b"He had an accident", b"Keep."))

  def test_split_flag_source(self):
    source = formats.SplitFlagSource(sentence_sources.sst2_source())
    self.assertEqual(source.splits, ("train", "validation", "test"))
    for split, want in [("train", True), ("validation", False)]:
      ex = next(source.get_dataset(split, shuffle=False).as_numpy_iterator())
      self.assertEqual(ex[preprocessors.TRAIN_SPLIT_KEY], want)


if __name__ == "__main__":
  absltest.main()
