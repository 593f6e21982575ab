"""Seams where parameter-efficient methods plug into the frozen backbone.

The backbone never owns method parameters. A method builds a `Seams` value
(arrays from its own trainable tree, plus optional hook functions) and passes
it to the model call; layers consult it at fixed points:

* `encoder_embed_fn` / `decoder_embed_fn`: rewrite input embeddings and their
  mask (soft prompts, P-tuning encoders). `(x [B, T, H], mask [B, T]) ->
  (x' [B, T', H], mask' [B, T'])`.
* `AttentionSeams.prefix_key/value`: per-layer key/value prefixes
  (prefix tuning, P-tuning v2); prefix slots are always visible and get no
  relative position bias.
* `LowRankDelta`: `y += scale * (x @ a) @ b` on any projection (LoRA).
* `MlpSeams.post_fn` / `AttentionSeams.post_fn`: applied to the FFN /
  attention block's output before the residual add (bottleneck adapters).
* `AttentionSeams.biases` / `MlpSeams.biases`: added to a projection's
  output, by projection name (BitFit on bias-free backbones).
* `pseudo_token_fn`: `(tokens [B, T], x [B, T, H]) -> x'` replaces the
  embeddings of pseudo tokens (negative ids, `-1 - i` for pseudo token i)
  wherever a template put them (P-tuning's hybrid prompts). Applied to the
  T5 encoder input and the decoder-only input, before the embed hooks.
* `position_offset`: decoder-only text positions start at this value
  (PEFT's prefix tuning: a P-slot prefix shifts the text by P). In the T5
  decoder, the text's relative positions start at it too, and the P
  self-attention prefix slots take positions 0..P-1 (relative biases), as
  Hugging Face T5 treats a pre-filled self-attention cache.
* `AttentionSeams.key_scale/value_scale`, `MlpSeams.hidden_scale`:
  elementwise activation scales (IA3).

All fields default to None (no effect), so `Seams()` is the plain backbone.
"""

from typing import Any, Callable, Mapping

import flax.struct

from prompt_jax.types import Array

EmbedFn = Callable[[Array, Array], tuple[Array, Array]]
PseudoTokenFn = Callable[[Array, Array], Array]


@flax.struct.dataclass
class LowRankDelta:
  """Low-rank update of one projection.

  Attributes:
    a: [*in_dims, R] (e.g. [H, R] for query, [N, D, R] for out).
    b: [R, *out_dims] (e.g. [R, N, D] for query, [R, H] for out).
    scale: multiplier (alpha / R in LoRA).
    gate: optional `x [B, T, *in_dims] -> [B, T] or [B, 1]` multiplier of
      the delta computed from the projection's input (UniPELT's gates).
    dropout_rate / dropout_rng: dropout on the delta's input (LoRA's
      dropout), applied only when `dropout_rng` is given (training).
  """
  a: Array
  b: Array
  scale: float = flax.struct.field(pytree_node=False, default=1.0)
  gate: Callable[[Array], Array] | None = flax.struct.field(
      pytree_node=False, default=None)
  dropout_rate: float = flax.struct.field(pytree_node=False, default=0.0)
  dropout_rng: Array | None = None


@flax.struct.dataclass
class AttentionSeams:
  """Seams of one attention block.

  Attributes:
    prefix_key: [B or 1, P_kv, N, D] keys prepended to the attended keys.
    prefix_value: [B or 1, P_kv, N, D] values, same shape as prefix_key.
    key_scale: [N, D] elementwise scale of the keys (IA3 l_k).
    value_scale: [N, D] elementwise scale of the values (IA3 l_v).
    deltas: low-rank deltas by projection name: query, key, value, out.
    biases: added to a projection's output, by name ([N, D] for query,
      key, value; [H] for out).
    post_fn: `[B, T, H] -> [B, T, H]` on the block's output (adapters).
    prefix_gate: `x_q [B, Tq, H] -> g [B, Tq] or [B, 1]` in (0, 1]: the
      prefix slots' attention logits get `+ log g` (their unnormalised
      weights are multiplied by g, so g -> 0 removes the prefix; UniPELT).
  """
  prefix_key: Array | None = None
  prefix_value: Array | None = None
  key_scale: Array | None = None
  value_scale: Array | None = None
  deltas: Mapping[str, LowRankDelta] | None = None
  biases: Mapping[str, Array] | None = None
  post_fn: Callable[[Array], Array] | None = flax.struct.field(
      pytree_node=False, default=None)
  prefix_gate: Callable[[Array], Array] | None = flax.struct.field(
      pytree_node=False, default=None)


@flax.struct.dataclass
class MlpSeams:
  """Seams of one feed-forward block.

  Attributes:
    hidden_scale: [F] scale of the hidden activation (IA3 l_ff).
    deltas: low-rank deltas by projection name: wi (or wi_0, wi_1), wo.
    biases: added to a projection's output, by name ([F] for wi*, [H]
      for wo).
    post_fn: `[B, T, H] -> [B, T, H]` on the FFN output (adapters).
  """
  hidden_scale: Array | None = None
  deltas: Mapping[str, LowRankDelta] | None = None
  biases: Mapping[str, Array] | None = None
  post_fn: Callable[[Array], Array] | None = flax.struct.field(
      pytree_node=False, default=None)


@flax.struct.dataclass
class LayerSeams:
  """Seams of one encoder or decoder layer."""
  self_attention: AttentionSeams | None = None
  cross_attention: AttentionSeams | None = None
  mlp: MlpSeams | None = None


@flax.struct.dataclass
class Seams:
  """All seams of a T5 call; per-layer tuples are indexed by layer number."""
  encoder_embed_fn: EmbedFn | None = flax.struct.field(
      pytree_node=False, default=None)
  decoder_embed_fn: EmbedFn | None = flax.struct.field(
      pytree_node=False, default=None)
  pseudo_token_fn: PseudoTokenFn | None = flax.struct.field(
      pytree_node=False, default=None)
  position_offset: int = flax.struct.field(pytree_node=False, default=0)
  encoder_layers: tuple[LayerSeams | None, ...] | None = None
  decoder_layers: tuple[LayerSeams | None, ...] | None = None

  def encoder_layer(self, i: int) -> LayerSeams:
    return _layer(self.encoder_layers, i)

  def decoder_layer(self, i: int) -> LayerSeams:
    return _layer(self.decoder_layers, i)


def _layer(layers, i: int) -> LayerSeams:
  if layers is None or i >= len(layers) or layers[i] is None:
    return LayerSeams()
  return layers[i]


def from_fields(fields: Mapping[tuple[str, int, str], Mapping[str, Any]]
                ) -> Seams:
  """`Seams` from `{(stack, layer, block): {seam field: value}}`.

  stack is 'encoder' or 'decoder' (decoder-only models: 'decoder'), block
  a `LayerSeams` field ('self_attention', 'cross_attention', 'mlp'); the
  values fill that block's `AttentionSeams` or `MlpSeams`.
  """
  stacks: dict[str, dict[int, dict[str, Any]]] = {"encoder": {},
                                                  "decoder": {}}
  for (stack, layer, block), kwargs in fields.items():
    kind = MlpSeams if block == "mlp" else AttentionSeams
    stacks[stack].setdefault(layer, {})[block] = kind(**kwargs)

  def layers(by_index: dict[int, dict[str, Any]]):
    if not by_index:
      return None
    return tuple(LayerSeams(**by_index[i]) if i in by_index else None
                 for i in range(max(by_index) + 1))

  return Seams(encoder_layers=layers(stacks["encoder"]),
               decoder_layers=layers(stacks["decoder"]))
