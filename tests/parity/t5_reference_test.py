"""Parity of the Flax T5 with Hugging Face transformers on random weights."""

import numpy as np
import pytest
import torch

from prompt_jax import testing
from prompt_jax.t5 import layers
from prompt_jax.t5 import network

STYLES = sorted(testing.HF_STYLES)


def _reference_logits(model, enc: np.ndarray, dec: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.tensor(enc),
                 attention_mask=torch.tensor(enc != 0),
                 decoder_input_ids=torch.tensor(dec)).logits.numpy()


@pytest.mark.parametrize("style", STYLES)
def test_logits_match_transformers(style):
  model, cfg, params = testing.random_hf_t5(style)
  rng = np.random.RandomState(0)
  enc = testing.padded_batch(rng, 3, 30, cfg.vocab_size, lengths=[20, 30, 7])
  dec = testing.padded_batch(rng, 3, 12, cfg.vocab_size, start_with_pad=True)
  ours = network.T5Transformer(cfg).apply({"params": params}, enc, dec)
  ref = _reference_logits(model, enc, dec)
  assert ours.dtype == np.float32
  np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("style", STYLES)
def test_encoder_output_matches_transformers(style):
  model, cfg, params = testing.random_hf_t5(style)
  rng = np.random.RandomState(1)
  enc = testing.padded_batch(rng, 2, 17, cfg.vocab_size, lengths=[17, 9])
  encoded, mask = network.T5Transformer(cfg).apply(
      {"params": params}, enc, method=network.T5Transformer.encode)
  with torch.no_grad():
    ref = model.encoder(input_ids=torch.tensor(enc),
                        attention_mask=torch.tensor(enc != 0))
  np.testing.assert_array_equal(np.asarray(mask), enc != 0)
  np.testing.assert_allclose(np.asarray(encoded), ref.last_hidden_state,
                             atol=1e-5, rtol=0)


def test_long_sequences_use_log_buckets():
  """Lengths beyond max_distance exercise the logarithmic buckets."""
  model, cfg, params = testing.random_hf_t5("t5_1_1", seed=3)
  rng = np.random.RandomState(2)
  enc = testing.padded_batch(rng, 2, 70, cfg.vocab_size, lengths=[70, 41])
  dec = testing.padded_batch(rng, 2, 45, cfg.vocab_size, start_with_pad=True)
  ours = network.T5Transformer(cfg).apply({"params": params}, enc, dec)
  np.testing.assert_allclose(np.asarray(ours),
                             _reference_logits(model, enc, dec), atol=1e-4)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 20)])
def test_relative_position_bucket_matches_transformers(
    bidirectional, num_buckets, max_distance):
  from transformers.models.t5 import modeling_t5  # pylint: disable=g-import-not-at-top
  rel = np.arange(-600, 601)
  ref = modeling_t5.T5Attention._relative_position_bucket(  # pylint: disable=protected-access
      torch.tensor(rel), bidirectional, num_buckets, max_distance).numpy()
  ours = layers.relative_position_bucket(rel, bidirectional, num_buckets,
                                         max_distance)
  np.testing.assert_array_equal(np.asarray(ours), ref)


def test_bf16_compute_stays_close_and_returns_fp32():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  _, cfg, params = testing.random_hf_t5("t5_1_1")
  rng = np.random.RandomState(4)
  enc = testing.padded_batch(rng, 2, 16, cfg.vocab_size, lengths=[16, 10])
  dec = testing.padded_batch(rng, 2, 8, cfg.vocab_size, start_with_pad=True)
  full = network.T5Transformer(cfg).apply({"params": params}, enc, dec)
  bf16 = network.T5Transformer(cfg.replace(dtype=jnp.bfloat16)).apply(
      {"params": params}, enc, dec)
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(bf16), np.asarray(full), atol=0.1)
  assert not np.allclose(np.asarray(bf16), np.asarray(full), atol=1e-6)
