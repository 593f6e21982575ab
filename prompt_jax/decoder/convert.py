"""Maps Hugging Face Llama state dicts to and from the decoder param tree.

One table (`_hf_table`) lists, for a config, every HF tensor name with its
path in our tree and the layout change; both directions use it, so a round
trip is exact by construction. Conversion is strict, as for T5
(`prompt_jax.t5.convert`): missing, unexpected and wrongly shaped tensors are
all collected and reported in one `CheckpointMismatchError`.

HF layouts: q_proj [N*D, H], k_proj/v_proj [K*D, H], o_proj [H, N*D],
gate_proj/up_proj [F, H], down_proj [H, F], lm_head [V, H]. A tied model may
carry a redundant `lm_head.weight` (transformers writes one); it is accepted
and ignored. Rotary buffers (`rotary_emb.inv_freq`) are ignored too: the
config determines them.
"""

from typing import Callable, Iterator, Mapping

import flax.core.meta
import flax.traverse_util
import jax
import numpy as np

from prompt_jax.decoder.config import DecoderConfig
from prompt_jax.decoder.network import DecoderLM
from prompt_jax.t5 import convert as t5_convert

CheckpointMismatchError = t5_convert.CheckpointMismatchError
# One message format for both backbones.
# pylint: disable-next=protected-access

Row = tuple[str, str, tuple[Callable, Callable]]

_T = (lambda w: w.T, lambda p: p.T)
_ID = (lambda w: w, lambda p: p)


def _heads_in(heads: int, d: int):
  """HF [heads*D, H] <-> ours [H, heads, D]."""
  return (lambda w: w.T.reshape(w.shape[1], heads, d),
          lambda p: p.reshape(p.shape[0], heads * d).T)


def _heads_out(heads: int, d: int):
  """HF [H, N*D] <-> ours [N, D, H]."""
  return (lambda w: w.T.reshape(heads, d, w.shape[0]),
          lambda p: p.reshape(heads * d, p.shape[-1]).T)


def _layer_rows(i: int, cfg: DecoderConfig) -> Iterator[Row]:
  hf, ours = f"model.layers.{i}", f"layers_{i}"
  n, k, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  attn = f"{ours}/self_attention"
  yield f"{hf}.self_attn.q_proj.weight", f"{attn}/query/kernel", _heads_in(n, d)
  yield f"{hf}.self_attn.k_proj.weight", f"{attn}/key/kernel", _heads_in(k, d)
  yield (f"{hf}.self_attn.v_proj.weight", f"{attn}/value/kernel",
         _heads_in(k, d))
  yield f"{hf}.self_attn.o_proj.weight", f"{attn}/out/kernel", _heads_out(n, d)
  for hf_name, name in (("gate_proj", "wi_0"), ("up_proj", "wi_1"),
                        ("down_proj", "wo")):
    yield f"{hf}.mlp.{hf_name}.weight", f"{ours}/mlp/{name}/kernel", _T
  yield (f"{hf}.input_layernorm.weight",
         f"{ours}/pre_self_attention_layer_norm/scale", _ID)
  yield (f"{hf}.post_attention_layernorm.weight",
         f"{ours}/pre_mlp_layer_norm/scale", _ID)


def _hf_table(cfg: DecoderConfig) -> list[Row]:
  """Every (hf_name, our_path, (hf_to_ours, ours_to_hf)) for `cfg`."""
  rows: list[Row] = [("model.embed_tokens.weight", "token_embedder/embedding",
                      _ID)]
  for i in range(cfg.num_layers):
    rows += _layer_rows(i, cfg)
  rows.append(("model.norm.weight", "decoder_norm/scale", _ID))
  if not cfg.tie_word_embeddings:
    rows.append(("lm_head.weight", "logits_dense/kernel", _T))
  return rows


def abstract_params(cfg: DecoderConfig) -> dict[str, jax.ShapeDtypeStruct]:
  """Flat {'a/b/c': ShapeDtypeStruct} of the model's params (no compute)."""
  tokens = jax.ShapeDtypeStruct((1, 1), np.int32)
  variables = jax.eval_shape(
      lambda t: DecoderLM(cfg).init(jax.random.key(0), t), tokens)
  params = flax.core.meta.unbox(variables["params"])
  return flax.traverse_util.flatten_dict(params, sep="/")


def _ignored(name: str, cfg: DecoderConfig) -> bool:
  if name.endswith("rotary_emb.inv_freq"):
    return True
  return cfg.tie_word_embeddings and name == "lm_head.weight"


def params_from_hf(state: Mapping[str, np.ndarray], cfg: DecoderConfig,
                   source: str = "checkpoint") -> dict:
  """Converts an HF Llama state dict (name -> [out, in] arrays) to our tree.

  Args:
    state: HF tensor name -> array (numpy or anything `np.asarray` takes).
    cfg: the model config.
    source: names the checkpoint in error messages.

  Returns:
    The nested param tree of `DecoderLM(cfg)`, numpy arrays in the state's
    dtype.

  Raises:
    CheckpointMismatchError: listing every missing, unexpected and wrongly
      shaped tensor at once.
  """
  expected = abstract_params(cfg)
  flat, missing, bad_shape = {}, [], []
  used = {name for name in state if _ignored(name, cfg)}
  for hf_name, path, (to_ours, _) in _hf_table(cfg):
    if hf_name not in state:
      missing.append(hf_name)
      continue
    used.add(hf_name)
    value = np.asarray(state[hf_name])
    want = _hf_shape(expected[path].shape, path)
    if tuple(value.shape) != want:
      bad_shape.append(f"{hf_name}: {tuple(value.shape)}, model wants {want}")
      continue
    flat[path] = to_ours(value)
  unexpected = sorted(set(state) - used)
  t5_convert.raise_if_mismatch(source, missing, unexpected, bad_shape)
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def _hf_shape(ours: tuple[int, ...], path: str) -> tuple[int, ...]:
  """The HF shape of a tensor whose shape in our tree is `ours`."""
  if len(ours) == 1 or path.endswith("embedding"):
    return tuple(ours)
  if path.endswith("out/kernel"):
    return (ours[2], ours[0] * ours[1])
  if len(ours) == 3:
    return (ours[1] * ours[2], ours[0])
  return (ours[1], ours[0])


def hf_from_params(params: Mapping, cfg: DecoderConfig
                   ) -> dict[str, np.ndarray]:
  """Our param tree -> HF Llama state dict (inverse of `params_from_hf`).

  A tied model gets `lm_head.weight` equal to the embedding, as transformers
  saves it.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.meta.unbox(params),
                                         sep="/")
  state = {hf_name: np.ascontiguousarray(from_ours(np.asarray(flat[path])))
           for hf_name, path, (_, from_ours) in _hf_table(cfg)}
  if cfg.tie_word_embeddings:
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
  return state
