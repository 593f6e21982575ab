"""Rotary embeddings and grouped-query attention with a key/value cache.

Numerics follow Hugging Face `modeling_llama`: rotary embeddings in the
`rotate_half` convention (dimension d pairs with d + D/2), scores scaled by
1/sqrt(D), softmax in fp32. Query head n reads key/value head n // G (HF's
`repeat_kv`), computed without materialising repeated keys: queries are viewed
as [B, T, K, G, D].

Decoding follows the T5X pattern of `prompt_jax.backbones.t5.attention`: a `decode=True`
call before a cache exists creates zeroed `cached_key`/`cached_value` of the
input's length (the cache length) and computes as usual; later calls write
their T keys/values at `cache_index` (owned by the caller, `DecoderLM`) and
attend over the whole cache, the caller's mask hiding unwritten and padded
slots. Keys are cached after rotation, so their positions stay fixed.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_jax import types
from prompt_jax.backbones.llama.config import Llama3RopeScaling
from prompt_jax.backbones import layers
from prompt_jax.backbones import seams as seams_lib

Array = types.Array
_QKV_AXES = (types.EMBED, types.HEADS, types.KV)
_OUT_AXES = (types.HEADS, types.KV, types.EMBED)
# Key/value heads share the HEADS axis: sharded contiguously on the same mesh
# axis, query heads [k*G, (k+1)*G) land on the device holding kv head k.
_ACT_HEADS = (types.BATCH, types.LENGTH, types.HEADS, types.KV)
_NEG_INF = float(np.finfo(np.float32).min)


def rope_inverse_frequencies(head_dim: int, theta: float,
                             scaling: Llama3RopeScaling | None = None
                             ) -> np.ndarray:
  """[D/2] float32 inverse frequencies, as HF computes them (in float32)."""
  exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32)
  inv_freq = (1.0 / (np.float32(theta) ** (exponents / head_dim))
              ).astype(np.float32)
  if scaling is None:
    return inv_freq
  old_len = scaling.original_max_position_embeddings
  low_wavelen = old_len / scaling.low_freq_factor
  high_wavelen = old_len / scaling.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
  smooth = ((old_len / wavelen - scaling.low_freq_factor)
            / (scaling.high_freq_factor - scaling.low_freq_factor))
  smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rotary(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
  """Rotates x by its positions (HF `rotate_half` convention), in fp32.

  Args:
    x: [B, T, N, D] queries or keys.
    positions: [B, T] int positions.
    inv_freq: [D/2] inverse frequencies.

  Returns:
    [B, T, N, D] in x's dtype.
  """
  freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
  angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B,T,1,D]
  x32 = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


def _delta(s: seams_lib.AttentionSeams, name: str):
  return None if s.deltas is None else s.deltas.get(name)


def _bias(s: seams_lib.AttentionSeams, name: str):
  return None if s.biases is None else s.biases.get(name)


def _with_prefix(keys: Array, values: Array, mask: Array,
                 s: seams_lib.AttentionSeams) -> tuple[Array, Array, Array]:
  """Prepends per-layer prefix keys/values, always visible and unrotated.

  keys/values: [B, Tk, K, D]; prefixes [B|1, P, K, D]; mask [B|1, Tq, Tk].
  Returns the same with Tk -> P + Tk.
  """
  b = keys.shape[0]
  pk = jnp.broadcast_to(s.prefix_key, (b,) + s.prefix_key.shape[1:])
  pv = jnp.broadcast_to(s.prefix_value, (b,) + s.prefix_value.shape[1:])
  keys = jnp.concatenate([pk.astype(keys.dtype), keys], axis=1)
  values = jnp.concatenate([pv.astype(values.dtype), values], axis=1)
  mask = jnp.concatenate(
      [jnp.ones(mask.shape[:-1] + (pk.shape[1],), bool), mask], axis=-1)
  return keys, values, mask


class GroupedQueryAttention(nn.Module):
  """Causal self-attention with N query and K key/value heads.

  Attributes:
    num_heads: N.
    num_kv_heads: K (divides N).
    head_dim: D.
    emb_dim: H, input and output width.
    inv_freq: [D/2] rotary inverse frequencies (static, hashable tuple).
    dropout_rate: dropout on attention weights.
  """
  num_heads: int
  num_kv_heads: int
  head_dim: int
  emb_dim: int
  inv_freq: tuple[float, ...]
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _proj(self, name: str, axes, features, n_in: int, stddev: float):
    return layers.Projection(features=features, kernel_axes=axes, n_in=n_in,
                             stddev=stddev, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=name)

  @nn.compact
  def __call__(self, x: Array, positions: Array, mask: Array,
               seams: seams_lib.AttentionSeams | None = None,
               decode: bool = False, cache_index: Array | None = None,
               deterministic: bool = True) -> Array:
    """Attends from x to itself (or to the cache when decoding).

    Args:
      x: [B, T, H].
      positions: [B, T] rotary positions of the T inputs.
      mask: bool [B|1, T, Tk]; True = may attend. Tk = T, or the cache
        length when decoding from a cache.
      seams: PEFT seams; prefix keys/values are [B|1, P, K, D], key/value
        scales [K, D], deltas keyed query/key/value/out.
      decode: create (no cache yet) or use the key/value cache.
      cache_index: [] first cache slot written by this call (when a cache
        exists).
      deterministic: disables dropout.

    Returns:
      [B, T, H].
    """
    s = seams or seams_lib.AttentionSeams()
    h, n, k, d = self.emb_dim, self.num_heads, self.num_kv_heads, self.head_dim
    inv_freq = np.asarray(self.inv_freq, np.float32)
    query = self._proj("query", _QKV_AXES, (n, d), 1, h ** -0.5)(
        x, _delta(s, "query"), _bias(s, "query"))
    query = apply_rotary(query, positions, inv_freq)
    query = nn.with_logical_constraint(query, _ACT_HEADS)
    key, value = self._project_kv(x, positions, inv_freq, s)
    if decode:
      key, value = self._update_cache(key, value, cache_index)
    if s.prefix_key is not None:
      key, value, mask = _with_prefix(key, value, mask, s)
    b, t = query.shape[:2]
    grouped = query.reshape(b, t, k, n // k, d)  # [B, T, N, D] -> [B,T,K,G,D]
    logits = jnp.einsum("bqkgd,bskd->bkgqs", grouped, key,
                        preferred_element_type=jnp.float32) * d ** -0.5
    if s.prefix_gate is not None and s.prefix_key is not None:
      logits = layers.gate_prefix_logits(logits, s.prefix_gate(x),
                                         s.prefix_key.shape[1])
    logits = jnp.where(mask[:, None, None], logits, _NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    weights = nn.Dropout(self.dropout_rate)(weights, deterministic)
    out = jnp.einsum("bkgqs,bskd->bqkgd", weights, value.astype(self.dtype))
    out = nn.with_logical_constraint(out.reshape(b, t, n, d), _ACT_HEADS)
    out = self._proj("out", _OUT_AXES, (h,), 2, (n * d) ** -0.5)(
        out, _delta(s, "out"), _bias(s, "out"))
    return out if s.post_fn is None else s.post_fn(out)  # Adapters.

  def _project_kv(self, x: Array, positions: Array, inv_freq: np.ndarray,
                  s: seams_lib.AttentionSeams) -> tuple[Array, Array]:
    """Rotated keys and values [B, T, K, D]; IA3 scales act before rotation."""
    h, k, d = self.emb_dim, self.num_kv_heads, self.head_dim
    key = self._proj("key", _QKV_AXES, (k, d), 1, h ** -0.5)(
        x, _delta(s, "key"), _bias(s, "key"))
    value = self._proj("value", _QKV_AXES, (k, d), 1, h ** -0.5)(
        x, _delta(s, "value"), _bias(s, "value"))
    # IA3 scales as x + x * (l - 1), which is x * l: at l = 1 the plain
    # `key * l` made XLA:CPU emit a rotation that rounds differently from
    # the bare backbone's (1e-6 logits); this form keeps IA3's init bit for
    # bit equal to it (tests/methods/ia3_test.py, conformance_test.py).
    if s.key_scale is not None:
      key = key + key * (s.key_scale.astype(key.dtype) - 1)
    if s.value_scale is not None:
      value = value + value * (s.value_scale.astype(value.dtype) - 1)
    key = apply_rotary(key, positions, inv_freq)
    return (nn.with_logical_constraint(key, _ACT_HEADS),
            nn.with_logical_constraint(value, _ACT_HEADS))

  def _update_cache(self, key: Array, value: Array,
                    cache_index: Array | None) -> tuple[Array, Array]:
    """Creates the cache, or writes T slots at cache_index and reads all."""
    if not self.has_variable("cache", "cached_key"):
      self.put_variable("cache", "cached_key",
                        jnp.zeros(key.shape, self.dtype))
      self.put_variable("cache", "cached_value",
                        jnp.zeros(value.shape, self.dtype))
      return key, value
    start = (0, cache_index, 0, 0)
    key = jax.lax.dynamic_update_slice(
        self.get_variable("cache", "cached_key"), key.astype(self.dtype), start)
    value = jax.lax.dynamic_update_slice(
        self.get_variable("cache", "cached_value"), value.astype(self.dtype),
        start)
    self.put_variable("cache", "cached_key", key)
    self.put_variable("cache", "cached_value", value)
    return key, value
