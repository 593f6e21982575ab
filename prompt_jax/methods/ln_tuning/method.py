"""LN tuning (Qi et al. 2022) as a `Method`: the norm scales train.

The backbone's RMS-norm scales (T5 and Llama norms have no bias) are the
trainable tree, everything else stays frozen; PEFT's `LNTuningConfig` does
the same (a trainable copy of each norm module). `targets` takes PEFT's
names (`ln_tuning.norms`); the default is PEFT's: every norm.

The trainable tree holds the selected scales at their own param paths
(`encoder/layers_0/pre_attention_layer_norm/scale` [H], `decoder_norm/
scale`), float32, with the param's logical axes (EMBED). Unlike the seam
methods, LN tuning takes weights over: `frozen_params` drops those scales
from the frozen tree, `init_trainable` copies them from the loaded backbone
(so step 0 is the backbone, bit for bit), and `bind` puts the trainable
scales back into the params it runs (no seam). The artifact is one `.npz`
at `ln_tuning/ln_tuning_step_<N>.npz` (keys '<param path>').
"""

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp

from prompt_jax import models
from prompt_jax import partitioning
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.methods import base
from prompt_jax.methods.ln_tuning import norms as norms_lib
from prompt_jax.types import PRNGKey, PyTree


def _flat(tree: PyTree) -> dict[str, Any]:
  return flax.traverse_util.flatten_dict(tree, sep="/")


@dataclasses.dataclass(frozen=True)
class LNTuning(base.Method):
  """Trainable norm scales.

  Attributes:
    targets: PEFT's LN-tuning names of the backbone's family (T5
      'layer_norm', 'final_layer_norm'; Llama 'input_layernorm',
      'post_attention_layernorm', 'norm'), a sequence or one name; None for
      PEFT's defaults (every norm).
  """
  targets: Sequence[str] | str | None = None

  name = "ln_tuning"
  artifact_dir = "ln_tuning"
  artifact_stem = "ln_tuning"
  identity_at_init = True  # The loaded scales, copied.

  def __post_init__(self):
    targets = self.targets
    if isinstance(targets, str):
      targets = (targets,)
    elif targets is not None:
      targets = tuple(targets)
    if targets == ():
      raise ValueError("LN tuning targets is empty; name norms or use None "
                       "for PEFT's defaults (every norm)")
    object.__setattr__(self, "targets", targets)

  def norms(self, lm: models.LanguageModel) -> dict[str, Any]:
    """'/'-path -> boxed abstract param of each norm scale that trains."""
    self.check(lm)
    flat = _flat(partitioning.abstract_variables(lm.module,
                                                 lm.sample_inputs)["params"])
    return {n.path: flat[n.path]
            for n in norms_lib.select(flat, self.targets)}

  def check(self, lm: models.LanguageModel) -> None:
    """One-line error for a name that is no norm of `lm`'s family."""
    norms_lib.check(lm.family, self.targets)

  def abstract_trainable(self, lm: models.LanguageModel) -> PyTree:
    flat = {path: nn.LogicallyPartitioned(
        jax.ShapeDtypeStruct(box.value.shape, jnp.float32), names=box.names)
            for path, box in self.norms(lm).items()}
    return flax.traverse_util.unflatten_dict(flat, sep="/")

  def init_trainable(self, rng: PRNGKey, lm: models.LanguageModel,
                     params: PyTree, tokenizer: Any) -> PyTree:
    """Float32 copies of the loaded scales (new buffers: the trainer may
    donate them while the backbone lives on).

    Raises:
      ValueError: `params` lacks a scale (e.g. it is already a frozen tree
        without them).
    """
    del rng, tokenizer
    flat, out = _flat(params or {}), {}
    for path in self.norms(lm):
      if path not in flat:
        raise ValueError(f"ln_tuning: the backbone params have no {path} "
                         "(pass the loaded backbone, not a frozen tree)")
      out[path] = jnp.array(flat[path], jnp.float32, copy=True)
    return flax.traverse_util.unflatten_dict(out, sep="/")

  def frozen_params(self, params: PyTree) -> PyTree:
    """The backbone less the scales that train."""
    flat = _flat(params)
    trained = {n.path for n in norms_lib.select(flat, self.targets)}
    return flax.traverse_util.unflatten_dict(
        {k: v for k, v in flat.items() if k not in trained}, sep="/")

  def bind(self, lm: models.LanguageModel, trainable: PyTree,
           frozen: PyTree) -> tuple[PyTree, seams_lib.Seams]:
    """The frozen tree with the trainable scales put back; no seam."""
    del lm
    flat = dict(_flat(frozen))
    flat.update(_flat(trainable))
    return flax.traverse_util.unflatten_dict(flat, sep="/"), seams_lib.Seams()

  def settings(self) -> dict[str, Any]:
    return {"method": self.name, "ln_tuning_targets": (
        None if self.targets is None else list(self.targets))}
