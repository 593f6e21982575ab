"""Where IA3 vectors go: PEFT target names and the activations they scale.

PEFT's IA3 (`peft.tuners.ia3`) wraps each target `nn.Linear`: a module named
in `feedforward_modules` has its INPUT scaled by `ia3_l` [1, in], any other
its OUTPUT by `ia3_l` [out, 1]. A name matches that module in every block
(T5: encoder self-attention, decoder self- and cross-attention, both MLPs).
Of these, the backbone's seams express:

  output of k / k_proj               -> AttentionSeams.key_scale [N|K, D]
  output of v / v_proj               -> AttentionSeams.value_scale [N|K, D]
  input of wo / down_proj (feedforward) -> MlpSeams.hidden_scale [F]
  output of wi_1 / up_proj (gated MLP)  -> MlpSeams.hidden_scale [F]
    (hidden = act(wi_0 x) * (wi_1 x), so scaling wi_1's output scales the
    hidden; with wo too, the two vectors multiply)

Any other (name, side) (q, o, wi, wi_0, a non-feedforward wo, ...) is
refused with one line listing the valid names. Defaults are PEFT's
`TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING` and `..._FEEDFORWARD_
MODULES_MAPPING`: model_type 't5' (T5 1.0 and 1.1 alike) k, v, wo with wo
feedforward; 'llama' k_proj, v_proj, down_proj with down_proj feedforward.
(PEFT's 'mt5' default, k, v, wi_1, is `targets=('k', 'v', 'wi_1')`.)

A vector is named by the module path of the projection PEFT wraps
(`encoder/layers_0/attention/key`, `layers_2/mlp/wo`); its trainable leaf is
`<path>/ia3_l`, beside the frozen `<path>/kernel`.
"""

import dataclasses
from typing import Mapping, Sequence

from prompt_jax import models
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.methods.lora import targets as lora_targets
from prompt_jax.types import Array

DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    models.ENCODER_DECODER: ("k", "v", "wo"),
    models.DECODER_ONLY: ("k_proj", "v_proj", "down_proj"),
}
DEFAULT_FEEDFORWARD: dict[str, tuple[str, ...]] = {
    models.ENCODER_DECODER: ("wo",),
    models.DECODER_ONLY: ("down_proj",),
}
# (our projection, feedforward) -> the seam field its vector feeds.
SEAM_FIELDS: dict[tuple[str, bool], str] = {
    ("key", False): "key_scale",
    ("value", False): "value_scale",
    ("wo", True): "hidden_scale",
    ("wi_1", False): "hidden_scale",
}
_FEEDFORWARD_PROJ = "wo"  # The one projection whose input a vector scales.
_BLOCK_FIELDS = {"attention": "self_attention",
                 "self_attention": "self_attention",
                 "encoder_decoder_attention": "cross_attention",
                 "mlp": "mlp"}


@dataclasses.dataclass(frozen=True)
class Vector:
  """One IA3 vector.

  Attributes:
    path: module path of the projection it scales (input or output).
    proj: key, value, wo or wi_1.
    feedforward: scales the projection's input (PEFT's feedforward module).
    shape / axes: the scaled dims ([N|K, D] and (HEADS, KV), or [F] and
      (MLP,)) and their logical axis names.
  """
  path: str
  proj: str
  feedforward: bool
  shape: tuple[int, ...]
  axes: tuple[str, ...]


def _side(feedforward: bool) -> str:
  return "input, feedforward" if feedforward else "output"


def select(lm: models.LanguageModel, targets: Sequence[str] | None,
           feedforward: Sequence[str] | None) -> list[Vector]:
  """The vectors PEFT names select on `lm` (None: PEFT's defaults).

  Raises:
    ValueError: one line for a feedforward name outside `targets`, or a
      target the seams cannot express, listing the valid names.
  """
  family, names = lm.family, lora_targets.PEFT_NAMES[lm.family]
  if targets is not None and feedforward is not None and not set(
      feedforward) <= set(targets):
    raise ValueError(f"IA3 feedforward {list(feedforward)} must be a subset "
                     f"of targets {list(targets)} (PEFT's rule)")
  targets = DEFAULT_TARGETS[family] if targets is None else targets
  feedforward = set(DEFAULT_FEEDFORWARD[family] if feedforward is None
                    else feedforward)
  sites = lora_targets.all_sites(lm)
  present = {s.proj for s in sites}
  valid = [f"{p} ({_side(ff)})" for p, ours in names.items()
           for (proj, ff) in SEAM_FIELDS if proj == ours and ours in present]
  bad = [f"{t!r} ({_side(t in feedforward)})" for t in targets
         if names.get(t) not in present
         or (names[t], t in feedforward) not in SEAM_FIELDS]
  if bad:
    raise ValueError(f"IA3 target(s) {', '.join(bad)} cannot be expressed on "
                     f"this {family} model (seams scale key/value outputs "
                     f"and the MLP hidden); valid: {', '.join(valid)}")
  chosen = {names[t]: t in feedforward for t in targets}
  out = []
  for s in sites:
    if s.proj not in chosen:
      continue
    ff = chosen[s.proj]
    out.append(Vector(s.path, s.proj, ff,
                      s.in_shape if ff else s.out_shape,
                      s.in_axes if ff else s.out_axes))
  return out


def seams_of(vectors: Mapping[str, Array]) -> seams_lib.Seams:
  """The `Seams` that apply `vectors` (keyed by projection module path);
  two vectors on one MLP's hidden (wi_1 and wo) multiply."""
  fields: dict[tuple[str, int, str], dict[str, Array]] = {}
  for path, vector in sorted(vectors.items()):
    site = lora_targets.parse(path)
    field = SEAM_FIELDS[(site.proj, site.proj == _FEEDFORWARD_PROJ)]
    block = fields.setdefault(
        (site.stack, site.layer, _BLOCK_FIELDS[site.block]), {})
    block[field] = vector if field not in block else block[field] * vector
  return seams_lib.from_fields(fields)
