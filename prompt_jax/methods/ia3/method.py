"""IA3 (Liu et al. 2022, T-Few) as a `Method`: learned activation scales.

IA3 ("infused adapter by inhibiting and amplifying inner activations")
multiplies three activations by trainable vectors, all initialised to 1 so
training starts at the backbone: the keys (l_k) and values (l_v) of every
attention block, and the MLP hidden (l_ff, the input of wo / down_proj).
`targets` and `feedforward` take Hugging Face PEFT's module names and mean
what `peft.IA3Config(target_modules, feedforward_modules)` means
(`ia3.targets`); the defaults are PEFT's: T5 k, v, wo (wo feedforward, i.e.
its input is scaled) in the encoder and in the decoder's self- and
cross-attention; Llama k_proj, v_proj, down_proj.

The trainable tree is `{<projection path>: {'ia3_l': l}}`, float32, e.g.
`encoder/layers_0/attention/key/ia3_l` [N, D] with logical axes (HEADS,
KV) (Llama: [K, D], one entry per key/value head), `decoder/layers_1/mlp/wo/
ia3_l` [F] with (MLP,). The frozen tree is the whole backbone; `bind` passes
it unchanged with `key_scale`, `value_scale` and `hidden_scale` seams.
`merge` folds the vectors into the kernels. The artifact is one `.npz` at
`ia3/ia3_step_<N>.npz` (keys '<projection path>/ia3_l').
"""

import dataclasses
from typing import Any, Sequence

import flax.traverse_util
import jax.numpy as jnp

from prompt_jax import models
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.methods import base
from prompt_jax.methods import site_leaves
from prompt_jax.methods.ia3 import targets as targets_lib
from prompt_jax.types import PRNGKey, PyTree

LEAF = "ia3_l"


def _names(value: Sequence[str] | str | None) -> tuple[str, ...] | None:
  if value is None:
    return None
  return (value,) if isinstance(value, str) else tuple(value)


@dataclasses.dataclass(frozen=True)
class IA3(base.Method):
  """Learned scales of keys, values and MLP hiddens (PEFT's IA3).

  Attributes:
    targets: PEFT module names of the backbone's family (T5 k, v, wo,
      wi_1; Llama k_proj, v_proj, down_proj, up_proj), a sequence or one
      name; None for PEFT's defaults (T5 k, v, wo; Llama k_proj, v_proj,
      down_proj).
    feedforward: PEFT's `feedforward_modules`: targets whose input is
      scaled (must be a subset of `targets`); None for PEFT's defaults (wo,
      down_proj).
  """
  targets: Sequence[str] | str | None = None
  feedforward: Sequence[str] | str | None = None

  name = "ia3"
  artifact_dir = "ia3"
  artifact_stem = "ia3"
  identity_at_init = True  # Every vector is 1.

  def __post_init__(self):
    object.__setattr__(self, "targets", _names(self.targets))
    object.__setattr__(self, "feedforward", _names(self.feedforward))
    if self.targets == ():
      raise ValueError("IA3 targets is empty; name projections or use None "
                       "for PEFT's defaults")

  def vectors(self, lm: models.LanguageModel) -> list[targets_lib.Vector]:
    """The vectors this IA3 trains on `lm`."""
    return targets_lib.select(lm, self.targets, self.feedforward)

  def check(self, lm: models.LanguageModel) -> None:
    """One-line error for a target the seams cannot express on `lm`."""
    self.vectors(lm)

  def _leaves(self, lm: models.LanguageModel) -> list[site_leaves.Leaf]:
    return [(v.path, v.shape, v.axes) for v in self.vectors(lm)]

  def abstract_trainable(self, lm: models.LanguageModel) -> PyTree:
    return site_leaves.abstract(self._leaves(lm), LEAF)

  def init_trainable(self, rng: PRNGKey, lm: models.LanguageModel,
                     params: PyTree, tokenizer: Any) -> PyTree:
    """Every vector 1 (PEFT's `init_ia3_weights=True`)."""
    del rng, params, tokenizer
    return site_leaves.constant(self._leaves(lm), LEAF, 1.0)

  def bind(self, lm: models.LanguageModel, trainable: PyTree,
           frozen: PyTree) -> tuple[PyTree, seams_lib.Seams]:
    del lm
    return frozen, targets_lib.seams_of(site_leaves.by_module(trainable))

  def merge(self, trainable: PyTree, frozen: PyTree) -> PyTree:
    """The backbone with every vector folded into its kernel (run it with
    no seam): key/value/wi_1 kernels scale their output columns, wo its
    input rows, in the kernel's dtype.

    Raises:
      ValueError: a vector with no kernel in `frozen`.
    """
    flat = dict(flax.traverse_util.flatten_dict(frozen, sep="/"))
    for key, l in flax.traverse_util.flatten_dict(trainable, sep="/").items():
      path = key.rpartition("/")[0]
      kernel = flat.get(f"{path}/kernel")
      if kernel is None:
        raise ValueError(f"IA3 merge: the backbone has no {path}/kernel")
      if path.endswith("/wo"):  # [F, H] * l[F, None]: the input rows.
        l = l.reshape(l.shape + (1,))
      flat[f"{path}/kernel"] = (kernel.astype(jnp.float32) * l
                                ).astype(kernel.dtype)
    return flax.traverse_util.unflatten_dict(flat, sep="/")

  def settings(self) -> dict[str, Any]:
    def listed(v):
      return None if v is None else list(v)
    return {"method": self.name, "ia3_targets": listed(self.targets),
            "ia3_feedforward": listed(self.feedforward)}
