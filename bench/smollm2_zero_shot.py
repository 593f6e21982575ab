"""Zero-shot SST-2 dev accuracy of SmolLM2-135M through prompt_jax.

The first row of the SmolLM2 results table (issue 5). Rank classification:
each of the 872 dev rows of `sst2_smollm2_v100` (prompt
`"Review: {sentence}\\nSentiment:"`) is scored with the continuations
" positive" and " negative" by `PromptDecoderModel.score_batch` on the bare
backbone (no prompt); the larger log-probability wins. The reference
(transformers on the same GGUF, `../shared/bench/README.md`) is 78.0%.

  .venv/bin/python bench/smollm2_zero_shot.py    # ~80 s on 2 CPU cores

Prints one JSON line: rows, correct, accuracy, backend, wall times.
"""

import json
import time

import jax
import numpy as np
import seqio

import tasks  # pylint: disable=unused-import  (registers the task)
from prompt_jax import decoder_model
from prompt_jax.decoder import gguf_loading
from tasks import smollm2_tasks
from tasks import vocab

BATCH = 32


def _batch(rows, idx, length):
  """Left-aligned inputs [BATCH, length] and their mask."""
  x = np.zeros((BATCH, length), np.int32)
  m = np.zeros((BATCH, length), bool)
  for j, i in enumerate(idx):
    n = len(rows[i]["inputs"])
    x[j, :n], m[j, :n] = rows[i]["inputs"], True
  return x, m


def main() -> dict:
  start = time.time()
  rows = list(seqio.get_mixture_or_task(smollm2_tasks.SST2_SMOLLM2_TASK)
              .get_dataset(None, split="validation", shuffle=False)
              .as_numpy_iterator())
  cfg, params = gguf_loading.load_gguf(gguf_loading.default_smollm2_gguf())
  params = jax.device_put(params)
  model = decoder_model.PromptDecoderModel(cfg, prompt_length=1)
  tok = vocab.smollm2_vocabulary().tokenizer
  neg, pos = tok.encode(" negative")[0], tok.encode(" positive")[0]
  score = jax.jit(lambda p, x, m, t: model.score_batch(
      None, p, x, t, input_mask=m, target_mask=t >= 0)[0])
  scored_from = time.time()
  order = np.argsort([len(r["inputs"]) for r in rows])  # Few shapes.
  targets = np.array([[neg]] * BATCH + [[pos]] * BATCH, np.int32)
  margin = np.zeros(len(rows))
  for s in range(0, len(rows), BATCH):
    idx = order[s:s + BATCH]
    length = -(-max(len(rows[i]["inputs"]) for i in idx) // 16) * 16
    x, m = _batch(rows, idx, length)
    sc = np.asarray(score(params, np.tile(x, (2, 1)), np.tile(m, (2, 1)),
                          targets))
    margin[idx] = (sc[BATCH:] - sc[:BATCH])[:len(idx)]
  labels = np.array([r["label"] for r in rows])
  correct = int(((margin > 0).astype(int) == labels).sum())
  result = {"rows": len(rows), "correct": correct,
            "accuracy": round(100 * correct / len(rows), 2),
            "backend": jax.default_backend(),
            "setup_s": round(scored_from - start, 1),
            "scoring_s": round(time.time() - scored_from, 1)}
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
