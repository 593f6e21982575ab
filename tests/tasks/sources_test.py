"""Tests for tasks.sources (shared pieces) and tasks.sentence_sources.

The sentence cases read the real Kim files from the data root (row counts,
first rows, the carved splits); the generic cases use a temp data root.
"""

import hashlib
import os
import pathlib
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import seqio
import tensorflow as tf

from prompt_jax.data import root as data_root_lib
from tasks import sentence_sources as ss
from tasks import sources


def _digest(ids) -> str:
  return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]


def _write(root: pathlib.Path, relpath: str, data: bytes) -> None:
  path = root / relpath
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)


class HashSplitTest(parameterized.TestCase):

  def test_sizes_order_and_coverage(self):
    parts = (("test", 0.1), ("validation", 0.1), ("train", 0.8))
    got = sources.hash_split(list(range(25)), "s", parts)
    self.assertEqual({k: len(v) for k, v in got.items()},
                     {"test": 2, "validation": 2, "train": 21})
    self.assertEqual(sorted(np.concatenate(list(got.values())).tolist()),
                     list(range(25)))
    # The documented rule, computed independently: order by sha256(salt:key).
    order = sorted(range(25), key=lambda k: hashlib.sha256(
        f"s:{k}".encode()).digest())
    self.assertEqual(got["test"].tolist(), sorted(order[:2]))
    self.assertEqual(got["validation"].tolist(), sorted(order[2:4]))

  def test_rows_sharing_a_key_stay_together(self):
    keys = [7, 7, 3, 3, 3, 9]
    got = sources.hash_split(keys, "x", (("a", 0.5), ("b", 0.5)))
    for rows in got.values():
      in_part = {keys[r] for r in rows}
      self.assertEqual(sorted(rows.tolist()),
                       [i for i, k in enumerate(keys) if k in in_part])
    self.assertEqual(sum(len(v) for v in got.values()), len(keys))


class JsonlTest(parameterized.TestCase):

  _FIELDS = {"idx": int, "premise": str, "label": (str, bool)}

  def test_parses_rows_and_allows_trailing_newline(self):
    data = (b'{"idx": 0, "premise": "p", "label": "x", "extra": 1}\r\n'
            b'{"idx": 1, "premise": "q", "label": true}\n')
    rows = sources.read_jsonl(data, "f.jsonl", self._FIELDS)
    self.assertEqual(rows, [
        {"idx": 0, "premise": "p", "label": "x", "extra": 1},
        {"idx": 1, "premise": "q", "label": True}])

  @parameterized.named_parameters(
      ("bad_json", b'{"idx": 0, "premise": "p", "label": "x"}\n{"idx": 1,\n',
       2, "malformed JSON"),
      ("blank_line", b'{"idx": 0, "premise": "p", "label": "x"}\n\n', 2,
       "malformed JSON"),
      ("not_object", b'[1, 2]\n', 1, "expected a JSON object, got list"),
      ("missing", b'{"idx": 0, "label": "x"}\n', 1,
       "missing field 'premise'"),
      ("wrong_type", b'{"idx": "0", "premise": "p", "label": "x"}\n', 1,
       "field 'idx' must be int, got str"),
      ("bool_is_not_int", b'{"idx": true, "premise": "p", "label": "x"}\n',
       1, "field 'idx' must be int, got bool"),
      ("bad_utf8", b'{"idx": 0, "premise": "\xff", "label": "x"}\n', 1,
       "malformed JSON"),
  )
  def test_errors_name_file_and_line(self, data, lineno, what):
    with self.assertRaises(ValueError) as ctx:
      sources.read_jsonl(data, "dir/f.jsonl", self._FIELDS)
    msg = str(ctx.exception)
    self.assertNotIn("\n", msg)
    self.assertStartsWith(msg, f"dir/f.jsonl:{lineno}: ")
    self.assertIn(what, msg)

  def test_label_id(self):
    names = ("False", "True")
    self.assertEqual(sources.label_id(True, names, "w"), 1)
    self.assertEqual(sources.label_id("False", names, "w"), 0)
    self.assertEqual(sources.label_id(1, ("choice1", "choice2"), "w"), 1)
    for bad in ("maybe", 2, -1, None):
      with self.assertRaisesRegex(
          ValueError, r"^f:3: unknown label .*; expected one of"):
        sources.label_id(bad, names, "f:3")


class SentenceSourcesTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("sst2", "sst2", {"train": 6920, "validation": 872, "test": 1821}),
      ("sst5", "sst5", {"train": 8544, "validation": 1101, "test": 2210}),
      ("trec", "trec", {"train": 5452, "test": 500}),
      ("mr", "mr", {"train": 8530, "validation": 1066, "test": 1066}),
      ("cr", "cr", {"train": 3021, "validation": 377, "test": 377}),
      ("mpqa", "mpqa", {"train": 8486, "validation": 1060, "test": 1060}),
      ("subj", "subj", {"train": 8000, "validation": 1000, "test": 1000}),
  )
  def test_row_counts(self, name, want):
    src = ss.get_sentence_source(name)
    self.assertEqual({s: src.num_input_examples(s) for s in src.splits},
                     want)

  @parameterized.named_parameters(
      ("sst2", "sst2", "validation", 0, "one long string of cliches ."),
      ("sst5", "sst5", "train", 4, "a stirring , funny and finally transporting"
       " re-imagining of beauty and the beast and 1930s horror films"),
      ("trec", "trec", "test", 5, "How far is it from Denver to Aspen ?"),
      ("mr", "mr", "train", 0, "simplistic , silly and tedious ."),
      ("mpqa", "mpqa", "train", 0, "complaining"),
      ("subj", "subj", "train", 0, "smart and alert , thirteen conversations"
       " about one thing is a small gem ."),
  )
  def test_first_row(self, name, split, label, sentence):
    src = ss.get_sentence_source(name)
    self.assertEqual(src.examples(split)[0],
                     {"idx": 0, "label": label, "sentence": sentence})
    names = ss.SCHEMAS[name].label_names
    self.assertLen(names, {"sst5": 5, "trec": 6}.get(name, 2))

  def test_trec_labels_match_raw_coarse_names(self):
    # TREC.*.all are the raw files with the coarse class as an id.
    root = data_root_lib.data_root() / "sentence_cls/trec"
    names = ss.SCHEMAS["trec"].label_names
    src = ss.trec_source()
    for split, raw in (("train", "raw_TREC.train"), ("test", "raw_TREC.test")):
      coarse = [line.split(b":")[0].decode() for line in
                (root / raw).read_bytes().split(b"\n") if line]
      self.assertEqual([names[i] for i in src.columns(split)["label"]],
                       coarse)
    self.assertEqual(src.examples("train")[65]["sentence"],
                     "Which city has the oldest relationship as a"
                     " sister\xf0city with Los Angeles ?")

  def test_encodings(self):
    # SST-2 is UTF-8 (a Latin-1 decode would give mojibake).
    self.assertEndsWith(ss.sst2_source().examples("test")[1]["sentence"],
                        "like rancid cr\u00e8me br\u00fbl\u00e9e .")
    # MR and Subj are Latin-1 with NEL bytes that must not split rows.
    examples = {e["idx"]: e for e in ss.mr_source().examples("train")}
    self.assertEqual(examples[473]["sentence"][:16], "\x85the maudlin way")
    # A split on NEL would have made extra rows: the file has 10662 lines.
    self.assertEqual(sum(ss.mr_source().num_input_examples(s)
                         for s in ("train", "validation", "test")), 10662)
    self.assertEqual(examples[473]["label"], 0)

  def test_empty_rows_are_kept_and_only_those(self):
    for name, lines in (("cr", [769, 1368, 3691, 3775]),
                        ("mpqa", [6415, 7294, 10606])):
      src = ss.get_sentence_source(name)
      empty = [e["idx"] + 1 for s in src.splits for e in src.examples(s)
               if not e["sentence"]]
      self.assertEqual(sorted(empty), lines, name)
    with self.assertRaisesRegex(ValueError, r"stsa\.binary\.train:1: "):
      ss.parse_kim_lines(b"1 \n", "stsa.binary.train", 2)

  @parameterized.named_parameters(
      ("mr", "mr", 10662, {"train": ([0, 1, 2], "88163c37acfda991"),
                     "validation": ([19, 36, 40], "64377f6f72637529"),
                     "test": ([5, 8, 21], "dfcdc18bb5534356")}),
      ("cr", "cr", 3775, {"train": ([0, 1, 2], "efd98535811d88b1"),
                    "validation": ([16, 75, 80], "50bf6f6876997217"),
                    "test": ([6, 17, 19], "52510134344f6402")}),
      ("mpqa", "mpqa", 10606, {"train": ([0, 2, 5], "a9c98573edb3e57d"),
                       "validation": ([1, 3, 4], "97c7c4d0cc226ab9"),
                       "test": ([19, 34, 39], "7f8397785453de9d")}),
      ("subj", "subj", 10000, {"train": ([0, 1, 2], "2d3d3212d54fc4dc"),
                       "validation": ([3, 5, 21], "85e9ba0c7231a3eb"),
                       "test": ([6, 9, 15], "81dae8fd038007da")}),
  )
  def test_carved_splits_disjoint_complete_stable(self, name, total,
                                                  want):
    src = ss.get_sentence_source(name)
    ids = {s: src.columns(s)["idx"].tolist() for s in src.splits}
    self.assertEqual(sorted(sum(ids.values(), [])), list(range(total)))
    self.assertEqual({s: (v[:3], _digest(v)) for s, v in ids.items()}, want)
    # The documented rule: line indices by sha256, first 10% test.
    order = sorted(range(total), key=lambda i: hashlib.sha256(
        f"sentence_cls/{name}/v1:{i}".encode()).digest())
    self.assertEqual(ids["test"], sorted(order[:total // 10]))

  def test_dataset_matches_schema_and_shards(self):
    src = ss.subj_source()
    ds = src.get_dataset("test", shuffle=False)
    self.assertEqual(ds.element_spec, ss.SCHEMAS["subj"].element_spec())
    first = next(ds.as_numpy_iterator())
    self.assertEqual(first["sentence"].decode("utf-8"),
                     src.examples("test")[0]["sentence"])
    shard = src.get_dataset("test", shuffle=False,
                            shard_info=seqio.ShardInfo(1, 4))
    self.assertLen(list(shard), 250)
    shuffled = src.get_dataset("test", shuffle=True, seed=3)
    self.assertCountEqual([e["idx"] for e in shuffled.as_numpy_iterator()],
                          src.columns("test")["idx"].tolist())

  def test_tmp_root_via_env_and_errors(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    _write(root, "sentence_cls/mr/rt-polarity.all",
           b"0 fine\n1 good \x85 x\n3 bad label\n")
    with mock.patch.dict(os.environ, {data_root_lib.ENV_VAR: str(root)}):
      with self.assertRaisesRegex(
          ValueError, r"^.*rt-polarity\.all:3: expected 'LABEL text'"):
        ss.mr_source().num_input_examples("train")
      with self.assertRaisesRegex(
          FileNotFoundError,
          r"^Data file for split 'train' not found: .*stsa\.fine\.train$"):
        ss.sst5_source().num_input_examples("train")
    _write(root, "sentence_cls/mr/rt-polarity.all", b"0 fine\n1 good \x85\n")
    src = ss.mr_source(root)
    got = sorted((e["idx"], e["sentence"]) for s in src.splits
                 for e in src.examples(s))
    self.assertEqual(got, [(0, "fine"), (1, "good \x85")])

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, "Unknown sentence dataset 'x'"):
      ss.get_sentence_source("x")
    with self.assertRaisesRegex(ValueError, "No TFDS source for 'mr'"):
      ss.get_sentence_source("mr", source="tfds")
    with self.assertRaisesRegex(ValueError, "source must be 'local' or"):
      ss.sst2_source(source="gcs")
    with self.assertRaisesRegex(ValueError, r"Unknown split 'dev'"):
      ss.trec_source().num_input_examples("dev")

  def test_schema_element_spec(self):
    self.assertEqual(ss.SCHEMAS["sst2"].element_spec(), {
        "idx": tf.TensorSpec((), tf.int64),
        "label": tf.TensorSpec((), tf.int64),
        "sentence": tf.TensorSpec((), tf.string)})


if __name__ == "__main__":
  absltest.main()
