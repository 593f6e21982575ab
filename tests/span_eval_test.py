"""Tests `evaluate(constraint_fn=tasks.squad.span_constraint_fn())`.

A tiny random T5 with a random `.npy` prompt evaluates a small in-memory
SQuAD-style task (`question: ... context: ...` inputs; `evaluate` has no
row limit, so not the 700-row `squad_v2_span_v100`); every written
prediction (token ids) must decode to a span of its passage (modulo whitespace) or
"unanswerable". Unconstrained, the random model writes other text.
"""

import json
import pathlib
import re

import numpy as np
import pytest

from prompt_jax.data import seqio_batches as data_lib
from prompt_jax import evaluate as evaluate_lib
from prompt_jax import setup as run_setup
from prompt_jax.methods import prompt_tuning
from tasks import squad
from tasks import testing_tasks
from tasks import vocab

TASK = "span_eval_test_squad_like_v100"
P, H = 8, 64  # Prompt length; H of models/t5_1_1_tiny.gin.
PASSAGES = [
    ("Who led the Normans?", "The Normans were led by Rollo, a Viking"
     " chieftain who settled in northern France in the tenth century."),
    ("What is the capital of Kenya?", "Nairobi is the capital and largest"
     " city of Kenya, with a population of about four million people."),
    ("When was the bridge built?", "The old stone bridge over the river was"
     " built in 1850 and rebuilt after the great flood of 1910."),
    ("What colour is the sky on Mars?", "Oxygen makes up twenty one percent"
     " of the air we breathe; most of the rest is nitrogen gas."),
]
ROWS = [{"inputs": f"question: {q} {squad.CONTEXT_MARKER} {c}",
         "targets": c.split()[0]} for q, c in PASSAGES] * 2


def _tiny_backbone() -> run_setup.BackboneConfig:
  """The backbone of models/t5_1_1_tiny.gin (random weights, seed 0)."""
  return run_setup.BackboneConfig(
      preset="t5_1_1_tiny", random_weights=True, overrides={
      "vocab_size": 32128, "emb_dim": H, "num_heads": 4, "head_dim": 16,
      "mlp_dim": 128})


def _squash(text: str) -> str:
  return re.sub(r"\s+", "", text)


def _evaluate(tmp_path: pathlib.Path, span_constraint: bool) -> list[str]:
  """Runs `evaluate`; returns the written predictions (decoded ids)."""
  testing_tasks.register_in_memory_task(TASK, ROWS)
  prompt_file = tmp_path / "prompt.npy"
  np.save(prompt_file, np.random.default_rng(0).uniform(
      -0.5, 0.5, (P, H)).astype(np.float32))
  model_dir = tmp_path / f"run_{span_constraint}"
  evaluate_lib.evaluate(
      model_dir=str(model_dir), backbone=_tiny_backbone(),
      method=prompt_tuning.PromptTuning(length=P), prompt_file=str(prompt_file),
      dataset_cfg=data_lib.DatasetConfig(
          TASK, {"inputs": 64, "targets": 8}, "validation", 8),
      constraint_fn=squad.span_constraint_fn() if span_constraint else None)
  path = model_dir / "eval" / f"{TASK}_predictions.jsonl"
  lines = [json.loads(line) for line in path.read_text().splitlines()]
  predictions = [r for r in lines if "prediction" in r]
  assert [r["index"] for r in predictions] == list(range(len(ROWS)))
  return [vocab.t5_vocabulary().decode(r["prediction"])
          for r in predictions]


def _is_span_or_no_answer(prediction: str, inputs: str) -> bool:
  context = inputs.split(f"{squad.CONTEXT_MARKER} ", 1)[1]
  return (prediction.strip() == squad.NO_ANSWER or
          _squash(prediction) in _squash(context))


@pytest.mark.parametrize("span_constraint", [True, False])
def test_predictions_are_passage_spans(tmp_path, span_constraint):
  predictions = _evaluate(tmp_path, span_constraint)
  ok = [_is_span_or_no_answer(p, r["inputs"])
        for p, r in zip(predictions, ROWS)]
  if span_constraint:
    assert all(ok), list(zip(predictions, ok))
    assert any(_squash(p) for p in predictions), predictions
  else:  # The random model alone does not copy spans: the check can fail.
    assert not all(ok), predictions
