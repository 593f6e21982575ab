"""Tests for prompt_jax.icl.embeddings on tiny random backbones.

Mean pooling must ignore padding: changing the token ids in padded slots
(left or right padding) leaves the embedding unchanged, and the embedding
equals a numpy mean of the backbone's own states over the real tokens. All
calls go through `jax.jit` with the module static.
"""

import functools

from absl.testing import absltest
import flax
import jax
import jax.numpy as jnp
import numpy as np

from prompt_jax import testing as t5_testing
from prompt_jax.backbones.llama import network as decoder_network
from prompt_jax.testing import llama as decoder_testing
from prompt_jax.icl import demo_selection
from prompt_jax.icl import embeddings
from prompt_jax.backbones.t5 import network as t5_network

DECODER_CFG = decoder_testing.tiny_decoder_config()
T5_CFG = t5_testing.tiny_t5_config()
# Row 0 right-padded (4 real), row 1 left-padded (3 real), row 2 full.
MASK = np.array([[1, 1, 1, 1, 0, 0],
                 [0, 0, 0, 1, 1, 1],
                 [1, 1, 1, 1, 1, 1]], dtype=bool)

decoder_embed = jax.jit(embeddings.decoder_sentence_embeddings,
                        static_argnums=0)
t5_embed = jax.jit(embeddings.t5_sentence_embeddings, static_argnums=0)


def _tokens(vocab_size: int, seed: int) -> np.ndarray:
  """[3, 6] ids in [3, V); padded slots hold seed-dependent junk."""
  rng = np.random.RandomState(0)
  ids = rng.randint(3, vocab_size, MASK.shape).astype(np.int32)
  junk = np.random.RandomState(seed).randint(0, vocab_size, MASK.shape)
  return np.where(MASK, ids, junk).astype(np.int32)


def _manual_mean(states: np.ndarray) -> np.ndarray:
  return np.stack([states[b][MASK[b]].mean(axis=0)
                   for b in range(MASK.shape[0])])


@functools.lru_cache(maxsize=None)
def _t5():
  module = t5_network.T5Transformer(T5_CFG)
  ids = jnp.ones((1, 4), jnp.int32)
  params = flax.core.meta.unbox(
      module.init(jax.random.key(0), ids, ids)["params"])
  return module, params


class DecoderEmbeddingsTest(absltest.TestCase):

  def test_mean_of_real_token_states_and_padding_ignored(self):
    module = decoder_network.DecoderLM(DECODER_CFG)
    params = decoder_testing.random_params(DECODER_CFG)
    tokens = _tokens(DECODER_CFG.vocab_size, seed=1)
    got = np.asarray(decoder_embed(module, params, tokens, MASK))
    self.assertEqual(got.shape, (3, DECODER_CFG.emb_dim))
    states = np.asarray(module.apply({"params": params}, tokens, MASK,
                                     return_hidden=True))
    np.testing.assert_allclose(got, _manual_mean(states), rtol=1e-5,
                               atol=1e-6)
    other_padding = _tokens(DECODER_CFG.vocab_size, seed=2)
    self.assertFalse(np.array_equal(tokens, other_padding))
    np.testing.assert_allclose(
        np.asarray(decoder_embed(module, params, other_padding, MASK)), got,
        rtol=1e-5, atol=1e-6)
    # The pad slots do change the states there: pooling must skip them.
    self.assertGreater(np.abs(states.mean(axis=1) - got).max(), 1e-3)


class T5EmbeddingsTest(absltest.TestCase):

  def test_mean_of_real_encoder_states_and_padding_ignored(self):
    module, params = _t5()
    tokens = _tokens(T5_CFG.vocab_size, seed=1)
    got = np.asarray(t5_embed(module, params, tokens, MASK))
    self.assertEqual(got.shape, (3, T5_CFG.emb_dim))
    encoded, _ = module.apply({"params": params}, tokens, MASK,
                              method=t5_network.T5Transformer.encode)
    np.testing.assert_allclose(got, _manual_mean(np.asarray(encoded)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(t5_embed(module, params,
                            _tokens(T5_CFG.vocab_size, seed=2), MASK)),
        got, rtol=1e-5, atol=1e-6)

  def test_feeds_the_knn_index(self):
    module, params = _t5()
    tokens = _tokens(T5_CFG.vocab_size, seed=1)
    train = np.asarray(t5_embed(module, params, tokens, MASK))
    index = demo_selection.NearestNeighbourIndex(train)
    indices, sims = index.query(train, k=1)
    np.testing.assert_array_equal(indices[:, 0], [0, 1, 2])
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-6)


class MeanPoolTest(absltest.TestCase):

  def test_hand_computed_and_empty_row(self):
    hidden = jnp.arange(12, dtype=jnp.float32).reshape(2, 3, 2)
    mask = jnp.array([[1, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(
        np.asarray(embeddings.mean_pool(hidden, mask)),
        [[2.0, 3.0], [0.0, 0.0]])


if __name__ == "__main__":
  absltest.main()
