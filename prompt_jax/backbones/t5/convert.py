"""Maps Hugging Face T5 state dicts to and from the prompt_jax param tree.

One table (`_hf_table`) lists, for a config, every HF tensor name with its
path in our tree and the layout change; both directions use it, so a round
trip is exact by construction and tested. Conversion is strict: missing,
unexpected and wrongly shaped tensors are all collected and reported in one
`CheckpointMismatchError`.
"""

from typing import Any, Iterator, Mapping

import flax.traverse_util
import jax
import numpy as np

from prompt_jax.backbones import convert
from prompt_jax.backbones import lazy_tensors
from prompt_jax.backbones.lazy_tensors import Layout
from prompt_jax.backbones.t5.config import T5Config
from prompt_jax.backbones.t5.network import T5Transformer

# HF copies of the shared embedding: checked equal to it, then ignored.
_TIED_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_SHARED = "shared.weight"
_HEAD = "lm_head.weight"


CheckpointMismatchError = convert.CheckpointMismatchError


def _qkv(n: int, d: int) -> Layout:
  """HF [N*D, H] <-> ours [H, N, D]."""
  return Layout(transpose=True, split=1, heads=n, head_dim=d)


def _out(n: int, d: int) -> Layout:
  """HF [H, N*D] <-> ours [N, D, H]."""
  return Layout(transpose=True, split=0, heads=n, head_dim=d)


_T = Layout(transpose=True)
_ID = Layout()

Row = tuple[str, str, Layout]


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
  """Every (hf_name, our_path, layout) for `cfg`."""
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


def params_from_hf(state: Mapping[str, Any], cfg: T5Config,
                   source: str = "checkpoint",
                   shardings: Mapping[str, Any] | None = None) -> dict:
  """Converts an HF T5 state dict (name -> [out, in] arrays) to our tree.

  HF's copies of the embedding, `encoder/decoder.embed_tokens.weight`, must
  equal `shared.weight` exactly, and so must a stored `lm_head.weight` when
  the head is tied (`cfg.logits_via_embedding`: it is dropped). An untied
  head's `lm_head.weight` is its own weight (transformers 5 also uses a
  stored head that differs from the embedding, whatever
  `tie_word_embeddings` says).

  Args:
    state: HF name -> array or `lazy_tensors.Tensor` (read only as needed).
    cfg: the model config.
    source: names the checkpoint in error messages.
    shardings: {'a/b/c': sharding} (`lazy_tensors.flat_shardings`): build
      `jax.Array`s shard by shard; None gives numpy arrays.

  Raises:
    CheckpointMismatchError: listing every missing, unexpected, wrongly
      shaped and unequal tied tensor at once.
  """
  state = {name: lazy_tensors.as_tensor(v) for name, v in state.items()}
  expected = abstract_params(cfg)
  leaves, missing, bad_shape = {}, [], []
  tied = list(_TIED_ALIASES)
  if cfg.logits_via_embedding:
    tied.append(_HEAD)  # Tied head: a stored copy is redundant.
  used = set(tied)
  for hf_name, path, layout in _hf_table(cfg):
    if hf_name not in state:
      missing.append(hf_name)
      continue
    used.add(hf_name)
    stored, want = state[hf_name].shape, tuple(expected[path].shape)
    ours = layout.our_shape(stored)
    if ours != want:
      bad_shape.append(
          f"{hf_name}: {stored} gives {ours}, model wants {want}" if ours
          else f"{hf_name}: {stored}, model wants {layout.stored_shape(want)}")
      continue
    leaves[path] = (state[hf_name], layout)
  unexpected = sorted(set(state) - used)
  differ = [name for name in tied if name in state and _SHARED in state
            and not lazy_tensors.equal(state[name], state[_SHARED])]
  raise_if_mismatch(source, missing, unexpected, bad_shape, differ)
  return lazy_tensors.build(leaves, shardings)


def hf_from_params(params: Mapping, cfg: T5Config) -> dict[str, np.ndarray]:
  """Our param tree -> HF T5 state dict (the inverse of `params_from_hf`)."""
  flat = flax.traverse_util.flatten_dict(flax.core.meta.unbox(params),
                                         sep="/")
  state = {hf_name: np.ascontiguousarray(layout.from_ours(
      np.asarray(flat[path]))) for hf_name, path, layout in _hf_table(cfg)}
  if cfg.logits_via_embedding:
    state[_HEAD] = state[_SHARED]
  return state


def raise_if_mismatch(source: str, missing: list, unexpected: list,
                      bad_shape: list, differ: list = ()) -> None:
  """`convert.raise_if_mismatch` with T5's shared embedding name."""
  convert.raise_if_mismatch(source, missing, unexpected, bad_shape, differ,
                            shared=_SHARED)
