"""Optimizer factory: paper Adafactor vs a T5X-formula reference, accumulation,
clipping, schedules, the no-large-state check and bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_jax import optim
from prompt_jax import schedules


def _t5x_adafactor(p, grads, *, lr, decay_exp, wd, first_step, eps=1e-30,
                   clip=1.0, min_dim_to_factor=128):
  """T5X Adafactor (`t5x/adafactor.py`) on one rank-2 param, in float64.

  Written from the algorithm, independently of optax: decay 1 - t**-decay_exp
  at t = step + 1, factored iff the smaller dim is >= min_dim_to_factor (row
  stats over the largest dim, column stats over the other), update clipping
  by RMS, decoupled weight decay not scaled by lr, no parameter scaling.
  """
  p = np.asarray(p, np.float64)
  small, big = np.argsort(p.shape)
  factored = p.shape[small] >= min_dim_to_factor
  v_row = np.zeros(p.shape[small])
  v_col = np.zeros(p.shape[big])
  v = np.zeros(p.shape)
  trajectory = []
  for k, g in enumerate(grads):
    g = np.asarray(g, np.float64)
    # T5X evaluates the decay in float32 (which matters near t = 1.1M, where
    # 1 - decay ~ 1.5e-5 keeps only ~3 significant digits).
    t = np.float32(first_step + k + 1)
    decay = float(np.float32(1.0) - t ** np.float32(-decay_exp))
    g2 = g * g + eps
    if factored:
      v_row = decay * v_row + (1 - decay) * g2.mean(axis=big)
      v_col = decay * v_col + (1 - decay) * g2.mean(axis=small)
      v_hat = np.expand_dims(v_row / v_row.mean(), big) * np.expand_dims(
          v_col, small)
    else:
      v = decay * v + (1 - decay) * g2
      v_hat = v
    y = g / np.sqrt(v_hat)
    y /= max(1.0, np.sqrt(np.mean(y * y)) / clip)
    p = (1.0 - wd) * p - lr * y
    trajectory.append(p)
  return trajectory


def _run(opt, params, grads_seq):
  """Applies `opt` to each gradient in turn under jit; returns per-step
  (params, updates) lists and the final optimizer state."""

  @jax.jit
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates

  state = opt.init(params)
  all_params, all_updates = [], []
  for grads in grads_seq:
    params, state, updates = step(params, state, grads)
    all_params.append(params)
    all_updates.append(updates)
  return all_params, all_updates, state


def _grads(shape, scales, seed=0):
  rng = np.random.RandomState(seed)
  return [np.float32(s) * rng.randn(*shape).astype(np.float32) for s in scales]


def test_paper_first_update_is_hand_computed():
  p = np.array([[0.5, -1.0, 2.0], [0.0, 3.0, -0.25]], np.float32)
  g = np.array([[1e-3, -2.0, 5.0], [-0.5, 7e-2, 4.0]], np.float32)
  # Step 1: v = (1 - decay) g^2 so y = g / |g| / sqrt(1 - decay); its RMS is
  # >= 1 and update clipping brings it to sign(g). Then lr 0.3, wd 1e-5.
  expected = (1 - 1e-5) * p - 0.3 * np.sign(g)
  for steps in (0, optim.T5_1_1_LM100K_STEPS):
    (new_p,), _, _ = _run(optim.adafactor_paper(pretraining_steps=steps),
                          p, [g])
    np.testing.assert_allclose(new_p, expected, rtol=1e-6, atol=1e-6)


def test_paper_decay_rate_in_second_moment():
  g1 = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
  g2 = np.array([[4.0, 1.0], [-1.0, 0.0]], np.float32)
  p = np.zeros((2, 2), np.float32)
  _, _, state = _run(optim.adafactor_paper(pretraining_steps=0), p, [g1, g2])
  # Step 2 (t=2): decay = 1 - 2**-0.8 = 0.42565082; v = decay g1^2 + (1 -
  # decay) g2^2 (+eps); with exponent 0.5 the decay would be 0.29289322.
  v = optax.tree_utils.tree_get(state, "v")
  np.testing.assert_allclose(v, 0.42565082 * g1**2 + 0.57434918 * g2**2,
                             rtol=1e-6)
  # From the released checkpoint's step the first decay is already ~1.
  _, _, state = _run(optim.adafactor_paper(), p, [g1])
  v = optax.tree_utils.tree_get(state, "v")
  np.testing.assert_allclose(v, 1_100_001**-0.8 * g1**2 + 1e-35, rtol=1e-2)


@pytest.mark.parametrize("shape", [(5, 12), (128, 136)],
                         ids=["unfactored", "factored"])
@pytest.mark.parametrize("pretraining_steps", [0, 1_100_000])
def test_paper_matches_t5x_reference(shape, pretraining_steps):
  rng = np.random.RandomState(1)
  p0 = rng.uniform(-0.5, 0.5, shape).astype(np.float32)
  # Scales chosen so update clipping is both hit and missed (when
  # pretraining_steps=0).
  grads = _grads(shape, [1.0, 10.0, 0.1, 1.0, 0.01])
  got, _, _ = _run(optim.adafactor_paper(pretraining_steps=pretraining_steps),
                   p0, grads)
  want = _t5x_adafactor(p0, grads, lr=0.3, decay_exp=0.8, wd=1e-5,
                        first_step=pretraining_steps)
  for step, (g, w) in enumerate(zip(got, want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-6,
                               err_msg=f"step {step}")


def test_zero_gradient_shows_weight_decay_only():
  p = np.array([[1.0, -2.0, 0.5]], np.float32)
  (new_p,), _, _ = _run(optim.adafactor_paper(), p, [np.zeros_like(p)])
  # y = 0, so p <- (1 - 1e-5) p; compare the step itself (a relative change
  # of 1e-5 is invisible to a plain allclose on the params).
  np.testing.assert_allclose(new_p - p, -1e-5 * p, rtol=1e-2)


@pytest.mark.parametrize("prompt_length, factored", [(100, False),
                                                      (150, True)])
def test_prompt_factoring_follows_t5x_heuristic(prompt_length, factored):
  params = {"prompt": jax.ShapeDtypeStruct((prompt_length, 4096),
                                           jnp.float32)}
  state = jax.eval_shape(optim.adafactor_paper().init, params)
  fstate = state[0]
  assert isinstance(fstate, optax.FactoredState)
  if factored:
    assert fstate.v_row["prompt"].shape == (prompt_length,)
    assert fstate.v_col["prompt"].shape == (4096,)
    assert fstate.v["prompt"].shape == (1,)
  else:
    assert fstate.v["prompt"].shape == (prompt_length, 4096)
    assert fstate.v_row["prompt"].shape == (1,)


def test_never_factored_when_asked():
  opt = optim.make_optimizer(name="adafactor", learning_rate=0.3,
                             factored=False)
  params = {"prompt": jax.ShapeDtypeStruct((150, 4096), jnp.float32)}
  assert jax.eval_shape(opt.init, params)[0].v["prompt"].shape == (150, 4096)


def test_adamw_first_step_hand_computed():
  p = {"w": np.array([1.0, -2.0, 0.5], np.float32)}
  g = {"w": np.array([0.2, -3.0, 0.0], np.float32)}
  opt = optim.make_optimizer(name="adamw", learning_rate=0.1,
                             weight_decay=0.01)
  (new_p,), _, _ = _run(opt, p, [g])
  # Bias-corrected m/sqrt(v) = g/|g| (0 for g=0); decay scaled by lr.
  expected = p["w"] - 0.1 * (np.array([1.0, -1.0, 0.0]) + 0.01 * p["w"])
  np.testing.assert_allclose(new_p["w"], expected, rtol=1e-6)


def _accumulation_run(opt_fn, k):
  shape = (3, 8)
  p0 = np.random.RandomState(2).randn(*shape).astype(np.float32)
  micro = _grads(shape, [1.0, 3.0, 0.5, 2.0, 0.1, 1.0, 4.0, 0.2], seed=3)
  got, updates, _ = _run(opt_fn(accumulation_steps=k), p0, micro)
  means = [np.mean(micro[i:i + k], axis=0) for i in range(0, len(micro), k)]
  want, _, _ = _run(opt_fn(accumulation_steps=1), p0, means)
  return p0, got, updates, want


@pytest.mark.parametrize("opt_fn", [
    functools.partial(optim.adafactor_paper, pretraining_steps=0),
    functools.partial(optim.make_optimizer, name="adamw", learning_rate=0.1,
                      weight_decay=0.1),
], ids=["adafactor_paper", "adamw"])
def test_accumulation_moves_params_every_kth_step_by_mean_gradient(opt_fn):
  p0, got, updates, want = _accumulation_run(opt_fn, k=4)
  previous = p0
  for i, (params, update) in enumerate(zip(got, updates)):
    if (i + 1) % 4:
      np.testing.assert_array_equal(update, np.zeros_like(update))
      np.testing.assert_array_equal(params, previous)
    else:
      assert np.all(params != previous), f"step {i} did not update"
      np.testing.assert_allclose(params, want[i // 4], rtol=1e-5, atol=1e-6)
    previous = params


def test_clipping_caps_the_update_norm():
  opt = optim.make_optimizer(name="sgd", learning_rate=1.0, clip_norm=1.0)
  params = {"a": np.zeros(2, np.float32), "b": np.zeros(1, np.float32)}
  big = {"a": np.array([3.0, 0.0], np.float32),
         "b": np.array([4.0], np.float32)}  # global norm 5
  small = {"a": np.array([0.3, 0.0], np.float32),
           "b": np.array([-0.4], np.float32)}  # global norm 0.5
  _, (up_big, up_small), _ = _run(opt, params, [big, small])
  np.testing.assert_allclose(up_big["a"], [-0.6, 0.0], rtol=1e-6)
  np.testing.assert_allclose(up_big["b"], [-0.8], rtol=1e-6)
  np.testing.assert_allclose(up_small["a"], [-0.3, 0.0], rtol=1e-6)
  np.testing.assert_allclose(up_small["b"], [0.4], rtol=1e-6)


def test_clipping_acts_on_accumulated_mean_gradient():
  opt = optim.make_optimizer(name="sgd", learning_rate=1.0, clip_norm=1.0,
                             accumulation_steps=2)
  params = np.zeros(2, np.float32)
  micro = [np.array([3.0, 0.0], np.float32), np.array([0.0, 3.0], np.float32)]
  got, _, _ = _run(opt, params, micro)
  # Mean [1.5, 1.5] clipped to norm 1; per-microbatch clipping would give
  # [-0.5, -0.5].
  np.testing.assert_allclose(got[-1], [-0.70710678, -0.70710678], rtol=1e-6)


def test_adamw_clipping_equals_prescaled_gradient():
  g = np.array([6.0, -8.0], np.float32)  # norm 10
  p = np.array([1.0, 1.0], np.float32)
  kw = dict(name="adamw", learning_rate=0.1, eps=0.5)  # eps exposes scale
  (clipped,), _, _ = _run(optim.make_optimizer(clip_norm=1.0, **kw), p, [g])
  (scaled,), _, _ = _run(optim.make_optimizer(**kw), p, [g / 10])
  (raw,), _, _ = _run(optim.make_optimizer(**kw), p, [g])
  np.testing.assert_allclose(clipped, scaled, rtol=1e-6)
  assert not np.allclose(clipped, raw)


def test_schedule_counts_optimizer_updates_not_microbatches():
  lr = schedules.make_schedule("warmup_constant", base_lr=1.0, warmup_steps=4)
  g = np.ones(1, np.float32)
  _, updates, _ = _run(
      optim.make_optimizer(name="sgd", learning_rate=lr), np.zeros(1), [g] * 6)
  np.testing.assert_allclose(np.concatenate(updates),
                             [0.0, -0.25, -0.5, -0.75, -1.0, -1.0], atol=1e-7)
  _, updates, _ = _run(
      optim.make_optimizer(name="sgd", learning_rate=lr, accumulation_steps=2),
      np.zeros(1), [g] * 6)
  np.testing.assert_allclose(np.concatenate(updates),
                             [0.0, 0.0, 0.0, -0.25, 0.0, -0.5], atol=1e-7)


def test_assert_no_large_leaves():
  prompt = {"prompt": jax.ShapeDtypeStruct((3, 16), jnp.float32)}
  full = {**prompt, "backbone": {"wi": jax.ShapeDtypeStruct((64, 256),
                                                            jnp.float32)}}
  for opt in (optim.adafactor_paper(accumulation_steps=2),
              optim.make_optimizer(name="adamw", learning_rate=1e-3)):
    optim.assert_no_large_leaves(jax.eval_shape(opt.init, prompt), 3 * 16)
    with pytest.raises(ValueError, match=r"\['backbone'\]\['wi'\] \[64, 256\]"
                       ) as err:
      optim.assert_no_large_leaves(jax.eval_shape(opt.init, full), 3 * 16)
    assert "trainable params only" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "adam"}, "unknown optimizer 'adam'; expected one of adafactor"),
    ({"name": "adamw", "decay_rate": 0.8},
     "unknown option\\(s\\) decay_rate for 'adamw'; allowed: b1"),
    ({"beta1": 0.9}, "unknown option\\(s\\) beta1 for 'adafactor'"),
    ({"learning_rate": -0.1}, "learning_rate must be > 0"),
    ({"learning_rate": "0.3"}, "learning_rate must be a number"),
    ({"weight_decay": -1e-5}, "weight_decay must be >= 0"),
    ({"clip_norm": 0.0}, "clip_norm must be > 0"),
    ({"accumulation_steps": 0}, "accumulation_steps must be an int >= 1"),
    ({"accumulation_steps": 2.0}, "accumulation_steps must be an int >= 1"),
])
def test_make_optimizer_errors(kwargs, message):
  kwargs = {"learning_rate": 0.3, **kwargs}
  with pytest.raises(ValueError, match=message) as err:
    optim.make_optimizer(**kwargs)
  assert "\n" not in str(err.value)


def test_adafactor_paper_rejects_negative_pretraining_steps():
  with pytest.raises(ValueError, match="pretraining_steps must be an int >= 0"):
    optim.adafactor_paper(pretraining_steps=-1)
