"""Maps Hugging Face T5 state dicts to and from the prompt_jax param tree.

One table (`_hf_table`) lists, for a config, every HF tensor name with its
path in our tree and the layout change; both directions use it, so a round
trip is exact by construction and tested. Conversion is strict: missing,
unexpected and wrongly shaped tensors are all collected and reported in one
`CheckpointMismatchError`.
"""

from typing import Callable, Iterator, Mapping

import flax.traverse_util
import jax
import numpy as np

from prompt_jax.t5.config import T5Config
from prompt_jax.t5.network import T5Transformer

# HF duplicates of the shared embedding; accepted and ignored when loading.
_TIED_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


class CheckpointMismatchError(ValueError):
  """Raised when checkpoint tensors do not match the model exactly."""


def _qkv(n: int, d: int):
  """HF [N*D, H] <-> ours [H, N, D]."""
  return (lambda w: w.T.reshape(w.shape[1], n, d),
          lambda p: p.reshape(p.shape[0], n * d).T)


def _out(n: int, d: int):
  """HF [H, N*D] <-> ours [N, D, H]."""
  return (lambda w: w.T.reshape(n, d, w.shape[0]),
          lambda p: p.reshape(n * d, p.shape[-1]).T)


_T = (lambda w: w.T, lambda p: p.T)
_ID = (lambda w: w, lambda p: p)

Row = tuple[str, str, tuple[Callable, Callable]]


def _attention_rows(hf: str, ours: str, cfg: T5Config) -> Iterator[Row]:
  n, d = cfg.num_heads, cfg.head_dim
  for hf_name, our_name in (("q", "query"), ("k", "key"), ("v", "value")):
    yield f"{hf}.{hf_name}.weight", f"{ours}/{our_name}/kernel", _qkv(n, d)
  yield f"{hf}.o.weight", f"{ours}/out/kernel", _out(n, d)


def _mlp_rows(hf: str, ours: str, cfg: T5Config) -> Iterator[Row]:
  names = ("wi_0", "wi_1") if cfg.gated_mlp else ("wi",)
  for name in names + ("wo",):
    yield f"{hf}.DenseReluDense.{name}.weight", f"{ours}/mlp/{name}/kernel", _T


def _hf_table(cfg: T5Config) -> list[Row]:
  """Every (hf_name, our_path, (hf_to_ours, ours_to_hf)) for `cfg`."""
  rows: list[Row] = [("shared.weight", "token_embedder/embedding", _ID)]
  for stack in ("encoder", "decoder"):
    rows.append((f"{stack}.block.0.layer.0.SelfAttention."
                 "relative_attention_bias.weight",
                 f"{stack}/relpos_bias/rel_embedding", _T))
    rows.append((f"{stack}.final_layer_norm.weight",
                 f"{stack}/{stack}_norm/scale", _ID))
  for i in range(cfg.num_encoder_layers):
    hf, ours = f"encoder.block.{i}.layer", f"encoder/layers_{i}"
    rows += _attention_rows(f"{hf}.0.SelfAttention", f"{ours}/attention", cfg)
    rows.append((f"{hf}.0.layer_norm.weight",
                 f"{ours}/pre_attention_layer_norm/scale", _ID))
    rows += _mlp_rows(f"{hf}.1", ours, cfg)
    rows.append((f"{hf}.1.layer_norm.weight",
                 f"{ours}/pre_mlp_layer_norm/scale", _ID))
  for i in range(cfg.num_decoder_layers):
    hf, ours = f"decoder.block.{i}.layer", f"decoder/layers_{i}"
    rows += _attention_rows(f"{hf}.0.SelfAttention",
                            f"{ours}/self_attention", cfg)
    rows.append((f"{hf}.0.layer_norm.weight",
                 f"{ours}/pre_self_attention_layer_norm/scale", _ID))
    rows += _attention_rows(f"{hf}.1.EncDecAttention",
                            f"{ours}/encoder_decoder_attention", cfg)
    rows.append((f"{hf}.1.layer_norm.weight",
                 f"{ours}/pre_cross_attention_layer_norm/scale", _ID))
    rows += _mlp_rows(f"{hf}.2", ours, cfg)
    rows.append((f"{hf}.2.layer_norm.weight",
                 f"{ours}/pre_mlp_layer_norm/scale", _ID))
  if not cfg.logits_via_embedding:
    rows.append(("lm_head.weight", "decoder/logits_dense/kernel", _T))
  return rows


def abstract_params(cfg: T5Config) -> dict[str, jax.ShapeDtypeStruct]:
  """Flat {'a/b/c': ShapeDtypeStruct} of the model's params (no compute)."""
  tokens = jax.ShapeDtypeStruct((1, 1), np.int32)
  variables = jax.eval_shape(
      lambda t: T5Transformer(cfg).init(jax.random.key(0), t, t), tokens)
  params = flax.core.meta.unbox(variables["params"])
  return flax.traverse_util.flatten_dict(params, sep="/")


def params_from_hf(state: Mapping[str, np.ndarray], cfg: T5Config,
                   source: str = "checkpoint") -> dict:
  """Converts an HF T5 state dict (name -> [out, in] arrays) to our tree.

  Raises:
    CheckpointMismatchError: listing every missing, unexpected and wrongly
      shaped tensor at once.
  """
  expected = abstract_params(cfg)
  flat, missing, bad_shape = {}, [], []
  used = set(_TIED_ALIASES)
  if cfg.logits_via_embedding:
    used.add("lm_head.weight")  # Tied head: a stored copy is redundant.
  for hf_name, path, (to_ours, _) in _hf_table(cfg):
    if hf_name not in state:
      missing.append(hf_name)
      continue
    used.add(hf_name)
    value = to_ours(np.asarray(state[hf_name]))
    if value.shape != expected[path].shape:
      bad_shape.append(f"{hf_name}: {tuple(state[hf_name].shape)} gives "
                       f"{value.shape}, model wants {expected[path].shape}")
      continue
    flat[path] = value
  unexpected = sorted(set(state) - used)
  raise_if_mismatch(source, missing, unexpected, bad_shape)
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def hf_from_params(params: Mapping, cfg: T5Config) -> dict[str, np.ndarray]:
  """Our param tree -> HF T5 state dict (the inverse of `params_from_hf`)."""
  flat = flax.traverse_util.flatten_dict(flax.core.meta.unbox(params),
                                         sep="/")
  state = {hf_name: np.ascontiguousarray(from_ours(np.asarray(flat[path])))
           for hf_name, path, (_, from_ours) in _hf_table(cfg)}
  if cfg.logits_via_embedding:
    state["lm_head.weight"] = state["shared.weight"]
  return state


def raise_if_mismatch(source: str, missing: list, unexpected: list,
                       bad_shape: list) -> None:
  if not (missing or unexpected or bad_shape):
    return
  parts = []
  for label, items in (("missing", missing), ("unexpected", unexpected),
                       ("wrong shape", bad_shape)):
    if items:
      parts.append(f"{len(items)} {label}: " + "; ".join(items))
  raise CheckpointMismatchError(
      f"{source} does not match the model: " + " | ".join(parts))
