"""P-tuning encoder weights to and from Hugging Face PEFT's PromptEncoder.

PEFT's parameters (`PeftModel.named_parameters()` / `state_dict()`, under
`prompt_encoder.<adapter>.`; `get_peft_model_state_dict` holds only the
encoded table, `prompt_embeddings`):

  embedding.weight                        [rows, H]
  mlp_head.{0,2,4}.weight / .bias         Linear [out, in] / [out] ('MLP')
  mlp_head.{0,2}.weight / .bias           ('LSTM')
  lstm_head.{weight_ih,weight_hh,bias_ih,bias_hh}_l<k>[_reverse]
                                          [4h, in] / [4h, h] / [4h]

Ours (`encoder`): embedding [P, H], mlp_head/dense_<i> {kernel [in, out],
bias}, lstm_head/layer_<k>/{forward,backward}/{w_ih, w_hh, b_ih, b_hh}
with the weights transposed. PEFT's seq2seq models default to
`num_transformer_submodules=2`: the embedding then has 2P rows and only
the first P outputs are used. The MLP encodes rows independently, so the
first P rows are imported; the bidirectional LSTM mixes all rows, so an
LSTM with rows != P is refused (build PEFT's config with
`num_transformer_submodules=1`).
"""

import re
from typing import Any, Mapping

import flax.traverse_util
import numpy as np

from prompt_jax.types import PyTree

PREFIX = "prompt_encoder.default."
_LSTM = re.compile(r"lstm_head\.(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)"
                   r"(_reverse)?$")
_OURS = {"weight_ih": "w_ih", "weight_hh": "w_hh", "bias_ih": "b_ih",
         "bias_hh": "b_hh"}


def _relative(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Names relative to the encoder module (adapter prefix dropped)."""
  out = {}
  for key, value in state.items():
    if "prompt_encoder." in key:
      key = key.split("prompt_encoder.", 1)[1].split(".", 1)[1]
    out[key] = np.asarray(value, np.float32)
  return out


def _mlp_indices(flat: Mapping[str, Any]) -> list[int]:
  """PEFT's Sequential indices of the Linear layers, in order."""
  return sorted({int(k.split(".")[1]) for k in flat
                 if k.startswith("mlp_head.")})


def from_peft_state(state: Mapping[str, Any], length: int) -> PyTree:
  """Our encoder tree from PEFT's PromptEncoder tensors (numpy or torch
  values converted by the caller with `.numpy()`).

  Args:
    state: name -> array, absolute (`prompt_encoder.default.embedding.
      weight`) or relative (`embedding.weight`) names; other names ignored.
    length: P.

  Raises:
    ValueError: one line for a missing embedding, fewer than P rows, or an
      LSTM whose embedding has rows != P.
  """
  flat = _relative(state)
  table = flat.get("embedding.weight")
  if table is None or table.shape[0] < length:
    raise ValueError(f"PEFT state has no embedding.weight with >= {length} "
                     f"rows (found {None if table is None else table.shape})")
  lstm = {k: v for k, v in flat.items() if _LSTM.match(k)}
  if lstm and table.shape[0] != length:
    raise ValueError(f"PEFT's LSTM encoder reads {table.shape[0]} rows, not "
                     f"P = {length}; set num_transformer_submodules=1")
  out = {"embedding": table[:length]}
  for i, index in enumerate(_mlp_indices(flat)):
    out[f"mlp_head/dense_{i}/kernel"] = flat[f"mlp_head.{index}.weight"].T
    out[f"mlp_head/dense_{i}/bias"] = flat[f"mlp_head.{index}.bias"]
  for key, value in lstm.items():
    name, layer, reverse = _LSTM.match(key).groups()
    direction = "backward" if reverse else "forward"
    out[f"lstm_head/layer_{layer}/{direction}/{_OURS[name]}"] = (
        value.T if name.startswith("weight") else value)
  return flax.traverse_util.unflatten_dict(out, sep="/")


def to_peft_state(params: PyTree, prefix: str = PREFIX
                  ) -> dict[str, np.ndarray]:
  """PEFT's PromptEncoder tensors (torch layout) of our encoder tree, named
  `prefix + <module-relative name>`."""
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  state = {}
  for key, value in flat.items():
    value = np.asarray(value)
    parts = key.split("/")
    if key == "embedding":
      name = "embedding.weight"
    elif parts[0] == "mlp_head":
      index = 2 * int(parts[1].removeprefix("dense_"))
      leaf = "weight" if parts[2] == "kernel" else "bias"
      name, value = f"mlp_head.{index}.{leaf}", (
          value.T if leaf == "weight" else value)
    else:
      torch_name = {v: k for k, v in _OURS.items()}[parts[3]]
      layer = parts[1].removeprefix("layer_")
      suffix = "_reverse" if parts[2] == "backward" else ""
      name = f"lstm_head.{torch_name}_l{layer}{suffix}"
      value = value.T if parts[3].startswith("w_") else value
    state[prefix + name] = value
  return state
