"""BitFit for bias-free backbones as a `Method`: trainable added biases.

BitFit (Ben Zaken et al. 2022) fine-tunes only the bias terms a network
already has. T5 and Llama have none, so this is the nearest honest variant:
new biases, initialised to zero (training starts at the backbone), added to
the outputs of the chosen projections and trained alone: what PEFT calls
BEFT (`peft.BeftConfig`: a zero `beft_bias` on each target's output) with
`targets='beft'` (PEFT's defaults, the value projections), and the
BitFit-style every-projection variant with `targets='all-linear'` (the
default). The norm scales, which T5/Llama do have, are LN tuning
(`methods.ln_tuning`).

The trainable tree is `{<projection path>: {'bias': b}}`, float32, with the
projection's output shape and logical axes, e.g. `encoder/layers_0/
attention/query/bias` [N, D] (HEADS, KV), `layers_1/mlp/wo/bias` [H]
(EMBED). The frozen tree is the whole backbone; `bind` passes it unchanged
with the biases as `AttentionSeams.biases` / `MlpSeams.biases`. The artifact
is one `.npz` at `bitfit/bitfit_step_<N>.npz` (keys '<path>/bias').

A key bias shifts every attention logit of a query by the same amount
(T5's q . (k + b)), which the softmax ignores: on T5 it gets no gradient
(nor would a trained BERT key bias). Llama rotates keys after the bias, so
there it is not redundant.
"""

import dataclasses
from typing import Any, Sequence

from prompt_jax import models
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.methods import base
from prompt_jax.methods import site_leaves
from prompt_jax.methods.bitfit import targets as targets_lib
from prompt_jax.types import PRNGKey, PyTree

LEAF = "bias"


@dataclasses.dataclass(frozen=True)
class BitFit(base.Method):
  """Zero-initialised biases on the projections named by `targets`.

  Attributes:
    targets: 'all-linear' (every layer projection), 'beft' (PEFT's BEFT
      defaults: T5 v, Llama v_proj), or PEFT module names of the backbone's
      family (`bitfit.targets`), a sequence or one name.
  """
  targets: Sequence[str] | str = targets_lib.ALL_LINEAR

  name = "bitfit"
  artifact_dir = "bitfit"
  artifact_stem = "bitfit"
  identity_at_init = True  # Every bias is 0.

  def __post_init__(self):
    targets = self.targets
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if not targets:
      raise ValueError("BitFit targets is empty; name projections, "
                       f"'{targets_lib.ALL_LINEAR}' or '{targets_lib.BEFT}'")
    object.__setattr__(self, "targets", targets)

  def sites(self, lm: models.LanguageModel) -> list[Any]:
    """The projections (`lora.targets.Site`) that get a bias on `lm`."""
    return targets_lib.select(lm, self.targets)

  def check(self, lm: models.LanguageModel) -> None:
    """One-line error for a target that is no projection of `lm`."""
    self.sites(lm)

  def _leaves(self, lm: models.LanguageModel) -> list[site_leaves.Leaf]:
    return [(s.path, s.out_shape, s.out_axes) for s in self.sites(lm)]

  def abstract_trainable(self, lm: models.LanguageModel) -> PyTree:
    return site_leaves.abstract(self._leaves(lm), LEAF)

  def init_trainable(self, rng: PRNGKey, lm: models.LanguageModel,
                     params: PyTree, tokenizer: Any) -> PyTree:
    """Every bias 0 (PEFT's BEFT `init_weights=True`)."""
    del rng, params, tokenizer
    return site_leaves.constant(self._leaves(lm), LEAF, 0.0)

  def bind(self, lm: models.LanguageModel, trainable: PyTree,
           frozen: PyTree) -> tuple[PyTree, seams_lib.Seams]:
    del lm
    return frozen, targets_lib.seams_of(site_leaves.by_module(trainable))

  def settings(self) -> dict[str, Any]:
    return {"method": self.name, "bitfit_targets": list(self.targets)}
