"""Multi-head attention for T5 with a key/value cache and PEFT seams.

Decoding follows the T5X pattern: calling with `decode=True` before a cache
exists creates it (self-attention: zeros of the full decode length; cross
attention: the projected encoder keys/values, computed once). Later calls
with `decode=True` process one position: self-attention writes its key/value
at `cache_index` and attends over the whole cache (the caller's mask hides
unwritten slots); cross-attention reads the stored keys/values.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_jax import types
from prompt_jax.backbones import layers
from prompt_jax.backbones import seams as seams_lib

Array = types.Array
_QKV_AXES = (types.EMBED, types.HEADS, types.KV)
_OUT_AXES = (types.HEADS, types.KV, types.EMBED)
_ACT_HEADS = (types.BATCH, types.LENGTH, types.HEADS, types.KV)


def _delta(s: seams_lib.AttentionSeams, name: str):
  return None if s.deltas is None else s.deltas.get(name)


def _bias(s: seams_lib.AttentionSeams, name: str):
  return None if s.biases is None else s.biases.get(name)


def _with_prefix(keys: Array, values: Array, mask: Array, bias: Array | None,
                 s: seams_lib.AttentionSeams):
  """Prepends per-layer prefix keys/values; they are visible and unbiased,
  unless `bias` already covers them (the decoder's `position_offset`).

  keys/values: [B, Tk, N, D]; mask: [B|1, 1, Tq, Tk]; bias: [1|B, N, Tq, Tk]
  or [1|B, N, Tq, P_kv + Tk]. Returns the same with Tk -> P_kv + Tk.
  """
  b, tk = keys.shape[:2]
  pk = jnp.broadcast_to(s.prefix_key, (b,) + s.prefix_key.shape[1:])
  pv = jnp.broadcast_to(s.prefix_value, (b,) + s.prefix_value.shape[1:])
  p = pk.shape[1]
  if bias is not None and bias.shape[-1] not in (tk, p + tk):
    raise ValueError(f"T5 attention: a position_offset of "
                     f"{bias.shape[-1] - tk} needs prefixes of that length, "
                     f"got {p}")
  keys = jnp.concatenate([pk.astype(keys.dtype), keys], axis=1)
  values = jnp.concatenate([pv.astype(values.dtype), values], axis=1)
  mask = jnp.concatenate(
      [jnp.ones(mask.shape[:-1] + (p,), bool), mask], axis=-1)
  if bias is not None and bias.shape[-1] == tk:
    bias = jnp.concatenate(
        [jnp.zeros(bias.shape[:-1] + (p,), bias.dtype), bias], axis=-1)
  return keys, values, mask, bias


class MultiHeadAttention(nn.Module):
  """T5 attention (no score scaling, fp32 softmax).

  Attributes:
    num_heads: N.
    head_dim: D.
    emb_dim: H, the output width.
    is_cross: cross-attention (kv from the encoder, cached once when decoding).
    dropout_rate: dropout on attention weights.
  """
  num_heads: int
  head_dim: int
  emb_dim: int
  is_cross: bool = False
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _proj(self, name: str, axes, features, n_in: int, stddev: float):
    return layers.Projection(features=features, kernel_axes=axes, n_in=n_in,
                             stddev=stddev, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=name)

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Array,
               bias: Array | None = None,
               seams: seams_lib.AttentionSeams | None = None,
               decode: bool = False, deterministic: bool = True) -> Array:
    """Attends from inputs_q to inputs_kv.

    Args:
      inputs_q: [B, Tq, H].
      inputs_kv: [B, Tk, H] (ignored for cached cross-attention steps).
      mask: bool, broadcastable to [B, 1, Tq, Tk]; True = may attend. When
        decoding one step, Tk is the cache length.
      bias: fp32 [1|B, N, Tq, Tk] additive bias, or None.
      seams: PEFT seams of this block.
      decode: use/initialise the key/value cache.
      deterministic: disables dropout.

    Returns:
      [B, Tq, H].
    """
    s = seams or seams_lib.AttentionSeams()
    h, n, d = self.emb_dim, self.num_heads, self.head_dim
    query = self._proj("query", _QKV_AXES, (n, d), 1, (h * d) ** -0.5)(
        inputs_q, _delta(s, "query"), _bias(s, "query"))
    query = nn.with_logical_constraint(query, _ACT_HEADS)
    key, value = self._keys_values(inputs_kv, s, decode)
    if s.prefix_key is not None:
      key, value, mask, bias = _with_prefix(key, value, mask, bias, s)
    elif bias is not None and bias.shape[-1] > key.shape[1]:
      bias = bias[..., -key.shape[1]:]  # Offset biases, no prefix here.
    logits = jnp.einsum("bqnd,bknd->bnqk", query, key,
                        preferred_element_type=jnp.float32)
    if bias is not None:
      logits = logits + bias
    if s.prefix_gate is not None and s.prefix_key is not None:
      logits = layers.gate_prefix_logits(logits, s.prefix_gate(inputs_q),
                                         s.prefix_key.shape[1])
    logits = jnp.where(mask, logits, layers._NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    weights = nn.Dropout(self.dropout_rate)(weights, deterministic)
    out = jnp.einsum("bnqk,bknd->bqnd", weights, value.astype(self.dtype))
    out = nn.with_logical_constraint(out, _ACT_HEADS)
    out = self._proj("out", _OUT_AXES, (h,), 2, (n * d) ** -0.5)(
        out, _delta(s, "out"), _bias(s, "out"))
    return out if s.post_fn is None else s.post_fn(out)  # Adapters.

  def _project_kv(self, inputs_kv: Array, s: seams_lib.AttentionSeams):
    h, n, d = self.emb_dim, self.num_heads, self.head_dim
    key = self._proj("key", _QKV_AXES, (n, d), 1, h ** -0.5)(
        inputs_kv, _delta(s, "key"), _bias(s, "key"))
    value = self._proj("value", _QKV_AXES, (n, d), 1, h ** -0.5)(
        inputs_kv, _delta(s, "value"), _bias(s, "value"))
    if s.key_scale is not None:
      key = key * s.key_scale.astype(key.dtype)
    if s.value_scale is not None:
      value = value * s.value_scale.astype(value.dtype)
    return (nn.with_logical_constraint(key, _ACT_HEADS),
            nn.with_logical_constraint(value, _ACT_HEADS))

  def _keys_values(self, inputs_kv: Array, s: seams_lib.AttentionSeams,
                   decode: bool) -> tuple[Array, Array]:
    """Returns keys/values [B, Tk, N, D], reading or filling the cache."""
    if not decode:
      return self._project_kv(inputs_kv, s)
    initialized = self.has_variable("cache", "cached_key")
    if self.is_cross:
      if initialized:  # Steps read the projections made at cache creation.
        return (self.get_variable("cache", "cached_key"),
                self.get_variable("cache", "cached_value"))
      key, value = self._project_kv(inputs_kv, s)
      self.put_variable("cache", "cached_key", key)
      self.put_variable("cache", "cached_value", value)
      return key, value
    key, value = self._project_kv(inputs_kv, s)
    if not initialized:  # Cache creation: inputs_kv spans the decode length.
      self.put_variable("cache", "cached_key", jnp.zeros_like(key))
      self.put_variable("cache", "cached_value", jnp.zeros_like(value))
      self.put_variable("cache", "cache_index", jnp.zeros((), jnp.int32))
      return key, value
    index = self.get_variable("cache", "cache_index")
    start = (0, index, 0, 0)
    key = jax.lax.dynamic_update_slice(
        self.get_variable("cache", "cached_key"), key.astype(self.dtype), start)
    value = jax.lax.dynamic_update_slice(
        self.get_variable("cache", "cached_value"), value.astype(self.dtype),
        start)
    self.put_variable("cache", "cached_key", key)
    self.put_variable("cache", "cached_value", value)
    self.put_variable("cache", "cache_index", index + inputs_kv.shape[1])
    return key, value


MlpBlock = layers.MlpBlock  # Shared with the Llama family.
