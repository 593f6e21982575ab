"""T5 building blocks in Flax linen: norm, projections, attention, FFN.

Every parameter is declared with logical axis names (`prompt_jax.types`), and
block outputs are constrained with `nn.with_logical_constraint`, which becomes
a real sharding constraint when a mesh and rules are active
(`prompt_jax.partitioning`). Numerics follow Hugging Face `modeling_t5`:
RMS norm in fp32, no 1/sqrt(D) score scaling (it is folded into the query
init), softmax in fp32.
"""

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_jax import types
from prompt_jax.backbones import seams as seams_lib

Array = types.Array
_NEG_INF = float(np.finfo(np.float32).min)

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}


def _normal(stddev: float):
  return nn.initializers.normal(stddev=stddev)


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, variance in fp32."""
  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [..., H] -> [..., H] in `dtype`."""
    scale = self.param(
        "scale", nn.with_logical_partitioning(nn.initializers.ones,
                                              (types.EMBED,)),
        (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.epsilon)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


def _contract(x: Array, kernel: Array, n_in: int, dtype,
              out_dtype=None) -> Array:
  """Contracts the last `n_in` axes of x with the first `n_in` of kernel."""
  x_axes = tuple(range(x.ndim - n_in, x.ndim))
  k_axes = tuple(range(n_in))
  return jax.lax.dot_general(
      x.astype(dtype), kernel.astype(dtype), ((x_axes, k_axes), ((), ())),
      preferred_element_type=out_dtype)


def _dropped(x: Array, delta: seams_lib.LowRankDelta) -> Array:
  """x with the delta's input dropout (inverted scaling) when it has a
  dropout rng, else x."""
  if delta.dropout_rng is None or delta.dropout_rate == 0.0:
    return x
  keep = jax.random.bernoulli(delta.dropout_rng, 1.0 - delta.dropout_rate,
                              x.shape)
  return jnp.where(keep, x / (1.0 - delta.dropout_rate), 0.0).astype(x.dtype)


class Projection(nn.Module):
  """Bias-free linear map from the last `n_in` axes to `features`.

  Attributes:
    features: output dims, e.g. (N, D) for a query or (H,) for an output.
    kernel_axes: logical names of the kernel dims, inputs then outputs.
    n_in: number of trailing input axes contracted.
    stddev: init standard deviation.
    fp32_output: accumulate and return fp32 (for logits).
  """
  features: Sequence[int]
  kernel_axes: Sequence[str]
  n_in: int = 1
  stddev: float = 1.0
  fp32_output: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array,
               delta: seams_lib.LowRankDelta | None = None,
               bias: Array | None = None) -> Array:
    """x: [..., *in_dims] -> [..., *features]; optional low-rank delta and
    added bias [*features]."""
    shape = tuple(x.shape[-self.n_in:]) + tuple(self.features)
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(_normal(self.stddev),
                                               tuple(self.kernel_axes)),
        shape, self.param_dtype)
    out_dtype = jnp.float32 if self.fp32_output else None
    y = _contract(x, kernel, self.n_in, self.dtype, out_dtype)
    if delta is not None:
      low = _contract(_dropped(x, delta), delta.a, self.n_in,
                      self.dtype)  # [..., R]
      update = delta.scale * _contract(low, delta.b, 1, self.dtype, out_dtype)
      if delta.gate is not None:
        gate = delta.gate(x)  # [B, T] or [B, 1]
        update = update * gate.reshape(
            gate.shape + (1,) * (update.ndim - gate.ndim)).astype(update.dtype)
      y = y + update
    if bias is not None:
      y = y + bias.astype(y.dtype)
    return y


class Embed(nn.Module):
  """Token embedding table [V, H]; `attend` gives the tied-head logits."""
  num_embeddings: int
  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(_normal(1.0),
                                                  (types.VOCAB, types.EMBED)),
        (self.num_embeddings, self.features), self.param_dtype)

  def __call__(self, ids: Array) -> Array:
    """ids: [B, T] int -> [B, T, H]."""
    return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

  def attend(self, x: Array) -> Array:
    """x: [B, T, H] -> logits [B, T, V] in fp32."""
    return jnp.einsum("bth,vh->btv", x.astype(self.dtype),
                      self.embedding.astype(self.dtype),
                      preferred_element_type=jnp.float32)


def gate_prefix_logits(logits: Array, gate: Array, prefix_length: int
                       ) -> Array:
  """Adds log(gate) to the first `prefix_length` key slots of `logits`.

  Args:
    logits: [B, ..., Tq, Tk] attention logits, prefix slots first.
    gate: [B, Tq] or [B, 1] in (0, 1].
  """
  log_gate = jnp.log(gate.astype(jnp.float32))
  log_gate = log_gate.reshape((log_gate.shape[0],) + (1,) * (
      logits.ndim - 3) + (log_gate.shape[1], 1))
  is_prefix = jnp.arange(logits.shape[-1]) < prefix_length
  return logits + jnp.where(is_prefix, log_gate, 0.0)


def embed_with_pseudo_tokens(embedder: "Embed", tokens: Array,
                             pseudo_token_fn: Callable[[Array, Array], Array]
                             | None) -> Array:
  """Token embeddings [B, T, H] of tokens [B, T]; with `pseudo_token_fn`,
  negative ids are pseudo tokens whose rows the function fills in."""
  if pseudo_token_fn is None:
    return embedder(tokens)
  x = embedder(jnp.maximum(tokens, 0))
  return pseudo_token_fn(tokens, x)


def relative_position_bucket(relative_position: Array, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> Array:
  """T5's bucketing of (key position - query position), as in HF `modeling_t5`.

  Args:
    relative_position: int array of any shape.
    bidirectional: encoder (True) or causal decoder (False).
    num_buckets: total buckets.
    max_distance: distances at or beyond this share the last bucket.

  Returns:
    int32 array of the same shape with values in [0, num_buckets).
  """
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(relative_position)
  else:
    n = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # log(0) would be -inf; those entries are small and discarded by `where`.
  ratio = jnp.maximum(n, 1).astype(jnp.float32) / max_exact
  large = max_exact + (
      jnp.log(ratio) / jnp.float32(math.log(max_distance / max_exact)) *
      (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return (buckets + jnp.where(is_small, n, large)).astype(jnp.int32)


class RelativePositionBias(nn.Module):
  """Learned per-head bias indexed by relative-position bucket."""
  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool
  stddev: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, q_positions: Array, k_positions: Array) -> Array:
    """q_positions: [Tq], k_positions: [Tk] -> bias [1, N, Tq, Tk] fp32."""
    table = self.param(
        "rel_embedding", nn.with_logical_partitioning(
            _normal(self.stddev), (types.HEADS, types.RELPOS_BUCKETS)),
        (self.num_heads, self.num_buckets), self.param_dtype)
    rel = k_positions[None, :] - q_positions[:, None]  # [Tq, Tk]
    bucket = relative_position_bucket(rel, self.bidirectional,
                                      self.num_buckets, self.max_distance)
    bias = jnp.take(table.astype(jnp.float32), bucket, axis=1)  # [N, Tq, Tk]
    return bias[None]


class MlpBlock(nn.Module):
  """Feed-forward block (T5, Llama): `wo(act(wi x))` or gated `wo(act(wi_0 x) * wi_1 x)`."""
  emb_dim: int
  mlp_dim: int
  activation: str = "relu"
  gated: bool = False
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _proj(self, name, axes, features, stddev):
    return Projection(features=features, kernel_axes=axes, n_in=1,
                             stddev=stddev, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=name)

  @nn.compact
  def __call__(self, x: Array, seams: seams_lib.MlpSeams | None = None,
               deterministic: bool = True) -> Array:
    """x: [B, T, H] -> [B, T, H]."""
    s = seams or seams_lib.MlpSeams()
    deltas, biases = s.deltas or {}, s.biases or {}
    act = ACTIVATIONS[self.activation]
    in_axes, std = (types.EMBED, types.MLP), self.emb_dim ** -0.5
    if self.gated:
      hidden = act(self._proj("wi_0", in_axes, (self.mlp_dim,), std)(
          x, deltas.get("wi_0"), biases.get("wi_0")))
      hidden = hidden * self._proj("wi_1", in_axes, (self.mlp_dim,), std)(
          x, deltas.get("wi_1"), biases.get("wi_1"))
    else:
      hidden = act(self._proj("wi", in_axes, (self.mlp_dim,), std)(
          x, deltas.get("wi"), biases.get("wi")))
    if s.hidden_scale is not None:
      hidden = hidden * s.hidden_scale.astype(hidden.dtype)
    hidden = nn.with_logical_constraint(
        hidden, (types.BATCH, types.LENGTH, types.MLP))
    hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic)
    out = self._proj("wo", (types.MLP, types.EMBED), (self.emb_dim,),
                     self.mlp_dim ** -0.5)(hidden, deltas.get("wo"),
                                           biases.get("wo"))
    if s.post_fn is not None:
      out = s.post_fn(out)
    return out
