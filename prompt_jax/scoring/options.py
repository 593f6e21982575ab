"""Rank classification of a language model over fixed options, on many rows.

Each row is scored with every option as its continuation (decoder-only) or
target (encoder-decoder); the prediction is the option with the largest
summed log-probability (the protocol of the SmolLM2 bench, of MetaICL's
direct evaluation and of T5X rank classification). A shared context (k
demonstrations, the same for every row, as MetaICL evaluates) reaches the
rows through `apply_context`, the one place the two families differ: a
decoder-only model runs [BOS, soft prompt, context] once per call
(`TunedModel.encode_context`) and each row then costs only its own tokens;
an encoder-decoder has no such cache, so the context ids are prepended to
every row's encoder input. Rows are sorted by length and padded to a
multiple of 16, so the jitted scorer compiles a few times.

Example:
  scores = score_options(model, trainable, frozen,
                         inputs=[tok.encode("Review: good.\\nSentiment:")],
                         options=[tok.encode(" negative"),
                                  tok.encode(" positive")],
                         context=tok.encode(demos_text))
  predictions = scores.argmax(axis=1)            # [N]

Single-token options take one pass per row: the next-token log-probs after
the row (decoder-only) or the first decoder step's (encoder-decoder).

Without a shared context (per-row kNN demonstrations, or fixed shapes for
an accelerator), `score_pairs` scores (input, target) pairs one by one:
inputs padded to a multiple of `bucket`, so a coarse bucket (256) bounds the
compilations to a handful.
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prompt_jax import models
from prompt_jax.methods import base as method_base
from prompt_jax.types import PyTree

_BUCKET = 16


@functools.partial(jax.jit, static_argnums=0)
def _score(model: method_base.TunedModel, trainable: PyTree | None,
           frozen: PyTree, context: models.ContextCache | None, inputs,
           in_mask, targets, t_mask):
  return model.score_batch(trainable, frozen, inputs, targets,
                           input_mask=in_mask, target_mask=t_mask,
                           context=context)[0]


@functools.partial(jax.jit, static_argnums=0)
def _next_token(model: method_base.TunedModel, trainable: PyTree | None,
                frozen: PyTree, context: models.ContextCache | None, inputs,
                in_mask, option_ids):
  log_probs = model.next_token_log_probs(frozen, inputs, in_mask, context,
                                         trainable)
  return log_probs[:, option_ids]


@functools.partial(jax.jit, static_argnums=0)
def _score_pairs(model: method_base.TunedModel, trainable: PyTree,
                 frozen: PyTree, inputs, in_mask, targets, t_mask):
  return model.score_batch(trainable, frozen, inputs, targets,
                           input_mask=in_mask, target_mask=t_mask)[0]


def _padded(rows: Sequence[Sequence[int]], length: int
            ) -> tuple[np.ndarray, np.ndarray]:
  ids = np.zeros((len(rows), length), np.int32)
  mask = np.zeros((len(rows), length), bool)
  for i, row in enumerate(rows):
    ids[i, :len(row)], mask[i, :len(row)] = row, True
  return ids, mask


def apply_context(model: method_base.TunedModel, trainable: PyTree | None,
                  frozen: PyTree, context: Sequence[int],
                  rows: Sequence[Sequence[int]]
                  ) -> tuple[models.ContextCache | None, list[list[int]]]:
  """(cache, rows): how a shared context precedes every row.

  Decoder-only: the context is encoded once (`encode_shared_context`) and
  the rows stay as they are. Encoder-decoder: no cache; the context ids are
  prepended to each row (the encoder reads [context, row]).
  """
  if model.family == models.ENCODER_DECODER:
    return None, [list(context) + list(r) for r in rows]
  return (encode_shared_context(model, trainable, frozen, context),
          [list(r) for r in rows])


def encode_shared_context(model: method_base.TunedModel,
                          trainable: PyTree | None, frozen: PyTree,
                          context: Sequence[int]
                          ) -> models.ContextCache | None:
  """The cache of [BOS, inserted slots (a prompt), context]; None when all
  three are empty (decoder-only models)."""
  if model.family != models.DECODER_ONLY:
    raise ValueError("encode_shared_context: a context cache is "
                     f"decoder-only; {model.family} models take the "
                     "context in their inputs (apply_context)")
  if not context and not model.add_bos and not model.inserts_slots(
      trainable):
    return None
  return _encode_context(model, trainable, frozen,
                         jnp.asarray([list(context)], jnp.int32))


@functools.partial(jax.jit, static_argnums=0)  # Compiled once per length.
def _encode_context(model: method_base.TunedModel,
                    trainable: PyTree | None, frozen: PyTree, context):
  return model.encode_context(trainable, frozen, context)


def score_options(model: method_base.TunedModel,
                  trainable: PyTree | None, frozen: PyTree, *,
                  inputs: Sequence[Sequence[int]],
                  options: Sequence[Sequence[int]],
                  context: Sequence[int] = (), batch_size: int = 32,
                  max_input_length: int | None = None) -> np.ndarray:
  """Summed log p(option | prompt, context, input) for every row and option.

  Args:
    model: the tuned model, either family (its method's weights are taken
      from `trainable`).
    trainable: the method's trainable tree (a soft prompt); None: none.
    frozen: the backbone params.
    inputs: N token-id rows (no padding).
    options: C continuations / targets (token ids; lengths may differ).
    context: ids before every row (k-shot demonstrations); may be empty.
    batch_size: rows per call (each call scores rows x C sequences).
    max_input_length: rows longer than this keep their LAST tokens (the end
      holds the question / answer cue), before the context is applied;
      None: no limit.

  Returns:
    [N, C] float32 scores.
  """
  if not options or any(len(o) == 0 for o in options):
    raise ValueError("score_options: every option needs at least one token")
  rows = [list(r)[-max_input_length:] if max_input_length else list(r)
          for r in inputs]
  cache, rows = apply_context(model, trainable, frozen, context, rows)
  if all(len(o) == 1 for o in options):
    return _single_token_scores(model, trainable, frozen, cache, rows,
                                [o[0] for o in options], batch_size)
  num_options = len(options)
  longest = max(len(o) for o in options)  # Bucketed: fewer compilations.
  targets, t_mask = _padded(options, -(-longest // _BUCKET) * _BUCKET)
  targets = np.repeat(targets, batch_size, axis=0)  # [C * B, To]
  t_mask = np.repeat(t_mask, batch_size, axis=0)
  scores = np.zeros((len(rows), num_options), np.float32)
  for idx, ids, mask in _batches(rows, batch_size):
    ids, mask = np.tile(ids, (num_options, 1)), np.tile(mask, (num_options, 1))
    out = np.asarray(_score(model, trainable, frozen, cache, ids, mask, targets,
                            t_mask))
    scores[idx] = out.reshape(num_options, batch_size)[:, :len(idx)].T
  return scores


def score_pairs(model: method_base.TunedModel,
                trainable: PyTree | None, frozen: PyTree, *,
                inputs: Sequence[Sequence[int]],
                targets: Sequence[Sequence[int]], batch_size: int = 32,
                bucket: int = _BUCKET) -> np.ndarray:
  """Summed log p(targets[i] | prompt, inputs[i]) for each pair [N].

  Args:
    model, trainable, frozen: as `score_options` (trainable None: no prompt).
    inputs: N token-id rows (context included), no padding.
    targets: N non-empty token-id rows.
    batch_size: pairs per call.
    bucket: inputs are padded to a multiple of this (targets to one of 16):
      each distinct padded shape compiles once.

  Returns:
    [N] float32 scores.
  """
  if len(inputs) != len(targets):
    raise ValueError(f"score_pairs: {len(inputs)} inputs but {len(targets)}"
                     " targets")
  if any(len(t) == 0 for t in targets):
    raise ValueError("score_pairs: every target needs at least one token")
  scores = np.zeros(len(inputs), np.float32)
  by_target = {}  # Target bucket -> pair indices: one shape per group.
  for i, t in enumerate(targets):
    by_target.setdefault(-(-len(t) // _BUCKET) * _BUCKET, []).append(i)
  for length, members in sorted(by_target.items()):
    rows = [inputs[i] for i in members]
    for idx, ids, mask in _batches(rows, batch_size, bucket):
      chosen = [members[j] for j in idx]
      tgt, t_mask = _padded([targets[i] for i in chosen], length)
      pad = ((0, batch_size - len(chosen)), (0, 0))
      t_mask = np.pad(t_mask, pad)
      t_mask[len(chosen):, 0] = True  # Filler rows: one scored slot.
      out = _score_pairs(model, trainable, frozen, ids, mask,
                         np.pad(tgt, pad), t_mask)
      scores[chosen] = np.asarray(out)[:len(chosen)]
  return scores


def _batches(rows: Sequence[Sequence[int]], batch_size: int,
             bucket: int = _BUCKET):
  """(row indices, ids [B, T], mask [B, T]) by increasing length."""
  order = np.argsort([len(r) for r in rows], kind="stable")
  for start in range(0, len(rows), batch_size):
    idx = order[start:start + batch_size]
    longest = max(max(len(rows[i]) for i in idx), 1)
    ids, mask = _padded([rows[i] for i in idx],
                        -(-longest // bucket) * bucket)
    pad = ((0, batch_size - len(idx)), (0, 0))
    mask = np.pad(mask, pad)
    mask[:, 0] |= ~mask.any(axis=1)  # Filler rows: one visible slot.
    yield idx, np.pad(ids, pad), mask


def _single_token_scores(model, trainable, frozen, cache, rows, option_ids,
                         batch_size) -> np.ndarray:
  """[N, C] from one pass per row: the next-token log-probs of the options."""
  scores = np.zeros((len(rows), len(option_ids)), np.float32)
  option_ids = jnp.asarray(option_ids, jnp.int32)
  for idx, ids, mask in _batches(rows, batch_size):
    out = np.asarray(_next_token(model, trainable, frozen, cache, ids, mask,
                                     option_ids))
    scores[idx] = out[:len(idx)]
  return scores


def accuracy(scores: np.ndarray, labels: Sequence[int]) -> float:
  """Percent of rows whose best-scoring option is the label."""
  labels = np.asarray(labels)
  if scores.shape[0] != labels.shape[0] or not len(labels):
    raise ValueError(f"accuracy: {scores.shape[0]} score rows for "
                     f"{labels.shape[0]} labels")
  return 100.0 * float(np.mean(scores.argmax(axis=1) == labels))
