"""Shared-context scoring and target-only logits of PromptDecoderModel.

`score_batch(context=encode_context(...))` must equal scoring the context
and each query in one sequence; `target_length` must leave the loss as it
is while projecting fewer slots.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax.testing import llama as decoder_testing
from prompt_jax.methods.prompt_tuning import method as prompt_tuning_lib

CFG = decoder_testing.tiny_decoder_config(num_layers=2)
P = 4


def _padded(rows, length):
  out = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def _setup(position):
  model = prompt_tuning_lib.decoder_model(CFG, P, position=position)
  frozen = decoder_testing.random_params(CFG, seed=0)
  trainable = model.init_trainable(jax.random.key(1))
  return model, frozen, trainable


@pytest.mark.parametrize("position,with_prompt", [
    ("prefix", False), ("prefix", True), ("after_bos", True)])
def test_context_cache_equals_full_sequence(position, with_prompt):
  model, frozen, trainable = _setup(position)
  trainable = trainable if with_prompt else None
  context = [5, 9, 13, 21, 8, 30, 7]
  queries = [[11, 12, 3], [40, 41, 42, 43, 44], [17]]
  targets = [[50, 51], [52, 0], [53, 54]]  # Row 1 has one target token.
  t_mask = np.array([[1, 1], [1, 0], [1, 1]], bool)
  cache = model.encode_context(trainable, frozen,
                               jnp.asarray([context], jnp.int32))
  assert cache.length == len(context) + (P if with_prompt else 0) + (
      position == "after_bos")
  got, got_tokens = model.score_batch(
      None, frozen, _padded(queries, 6), np.array(targets),
      target_mask=t_mask, context=cache)
  full_inputs = _padded([context + q for q in queries], 14)
  want, want_tokens = model.score_batch(
      trainable, frozen, full_inputs, np.array(targets), target_mask=t_mask)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_tokens, want_tokens, rtol=1e-5, atol=1e-5)
  assert got_tokens[1, 1] == 0.0


def test_target_length_keeps_the_loss_and_metrics():
  model, frozen, trainable = _setup("prefix")
  bounded = prompt_tuning_lib.decoder_model(CFG, P, target_length=3)
  tokens = _padded([[5, 6, 7, 50, 51], [8, 9, 52, 53, 54], [4, 4, 4, 4, 55]],
                   9)
  weights = _padded([[0, 0, 0, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]], 9)
  batch = {"decoder_target_tokens": tokens, "decoder_loss_weights": weights}
  want_loss, want = model.loss_fn(trainable, frozen, batch)
  got_loss, got = bounded.loss_fn(trainable, frozen, batch)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-6, err_msg=key)
  assert float(want["tokens"]) == 6.0
  # Targets that end the row: the slots past the end carry no weight.
  edge = {"decoder_target_tokens": tokens[:, :5],
          "decoder_loss_weights": weights[:, :5]}
  np.testing.assert_allclose(bounded.loss_fn(trainable, frozen, edge)[0],
                             model.loss_fn(trainable, frozen, edge)[0],
                             rtol=1e-6)


def test_target_length_gradients_equal():
  model, frozen, trainable = _setup("prefix")
  bounded = prompt_tuning_lib.decoder_model(CFG, P, target_length=2)
  tokens = _padded([[5, 6, 7, 50, 51], [8, 9, 52, 53]], 7)
  weights = _padded([[0, 0, 0, 1, 1], [0, 0, 0, 1]], 7)
  batch = {"decoder_target_tokens": tokens, "decoder_loss_weights": weights}
  grad = lambda m: jax.grad(lambda t: m.loss_fn(t, frozen, batch)[0])(
      trainable)
  want, got = grad(model), grad(bounded)
  np.testing.assert_allclose(got["prompt"]["prompt"],
                             want["prompt"]["prompt"], rtol=1e-4, atol=1e-7)
