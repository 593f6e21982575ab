"""P-tuning v2 (Liu et al. 2022) as a `Method`: deep prompts, i.e. trainable
key/value prompts at every layer, trained directly.

This is prefix tuning with `projection=False` by default (PEFT runs P-tuning
v2 as `PrefixTuningConfig(prefix_projection=False)`): everything (where the
prompts go, the trees, PEFT's conventions and tensors, the artifact of plain
per-layer prefixes, `projection=True` if asked) is `prefix_tuning`'s; this
class only renames the method and its artifact
(`p_tuning_v2/prompt_step_<N>.npz`).

Not supported (one-line errors or absent):
  * prefix dropout > 0 (P-tuning v2's dropout on the prompt keys/values at
    training time): `bind` gets no rng and the prefix seam has no dropout;
    it would need a static `AttentionSeams.prefix_dropout` applied with the
    backbone's own dropout rng and `deterministic` flag.
  * the paper's linear classification head on the last token: the trainer
    calls the language model's LM loss; a head needs a method-owned loss.
"""

import dataclasses
from typing import Any

from prompt_jax.methods.prefix_tuning import method as prefix_method


@dataclasses.dataclass(frozen=True)
class PTuningV2(prefix_method.PrefixTuning):
  """Deep prompts of P slots on every attention block.

  Attributes:
    length, projection, hidden, mode: as `PrefixTuning` (projection off by
      default: the prompts themselves train).
    dropout: prefix dropout; only 0 runs (see the module docstring).
  """
  dropout: float = 0.0

  name = "p_tuning_v2"
  artifact_dir = "p_tuning_v2"
  artifact_stem = "prompt"

  def __post_init__(self):
    super().__post_init__()
    if self.dropout != 0.0:
      raise ValueError(f"PTuningV2 dropout {self.dropout} is not supported: "
                       "bind gets no rng and the prefix seam has no dropout "
                       "(use 0)")

  def settings(self) -> dict[str, Any]:
    return super().settings() | {"p_tuning_v2_dropout": self.dropout}
