"""LN-tuning scales to and from Hugging Face PEFT's adapter state dict.

PEFT's LN tuning keeps a trainable copy of each target norm; its state dict
(`peft.get_peft_model_state_dict`) names the copy's weight
`base_model.model.<norm module>.ln_tuning_layers.weight` [H], e.g.
`base_model.model.encoder.block.0.layer.1.layer_norm.ln_tuning_layers.
weight` or `base_model.model.model.norm.ln_tuning_layers.weight`. The
values are our scales as they are.
"""

from typing import Any, Mapping

import flax.traverse_util
import numpy as np

from prompt_jax.methods.ln_tuning import norms
from prompt_jax.types import PyTree

PREFIX = "base_model.model."
SUFFIX = ".ln_tuning_layers.weight"


def _name(path: str) -> str:
  norm = norms.describe(path)
  if norm is None:
    raise ValueError(f"ln_tuning: {path!r} is not a norm scale path")
  return f"{PREFIX}{norm.hf}{SUFFIX}"


def to_peft_state(trainable: PyTree) -> dict[str, np.ndarray]:
  """PEFT's `ln_tuning_layers.weight` tensors of a trainable tree."""
  return {_name(k): np.asarray(v) for k, v in
          flax.traverse_util.flatten_dict(trainable, sep="/").items()}


def from_peft_state(state: Mapping[str, Any], abstract: PyTree) -> PyTree:
  """Our trainable tree from PEFT's tensors, shaped like `abstract` (an
  unboxed tree of `jax.ShapeDtypeStruct`).

  Raises:
    ValueError: one line naming missing or unexpected tensor names.
  """
  flat = flax.traverse_util.flatten_dict(abstract, sep="/")
  wanted = {_name(k): (k, spec) for k, spec in flat.items()}
  missing = sorted(wanted.keys() - state.keys())
  extra = sorted(k for k in state.keys() - wanted.keys() if k.endswith(SUFFIX))
  if missing or extra:
    raise ValueError(f"PEFT state does not match the LN-tuning scales "
                     f"(missing {missing}, unexpected {extra})")
  out = {key: np.asarray(state[name]).reshape(spec.shape).astype(spec.dtype)
         for name, (key, spec) in wanted.items()}
  return flax.traverse_util.unflatten_dict(out, sep="/")
