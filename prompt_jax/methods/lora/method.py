"""LoRA (Hu et al. 2021) as a `Method`: low-rank deltas on frozen projections.

Each selected projection `y = x W` becomes `y = x W + (alpha / r) (x A) B`
with A [*in_dims, r] and B [r, *out_dims] trainable (`targets` says which
projections, with PEFT's module names). The trainable tree mirrors the
backbone's: `{<module path>: {'a': A, 'b': B}}`, e.g.
`encoder/layers_0/attention/query/{a,b}` beside the frozen `.../kernel`
(T5 query: A [H, r], B [r, N, D]; out: A [N, D, r], B [r, H]). The frozen
tree is the whole backbone; `bind` passes it unchanged with one
`LowRankDelta` seam per site.

Initialisation is PEFT's default: A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
(torch's `kaiming_uniform_(a=sqrt(5))` on lora_A, fan_in = the projection's
input width, N*D for `out`), B = 0, so training starts at the backbone.
A and B are float32 whatever the backbone's dtype (the projection casts
them to its compute dtype).

Sharding: A's input dims and B's output dims carry the logical axes of the
projected kernel (e.g. EMBED, or HEADS and KV), the rank dim is `RANK`
(replicated under the standard rules). The artifact is one `.npz` of the
trainable tree at `lora/lora_step_<N>.npz` (keys '<module path>/a|b').
`merge` folds the deltas into the kernels for inference without seams.
"""

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp

from prompt_jax import models
from prompt_jax import types
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.methods import base
from prompt_jax.methods.lora import targets as targets_lib
from prompt_jax.types import PRNGKey, PyTree


@dataclasses.dataclass(frozen=True)
class LoRA(base.Method):
  """Rank-r deltas on the projections named by `targets`.

  Attributes:
    rank: r.
    alpha: the deltas are scaled by alpha / r (PEFT's `lora_alpha`).
    targets: PEFT module names of the backbone's family (`lora.targets`),
      a sequence or one name; 'all-linear' for every layer projection;
      None for PEFT's defaults (T5 q, v; Llama q_proj, v_proj).
    dropout: PEFT's `lora_dropout` on the delta's input, at training steps
      with dropout on (`bind_train`); evaluation runs without it.
    rslora: rank-stabilised LoRA (Kalajdzievski 2023, PEFT's
      `use_rslora`): the deltas are scaled by alpha / sqrt(r).
  """
  rank: int = 8
  alpha: float = 8.0
  targets: Sequence[str] | str | None = None
  dropout: float = 0.0
  rslora: bool = False

  name = "lora"
  artifact_dir = "lora"
  artifact_stem = "lora"
  identity_at_init = True  # B = 0.

  def __post_init__(self):
    if isinstance(self.targets, str):
      object.__setattr__(self, "targets", (self.targets,))
    elif self.targets is not None:
      object.__setattr__(self, "targets", tuple(self.targets))
    if self.targets == ():
      raise ValueError("LoRA targets is empty; name projections or use None "
                       "for PEFT's defaults")
    if not isinstance(self.rank, int) or self.rank < 1:
      raise ValueError(f"LoRA rank must be a positive int, got {self.rank!r}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"LoRA dropout must be in [0, 1), got "
                       f"{self.dropout!r}")

  @property
  def scale(self) -> float:
    """alpha / r (rsLoRA: alpha / sqrt(r)), the multiplier of every
    delta."""
    return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

  def sites(self, lm: models.LanguageModel) -> list[targets_lib.Site]:
    """The projections this LoRA adapts on `lm`."""
    return targets_lib.select(lm, self.targets)

  def check(self, lm: models.LanguageModel) -> None:
    """One-line error for a target that is no projection of `lm`, or a
    rank above a projection's smaller side (no longer low rank)."""
    for s in self.sites(lm):
      limit = min(s.fan_in, math.prod(s.out_shape))
      if self.rank > limit:
        raise ValueError(f"LoRA rank {self.rank} exceeds {s.path}'s "
                         f"{s.in_shape} -> {s.out_shape} projection (rank at "
                         f"most {limit})")

  def abstract_trainable(self, lm: models.LanguageModel) -> PyTree:
    r, flat = self.rank, {}
    for s in self.sites(lm):
      flat[f"{s.path}/a"] = nn.LogicallyPartitioned(
          jax.ShapeDtypeStruct(s.in_shape + (r,), jnp.float32),
          names=s.in_axes + (types.RANK,))
      flat[f"{s.path}/b"] = nn.LogicallyPartitioned(
          jax.ShapeDtypeStruct((r,) + s.out_shape, jnp.float32),
          names=(types.RANK,) + s.out_axes)
    return flax.traverse_util.unflatten_dict(flat, sep="/")

  def init_trainable(self, rng: PRNGKey, lm: models.LanguageModel,
                     params: PyTree, tokenizer: Any) -> PyTree:
    """A uniform in +-1/sqrt(fan_in) (one key per site), B zero."""
    del params, tokenizer
    sites = self.sites(lm)
    flat = {}
    for key, s in zip(jax.random.split(rng, len(sites)), sites):
      bound = 1.0 / math.sqrt(s.fan_in)
      flat[f"{s.path}/a"] = jax.random.uniform(
          key, s.in_shape + (self.rank,), jnp.float32, -bound, bound)
      flat[f"{s.path}/b"] = jnp.zeros((self.rank,) + s.out_shape,
                                      jnp.float32)
    return flax.traverse_util.unflatten_dict(flat, sep="/")

  def deltas(self, trainable: PyTree) -> dict[str, seams_lib.LowRankDelta]:
    """`LowRankDelta` per module path of a trainable tree."""
    flat = flax.traverse_util.flatten_dict(trainable, sep="/")
    paths = sorted({k.rpartition("/")[0] for k in flat})
    return {p: seams_lib.LowRankDelta(flat[f"{p}/a"], flat[f"{p}/b"],
                                      self.scale) for p in paths}

  def bind(self, lm: models.LanguageModel, trainable: PyTree,
           frozen: PyTree) -> tuple[PyTree, seams_lib.Seams]:
    del lm
    return frozen, targets_lib.seams_of(self.deltas(trainable))

  def bind_train(self, lm: models.LanguageModel, trainable: PyTree,
                 frozen: PyTree, rng: PRNGKey
                 ) -> tuple[PyTree, seams_lib.Seams]:
    """`bind` with dropout (rate `dropout`, one key per site) on each
    delta's input."""
    if self.dropout == 0.0:
      return self.bind(lm, trainable, frozen)
    deltas = {path: dataclasses.replace(
        d, dropout_rate=self.dropout,
        dropout_rng=jax.random.fold_in(rng, i))
              for i, (path, d) in enumerate(self.deltas(trainable).items())}
    return frozen, targets_lib.seams_of(deltas)

  def merge(self, trainable: PyTree, frozen: PyTree) -> PyTree:
    """The backbone with every delta folded in: kernel + scale * A @ B in
    the kernel's layout and dtype (run it with no seam).

    Raises:
      ValueError: a site with no kernel in `frozen`.
    """
    flat = dict(flax.traverse_util.flatten_dict(frozen, sep="/"))
    for path, d in self.deltas(trainable).items():
      kernel = flat.get(f"{path}/kernel")
      if kernel is None:
        raise ValueError(f"LoRA merge: the backbone has no {path}/kernel")
      delta = jnp.tensordot(d.a, d.b, axes=1)  # [*in_dims, *out_dims]
      flat[f"{path}/kernel"] = (kernel.astype(jnp.float32) + self.scale * delta
                                ).astype(kernel.dtype)
    return flax.traverse_util.unflatten_dict(flat, sep="/")

  def settings(self) -> dict[str, Any]:
    return {"method": self.name, "lora_rank": self.rank,
            "lora_alpha": self.alpha, "lora_dropout": self.dropout,
            "lora_targets": None if self.targets is None else list(
                self.targets), "lora_rslora": self.rslora}
