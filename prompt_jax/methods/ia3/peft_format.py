"""IA3 vectors to and from Hugging Face PEFT's adapter state dict.

PEFT stores one `ia3_l` per wrapped `nn.Linear`, under the module's name,
e.g. `base_model.model.encoder.block.0.layer.0.SelfAttention.k.ia3_l`
(what `peft.get_peft_model_state_dict` returns). Its shape says the side:
[out, 1] scales the output (k, v, wi_1: ours [N|K, D] or [F], flattened),
[1, in] scales the input of a feedforward module (wo: ours [F]).
"""

from typing import Any, Mapping

import flax.traverse_util
import numpy as np

from prompt_jax.methods.ia3 import method
from prompt_jax.methods import site_leaves
from prompt_jax.methods.lora import targets as lora_targets
from prompt_jax.types import PyTree

PREFIX = "base_model.model."


def _name(family: str, path: str) -> str:
  return f"{PREFIX}{lora_targets.hf_module(family, path)}.{method.LEAF}"


def _peft_shape(path: str, size: int) -> tuple[int, int]:
  return (1, size) if path.endswith("/wo") else (size, 1)


def to_peft_state(trainable: PyTree, family: str) -> dict[str, np.ndarray]:
  """PEFT's `ia3_l` tensors of a trainable tree of `family`
  ('encoder_decoder' or 'decoder_only')."""
  state = {}
  for key, value in flax.traverse_util.flatten_dict(trainable,
                                                    sep="/").items():
    path = key.rpartition("/")[0]
    value = np.asarray(value)
    state[_name(family, path)] = value.reshape(_peft_shape(path, value.size))
  return state


def from_peft_state(state: Mapping[str, Any], abstract: PyTree,
                    family: str) -> PyTree:
  """Our trainable tree from PEFT's `ia3_l` tensors, shaped like `abstract`
  (an unboxed tree of `jax.ShapeDtypeStruct`, e.g. of `abstract_values`).

  Raises:
    ValueError: one line naming missing or unexpected tensor names.
  """
  return site_leaves.from_peft_state(
      state, abstract, lambda path: _name(family, path), method.LEAF,
      "IA3 vectors")
