"""BitFit biases to and from Hugging Face PEFT's BEFT state dict.

PEFT's BEFT stores one `beft_bias` [1, out] per wrapped `nn.Linear`, under
the module's name, e.g. `base_model.model.model.layers.0.self_attn.v_proj.
beft_bias` (what `peft.get_peft_model_state_dict` returns). Ours are the
same numbers with the heads split ([N, D] for q/k/v, [F] or [H] else).
"""

from typing import Any, Mapping

import flax.traverse_util
import numpy as np

from prompt_jax.methods import site_leaves
from prompt_jax.methods.lora import targets as lora_targets
from prompt_jax.types import PyTree

PREFIX = "base_model.model."
PEFT_LEAF = "beft_bias"


def _name(family: str, path: str) -> str:
  return f"{PREFIX}{lora_targets.hf_module(family, path)}.{PEFT_LEAF}"


def to_peft_state(trainable: PyTree, family: str) -> dict[str, np.ndarray]:
  """PEFT's `beft_bias` tensors [1, out] of a trainable tree of `family`
  ('encoder_decoder' or 'decoder_only')."""
  return {_name(family, k.rpartition("/")[0]): np.asarray(v).reshape(1, -1)
          for k, v in flax.traverse_util.flatten_dict(trainable,
                                                      sep="/").items()}


def from_peft_state(state: Mapping[str, Any], abstract: PyTree,
                    family: str) -> PyTree:
  """Our trainable tree from PEFT's `beft_bias` tensors, shaped like
  `abstract` (an unboxed tree of `jax.ShapeDtypeStruct`).

  Raises:
    ValueError: one line naming missing or unexpected tensor names.
  """
  return site_leaves.from_peft_state(
      state, abstract, lambda path: _name(family, path), PEFT_LEAF,
      "BitFit biases")
