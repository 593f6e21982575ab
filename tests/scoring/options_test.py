"""option_scoring: batched rank classification equals per-row scoring.

Every path (single-token options in one pass, multi-token options, a shared
context, a soft prompt, rows of mixed lengths and a partial last batch) must
give the scores of `TunedModel.score_batch` on the row written out in full:
[context, input] then the option, for a decoder-only and an encoder-decoder
(T5: the context is prepended to the encoder input, no cache).
"""

import functools

import jax
import numpy as np
import pytest

from prompt_jax import partitioning
from prompt_jax import testing
from prompt_jax.scoring import options as option_scoring
from prompt_jax.testing import llama as decoder_testing
from prompt_jax.methods.prompt_tuning import method as prompt_tuning_lib

CFG = decoder_testing.tiny_decoder_config(num_layers=2)
T5_CFG = testing.tiny_t5_config()


@functools.partial(jax.jit, static_argnums=0)
def _score_one(model, trainable, frozen, inputs, target):
  return model.score_batch(trainable, frozen, inputs, target)[0][0]


def _reference(model, trainable, frozen, row, option):
  """One row scored alone, padded to fixed shapes (0 is padding and is
  masked), so every reference call reuses one compiled program."""
  inputs = np.zeros((1, 64), np.int32)
  target = np.zeros((1, 32), np.int32)
  inputs[0, :len(row)], target[0, :len(option)] = row, option
  return float(_score_one(model, trainable, frozen, inputs, target))


@pytest.mark.parametrize("options,context,with_prompt", [
    ([[10], [11], [12]], [], False),
    ([[10], [11]], [7, 8, 9, 30], False),
    ([[10, 20], [11]], [7, 8, 9], True),
    ([[10], [11]], [], True),
])
def test_scores_equal_per_row_reference(options, context, with_prompt):
  model = prompt_tuning_lib.decoder_model(CFG, 3)
  frozen = decoder_testing.random_params(CFG, seed=0)
  trainable = model.init_trainable(jax.random.key(1)) if with_prompt else None
  rng = np.random.RandomState(0)
  rows = [list(rng.randint(3, CFG.vocab_size, rng.randint(1, 20)))
          for _ in range(7)]
  got = option_scoring.score_options(model, trainable, frozen, inputs=rows,
                                     options=options, context=context,
                                     batch_size=4)
  want = np.array([[_reference(model, trainable, frozen, context + r, o)
                    for o in options] for r in rows])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  labels = want.argmax(axis=1)
  assert option_scoring.accuracy(got, labels) == 100.0


@pytest.mark.parametrize("with_prompt,bucket", [(False, 16), (True, 64)])
def test_score_pairs_equal_per_pair_reference(with_prompt, bucket):
  model = prompt_tuning_lib.decoder_model(CFG, 3)
  frozen = decoder_testing.random_params(CFG, seed=0)
  trainable = model.init_trainable(jax.random.key(1)) if with_prompt else None
  rng = np.random.RandomState(1)
  inputs = [list(rng.randint(3, CFG.vocab_size, rng.randint(1, 40)))
            for _ in range(9)]
  targets = [list(rng.randint(3, CFG.vocab_size, rng.randint(1, 20)))
             for _ in range(9)]
  got = option_scoring.score_pairs(model, trainable, frozen, inputs=inputs,
                                   targets=targets, batch_size=4,
                                   bucket=bucket)
  want = [_reference(model, trainable, frozen, i, t)
          for i, t in zip(inputs, targets)]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="at least one token"):
    option_scoring.score_pairs(model, None, frozen, inputs=[[3]],
                               targets=[[]])


def test_max_input_length_keeps_the_end():
  model = prompt_tuning_lib.decoder_model(CFG, 3)
  frozen = decoder_testing.random_params(CFG, seed=0)
  row = list(range(3, 40))
  got = option_scoring.score_options(model, None, frozen, inputs=[row],
                                     options=[[10], [11]],
                                     max_input_length=5)
  want = option_scoring.score_options(model, None, frozen, inputs=[row[-5:]],
                                      options=[[10], [11]])
  np.testing.assert_array_equal(got, want)


def test_bad_options_and_label_counts_are_one_line():
  model = prompt_tuning_lib.decoder_model(CFG, 3)
  frozen = decoder_testing.random_params(CFG, seed=0)
  with pytest.raises(ValueError, match="at least one token"):
    option_scoring.score_options(model, None, frozen, inputs=[[5]],
                                 options=[[10], []])
  with pytest.raises(ValueError, match="2 score rows for 3 labels"):
    option_scoring.accuracy(np.zeros((2, 2)), [0, 1, 1])


@pytest.fixture(scope="module")
def t5_model_and_params():
  model = prompt_tuning_lib.t5_model(T5_CFG, 3)
  mesh = partitioning.make_mesh(1, 1, jax.devices()[:1])
  frozen = partitioning.init_params(
      model.module, jax.random.key(0), mesh,
      partitioning.standard_logical_axis_rules("model"))
  return model, frozen


@pytest.mark.parametrize("options,context,with_prompt", [
    ([[10], [11], [12]], [], False),
    ([[10], [11]], [7, 8, 9, 30], True),
    ([[10, 20], [11]], [7, 8, 9], False),
    ([[10, 20, 5], [11]], [], True),
])
def test_t5_scores_equal_score_batch_on_context_plus_input(
    t5_model_and_params, options, context, with_prompt):
  model, frozen = t5_model_and_params
  trainable = model.init_trainable(jax.random.key(1)) if with_prompt else None
  rng = np.random.RandomState(2)
  rows = [list(rng.randint(2, T5_CFG.vocab_size, rng.randint(1, 20)))
          for _ in range(7)]
  got = option_scoring.score_options(model, trainable, frozen, inputs=rows,
                                     options=options, context=context,
                                     batch_size=4)
  want = np.array([[_reference(model, trainable, frozen, context + r, o)
                    for o in options] for r in rows])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  if context:  # The context is read: scores without it differ.
    bare = option_scoring.score_options(model, trainable, frozen,
                                        inputs=rows, options=options,
                                        batch_size=4)
    assert np.abs(bare - got).max() > 1e-3


def test_t5_context_goes_into_the_rows_not_a_cache(t5_model_and_params):
  model, frozen = t5_model_and_params
  cache, rows = option_scoring.apply_context(model, None, frozen, [7, 8],
                                             [[3], [4, 5]])
  assert cache is None and rows == [[7, 8, 3], [7, 8, 4, 5]]
  with pytest.raises(ValueError, match="a context cache is decoder-only"):
    option_scoring.encode_shared_context(model, None, frozen, [7, 8])
