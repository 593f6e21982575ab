"""`PromptT5Model`: a frozen T5 plus a trainable soft prompt.

A plain Python class (not a Flax module), like T5X's `BaseModel`: it owns the
split between the trainable tree (the prompt) and the frozen backbone, and
exposes pure functions of both. Gradients are taken only with respect to the
trainable tree; the backbone enters `loss_fn` as a constant argument, so no
backbone gradient or optimizer state can exist.

Trainable tree: `{'prompt': {'prompt': [P, H]}}` (path `prompt/prompt`).
Batches use seqio's `EncDecFeatureConverter` names: `encoder_input_tokens`
[B, Ti], `decoder_input_tokens`, `decoder_target_tokens`,
`decoder_loss_weights` [B, To].
"""

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from prompt_jax import losses
from prompt_jax import scoring
from prompt_jax.prompts import combine as combine_lib
from prompt_jax.prompts import initializers
from prompt_jax.prompts import modules as prompt_modules
from prompt_jax.t5 import network
from prompt_jax.t5 import seams as seams_lib
from prompt_jax.t5.config import T5Config
from prompt_jax.types import Array, PRNGKey, PyTree

_COMBINATIONS = {"prefix": combine_lib.prefix, "suffix": combine_lib.suffix}


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Loss options; `normalize_by_tokens` divides the sum by target tokens."""
  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  normalize_by_tokens: bool = True


class PromptT5Model(prompt_modules.SoftPromptTrainable):
  """Frozen T5 backbone + soft prompt of length P on the encoder input.

  Args:
    config: the backbone's `T5Config` (from its checkpoint).
    prompt_length: P.
    prompt_init: initializer of the [P, H] prompt.
    position: 'prefix' (default) or 'suffix' (after the last real token).
    loss_cfg: loss options.
  """

  def __init__(self, config: T5Config, prompt_length: int,
               prompt_init: initializers.PromptInitializer | None = None,
               position: str = "prefix",
               loss_cfg: LossConfig = LossConfig()):
    if position not in _COMBINATIONS:
      raise ValueError(f"prompt position {position!r}: expected one of "
                       f"{sorted(_COMBINATIONS)}")
    self.config = config
    self.prompt_length = prompt_length
    self.position = position
    self.loss_cfg = loss_cfg
    self.module = network.T5Transformer(config)
    self.prompt_module = prompt_modules.Prompt(
        prompt_length, config.emb_dim,
        prompt_init or initializers.random_uniform())

  def _seams(self, trainable: PyTree | None):
    if trainable is None:  # The bare backbone (full fine-tuning, scoring).
      return seams_lib.Seams()
    return combine_lib.encoder_prompt_seams(self.prompt_of(trainable),
                                            _COMBINATIONS[self.position])

  # ----------------------------------------------------------- compute --
  def logits(self, trainable: PyTree, frozen: PyTree,
             batch: Mapping[str, Array], rng: PRNGKey | None = None,
             enable_dropout: bool = False) -> Array:
    """Teacher-forced logits [B, To, V] with the prompt in place."""
    rngs = {"dropout": rng} if enable_dropout else None
    return self.module.apply(
        {"params": frozen}, batch["encoder_input_tokens"],
        batch["decoder_input_tokens"], seams=self._seams(trainable),
        enable_dropout=enable_dropout, rngs=rngs)

  def loss_fn(self, trainable: PyTree, frozen: PyTree,
              batch: Mapping[str, Array], rng: PRNGKey | None = None,
              enable_dropout: bool = False
              ) -> tuple[Array, dict[str, Array]]:
    """Scalar loss and summed metrics; differentiate w.r.t. `trainable` only.

    Returns:
      (loss, metrics) where metrics hold sums (`loss_sum`, `z_loss_sum`,
      `correct`, `tokens`) so they aggregate exactly across microbatches.
    """
    logits = self.logits(trainable, frozen, batch, rng, enable_dropout)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights", targets > 0)
    return losses.loss_and_metrics(
        logits, targets, weights, z_loss=self.loss_cfg.z_loss,
        label_smoothing=self.loss_cfg.label_smoothing,
        normalize_by_tokens=self.loss_cfg.normalize_by_tokens)

  def score_batch(self, trainable: PyTree, frozen: PyTree,
                  encoder_tokens: Array, targets: Array
                  ) -> tuple[Array, Array]:
    """(scores [B], token_scores [B, To]) of targets with the prompt in place.

    The base of rank classification: sums of target log-probabilities.
    """
    return scoring.score_batch(self.module, frozen, encoder_tokens, targets,
                               seams=self._seams(trainable))

  def apply_kwargs(self, trainable: PyTree) -> dict[str, Any]:
    """Keyword arguments that put the prompt into `T5Transformer.apply`."""
    return {"seams": self._seams(trainable)}
