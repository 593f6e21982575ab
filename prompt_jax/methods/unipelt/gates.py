"""UniPELT's gates: `g = sigmoid(x w + b)` from a submodule's input.

One gate is a `Linear(H, 1)`: `{'kernel': [H], 'bias': []}`, initialised
as torch's default Linear (both uniform in +-1/sqrt(H)). Over a
bidirectional stack (the T5 encoder, and cross-attention keys/values,
whose input is the encoder's output) the gate is UniPELT's: the mean of
the per-token gates over the sequence, one value per row ([B, 1]). Over
a causal stack (decoders) each token keeps its own gate ([B, T]): a mean
over the sequence would let later tokens change earlier positions (and
decoding with a cache would differ from teacher forcing).
"""

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_jax import types
from prompt_jax.types import Array, PRNGKey

KINDS = ("lora", "prefix", "adapter")
GateParams = dict[str, Array]


def abstract(width: int) -> dict:
  """Boxed shapes of one gate."""
  return {"kernel": nn.LogicallyPartitioned(
      jax.ShapeDtypeStruct((width,), jnp.float32), names=(types.EMBED,)),
          "bias": nn.LogicallyPartitioned(
              jax.ShapeDtypeStruct((), jnp.float32), names=())}


def init(rng: PRNGKey, width: int) -> GateParams:
  """torch `Linear(H, 1)` default init."""
  bound = 1.0 / math.sqrt(width)
  k_w, k_b = jax.random.split(rng)
  return {"kernel": jax.random.uniform(k_w, (width,), jnp.float32, -bound,
                                       bound),
          "bias": jax.random.uniform(k_b, (), jnp.float32, -bound, bound)}


def gate_fn(params: GateParams, mean: bool) -> Callable[[Array], Array]:
  """`x [B, T, H] -> g [B, 1]` (mean over T) or `[B, T]` (per token)."""
  def fn(x: Array) -> Array:
    logits = jnp.einsum("bth,h->bt", x.astype(jnp.float32),
                        params["kernel"]) + params["bias"]
    g = jax.nn.sigmoid(logits)
    return jnp.mean(g, axis=1, keepdims=True) if mean else g
  return fn
