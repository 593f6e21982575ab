"""Where LoRA goes: target names, the projections they select, their seams.

Targets are PEFT's module names for the backbone's family, i.e. what
`peft.LoraConfig(target_modules=...)` takes for the Hugging Face model:

  encoder-decoder (T5): q, k, v, o (every attention block: encoder self,
    decoder self and decoder cross), wi (or wi_0 and wi_1 when gated), wo.
  decoder-only (Llama): q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
    down_proj.

'all-linear' (PEFT's shorthand) selects every projection of every layer
(never the LM head). Defaults are PEFT's: q, v for T5; q_proj, v_proj for
Llama. A name selects that projection in every layer.

A site is one selected projection of one layer, named by its module path in
our param tree: `encoder/layers_0/attention/query` (T5 encoder self-attention),
`decoder/layers_1/encoder_decoder_attention/value` (T5 cross-attention),
`layers_2/mlp/wo` (Llama). The trainable tree is keyed by these paths, so
`<path>/a` and `<path>/b` sit beside the frozen `<path>/kernel`.
"""

import dataclasses
import math
import re
from typing import Mapping, Sequence

import flax.traverse_util

from prompt_jax import models
from prompt_jax import partitioning
from prompt_jax.backbones import seams as seams_lib

ALL_LINEAR = "all-linear"
# PEFT module name -> our projection name, per family.
PEFT_NAMES: dict[str, dict[str, str]] = {
    models.ENCODER_DECODER: {
        "q": "query", "k": "key", "v": "value", "o": "out",
        "wi": "wi", "wi_0": "wi_0", "wi_1": "wi_1", "wo": "wo"},
    models.DECODER_ONLY: {
        "q_proj": "query", "k_proj": "key", "v_proj": "value",
        "o_proj": "out", "gate_proj": "wi_0", "up_proj": "wi_1",
        "down_proj": "wo"},
}
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    models.ENCODER_DECODER: ("q", "v"),
    models.DECODER_ONLY: ("q_proj", "v_proj"),
}
# Our block name -> the `LayerSeams` field it plugs into.
_BLOCK_FIELDS = {"attention": "self_attention",
                 "self_attention": "self_attention",
                 "encoder_decoder_attention": "cross_attention",
                 "mlp": "mlp"}
# (stack, block) -> Hugging Face sub-module, for PEFT's tensor names.
_HF_BLOCKS = {
    ("encoder", "attention"): "layer.0.SelfAttention",
    ("encoder", "mlp"): "layer.1.DenseReluDense",
    ("decoder", "self_attention"): "layer.0.SelfAttention",
    ("decoder", "encoder_decoder_attention"): "layer.1.EncDecAttention",
    ("decoder", "mlp"): "layer.2.DenseReluDense",
}
_LLAMA_HF_BLOCKS = {"self_attention": "self_attn", "mlp": "mlp"}
_PATH = re.compile(r"^(?:(encoder|decoder)/)?layers_(\d+)/"
                   r"(attention|self_attention|encoder_decoder_attention|mlp)/"
                   r"(\w+)$")


@dataclasses.dataclass(frozen=True)
class Site:
  """One projection of one layer.

  Attributes:
    path: module path in the param tree, e.g. 'encoder/layers_0/attention/
      query' (its kernel is `<path>/kernel`).
    stack: 'encoder' or 'decoder' (decoder-only models: 'decoder').
    layer: layer index.
    block: 'attention', 'self_attention', 'encoder_decoder_attention' or
      'mlp'.
    proj: query, key, value, out, wi, wi_0, wi_1 or wo.
    in_shape / out_shape: kernel dims contracted with the input / produced.
    in_axes / out_axes: their logical axis names.
  """
  path: str
  stack: str
  layer: int
  block: str
  proj: str
  in_shape: tuple[int, ...] = ()
  out_shape: tuple[int, ...] = ()
  in_axes: tuple[str, ...] = ()
  out_axes: tuple[str, ...] = ()

  @property
  def fan_in(self) -> int:
    return math.prod(self.in_shape)


def parse(path: str) -> Site:
  """The site of a module path (shapes left empty).

  Raises:
    ValueError: `path` is not a layer projection.
  """
  match = _PATH.match(path)
  if not match:
    raise ValueError(f"LoRA: {path!r} is not a layer projection path")
  stack, layer, block, proj = match.groups()
  return Site(path, stack or "decoder", int(layer), block, proj)


def all_sites(lm: models.LanguageModel) -> list[Site]:
  """Every layer projection of `lm`'s backbone, with kernel shapes and axes
  (from its abstract params: nothing is allocated)."""
  abstract = partitioning.abstract_variables(lm.module, lm.sample_inputs)
  flat = flax.traverse_util.flatten_dict(abstract["params"], sep="/")
  sites = []
  for key, box in flat.items():
    module, _, leaf = key.rpartition("/")
    if leaf != "kernel" or not _PATH.match(module):
      continue
    site = parse(module)
    n_in = 2 if site.proj == "out" else 1  # out contracts [N, D].
    shape, axes = tuple(box.value.shape), tuple(box.names)
    sites.append(dataclasses.replace(
        site, in_shape=shape[:n_in], out_shape=shape[n_in:],
        in_axes=axes[:n_in], out_axes=axes[n_in:]))
  return sites


def select(lm: models.LanguageModel, targets: Sequence[str] | None
           ) -> list[Site]:
  """The sites `targets` (PEFT names, None: PEFT's defaults) select on `lm`.

  Raises:
    ValueError: a name that is no projection of this model, naming it and
      the valid names.
  """
  names = PEFT_NAMES[lm.family]
  sites = all_sites(lm)
  present = {s.proj for s in sites}
  valid = [peft for peft, ours in names.items() if ours in present]
  targets = DEFAULT_TARGETS[lm.family] if targets is None else targets
  if ALL_LINEAR in targets:
    targets = valid
  unknown = [t for t in targets if t not in valid]
  if unknown:
    raise ValueError(f"LoRA target(s) {', '.join(map(repr, unknown))} are not "
                     f"projections of this {lm.family} model; expected "
                     f"'{ALL_LINEAR}' or names from {valid}")
  chosen = {names[t] for t in targets}
  return [s for s in sites if s.proj in chosen]


def seams_of(deltas: Mapping[str, seams_lib.LowRankDelta]) -> seams_lib.Seams:
  """The `Seams` that apply `deltas` (keyed by module path)."""
  fields: dict[tuple[str, int, str], dict] = {}
  for path, delta in deltas.items():
    site = parse(path)
    key = (site.stack, site.layer, _BLOCK_FIELDS[site.block])
    fields.setdefault(key, {}).setdefault("deltas", {})[site.proj] = delta
  return seams_lib.from_fields(fields)


def hf_module(family: str, path: str) -> str:
  """The Hugging Face module name of a site, as PEFT names it (without
  PEFT's 'base_model.model.' prefix), e.g. 'encoder.block.0.layer.0.
  SelfAttention.q' or 'model.layers.2.self_attn.q_proj'."""
  site = parse(path)
  peft = {ours: name for name, ours in PEFT_NAMES[family].items()}[site.proj]
  if family == models.ENCODER_DECODER:
    block = _HF_BLOCKS[(site.stack, site.block)]
    return f"{site.stack}.block.{site.layer}.{block}.{peft}"
  return f"model.layers.{site.layer}.{_LLAMA_HF_BLOCKS[site.block]}.{peft}"
