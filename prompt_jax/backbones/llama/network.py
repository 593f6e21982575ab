"""Llama-family decoder-only LM (Flax linen), T5X-style parameter naming.

Parameter tree (HF names in brackets; `convert.py` holds the full table):
  token_embedder/embedding                       [V, H]  (embed_tokens)
  layers_{i}/pre_self_attention_layer_norm/scale [H]     (input_layernorm)
  layers_{i}/self_attention/query/kernel         [H, N, D]
  layers_{i}/self_attention/{key,value}/kernel   [H, K, D]
  layers_{i}/self_attention/out/kernel           [N, D, H]
  layers_{i}/pre_mlp_layer_norm/scale            [H]     (post_attention_
                                                          layernorm)
  layers_{i}/mlp/wi_0/kernel [H, F] (gate_proj), wi_1 [H, F] (up_proj),
    wo [F, H] (down_proj)
  decoder_norm/scale                             [H]     (norm)
  logits_dense/kernel                            [H, V]  (lm_head; untied)

The norm, projections, embedding and the SwiGLU block are T5's own
(`prompt_jax.backbones.layers`, `layers.MlpBlock` with a gated SiLU:
`wo(silu(wi_0 x) * wi_1 x)`), so LoRA deltas and IA3 scales use the same
names on both backbones.

Sequence layout: any mix of left and right padding given by `mask`. Rotary
positions count the real tokens before each slot (`cumsum(mask) - 1`), as HF
`generate` does, so padding never shifts a position. Attention is causal over
slots and never attends to masked slots.

PEFT seams (`prompt_jax.backbones.seams.Seams`; no method parameters live here):
  `decoder_embed_fn(x [B, T, H], mask [B, T]) -> (x' [B, T', H], mask')`
    right after the token lookup (soft prompts); positions are computed from
    mask', so prompt slots take positions like tokens.
  `pseudo_token_fn(tokens, x)`: replaces the embeddings of negative ids
    (P-tuning pseudo tokens) before the embed hook.
  `position_offset`: added to every rotary position (PEFT's prefix tuning
    puts the text after its P prefix slots).
  `decoder_layers[i].self_attention`: prefix keys/values [B|1, P, K, D] per
    key/value head, used as given (no rotation, always visible); key/value
    scales [K, D] applied before rotation; deltas and biases
    query/key/value/out; post_fn on the block output.
  `decoder_layers[i].mlp`: hidden_scale [F], deltas/biases wi_0/wi_1/wo,
    post_fn.

Decoding (T5X pattern): with `decode=True` the first call creates the cache;
its sequence length (after the embed hook) is the cache length, and every
cache variable starts at zero. Later `decode=True` calls append their T
tokens (T > 1 prefills a prompt, T = 1 is a step) at the cache index: keys
are written there, the slot mask records `mask`, and positions continue from
each row's count of real tokens. The embed hook applies on every call it is
given to, so pass it with the prefill only.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_jax import types
from prompt_jax.backbones.llama import attention
from prompt_jax.backbones.llama.config import DecoderConfig
from prompt_jax.backbones import layers
from prompt_jax.backbones import seams as seams_lib

Array = types.Array
_ACT = (types.BATCH, types.LENGTH, types.EMBED)


def positions_from_mask(mask: Array, start: Array | int = 0) -> Array:
  """Rotary positions [B, T]: `start` + real tokens before each slot.

  Args:
    mask: [B, T] key-padding mask (bool or int).
    start: [B] or scalar, the position of the first real token.

  Returns:
    int32 [B, T]; a padded slot gets the position of the next real token
    (it is never attended to).
  """
  counts = jnp.cumsum(mask.astype(jnp.int32), axis=1) - mask.astype(jnp.int32)
  return (jnp.asarray(start, jnp.int32).reshape(-1, 1) + counts).astype(
      jnp.int32)


class DecoderLayer(nn.Module):
  """Pre-norm grouped-query self-attention + SwiGLU block."""
  config: DecoderConfig

  @nn.compact
  def __call__(self, x: Array, positions: Array, mask: Array,
               seams: seams_lib.LayerSeams, decode: bool,
               cache_index: Array | None, deterministic: bool) -> Array:
    """x: [B, T, H]; positions [B, T]; mask [B|1, T, Tk] -> [B, T, H]."""
    cfg = self.config
    drop = nn.Dropout(cfg.dropout_rate)
    y = _norm(cfg, "pre_self_attention_layer_norm")(x)
    y = attention.GroupedQueryAttention(
        num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, emb_dim=cfg.emb_dim,
        inv_freq=_inv_freq(cfg), dtype=cfg.dtype,
        param_dtype=cfg.param_dtype, name="self_attention")(
            y, positions, mask, seams.self_attention, decode, cache_index,
            deterministic)
    x = x + drop(y, deterministic)
    y = _norm(cfg, "pre_mlp_layer_norm")(x)
    y = layers.MlpBlock(
        emb_dim=cfg.emb_dim, mlp_dim=cfg.mlp_dim, activation=cfg.activation,
        gated=True, dropout_rate=cfg.dropout_rate, dtype=cfg.dtype,
        param_dtype=cfg.param_dtype, name="mlp")(y, seams.mlp, deterministic)
    x = x + drop(y, deterministic)
    return nn.with_logical_constraint(x, _ACT)


def _norm(cfg: DecoderConfig, name: str) -> layers.RMSNorm:
  return layers.RMSNorm(epsilon=cfg.rms_norm_eps, dtype=cfg.dtype,
                        param_dtype=cfg.param_dtype, name=name)


def _inv_freq(cfg: DecoderConfig) -> tuple[float, ...]:
  return tuple(float(f) for f in attention.rope_inverse_frequencies(
      cfg.head_dim, cfg.rope_theta, cfg.rope_scaling))


class DecoderLM(nn.Module):
  """Embedding, L decoder layers, final norm and fp32 logits."""
  config: DecoderConfig

  def _positions_and_mask(self, mask: Array, positions: Array | None,
                          decode: bool
                          ) -> tuple[Array, Array, Array | None]:
    """Returns (positions [B, T], attention mask [B, T, Tk], cache index).

    Without a cache: causal over the T slots and the key-padding mask.
    With one: the T slots are appended at the cache index.
    """
    t = mask.shape[1]
    if not (decode and self.has_variable("cache", "cache_index")):
      if decode:  # Cache creation; the cache length is t.
        self.put_variable("cache", "cache_index", jnp.zeros((), jnp.int32))
        self.put_variable("cache", "cache_mask", jnp.zeros(mask.shape, bool))
        self.put_variable("cache", "next_position",
                          jnp.zeros(mask.shape[:1], jnp.int32))
      slots = jnp.arange(t)
      causal = slots[None, :] <= slots[:, None]  # [T, T]
      attn_mask = causal[None] & mask[:, None, :].astype(bool)
      if positions is None:
        positions = positions_from_mask(mask)
      return positions, attn_mask, None
    index = self.get_variable("cache", "cache_index")
    start = self.get_variable("cache", "next_position")
    slot_mask = jax.lax.dynamic_update_slice(
        self.get_variable("cache", "cache_mask"), mask.astype(bool),
        (0, index))  # [B, L]
    q_slots = index + jnp.arange(t)
    k_slots = jnp.arange(slot_mask.shape[1])
    causal = k_slots[None, :] <= q_slots[:, None]  # [T, L]
    self.put_variable("cache", "cache_index", index + t)
    self.put_variable("cache", "cache_mask", slot_mask)
    self.put_variable("cache", "next_position",
                      start + jnp.sum(mask.astype(jnp.int32), axis=1))
    if positions is None:
      positions = positions_from_mask(mask, start)
    return positions, causal[None] & slot_mask[:, None, :], index

  @nn.compact
  def __call__(self, tokens: Array, mask: Array | None = None,
               positions: Array | None = None,
               seams: seams_lib.Seams | None = None, decode: bool = False,
               enable_dropout: bool = False,
               logits_positions: Array | None = None,
               return_hidden: bool = False) -> Array:
    """Teacher-forced (or cached) next-token logits.

    Args:
      tokens: [B, T] int ids.
      mask: [B, T] key-padding mask, True/1 for real tokens; None means all
        real (it is never inferred from `pad_id`).
      positions: [B, T'] rotary positions; None derives them from the mask
        (continuing from the cache when decoding). Must be None with an embed
        hook that changes the length.
      seams: PEFT seams; see the module docstring.
      decode: create (first call) or extend the key/value cache.
      enable_dropout: enables dropout (needs a 'dropout' rng).
      logits_positions: [B, S] slots (after the embed hook) whose logits are
        wanted; None: all T'. Scoring a few target tokens then skips the
        [H, V] projection of every other slot (values unchanged).
      return_hidden: return the final-normed hidden states [B, T', H]
        instead of logits (sentence embeddings).

    Returns:
      logits [B, T', V] (or [B, S, V]) in fp32, T' the length after the
      embed hook; hidden states [B, T', H] with `return_hidden`.

    Raises:
      ValueError: if `positions` does not match the sequence length.
    """
    cfg = self.config
    seams = seams or seams_lib.Seams()
    deterministic = not enable_dropout
    if mask is None:
      mask = jnp.ones(tokens.shape, bool)
    embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, dtype=cfg.dtype,
                            param_dtype=cfg.param_dtype,
                            name="token_embedder")
    x = layers.embed_with_pseudo_tokens(embedder, tokens,
                                        seams.pseudo_token_fn)
    if seams.decoder_embed_fn is not None:
      x, mask = seams.decoder_embed_fn(x, mask)  # [B, T, H] -> [B, T', H]
    if positions is not None and positions.shape != x.shape[:2]:
      raise ValueError(f"DecoderLM: positions {positions.shape} do not match "
                       f"the sequence {x.shape[:2]} (after the embed hook)")
    x = nn.with_logical_constraint(x, _ACT)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic)
    positions, attn_mask, index = self._positions_and_mask(mask, positions,
                                                           decode)
    positions = positions + seams.position_offset  # Prefix tuning (PEFT).
    for i in range(cfg.num_layers):
      x = DecoderLayer(cfg, name=f"layers_{i}")(
          x, positions, attn_mask, seams.decoder_layer(i), decode, index,
          deterministic)
    x = _norm(cfg, "decoder_norm")(x)
    if return_hidden:
      return x
    if logits_positions is not None:
      x = jnp.take_along_axis(x, logits_positions[..., None], axis=1)
    if cfg.tie_word_embeddings:
      logits = embedder.attend(x)
    else:
      logits = layers.Projection(
          features=(cfg.vocab_size,), kernel_axes=(types.EMBED, types.VOCAB),
          stddev=cfg.emb_dim ** -0.5, fp32_output=True, dtype=cfg.dtype,
          param_dtype=cfg.param_dtype, name="logits_dense")(x)
    return nn.with_logical_constraint(
        logits, (types.BATCH, types.LENGTH, types.VOCAB))
