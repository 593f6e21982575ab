"""`MixtureBatches`: seqio's prefix-LM layout, mixing rates, resumption.

  pytest tests/data/array_batches_test.py -q

The layout values are seqio's `PrefixLMFeatureConverter(pack=False,
loss_on_targets_only=True)` output for the same examples (its docstring's
Example 2, and an empty-inputs example checked against seqio 0.0.20).
"""

import numpy as np
import pytest

from prompt_jax.data import array_batches
from prompt_jax.data.array_batches import MixtureBatches

# Task "a": seqio's docstring example; task "b": empty inputs.
TINY = {"a": [([9, 4, 6, 1], [3, 9, 1])], "b": [([], [5, 7])]}
WANT_ROWS = {  # task -> (target, input, loss weights, causal attention)
    "a": ([9, 4, 6, 1, 3, 9, 1, 0, 0], [0, 9, 4, 6, 1, 3, 9, 1, 0],
          [0, 0, 0, 0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0, 0]),
    "b": ([5, 7, 0, 0, 0, 0, 0, 0, 0], [0, 5, 7, 0, 0, 0, 0, 0, 0],
          [1, 1, 0, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0, 0]),
}
KEYS = ("decoder_target_tokens", "decoder_input_tokens",
        "decoder_loss_weights", "decoder_causal_attention")


def _tasks(sizes: dict[str, int]) -> dict[str, list]:
  """Task t's example i is ([i + 1, code(t)], [7]) (ids say where it came
  from)."""
  return {name: [([i + 1, code + 100], [7]) for i in range(n)]
          for code, (name, n) in enumerate(sorted(sizes.items()))}


def test_tiny_batch_has_seqio_prefix_lm_layout():
  batches = MixtureBatches(TINY, batch_size=6, max_length=9, seed=3)
  rows = [batches.task_names[t] for t, _ in batches.draw(0)]
  assert set(rows) == {"a", "b"}  # The seed draws both tasks.
  batch = next(batches)
  assert sorted(batch) == sorted(KEYS)
  for index, key in enumerate(KEYS):
    want = np.array([WANT_ROWS[task][index] for task in rows], np.int32)
    assert batch[key].dtype == np.int32
    np.testing.assert_array_equal(batch[key], want, err_msg=key)


def test_id_zero_is_a_real_token_not_padding():
  batch = array_batches.layout_prefix_lm(
      [(np.array([0, 4], np.int32), np.array([0, 2], np.int32))], 6)
  np.testing.assert_array_equal(batch["decoder_loss_weights"],
                                [[0, 0, 1, 1, 0, 0]])
  np.testing.assert_array_equal(batch["decoder_causal_attention"],
                                [[1, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(batch["decoder_input_tokens"],
                                [[0, 0, 4, 0, 2, 0]])


def test_same_seed_same_stream_and_resume_yields_the_rest():
  tasks = _tasks({"x": 7, "y": 50, "z": 3})
  fresh = MixtureBatches(tasks, batch_size=5, max_length=4, seed=11)
  stream = [next(fresh) for _ in range(6)]
  assert fresh.position == 6
  again = MixtureBatches(dict(reversed(tasks.items())), batch_size=5,
                         max_length=4, seed=11)  # Mapping order is ignored.
  for want, got in zip(stream, [next(again) for _ in range(6)]):
    np.testing.assert_array_equal(want["decoder_target_tokens"],
                                  got["decoder_target_tokens"])
  resumed = MixtureBatches(tasks, batch_size=5, max_length=4, seed=11,
                           start_position=3)
  assert resumed.position == 3
  for want in stream[3:]:
    got = next(resumed)
    for key in KEYS:
      np.testing.assert_array_equal(want[key], got[key], err_msg=key)
  assert resumed.position == 6
  other = MixtureBatches(tasks, batch_size=5, max_length=4, seed=12)
  assert not all(np.array_equal(want["decoder_target_tokens"],
                                next(other)["decoder_target_tokens"])
                 for want in stream)
  consecutive = [b["decoder_target_tokens"] for b in stream]
  assert not np.array_equal(consecutive[0], consecutive[1])


def test_rates_are_capped_example_counts_and_match_draw_frequencies():
  tasks = _tasks({"big": 1000, "mid": 100, "small": 10})
  batches = MixtureBatches(tasks, batch_size=32, max_length=4, cap=200,
                           seed=0)
  assert batches.num_examples == {"big": 1000, "mid": 100, "small": 10}
  assert batches.rates == {"big": 200, "mid": 100, "small": 10}
  want = {"big": 200 / 310, "mid": 100 / 310, "small": 10 / 310}
  assert batches.probabilities == pytest.approx(want)
  counts = {name: 0 for name in want}
  big_examples = set()
  for position in range(400):  # 12,800 rows.
    batch = batches.batch_at(position)
    code = batch["decoder_target_tokens"][:, 1] - 100
    for task, index in zip(code, batch["decoder_target_tokens"][:, 0] - 1):
      counts[batches.task_names[task]] += 1
      if batches.task_names[task] == "big":
        big_examples.add(int(index))
  total = sum(counts.values())
  for name, p in want.items():
    assert abs(counts[name] / total - p) < 0.015, (name, counts)
  # The cap scales the rate only: every example of "big" can be drawn.
  assert max(big_examples) > 900 and len(big_examples) > 950
  uncapped = MixtureBatches(tasks, batch_size=1, max_length=4)
  assert uncapped.rates == {"big": 1000, "mid": 100, "small": 10}


def test_trim_to_multiple_cuts_trailing_padding():
  tasks = {"t": [([3, 4, 5], [6]), ([3], [6, 7])]}
  full = MixtureBatches(tasks, batch_size=4, max_length=32, seed=1)
  trimmed = MixtureBatches(tasks, batch_size=4, max_length=32, seed=1,
                           trim_to_multiple=3)
  want = full.batch_at(0)
  longest = int(np.max(np.flatnonzero(want["decoder_loss_weights"].any(0))))
  assert longest == 3  # Both examples use 4 slots.
  got = next(trimmed)
  for key in KEYS:
    assert got[key].shape == (4, 6), key  # 4 slots, up to a multiple of 3.
    np.testing.assert_array_equal(got[key], want[key][:, :6], err_msg=key)
  assert full.max_target_length == 2


@pytest.mark.parametrize("tasks, kwargs, message", [
    ({"a": [([1, 2], [3])], "long": [([1], [2]), ([1, 2, 3], [4, 5])]},
     {}, r"task 'long' example 1 has 3 input \+ 2 target tokens = 5 > "
         r"max_length=4"),
    ({"a": [([1], [2]), ([1, 2], [])]}, {},
     "task 'a' example 1 has empty targets"),
    ({"a": [([1], [2])], "empty": []}, {}, "task 'empty' has no examples"),
    ({}, {}, "no tasks given"),
    (TINY, {"batch_size": 0}, "batch_size must be > 0, got 0"),
    (TINY, {"cap": 0}, "cap must be > 0, got 0"),
    (TINY, {"max_length": 0}, "max_length must be > 0, got 0"),
    (TINY, {"trim_to_multiple": -8}, "trim_to_multiple must be > 0, got -8"),
    (TINY, {"start_position": -1},
     "start_position and seed must be >= 0, got -1 and 0"),
])
def test_bad_input_is_a_one_line_error(tasks, kwargs, message):
  args = {"batch_size": 2, "max_length": 4, **kwargs}
  with pytest.raises(ValueError, match=message) as error:
    MixtureBatches(tasks, **args)
  assert "\n" not in str(error.value)
