"""Prefix tuning's trees to and from Hugging Face PEFT's tensors.

PEFT's `PrefixEncoder` (adapter 'default') has, in `named_parameters()`:
  projection=False: `prompt_encoder.default.embedding.weight`
    [P, L * 2 * E], the prefixes themselves;
  projection=True: `...embedding.weight` [P, E], `...transform.0.weight`
    [h, E] and `.bias` [h], `...transform.2.weight` [L * 2 * E, h] and
    `.bias` [L * 2 * E].
Its adapter file (`get_peft_model_state_dict`) holds `prompt_embeddings`
[P, L * 2 * E] = the encoder's output, in both cases: the same tensor as our
artifact. E = K * D (`token_dim`), flat index ((l * 2 + 0|1) * K + k) * D + d.

Only one-site layouts have a PEFT counterpart: decoder-only models and T5's
'peft_compat' mode. Gradients convert like the weights (the maps are
linear), so `from_peft_params` also reads PEFT's `.grad`s.
"""

from typing import Any, Mapping

import numpy as np

from prompt_jax.methods.prefix_tuning import trees
from prompt_jax.types import PyTree

PREFIX = "prompt_encoder.default."
PROMPT_EMBEDDINGS = "prompt_embeddings"


def _single_site(abstract: PyTree) -> str:
  sites = list(abstract[trees.PREFIX] if trees.PREFIX in abstract
               else abstract["out"])
  if len(sites) != 1:
    raise ValueError(f"prefix sites {sites} have no PEFT counterpart (PEFT "
                     "has one stack of prefixes: decoder-only models or T5 "
                     "mode='peft_compat')")
  return sites[0]


def _kv_from_flat(flat: np.ndarray, spec: Any) -> dict[str, np.ndarray]:
  """[P, S * 2 * K * D] -> {'key', 'value': [S, P, K, D]}."""
  s, p, k, d = spec.shape
  kv = np.asarray(flat, np.float32).reshape(p, s, 2, k, d)
  kv = kv.transpose(1, 2, 0, 3, 4)
  return {"key": kv[:, 0], "value": kv[:, 1]}


def from_peft_params(params: Mapping[str, Any], abstract: PyTree) -> PyTree:
  """Our trainable tree from PEFT's named parameters (or their grads),
  shaped like `abstract` (unboxed `abstract_values` of the method).

  Raises:
    ValueError: a missing tensor, or a layout with no PEFT counterpart.
  """
  site = _single_site(abstract)
  params = {k[k.find(PREFIX) + len(PREFIX):] if PREFIX in k else k:
            np.asarray(v, np.float32) for k, v in params.items()}
  wanted = (["embedding.weight"] if trees.PREFIX in abstract else
            ["embedding.weight", "transform.0.weight", "transform.0.bias",
             "transform.2.weight", "transform.2.bias"])
  missing = [PREFIX + w for w in wanted if w not in params]
  if missing:
    raise ValueError(f"PEFT prefix parameters missing: {missing}")
  if trees.PREFIX in abstract:
    spec = abstract[trees.PREFIX][site]["key"]
    return {trees.PREFIX: {site: _kv_from_flat(params["embedding.weight"],
                                               spec)}}
  out = abstract["out"][site]
  hidden = out["kernel"].shape[0]
  return {"embedding": params["embedding.weight"],
          "hidden": {"kernel": params["transform.0.weight"].T,
                     "bias": params["transform.0.bias"]},
          "out": {site: {
              "kernel": params["transform.2.weight"].T.reshape(
                  (hidden,) + out["bias"].shape),
              "bias": params["transform.2.bias"].reshape(out["bias"].shape)}}}


def to_prompt_embeddings(prefixes: Mapping[str, Any]) -> np.ndarray:
  """PEFT's saved `prompt_embeddings` [P, S * 2 * K * D] of our prefixes
  ({site: {'key', 'value': [S, P, K, D]}}, one site)."""
  if len(prefixes) != 1:
    raise ValueError(f"prefix sites {sorted(prefixes)} have no PEFT "
                     "counterpart")
  (kv,) = prefixes.values()
  stacked = np.stack([np.asarray(kv["key"]), np.asarray(kv["value"])], 1)
  s, _, p, k, d = stacked.shape  # [S, 2, P, K, D]
  return stacked.transpose(2, 0, 1, 3, 4).reshape(p, s * 2 * k * d)


def from_prompt_embeddings(flat: Any, abstract: PyTree) -> PyTree:
  """The prefix form (an artifact) from PEFT's `prompt_embeddings`;
  `abstract` is the unboxed prefix form (`load_artifact`'s shapes)."""
  site = _single_site(abstract)
  spec = abstract[trees.PREFIX][site]["key"]
  s, p, k, d = spec.shape
  if tuple(np.shape(flat)) != (p, s * 2 * k * d):
    raise ValueError(f"PEFT prompt_embeddings shape {np.shape(flat)}, "
                     f"expected {(p, s * 2 * k * d)}")
  return {trees.PREFIX: {site: _kv_from_flat(flat, spec)}}
