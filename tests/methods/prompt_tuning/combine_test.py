"""Combination functions on hand-built arrays, eager and jitted."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax.methods.prompt_tuning import combine

# x[b, t] = [10 * b + t + 1, -(10 * b + t + 1)]; prompt rows are 100, 200.
B, T, H, P = 3, 4, 2, 2
X = np.stack([np.arange(1, T + 1) + 10 * b for b in range(B)]).astype(
    np.float32)
X = np.stack([X, -X], axis=-1)  # [B, T, H]
PROMPT = np.array([[100, 101], [200, 201]], np.float32)  # [P, H]
MASK = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], bool)  # 4, 2, 0


def _rows(*items):
  """Builds one expected [P+T, H] example from x rows and prompt rows."""
  return np.stack([np.asarray(i, np.float32) for i in items])


@pytest.fixture(params=["eager", "jit"])
def run(request):
  def call(fn, *args):
    fn = jax.jit(fn) if request.param == "jit" else fn
    return jax.tree.map(np.asarray, fn(*args))
  return call


def test_prefix(run):
  x, mask = run(combine.prefix, PROMPT, X, MASK)
  assert x.shape == (B, P + T, H) and mask.dtype == bool
  for b in range(B):
    np.testing.assert_array_equal(x[b], np.concatenate([PROMPT, X[b]]))
    np.testing.assert_array_equal(mask[b], [True, True, *MASK[b]])


def test_suffix_exact_positions(run):
  x, mask = run(combine.suffix, PROMPT, X, MASK)
  p0, p1 = PROMPT
  np.testing.assert_array_equal(x[0], _rows(*X[0], p0, p1))
  np.testing.assert_array_equal(x[1], _rows(X[1, 0], X[1, 1], p0, p1,
                                            X[1, 2], X[1, 3]))
  np.testing.assert_array_equal(x[2], _rows(p0, p1, *X[2]))
  np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 1, 1],
                                       [1, 1, 1, 1, 0, 0],
                                       [1, 1, 0, 0, 0, 0]])


def test_suffix_relative_position_independent_of_padding(run):
  """The same text gets the prompt at the same offset however it is padded."""
  short, short_mask = run(combine.suffix, PROMPT, X[1:2, :2], MASK[1:2, :2])
  long_, long_mask = run(combine.suffix, PROMPT, X[1:2], MASK[1:2])
  np.testing.assert_array_equal(short[0], _rows(*X[1, :2], *PROMPT))
  np.testing.assert_array_equal(long_[0, :P + 2], short[0])
  np.testing.assert_array_equal(short_mask[0], long_mask[0, :P + 2])
  assert not long_mask[0, P + 2:].any()  # Padding stays at the end.


def test_suffix_uses_last_real_token_and_int_masks(run):
  mask = np.array([[1, 0, 1, 0]] * B, np.int32)
  x, new_mask = run(combine.suffix, PROMPT, X, mask)
  assert new_mask.dtype == np.int32
  np.testing.assert_array_equal(new_mask[0], [1, 0, 1, 1, 1, 0])
  np.testing.assert_array_equal(x[0], _rows(*X[0, :3], *PROMPT, X[0, 3]))


def test_per_example_prompts(run):
  prompts = np.stack([PROMPT, PROMPT + 1, PROMPT + 2])  # [B, P, H]
  x, _ = run(combine.prefix, prompts, X, MASK)
  np.testing.assert_array_equal(x[2, :P], PROMPT + 2)
  x, _ = run(combine.suffix, prompts, X, MASK)
  np.testing.assert_array_equal(x[1, 2:4], PROMPT + 1)


@pytest.mark.parametrize("fn", [combine.prefix, combine.suffix])
def test_zero_length_prompt_is_identity(fn, run):
  x, mask = run(fn, np.zeros((0, H), np.float32), X, MASK)
  np.testing.assert_array_equal(x, X)
  np.testing.assert_array_equal(mask, MASK)


@pytest.mark.parametrize("fn", [combine.prefix, combine.suffix])
def test_empty_input_gets_only_the_prompt(fn, run):
  x, mask = run(fn, PROMPT, X[:, :0], MASK[:, :0])
  np.testing.assert_array_equal(x, np.broadcast_to(PROMPT, (B, P, H)))
  np.testing.assert_array_equal(mask, np.ones((B, P), bool))


@pytest.mark.parametrize("fn", [combine.prefix, combine.suffix])
def test_prompt_cast_to_activation_dtype(fn):
  x, _ = fn(jnp.asarray(PROMPT), jnp.asarray(X, jnp.bfloat16), MASK)
  assert x.dtype == jnp.bfloat16


def test_suffix_gradient_reaches_prompt_only_through_prompt_slots():
  def loss(prompt):
    x, _ = combine.suffix(prompt, X, MASK)
    return jnp.sum(x * np.arange(P + T)[None, :, None])
  grad = np.asarray(jax.grad(loss)(jnp.asarray(PROMPT)))
  # Row p sits at position end_b + p; ends are 4, 2, 0.
  expected = [sum(e + p for e in (4, 2, 0)) for p in range(P)]
  np.testing.assert_array_equal(grad, np.repeat(
      np.asarray(expected, np.float32)[:, None], H, axis=1))


@pytest.mark.parametrize("fn", [combine.prefix, combine.suffix])
def test_shape_errors(fn):
  with pytest.raises(ValueError, match="does not fit x"):
    fn(np.zeros((2, 3), np.float32), X, MASK)
  with pytest.raises(ValueError, match="mask .* does not match x"):
    fn(PROMPT, X, MASK[:, :2])
  with pytest.raises(ValueError, match=r"expected x \[B, T, H\]"):
    fn(PROMPT, X[0], MASK)
