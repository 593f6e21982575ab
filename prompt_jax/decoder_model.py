"""`PromptDecoderModel`: a frozen decoder-only LM plus a trainable soft prompt.

The decoder counterpart of `prompt_jax.model.PromptT5Model`, with the same
duck-typed interface the `Trainer` uses (`abstract_trainable`,
`init_trainable`, `prompt_of`, `loss_fn`, `score_batch`, `apply_kwargs`,
`config`, `prompt_length`, `loss_cfg`).

Batch layout (seqio `PrefixLMFeatureConverter(loss_on_targets_only=True,
pack=False)`): `decoder_target_tokens` [B, L] holds the inputs then the
targets of each example, left-aligned and right-padded;
`decoder_loss_weights` [B, L] is 1 on the target tokens only. The other keys
(`decoder_input_tokens`, which starts with id 0, and
`decoder_causal_attention`) are ignored: the model reads the UNSHIFTED
sequence and predicts token k + 1 from slot k, so no start id is fed.

Padding mask: slot k is real iff some slot at or after k has a loss weight
(the targets end every example). It never comes from token ids: SmolLM2's id
0 is `<|endoftext|>`, not padding. A consequence: an example whose targets
are empty is all padding (it carries no loss anyway).

Where the prompt goes (`Seams(decoder_embed_fn=...)`, applied right after
the token lookup; rotary positions count prompt slots like tokens):
  * 'prefix': [prompt, text] for models whose tokenizer adds no BOS
    (SmolLM2).
  * 'after_bos': [BOS, prompt, text] for models that expect a BOS; the model
    prepends BOS itself (seqio tasks never add one).
In both cases the logits that predict text token k + 1 sit at combined slot
P + k, so the text logits are `logits[:, P:]`.

Generation (`generate`) prefills [prompt, inputs] through the KV cache
(`prompt_jax.decoder.generation.generate`) and returns only new tokens.

Rank classification: `score_batch(inputs, targets)` joins each row as
[left-padded inputs, targets] (the mask makes the padding invisible and keeps
positions contiguous) and sums log p(target tokens). Only the slots that
predict targets are projected to the vocabulary (`logits_positions`).

Shared context (k-shot evaluation with the same demonstrations for every
query, as MetaICL evaluates): `encode_context` runs [BOS, prompt, context]
once and returns its per-layer keys/values (`ContextCache`); `score_batch(...,
context=cache)` then runs only each query and its targets, attending to the
cached keys through the per-layer prefix seam with positions continuing after
the context. The scores equal scoring [context, query, target] in full.

Loss on few targets: with `target_length` S set (the task's target feature
length), `loss_fn` projects only the S slots from each row's first target on,
instead of all Ti + To slots; the loss is unchanged.
"""

import dataclasses

from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp

from prompt_jax import losses
from prompt_jax import model as model_lib
from prompt_jax import scoring
from prompt_jax.decoder import generation
from prompt_jax.decoder import network
from prompt_jax.decoder.config import DecoderConfig
from prompt_jax.prompts import combine as combine_lib
from prompt_jax.prompts import initializers
from prompt_jax.prompts import modules as prompt_modules
from prompt_jax.t5 import seams as seams_lib
from prompt_jax.types import Array, PRNGKey, PyTree

POSITIONS = ("prefix", "after_bos")


LossConfig = model_lib.LossConfig  # One loss config for both backbones.


def prefix_after_bos(prompt: Array, x: Array,
                     mask: Array) -> tuple[Array, Array]:
  """[x_0 (BOS), prompt, x_1..] : a `CombinationFn` ([B, T, H] -> P+T)."""
  head, tail = combine_lib.prefix(prompt, x[:, 1:], mask[:, 1:])
  return (jnp.concatenate([x[:, :1], head], axis=1),
          jnp.concatenate([mask[:, :1], tail], axis=1))


_COMBINATIONS = {"prefix": combine_lib.prefix, "after_bos": prefix_after_bos}


def mask_from_weights(weights: Array) -> Array:
  """[B, L] bool: slots at or before the last slot with a loss weight."""
  w = (weights > 0).astype(jnp.int32)
  return jnp.cumsum(w[:, ::-1], axis=1)[:, ::-1] > 0


def left_pad(tokens: Array, mask: Array) -> tuple[Array, Array]:
  """Moves each row's real (left-aligned) tokens to the right end.

  Args:
    tokens: [B, T] ids, real tokens first.
    mask: [B, T] real-token mask (a prefix of each row).

  Returns:
    (tokens, mask) [B, T], rolled right by the row's padding count.
  """
  length = tokens.shape[1]
  shift = length - jnp.sum(mask.astype(jnp.int32), axis=1, keepdims=True)
  src = (jnp.arange(length)[None] - shift) % length
  return (jnp.take_along_axis(tokens, src, axis=1),
          jnp.take_along_axis(mask.astype(bool), src, axis=1))


@flax.struct.dataclass
class ContextCache:
  """Keys/values of a shared context, for `score_batch(context=...)`.

  Attributes:
    keys: per layer, rotated keys [1, C, K, D] (C = BOS + prompt + context).
    values: per layer, values [1, C, K, D].
    length: C, the position of the first query token.
  """
  keys: tuple[Array, ...]
  values: tuple[Array, ...]
  length: int = flax.struct.field(pytree_node=False, default=0)

  def seams(self) -> seams_lib.Seams:
    """The cache as per-layer key/value prefixes."""
    return seams_lib.Seams(decoder_layers=tuple(
        seams_lib.LayerSeams(self_attention=seams_lib.AttentionSeams(
            prefix_key=k, prefix_value=v))
        for k, v in zip(self.keys, self.values)))


def _first_target_slots(weights: Array, length: int
                        ) -> tuple[Array, Array]:
  """Slots [B, S] from each row's first weighted slot, and their validity."""
  big = weights.shape[1]
  first = jnp.argmax(weights > 0, axis=1)[:, None]  # [B, 1]
  slots = first + jnp.arange(length)[None]
  return jnp.minimum(slots, big - 1), slots < big


class PromptDecoderModel(prompt_modules.SoftPromptTrainable):
  """Frozen decoder-only backbone + soft prompt of length P.

  Args:
    config: the backbone's `DecoderConfig`.
    prompt_length: P.
    prompt_init: initializer of the [P, H] prompt.
    position: 'prefix' or 'after_bos' (see the module docstring).
    loss_cfg: loss options.
    target_length: S, the most target tokens of a training row (None: no
      bound; every slot is projected to the vocabulary).
  """

  def __init__(self, config: DecoderConfig, prompt_length: int,
               prompt_init: initializers.PromptInitializer | None = None,
               position: str = "prefix",
               loss_cfg: LossConfig = LossConfig(),
               target_length: int | None = None):
    if position not in _COMBINATIONS:
      raise ValueError(f"decoder prompt position {position!r}: expected one "
                       f"of {list(POSITIONS)}")
    self.config = config
    self.prompt_length = prompt_length
    self.position = position
    self.add_bos = position == "after_bos"
    self.loss_cfg = loss_cfg
    self.target_length = target_length
    self.module = network.DecoderLM(config)
    self.prompt_module = prompt_modules.Prompt(
        prompt_length, config.emb_dim,
        prompt_init or initializers.random_uniform())

  def _seams(self, trainable: PyTree | None) -> seams_lib.Seams:
    if trainable is None:  # The bare backbone (e.g. the scoring CLI).
      return seams_lib.Seams()
    prompt = self.prompt_of(trainable)
    combine_fn = _COMBINATIONS[self.position]

    def embed_fn(x: Array, mask: Array) -> tuple[Array, Array]:
      return combine_fn(prompt.astype(x.dtype), x, mask)

    return seams_lib.Seams(decoder_embed_fn=embed_fn)

  def apply_kwargs(self, trainable: PyTree) -> dict[str, Any]:
    """Keyword arguments that put the prompt into `DecoderLM.apply`."""
    return {"seams": self._seams(trainable)}

  def _with_bos(self, tokens: Array, mask: Array) -> tuple[Array, Array]:
    if not self.add_bos:
      return tokens, mask
    bos = jnp.full(tokens.shape[:1] + (1,), self.config.bos_id, tokens.dtype)
    return (jnp.concatenate([bos, tokens], axis=1),
            jnp.concatenate([jnp.ones_like(mask[:, :1]), mask], axis=1))

  # ----------------------------------------------------------- compute --
  def _offset(self, trainable: PyTree | None) -> int:
    return 0 if trainable is None else self.prompt_length

  def text_logits(self, trainable: PyTree, frozen: PyTree, tokens: Array,
                  mask: Array, rng: PRNGKey | None = None,
                  enable_dropout: bool = False,
                  slots: Array | None = None) -> Array:
    """Logits [B, T, V]; row k predicts `tokens[:, k + 1]` (prompt in place).

    Args:
      trainable: the trainable tree; None scores the bare backbone.
      tokens: [B, T] ids (BOS included if the model expects it).
      mask: [B, T] real-token mask.
      slots: [B, S] text slots whose logits are wanted; None: all T.
    """
    rngs = {"dropout": rng} if enable_dropout else None
    offset = self._offset(trainable)
    logits = self.module.apply(
        {"params": frozen}, tokens, mask.astype(bool),
        seams=self._seams(trainable), enable_dropout=enable_dropout,
        rngs=rngs, logits_positions=None if slots is None else slots + offset)
    return logits if slots is not None else logits[:, offset:]

  def loss_fn(self, trainable: PyTree, frozen: PyTree,
              batch: Mapping[str, Array], rng: PRNGKey | None = None,
              enable_dropout: bool = False
              ) -> tuple[Array, dict[str, Array]]:
    """Scalar loss and summed metrics on the target tokens only.

    Returns:
      (loss, metrics) where metrics hold sums (`loss_sum`, `z_loss_sum`,
      `correct`, `tokens`) so they aggregate exactly across microbatches.
    """
    tokens = batch["decoder_target_tokens"]
    weights = batch["decoder_loss_weights"]
    mask = mask_from_weights(weights)
    tokens, mask = self._with_bos(tokens, mask)
    if self.add_bos:
      weights = jnp.concatenate([jnp.zeros_like(weights[:, :1]), weights], 1)
    targets, weights = tokens[:, 1:], weights[:, 1:]
    if self.target_length is None:
      logits = self.text_logits(trainable, frozen, tokens, mask, rng,
                                enable_dropout)[:, :-1]
    else:  # Slot k predicts targets[:, k]: project S slots per row only.
      slots, valid = _first_target_slots(weights, self.target_length)
      logits = self.text_logits(trainable, frozen, tokens, mask, rng,
                                enable_dropout, slots=slots)
      targets = jnp.take_along_axis(targets, slots, axis=1)
      weights = jnp.take_along_axis(weights, slots, axis=1) * valid
    return losses.loss_and_metrics(
        logits, targets, weights, z_loss=self.loss_cfg.z_loss,
        label_smoothing=self.loss_cfg.label_smoothing,
        normalize_by_tokens=self.loss_cfg.normalize_by_tokens)

  def score_batch(self, trainable: PyTree, frozen: PyTree,
                  input_tokens: Array, targets: Array, *,
                  input_mask: Array | None = None,
                  target_mask: Array | None = None,
                  context: ContextCache | None = None
                  ) -> tuple[Array, Array]:
    """(scores [B], token_scores [B, To]): log p(targets | prompt, inputs).

    Args:
      trainable: the trainable tree; None: no prompt. Ignored with
        `context` (the prompt is inside the cache).
      input_tokens: [B, Ti] left-aligned inputs.
      targets: [B, To] left-aligned continuations.
      input_mask: [B, Ti]; default `input_tokens != 0` (seqio pads with 0;
        pass a mask if an input may contain id 0).
      target_mask: [B, To]; default `targets != 0`.
      context: a shared context before every row (`encode_context`).
    """
    if input_mask is None:
      input_mask = input_tokens != 0
    if target_mask is None:
      target_mask = targets != 0
    inputs, in_mask = left_pad(input_tokens, input_mask)
    tokens = jnp.concatenate([inputs, targets], axis=1)
    mask = jnp.concatenate([in_mask, target_mask.astype(bool)], axis=1)
    to = targets.shape[1]
    if context is None:
      tokens, mask = self._with_bos(tokens, mask)
      start = tokens.shape[1] - to - 1
      slots = jnp.broadcast_to(start + jnp.arange(to), targets.shape)
      logits = self.text_logits(trainable, frozen, tokens, mask, slots=slots)
    else:
      slots = jnp.broadcast_to(tokens.shape[1] - to - 1 + jnp.arange(to),
                               targets.shape)
      logits = self.module.apply(
          {"params": frozen}, tokens, mask,
          positions=network.positions_from_mask(mask, context.length),
          seams=context.seams(), logits_positions=slots)
    token_scores = scoring.token_log_probs(logits, targets) * target_mask
    return jnp.sum(token_scores, axis=1), token_scores

  def next_token_log_probs(self, frozen: PyTree, input_tokens: Array,
                           input_mask: Array,
                           context: ContextCache | None = None) -> Array:
    """log p(next token | [context,] inputs) [B, V] (one pass for all
    single-token options).

    Args:
      frozen: the backbone params.
      input_tokens: [B, Ti] left-aligned inputs (at least one real token
        per row unless a context precedes them).
      input_mask: [B, Ti] real-token mask.
      context: the shared context (with the prompt); None: bare backbone.
    """
    tokens, mask = left_pad(input_tokens, input_mask)
    last = jnp.full(tokens.shape[:1] + (1,), tokens.shape[1] - 1)
    if context is None:
      tokens, mask = self._with_bos(tokens, mask)
      logits = self.module.apply({"params": frozen}, tokens, mask,
                                 logits_positions=last + self.add_bos)
    else:
      logits = self.module.apply(
          {"params": frozen}, tokens, mask,
          positions=network.positions_from_mask(mask, context.length),
          seams=context.seams(), logits_positions=last)
    return jax.nn.log_softmax(logits[:, 0].astype(jnp.float32), axis=-1)

  def encode_context(self, trainable: PyTree | None, frozen: PyTree,
                     tokens: Array) -> ContextCache:
    """Keys/values of [BOS, prompt, context] for `score_batch(context=)`.

    Args:
      trainable: the trainable tree (its prompt goes before the context);
        None: no prompt.
      tokens: [1, C] context ids, all real (C may be 0 only with a prompt
        or BOS).
    """
    mask = jnp.ones(tokens.shape, bool)
    tokens, mask = self._with_bos(tokens, mask)
    seams = self._seams(trainable)

    def run(cache):
      variables = {"params": frozen}
      if cache is not None:
        variables["cache"] = cache
      return self.module.apply(variables, tokens, mask, seams=seams,
                               decode=True, mutable=["cache"])[1]["cache"]

    shapes = jax.eval_shape(run, None)
    cache = run(jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes))
    layers = [cache[f"layers_{i}"]["self_attention"]
              for i in range(self.config.num_layers)]
    return ContextCache(tuple(c["cached_key"] for c in layers),
                        tuple(c["cached_value"] for c in layers),
                        int(layers[0]["cached_key"].shape[1]))

  def generate(self, trainable: PyTree, frozen: PyTree, input_tokens: Array,
               *, max_decode_length: int, method: str = "greedy",
               num_beams: int = 4, alpha: float = 0.6,
               constraint: Any = None, input_mask: Array | None = None,
               rng: PRNGKey | None = None) -> tuple[Array, Array]:
    """(tokens [B, L], scores [B]) continuing `input_tokens` [B, Ti].

    Inputs are left-aligned and right-padded (mask default
    `input_tokens != 0`); the output holds generated ids only: EOS, then
    the config's `pad_id`.
    """
    if input_mask is None:
      input_mask = input_tokens != 0
    tokens, mask = self._with_bos(input_tokens, input_mask.astype(bool))
    return generation.generate(
        self.module, frozen, tokens, max_decode_length=max_decode_length,
        method=method, num_beams=num_beams, alpha=alpha, rng=rng,
        prompt_mask=mask, seams=self._seams(trainable),
        constraint=constraint)
