"""Token layout of decoder-only scoring: masks, left padding, context caches.

A decoder-only row is [inputs, targets] in one sequence. Scoring joins
left-padded inputs and left-aligned targets so that the mask hides the
padding and positions stay contiguous; training rows come left-aligned from
seqio's prefix-LM converter and their mask comes from the loss weights.
"""

import dataclasses

import flax
import jax.numpy as jnp

from prompt_jax.backbones import seams as seams_lib
from prompt_jax.types import Array, PyTree


def mask_from_weights(weights: Array) -> Array:
  """[B, L] bool: slots at or before the last slot with a loss weight."""
  w = (weights > 0).astype(jnp.int32)
  return jnp.cumsum(w[:, ::-1], axis=1)[:, ::-1] > 0


def left_pad(tokens: Array, mask: Array) -> tuple[Array, Array]:
  """Moves each row's real (left-aligned) tokens to the right end.

  Args:
    tokens: [B, T] ids, real tokens first.
    mask: [B, T] real-token mask (a prefix of each row).

  Returns:
    (tokens, mask) [B, T], rolled right by the row's padding count.
  """
  length = tokens.shape[1]
  shift = length - jnp.sum(mask.astype(jnp.int32), axis=1, keepdims=True)
  src = (jnp.arange(length)[None] - shift) % length
  return (jnp.take_along_axis(tokens, src, axis=1),
          jnp.take_along_axis(mask.astype(bool), src, axis=1))


def first_target_slots(weights: Array, length: int) -> tuple[Array, Array]:
  """Slots [B, S] from each row's first weighted slot, and their validity."""
  big = weights.shape[1]
  first = jnp.argmax(weights > 0, axis=1)[:, None]  # [B, 1]
  slots = first + jnp.arange(length)[None]
  return jnp.minimum(slots, big - 1), slots < big


@flax.struct.dataclass
class ContextCache:
  """Keys/values of a shared context, for `DecoderOnlyLM.score(context=)`.

  Attributes:
    keys: per layer, rotated keys [1, C, K, D] (C = BOS + inserted slots +
      context).
    values: per layer, values [1, C, K, D].
    length: C, the position of the first query token.
  """
  keys: tuple[Array, ...]
  values: tuple[Array, ...]
  length: int = flax.struct.field(pytree_node=False, default=0)

  def merged_into(self, seams: seams_lib.Seams) -> seams_lib.Seams:
    """`seams` without its embed seam (its slots are in the cache), each
    decoder layer attending to the cached keys/values as a prefix.

    Raises:
      ValueError: if `seams` already holds self-attention prefixes.
    """
    layers = []
    for i, (k, v) in enumerate(zip(self.keys, self.values)):
      layer = seams.decoder_layer(i)
      attention = layer.self_attention or seams_lib.AttentionSeams()
      if attention.prefix_key is not None:
        raise ValueError("a shared context cannot be combined with a "
                         "method's own key/value prefixes")
      attention = attention.replace(prefix_key=k, prefix_value=v)
      layers.append(layer.replace(self_attention=attention))
    return dataclasses.replace(seams, decoder_embed_fn=None,
                               decoder_layers=tuple(layers))


def context_cache(cache: PyTree, num_layers: int) -> ContextCache:
  """A `ContextCache` from the `cache` collection of a decode-mode call."""
  layers = [cache[f"layers_{i}"]["self_attention"] for i in range(num_layers)]
  return ContextCache(tuple(c["cached_key"] for c in layers),
                      tuple(c["cached_value"] for c in layers),
                      int(layers[0]["cached_key"].shape[1]))
