"""LoRA weights to and from Hugging Face PEFT's adapter state dict.

PEFT stores, per adapted `nn.Linear` (weight [out, in]), `lora_A.weight`
[r, in] and `lora_B.weight` [out, r] under the module's name, e.g.
`base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight`
(what `peft.get_peft_model_state_dict` returns and `adapter_model.
safetensors` holds). Ours are A [*in_dims, r] and B [r, *out_dims] (heads
split), so A = lora_A.T and B = lora_B.T, reshaped. The scale alpha / r is
not in the tensors: use the same r and alpha on both sides.
"""

from typing import Any, Mapping

import flax.traverse_util
import numpy as np

from prompt_jax.methods.lora import targets
from prompt_jax.types import PyTree

PREFIX = "base_model.model."


def _names(family: str, path: str) -> tuple[str, str]:
  module = PREFIX + targets.hf_module(family, path)
  return f"{module}.lora_A.weight", f"{module}.lora_B.weight"


def to_peft_state(trainable: PyTree, family: str) -> dict[str, np.ndarray]:
  """PEFT's adapter tensors (lora_A [r, in], lora_B [out, r]) of a trainable
  tree of `family` ('encoder_decoder' or 'decoder_only')."""
  flat = flax.traverse_util.flatten_dict(trainable, sep="/")
  state = {}
  for key, value in flat.items():
    path, _, leaf = key.rpartition("/")
    value = np.asarray(value)
    a_name, b_name = _names(family, path)
    if leaf == "a":  # [*in, r] -> [r, in]
      state[a_name] = value.reshape(-1, value.shape[-1]).T
    else:  # [r, *out] -> [out, r]
      state[b_name] = value.reshape(value.shape[0], -1).T
  return state


def from_peft_state(state: Mapping[str, Any], abstract: PyTree,
                    family: str) -> PyTree:
  """Our trainable tree from PEFT's adapter tensors, shaped like `abstract`
  (an unboxed tree of `jax.ShapeDtypeStruct`, e.g. of `abstract_values`).

  Raises:
    ValueError: one line naming missing or unexpected tensor names.
  """
  flat = flax.traverse_util.flatten_dict(abstract, sep="/")
  wanted = {}
  for key, spec in flat.items():
    path, _, leaf = key.rpartition("/")
    wanted[_names(family, path)[leaf == "b"]] = (key, spec)
  missing = sorted(wanted.keys() - state.keys())
  extra = sorted(k for k in state.keys() - wanted.keys() if "lora_" in k)
  if missing or extra:
    raise ValueError(f"PEFT state does not match the LoRA sites (missing "
                     f"{missing}, unexpected {extra})")
  out = {}
  for name, (key, spec) in wanted.items():
    value = np.asarray(state[name]).T  # [in, r] or [r, out]
    out[key] = value.reshape(spec.shape).astype(spec.dtype)
  return flax.traverse_util.unflatten_dict(out, sep="/")
