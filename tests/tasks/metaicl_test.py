"""Tests for tasks.metaicl (the MetaICL pool read from the shared data root).

Real files: the literal name tuples against the folders, every split's row
count against MANIFEST.tsv, exact first rows. Hermetic: malformed lines in a
temporary data root, metrics on hand-computed cases, import reads no file.
"""

import csv
import importlib
import json
import os
import pathlib
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import seqio
import tensorflow as tf

from prompt_jax.data import root as data_root_lib
import tasks
from tasks import metaicl
from tasks import vocab

_LENGTHS = {"inputs": 512, "targets": 16}
_CB_FIRST_INPUT = (
    "premise: Valence the void-brain, Valence the virtuous valet. Why"
    " couldn't the figger choose his own portion of titanic anatomy to"
    " shaft? Did he think he was helping? [SEP] hypothesis: Valence was"
    " helping")


def _metaicl_dir() -> pathlib.Path:
  return data_root_lib.data_root() / "metaicl"


def _manifest_lines() -> dict[str, int]:
  """metaicl/... path → line count, from the data MANIFEST."""
  path = data_root_lib.data_root() / "MANIFEST.tsv"
  with open(path, encoding="utf-8", newline="") as f:
    return {row["path"]: int(row["lines"])
            for row in csv.DictReader(f, delimiter="\t")
            if row["path"].startswith("metaicl/") and row["lines"]}


def _first(task_name: str, split: str) -> dict:
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(_LENGTHS, split=split, shuffle=False)
  return next(ds.as_numpy_iterator())


def _line(task="toy", text="x", output="a", options=("a", "b")) -> str:
  return json.dumps({"task": task, "input": text, "output": output,
                     "options": list(options)})


class NamesTest(absltest.TestCase):

  def test_folders_and_names_match_the_data(self):
    folders = sorted(p.name for p in _metaicl_dir().iterdir()
                     if p.is_dir() and p.name != "config")
    self.assertLen(folders, 113)
    self.assertEqual(metaicl.TASK_FOLDERS, tuple(folders))
    self.assertEqual(metaicl.TASK_NAMES,
                     tuple(metaicl.task_name(f) for f in folders))
    self.assertLen(set(metaicl.TASK_NAMES), 113)
    self.assertEqual(metaicl.task_name("glue-rte"), "metaicl_glue_rte_v100")
    self.assertEqual(metaicl.FOLDER_OF["metaicl_ethos_race_v100"],
                     "ethos-race")

  def test_test_files_match_the_data(self):
    with_test = tuple(f for f in metaicl.TASK_FOLDERS
                      if (_metaicl_dir() / f / f"{f}_16_100_test.jsonl")
                      .is_file())
    self.assertLen(with_test, 73)
    self.assertEqual(metaicl.TASKS_WITH_TEST_FILE, with_test)

  def test_every_name_registered_and_listed(self):
    registered = set(seqio.TaskRegistry.names())
    for name in metaicl.TASK_NAMES:
      self.assertIn(name, registered)
      self.assertIn(name, tasks.TASK_NAMES)

  def test_splits(self):
    rte = seqio.get_mixture_or_task("metaicl_glue_rte_v100").source
    self.assertEqual(
        rte.splits,
        ("train_13", "dev_13", "train_21", "dev_21", "train_42", "dev_42",
         "train_87", "dev_87", "train_100", "dev_100", "test", "meta_train",
         "train_full"))
    piqa = seqio.get_mixture_or_task("metaicl_piqa_v100").source
    self.assertNotIn("test", piqa.splits)
    with self.assertRaisesRegex(ValueError, "'piqa' has no split 'test'"):
      piqa.paths("test")

  def test_import_reads_no_file(self):
    with mock.patch.dict(os.environ,
                         {data_root_lib.ENV_VAR: "/nonexistent/root"}):
      importlib.reload(metaicl)  # Re-registers all 113 tasks.
      with self.assertRaisesRegex(FileNotFoundError, "/nonexistent/root"):
        seqio.get_mixture_or_task("metaicl_ag_news_v100").source.read(
            "test")
    importlib.reload(metaicl)
    self.assertEqual(metaicl.task_type("ag_news"), "classification")


class RowsTest(parameterized.TestCase):

  def test_every_file_has_its_manifest_row_count(self):
    manifest = _manifest_lines()
    checked = 0
    for name in metaicl.TASK_NAMES:
      source = seqio.get_mixture_or_task(name).source
      files = metaicl.split_files(source.folder)
      for split in source.splits:
        want = sum(manifest[f"metaicl/{source.folder}/{f}"]
                   for f in files[split])
        self.assertEqual(source.num_input_examples(split), want,
                         f"{name} {split}")
        checked += 1
    self.assertEqual(checked, 113 * 11 + 73 + 1)

  @parameterized.parameters(
      ("metaicl_glue_rte_v100", "train_13", 16),
      ("metaicl_glue_rte_v100", "dev_87", 16),
      ("metaicl_glue_rte_v100", "test", 277),
      ("metaicl_glue_rte_v100", "train_full", 2490),
      ("metaicl_glue_rte_v100", "meta_train", 160 + 277),
      ("metaicl_ag_news_v100", "train_100", 16),
      ("metaicl_ag_news_v100", "test", 7600),
      ("metaicl_glue_mnli_v100", "test", 9815),
      ("metaicl_superglue_cb_v100", "test", 56),
      ("metaicl_piqa_v100", "meta_train", 160),
  )
  def test_row_counts(self, name, split, rows):
    source = seqio.get_mixture_or_task(name).source
    self.assertEqual(source.num_input_examples(split), rows)

  def test_first_cb_test_row_formatted(self):
    row = _first("metaicl_superglue_cb_v100", "test")
    self.assertEqual(row["inputs_pretokenized"].decode(), _CB_FIRST_INPUT)
    self.assertEqual(row["targets_pretokenized"], b"contradiction")
    self.assertEqual(row["options"].tolist(),
                     [b"contradiction", b"entailment", b"neutral"])
    self.assertEqual(row["idx"], 0)
    v = vocab.t5_vocabulary()
    self.assertEqual(row["inputs"].tolist(), v.encode(_CB_FIRST_INPUT) + [1])
    self.assertEqual(row["targets"].tolist(), v.encode("contradiction") + [1])

  def test_free_form_row_has_no_options(self):
    row = _first("metaicl_lama_squad_v100", "test")
    self.assertEqual(row["options"].tolist(), [])
    self.assertEqual(row["targets_pretokenized"], b"Switzerland")

  def test_rte_train_row(self):
    row = _first("metaicl_glue_rte_v100", "train_13")
    self.assertTrue(row["inputs_pretokenized"].startswith(
        b"sentence 1: Reagan was seriously wounded by a bullet"))
    self.assertEqual(row["targets_pretokenized"], b"entailment")
    self.assertEqual(row["options"].tolist(),
                     [b"entailment", b"not_entailment"])

  def test_task_types(self):
    self.assertEqual(metaicl.task_type("superglue-cb"), "classification")
    self.assertEqual(metaicl.task_type("superglue-copa"), "multi-choice")
    self.assertEqual(metaicl.task_type("lama-squad"), "free-form")


class BadInputTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("not_json", b'{"task": "toy"\n', r"f\.jsonl:2: not a JSON object"),
      ("blank_line", b"\n", r"f\.jsonl:2: not a JSON object"),
      ("missing_key", b'{"task": "toy", "input": "x", "output": "a"}\n',
       r"f\.jsonl:2: expected the keys \['input', 'options', 'output',"
       r" 'task'\], got \['input', 'output', 'task'\]"),
      ("unknown_label", _line(output="c").encode() + b"\n",
       r"f\.jsonl:2: unknown label: output 'c' is not one of the options"),
      ("wrong_task", _line(task="other").encode() + b"\n",
       r"f\.jsonl:2: task 'other' in the folder of 'toy'"),
      ("options_not_strings", b'{"task": "toy", "input": "x", "output":'
       b' "a", "options": ["a", 1]}\n', r"f\.jsonl:2: 'input' and 'output'"),
  )
  def test_malformed_second_line(self, line, error):
    data = _line().encode() + b"\n" + line
    with self.assertRaisesRegex(ValueError, error):
      metaicl.parse_metaicl_lines(data, "f.jsonl", "toy")

  def test_good_lines_and_one_trailing_newline(self):
    data = (_line() + "\n" + _line(text="y", output="", options=()) +
            "\n").encode()
    self.assertEqual(metaicl.parse_metaicl_lines(data, "f.jsonl", "toy"),
                     [("x", "a", ("a", "b")), ("y", "", ())])

  def test_registered_task_on_a_bad_file_names_file_and_line(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    folder = root / "metaicl" / "toy"
    folder.mkdir(parents=True)
    (folder / "toy_16_13_train.jsonl").write_text(
        _line() + "\n" + _line(output="zzz") + "\n")
    metaicl.register_metaicl_task("toy", root=root, name="metaicl_toy_t_v1")
    task = seqio.get_mixture_or_task("metaicl_toy_t_v1")
    with self.assertRaisesRegex(
        ValueError, r"toy_16_13_train\.jsonl:2: unknown label: output 'zzz'"):
      task.get_dataset(_LENGTHS, split="train_13")
    with self.assertRaisesRegex(FileNotFoundError,
                                "split 'dev_13' not found: .*toy_16_13_dev"):
      task.source.num_input_examples("dev_13")
    seqio.TaskRegistry.remove("metaicl_toy_t_v1")


class FormatAndMetricsTest(parameterized.TestCase):

  def test_kshot_text(self):
    demos = [("2+2", "4"), ("1+1", "2")]
    self.assertEqual(metaicl.kshot_text(demos, "3+3"), "2+2 4 1+1 2 3+3")
    self.assertEqual(metaicl.kshot_text([], "3+3"), "3+3")

  def test_prepend_demonstrations_matches_kshot_text(self):
    demos = [("a b", "yes"), ("c", "no")]
    ds = tf.data.Dataset.from_tensor_slices({"inputs": ["q1", "q 2"]})
    out = metaicl.prepend_demonstrations(ds, demonstrations=demos)
    self.assertEqual([ex["inputs"].decode() for ex in out.as_numpy_iterator()],
                     [metaicl.kshot_text(demos, "q1"),
                      metaicl.kshot_text(demos, "q 2")])

  @parameterized.named_parameters(
      # a: P 1/1, R 1/2 → 2/3; b: P 1/2, R 1/2 → 1/2; "c" is never gold,
      # so no term (sklearn would give 38.9): mean 7/12.
      ("mixed", ["a", "a", "b", "b"], ["a", "b", "b", "c"], 700 / 12),
      # a: P 1/2, R 1 → 2/3; b never predicted: recall 0 → F1 0.
      ("never_predicted", ["a", "b"], ["a", "a"], 100 / 3),
      ("perfect", ["x", "y"], [" x", "y "], 100.0),
  )
  def test_macro_f1(self, targets, predictions, want):
    self.assertAlmostEqual(metaicl.macro_f1(targets, predictions), want)

  def test_metrics_by_task_type(self):
    cls = metaicl.metaicl_metrics(["a", "b"], ["a", "a"],
                                  folder="superglue-cb")
    self.assertEqual(sorted(cls), ["accuracy", "macro_f1"])
    self.assertEqual(cls["accuracy"], 50.0)
    self.assertAlmostEqual(cls["macro_f1"], 100 / 3)
    self.assertEqual(
        metaicl.metaicl_metrics(["a", "b"], ["a", "a"],
                                folder="superglue-copa"), {"accuracy": 50.0})
    with self.assertRaisesRegex(ValueError, "as many predictions"):
      metaicl.exact_match_accuracy(["a"], [])

  def test_decode_eval_through_seqio_evaluator(self):
    evaluator = seqio.Evaluator(
        mixture_or_task_name="metaicl_superglue_cb_v100",
        feature_converter=seqio.EncDecFeatureConverter(pack=False),
        eval_split="test", sequence_length=_LENGTHS,
        use_memory_cache=False, async_compute_metrics=False)
    contradiction = vocab.t5_vocabulary().encode("contradiction") + [1]

    def predict_fn(ds, model_feature_shapes=None):
      del model_feature_shapes
      return [(i, contradiction) for i, _ in ds.as_numpy_iterator()]

    metrics, _ = evaluator.evaluate(compute_metrics=True,
                                    predict_fn=predict_fn,
                                    score_fn=lambda *a, **k: [])
    result = metrics.result()["metaicl_superglue_cb_v100"]
    rows = seqio.get_mixture_or_task("metaicl_superglue_cb_v100").source.read(
        "test")
    n_contradiction = sum(r[1] == "contradiction" for r in rows)
    self.assertAlmostEqual(result["accuracy"],
                           100.0 * n_contradiction / len(rows))
    self.assertIn("macro_f1", result)


if __name__ == "__main__":
  absltest.main()
