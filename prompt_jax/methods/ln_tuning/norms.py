"""Which norm scales LN tuning trains: PEFT's names for the backbone's norms.

PEFT's LN tuning (`peft.tuners.ln_tuning`) makes a trainable copy of every
norm module its `target_modules` names; its defaults
(`TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING`) are every norm:

  T5 'layer_norm' (each sub-layer's pre-norm) and 'final_layer_norm' (the
    encoder's and the decoder's final norm);
  Llama 'input_layernorm', 'post_attention_layernorm' (each layer's two
    pre-norms) and 'norm' (the final norm).

A norm is named by its scale's param path (`encoder/layers_0/
pre_attention_layer_norm/scale`, `decoder_norm/scale`); `describe` reads
the family, PEFT name and Hugging Face module from the path alone, so the
frozen tree can be split without the model.
"""

import dataclasses
import re
from typing import Iterable, Sequence

from prompt_jax import models

DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    models.ENCODER_DECODER: ("layer_norm", "final_layer_norm"),
    models.DECODER_ONLY: ("input_layernorm", "post_attention_layernorm",
                          "norm"),
}
# (stack, our norm) -> index of the HF sub-layer it belongs to.
_T5_SUBLAYERS = {("encoder", "pre_attention_layer_norm"): 0,
                 ("encoder", "pre_mlp_layer_norm"): 1,
                 ("decoder", "pre_self_attention_layer_norm"): 0,
                 ("decoder", "pre_cross_attention_layer_norm"): 1,
                 ("decoder", "pre_mlp_layer_norm"): 2}
_LLAMA_LAYER_NORMS = {"pre_self_attention_layer_norm": "input_layernorm",
                      "pre_mlp_layer_norm": "post_attention_layernorm"}
_T5_LAYER = re.compile(r"^(encoder|decoder)/layers_(\d+)/(\w+)/scale$")
_T5_FINAL = re.compile(r"^(encoder|decoder)/\1_norm/scale$")
_LLAMA_LAYER = re.compile(r"^layers_(\d+)/(\w+)/scale$")
_LLAMA_FINAL = "decoder_norm/scale"


@dataclasses.dataclass(frozen=True)
class Norm:
  """One norm scale.

  Attributes:
    path: its param path, e.g. 'encoder/layers_0/pre_mlp_layer_norm/scale'.
    family: 'encoder_decoder' or 'decoder_only'.
    peft: PEFT's target name ('layer_norm', 'input_layernorm', ...).
    hf: the Hugging Face module, e.g. 'encoder.block.0.layer.1.layer_norm'.
  """
  path: str
  family: str
  peft: str
  hf: str


def describe(path: str) -> Norm | None:
  """The norm whose scale is at `path`, or None (not a norm scale)."""
  if m := _T5_FINAL.match(path):
    return Norm(path, models.ENCODER_DECODER, "final_layer_norm",
                f"{m.group(1)}.final_layer_norm")
  if (m := _T5_LAYER.match(path)) and (m.group(1), m.group(3)) in (
      _T5_SUBLAYERS):
    stack, layer, name = m.groups()
    return Norm(path, models.ENCODER_DECODER, "layer_norm",
                f"{stack}.block.{layer}.layer."
                f"{_T5_SUBLAYERS[(stack, name)]}.layer_norm")
  if path == _LLAMA_FINAL:
    return Norm(path, models.DECODER_ONLY, "norm", "model.norm")
  if (m := _LLAMA_LAYER.match(path)) and m.group(2) in _LLAMA_LAYER_NORMS:
    peft = _LLAMA_LAYER_NORMS[m.group(2)]
    return Norm(path, models.DECODER_ONLY, peft,
                f"model.layers.{m.group(1)}.{peft}")
  return None


def select(paths: Iterable[str], targets: Sequence[str] | None
           ) -> list[Norm]:
  """The norms among `paths` that `targets` (PEFT names; None: PEFT's
  defaults, every norm) select."""
  norms = [n for n in map(describe, paths) if n is not None]
  return [n for n in norms
          if n.peft in (DEFAULT_TARGETS[n.family] if targets is None
                        else targets)]


def check(family: str, targets: Sequence[str] | None) -> None:
  """Raises a one-line ValueError for a name that is no norm of `family`."""
  valid = DEFAULT_TARGETS[family]
  unknown = [t for t in targets or () if t not in valid]
  if unknown:
    raise ValueError(f"LN tuning target(s) {', '.join(map(repr, unknown))} "
                     f"are not norms of this {family} model; expected names "
                     f"from {list(valid)}")
