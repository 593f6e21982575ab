"""Which prompt a row uses: pseudo-token ids in the row's own input.

Prompt k of a bank with prompts of length P occupies the pseudo ids
`-1 - (k * P + i)`, i < P (`backbones.seams.pseudo_token_fn` fills negative
ids). Prepending a row's ids to its input is all it takes to route it to
its task's prompt, so one mixed batch serves every task at once and the
ids survive any data pipeline (they are ordinary int32 tokens). A decoder
that adds BOS puts it before them.
"""

from typing import Mapping

import numpy as np

from prompt_jax import models


def prompt_ids(index: int | np.ndarray, length: int) -> np.ndarray:
  """Pseudo ids of prompt `index` ([P], or [B, P] for indices [B])."""
  index = np.asarray(index, np.int64)
  return (-1 - (index[..., None] * length + np.arange(length))).astype(
      np.int32)


def prepend(tokens: np.ndarray, index: np.ndarray, length: int
            ) -> np.ndarray:
  """tokens [B, T] -> [B, P + T] with row b's prompt ids first."""
  return np.concatenate([prompt_ids(index, length), tokens], axis=1)


def with_prompts(batch: Mapping[str, np.ndarray], index: np.ndarray,
                 length: int, family: str) -> dict[str, np.ndarray]:
  """A training batch with row b routed to prompt `index[b]`.

  Encoder-decoder: the ids go before `encoder_input_tokens`. Decoder-only:
  before `decoder_target_tokens`, with zero loss weights.
  """
  out = dict(batch)
  if family == models.ENCODER_DECODER:
    out["encoder_input_tokens"] = prepend(batch["encoder_input_tokens"],
                                          index, length)
    return out
  out["decoder_target_tokens"] = prepend(batch["decoder_target_tokens"],
                                         index, length)
  weights = batch["decoder_loss_weights"]
  out["decoder_loss_weights"] = np.concatenate(
      [np.zeros((weights.shape[0], length), weights.dtype), weights], axis=1)
  return out
