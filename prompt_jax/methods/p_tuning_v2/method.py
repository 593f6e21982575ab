"""P-tuning v2 (Liu et al. 2022) as a `Method`: deep prompts, i.e. trainable
key/value prompts at every layer, trained directly.

This is prefix tuning with `projection=False` by default (PEFT runs P-tuning
v2 as `PrefixTuningConfig(prefix_projection=False)`): everything (where the
prompts go, the trees, PEFT's conventions and tensors, the artifact of plain
per-layer prefixes, `projection=True` if asked) is `prefix_tuning`'s; this
class only renames the method and its artifact
(`p_tuning_v2/prompt_step_<N>.npz`).

Prefix dropout (P-tuning v2's dropout on the prompt keys/values) applies
at training steps with dropout on (`bind_train`), one key per site and
tensor; evaluation runs the prompts whole.

Not supported: the paper's linear classification head on the last token
(the trainer calls the language model's LM loss; a head needs a
method-owned loss), so P-tuning v2 trains with the verbalizer's LM loss.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from prompt_jax import models
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.methods.prefix_tuning import layout as layout_lib
from prompt_jax.methods.prefix_tuning import method as prefix_method
from prompt_jax.types import PRNGKey, PyTree


@dataclasses.dataclass(frozen=True)
class PTuningV2(prefix_method.PrefixTuning):
  """Deep prompts of P slots on every attention block.

  Attributes:
    length, projection, hidden, mode: as `PrefixTuning` (projection off by
      default: the prompts themselves train).
    dropout: prefix dropout rate at training steps.
  """
  dropout: float = 0.0

  name = "p_tuning_v2"
  artifact_dir = "p_tuning_v2"
  artifact_stem = "prompt"

  def __post_init__(self):
    super().__post_init__()
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"PTuningV2 dropout must be in [0, 1), got "
                       f"{self.dropout!r}")

  def bind_train(self, lm: models.LanguageModel, trainable: PyTree,
                 frozen: PyTree, rng: PRNGKey
                 ) -> tuple[PyTree, seams_lib.Seams]:
    """`bind` with dropout on every prefix key/value tensor."""
    if self.dropout == 0.0:
      return self.bind(lm, trainable, frozen)
    keep = 1.0 - self.dropout
    prefixes = self.prefixes(trainable)
    dropped = {}
    for i, (site, kv) in enumerate(sorted(prefixes.items())):
      dropped[site] = {}
      for j, (name, x) in enumerate(sorted(kv.items())):
        mask = jax.random.bernoulli(
            jax.random.fold_in(rng, 2 * i + j), keep, x.shape)
        dropped[site][name] = jnp.where(mask, x / keep, 0.0).astype(x.dtype)
    return frozen, layout_lib.seams_of(self.layout(lm), dropped)

  def settings(self) -> dict[str, Any]:
    return super().settings() | {"p_tuning_v2_dropout": self.dropout}
