"""Jitted, sharded prediction and scoring with the prompt in place.

`Predictor` compiles `generate` (greedy / sampling / beam, KV cache) and
target scoring once per batch shape, with the soft prompt's seams built
inside the traced function (a closure built outside would recompile on every
call). It also adapts both to seqio's Evaluator (`seqio_predict_fn`,
`seqio_score_fn`), which hands over an enumerated dataset and expects
`(index, output)` pairs back.

Constrained decoding: `constraint_fn(encoder_tokens [B, Ti]) ->
decoding.LogitsConstraint` is called inside the compiled function, so the
constraint may be built from the batch itself, e.g. SQuAD spans:

  Predictor(..., constraint_fn=functools.partial(
      constrained_decoding.span_constraint_after_marker,
      marker_ids=vocab.encode("context:"), eos_id=1,
      extra_sequences=[vocab.encode("unanswerable")]))
"""

from typing import Callable, Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from prompt_jax.decoding import search as decoding
from prompt_jax import partitioning
from prompt_jax.methods.base import TunedModel
from prompt_jax.types import PyTree

# encoder_tokens [B, Ti] -> a constraint for those B rows (traced).
ConstraintFn = Callable[[jax.Array], decoding.LogitsConstraint]


class Predictor:
  """Generation and scoring for a `TunedModel` on a mesh.

  Args:
    model: the prompt model.
    mesh: the device mesh; rows are split over 'data'.
    rules: logical axis rules.
    frozen_shardings: shardings of the backbone params.
    max_decode_length: L, tokens generated at most.
    method: 'greedy', 'sample' or 'beam'.
    num_beams: K for beam search.
    alpha: brevity penalty exponent for beam search.
    batch_size: rows per compiled call (padded with empty rows).
    constraint_fn: optional `encoder_tokens [B, Ti] -> LogitsConstraint`
      (traced inside the compiled call); predictions then hold only the
      tokens it allows. None: unconstrained.
  """

  def __init__(self, model: TunedModel, mesh, rules,
               frozen_shardings: PyTree, *, max_decode_length: int,
               method: str = "greedy", num_beams: int = 4,
               alpha: float = 0.6, batch_size: int = 32,
               constraint_fn: ConstraintFn | None = None):
    self.model = model
    self.batch_size = _round_up(batch_size, mesh.shape[partitioning.DATA])
    replicated = NamedSharding(mesh, PartitionSpec())
    rows = NamedSharding(mesh, PartitionSpec(partitioning.DATA))

    def predict(trainable, frozen, encoder_tokens):
      return model.generate(
          trainable, frozen, encoder_tokens,
          max_decode_length=max_decode_length, method=method,
          num_beams=num_beams, alpha=alpha,
          constraint=(None if constraint_fn is None
                      else constraint_fn(encoder_tokens)))[0]

    def score(trainable, frozen, encoder_tokens, targets):
      return model.score_batch(trainable, frozen, encoder_tokens, targets)[0]

    self._predict = partitioning.jit_sharded(
        predict, mesh, rules,
        in_shardings=(replicated, frozen_shardings, rows), out_shardings=rows)
    self._score = partitioning.jit_sharded(
        score, mesh, rules,
        in_shardings=(replicated, frozen_shardings, rows, rows),
        out_shardings=rows)

  def predict(self, trainable: PyTree, frozen: PyTree,
              encoder_tokens: np.ndarray) -> np.ndarray:
    """[n, Ti] ids -> [n, L] generated ids (EOS, then 0), any n."""
    outputs = [np.asarray(self._predict(trainable, frozen, chunk))[:count]
               for chunk, count in _chunks(encoder_tokens, self.batch_size)]
    return np.concatenate(outputs)

  def score(self, trainable: PyTree, frozen: PyTree,
            encoder_tokens: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[n] summed target log-probs for [n, Ti] inputs and [n, To] targets."""
    outputs = []
    for (enc, count), (tgt, _) in zip(_chunks(encoder_tokens, self.batch_size),
                                      _chunks(targets, self.batch_size)):
      outputs.append(np.asarray(self._score(trainable, frozen, enc,
                                            tgt))[:count])
    return np.concatenate(outputs)

  def seqio_predict_fn(self, trainable: PyTree, frozen: PyTree):
    """A seqio `PredictFnCallable` over an enumerated model-feature dataset."""
    def predict_fn(dataset, model_feature_shapes=None):
      del model_feature_shapes
      indices, enc = _gather(dataset, "encoder_input_tokens")
      tokens = self.predict(trainable, frozen, enc)
      # Fixed-length rows: seqio stacks them; decoding stops at EOS.
      return [(i, t) for i, t in zip(indices, tokens)]
    return predict_fn

  def seqio_score_fn(self, trainable: PyTree, frozen: PyTree):
    """A seqio `ScoreFnCallable`: (index, summed target log-prob)."""
    def score_fn(dataset, model_feature_shapes=None):
      del model_feature_shapes
      indices, enc = _gather(dataset, "encoder_input_tokens")
      _, targets = _gather(dataset, "decoder_target_tokens")
      return list(zip(indices, self.score(trainable, frozen, enc, targets)))
    return score_fn


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _chunks(rows: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, int]]:
  """Fixed-size chunks of rows, the last padded with zero rows."""
  for start in range(0, len(rows), size):
    chunk = rows[start:start + size]
    count = len(chunk)
    if count < size:
      chunk = np.pad(chunk, [(0, size - count)] + [(0, 0)] * (rows.ndim - 1))
    yield chunk, count


def _gather(dataset, key: str) -> tuple[list[int], np.ndarray]:
  """Reads (index, example) pairs of a seqio eval dataset into arrays."""
  indices, rows = [], []
  for index, example in dataset.as_numpy_iterator():
    indices.append(int(index))
    rows.append(example[key])
  return indices, np.stack(rows).astype(np.int32)


def until_eos(tokens: np.ndarray, eos_id: int) -> list[int]:
  """Generated ids up to and including the first EOS."""
  out = []
  for t in tokens.tolist():
    out.append(t)
    if t == eos_id:
      break
  return out
