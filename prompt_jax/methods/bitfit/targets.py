"""Where BitFit's biases go: target names, the projections, their seams.

Targets are PEFT's module names for the backbone's family (as LoRA's,
`lora.targets`): T5 q, k, v, o (every attention block), wi or wi_0/wi_1,
wo; Llama q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.
Two named variants:

  'all-linear': every projection of every layer (never the LM head).
  'beft': PEFT's BEFT defaults (`TRANSFORMERS_MODELS_TO_BEFT_TARGET_MODULES_
    MAPPING`): the value projections (T5 v, Llama v_proj).

A bias is named by its projection's module path; its trainable leaf is
`<path>/bias` [*out_dims] beside the frozen `<path>/kernel`.
"""

from typing import Mapping, Sequence

from prompt_jax import models
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.methods.lora import targets as lora_targets
from prompt_jax.types import Array

ALL_LINEAR = "all-linear"
BEFT = "beft"
BEFT_TARGETS: dict[str, tuple[str, ...]] = {
    models.ENCODER_DECODER: ("v",),
    models.DECODER_ONLY: ("v_proj",),
}
_BLOCK_FIELDS = {"attention": "self_attention",
                 "self_attention": "self_attention",
                 "encoder_decoder_attention": "cross_attention",
                 "mlp": "mlp"}


def select(lm: models.LanguageModel, targets: Sequence[str]
           ) -> list[lora_targets.Site]:
  """The projections `targets` (PEFT names or a variant) select on `lm`.

  Raises:
    ValueError: a name that is no projection of this model, naming it and
      the valid names.
  """
  names = lora_targets.PEFT_NAMES[lm.family]
  sites = lora_targets.all_sites(lm)
  present = {s.proj for s in sites}
  valid = [peft for peft, ours in names.items() if ours in present]
  if ALL_LINEAR in targets:
    targets = valid
  elif BEFT in targets:
    targets = BEFT_TARGETS[lm.family]
  unknown = [t for t in targets if t not in valid]
  if unknown:
    raise ValueError(f"BitFit target(s) {', '.join(map(repr, unknown))} are "
                     f"not projections of this {lm.family} model; expected "
                     f"'{ALL_LINEAR}', '{BEFT}' or names from {valid}")
  chosen = {names[t] for t in targets}
  return [s for s in sites if s.proj in chosen]


def seams_of(biases: Mapping[str, Array]) -> seams_lib.Seams:
  """The `Seams` that add `biases` (keyed by projection module path)."""
  fields: dict[tuple[str, int, str], dict] = {}
  for path, bias in biases.items():
    site = lora_targets.parse(path)
    key = (site.stack, site.layer, _BLOCK_FIELDS[site.block])
    fields.setdefault(key, {}).setdefault("biases", {})[site.proj] = bias
  return seams_lib.from_fields(fields)
