"""Maps Hugging Face Llama state dicts to and from the decoder param tree.

One table (`_hf_table`) lists, for a config, every HF tensor name with its
path in our tree and the layout change; both directions use it, so a round
trip is exact by construction. Conversion is strict, as for T5
(`prompt_jax.backbones.t5.convert`): missing, unexpected and wrongly shaped tensors are
all collected and reported in one `CheckpointMismatchError`.
`from_hf_state` is where both checkpoint readers (`hf_loading` for
directories, `gguf_loading` for GGUF files) end: HF config and state dict to
our `DecoderConfig` and param tree.

HF layouts: q_proj [N*D, H], k_proj/v_proj [K*D, H], o_proj [H, N*D],
gate_proj/up_proj [F, H], down_proj [H, F], lm_head [V, H]. A tied model may
carry a redundant `lm_head.weight` (transformers writes one); it is accepted
if it equals the embedding (and dropped), else named in the mismatch error.
Rotary buffers (`rotary_emb.inv_freq`) are ignored: the
config determines them.
"""

from typing import Any, Iterator, Mapping

import flax.core.meta
import flax.traverse_util
import jax
import numpy as np

from prompt_jax.backbones import lazy_tensors
from prompt_jax.backbones.llama.config import DecoderConfig, from_hf_config
from prompt_jax.backbones.llama.network import DecoderLM
from prompt_jax.backbones.lazy_tensors import Layout
from prompt_jax.backbones import convert as shared_convert

CheckpointMismatchError = shared_convert.CheckpointMismatchError
# One message format for both backbones.
# pylint: disable-next=protected-access

Row = tuple[str, str, Layout]

_T = Layout(transpose=True)
_ID = Layout()


def _heads_in(heads: int, d: int) -> Layout:
  """HF [heads*D, H] <-> ours [H, heads, D]."""
  return Layout(transpose=True, split=1, heads=heads, head_dim=d)


def _heads_out(heads: int, d: int) -> Layout:
  """HF [H, N*D] <-> ours [N, D, H]."""
  return Layout(transpose=True, split=0, heads=heads, head_dim=d)


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
  """Every (hf_name, our_path, layout) for `cfg`."""
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


_HEAD, _EMBED = "lm_head.weight", "model.embed_tokens.weight"


def _ignored(name: str, cfg: DecoderConfig) -> bool:
  if name.endswith("rotary_emb.inv_freq"):
    return True
  return cfg.tie_word_embeddings and name == "lm_head.weight"


def params_from_hf(state: Mapping[str, Any], cfg: DecoderConfig,
                   source: str = "checkpoint",
                   shardings: Mapping[str, Any] | None = None) -> dict:
  """Converts an HF Llama state dict (name -> [out, in] arrays) to our tree.

  Args:
    state: HF tensor name -> array (numpy or anything `np.asarray` takes)
      or `lazy_tensors.Tensor` (read only as needed).
    cfg: the model config.
    source: names the checkpoint in error messages.
    shardings: {'a/b/c': sharding} (`lazy_tensors.flat_shardings`): build
      `jax.Array`s shard by shard; None gives numpy arrays.

  Returns:
    The nested param tree of `DecoderLM(cfg)`, arrays in the state's dtype.

  Raises:
    CheckpointMismatchError: listing every missing, unexpected and wrongly
      shaped tensor at once.
  """
  expected = abstract_params(cfg)
  leaves, missing, bad_shape = {}, [], []
  used = {name for name in state if _ignored(name, cfg)}
  for hf_name, path, layout in _hf_table(cfg):
    if hf_name not in state:
      missing.append(hf_name)
      continue
    used.add(hf_name)
    tensor = lazy_tensors.as_tensor(state[hf_name])
    want = layout.stored_shape(expected[path].shape)
    if tensor.shape != want:
      bad_shape.append(f"{hf_name}: {tensor.shape}, model wants {want}")
      continue
    leaves[path] = (tensor, layout)
  unexpected = sorted(set(state) - used)
  differ = []
  if (cfg.tie_word_embeddings and _HEAD in state and _EMBED in state
      and not lazy_tensors.equal(lazy_tensors.as_tensor(state[_HEAD]),
                                 lazy_tensors.as_tensor(state[_EMBED]))):
    differ.append(_HEAD)  # Dropped for the embedding: it must be a copy.
  shared_convert.raise_if_mismatch(source, missing, unexpected, bad_shape,
                                   differ, shared=_EMBED)
  return lazy_tensors.build(leaves, shardings)


def hf_from_params(params: Mapping, cfg: DecoderConfig
                   ) -> dict[str, np.ndarray]:
  """Our param tree -> HF Llama state dict (inverse of `params_from_hf`).

  A tied model gets `lm_head.weight` equal to the embedding, as transformers
  saves it.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.meta.unbox(params),
                                         sep="/")
  state = {hf_name: np.ascontiguousarray(layout.from_ours(
      np.asarray(flat[path]))) for hf_name, path, layout in _hf_table(cfg)}
  if cfg.tie_word_embeddings:
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
  return state


def from_hf_state(hf_config: Mapping[str, Any],
                  state: Mapping[str, Any], source: str,
                  shardings: lazy_tensors.Shardings | None = None,
                  **overrides) -> tuple[DecoderConfig, dict]:
  """(DecoderConfig, params) from an HF config dict and state dict.

  Args:
    hf_config: transformers Llama `config.json` dict.
    state: HF tensor name -> [out, in] (or [H]) array or
      `lazy_tensors.Tensor`.
    source: names the checkpoint in error messages.
    shardings: the params' sharding tree, or a function of the
      `DecoderConfig` returning it (called before any weight is read);
      None gives numpy arrays.
    **overrides: `DecoderConfig` fields to set (e.g. dtype, param_dtype).

  Returns:
    (config, nested param tree in `config.param_dtype`: numpy arrays, or
    `jax.Array`s in `shardings`).

  Raises:
    ValueError: unsupported config (one line naming `source`).
    CheckpointMismatchError: tensors that do not match the config.
  """
  cfg = from_hf_config(hf_config, source, **overrides)
  dtype = np.dtype(cfg.param_dtype)
  # Floats (bfloat16 included) become `dtype` as read; integers unchanged.
  state = {name: lazy_tensors.CastTensor(lazy_tensors.as_tensor(value), dtype)
           for name, value in state.items()}
  return cfg, params_from_hf(
      state, cfg, source, lazy_tensors.flat_shardings(shardings, cfg))
