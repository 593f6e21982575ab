"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020).

Each selected block (`sites`: attention and FFN for 'houlsby', FFN only
for 'pfeiffer') gets one adapter on its output, before the residual add
(`bottleneck`):

  block output y [B, T, H] -> y + act(y W_down + b_down) W_up + b_up

with a bottleneck of R = H // reduction_factor. The trainable tree mirrors
the backbone's: `{<block path>: {'adapter': {'down': {'kernel' [H, R],
'bias' [R]}, 'up': {'kernel' [R, H], 'bias' [H]}}}}`, e.g.
`encoder/layers_0/mlp/adapter/down/kernel`. The frozen tree is the whole
backbone; `bind` passes it unchanged with one post function per block.

Against the adapters library (AdapterHub) on these pre-norm backbones:
'houlsby' computes what its `double_seq_bn` does (x_in + y + A(y), A the
bottleneck); 'pfeiffer' places adapters as its `seq_bn` does but feeds
them y, where `seq_bn` (original_ln_before=True, no layer norm passed)
feeds y + x_in: x_in + y + A(y + x_in); the seam sees only y. With
dropout on, T5 drops the adapted output (x_in + drop(y + A(y))), the
library the block output before the adapter (x_in + d + A(d), d =
drop(y)); without dropout (eval, tests) they agree.

The post functions are static (non-pytree) seam fields closing over the
trainable arrays, so `bind` builds them on every call, inside the jitted
step (closures over tracers), from the tree's keys only.

`identity_at_init` follows the init: the class attribute is True, for the
default init 'mam' (W_up = 0: exactly the backbone); an instance with
init='houlsby' (near identity) sets it False.

The artifact is one `.npz` of the trainable tree at
`adapters/adapters_step_<N>.npz` (keys '<block path>/adapter/down/kernel',
...). Adapters cannot be merged into the backbone (the bottleneck is
non-linear).
"""

import dataclasses
import functools
from typing import Any

import flax.traverse_util
import jax

from prompt_jax import models
from prompt_jax.backbones import layers
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.methods import base
from prompt_jax.methods.adapters import bottleneck
from prompt_jax.methods.adapters import sites as sites_lib
from prompt_jax.types import PRNGKey, PyTree

ADAPTER = "adapter"  # The sub-tree name under each block path.


@dataclasses.dataclass(frozen=True)
class Adapters(base.Method):
  """One bottleneck adapter per selected block.

  Attributes:
    config: 'houlsby' (after every self-attention block and every FFN) or
      'pfeiffer' (after every FFN).
    reduction_factor: the bottleneck is H // reduction_factor; it must
      divide the backbone's width H (checked against the model).
    activation: the bottleneck non-linearity, a name from
      `backbones.layers.ACTIVATIONS` (the adapters library's Houlsby
      config uses swish, here 'silu').
    init: 'mam' (W_up = 0: identity) or 'houlsby' (N(0, 1e-2^2), near
      identity).
    cross_attention: also adapt T5's cross-attention blocks (the adapters
      library's `cross_adapter`, off by default).
  """
  config: str = "houlsby"
  reduction_factor: int = 16
  activation: str = "relu"
  init: str = "mam"
  cross_attention: bool = False

  name = "adapters"
  artifact_dir = "adapters"
  artifact_stem = "adapters"
  identity_at_init = True  # For the default init, 'mam'; see the docstring.

  def __post_init__(self):
    if self.config not in sites_lib.CONFIGS:
      raise ValueError(f"adapters config {self.config!r} is unknown; "
                       f"expected one of {sorted(sites_lib.CONFIGS)}")
    if self.init not in bottleneck.INITS:
      raise ValueError(f"adapters init {self.init!r} is unknown; expected "
                       f"one of {list(bottleneck.INITS)}")
    if self.activation not in layers.ACTIVATIONS:
      raise ValueError(f"adapters activation {self.activation!r} is "
                       f"unknown; expected one of {sorted(layers.ACTIVATIONS)}")
    rf = self.reduction_factor
    if isinstance(rf, bool) or not isinstance(rf, int) or rf < 1:
      raise ValueError(f"adapters reduction_factor must be a positive int "
                       f"dividing the model width, got {rf!r}")
    # Per instance: only the 'mam' init is exactly the backbone.
    object.__setattr__(self, "identity_at_init", self.init == "mam")

  def bottleneck_size(self, lm: models.LanguageModel) -> int:
    """R = H // reduction_factor.

    Raises:
      ValueError: reduction_factor does not divide H.
    """
    h, rf = lm.config.emb_dim, self.reduction_factor
    if h % rf:
      divisors = [d for d in range(1, h + 1) if h % d == 0]
      raise ValueError(f"adapters reduction_factor {rf} does not divide the "
                       f"model width {h}; expected one of {divisors}")
    return h // rf

  def sites(self, lm: models.LanguageModel) -> list[str]:
    """The block paths this method adapts on `lm`."""
    return sites_lib.select(lm, self.config, self.cross_attention)

  def check(self, lm: models.LanguageModel) -> None:
    """One-line error for a reduction factor or cross-attention setting
    that does not fit `lm`."""
    self.bottleneck_size(lm)
    self.sites(lm)

  def abstract_trainable(self, lm: models.LanguageModel) -> PyTree:
    h, r = lm.config.emb_dim, self.bottleneck_size(lm)
    return flax.traverse_util.unflatten_dict(
        {f"{path}/{ADAPTER}": bottleneck.abstract(h, r)
         for path in self.sites(lm)}, sep="/")

  def init_trainable(self, rng: PRNGKey, lm: models.LanguageModel,
                     params: PyTree, tokenizer: Any) -> PyTree:
    """One key per site; 'mam' or 'houlsby' (`bottleneck.init`)."""
    del params, tokenizer
    h, r, paths = lm.config.emb_dim, self.bottleneck_size(lm), self.sites(lm)
    keys = jax.random.split(rng, len(paths))
    return flax.traverse_util.unflatten_dict(
        {f"{path}/{ADAPTER}": bottleneck.init(key, h, r, self.init)
         for key, path in zip(keys, paths)}, sep="/")

  def bind(self, lm: models.LanguageModel, trainable: PyTree,
           frozen: PyTree) -> tuple[PyTree, seams_lib.Seams]:
    del lm
    act = layers.ACTIVATIONS[self.activation]
    flat = flax.traverse_util.flatten_dict(trainable, sep="/")
    paths = sorted({k.split(f"/{ADAPTER}/")[0] for k in flat})
    fns = {path: functools.partial(bottleneck.apply,
                                   _subtree(trainable, path)[ADAPTER],
                                   act=act)
           for path in paths}
    return frozen, sites_lib.seams_of(fns)

  def settings(self) -> dict[str, Any]:
    return {"method": self.name, "adapters_config": self.config,
            "adapters_reduction_factor": self.reduction_factor,
            "adapters_activation": self.activation,
            "adapters_cross_attention": self.cross_attention}


def _subtree(tree: PyTree, path: str) -> PyTree:
  for part in path.split("/"):
    tree = tree[part]
  return tree
