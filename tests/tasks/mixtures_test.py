"""Tests for tasks.mixtures: capped rates, MetaICL split mixtures, per-task
evaluation inside a mixture (in-memory tasks and a fake predict_fn)."""

import contextlib
import importlib
import io
import json

from absl.testing import absltest
import seqio

from prompt_jax.data import root as data_root_lib
from tasks import metaicl
from tasks import mixtures
from tasks import testing_tasks
from tasks import vocab

_LENGTHS = {"inputs": 16, "targets": 4}

_MISSING_TRAIN = {
    "hr_to_lr": ("dbpedia_14", "gigaword", "amazon_polarity", "biomrc",
                 "search_qa", "yahoo_answers_topics", "yelp_review_full"),
    "class_to_class": ("yahoo_answers_topics",),
    "non_class_to_class": ("biomrc", "gigaword", "spider",
                           "yelp_review_full"),
    "qa_to_qa": ("biomrc", "search_qa", "unifiedqa:squad2",
                 "unifiedqa:natural_questions_with_dpr_para",
                 "unifiedqa:race_string", "unifiedqa:squad1_1",
                 "unifiedqa:drop", "unifiedqa:newsqa",
                 "unifiedqa:narrativeqa", "unifiedqa:winogrande_xl",
                 "unifiedqa:social_iqa", "unifiedqa:quoref",
                 "unifiedqa:physical_iqa", "unifiedqa:ropes",
                 "unifiedqa:commonsenseqa", "unifiedqa:boolq"),
    "non_qa_to_qa": ("dbpedia_14", "gigaword", "amazon_polarity",
                     "yahoo_answers_topics", "yelp_review_full"),
    "non_nli_to_nli": ("amazon_polarity", "dbpedia_14",
                       "financial_phrasebank", "yahoo_answers_topics"),
    "non_paraphrase_to_paraphrase": ("amazon_polarity", "dbpedia_14",
                                     "financial_phrasebank",
                                     "yahoo_answers_topics"),
}
_UNIFIEDQA_TEST = ("unifiedqa:qasc", "unifiedqa:qasc_with_ir",
                   "unifiedqa:openbookqa", "unifiedqa:openbookqa_with_ir",
                   "unifiedqa:mctest", "unifiedqa:ai2_science_middle")
_MISSING_TEST = {
    "hr_to_lr": ("financial_phrasebank",),
    "class_to_class": ("amazon_polarity", "dbpedia_14",
                       "financial_phrasebank"),
    "non_class_to_class": ("amazon_polarity", "dbpedia_14",
                           "financial_phrasebank"),
    "qa_to_qa": _UNIFIEDQA_TEST,
    "non_qa_to_qa": _UNIFIEDQA_TEST,
    "non_nli_to_nli": (),
    "non_paraphrase_to_paraphrase": (),
}
# (train tasks in the pool, test tasks in the pool, of which with test file)
_SIZES = {"hr_to_lr": (54, 25, 25), "class_to_class": (42, 17, 15),
          "non_class_to_class": (33, 17, 15), "qa_to_qa": (21, 16, 10),
          "non_qa_to_qa": (28, 16, 10), "non_nli_to_nli": (50, 8, 7),
          "non_paraphrase_to_paraphrase": (55, 4, 2)}


def _config(split: str) -> dict:
  path = data_root_lib.data_root() / "metaicl" / "config" / f"{split}.json"
  return json.loads(path.read_text())


def _on_disk(folder: str) -> bool:
  return (data_root_lib.data_root() / "metaicl" / folder).is_dir()


def _mixture_tasks(name: str) -> tuple[str, ...]:
  return tuple(t.name for t in seqio.get_mixture_or_task(name).tasks)


class MetaICLSplitsTest(absltest.TestCase):

  def test_split_lists_equal_the_config_files(self):
    self.assertLen(mixtures.SPLIT_NAMES, 7)
    for split in mixtures.SPLIT_NAMES:
      config = _config(split)
      self.assertEqual(mixtures.METAICL_SPLITS[split],
                       {"train": tuple(config["train"]),
                        "test": tuple(config["test"])}, split)

  def test_train_test_overlap_is_left_out_of_training(self):
    for split, lists in mixtures.METAICL_SPLITS.items():
      overlap = set(lists["train"]) & set(lists["test"])
      self.assertEqual(set(mixtures.TRAIN_TEST_OVERLAP[split]), overlap)
      self.assertEmpty(set(mixtures.TRAIN_TASKS[split]) & set(
          mixtures.TEST_TASK_LISTS[f"metaicl_{split}_test_tasks"]))
    self.assertEqual(mixtures.TRAIN_TEST_OVERLAP["non_nli_to_nli"],
                     ("sick",))
    self.assertEqual(sum(map(len, mixtures.TRAIN_TEST_OVERLAP.values())), 1)

  def test_train_mixtures_hold_exactly_the_available_train_tasks(self):
    for split in mixtures.SPLIT_NAMES:
      config = _config(split)
      want = tuple(metaicl.task_name(f) for f in config["train"]
                   if _on_disk(f) and f not in config["test"])
      name = f"metaicl_{split}_train_v100"
      self.assertEqual(_mixture_tasks(name), tuple(sorted(want)), split)
      self.assertEqual(mixtures.TRAIN_TASKS[split], want)
      self.assertEqual(len(want), _SIZES[split][0])

  def test_missing_lists_are_exact(self):
    self.assertEqual(mixtures.MISSING_TRAIN_TASKS, _MISSING_TRAIN)
    self.assertEqual(mixtures.MISSING_TEST_TASKS, _MISSING_TEST)
    for split in mixtures.SPLIT_NAMES:  # Independently, from the disk.
      config = _config(split)
      self.assertEqual(
          mixtures.MISSING_TRAIN_TASKS[split],
          tuple(f for f in config["train"] if not _on_disk(f)))
      self.assertEqual(mixtures.MISSING_TEST_TASKS[split],
                       tuple(f for f in config["test"] if not _on_disk(f)))
    report = mixtures.missing_report(verbose=True)
    self.assertIn("hr_to_lr: train ['dbpedia_14', 'gigaword'", report)

  def test_missing_tasks_are_a_warning_when_a_mixture_is_read(self):
    missing = {f for lists in (_MISSING_TRAIN, _MISSING_TEST)
               for folders in lists.values() for f in folders}
    self.assertLen(missing, 29)
    train = seqio.get_mixture_or_task("metaicl_hr_to_lr_train_v100")
    self.assertEqual(train.left_out, mixtures.MISSING_TRAIN_TASKS["hr_to_lr"])
    self.assertIn("dbpedia_14", train.left_out)
    test = seqio.get_mixture_or_task("metaicl_hr_to_lr_test_v100")
    self.assertIn("financial_phrasebank", test.left_out)
    mixture = mixtures.add_mixture("left_out_probe_v100", [("sst2_v100", 1.0)],
                                   left_out=("task_a", "task_b"))
    with self.assertLogs("tasks.mixtures", level="WARNING") as logs:
      mixture.get_dataset({"inputs": 8, "targets": 4}, split="validation",
                          shuffle=False)
      mixture.get_dataset({"inputs": 8, "targets": 4}, split="validation",
                          shuffle=False)  # Reported once.
    (record,) = logs.records
    self.assertEqual(record.getMessage(),
                     "left_out_probe_v100: 2 of its tasks are absent from the "
                     "data and left out: task_a, task_b")
    seqio.MixtureRegistry.remove("left_out_probe_v100")

  def test_test_lists_and_eval_mixtures(self):
    for split in mixtures.SPLIT_NAMES:
      key = f"metaicl_{split}_test_tasks"
      tests = mixtures.TEST_TASK_LISTS[key]
      with_file = mixtures.TEST_TASKS_WITH_TEST_FILE[key]
      self.assertEqual((len(tests), len(with_file)), _SIZES[split][1:])
      for name in tests:
        folder = metaicl.FOLDER_OF[name]
        has_file = (data_root_lib.data_root() / "metaicl" / folder /
                    f"{folder}_16_100_test.jsonl").is_file()
        self.assertEqual(name in with_file, has_file, name)
      self.assertEqual(_mixture_tasks(f"metaicl_{split}_test_v100"),
                       tuple(sorted(with_file)))
    self.assertEqual(
        mixtures.TEST_TASKS_WITH_TEST_FILE[
            "metaicl_non_paraphrase_to_paraphrase_test_tasks"],
        ("metaicl_glue_mrpc_v100", "metaicl_medical_questions_pairs_v100"))

  def test_mixture_names_listed(self):
    registered = set(seqio.MixtureRegistry.names())
    self.assertLen(mixtures.MIXTURE_NAMES, 14)
    for split in mixtures.SPLIT_NAMES:
      for name in (mixtures.train_mixture_name(split),
                   mixtures.test_mixture_name(split)):
        self.assertIn(name, mixtures.MIXTURE_NAMES)
        self.assertIn(name, registered)

  def test_train_mixture_rates_and_examples(self):
    rates = mixtures.mixing_rates(
        ["metaicl_glue_rte_v100", "metaicl_piqa_v100"], split="meta_train")
    self.assertEqual(rates, {"metaicl_glue_rte_v100": 437.0,
                             "metaicl_piqa_v100": 160.0})
    mix = seqio.get_mixture_or_task("metaicl_non_nli_to_nli_train_v100")
    ag_news = seqio.get_mixture_or_task("metaicl_ag_news_v100")
    self.assertEqual(mix.get_rate(ag_news), 160.0 + 7600)
    self.assertEqual(
        mixtures.mixing_rates(["metaicl_ag_news_v100"], split="meta_train",
                              cap=mixtures.METAICL_RATE_CAP),
        {"metaicl_ag_news_v100": 7760.0})
    self.assertEqual(mix.total_rate, sum(
        mixtures.mixing_rates(mixtures.TRAIN_TASKS["non_nli_to_nli"],
                              split="meta_train").values()))
    small = mixtures.register_mixture(
        "metaicl_mix_t_v1", ["metaicl_glue_rte_v100", "metaicl_piqa_v100"],
        split="meta_train", cap=200)
    self.assertEqual(small.total_rate, 360.0)
    examples = list(small.get_dataset(_LENGTHS, split="train_100", seed=0)
                    .take(3).as_numpy_iterator())
    self.assertLen(examples, 3)
    self.assertEqual(sorted(examples[0]), ["inputs", "targets"])


class ListCommandTest(absltest.TestCase):

  def _run(self, *argv) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      code = importlib.import_module("tasks.__main__").main(list(argv))
    self.assertEqual(code, 0)
    return out.getvalue().splitlines()

  def test_list_tasks_mixtures_and_a_split(self):
    self.assertContainsSubset(metaicl.TASK_NAMES, self._run("list"))
    self.assertContainsSubset(mixtures.MIXTURE_NAMES,
                              self._run("list", "--mixtures"))
    lines = self._run("list", "--split", "hr_to_lr")
    self.assertEqual(lines[0],
                     "# train mixture metaicl_hr_to_lr_train_v100: 54 tasks")
    self.assertIn("missing-train dbpedia_14", lines)
    self.assertIn("test metaicl_glue_rte_v100 [test]", lines)
    self.assertEqual(lines[-1], "missing-test financial_phrasebank")
    self.assertLen([x for x in lines if x.startswith("test ")], 25)


class RatesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    pair = {"inputs": "good", "targets": "positive"}
    testing_tasks.register_in_memory_task("mix_t_small", [pair] * 3)
    testing_tasks.register_in_memory_task("mix_t_big", [pair] * 10)

  def test_rates_are_capped(self):
    self.assertEqual(
        mixtures.mixing_rates(["mix_t_small", "mix_t_big"], split="train",
                              cap=5),
        {"mix_t_small": 3.0, "mix_t_big": 5.0})
    self.assertEqual(
        mixtures.mixing_rates(["mix_t_small", "mix_t_big"], split="train"),
        {"mix_t_small": 3.0, "mix_t_big": 10.0})
    mix = mixtures.register_mixture("mix_t_v1", ["mix_t_small", "mix_t_big"],
                                    split="train", cap=5)
    self.assertEqual(mix.get_rate(seqio.get_mixture_or_task("mix_t_big")),
                     5.0)
    self.assertEqual(mix.total_rate, 8.0)

  def test_bad_mixtures(self):
    with self.assertRaisesRegex(ValueError, "unknown seqio tasks"
                                r" \['nope_v1'\]"):
      mixtures.register_mixture("mix_t_v2", ["mix_t_small", "nope_v1"],
                                split="train")
    with self.assertRaisesRegex(ValueError, "duplicate"):
      mixtures.register_mixture("mix_t_v2", ["mix_t_small"] * 2,
                                split="train")
    with self.assertRaisesRegex(ValueError, "at least one task"):
      mixtures.register_mixture("mix_t_v2", [], split="train")
    with self.assertRaisesRegex(ValueError, "cap must be > 0"):
      mixtures.register_mixture("mix_t_v2", ["mix_t_small"], split="train",
                                cap=0)
    with self.assertRaisesRegex(ValueError, "'mix_t_small' has no split"
                                " 'meta_train'"):
      mixtures.mixing_rates(["mix_t_small"], split="meta_train")

  def test_registration_is_idempotent(self):
    for _ in range(2):
      mixtures.register_mixture("mix_t_v3", ["mix_t_small"], split="train")
    mixtures.register_metaicl_mixtures()
    self.assertIn("mix_t_v3", seqio.MixtureRegistry.names())


class PerTaskEvalInMixtureTest(absltest.TestCase):

  def test_evaluator_scores_each_task_of_a_mixture(self):
    testing_tasks.register_in_memory_task("mix_eval_a", [
        {"inputs": "good", "targets": "positive"},
        {"inputs": "bad", "targets": "negative"}])
    testing_tasks.register_in_memory_task("mix_eval_b", [
        {"inputs": "fine", "targets": "positive"},
        {"inputs": "meh", "targets": "negative"},
        {"inputs": "awful", "targets": "negative"},
        {"inputs": "dull", "targets": "negative"}])
    mixtures.register_mixture("mix_eval_v1", ["mix_eval_a", "mix_eval_b"],
                              split="validation", cap=100)
    evaluator = seqio.Evaluator(
        mixture_or_task_name="mix_eval_v1",
        feature_converter=seqio.EncDecFeatureConverter(pack=False),
        eval_split="validation", sequence_length=_LENGTHS,
        use_memory_cache=False, async_compute_metrics=False)
    negative = vocab.t5_vocabulary().encode("negative") + [1]

    def predict_fn(ds, model_feature_shapes=None):  # Always "negative".
      del model_feature_shapes
      return [(i, negative) for i, _ in ds.as_numpy_iterator()]

    metrics, _ = evaluator.evaluate(compute_metrics=True,
                                    predict_fn=predict_fn,
                                    score_fn=lambda *a, **k: [])
    self.assertEqual(metrics.result(),
                     {"mix_eval_a": {"accuracy": 50.0},
                      "mix_eval_b": {"accuracy": 75.0}})


if __name__ == "__main__":
  absltest.main()
