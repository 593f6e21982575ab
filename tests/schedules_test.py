"""Learning-rate schedules: hand-computed values under jit, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax import schedules


def _values(schedule, steps):
  """The schedule at `steps`, evaluated as one jitted, vmapped call."""
  return np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps, jnp.int32)))


def test_constant():
  np.testing.assert_allclose(
      _values(schedules.constant(base_lr=0.3), [0, 1, 7, 30_000]),
      [0.3] * 4, rtol=1e-7)


def test_warmup_constant():
  np.testing.assert_allclose(
      _values(schedules.warmup_constant(base_lr=2.0, warmup_steps=4),
              [0, 1, 2, 3, 4, 5, 1000]),
      [0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0], rtol=1e-7)


def test_warmup_cosine():
  schedule = schedules.warmup_cosine(base_lr=1.0, warmup_steps=2,
                                     total_steps=6, end_lr=0.1)
  # Decay over steps 2..6: frac = (s - 2) / 4; 0.1 + 0.45 * (1 + cos(pi frac)).
  # s=3: 0.1 + 0.45 * (1 + 0.70710678) = 0.86819805; s=4: 0.1 + 0.45 = 0.55;
  # s=5: 0.1 + 0.45 * (1 - 0.70710678) = 0.23180195.
  np.testing.assert_allclose(
      _values(schedule, [0, 1, 2, 3, 4, 5, 6, 100]),
      [0.0, 0.5, 1.0, 0.86819805, 0.55, 0.23180195, 0.1, 0.1], rtol=1e-6)


def test_cosine_without_warmup_starts_at_peak():
  schedule = schedules.warmup_cosine(base_lr=0.5, warmup_steps=0,
                                     total_steps=4)
  np.testing.assert_allclose(_values(schedule, [0, 2, 4, 9]),
                             [0.5, 0.25, 0.0, 0.0], atol=1e-7)


def test_rsqrt_is_t5_inverse_square_root():
  # T5 pre-training: base 1.0, warmup 10k -> 0.01 until 10k, then 1/sqrt(s).
  schedule = schedules.rsqrt(base_lr=1.0, warmup_steps=10_000)
  np.testing.assert_allclose(
      _values(schedule, [0, 1, 9_999, 10_000, 40_000, 1_000_000]),
      [0.01, 0.01, 0.01, 0.01, 0.005, 0.001], rtol=1e-6)
  np.testing.assert_allclose(
      _values(schedules.rsqrt(base_lr=3.0, warmup_steps=100), [0, 400]),
      [0.3, 0.15], rtol=1e-6)


@pytest.mark.parametrize("name, kwargs, direct", [
    ("constant", {}, schedules.constant(base_lr=0.7)),
    ("warmup_constant", {"warmup_steps": 3},
     schedules.warmup_constant(base_lr=0.7, warmup_steps=3)),
    ("warmup_cosine", {"warmup_steps": 3, "total_steps": 9},
     schedules.warmup_cosine(base_lr=0.7, warmup_steps=3, total_steps=9)),
    ("warmup_cosine", {"warmup_steps": 3, "total_steps": 9, "end_lr": 0.2},
     schedules.warmup_cosine(base_lr=0.7, warmup_steps=3, total_steps=9,
                             end_lr=0.2)),
    ("rsqrt", {"warmup_steps": 3},
     schedules.rsqrt(base_lr=0.7, warmup_steps=3)),
])
def test_make_schedule_matches_builders(name, kwargs, direct):
  steps = list(range(12))
  np.testing.assert_array_equal(
      _values(schedules.make_schedule(name, base_lr=0.7, **kwargs), steps),
      _values(direct, steps))


@pytest.mark.parametrize("name, kwargs, message", [
    ("cosine", {}, "unknown schedule 'cosine'; expected one of constant"),
    ("warmup_cosine", {"warmup_steps": 2}, "needs total_steps"),
    ("warmup_constant", {}, "'warmup_constant' needs warmup_steps >= 1"),
    ("rsqrt", {}, "'rsqrt' needs warmup_steps >= 1"),
    ("constant", {"warmup_steps": 5}, "'constant' does not use warmup_steps"),
    ("rsqrt", {"warmup_steps": 5, "total_steps": 9},
     "'rsqrt' does not use total_steps"),
    ("warmup_constant", {"warmup_steps": 2, "end_lr": 0.0},
     "does not use end_lr"),
    ("warmup_cosine", {"warmup_steps": 5, "total_steps": 5},
     "total_steps must be >= 6, got 5"),
    ("warmup_constant", {"warmup_steps": 2.5}, "warmup_steps must be an int"),
])
def test_make_schedule_errors(name, kwargs, message):
  with pytest.raises(ValueError, match=message) as err:
    schedules.make_schedule(name, base_lr=0.3, **kwargs)
  assert "\n" not in str(err.value)


@pytest.mark.parametrize("base_lr", [0.0, -1.0, "0.3", True])
def test_bad_base_lr(base_lr):
  with pytest.raises(ValueError, match="base_lr must be"):
    schedules.make_schedule("constant", base_lr=base_lr)
