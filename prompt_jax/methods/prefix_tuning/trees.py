"""Prefix tuning's two trainable trees and the map from one to the other.

*Prefix form* (`projection=False`, and every artifact):
  {'prefix': {<site>: {'key': [S, P, K, D], 'value': [S, P, K, D]}}}
  slot s of a site is one layer's prefix (`layout`). Logical axes
  (None, PROMPT, HEADS, KV): heads shard like the attention's heads.

*Projection form* (`projection=True`, PEFT's `prefix_projection`, the
reparameterisation of Li & Liang 2021):
  {'embedding': [P, E],
   'hidden': {'kernel': [E, h], 'bias': [h]},
   'out': {<site>: {'kernel': [h, S, 2, K, D], 'bias': [S, 2, K, D]}}}
  prefixes = out(tanh(hidden(embedding))), i.e. PEFT's `Embedding(P, E) ->
  Linear(E, h) -> Tanh -> Linear(h, 2 * L * E)` with E = K * D (PEFT's
  `token_dim`) and h PEFT's `encoder_hidden_size` (default E). Output index
  (s, 0|1, k, d) is PEFT's flat index ((s * 2 + 0|1) * K + k) * D + d;
  several sites (T5 'paper') are the column blocks of one Linear.

Initialisation is PEFT's: `nn.Embedding`'s N(0, 1) (the prefixes themselves
without projection), `nn.Linear`'s U(+-1/sqrt(fan_in)) for kernels and
biases.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_jax import types
from prompt_jax.methods.prefix_tuning import layout as layout_lib
from prompt_jax.types import Array, PRNGKey, PyTree

PREFIX = "prefix"
_PREFIX_AXES = (None, types.PROMPT, types.HEADS, types.KV)


def _boxed(shape: tuple[int, ...], names: tuple) -> nn.LogicallyPartitioned:
  return nn.LogicallyPartitioned(jax.ShapeDtypeStruct(shape, jnp.float32),
                                 names=names)


def is_projection(trainable: PyTree) -> bool:
  """True for the projection form, False for the prefix form."""
  return PREFIX not in trainable


def abstract_prefixes(layout: layout_lib.Layout) -> PyTree:
  """Boxed abstract prefix form."""
  p, k, d = layout.length, layout.heads, layout.head_dim
  return {PREFIX: {
      site: {"key": _boxed((n, p, k, d), _PREFIX_AXES),
             "value": _boxed((n, p, k, d), _PREFIX_AXES)}
      for site, n in layout.sites}}


def abstract_projection(layout: layout_lib.Layout, hidden: int) -> PyTree:
  """Boxed abstract projection form with hidden width h."""
  p, e, k, d = layout.length, layout.token_dim, layout.heads, layout.head_dim
  return {
      "embedding": _boxed((p, e), (types.PROMPT, types.PROMPT_EMBED)),
      "hidden": {"kernel": _boxed((e, hidden), (types.PROMPT_EMBED, None)),
                 "bias": _boxed((hidden,), (None,))},
      "out": {site: {
          "kernel": _boxed((hidden, n, 2, k, d),
                           (None, None, None, types.HEADS, types.KV)),
          "bias": _boxed((n, 2, k, d), (None, None, types.HEADS, types.KV))}
              for site, n in layout.sites}}


def initialize(rng: PRNGKey, abstract: PyTree) -> PyTree:
  """PEFT's init of either form (unboxed abstract tree): N(0, 1) for the
  prefixes and the embedding, U(+-1/sqrt(fan_in)) for Linear layers."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  out = []
  for key, (path, spec) in zip(jax.random.split(rng, len(leaves)), leaves):
    names = [getattr(p, "key", None) for p in path]
    if names[0] in (PREFIX, "embedding"):
      out.append(jax.random.normal(key, spec.shape, spec.dtype))
      continue
    fan_in = (abstract["embedding"].shape[1] if names[0] == "hidden"
              else abstract["hidden"]["bias"].shape[0])
    bound = 1.0 / math.sqrt(fan_in)
    out.append(jax.random.uniform(key, spec.shape, spec.dtype, -bound, bound))
  return jax.tree.unflatten(treedef, out)


def prefixes(trainable: PyTree) -> dict[str, dict[str, Array]]:
  """{site: {'key', 'value': [S, P, K, D]}} of either form (the projection
  form runs its MLP; this is what `bind` and the artifact use)."""
  if not is_projection(trainable):
    return trainable[PREFIX]
  hidden = jnp.tanh(trainable["embedding"] @ trainable["hidden"]["kernel"]
                    + trainable["hidden"]["bias"])  # [P, h]
  out = {}
  for site, dense in trainable["out"].items():
    kv = jnp.einsum("ph,hsckd->psckd", hidden,
                    dense["kernel"]) + dense["bias"]  # [P, S, 2, K, D]
    kv = jnp.transpose(kv, (1, 2, 0, 3, 4))  # [S, 2, P, K, D]
    out[site] = {"key": kv[:, 0], "value": kv[:, 1]}
  return out
