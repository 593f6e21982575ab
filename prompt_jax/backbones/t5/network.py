"""T5 encoder-decoder network (Flax linen), T5X parameter naming.

Parameter tree (T5X names, so T5X checkpoints map one-to-one):
  token_embedder/embedding                      [V, H]
  encoder/relpos_bias/rel_embedding             [N, buckets]
  encoder/layers_{i}/pre_attention_layer_norm/scale, attention/{query,key,
    value}/kernel [H, N, D], attention/out/kernel [N, D, H],
    pre_mlp_layer_norm/scale, mlp/{wi | wi_0, wi_1}/kernel [H, F],
    mlp/wo/kernel [F, H]
  encoder/encoder_norm/scale
  decoder/relpos_bias/rel_embedding
  decoder/layers_{i}/pre_self_attention_layer_norm, self_attention,
    pre_cross_attention_layer_norm, encoder_decoder_attention,
    pre_mlp_layer_norm, mlp
  decoder/decoder_norm/scale
  decoder/logits_dense/kernel [H, V]            (untied heads only)

No training logic lives here; PEFT methods enter through `seams.Seams`.
"""

import functools

import flax.linen as nn
import jax.numpy as jnp

from prompt_jax import types
from prompt_jax.backbones.t5 import attention
from prompt_jax.backbones import layers
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.backbones.t5.config import T5Config

Array = types.Array
_ACT = (types.BATCH, types.LENGTH, types.EMBED)


def _norm(cfg: T5Config, name: str) -> layers.RMSNorm:
  return layers.RMSNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.dtype,
                        param_dtype=cfg.param_dtype, name=name)


def _attention(cfg: T5Config, name: str, is_cross: bool = False):
  return attention.MultiHeadAttention(
      num_heads=cfg.num_heads, head_dim=cfg.head_dim, emb_dim=cfg.emb_dim,
      is_cross=is_cross, dropout_rate=cfg.dropout_rate, dtype=cfg.dtype,
      param_dtype=cfg.param_dtype, name=name)


def _mlp(cfg: T5Config) -> attention.MlpBlock:
  return attention.MlpBlock(
      emb_dim=cfg.emb_dim, mlp_dim=cfg.mlp_dim, activation=cfg.activation,
      gated=cfg.gated_mlp, dropout_rate=cfg.dropout_rate, dtype=cfg.dtype,
      param_dtype=cfg.param_dtype, name="mlp")


def _relpos(cfg: T5Config, bidirectional: bool) -> layers.RelativePositionBias:
  return layers.RelativePositionBias(
      num_buckets=cfg.relative_attention_num_buckets,
      max_distance=cfg.relative_attention_max_distance,
      num_heads=cfg.num_heads, bidirectional=bidirectional,
      stddev=cfg.emb_dim ** -0.5, dtype=cfg.dtype,
      param_dtype=cfg.param_dtype, name="relpos_bias")


def _relpos_after_prefix(relpos: layers.RelativePositionBias, offset: int,
                         q_positions: Array, k_positions: Array) -> Array:
  """[1, N, Tq, offset + Tk] biases of keys [prefix slots 0..offset-1, text
  at offset + k_positions] for queries at offset + q_positions."""
  keys = jnp.concatenate([jnp.arange(offset), k_positions + offset])
  return relpos(q_positions + offset, keys)


class EncoderLayer(nn.Module):
  """Pre-norm self-attention + FFN block."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, mask: Array, bias: Array,
               seams: seams_lib.LayerSeams, deterministic: bool) -> Array:
    """x: [B, T, H]; mask: [B, 1, 1, T]; bias: [1, N, T, T] -> [B, T, H]."""
    cfg = self.config
    drop = nn.Dropout(cfg.dropout_rate)
    y = _norm(cfg, "pre_attention_layer_norm")(x)
    y = _attention(cfg, "attention")(y, y, mask, bias, seams.self_attention,
                                     deterministic=deterministic)
    x = x + drop(y, deterministic)
    y = _norm(cfg, "pre_mlp_layer_norm")(x)
    y = _mlp(cfg)(y, seams.mlp, deterministic)
    x = x + drop(y, deterministic)
    return nn.with_logical_constraint(x, _ACT)


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention + cross-attention + FFN block."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, encoded: Array, self_mask: Array,
               cross_mask: Array, bias: Array, seams: seams_lib.LayerSeams,
               decode: bool, deterministic: bool) -> Array:
    """x: [B, To, H]; encoded: [B, Ti, H] -> [B, To, H]."""
    cfg = self.config
    drop = nn.Dropout(cfg.dropout_rate)
    y = _norm(cfg, "pre_self_attention_layer_norm")(x)
    y = _attention(cfg, "self_attention")(
        y, y, self_mask, bias, seams.self_attention, decode, deterministic)
    x = x + drop(y, deterministic)
    y = _norm(cfg, "pre_cross_attention_layer_norm")(x)
    y = _attention(cfg, "encoder_decoder_attention", is_cross=True)(
        y, encoded, cross_mask, None, seams.cross_attention, decode,
        deterministic)
    x = x + drop(y, deterministic)
    y = _norm(cfg, "pre_mlp_layer_norm")(x)
    y = _mlp(cfg)(y, seams.mlp, deterministic)
    x = x + drop(y, deterministic)
    return nn.with_logical_constraint(x, _ACT)


class Encoder(nn.Module):
  """Embeds, runs the encoder stack and the final norm."""
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens: Array, mask: Array, seams: seams_lib.Seams,
               deterministic: bool = True) -> tuple[Array, Array]:
    """tokens, mask: [B, T] -> (encoded [B, T', H], mask [B, T'])."""
    cfg = self.config
    x = layers.embed_with_pseudo_tokens(self.shared_embedding, tokens,
                                        seams.pseudo_token_fn)
    if seams.encoder_embed_fn is not None:
      x, mask = seams.encoder_embed_fn(x, mask)
    x = nn.with_logical_constraint(x, _ACT)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic)
    positions = jnp.arange(x.shape[1])
    bias = _relpos(cfg, bidirectional=True)(positions, positions)
    attn_mask = mask[:, None, None, :].astype(bool)
    for i in range(cfg.num_encoder_layers):
      x = EncoderLayer(cfg, name=f"layers_{i}")(
          x, attn_mask, bias, seams.encoder_layer(i), deterministic)
    x = _norm(cfg, "encoder_norm")(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic), mask


class Decoder(nn.Module):
  """Embeds targets, runs the decoder stack, returns fp32 logits."""
  config: T5Config
  shared_embedding: nn.Module

  def _masks_and_bias(self, t: int, decoder_mask: Array | None,
                      decode: bool, offset: int = 0):
    """Returns (self_mask [B|1, 1, Tq, Tk], bias [1, N, Tq, offset + Tk]).

    With `offset` P > 0 the text sits at positions P, P + 1, ... and the P
    self-attention prefix slots at 0..P-1 get relative biases like cached
    tokens (Hugging Face T5 after a pre-filled self-attention cache, i.e.
    PEFT's prefix tuning); text-to-text biases do not change.
    """
    relpos = _relpos(self.config, bidirectional=False)
    if offset:
      relpos = functools.partial(_relpos_after_prefix, relpos, offset)
    if decode and self.has_variable("cache", "position"):
      # One step: the query sits at `position`; keys span the whole cache,
      # whose length is that of the first layer's self-attention cache.
      position = self.get_variable("cache", "position")
      cached = self.variables["cache"]["layers_0"]["self_attention"]
      k_pos = jnp.arange(cached["cached_key"].shape[1])
      q_pos = position + jnp.arange(t)
      self.put_variable("cache", "position", position + t)
      mask = (k_pos[None, :] <= q_pos[:, None])[None, None]
      return mask, relpos(q_pos, k_pos)
    if decode:  # Cache creation: the input length is the decode length.
      self.put_variable("cache", "position", jnp.zeros((), jnp.int32))
    positions = jnp.arange(t)
    mask = (positions[None, :] <= positions[:, None])[None, None]
    if decoder_mask is not None:
      mask = mask & decoder_mask[:, None, None, :].astype(bool)
    return mask, relpos(positions, positions)

  @nn.compact
  def __call__(self, encoded: Array, encoder_mask: Array, tokens: Array,
               decoder_mask: Array | None, seams: seams_lib.Seams,
               decode: bool = False, deterministic: bool = True) -> Array:
    """Decoder forward.

    Args:
      encoded: [B, Ti, H] encoder output.
      encoder_mask: [B, Ti], True/1 for real encoder positions.
      tokens: [B, To] decoder input ids (targets shifted right); To = 1 per
        step when decoding from a cache.
      decoder_mask: [B, To] key-padding mask, or None (causal only).
      seams: PEFT seams.
      decode: create (first call) or use the key/value cache.
      deterministic: disables dropout.

    Returns:
      logits [B, To, V] in fp32.
    """
    cfg = self.config
    x = self.shared_embedding(tokens)
    if seams.decoder_embed_fn is not None:
      if decode:
        raise ValueError("decoder_embed_fn is not supported with decode=True")
      x, decoder_mask = seams.decoder_embed_fn(x, decoder_mask)
    x = nn.with_logical_constraint(x, _ACT)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic)
    self_mask, bias = self._masks_and_bias(x.shape[1], decoder_mask, decode,
                                           seams.position_offset)
    cross_mask = encoder_mask[:, None, None, :].astype(bool)
    for i in range(cfg.num_decoder_layers):
      x = DecoderLayer(cfg, name=f"layers_{i}")(
          x, encoded, self_mask, cross_mask, bias, seams.decoder_layer(i),
          decode, deterministic)
    x = _norm(cfg, "decoder_norm")(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic)
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(x * (cfg.emb_dim ** -0.5))
    else:
      logits = layers.Projection(
          features=(cfg.vocab_size,), kernel_axes=(types.EMBED, types.VOCAB),
          stddev=cfg.emb_dim ** -0.5, fp32_output=True, dtype=cfg.dtype,
          param_dtype=cfg.param_dtype, name="logits_dense")(x)
    return nn.with_logical_constraint(
        logits, (types.BATCH, types.LENGTH, types.VOCAB))


class T5Transformer(nn.Module):
  """The full encoder-decoder; `encode` and `decode` are usable separately."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(
        cfg.vocab_size, cfg.emb_dim, dtype=cfg.dtype,
        param_dtype=cfg.param_dtype)
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)

  def encode(self, encoder_input_tokens: Array,
             encoder_mask: Array | None = None,
             seams: seams_lib.Seams | None = None,
             enable_dropout: bool = False) -> tuple[Array, Array]:
    """[B, Ti] ids (mask defaults to ids != pad) -> ([B, Ti', H], [B, Ti'])."""
    if encoder_mask is None:
      encoder_mask = encoder_input_tokens != self.config.pad_id
    return self.encoder(encoder_input_tokens, encoder_mask,
                        seams or seams_lib.Seams(), not enable_dropout)

  def decode(self, encoded: Array, encoder_mask: Array,
             decoder_input_tokens: Array, decoder_mask: Array | None = None,
             seams: seams_lib.Seams | None = None, decode: bool = False,
             enable_dropout: bool = False) -> Array:
    """Decoder logits [B, To, V] given `encode` outputs; see `Decoder`."""
    return self.decoder(encoded, encoder_mask, decoder_input_tokens,
                        decoder_mask, seams or seams_lib.Seams(), decode,
                        not enable_dropout)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               encoder_mask: Array | None = None,
               decoder_mask: Array | None = None,
               seams: seams_lib.Seams | None = None,
               enable_dropout: bool = False) -> Array:
    """Teacher-forced logits [B, To, V] (fp32) for [B, Ti] and [B, To] ids."""
    encoded, encoder_mask = self.encode(encoder_input_tokens, encoder_mask,
                                        seams, enable_dropout)
    return self.decode(encoded, encoder_mask, decoder_input_tokens,
                       decoder_mask, seams, False, enable_dropout)
