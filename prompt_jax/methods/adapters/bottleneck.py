"""One bottleneck adapter: its equation, parameters and initialisations.

For a block output x [..., H] (attention after its out projection, or the
FFN after wo; before the block's residual add), with R = H //
reduction_factor:

  adapter(x) = x + (act(x W_down + b_down) W_up + b_up)

W_down [H, R], b_down [R], W_up [R, H], b_up [H]. The layer then adds its
residual as usual: x_in + adapter(x). This is the sequential `Adapter` of
the adapters library (AdapterHub) with `residual_before_ln=True`, no
`ln_before` / `ln_after`, `scaling=1.0`, no gating, and no original layer
norm around it (`original_ln_before=False`, as in its `DoubleSeqBnConfig`,
Houlsby; T5 and Llama pass it no layer norm).

Initialisations (the adapters library's `init_weights`):
  'mam': W_down ~ U(+-1/sqrt(H)) (torch's `kaiming_uniform_(a=sqrt(5))`),
    b_down = 0, W_up = 0, b_up = 0: the adapter is exactly the identity.
  'houlsby': W_down, W_up ~ N(0, 1e-2^2) truncated at +-2 std (torch's
    `trunc_normal_(std=1e-2, a=-2e-2, b=2e-2)`), biases 0: near identity.

Sharding: the bottleneck dim R is named `types.MLP` (split over 'model'
under the standard rules, like the FFN hidden dim), H is `types.EMBED`.
Parameters are float32; the adapter runs in x's dtype.
"""

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_jax import types
from prompt_jax.types import Array, PRNGKey

INITS = ("houlsby", "mam")
HOULSBY_STD = 1e-2

Params = dict[str, dict[str, Array]]


def delta(params: Params, x: Array, act: Callable[[Array], Array]) -> Array:
  """x [..., H] -> act(x W_down + b_down) W_up + b_up [..., H], what the
  adapter adds to x."""
  down, up = params["down"], params["up"]
  hidden = act(x @ down["kernel"].astype(x.dtype) +
               down["bias"].astype(x.dtype))  # [..., R]
  return hidden @ up["kernel"].astype(x.dtype) + up["bias"].astype(x.dtype)


def apply(params: Params, x: Array, act: Callable[[Array], Array]) -> Array:
  """x [..., H] -> x + delta(x) [..., H]."""
  return x + delta(params, x, act)


def abstract(width: int, bottleneck: int) -> dict:
  """Boxed `ShapeDtypeStruct`s of one adapter (H = width, R = bottleneck)."""
  def box(shape, names):
    return nn.LogicallyPartitioned(jax.ShapeDtypeStruct(shape, jnp.float32),
                                   names=names)
  return {"down": {"kernel": box((width, bottleneck),
                                 (types.EMBED, types.MLP)),
                   "bias": box((bottleneck,), (types.MLP,))},
          "up": {"kernel": box((bottleneck, width), (types.MLP, types.EMBED)),
                 "bias": box((width,), (types.EMBED,))}}


def init(rng: PRNGKey, width: int, bottleneck: int, how: str) -> Params:
  """One adapter's initial parameters ('mam' or 'houlsby', see above).

  Raises:
    ValueError: an unknown `how`.
  """
  h, r = width, bottleneck
  k_down, k_up = jax.random.split(rng)
  if how == "mam":
    bound = 1.0 / math.sqrt(h)
    w_down = jax.random.uniform(k_down, (h, r), jnp.float32, -bound, bound)
    w_up = jnp.zeros((r, h), jnp.float32)
  elif how == "houlsby":
    w_down = HOULSBY_STD * jax.random.truncated_normal(
        k_down, -2.0, 2.0, (h, r), jnp.float32)
    w_up = HOULSBY_STD * jax.random.truncated_normal(
        k_up, -2.0, 2.0, (r, h), jnp.float32)
  else:
    raise ValueError(f"adapter init {how!r} is unknown; expected one of "
                     f"{list(INITS)}")
  return {"down": {"kernel": w_down, "bias": jnp.zeros((r,), jnp.float32)},
          "up": {"kernel": w_up, "bias": jnp.zeros((h,), jnp.float32)}}
