"""End-to-end tests of `python -m prompt_jax.score_cli` (run in-process via main).

The backbone is a tiny random transformers T5 (T5 vocabulary size) saved with
`save_pretrained`, i.e. the real Hugging Face layout; expected scores come
from transformers itself.
"""

import contextlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from prompt_jax.data import jsonl as jsonl_io
from prompt_jax import score_cli as score
from prompt_jax import testing
from prompt_jax.backbones.t5 import tokenizer as vocabularies

_V = 32128
_GOOD = {"inputs": "sst2 sentence: a fine film.", "targets": "positive"}


def _run(argv) -> tuple[int, str, str]:
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    rc = score.main([str(a) for a in argv])
  return rc, out.getvalue(), err.getvalue()


def _write_lines(path: pathlib.Path, lines: list[str]) -> pathlib.Path:
  path.write_text("".join(line + "\n" for line in lines))
  return path


def _hf_score(hf_model, inputs: list[int], targets: list[int]) -> float:
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    out = hf_model(input_ids=torch.tensor([inputs]),
                   labels=torch.tensor([targets]))
  return -float(out.loss) * len(targets)  # loss is the mean over tokens.


def _save_t5_with_nan_embedding(path: pathlib.Path, nan_id: int) -> None:
  """A tiny random untied T5 (T5 vocab size) whose id `nan_id` embeds NaN."""
  # pylint: disable=g-import-not-at-top
  import flax
  import jax
  from prompt_jax.backbones.t5 import config as config_lib
  from prompt_jax.backbones.t5 import loading
  from prompt_jax.backbones.t5 import network
  # pylint: enable=g-import-not-at-top
  cfg = config_lib.T5Config(vocab_size=_V, emb_dim=32, num_heads=2,
                            head_dim=16, mlp_dim=64, num_encoder_layers=2,
                            num_decoder_layers=2)
  tokens = np.ones((1, 8), np.int32)
  params = flax.core.meta.unbox(network.T5Transformer(cfg).init(
      jax.random.key(0), tokens, tokens)["params"])
  params = jax.tree.map(np.array, params)
  params["token_embedder"]["embedding"][nan_id] = np.nan
  loading.save_hf_dir(path, cfg, params)


class ScoreCliTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = pathlib.Path(tempfile.mkdtemp(prefix="score_cli_test_"))
    cls.hf_model, _, _ = testing.random_hf_t5(
        "t5_1_0", vocab_size=_V, decoder_start_token_id=0)
    cls.backbone = cls.root / "backbone"
    cls.hf_model.save_pretrained(cls.backbone)
    cls.tok = vocabularies.SentencePieceTokenizer()

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def setUp(self):
    super().setUp()
    self.dir = pathlib.Path(self.create_tempdir().full_path)
    self.out = self.dir / "out.jsonl"

  def _args(self, input_file, *extra):
    return [f"--backbone={self.backbone}", f"--input_file={input_file}",
            f"--output_file={self.out}", *extra]

  def _text_ids(self, text: str) -> list[int]:
    return self.tok.encode(text) + [1]

  def test_text_and_id_lists_end_to_end(self):
    rows = [
        {"inputs": "sst2 sentence: a gorgeous, witty, seductive movie.",
         "targets": "positive"},
        {"inputs": [37, 629, 19, 1627, 5, 1], "targets": [1465, 1]},
        {"inputs": "cola sentence: The book was by John written.",
         "targets": [59, 7, 1, 13, 17]},
        {"inputs": [8], "targets": "unacceptable"},
        {"inputs": "translate English to German: That is good.",
         "targets": "Das ist gut."},
    ]
    in_file = _write_lines(self.dir / "in.jsonl",
                           [json.dumps(r) for r in rows])
    rc, stdout, stderr = _run(self._args(in_file, "--batch_size=2"))
    self.assertEqual((rc, stderr), (0, ""))
    self.assertIn("scored 5 examples", stdout)
    got = [json.loads(line) for line in self.out.read_text().splitlines()]
    self.assertLen(got, 5)
    for row, out in zip(rows, got):
      self.assertEqual(set(out), {"inputs", "targets", "score",
                                  "token_scores"})
      self.assertEqual((out["inputs"], out["targets"]),
                       (row["inputs"], row["targets"]))
      enc, tgt = ([self._text_ids(v)] if isinstance(v, str) else [v]
                  for v in (row["inputs"], row["targets"]))
      self.assertLen(out["token_scores"], len(tgt[0]))
      self.assertAlmostEqual(out["score"], sum(out["token_scores"]), places=4)
      self.assertAlmostEqual(out["score"],
                             _hf_score(self.hf_model, enc[0], tgt[0]),
                             delta=1e-4)
      self.assertLess(out["score"], -1.0)  # A random model: far from 0.

  def test_spiece_in_backbone_dir_wins_over_vocab_flag(self):
    backbone = self.dir / "with_spiece"
    shutil.copytree(self.backbone, backbone)
    shutil.copy(vocabularies.default_vocab_path(), backbone / "spiece.model")
    in_file = _write_lines(self.dir / "in.jsonl", [json.dumps(_GOOD)])
    rc, _, stderr = _run([f"--backbone={backbone}",
                          f"--input_file={in_file}",
                          f"--output_file={self.out}",
                          "--vocab=/nonexistent/x.model"])
    self.assertEqual((rc, stderr), (0, ""))
    # Without it, --vocab is used (and here it does not exist).
    rc, _, stderr = _run(self._args(in_file, "--vocab=/nonexistent/x.model",
                                    "--overwrite"))
    self.assertEqual(rc, 2)
    self.assertEqual(stderr,
                     "SentencePiece model not found: /nonexistent/x.model\n")

  def test_truncate(self):
    rows = [{"inputs": "a b c d e f g h i j k l", "targets": "negative"},
            {"inputs": [5, 6, 7, 8, 9], "targets": [5, 6, 7, 8]}]
    in_file = _write_lines(self.dir / "in.jsonl",
                           [json.dumps(r) for r in rows])
    flags = ("--max_input_length=4", "--max_target_length=2")
    rc, _, stderr = _run(self._args(in_file, *flags))
    self.assertEqual(rc, 2)
    n = len(self._text_ids(rows[0]["inputs"]))
    self.assertGreater(n, 4)
    self.assertEqual(stderr, f'{in_file}:1: "inputs" has {n} tokens, more '
                     "than --max_input_length=4 (pass --truncate to cut)\n")
    self.assertFalse(self.out.exists())
    rc, _, stderr = _run(self._args(in_file, *flags, "--truncate"))
    self.assertEqual((rc, stderr), (0, ""))
    got = [json.loads(line) for line in self.out.read_text().splitlines()]
    # Text keeps its EOS after trimming (T5's append_eos_after_trim).
    text_enc = self._text_ids(rows[0]["inputs"])[:3] + [1]
    text_tgt = self._text_ids("negative")[:1] + [1]
    self.assertAlmostEqual(got[0]["score"], _hf_score(
        self.hf_model, text_enc, text_tgt), delta=1e-4)
    self.assertAlmostEqual(got[1]["score"], _hf_score(
        self.hf_model, [5, 6, 7, 8], [5, 6]), delta=1e-4)
    self.assertEqual([len(g["token_scores"]) for g in got], [2, 2])

  @parameterized.named_parameters(
      ("not_json", '{"inputs": "a", ', "not valid JSON (Expecting property "
       "name enclosed in double quotes at column 17)"),
      ("not_object", "[1, 2]", "expected a JSON object, got list"),
      ("missing_inputs", '{"targets": "x"}', 'missing key "inputs"'),
      ("missing_targets", '{"inputs": "x"}', 'missing key "targets"'),
      ("wrong_type", '{"inputs": "x", "targets": 5}',
       '"targets" must be a string or a list of ints, got number'),
      ("null", '{"inputs": null, "targets": "x"}',
       '"inputs" must be a string or a list of ints, got null'),
      ("str_in_ids", '{"inputs": [5, "x"], "targets": "x"}',
       "\"inputs\"[1] must be an int, got string 'x'"),
      ("float_in_ids", '{"inputs": "x", "targets": [5, 6.0]}',
       '"targets"[1] must be an int, got number 6.0'),
      ("bool_in_ids", '{"inputs": [true], "targets": "x"}',
       '"inputs"[0] must be an int, got boolean True'),
      ("id_too_big", '{"inputs": "x", "targets": [5, 32128]}',
       '"targets"[1] = 32128 is out of range for vocab size 32128'),
      ("id_negative", '{"inputs": [-3], "targets": "x"}',
       '"inputs"[0] = -3 is out of range for vocab size 32128'),
      ("pad_id", '{"inputs": [5, 0, 6], "targets": "x"}',
       '"inputs"[1] is 0, the padding id (it would be ignored)'),
      ("empty_targets", '{"inputs": "x", "targets": []}',
       '"targets" is empty'),
      ("empty_text_targets", '{"inputs": "x", "targets": ""}',
       '"targets" is empty'),
      ("too_long", '{"inputs": "x", "targets": [5, 6, 7, 8, 9, 10]}',
       '"targets" has 6 tokens, more than --max_target_length=5 (pass '
       "--truncate to cut)"),
  )
  def test_bad_line_names_file_and_line_and_writes_nothing(self, line, what):
    # Line 4: two good lines and a blank one (blank lines count, are skipped).
    in_file = _write_lines(self.dir / "in.jsonl",
                           [json.dumps(_GOOD), "", json.dumps(_GOOD), line,
                            json.dumps(_GOOD)])
    rc, stdout, stderr = _run(self._args(in_file, "--max_target_length=5"))
    self.assertEqual(rc, 2)
    self.assertEqual(stderr, f"{in_file}:4: {what}\n")
    self.assertEqual(stdout, "")
    self.assertEqual(os.listdir(self.dir), ["in.jsonl"])
    # An existing output survives a failed --overwrite run untouched.
    self.out.write_text("keep me\n")
    rc, _, stderr = _run(self._args(in_file, "--max_target_length=5",
                                    "--overwrite"))
    self.assertEqual(rc, 2)
    self.assertEqual(stderr, f"{in_file}:4: {what}\n")
    self.assertEqual(self.out.read_text(), "keep me\n")
    self.assertEqual(sorted(os.listdir(self.dir)), ["in.jsonl", "out.jsonl"])

  def test_existing_output_needs_overwrite(self):
    in_file = _write_lines(self.dir / "in.jsonl", [json.dumps(_GOOD)])
    self.out.write_text("keep me\n")
    rc, _, stderr = _run(self._args(in_file))
    self.assertEqual(rc, 2)
    self.assertEqual(stderr, f"output file exists: {self.out} (pass "
                     "--overwrite to replace it)\n")
    self.assertEqual(self.out.read_text(), "keep me\n")
    rc, _, stderr = _run(self._args(in_file, "--overwrite"))
    self.assertEqual((rc, stderr), (0, ""))
    self.assertEqual(json.loads(self.out.read_text())["targets"], "positive")
    self.assertEqual(sorted(os.listdir(self.dir)), ["in.jsonl", "out.jsonl"])

  @parameterized.named_parameters(
      ("no_input", "missing.jsonl", None,
       "input file not found: {dir}/missing.jsonl"),
      ("no_backbone", "in.jsonl", "nope",
       "backbone directory not found: {dir}/nope"),
      ("not_a_backbone", "in.jsonl", ".", "cannot load backbone {dir}: "
       "{dir}: not a T5 backbone;"),
  )
  def test_setup_errors_are_one_line(self, input_name, backbone, prefix):
    _write_lines(self.dir / "in.jsonl", [json.dumps(_GOOD)])
    argv = self._args(self.dir / input_name)
    if backbone:
      argv[0] = f"--backbone={os.path.normpath(self.dir / backbone)}"
    rc, _, stderr = _run(argv)
    self.assertEqual(rc, 2)
    self.assertStartsWith(stderr, prefix.format(dir=self.dir))
    self.assertEqual(stderr.count("\n"), 1)
    self.assertFalse(self.out.exists())

  def test_mesh_flag(self):
    in_file = _write_lines(self.dir / "in.jsonl", [json.dumps(_GOOD)] * 3)
    rc, _, _ = _run(self._args(in_file, "--mesh=2,4", "--batch_size=2"))
    self.assertEqual(rc, 0)
    scores = [json.loads(x)["score"]
              for x in self.out.read_text().splitlines()]
    expected = _hf_score(self.hf_model, self._text_ids(_GOOD["inputs"]),
                         self._text_ids(_GOOD["targets"]))
    np.testing.assert_allclose(scores, [expected] * 3, atol=1e-4)
    rc, _, stderr = _run(self._args(in_file, "--mesh=4,4", "--overwrite"))
    self.assertEqual((rc, stderr), (2, "--mesh=4,4 needs 16 devices; 8 "
                                       "available\n"))

  def test_subprocess_exit_code_and_no_traceback(self):
    in_file = _write_lines(self.dir / "in.jsonl", [json.dumps(_GOOD), "{"])
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "prompt_jax.score_cli", *self._args(in_file)],
        capture_output=True, text=True, env=env, timeout=120, check=False)
    self.assertEqual(proc.returncode, 2)
    self.assertEqual(proc.stderr, f"{in_file}:2: not valid JSON (Expecting "
                     "property name enclosed in double quotes at column 2)\n")
    self.assertFalse(self.out.exists())

  def test_nan_score_names_line_and_writes_nothing(self):
    # A real backbone with one NaN: the embedding row of id 500. Only a pair
    # holding id 500 meets it (the head is untied): lines 3 and 4 of 4.
    backbone = self.dir / "nan_backbone"
    _save_t5_with_nan_embedding(backbone, nan_id=500)
    rows = [{"inputs": [37, 629, 1], "targets": [1465, 1]},
            {"inputs": "sst2 sentence: fine.", "targets": "positive"},
            {"inputs": [37, 500, 1], "targets": [1465, 1]},
            {"inputs": [37, 629, 1], "targets": [5, 500, 1]}]
    in_file = _write_lines(self.dir / "in.jsonl",
                           [json.dumps(r) for r in rows])
    argv = [f"--backbone={backbone}", f"--input_file={in_file}",
            f"--output_file={self.out}", "--batch_size=2"]
    rc, stdout, stderr = _run(argv)
    # The encoder output of line 3 is all NaN, so from target token 0 on.
    self.assertEqual((rc, stdout), (2, ""))
    self.assertEqual(stderr, f"{in_file}:3: score is NaN (target token 0 of "
                     "2 is NaN): not a log-probability; are the backbone's "
                     "weights finite?\n")
    self.assertEqual(sorted(os.listdir(self.dir)), ["in.jsonl",
                                                    "nan_backbone"])
    self.out.write_text("keep me\n")
    rc, _, _ = _run(argv + ["--overwrite"])
    self.assertEqual(rc, 2)
    self.assertEqual(self.out.read_text(), "keep me\n")
    # The same backbone scores the lines without id 500 finitely.
    in_file = _write_lines(self.dir / "in.jsonl",
                           [json.dumps(r) for r in rows[:2]])
    rc, _, stderr = _run(argv + ["--overwrite"])
    self.assertEqual((rc, stderr), (0, ""))
    got = [json.loads(x) for x in self.out.read_text().splitlines()]
    self.assertTrue(all(np.isfinite(g["score"]) and g["score"] < -1.0
                        for g in got), got)

  def test_non_finite_scores(self):
    # Scores the model cannot produce on demand: the scorer is replaced.
    rows = [json.dumps(_GOOD)] * 3
    in_file = _write_lines(self.dir / "in.jsonl", rows)
    inf = float("inf")

    def fake(scores):
      return lambda cfg, params, examples, *a, **k: scores

    # -inf (log 0, an impossible target) is a score; written as -Infinity.
    with mock.patch.object(score, "score_examples", fake(
        [(-2.0, [-1.5, -0.5]), (-inf, [-1.0, -inf]), (-3.0, [-3.0, 0.0])])):
      rc, _, stderr = _run(self._args(in_file))
    self.assertEqual((rc, stderr), (0, ""))
    text = self.out.read_text()
    self.assertEqual(text.splitlines()[1], json.dumps(
        dict(_GOOD, score=-inf, token_scores=[-1.0, -inf])))
    self.assertIn('"score": -Infinity, "token_scores": [-1.0, -Infinity]',
                  text)
    self.assertEqual([r["score"] for _, r in jsonl_io.read_jsonl(self.out)],
                     [-2.0, -inf, -3.0])
    # +inf is not a log-probability: an error, like NaN.
    for scores, what in (
        ([(-2.0, [-1.5, -0.5]), (-1.0, [-1.0, 0.0]), (inf, [-1.0, inf])],
         "3: score is +inf (target token 1 of 2 is +inf)"),
        ([(-2.0, [-1.5, -0.5]), (np.nan, [np.nan, -inf]), (-3.0, [-3.0])],
         "2: score is NaN (target token 0 of 2 is NaN)")):
      with mock.patch.object(score, "score_examples", fake(scores)):
        rc, _, stderr = _run(self._args(in_file, "--overwrite"))
      self.assertEqual(rc, 2)
      self.assertEqual(stderr, f"{in_file}:{what}: not a log-probability; "
                       "are the backbone's weights finite?\n")
      self.assertEqual(self.out.read_text(), text)

  def test_demo(self):
    rc, stdout, stderr = _run(["--demo"])
    self.assertEqual((rc, stderr), (0, ""))
    self.assertIn("RANDOM weights", stdout)
    self.assertIn("meaningless", stdout)
    table = [line for line in stdout.splitlines()
             if line.startswith("sst2 sentence:")]
    self.assertLen(table, 6)
    self.assertEqual(sum(line.endswith("<--") for line in table), 3)


class JsonlIoTest(absltest.TestCase):

  def test_not_utf8_names_line(self):
    path = pathlib.Path(self.create_tempdir().full_path) / "in.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with self.assertRaisesRegex(
        jsonl_io.JsonlError, rf"^{path}:2: not UTF-8 \(invalid start byte\)$"):
      jsonl_io.read_jsonl(path)

  def test_read_keeps_line_numbers(self):
    path = pathlib.Path(self.create_tempdir().full_path) / "in.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"a": 2}\r\n')
    self.assertEqual(jsonl_io.read_jsonl(path), [(1, {"a": 1}), (4, {"a": 2})])

  def test_failed_write_leaves_nothing(self):
    tmp = pathlib.Path(self.create_tempdir().full_path)
    with self.assertRaisesRegex(ValueError, "Out of range float"):
      jsonl_io.write_jsonl(tmp / "out.jsonl", [{"a": 1.0}, {"a": float("nan")}])
    self.assertEqual(os.listdir(tmp), [])
    (tmp / "out.jsonl").write_text("old\n")
    with self.assertRaisesRegex(ValueError, "Out of range float"):
      jsonl_io.write_jsonl(tmp / "out.jsonl", [{"a": float("inf")}],
                           overwrite=True)
    self.assertEqual((tmp / "out.jsonl").read_text(), "old\n")
    self.assertEqual(os.listdir(tmp), ["out.jsonl"])

  def test_write_refuses_existing_and_replaces_with_overwrite(self):
    out = pathlib.Path(self.create_tempdir().full_path) / "out.jsonl"
    out.write_text("old\n")
    with self.assertRaisesRegex(FileExistsError, "output file exists"):
      jsonl_io.write_jsonl(out, [{"a": 1}])
    self.assertEqual(out.read_text(), "old\n")
    jsonl_io.write_jsonl(out, [{"a": 1}, {"b": "é"}], overwrite=True)
    self.assertEqual(out.read_text(), '{"a": 1}\n{"b": "é"}\n')
    self.assertEqual(os.listdir(out.parent), ["out.jsonl"])

  def test_tokenizer_larger_than_model_vocab(self):
    get = score.tokenizer_loader("/nonexistent", None, model_vocab_size=99)
    with self.assertRaisesRegex(score.ScoreError,
                                r"has 32100 ids but the model embedding has "
                                r"only 99"):
      get()


if __name__ == "__main__":
  absltest.main()
