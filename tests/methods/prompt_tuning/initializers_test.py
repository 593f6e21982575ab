"""Prompt initializers: shapes, exact values, determinism and error messages."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax import types
from prompt_jax.methods.prompt_tuning import initializers
from prompt_jax.methods.prompt_tuning import modules

V, H = 6000, 4  # Larger than the 5,000-token population.


@pytest.fixture(scope="module")
def embedding() -> np.ndarray:
  # Row i starts with i, so a row identifies its token id.
  table = np.random.RandomState(0).normal(size=(V, H)).astype(np.float32)
  table[:, 0] = np.arange(V)
  return table


def _ids_of(rows: np.ndarray) -> np.ndarray:
  return np.asarray(rows)[:, 0].astype(np.int64)


def test_random_uniform_range_shape_determinism():
  init = initializers.random_uniform()
  value = np.asarray(init(jax.random.key(0), (50, 8)))
  assert value.shape == (50, 8) and value.dtype == np.float32
  assert value.min() >= -0.5 and value.max() <= 0.5
  assert value.max() - value.min() > 0.8  # Actually spread over the range.
  np.testing.assert_array_equal(value, init(jax.random.key(0), (50, 8)))
  assert not np.array_equal(value, init(jax.random.key(1), (50, 8)))
  small = np.asarray(initializers.random_uniform(0.01)(jax.random.key(0),
                                                       (5, 3)))
  assert np.abs(small).max() <= 0.01


@pytest.mark.parametrize("scale", [0, -1.0])
def test_random_uniform_rejects_bad_scale(scale):
  with pytest.raises(ValueError, match="scale must be positive"):
    initializers.random_uniform(scale)


def test_sampled_vocab_rows_come_from_first_5000(embedding):
  init = initializers.from_sampled_vocab(embedding)
  value = np.asarray(init(jax.random.key(0), (100, H)))
  ids = _ids_of(value)
  assert value.shape == (100, H)
  assert ids.max() < 5000 and len(set(ids)) == 100  # No replacement.
  np.testing.assert_array_equal(value, embedding[ids])
  np.testing.assert_array_equal(value, init(jax.random.key(0), (100, H)))
  assert not np.array_equal(value, init(jax.random.key(1), (100, H)))


def test_sampled_vocab_small_population(embedding):
  no_repeat = initializers.from_sampled_vocab(embedding, population_size=7)
  ids = _ids_of(no_repeat(jax.random.key(0), (7, H)))
  assert sorted(ids) == list(range(7))  # P == population: a permutation.
  repeat = np.asarray(initializers.from_sampled_vocab(
      embedding, population_size=3)(jax.random.key(0), (20, H)))
  assert set(_ids_of(repeat)) <= {0, 1, 2}  # P > population: replacement.
  np.testing.assert_array_equal(repeat, embedding[_ids_of(repeat)])


def test_sampled_vocab_population_larger_than_vocab():
  table = np.arange(12, dtype=np.float32).reshape(3, 4)
  value = initializers.from_sampled_vocab(table)(jax.random.key(0), (3, 4))
  np.testing.assert_array_equal(np.sort(np.asarray(value)[:, 0]), [0, 4, 8])


def test_sampled_vocab_whole_vocabulary(embedding):
  init = initializers.from_sampled_vocab(embedding, population_size=None)
  ids = _ids_of(init(jax.random.key(0), (300, H)))
  assert ids.max() >= 5000  # 300 draws from 6000 ids reach the tail.


def test_bfloat16_embedding_rows_are_exact():
  table = (np.arange(24, dtype=np.float32).reshape(6, 4) / 8).astype(
      jnp.bfloat16)
  init = initializers.from_class_labels(table, [[1, 2]])
  value = np.asarray(init(jax.random.key(0), (1, 4)))
  assert value.dtype == np.float32
  np.testing.assert_array_equal(
      value[0], (table[1].astype(np.float32) + table[2].astype(np.float32))
      / 2)


def test_sampled_vocab_errors(embedding):
  with pytest.raises(ValueError, match=r"must be a non-empty \[V, H\] array"):
    initializers.from_sampled_vocab(np.zeros((3,)))
  with pytest.raises(ValueError, match="population_size must be >= 1"):
    initializers.from_sampled_vocab(embedding, population_size=0)
  init = initializers.from_sampled_vocab(embedding)
  with pytest.raises(ValueError, match="has width 5 but the embedding has "
                     "width 4"):
    init(jax.random.key(0), (3, 5))
  with pytest.raises(ValueError, match=r"prompt shape must be \(P, H\)"):
    init(jax.random.key(0), (3, 4, 1))


def test_class_labels_rows_are_label_means(embedding):
  labels = [[5], [10, 20], [7, 8, 9]]
  init = initializers.from_class_labels(embedding, labels)
  value = np.asarray(init(jax.random.key(0), (6, H)))
  assert value.shape == (6, H)
  np.testing.assert_array_equal(value[0], embedding[5])
  np.testing.assert_array_equal(value[1], (embedding[10] + embedding[20]) / 2)
  np.testing.assert_array_equal(
      value[2], (embedding[7] + embedding[8] + embedding[9]) / 3)
  fill = value[3:]
  np.testing.assert_array_equal(fill, embedding[_ids_of(fill)])
  assert _ids_of(fill).max() < 5000
  np.testing.assert_array_equal(value, init(jax.random.key(0), (6, H)))


def test_class_labels_custom_fill_and_exact_fit(embedding):
  init = initializers.from_class_labels(
      embedding, [[1], [2]], fill=initializers.random_uniform(1e-3))
  value = np.asarray(init(jax.random.key(0), (4, H)))
  np.testing.assert_array_equal(value[:2], embedding[[1, 2]])
  assert np.abs(value[2:]).max() <= 1e-3
  exact = np.asarray(init(jax.random.key(0), (2, H)))
  np.testing.assert_array_equal(exact, embedding[[1, 2]])


def test_class_labels_errors(embedding):
  init = initializers.from_class_labels(embedding, [[1], [2], [3]])
  with pytest.raises(ValueError, match="from_class_labels: 3 rows do not fit "
                     "a prompt of length 2"):
    init(jax.random.key(0), (2, H))
  with pytest.raises(ValueError, match="label 1 has no token ids"):
    initializers.from_class_labels(embedding, [[1], []])
  with pytest.raises(ValueError, match=r"label 0 has ids \[6000\] outside"):
    initializers.from_class_labels(embedding, [[6000]])
  with pytest.raises(ValueError, match="non-empty sequence"):
    initializers.from_class_labels(embedding, [])
  with pytest.raises(ValueError, match="sequence of int token ids"):
    initializers.from_class_labels(embedding, [[1.5]])


def test_from_text_then_fill(embedding):
  init = initializers.from_text(embedding, [11, 12, 13])
  value = np.asarray(init(jax.random.key(3), (5, H)))
  np.testing.assert_array_equal(value[:3], embedding[[11, 12, 13]])
  np.testing.assert_array_equal(value[3:], embedding[_ids_of(value[3:])])
  with pytest.raises(ValueError, match="3 rows do not fit a prompt of "
                     "length 2"):
    init(jax.random.key(0), (2, H))
  with pytest.raises(ValueError, match="token_ids has no token ids"):
    initializers.from_text(embedding, [])


def test_from_npy_loads_exact_values(tmp_path):
  value = np.random.RandomState(0).normal(size=(3, 5)).astype(np.float32)
  path = tmp_path / "prompt.npy"
  np.save(path, value)
  init = initializers.from_npy(path)
  np.testing.assert_array_equal(init(jax.random.key(0), (3, 5)), value)


def test_from_npy_wrong_shape_message(tmp_path):
  path = tmp_path / "prompt.npy"
  np.save(path, np.zeros((3, 5), np.float32))
  init = initializers.from_npy(path)
  with pytest.raises(ValueError) as e:
    init(jax.random.key(0), (4, 5))
  assert str(e.value) == (f"prompt file {path}: found shape (3, 5), expected "
                          f"the prompt shape (4, 5) (P, H)")


def test_from_npy_bad_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.npy: not found"):
    initializers.from_npy(tmp_path / "missing.npy")
  garbage = tmp_path / "garbage.npy"
  garbage.write_bytes(b"not numpy")
  with pytest.raises(ValueError, match="garbage.npy: not a readable .npy"):
    initializers.from_npy(garbage)
  ints = tmp_path / "ints.npy"
  np.save(ints, np.zeros((2, 2), np.int32))
  with pytest.raises(ValueError, match="ints.npy: prompt dtype must be "
                     "floating point, got int32"):
    initializers.from_npy(ints)
  vector = tmp_path / "vector.npy"
  np.save(vector, np.zeros((4,), np.float32))
  with pytest.raises(ValueError, match=r"vector.npy: prompt must be a \[P, H\] "
                     r"array, got shape \(4,\)"):
    initializers.from_npy(vector)
  nan = tmp_path / "nan.npy"
  np.save(nan, np.full((2, 2), np.nan, np.float32))
  with pytest.raises(ValueError, match="nan.npy: prompt has non-finite"):
    initializers.from_npy(nan)


def test_initializers_run_under_jit(embedding):
  init = initializers.from_class_labels(embedding, [[3, 4]])
  eager = init(jax.random.key(0), (3, H))
  jitted = jax.jit(lambda rng: init(rng, (3, H)))(jax.random.key(0))
  np.testing.assert_array_equal(eager, jitted)


def test_prompt_module_param_axes_and_dtype(embedding):
  module = modules.Prompt(3, H, initializers.from_text(embedding, [9, 8]),
                          param_dtype=jnp.bfloat16)
  variables = module.init(jax.random.key(0))
  spec = flax.linen.get_partition_spec(variables)["params"]["prompt"]
  assert tuple(spec) == (types.PROMPT, types.PROMPT_EMBED)
  prompt = flax.core.meta.unbox(variables)["params"]["prompt"]
  assert prompt.shape == (3, H) and prompt.dtype == jnp.bfloat16
  assert list(variables["params"]) == ["prompt"]
  np.testing.assert_array_equal(
      np.asarray(prompt[:2], np.float32),
      embedding[[9, 8]].astype(jnp.bfloat16).astype(np.float32))
  np.testing.assert_array_equal(module.apply(variables), prompt)


def test_prompt_module_zero_length_and_bad_initializer():
  variables = modules.Prompt(0, 4).init(jax.random.key(0))
  assert flax.core.meta.unbox(variables)["params"]["prompt"].shape == (0, 4)
  bad = modules.Prompt(2, 4, lambda rng, shape: jnp.zeros((3, 4)))
  with pytest.raises(ValueError, match=r"returned shape \(3, 4\), expected "
                     r"\(2, 4\)"):
    bad.init(jax.random.key(0))
