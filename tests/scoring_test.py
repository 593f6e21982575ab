"""Tests for prompt_jax.scoring.scorer: parity with transformers' label loss."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from prompt_jax.testing import parity_checks
from prompt_jax import partitioning
from prompt_jax.scoring import scorer as scoring
from prompt_jax import testing
from prompt_jax import types
from prompt_jax.backbones.t5 import network

# Ragged on purpose: different input and target lengths per example.
_INPUT_LENGTHS = parity_checks.SCORE_INPUT_LENGTHS
_TARGET_LENGTHS = parity_checks.SCORE_TARGET_LENGTHS


def _ragged_batch(vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
  return parity_checks.ragged_score_batch(vocab_size)


class ScoreBatchTest(parameterized.TestCase):

  @parameterized.named_parameters(("t5_1_0", "t5_1_0"), ("t5_1_1", "t5_1_1"))
  def test_matches_transformers_label_loss(self, style):
    got = parity_checks.t5_label_scores(style)
    scores, token_scores, tgt = (got["scores"], got["token_scores"],
                                 got["targets"])
    self.assertEqual(scores.shape, (4,))
    self.assertEqual(token_scores.shape, (4, 6))
    self.assertLessEqual(parity_checks.max_abs_diff(scores, got["expected"]),
                         parity_checks.bound(f"t5_score_{style}"))
    # Real values, not a trivially-zero pass: every score is a sum of
    # negative log-probs of a ~uniform-ish random model.
    self.assertTrue(np.all(np.asarray(scores) < -0.5))
    np.testing.assert_allclose(token_scores.sum(-1), scores, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(token_scores)[tgt == 0], 0.0)
    self.assertTrue(np.all(np.asarray(token_scores)[tgt != 0] < 0.0))

  def test_each_example_independent_of_batch_padding(self):
    """Scoring one row alone, unpadded, gives the batched value."""
    _, cfg, params = testing.random_hf_t5("t5_1_1")
    enc, tgt = _ragged_batch(cfg.vocab_size)
    model = network.T5Transformer(cfg)
    score = jax.jit(scoring.score_batch, static_argnums=0)  # Not op by op.
    batched, _ = score(model, params, enc, tgt)
    for b in range(4):
      alone, _ = score(
          model, params, enc[b:b + 1, :_INPUT_LENGTHS[b]],
          tgt[b:b + 1, :_TARGET_LENGTHS[b]])
      np.testing.assert_allclose(alone[0], batched[b], atol=1e-5)

  def test_target_mask_overrides_default(self):
    _, cfg, params = testing.random_hf_t5("t5_1_0")
    enc, tgt = _ragged_batch(cfg.vocab_size)
    model = network.T5Transformer(cfg)
    full, full_tokens = scoring.score_batch(model, params, enc, tgt)
    mask = np.zeros_like(tgt, bool)
    mask[:, 0] = True  # Score only the first target token.
    first, first_tokens = scoring.score_batch(model, params, enc, tgt,
                                              target_mask=mask)
    np.testing.assert_allclose(first, full_tokens[:, 0], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(first_tokens)[:, 1:], 0.0)
    self.assertFalse(np.allclose(first, full))

  def test_logits_and_log_softmax_in_fp32_with_bf16_compute(self):
    _, cfg, params = testing.random_hf_t5("t5_1_1")
    enc, tgt = _ragged_batch(cfg.vocab_size)
    ref, _ = scoring.score_batch(network.T5Transformer(cfg), params, enc, tgt)
    low, low_tokens = scoring.score_batch(
        network.T5Transformer(cfg.replace(dtype=jnp.bfloat16)), params, enc,
        tgt)
    self.assertEqual(low.dtype, jnp.float32)
    self.assertEqual(low_tokens.dtype, jnp.float32)
    np.testing.assert_allclose(low, ref, rtol=5e-2)

  def test_sharded_on_2x4_mesh_matches_unsharded(self):
    """Batch over 'data', params by the standard rules over 'model'."""
    _, cfg, params = testing.random_hf_t5("t5_1_1")
    rng = np.random.RandomState(1)
    enc = testing.padded_batch(rng, 8, 8, cfg.vocab_size, [8, 3] * 4)
    tgt = testing.padded_batch(rng, 8, 4, cfg.vocab_size, [4, 1] * 4)
    model = network.T5Transformer(cfg)
    ref, ref_tokens = scoring.score_batch(model, params, enc, tgt)
    mesh = partitioning.make_mesh(2, 4)
    rules = partitioning.standard_logical_axis_rules("model")
    param_sh = partitioning.param_shardings(
        partitioning.abstract_variables(model)["params"], mesh, rules)
    rows = partitioning.logical_sharding((types.BATCH,), mesh, rules)
    tokens = partitioning.logical_sharding((types.BATCH, types.LENGTH), mesh,
                                           rules)
    fn = partitioning.jit_sharded(
        lambda p, e, t: scoring.score_batch(model, p, e, t), mesh, rules,
        in_shardings=(param_sh, tokens, tokens), out_shardings=(rows, tokens))
    sharded = jax.device_put(params, param_sh)
    # The heads axis really is split over 'model' (4 heads / 4 devices).
    query = sharded["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    self.assertEqual(query.sharding.shard_shape(query.shape), (32, 1, 8))
    scores, token_scores = fn(sharded, enc, tgt)
    np.testing.assert_allclose(scores, ref, atol=1e-5)
    np.testing.assert_allclose(token_scores, ref_tokens, atol=1e-5)
    self.assertEqual(scores.sharding.spec, jax.sharding.PartitionSpec("data"))
    self.assertEqual(scores.sharding.shard_shape(scores.shape), (4,))


class HelpersTest(parameterized.TestCase):

  def test_shift_right(self):
    tgt = jnp.array([[5, 6, 7, 1], [9, 1, 0, 0]])
    np.testing.assert_array_equal(
        scoring.shift_right(tgt), [[0, 5, 6, 7], [0, 9, 1, 0]])

  def test_token_log_probs_normalised(self):
    logits = jax.random.normal(jax.random.key(0), (2, 3, 11)) * 4
    every = jnp.broadcast_to(jnp.arange(11), (2, 3, 11)).transpose(2, 0, 1)
    probs = jnp.exp(jax.vmap(lambda t: scoring.token_log_probs(logits, t))(
        every))  # [V, B, T]
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)

  @parameterized.parameters((0, None, 8), (1, None, 8), (8, None, 8),
                            (9, None, 16), (100, None, 128), (100, 100, 100),
                            (3, 5, 5))
  def test_bucket_length(self, n, max_length, expected):
    self.assertEqual(scoring.bucket_length(n, max_length=max_length),
                     expected)

  def test_bucket_length_too_long(self):
    with self.assertRaisesRegex(ValueError, "length 11 exceeds max_length 10"):
      scoring.bucket_length(11, max_length=10)

  def test_pad_batch(self):
    out = scoring.pad_batch([[3, 4, 1], [5, 1]], batch_size=3)
    self.assertEqual(out.dtype, np.int32)
    expected = np.zeros((3, 8), np.int32)
    expected[0, :3] = [3, 4, 1]
    expected[1, :2] = [5, 1]
    np.testing.assert_array_equal(out, expected)
    self.assertEqual(scoring.pad_batch([[2] * 9]).shape, (1, 16))
    self.assertEqual(scoring.pad_batch([[2]], length=3).shape, (1, 3))
    with self.assertRaisesRegex(ValueError, "longest 4"):
      scoring.pad_batch([[2] * 4], length=3)
    with self.assertRaisesRegex(ValueError, "cannot pad 2 sequences"):
      scoring.pad_batch([[2], [3]], batch_size=1)


if __name__ == "__main__":
  absltest.main()
