"""Token-level losses and metrics (pure functions, fp32)."""

import jax
import jax.numpy as jnp

from prompt_jax.types import Array


def cross_entropy(logits: Array, targets: Array, weights: Array,
                  z_loss: float = 0.0, label_smoothing: float = 0.0
                  ) -> tuple[Array, Array]:
  """Weighted token cross entropy, summed over tokens.

  Args:
    logits: [B, T, V] (computed in fp32).
    targets: [B, T] int target ids.
    weights: [B, T] loss weights (0 for padding).
    z_loss: coefficient of the auxiliary `log(Z)^2` term (T5X's z-loss),
      which keeps the softmax normaliser near 1.
    label_smoothing: mass spread uniformly over the vocabulary.

  Returns:
    (total loss including z-loss, z-loss part), both summed over tokens.
  """
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  soft = jax.nn.one_hot(targets, vocab) * confidence + label_smoothing / vocab
  log_z = jax.nn.logsumexp(logits, axis=-1)
  token_loss = log_z - jnp.sum(soft * logits, axis=-1)
  token_z = z_loss * jnp.square(log_z)
  weights = weights.astype(jnp.float32)
  z_total = jnp.sum(token_z * weights)
  return jnp.sum(token_loss * weights) + z_total, z_total


def token_accuracy(logits: Array, targets: Array, weights: Array
                   ) -> tuple[Array, Array]:
  """(number of correct argmax tokens, number of weighted tokens)."""
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  return jnp.sum(correct * weights), jnp.sum(weights)


def loss_and_metrics(logits: Array, targets: Array, weights: Array, *,
                     z_loss: float = 0.0, label_smoothing: float = 0.0,
                     normalize_by_tokens: bool = True
                     ) -> tuple[Array, dict[str, Array]]:
  """The training loss and summed metrics of both prompt models.

  Args:
    logits: [B, T, V]; targets, weights: [B, T].

  Returns:
    (loss, metrics): the loss is the summed cross entropy (divided by the
    weighted token count if `normalize_by_tokens`); metrics hold sums
    (`loss_sum`, `z_loss_sum`, `correct`, `tokens`) so they aggregate
    exactly across microbatches.
  """
  loss_sum, z_sum = cross_entropy(logits, targets, weights, z_loss,
                                  label_smoothing)
  correct, count = token_accuracy(logits, targets, weights)
  loss = loss_sum / jnp.maximum(count, 1.0) if normalize_by_tokens else (
      loss_sum)
  return loss, {"loss_sum": loss_sum, "z_loss_sum": z_sum,
                "correct": correct, "tokens": count}
