"""Tests for tasks.sentence_classification (SST-2 from the shared data root).

Hermetic cases write tiny Kim-format files to a temp data root; the SST-2
cases read the real files (row counts, first rows).
"""

import importlib
import os
import pathlib
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import seqio

from prompt_jax.data import seqio_batches as data
from prompt_jax.data import root as data_root_lib
import tasks
from tasks import sentence_classification as sc
from tasks import vocab

_SST2_FILE = "sentence_cls/sst2/stsa.binary.{}"
_LENGTHS = {"inputs": 128, "targets": 4}


def _write_sst2(root: pathlib.Path, split_file: str, text: bytes) -> None:
  path = root / _SST2_FILE.format(split_file)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(text)


def _examples(task_name: str, split: str, n: int) -> list[dict]:
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(_LENGTHS, split=split, shuffle=False)
  return list(ds.take(n).as_numpy_iterator())


class SentenceClassificationTest(parameterized.TestCase):

  def test_task_names_registered(self):
    self.assertEqual(sc.TASK_NAMES, ("sst2_v100",))
    self.assertContainsSubset(sc.TASK_NAMES, tasks.TASK_NAMES)
    for name in tasks.TASK_NAMES:
      self.assertIn(name, seqio.TaskRegistry.names())

  def test_registration_is_idempotent(self):
    importlib.reload(sc)
    importlib.reload(sc)
    self.assertEqual(
        seqio.TaskRegistry.get("sst2_v100").source.splits,
        ("train", "validation", "test"))

  def test_sst2_row_counts(self):
    source = seqio.get_mixture_or_task("sst2_v100").source
    self.assertEqual(
        {s: source.num_input_examples(s) for s in source.splits},
        {"train": 6920, "validation": 872, "test": 1821})

  def test_sst2_first_rows_formatted(self):
    rows = _examples("sst2_v100", "validation", 2)
    want_inputs = [
        "sst2 sentence: one long string of cliches .",
        "sst2 sentence: if you 've ever entertained the notion of doing what"
        " the title of this film implies , what sex with strangers actually"
        " shows may put you off the idea forever .",
    ]
    v = vocab.t5_vocabulary()
    for row, want in zip(rows, want_inputs):
      self.assertEqual(row["inputs_pretokenized"].decode(), want)
      self.assertEqual(v.decode(row["inputs"].tolist()), want)
      self.assertEqual(row["inputs"][-1], 1)  # EOS.
      self.assertEqual(row["targets"].tolist(), v.encode("negative") + [1])
    self.assertEqual(rows[0]["inputs"][:8].tolist(),
                     v.encode("sst2 sentence:") + v.encode("one"))

  def test_hermetic_task_formats_exactly(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    _write_sst2(root, "train", b"1 good fun .\n0 a mess\n")
    sc.register_sentence_task("sc_test_tmp_v1", sc.sst2_source(root),
                              prefix="sst2 sentence: ",
                              label_words=sc.SST2_LABELS)
    self.addCleanup(seqio.TaskRegistry.remove, "sc_test_tmp_v1")
    rows = _examples("sc_test_tmp_v1", "train", 3)
    self.assertEqual(
        [(r["idx"], r["label"], r["inputs_pretokenized"],
          r["targets_pretokenized"]) for r in rows],
        [(0, 1, b"sst2 sentence: good fun .", b"positive"),
         (1, 0, b"sst2 sentence: a mess", b"negative")])

  @parameterized.named_parameters(
      ("bad_label", b"1 ok\n2 three classes?\n", 2),
      ("no_text", b"1 ok\n0 fine\n1\n", 3),
      ("blank_line", b"1 ok\n\n0 fine\n", 2),
      ("not_a_label", b"positive great\n", 1),
      ("bad_utf8", b"1 ok\n0 caf\xe9\n", 2),
  )
  def test_malformed_line_names_file_and_line(self, text, lineno):
    root = pathlib.Path(self.create_tempdir().full_path)
    _write_sst2(root, "train", text)
    with self.assertRaises(ValueError) as ctx:
      sc.sst2_source(root).num_input_examples("train")
    msg = str(ctx.exception)
    self.assertNotIn("\n", msg)
    self.assertIn(f"stsa.binary.train:{lineno}: ", msg)

  def test_malformed_file_via_env_root_and_get_dataset(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    _write_sst2(root, "dev", b"0 fine\n1 ok\nbroken\n")
    with mock.patch.dict(os.environ, {data_root_lib.ENV_VAR: str(root)}):
      cfg = data.DatasetConfig("sst2_v100", _LENGTHS, "validation", 2)
      with self.assertRaisesRegex(ValueError, r"stsa\.binary\.dev:3: "):
        data.get_dataset(cfg)

  def test_split_only_on_newline(self):
    # NEL (U+0085) and CRLF must not split or leak into rows.
    labels, texts = sc.parse_kim_lines(
        "1 a\u0085b\r\n0 c\n".encode(), "f", num_classes=2)
    self.assertEqual(labels.tolist(), [1, 0])
    self.assertEqual(texts, ["a\u0085b", "c"])
    labels, texts = sc.parse_kim_lines(b"1 caf\xe9\x85 x", "f", 2, "latin-1")
    self.assertEqual(texts, ["caf\xe9\x85 x"])

  def test_missing_file_and_root(self):
    root = self.create_tempdir().full_path
    with self.assertRaisesRegex(
        FileNotFoundError, r"^Data file for split 'test' not found: .*"
        r"stsa\.binary\.test$"):
      sc.sst2_source(root).num_input_examples("test")
    with mock.patch.dict(os.environ, {data_root_lib.ENV_VAR: "/nonexistent"}):
      with self.assertRaisesRegex(FileNotFoundError,
                                  "/nonexistent.*PROMPT_JAX_DATA_ROOT"):
        sc.sst2_source().num_input_examples("train")

  def test_postprocessor_and_accuracy(self):
    task = seqio.get_mixture_or_task("sst2_v100")
    targets = [task.postprocess_fn(t, example={}, is_target=True)
               for t in ("positive", "negative", "positive", "negative")]
    preds = [task.postprocess_fn(p, example={}, is_target=False)
             for p in ("positive", " negative ", "positve", "")]
    self.assertEqual(targets, [1, 0, 1, 0])
    self.assertEqual(preds, [1, 0, -1, -1])
    (metric_fn,) = task.metric_fns
    # Unknown predictions count as wrong: 2 of 4, not 2 of 2.
    self.assertEqual(metric_fn(targets, preds), {"accuracy": 50.0})
    with self.assertRaisesRegex(ValueError, "'neutral' is not one of"):
      task.postprocess_fn("neutral", example={}, is_target=True)
    with self.assertRaisesRegex(ValueError, "2 targets but 1 predictions"):
      sc.accuracy([0, 1], [0])


if __name__ == "__main__":
  absltest.main()
