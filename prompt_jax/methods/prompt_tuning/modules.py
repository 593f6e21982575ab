"""The `Prompt` Flax module: owns the single trainable [P, H] soft prompt.

The module knows nothing about the backbone: it declares one parameter named
`prompt` with logical axes (PROMPT, PROMPT_EMBED) and returns it. Where the
prompt enters the network is decided by `prompts.combine` (a combination
function plus `encoder_prompt_seams`). The axes are deliberately not
(LENGTH, EMBED): the standard rules leave them unsharded, so the prompt stays
replicated and exports as one whole `.npy` file (prompt-tuning's
`prompts.Prompt` makes the same choice).
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from prompt_jax import types
from prompt_jax.methods.prompt_tuning import initializers
from prompt_jax.types import Array
from prompt_jax.types import DType
from prompt_jax.types import PRNGKey

PROMPT_AXES = (types.PROMPT, types.PROMPT_EMBED)


class Prompt(nn.Module):
  """A [P, H] soft prompt parameter.

  Attributes:
    length: P, number of prompt vectors (0 gives an empty prompt).
    embed_dim: H, the backbone's model width.
    init_fn: initializer of the [P, H] value (see `prompts.initializers`).
    param_dtype: storage dtype of the parameter.
  """
  length: int
  embed_dim: int
  init_fn: initializers.PromptInitializer = initializers.random_uniform()
  param_dtype: DType = jnp.float32

  def _init(self, rng: PRNGKey, shape: Sequence[int]) -> Array:
    value = self.init_fn(rng, shape)
    if tuple(value.shape) != tuple(shape):
      raise ValueError(f"Prompt: initializer returned shape {value.shape}, "
                       f"expected {tuple(shape)}")
    return value.astype(self.param_dtype)

  @nn.compact
  def __call__(self) -> Array:
    """Returns the prompt [P, H] in `param_dtype`."""
    if self.length < 0 or self.embed_dim < 1:
      raise ValueError(f"Prompt: need length >= 0 and embed_dim >= 1, got "
                       f"length={self.length}, embed_dim={self.embed_dim}")
    return self.param("prompt",
                      nn.with_logical_partitioning(self._init, PROMPT_AXES),
                      (self.length, self.embed_dim))
