"""Sentence embeddings from a frozen backbone, for kNN demonstrations (KATE).

An embedding is the mean of the backbone's final hidden states over the
real tokens (mask = 1) of a sentence; padding slots never contribute:

  decoder  `DecoderLM.apply(..., return_hidden=True)`: the final-normed
           states [B, T, H] (causal, so each state summarises its prefix).
  T5       `T5Transformer.encode`: the encoder output [B, Ti, H].

No prompt or other seam is applied: KATE embeds with the plain frozen
model. The functions are pure, so jit them with the module static:

  >>> embed = jax.jit(decoder_sentence_embeddings, static_argnums=0)
  >>> module = network.DecoderLM(cfg)
  >>> tokens = np.array([[5, 6, 7, 0]]); mask = tokens != 0
  >>> embed(module, params, tokens, mask)  # [1, H]: mean of 3 states

A row with no real tokens gets the zero vector, which
`NearestNeighbourIndex` rejects with an error naming the row.
"""

import jax.numpy as jnp

from prompt_jax import types
from prompt_jax.backbones.llama import network as decoder_network
from prompt_jax.backbones.t5 import network as t5_network

Array = types.Array


def mean_pool(hidden: Array, mask: Array) -> Array:
  """Mean of `hidden` over the slots where `mask` is set.

  Args:
    hidden: [B, T, H] states.
    mask: [B, T] (bool or 0/1) real-token mask.

  Returns:
    [B, H] float32 means; zeros for a row without real tokens.
  """
  weights = mask.astype(jnp.float32)[..., None]  # [B, T] -> [B, T, 1]
  summed = jnp.sum(hidden.astype(jnp.float32) * weights, axis=1)  # [B, H]
  counts = jnp.maximum(jnp.sum(weights, axis=1), 1.0)  # [B, 1]
  return summed / counts


def decoder_sentence_embeddings(module: decoder_network.DecoderLM,
                                params, tokens: Array, mask: Array) -> Array:
  """Mean-pooled final hidden states of a decoder-only LM.

  Args:
    module: the frozen `DecoderLM`.
    params: its (unboxed) param tree, `apply({'params': params}, ...)`.
    tokens: [B, T] ids, any mix of left and right padding.
    mask: [B, T] real-token mask.

  Returns:
    [B, H] float32 sentence embeddings.
  """
  hidden = module.apply({"params": params}, tokens, mask,
                        return_hidden=True)  # [B, T, H]
  return mean_pool(hidden, mask)


def t5_sentence_embeddings(module: t5_network.T5Transformer, params,
                           tokens: Array, mask: Array) -> Array:
  """Mean-pooled encoder states of a T5.

  Args:
    module: the frozen `T5Transformer` (only its encoder runs).
    params: its (unboxed) param tree.
    tokens: [B, Ti] encoder ids.
    mask: [B, Ti] real-token mask.

  Returns:
    [B, H] float32 sentence embeddings.
  """
  encoded, encoded_mask = module.apply(
      {"params": params}, tokens, mask,
      method=t5_network.T5Transformer.encode)  # [B, Ti, H], [B, Ti]
  return mean_pool(encoded, encoded_mask)
