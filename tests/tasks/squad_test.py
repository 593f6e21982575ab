"""Tests for tasks.squad (SQuAD 2.0 span extraction).

Reads the real SQuAD 2.0 slice from the data root (counts, formatted rows,
an oracle run through seqio's Evaluator); malformed files are written to a
temp root. Span-constrained decoding over real rows is tested in
`squad_decoding_test.py`.
"""

import json
import pathlib

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
import seqio

from prompt_jax.decoding import constraints as cd
import tasks
from tasks import squad
from tasks import vocab

EOS = 1
_FIRST_CONTEXT_START = "The Normans (Norman: Nourmands; French: Normands;"


def _rows(split: str = "validation", n: int | None = None) -> list[dict]:
  task = seqio.get_mixture_or_task(squad.SQUAD_V2_TASK)
  ds = task.get_dataset(squad.FEATURE_LENGTHS, split=split, shuffle=False)
  return list((ds if n is None else ds.take(n)).as_numpy_iterator())


def _encoder_tokens(rows: list[dict]) -> np.ndarray:
  """[n, 512] 0-padded inputs, as the feature converter makes them."""
  enc = np.zeros((len(rows), squad.FEATURE_LENGTHS["inputs"]), np.int32)
  for i, row in enumerate(rows):
    enc[i, :len(row["inputs"])] = row["inputs"]
  return enc


def _squad_json(qas: list, context: str = "Rollo led the Normans.") -> dict:
  return {"version": "v2.0", "data": [{"title": "T", "paragraphs": [
      {"context": context, "qas": qas}]}]}


_GOOD_QA = {"id": "q0", "question": "Who led?", "is_impossible": False,
            "answers": [{"text": "Rollo", "answer_start": 0}]}


class SquadTaskTest(parameterized.TestCase):

  def test_task_names_registered(self):
    self.assertEqual(squad.TASK_NAMES, ("squad_v2_span_v100",))
    self.assertIn("squad_v2_span_v100", tasks.TASK_NAMES)
    self.assertIn("squad_v2_span_v100", seqio.TaskRegistry.names())

  def test_counts_of_the_real_file(self):
    source = squad.SquadSource()
    self.assertEqual(source.counts("validation"), {
        "questions": 1407, "answerable": 705, "unanswerable": 702,
        "paragraphs": 173, "articles": 5})
    self.assertEqual(source.counts("train_from_val")["questions"], 692)
    self.assertEqual(source.counts("test_from_val")["questions"], 715)
    paragraphs = [set(source.columns(s)["paragraph_idx"].tolist())
                  for s in ("train_from_val", "test_from_val")]
    self.assertEmpty(paragraphs[0] & paragraphs[1])
    self.assertLen(paragraphs[0] | paragraphs[1], 173)
    self.assertEqual(source.num_input_examples("validation"), 1407)

  def test_first_rows_formatted_exactly(self):
    rows = _rows(n=6)
    first = rows[0]
    context = first["context"].decode()
    self.assertTrue(context.startswith(_FIRST_CONTEXT_START))
    self.assertLen(context, 742)
    self.assertEqual(
        first["inputs_pretokenized"].decode(),
        "question: In what country is Normandy located? context: " + context)
    self.assertEqual(first["targets_pretokenized"], b"France")
    v = vocab.t5_vocabulary()
    self.assertEqual(first["targets"].tolist(), v.encode("France") + [EOS])
    self.assertEqual(first["inputs"][:12].tolist(),
                     v.encode("question: In what country is Normandy"
                              " located? context:")[:12])
    self.assertEqual(first["answers"].tolist(), [b"France"] * 4)
    self.assertEqual(rows[1]["answers"].tolist(), [
        b"10th and 11th centuries", b"in the 10th and 11th centuries",
        b"10th and 11th centuries", b"10th and 11th centuries"])
    self.assertEqual(rows[1]["targets_pretokenized"],
                     b"10th and 11th centuries")
    # Row 5 is the first impossible question.
    self.assertEqual((rows[5]["id"], rows[5]["is_impossible"]),
                     (b"5ad39d53604f3c001a3fe8d1", 1))
    self.assertEqual(rows[5]["answers"].tolist(), [])
    self.assertEqual(rows[5]["targets_pretokenized"], b"unanswerable")
    self.assertEqual(rows[5]["targets"].tolist(),
                     squad.no_answer_ids() + [EOS])

  def test_marker_and_no_answer_ids(self):
    self.assertEqual(squad.context_marker_ids(), [2625, 10])
    self.assertEqual(squad.no_answer_ids(), [73, 3247, 3321, 179])

  def test_passage_after_marker_is_the_context_on_every_row(self):
    rows = _rows()
    self.assertLen(rows, 1407)
    enc = _encoder_tokens(rows)
    mask = np.asarray(jax.jit(lambda t: cd.segment_after_marker(
        t, squad.context_marker_ids(), eos_id=EOS))(enc))
    v = vocab.t5_vocabulary()
    for row, tokens, keep in zip(rows, enc, mask):
      self.assertEqual(tokens[keep].tolist(),
                       v.encode(row["context"].decode()))

  # -------------------------------------------------- malformed files --
  @parameterized.named_parameters(
      ("bad_json", b'{"data": [', "malformed JSON"),
      ("no_data", {"version": "v2.0"},
       "top level: missing field 'data'"),
      ("no_question", _squad_json([{k: v for k, v in _GOOD_QA.items()
                                    if k != "question"}]),
       "data[0].paragraphs[0].qas[0]: missing field 'question'"),
      ("bad_type", _squad_json([dict(_GOOD_QA, is_impossible="no")]),
       "qas[0].is_impossible: must be bool"),
      ("not_a_span", _squad_json([dict(_GOOD_QA, answers=[
          {"text": "Charles", "answer_start": 0}])]),
       "qas[0].answers[0]: answer 'Charles' is not a span"),
      ("impossible_with_answer", _squad_json([dict(_GOOD_QA,
                                                   is_impossible=True)]),
       "qas[0]: is_impossible=True but 1 answers"),
      ("answerable_without", _squad_json([dict(_GOOD_QA, answers=[])]),
       "qas[0]: is_impossible=False but 0 answers"),
  )
  def test_malformed_file_names_file_and_place(self, content, message):
    root = pathlib.Path(self.create_tempdir().full_path)
    path = root / squad.SQUAD_V2_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(content if isinstance(content, bytes)
                     else json.dumps(content).encode())
    with self.assertRaises(ValueError) as ctx:
      squad.SquadSource(root=root).num_input_examples("validation")
    msg = str(ctx.exception)
    self.assertNotIn("\n", msg)
    self.assertIn("squad_v2_dev_first5articles.json: ", msg)
    self.assertIn(message, msg)

  def test_missing_file_is_one_line_error(self):
    root = self.create_tempdir().full_path
    with self.assertRaisesRegex(FileNotFoundError,
                                r"^Data file for split 'validation' not"
                                r" found: .*squad_v2_dev_first5articles"):
      squad.SquadSource(root=root).num_input_examples("validation")

  # -------------------------------------------------- metrics ----------
  def test_metrics_by_hand(self):
    targets = [["France", "France"],
               ["10th and 11th centuries", "in the 10th and 11th centuries"],
               [], [], ["Rollo"]]
    raw = ["France.", "the 10th century", "unanswerable", "Rollo",
           " unanswerable "]
    predictions = [squad.squad_postprocessor(p) for p in raw]
    self.assertEqual(predictions[2], "")
    self.assertEqual(predictions[4], "")
    got = squad.squad_v2_metrics(targets, predictions)
    # Row 1: [10th, century] vs [10th, and, 11th, centuries]: P 1/2, R 1/4
    # → F1 1/3 (beats 2/7 against the 5-token answer). Row 2: no answer
    # predicted for an impossible question: right; rows 3, 4: wrong.
    want = {"em": 40.0, "f1": 100 * (1 + 1 / 3 + 1) / 5,
            "has_ans_em": 100 / 3, "has_ans_f1": 100 * (1 + 1 / 3) / 3,
            "no_ans_em": 50.0, "no_ans_f1": 50.0}
    self.assertEqual(set(got), set(want))
    for k, v in want.items():
      self.assertAlmostEqual(got[k], v, msg=k)

  def test_postprocessor_targets_are_all_golds(self):
    example = {"answers": np.array([b"France", b"in France"], object)}
    self.assertEqual(
        squad.squad_postprocessor(b"France", example, is_target=True),
        ["France", "in France"])
    self.assertEqual(squad.squad_postprocessor(
        b"unanswerable", {"answers": np.array([], object)}, is_target=True),
        [])
    with self.assertRaisesRegex(ValueError, "needs its example"):
      squad.squad_postprocessor("France", None, is_target=True)

  def test_oracle_through_seqio_evaluator(self):
    """Predicting each target scores 100 but for two vocabulary gaps.

    T5's vocabulary lacks "⊆" and "−" (U+2212), which decode as "⁇": the
    golds `P ⊆ NP ⊆ PP ⊆ PSPACE` (F1 4/7: 4 of 7 tokens agree) and
    `−11.7 °C` (best F1 0.4: only "°c" of [⁇, 117, °c] vs [−117, °c]) miss.
    """
    evaluator = seqio.Evaluator(
        squad.SQUAD_V2_TASK, seqio.EncDecFeatureConverter(pack=False),
        sequence_length=squad.FEATURE_LENGTHS, use_memory_cache=False,
        async_compute_metrics=False)

    def predict_fn(ds, model_feature_shapes=None):
      del model_feature_shapes
      return [(i, ex["decoder_target_tokens"])
              for i, ex in ds.as_numpy_iterator()]

    metrics, _ = evaluator.evaluate(compute_metrics=True,
                                    predict_fn=predict_fn, score_fn=None)
    got = {k: v for k, v in metrics.result()[squad.SQUAD_V2_TASK].items()}
    want = {"em": 100 * 1405 / 1407, "f1": 100 * (1405 + 4 / 7 + .4) / 1407,
            "has_ans_em": 100 * 703 / 705,
            "has_ans_f1": 100 * (703 + 4 / 7 + .4) / 705,
            "no_ans_em": 100.0, "no_ans_f1": 100.0}
    self.assertEqual(set(got), set(want))
    for k, v in want.items():
      self.assertAlmostEqual(float(got[k]), v, msg=k)


if __name__ == "__main__":
  absltest.main()
