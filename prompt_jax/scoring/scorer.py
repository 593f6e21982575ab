"""T5X-style sequence scoring: log-likelihood of targets given inputs.

`score_batch` is the pure, jittable core (the base of rank classification):
teacher forcing with the decoder fed the targets shifted right (start id =
pad = 0), log-softmax in fp32, and the log-probability of each target token,
masked and summed. `pad_batch` / `bucket_length` turn ragged id lists into
fixed [B, T] arrays whose lengths come from a small set, so a jitted scorer
compiles only a few times. The CLI around this lives in `prompt_jax.score_cli`.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_jax import types

Array = types.Array
PyTree = types.PyTree
ScoreFn = Callable[[PyTree, Array, Array], tuple[Array, Array]]


def shift_right(targets: Array, start_id: int = 0) -> Array:
  """[B, To] targets -> [B, To] decoder inputs: start id, then targets[:-1]."""
  start = jnp.full(targets.shape[:-1] + (1,), start_id, targets.dtype)
  return jnp.concatenate([start, targets[..., :-1]], axis=-1)


def token_log_probs(logits: Array, targets: Array) -> Array:
  """log p(targets) per position: logits [B, T, V], targets [B, T] -> [B, T].

  The log-softmax is taken in fp32 whatever the logits' dtype: a bf16
  normaliser over 32k classes loses several digits.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def score_batch(model: nn.Module, params: PyTree, encoder_tokens: Array,
                decoder_targets: Array, *, encoder_mask: Array | None = None,
                target_mask: Array | None = None,
                seams: Any = None) -> tuple[Array, Array]:
  """Scores targets under a T5 model by teacher forcing.

  The decoder sees only a causal mask (no key-padding mask): with targets
  left-aligned and padded at the end, a real position never attends to a
  padded one, and this matches Hugging Face's `labels=` computation exactly.

  Args:
    model: a `T5Transformer` (or any module with its `__call__` signature).
    params: its params (boxed or unboxed).
    encoder_tokens: [B, Ti] input ids, 0 = padding.
    decoder_targets: [B, To] target ids, 0 = padding.
    encoder_mask: [B, Ti], default `encoder_tokens != 0`.
    target_mask: [B, To] positions that count, default `decoder_targets != 0`.
    seams: PEFT seams (e.g. a soft prompt), passed to the model.

  Returns:
    (scores [B], token_scores [B, To]) in fp32: the per-token target
    log-probabilities (0 where masked) and their sum over To.
  """
  if target_mask is None:
    target_mask = decoder_targets != 0
  decoder_inputs = shift_right(decoder_targets, start_id=0)
  logits = model.apply({"params": params}, encoder_tokens, decoder_inputs,
                       encoder_mask=encoder_mask, seams=seams)  # [B, To, V]
  token_scores = token_log_probs(logits, decoder_targets)
  token_scores = jnp.where(target_mask.astype(bool), token_scores, 0.0)
  return token_scores.sum(axis=-1), token_scores


def make_score_fn(model: nn.Module, **jit_kwargs) -> ScoreFn:
  """Jits `score_batch` for `model`: (params, enc [B,Ti], tgt [B,To]) -> ...

  Args:
    model: the module, bound by closure (static under jit).
    **jit_kwargs: passed to `jax.jit` (e.g. `in_shardings`/`out_shardings`).

  Returns:
    A jitted `fn(params, encoder_tokens, decoder_targets)` returning
    `(scores [B], token_scores [B, To])`.
  """
  def fn(params, encoder_tokens, decoder_targets):
    return score_batch(model, params, encoder_tokens, decoder_targets)
  return jax.jit(fn, **jit_kwargs)


def bucket_length(n: int, min_length: int = 8,
                  max_length: int | None = None) -> int:
  """Smallest power of two >= max(n, min_length), capped at `max_length`.

  Raises:
    ValueError: if `n` exceeds `max_length`.
  """
  if max_length is not None and n > max_length:
    raise ValueError(f"length {n} exceeds max_length {max_length}")
  length = max(min_length, 1 << max(n - 1, 0).bit_length())
  return length if max_length is None else min(length, max_length)


def pad_batch(seqs: Sequence[Sequence[int]], length: int | None = None,
              batch_size: int | None = None, min_length: int = 8,
              max_length: int | None = None) -> np.ndarray:
  """Pads ragged id lists with 0 into an int32 array [B, T].

  Args:
    seqs: id lists (each at most `length` long).
    length: T; default `bucket_length` of the longest list.
    batch_size: B; extra rows are all padding (default `len(seqs)`).
    min_length: smallest bucket when `length` is None.
    max_length: cap on the bucketed length when `length` is None.

  Returns:
    [B, T] int32.

  Raises:
    ValueError: if a list is longer than T or there are more than B lists.
  """
  longest = max((len(s) for s in seqs), default=0)
  if length is None:
    length = bucket_length(longest, min_length, max_length)
  batch_size = len(seqs) if batch_size is None else batch_size
  if longest > length or len(seqs) > batch_size:
    raise ValueError(f"cannot pad {len(seqs)} sequences (longest {longest}) "
                     f"into [{batch_size}, {length}]")
  out = np.zeros((batch_size, length), np.int32)
  for i, seq in enumerate(seqs):
    out[i, :len(seq)] = seq
  return out
