"""Language models: one interface, two families (encoder-decoder, decoder-only).

A language model is a plain Python class (not a Flax module), as T5X's
`BaseModel`: it owns a frozen backbone network and exposes pure functions of
`params` (the weights to run) and `seams` (where a method plugs in, see
`backbones.seams`). It knows nothing about methods: soft prompts, LoRA,
adapters and full fine-tuning all reach it as params + seams
(`methods.TunedModel` builds both). `Seams()` is the bare backbone.

Both families share the interface:
  loss_fn(params, batch, seams=)      -> (loss, summed metrics)
  score(params, inputs, targets, seams=, context=)
                                      -> (scores [B], token_scores [B, To])
  generate(params, inputs, seams=, max_decode_length=, ...)
                                      -> (tokens [B, L], scores [B])
  next_token_log_probs(params, inputs, mask, seams=, context=) -> [B, V]
  encode_context(params, tokens, seams=)  -> ContextCache (decoder-only)
  embed(params, tokens, mask)          -> [B, H] mean-pooled final states

Batches use seqio's feature-converter names: `EncDecFeatureConverter` for
the encoder-decoder (`encoder_input_tokens` [B, Ti], `decoder_input_tokens`,
`decoder_target_tokens`, `decoder_loss_weights` [B, To]) and
`PrefixLMFeatureConverter(loss_on_targets_only=True, pack=False)` for the
decoder-only family (`decoder_target_tokens` [B, L] holds inputs then
targets; `decoder_loss_weights` marks the targets; see `DecoderOnlyLM`).
"""

import dataclasses
from typing import Any, Mapping, Protocol

import jax
import jax.numpy as jnp

from prompt_jax import losses
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.backbones.llama import generation as llama_generation
from prompt_jax.backbones.llama import layout
from prompt_jax.backbones.llama import network as llama_network
from prompt_jax.backbones.llama.config import DecoderConfig
from prompt_jax.backbones.llama.layout import ContextCache
from prompt_jax.backbones.t5 import generation as t5_generation
from prompt_jax.backbones.t5 import network as t5_network
from prompt_jax.backbones.t5.config import T5Config
from prompt_jax.icl import embeddings
from prompt_jax.scoring import scorer
from prompt_jax.types import Array, PRNGKey, PyTree

Seams = seams_lib.Seams
ENCODER_DECODER = "encoder_decoder"
DECODER_ONLY = "decoder_only"


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Loss options; `normalize_by_tokens` divides the sum by target tokens."""
  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  normalize_by_tokens: bool = True


class LanguageModel(Protocol):
  """What trainers, scorers and evaluators may call on either family."""
  family: str
  config: Any
  module: Any
  loss_cfg: LossConfig

  def loss_fn(self, params: PyTree, batch: Mapping[str, Array], *,
              seams: Seams = Seams(), rng: PRNGKey | None = None,
              enable_dropout: bool = False) -> tuple[Array, dict]: ...

  def score(self, params: PyTree, inputs: Array, targets: Array, *,
            seams: Seams = Seams(), **kwargs) -> tuple[Array, Array]: ...

  def generate(self, params: PyTree, inputs: Array, *, seams: Seams,
               max_decode_length: int, **kwargs) -> tuple[Array, Array]: ...

  def embed(self, params: PyTree, tokens: Array, mask: Array) -> Array: ...


def _loss(loss_cfg: LossConfig, logits: Array, targets: Array,
          weights: Array) -> tuple[Array, dict[str, Array]]:
  return losses.loss_and_metrics(
      logits, targets, weights, z_loss=loss_cfg.z_loss,
      label_smoothing=loss_cfg.label_smoothing,
      normalize_by_tokens=loss_cfg.normalize_by_tokens)


class EncoderDecoderLM:
  """A T5-family encoder-decoder.

  Args:
    config: the backbone's `T5Config` (from its checkpoint).
    loss_cfg: loss options.
  """
  family = ENCODER_DECODER
  add_bos = False

  def __init__(self, config: T5Config, loss_cfg: LossConfig = LossConfig()):
    self.config = config
    self.loss_cfg = loss_cfg
    self.module = t5_network.T5Transformer(config)
    self.sample_inputs = None  # `T5Transformer.init`'s defaults.

  def logits(self, params: PyTree, batch: Mapping[str, Array], *,
             seams: Seams = Seams(), rng: PRNGKey | None = None,
             enable_dropout: bool = False) -> Array:
    """Teacher-forced logits [B, To, V]."""
    rngs = {"dropout": rng} if enable_dropout else None
    return self.module.apply(
        {"params": params}, batch["encoder_input_tokens"],
        batch["decoder_input_tokens"], seams=seams,
        enable_dropout=enable_dropout, rngs=rngs)

  def loss_fn(self, params: PyTree, batch: Mapping[str, Array], *,
              seams: Seams = Seams(), rng: PRNGKey | None = None,
              enable_dropout: bool = False
              ) -> tuple[Array, dict[str, Array]]:
    """Scalar loss and summed metrics (`loss_sum`, `z_loss_sum`, `correct`,
    `tokens`), so they aggregate exactly across microbatches."""
    logits = self.logits(params, batch, seams=seams, rng=rng,
                         enable_dropout=enable_dropout)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights", targets > 0)
    return _loss(self.loss_cfg, logits, targets, weights)

  def score(self, params: PyTree, inputs: Array, targets: Array, *,
            seams: Seams = Seams(), input_mask: Array | None = None,
            target_mask: Array | None = None, context: Any = None
            ) -> tuple[Array, Array]:
    """(scores [B], token_scores [B, To]): log p(targets [B, To] | inputs
    [B, Ti]) by teacher forcing (the base of rank classification)."""
    if context is not None:
      raise ValueError("EncoderDecoderLM.score: a shared context is "
                       "decoder-only; put the context into the inputs")
    return scorer.score_batch(self.module, params, inputs, targets,
                              encoder_mask=input_mask,
                              target_mask=target_mask, seams=seams)

  def generate(self, params: PyTree, inputs: Array, *,
               seams: Seams = Seams(), max_decode_length: int,
               method: str = "greedy", num_beams: int = 4,
               alpha: float = 0.6, constraint: Any = None,
               input_mask: Array | None = None,
               rng: PRNGKey | None = None) -> tuple[Array, Array]:
    """(tokens [B, L], scores [B]) decoded for encoder inputs [B, Ti]."""
    return t5_generation.generate(
        self.module, params, inputs, max_decode_length=max_decode_length,
        method=method, num_beams=num_beams, alpha=alpha, rng=rng,
        encoder_mask=input_mask, seams=seams, constraint=constraint)

  def next_token_log_probs(self, params: PyTree, inputs: Array,
                           input_mask: Array, *, seams: Seams = Seams(),
                           context: Any = None) -> Array:
    """log p(first target token | inputs) [B, V] (one decoder step)."""
    del context
    start = jnp.zeros(inputs.shape[:1] + (1,), jnp.int32)
    logits = self.module.apply({"params": params}, inputs, start,
                               encoder_mask=input_mask, seams=seams)
    return jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1)

  def embed(self, params: PyTree, tokens: Array, mask: Array) -> Array:
    """[B, H] mean of the encoder states over the real tokens."""
    return embeddings.t5_sentence_embeddings(self.module, params, tokens,
                                             mask)


class DecoderOnlyLM:
  """A Llama-family decoder-only LM.

  The model reads the UNSHIFTED sequence and predicts token k + 1 from
  slot k (no start id is fed). The padding mask comes from the loss
  weights, never from token ids (SmolLM2's id 0 is `<|endoftext|>`): slot
  k is real iff some slot at or after k has a loss weight.

  Slots an embed seam inserts (a soft prompt) are counted from the seam's
  output shape; text logits are the last T slots. With `add_bos` the model
  prepends BOS itself (seqio tasks never add one).

  Args:
    config: the backbone's `DecoderConfig`.
    loss_cfg: loss options.
    target_length: S, the most target tokens of a training row: the loss
      then projects only S slots per row to the vocabulary (None: all).
    add_bos: prepend the config's BOS id to every sequence.
  """
  family = DECODER_ONLY

  def __init__(self, config: DecoderConfig,
               loss_cfg: LossConfig = LossConfig(),
               target_length: int | None = None, add_bos: bool = False):
    self.config = config
    self.loss_cfg = loss_cfg
    self.target_length = target_length
    self.add_bos = add_bos
    self.module = llama_network.DecoderLM(config)
    self.sample_inputs = (jax.ShapeDtypeStruct((1, 1), jnp.int32),)

  def with_bos(self, tokens: Array, mask: Array) -> tuple[Array, Array]:
    """[B, T] -> [B, T + 1] with BOS first when `add_bos` (else as is)."""
    if not self.add_bos:
      return tokens, mask
    bos = jnp.full(tokens.shape[:1] + (1,), self.config.bos_id, tokens.dtype)
    return (jnp.concatenate([bos, tokens], axis=1),
            jnp.concatenate([jnp.ones_like(mask[:, :1]), mask], axis=1))

  def inserted_slots(self, seams: Seams, tokens: Array) -> int:
    """How many slots `seams.decoder_embed_fn` adds to [B, T] tokens."""
    if seams.decoder_embed_fn is None:
      return 0
    b, t = tokens.shape
    x = jax.ShapeDtypeStruct((b, t, self.config.emb_dim), jnp.float32)
    out = jax.eval_shape(seams.decoder_embed_fn, x,
                         jax.ShapeDtypeStruct((b, t), jnp.bool_))
    return out[0].shape[1] - t

  def text_logits(self, params: PyTree, tokens: Array, mask: Array, *,
                  seams: Seams = Seams(), rng: PRNGKey | None = None,
                  enable_dropout: bool = False,
                  slots: Array | None = None) -> Array:
    """Logits [B, T, V] (or [B, S, V] at `slots` [B, S]); row k predicts
    `tokens[:, k + 1]`. `tokens` [B, T] include BOS if the model adds one."""
    rngs = {"dropout": rng} if enable_dropout else None
    offset = self.inserted_slots(seams, tokens)
    logits = self.module.apply(
        {"params": params}, tokens, mask.astype(bool), seams=seams,
        enable_dropout=enable_dropout, rngs=rngs,
        logits_positions=None if slots is None else slots + offset)
    return logits if slots is not None else logits[:, offset:]

  def loss_fn(self, params: PyTree, batch: Mapping[str, Array], *,
              seams: Seams = Seams(), rng: PRNGKey | None = None,
              enable_dropout: bool = False
              ) -> tuple[Array, dict[str, Array]]:
    """Scalar loss and summed metrics on the target tokens only."""
    tokens = batch["decoder_target_tokens"]
    weights = batch["decoder_loss_weights"]
    mask = layout.mask_from_weights(weights)
    tokens, mask = self.with_bos(tokens, mask)
    if self.add_bos:
      weights = jnp.concatenate([jnp.zeros_like(weights[:, :1]), weights], 1)
    targets, weights = tokens[:, 1:], weights[:, 1:]
    kwargs = dict(seams=seams, rng=rng, enable_dropout=enable_dropout)
    if self.target_length is None:
      logits = self.text_logits(params, tokens, mask, **kwargs)[:, :-1]
    else:  # Slot k predicts targets[:, k]: project S slots per row only.
      slots, valid = layout.first_target_slots(weights, self.target_length)
      logits = self.text_logits(params, tokens, mask, slots=slots, **kwargs)
      targets = jnp.take_along_axis(targets, slots, axis=1)
      weights = jnp.take_along_axis(weights, slots, axis=1) * valid
    return _loss(self.loss_cfg, logits, targets, weights)

  def _with_context(self, params, tokens, mask, seams, context, slots):
    return self.module.apply(
        {"params": params}, tokens, mask,
        positions=llama_network.positions_from_mask(mask, context.length),
        seams=context.merged_into(seams), logits_positions=slots)

  def score(self, params: PyTree, inputs: Array, targets: Array, *,
            seams: Seams = Seams(), input_mask: Array | None = None,
            target_mask: Array | None = None,
            context: ContextCache | None = None) -> tuple[Array, Array]:
    """(scores [B], token_scores [B, To]): log p(targets | inputs).

    Args:
      inputs: [B, Ti] left-aligned inputs; mask default `inputs != 0`
        (seqio pads with 0; pass `input_mask` if an input may hold id 0).
      targets: [B, To] left-aligned continuations (mask default `!= 0`).
      seams: the method's seams; with `context`, its embed seam is
        ignored (its slots are inside the cache).
      context: a shared context before every row (`encode_context`).
    """
    input_mask = inputs != 0 if input_mask is None else input_mask
    target_mask = targets != 0 if target_mask is None else target_mask
    left, left_mask = layout.left_pad(inputs, input_mask)
    tokens = jnp.concatenate([left, targets], axis=1)
    mask = jnp.concatenate([left_mask, target_mask.astype(bool)], axis=1)
    to = targets.shape[1]
    if context is None:
      tokens, mask = self.with_bos(tokens, mask)
    slots = jnp.broadcast_to(tokens.shape[1] - to - 1 + jnp.arange(to),
                             targets.shape)
    if context is None:
      logits = self.text_logits(params, tokens, mask, seams=seams,
                                slots=slots)
    else:
      logits = self._with_context(params, tokens, mask, seams, context,
                                  slots)
    token_scores = scorer.token_log_probs(logits, targets) * target_mask
    return jnp.sum(token_scores, axis=1), token_scores

  def next_token_log_probs(self, params: PyTree, inputs: Array,
                           input_mask: Array, *, seams: Seams = Seams(),
                           context: ContextCache | None = None) -> Array:
    """log p(next token | [context,] inputs) [B, V] (one pass for all
    single-token options). Rows need a real token unless a context
    precedes them."""
    tokens, mask = layout.left_pad(inputs, input_mask)
    last = jnp.full(tokens.shape[:1] + (1,), tokens.shape[1] - 1)
    if context is None:
      tokens, mask = self.with_bos(tokens, mask)
      logits = self.text_logits(params, tokens, mask, seams=seams,
                                slots=last + self.add_bos)
    else:
      logits = self._with_context(params, tokens, mask, seams, context, last)
    return jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1)

  def encode_context(self, params: PyTree, tokens: Array, *,
                     seams: Seams = Seams()) -> ContextCache:
    """Keys/values of [BOS, embed-seam slots, context] for `score(context=)`.

    Args:
      tokens: [1, C] context ids, all real (C may be 0 only with an embed
        seam or BOS).
    """
    mask = jnp.ones(tokens.shape, bool)
    tokens, mask = self.with_bos(tokens, mask)

    def run(cache):
      variables = {"params": params}
      if cache is not None:
        variables["cache"] = cache
      return self.module.apply(variables, tokens, mask, seams=seams,
                               decode=True, mutable=["cache"])[1]["cache"]

    shapes = jax.eval_shape(run, None)
    cache = run(jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes))
    return layout.context_cache(cache, self.config.num_layers)

  def generate(self, params: PyTree, inputs: Array, *,
               seams: Seams = Seams(), max_decode_length: int,
               method: str = "greedy", num_beams: int = 4,
               alpha: float = 0.6, constraint: Any = None,
               input_mask: Array | None = None,
               rng: PRNGKey | None = None) -> tuple[Array, Array]:
    """(tokens [B, L], scores [B]) continuing `inputs` [B, Ti] (left-aligned,
    mask default `inputs != 0`): generated ids only, EOS then `pad_id`."""
    input_mask = inputs != 0 if input_mask is None else input_mask
    tokens, mask = self.with_bos(inputs, input_mask.astype(bool))
    return llama_generation.generate(
        self.module, params, tokens, max_decode_length=max_decode_length,
        method=method, num_beams=num_beams, alpha=alpha, rng=rng,
        prompt_mask=mask, seams=seams, constraint=constraint)

  def embed(self, params: PyTree, tokens: Array, mask: Array) -> Array:
    """[B, H] mean of the final hidden states over the real tokens."""
    return embeddings.decoder_sentence_embeddings(self.module, params,
                                                  tokens, mask)
