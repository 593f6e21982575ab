"""Where prefix tuning's key/value prefixes go on each backbone.

A layout is a list of *sites*, each a stack of per-layer prefix slots:

  decoder-only (Llama), PEFT's convention:
    'self_attention' [L slots]: slot i is layer i's self-attention prefix.
    Text positions start at P (`Seams.position_offset`), the prefix keys are
    not rotated, and a prefix has n_kv_heads x head_dim per slot (PEFT's
    grouped-query `token_dim`).

  encoder-decoder (T5), mode 'paper' (Li & Liang 2021, the default):
    'encoder' [Le], 'decoder_self' [Ld], 'decoder_cross' [Ld]: every
    attention block has its own prefix; prefix slots get no relative
    position bias, and positions do not move.

  encoder-decoder (T5), mode 'peft_compat': PEFT 0.21.2's
    `PeftModelForSeq2SeqLM` with transformers 5, reproduced exactly:
    'peft_slots' [Le] (PEFT's `num_layers` is the config's
    `num_hidden_layers`, the ENCODER depth). `get_prompt` views the prefix
    as [2 * Le] key/value entries, duplicates them ([2 * 2Le]) and splits
    them in chunks of 4 (self key, self value, cross key, cross value) per
    decoder layer, so decoder layer i reads slot (2 i) mod Le; it then
    replaces the cross-attention cache by an empty one, so the cross
    attention recomputes its keys from the encoder and gets NO prefix, and
    the encoder never sees `past_key_values`. Only the decoder
    self-attention has a prefix, and, as after a pre-filled HF cache, the
    text's relative positions start at P and the prefix slots take
    positions 0..P-1 (they get relative biases: `Seams.position_offset`
    in the T5 decoder). Odd slots (and others no decoder layer reads) are
    trained by nothing, as in PEFT.
"""

import dataclasses

from prompt_jax import models
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.types import Array

PAPER = "paper"
PEFT_COMPAT = "peft_compat"
MODES = (PAPER, PEFT_COMPAT)
# Site names, in the order of the reparameterisation's outputs.
SELF_ATTENTION = "self_attention"  # Decoder-only.
ENCODER = "encoder"
DECODER_SELF = "decoder_self"
DECODER_CROSS = "decoder_cross"
PEFT_SLOTS = "peft_slots"


@dataclasses.dataclass(frozen=True)
class Layout:
  """Prefix sites of one backbone.

  Attributes:
    family: the language model's family.
    mode: T5's mode ('paper' or 'peft_compat'); None for decoder-only.
    sites: ((site name, slots), ...) in output order.
    length: P.
    heads: K, key/value heads of a prefix.
    head_dim: D.
    offset: `Seams.position_offset` (P under PEFT's conventions, else 0).
    decoder_layers: layers of the (T5) decoder.
  """
  family: str
  mode: str | None
  sites: tuple[tuple[str, int], ...]
  length: int
  heads: int
  head_dim: int
  offset: int
  decoder_layers: int

  @property
  def token_dim(self) -> int:
    """PEFT's `token_dim`: K * D, the width of one key (or value) slot and
    of the reparameterisation's input embedding."""
    return self.heads * self.head_dim

  @property
  def slots(self) -> int:
    """Prefix slots over all sites."""
    return sum(n for _, n in self.sites)


def layout_of(lm: models.LanguageModel, length: int,
              mode: str | None) -> Layout:
  """The layout of a P-slot prefix on `lm`.

  Raises:
    ValueError: one line, for a mode on a decoder-only model, an unknown
      mode, or 'peft_compat' on a T5 whose d_model != heads * d_kv (PEFT's
      T5 prefix cannot run there either).
  """
  cfg = lm.config
  if lm.family == models.DECODER_ONLY:
    if mode is not None:
      raise ValueError(f"prefix mode={mode!r} is for encoder-decoder models; "
                       "leave it None on a decoder-only model")
    return Layout(lm.family, None, ((SELF_ATTENTION, cfg.num_layers),),
                  length, cfg.num_kv_heads, cfg.head_dim, length,
                  cfg.num_layers)
  mode = PAPER if mode is None else mode
  if mode not in MODES:
    raise ValueError(f"prefix mode={mode!r}; expected one of {MODES}")
  le, ld = cfg.num_encoder_layers, cfg.num_decoder_layers
  if mode == PAPER:
    return Layout(lm.family, mode, ((ENCODER, le), (DECODER_SELF, ld),
                                    (DECODER_CROSS, ld)),
                  length, cfg.num_heads, cfg.head_dim, 0, ld)
  if cfg.num_heads * cfg.head_dim != cfg.emb_dim:
    raise ValueError(f"prefix mode='peft_compat' needs d_model == heads * "
                     f"d_kv (PEFT views d_model as the key width), got "
                     f"{cfg.emb_dim} != {cfg.num_heads} * {cfg.head_dim}; "
                     "use mode='paper'")
  return Layout(lm.family, mode, ((PEFT_SLOTS, le),), length, cfg.num_heads,
                cfg.head_dim, length, ld)


def _attention(prefixes: dict[str, dict[str, Array]], site: str,
               slot: int) -> seams_lib.AttentionSeams:
  """Slot `slot` of a site as a [1, P, K, D] prefix."""
  kv = prefixes[site]
  return seams_lib.AttentionSeams(prefix_key=kv["key"][slot][None],
                                  prefix_value=kv["value"][slot][None])


def seams_of(layout: Layout, prefixes: dict[str, dict[str, Array]]
             ) -> seams_lib.Seams:
  """The `Seams` that prepend `prefixes` ({site: {'key', 'value'}: [S, P,
  K, D]}) where `layout` puts them."""
  if layout.family == models.DECODER_ONLY:
    layers = tuple(seams_lib.LayerSeams(
        self_attention=_attention(prefixes, SELF_ATTENTION, i))
                   for i in range(layout.decoder_layers))
    return seams_lib.Seams(decoder_layers=layers,
                           position_offset=layout.offset)
  if layout.mode == PEFT_COMPAT:
    slots = dict(layout.sites)[PEFT_SLOTS]
    layers = tuple(seams_lib.LayerSeams(
        self_attention=_attention(prefixes, PEFT_SLOTS, (2 * i) % slots))
                   for i in range(layout.decoder_layers))
    return seams_lib.Seams(decoder_layers=layers,
                           position_offset=layout.offset)
  encoder = tuple(seams_lib.LayerSeams(
      self_attention=_attention(prefixes, ENCODER, i))
                  for i in range(dict(layout.sites)[ENCODER]))
  decoder = tuple(seams_lib.LayerSeams(
      self_attention=_attention(prefixes, DECODER_SELF, i),
      cross_attention=_attention(prefixes, DECODER_CROSS, i))
                  for i in range(layout.decoder_layers))
  return seams_lib.Seams(encoder_layers=encoder, decoder_layers=decoder)
