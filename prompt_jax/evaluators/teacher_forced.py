"""Evaluation loops shared by `train` and the `evaluate` entry point.

`teacher_forced` runs the jitted eval step over every example of a split once
(the last batch padded with zero-weight rows, so nothing is dropped) and
returns token-level loss and accuracy. Decode-based task metrics go through
seqio's Evaluator in `evaluate.py`.
"""

import jax

from prompt_jax.data import seqio_batches as data_lib
from prompt_jax.types import PyTree


def teacher_forced(trainer, trainable: PyTree, frozen: PyTree,
                   dataset_cfg: data_lib.DatasetConfig) -> dict[str, float]:
  """Token loss / accuracy over the whole split.

  Returns:
    {'loss', 'token_accuracy', 'tokens', 'examples'} as Python floats.
  """
  totals = {"loss_sum": 0.0, "correct": 0.0, "tokens": 0.0}
  examples = 0
  for batch, num_real in data_lib.eval_batches(dataset_cfg):
    sums = jax.device_get(
        trainer.eval_step(trainable, frozen, trainer.put_batch(batch)))
    for key in totals:
      totals[key] += float(sums[key])
    examples += num_real
  tokens = max(totals["tokens"], 1.0)
  return {"loss": totals["loss_sum"] / tokens,
          "token_accuracy": totals["correct"] / tokens,
          "tokens": totals["tokens"], "examples": float(examples)}
