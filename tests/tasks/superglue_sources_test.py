"""Tests for tasks.superglue_sources (real jsonl files + a temp data root)."""

import collections
import hashlib
import json
import os
import pathlib
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized

from prompt_jax.data import root as data_root_lib
from tasks import superglue_sources as sg


def _digest(ids) -> str:
  return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]


def _sha(text: str) -> str:
  return hashlib.sha256(text.encode()).hexdigest()[:12]


class SuperGlueSourcesTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("boolq", "boolq", 3270), ("cb", "cb", 56), ("copa", "copa", 100),
      ("rte", "rte", 277), ("wic", "wic", 638), ("wsc", "wsc", 104),
      ("multirc", "multirc", 4848),
  )
  def test_row_counts(self, name, validation):
    src = sg.get_superglue_source(name)
    self.assertEqual(src.splits, sg.SPLITS)
    counts = {s: src.num_input_examples(s) for s in src.splits}
    few = (154, 167) if name == "multirc" else (32, 32)  # MultiRC: answers.
    self.assertEqual(counts["train"], few[0])
    self.assertEqual(counts["dev32"], few[1])
    self.assertEqual(counts["validation"], validation)
    self.assertEqual(counts["train_from_val"] + counts["test_from_val"],
                     validation)

  def test_multirc_flattening(self):
    src = sg.multirc_source()
    for split, passages, questions in (("train", 32, 32), ("dev32", 32, 32),
                                       ("validation", 83, 953)):
      cols = src.columns(split)
      self.assertLen(set(cols["paragraph_idx"].tolist()), passages)
      self.assertLen(set(cols["question_idx"].tolist()), questions)
      self.assertLen(set(cols["idx"].tolist()), len(cols["idx"]))
    val = src.examples("validation")
    self.assertEqual([(e["question_idx"], e["idx"], e["answer"], e["label"])
                      for e in val[7:10]],
                     [(1, 7, "A force", 1), (1, 8, "Pressure", 0),
                      (2, 9, "How much an objects motion changes when a force"
                       " is applied, has very little to do with the objects"
                       " mass", 0)])
    self.assertEqual(collections.Counter(e["label"] for e in val),
                     {0: 2773, 1: 2075})

  def test_label_distributions(self):
    want = {"boolq": {1: 2033, 0: 1237}, "cb": {1: 28, 0: 23, 2: 5},
            "rte": {0: 146, 1: 131}, "wic": {0: 319, 1: 319},
            "copa": {0: 55, 1: 45}, "wsc": {0: 66, 1: 38}}
    for name, counts in want.items():
      labels = sg.get_superglue_source(name).columns("validation")["label"]
      self.assertEqual(collections.Counter(labels.tolist()), counts, name)

  def test_first_validation_rows_exactly(self):
    first = {n: sg.get_superglue_source(n).examples("validation")[0]
             for n in sg.NAMES}
    self.assertEqual(first["cb"], {
        "idx": 0, "premise": "Valence the void-brain, Valence the virtuous"
        " valet. Why couldn't the figger choose his own portion of titanic"
        " anatomy to shaft? Did he think he was helping?",
        "hypothesis": "Valence was helping", "label": 1})
    self.assertEqual(first["copa"], {
        "idx": 0, "premise": "The man turned on the faucet.",
        "choice1": "The toilet filled with water.",
        "choice2": "Water flowed from the spout.", "question": "effect",
        "label": 1})
    self.assertEqual(first["rte"], {
        "idx": 0, "premise": "Dana Reeve, the widow of the actor Christopher"
        " Reeve, has died of lung cancer at age 44, according to the"
        " Christopher Reeve Foundation.",
        "hypothesis": "Christopher Reeve had an accident.", "label": 1})
    self.assertEqual(first["wic"], {
        "idx": 0, "word": "class",
        "sentence1": "An emerging professional class.",
        "sentence2": "Apologizing for losing your temper, even though you"
        " were badly provoked, showed real class.",
        "start1": 25, "end1": 30, "start2": 85, "end2": 90, "label": 0})
    wsc = first["wsc"]
    self.assertEqual((wsc["idx"], wsc["span1_index"], wsc["span1_text"],
                      wsc["span2_index"], wsc["span2_text"], wsc["label"],
                      _sha(wsc["text"])),
                     (0, 32, "anyone", 47, "him", 0, "77b0312e9dcb"))
    boolq = first["boolq"]
    self.assertEqual(
        (boolq["idx"], boolq["question"], boolq["label"],
         _sha(boolq["passage"])),
        (0, "does ethanol take more energy make that produces", 0,
         "727728a7a3f5"))
    multirc = first["multirc"]
    self.assertEqual(
        {k: v for k, v in multirc.items() if k != "paragraph"},
        {"idx": 0, "paragraph_idx": 0, "question_idx": 0,
         "question": "Would the mass of a baseball affect how much force you"
         " have to use to pick it up?", "answer": "No", "label": 0})
    self.assertEqual(_sha(multirc["paragraph"]), "240f2c26895e")

  def test_first_train_rows(self):
    self.assertEqual(sg.wic_source().examples("train")[0], {
        "idx": 4232, "word": "feel", "sentence1": "You make me feel naked.",
        "sentence2": "She felt small and insignificant.", "start1": 12,
        "end1": 16, "start2": 4, "end2": 8, "label": 1})
    self.assertEqual(sg.cb_source().examples("dev32")[0]["idx"], 59)
    self.assertEqual(sg.copa_source().examples("train")[0]["idx"], 249)

  @parameterized.named_parameters(
      ("boolq", "boolq", [2, 4, 5], "44b340e08661d198", [0, 1, 3],
       "a1e0ebe9c291e20a"),
      ("rte", "rte", [2, 3, 4], "741c7070a6f94e7d", [0, 1, 5],
       "800211024d8f3c89"),
      ("multirc", "multirc", [145, 146, 147], "d89531c2e8c74032", [0, 1, 2],
       "59850d17e92f9cc8"),
  )
  def test_from_val_split_stable(self, name, train3, train_digest, test3,
                                 test_digest):
    src = sg.get_superglue_source(name)
    train = src.columns("train_from_val")["idx"].tolist()
    test = src.columns("test_from_val")["idx"].tolist()
    self.assertEqual((train[:3], _digest(train), test[:3], _digest(test)),
                     (train3, train_digest, test3, test_digest))

  @parameterized.parameters(*sg.NAMES)
  def test_from_val_split_disjoint_and_complete(self, name):
    src = sg.get_superglue_source(name)
    key = "paragraph_idx" if name == "multirc" else "idx"
    val = src.columns("validation")
    parts = [src.columns(s) for s in ("train_from_val", "test_from_val")]
    keys = [set(p[key].tolist()) for p in parts]
    self.assertEmpty(keys[0] & keys[1])
    self.assertEqual(sorted(parts[0]["idx"].tolist()
                            + parts[1]["idx"].tolist()),
                     sorted(val["idx"].tolist()))
    n = len(set(val[key].tolist()))
    self.assertEqual((len(keys[1]), len(keys[0])), (n // 2, n - n // 2))
    # The documented rule: keys by sha256("superglue/<name>/from_val/v1:k").
    order = sorted(set(val[key].tolist()), key=lambda k: hashlib.sha256(
        f"superglue/{name}/from_val/v1:{k}".encode()).digest())
    self.assertEqual(keys[1], set(order[:n // 2]))

  def test_dataset_matches_schema(self):
    for name in sg.NAMES:
      src = sg.get_superglue_source(name)
      ds = src.get_dataset("dev32", shuffle=False)
      self.assertEqual(ds.element_spec, sg.SCHEMAS[name].element_spec())
      row = next(ds.as_numpy_iterator())
      want = src.examples("dev32")[0]
      self.assertEqual({k: v.decode() if isinstance(v, bytes) else int(v)
                        for k, v in row.items()}, want)


def _jsonl(rows) -> bytes:
  return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


_CB_OK = {"premise": "p", "hypothesis": "h", "label": "neutral", "idx": 0}
_ANSWER = {"text": "a", "idx": 0, "label": 1}
_MULTIRC_OK = {"idx": 0, "passage": {"text": "t", "questions": [
    {"question": "q", "idx": 0, "answers": [_ANSWER, dict(_ANSWER, idx=1)]}]}}


class MalformedSuperGlueTest(parameterized.TestCase):

  def _error(self, task_dir: str, name: str, data: bytes) -> str:
    root = pathlib.Path(self.create_tempdir().full_path)
    path = root / "superglue" / task_dir / "val.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    with mock.patch.dict(os.environ, {data_root_lib.ENV_VAR: str(root)}):
      with self.assertRaises(ValueError) as ctx:
        sg.get_superglue_source(name).num_input_examples("validation")
    msg = str(ctx.exception)
    self.assertNotIn("\n", msg)
    return msg

  @parameterized.named_parameters(
      ("unknown_label", [_CB_OK, dict(_CB_OK, label="maybe")],
       r"val\.jsonl:2: unknown label 'maybe'; expected one of"
       r" \['entailment', 'contradiction', 'neutral'\]$"),
      ("missing_field", [{"premise": "p", "label": "neutral", "idx": 1}],
       r"val\.jsonl:1: missing field 'hypothesis'$"),
      ("wrong_type", [_CB_OK, _CB_OK, dict(_CB_OK, idx="3")],
       r"val\.jsonl:3: field 'idx' must be int, got str"),
  )
  def test_cb_errors(self, rows, pattern):
    self.assertRegex(self._error("CB", "cb", _jsonl(rows)), pattern)

  def test_bad_json_line(self):
    msg = self._error("CB", "cb", _jsonl([_CB_OK]) + b"{oops\n")
    self.assertRegex(msg, r"/superglue/CB/val\.jsonl:2: malformed JSON")

  def test_multirc_nested_errors(self):
    bad = json.loads(json.dumps(_MULTIRC_OK))
    del bad["passage"]["questions"][0]["answers"][1]["label"]
    msg = self._error("MultiRC", "multirc", _jsonl([_MULTIRC_OK, bad]))
    self.assertRegex(msg, r"val\.jsonl:2: passage\.questions\[0\]"
                     r"\.answers\[1\]: missing field 'label'$")
    bad["passage"]["questions"][0]["answers"][1]["label"] = 2
    msg = self._error("MultiRC", "multirc", _jsonl([bad]))
    self.assertRegex(msg, r"val\.jsonl:1: .*answers\[1\]: unknown label 2")

  def test_wsc_target_error(self):
    row = {"text": "t", "idx": 0, "label": True,
           "target": {"span1_index": 0, "span1_text": "t", "span2_index": 1}}
    msg = self._error("WSC", "wsc", _jsonl([row]))
    self.assertRegex(msg, r"val\.jsonl:1: target: missing field 'span2_text'")

  def test_tmp_root_rows_and_missing_file(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    (root / "superglue/MultiRC").mkdir(parents=True)
    (root / "superglue/MultiRC/val.jsonl").write_bytes(_jsonl([_MULTIRC_OK]))
    src = sg.multirc_source(root)
    self.assertEqual([(e["idx"], e["question_idx"], e["label"])
                      for e in src.examples("validation")],
                     [(0, 0, 1), (1, 0, 1)])
    with self.assertRaisesRegex(
        FileNotFoundError, r"^Data file for split 'dev32' not found: .*"
        r"superglue/MultiRC/dev32\.jsonl$"):
      src.num_input_examples("dev32")

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, "Unknown SuperGLUE task 'record'"):
      sg.get_superglue_source("record")
    with self.assertRaisesRegex(ValueError, "source must be 'local' or"):
      sg.rte_source(source="hub")


if __name__ == "__main__":
  absltest.main()
