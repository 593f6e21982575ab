"""UniPELT as a `Method`: gated LoRA + prefix tuning + Pfeiffer adapter.

The submodules are our own methods on the same backbone: LoRA on the
query and value projections of every attention block (PEFT's default
targets), prefix tuning on every attention block (T5 'paper' layout;
decoder-only: PEFT's layout and position offset), and a Pfeiffer adapter
after every FFN (mam init). Each (layer, block) has one gate per
submodule (`gates`), a sigmoid of a linear map of the submodule's input:

  LoRA:    y = x W + g_L(x) * s * (x A) B, with s = 1 ('gate', the
           original code: the gate replaces alpha / r) or s = alpha / r
           ('gate_times_alpha', the adapters library).
  prefix:  the prefix slots' attention logits get + log g_P(x_q): their
           unnormalised weights are multiplied by g_P. (UniPELT multiplies
           the prefix keys/values by the gate; as g -> 0 that leaves zero
           keys that still take softmax mass, so the prefix is never
           switched off. Gating the weights removes it exactly at g = 0,
           which is what the gate is meant to do.)
  adapter: y + g_A(y) * (act(y W_down + b_down) W_up + b_up) on the FFN
           output y.

A gate with bias -30 removes its submodule (to within exp(-30)); the
tests check each against the backbone without it. Trainable tree:
`{'lora': LoRA's tree, 'prefix': prefix tuning's, 'adapters': the
adapters', 'gates': {<stack>/layers_<i>/<field>/<kind>: {'kernel' [H],
'bias' []}}}` with field self_attention / cross_attention / mlp and kind
lora / prefix / adapter. The artifact is one `.npz` of that tree.
"""

import dataclasses
from typing import Any

import flax.traverse_util
import jax

from prompt_jax import models
from prompt_jax.backbones import layers
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.methods import base
from prompt_jax.methods.adapters import bottleneck
from prompt_jax.methods.adapters import sites as adapter_sites
from prompt_jax.methods.adapters.method import Adapters
from prompt_jax.methods.compose import merge
from prompt_jax.methods.lora.method import LoRA
from prompt_jax.methods.prefix_tuning.method import PrefixTuning
from prompt_jax.methods.unipelt import gates as gates_lib
from prompt_jax.types import PRNGKey, PyTree

LORA_SCALINGS = ("gate", "gate_times_alpha")
_ATTENTION = ("self_attention", "cross_attention")
_ENCODER_INPUTS = ("key", "value")  # Cross-attention reads the encoder.


def _flat(tree: PyTree) -> dict[str, Any]:
  return flax.traverse_util.flatten_dict(tree, sep="/")


@dataclasses.dataclass(frozen=True)
class UniPELT(base.Method):
  """Gated LoRA, prefix and Pfeiffer adapter in every layer.

  Attributes:
    rank / alpha: LoRA's r and alpha (UniPELT: 8 and 16).
    prefix_length: P (UniPELT: 10).
    reduction_factor: the adapter's H / bottleneck (UniPELT: 16).
    lora_scaling: 'gate' or 'gate_times_alpha' (module docstring).
  """
  rank: int = 8
  alpha: float = 16.0
  prefix_length: int = 10
  reduction_factor: int = 16
  lora_scaling: str = "gate"

  name = "unipelt"
  artifact_dir = "unipelt"
  artifact_stem = "unipelt"

  def __post_init__(self):
    if self.lora_scaling not in LORA_SCALINGS:
      raise ValueError(f"UniPELT lora_scaling={self.lora_scaling!r}; "
                       f"expected one of {list(LORA_SCALINGS)}")
    self.parts()  # Each part checks its own settings.

  def parts(self) -> tuple[LoRA, PrefixTuning, Adapters]:
    """The three submodules as methods of their own."""
    return (LoRA(rank=self.rank, alpha=self.alpha),
            PrefixTuning(length=self.prefix_length),
            Adapters(config="pfeiffer",
                     reduction_factor=self.reduction_factor, init="mam"))

  def check(self, lm: models.LanguageModel) -> None:
    for part in self.parts():
      part.check(lm)

  def gate_keys(self, lm: models.LanguageModel) -> list[str]:
    """'<stack>/layers_<i>/<field>/<kind>' of every gate on `lm`."""
    lora, _, adapters = self.parts()
    keys = set()
    for site in lora.sites(lm):  # Every attention block has q and v.
      field = adapter_sites.BLOCK_FIELDS[site.block]
      for kind in ("lora", "prefix"):
        keys.add(f"{site.stack}/layers_{site.layer}/{field}/{kind}")
    for key in _flat(adapters.abstract_trainable(lm)):
      stack, layer, field = adapter_sites.parse(key.split("/adapter/")[0])
      keys.add(f"{stack}/layers_{layer}/{field}/adapter")
    return sorted(keys)

  def abstract_trainable(self, lm: models.LanguageModel) -> PyTree:
    lora, prefix, adapters = self.parts()
    width = lm.config.emb_dim
    return {"lora": lora.abstract_trainable(lm),
            "prefix": prefix.abstract_trainable(lm),
            "adapters": adapters.abstract_trainable(lm),
            "gates": flax.traverse_util.unflatten_dict(
                {k: gates_lib.abstract(width) for k in self.gate_keys(lm)},
                sep="/")}

  def init_trainable(self, rng: PRNGKey, lm: models.LanguageModel,
                     params: PyTree, tokenizer: Any) -> PyTree:
    lora, prefix, adapters = self.parts()
    keys = self.gate_keys(lm)
    k_lora, k_prefix, k_adapters, k_gates = jax.random.split(rng, 4)
    gate_rngs = jax.random.split(k_gates, len(keys))
    return {"lora": lora.init_trainable(k_lora, lm, params, tokenizer),
            "prefix": prefix.init_trainable(k_prefix, lm, params, tokenizer),
            "adapters": adapters.init_trainable(k_adapters, lm, params,
                                                tokenizer),
            "gates": flax.traverse_util.unflatten_dict(
                {k: gates_lib.init(r, lm.config.emb_dim)
                 for k, r in zip(keys, gate_rngs)}, sep="/")}

  def bind(self, lm: models.LanguageModel, trainable: PyTree,
           frozen: PyTree) -> tuple[PyTree, seams_lib.Seams]:
    lora, prefix, adapters = self.parts()
    gate_params: dict[str, dict] = {}
    for key, value in _flat(trainable["gates"]).items():
      path, _, leaf = key.rpartition("/")
      gate_params.setdefault(path, {})[leaf] = value
    seams = merge.merge(lora.bind(lm, trainable["lora"], frozen)[1],
                        prefix.bind(lm, trainable["prefix"], frozen)[1],
                        ("lora", "prefix_tuning"))
    seams = merge.merge(seams, self._adapter_seams(trainable["adapters"],
                                                   gate_params),
                        ("lora, prefix_tuning", "adapters"))
    return frozen, dataclasses.replace(
        seams,
        encoder_layers=self._gated(seams.encoder_layers, "encoder",
                                   gate_params),
        decoder_layers=self._gated(seams.decoder_layers, "decoder",
                                   gate_params))

  def _adapter_seams(self, trainable: PyTree, gate_params: dict
                     ) -> seams_lib.Seams:
    act = layers.ACTIVATIONS[self.parts()[2].activation]
    fns = {}
    for path in sorted({k.split("/adapter/")[0] for k in _flat(trainable)}):
      stack, layer, field = adapter_sites.parse(path)
      node = trainable
      for part in path.split("/"):
        node = node[part]
      gate = gates_lib.gate_fn(
          gate_params[f"{stack}/layers_{layer}/{field}/adapter"],
          mean=stack == "encoder")
      fns[path] = _gated_adapter(node["adapter"], gate, act)
    return adapter_sites.seams_of(fns)

  def _gated(self, stack_layers, stack: str, gate_params: dict):
    if stack_layers is None:
      return None
    out = []
    for i, layer in enumerate(stack_layers):
      if layer is None:
        out.append(None)
        continue
      changes = {}
      for field in _ATTENTION:
        s = getattr(layer, field)
        if s is not None:
          changes[field] = self._gated_attention(
              s, f"{stack}/layers_{i}/{field}", stack, field, gate_params)
      out.append(dataclasses.replace(layer, **changes))
    return tuple(out)

  def _gated_attention(self, s: seams_lib.AttentionSeams, key: str,
                       stack: str, field: str, gate_params: dict
                       ) -> seams_lib.AttentionSeams:
    changes = {}
    if s.deltas:
      params = gate_params[f"{key}/lora"]
      changes["deltas"] = {
          proj: dataclasses.replace(
              d, scale=1.0 if self.lora_scaling == "gate" else d.scale,
              gate=gates_lib.gate_fn(params, mean=stack == "encoder" or (
                  field == "cross_attention" and proj in _ENCODER_INPUTS)))
          for proj, d in s.deltas.items()}
    if s.prefix_key is not None:
      changes["prefix_gate"] = gates_lib.gate_fn(
          gate_params[f"{key}/prefix"], mean=stack == "encoder")
    return dataclasses.replace(s, **changes)

  def settings(self) -> dict[str, Any]:
    return {"method": self.name, "unipelt_rank": self.rank,
            "unipelt_alpha": self.alpha,
            "unipelt_prefix_length": self.prefix_length,
            "unipelt_reduction_factor": self.reduction_factor,
            "unipelt_lora_scaling": self.lora_scaling}


def _gated_adapter(params, gate, act):
  """`y -> y + gate(y) * delta(y)` for the FFN output y [B, T, H]."""
  def fn(y):
    g = gate(y)
    return y + g[..., None].astype(y.dtype) * bottleneck.delta(params, y,
                                                               act)
  return fn
