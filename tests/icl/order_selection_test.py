"""Tests for prompt_jax.icl.order_selection: GlobalE/LocalE by hand, order
candidates, and probing-set parsing with a fake `generate_fn`.
"""

import math

from absl.testing import absltest
import numpy as np

from prompt_jax.icl import order_selection

# Three orders, two probes, two labels.
#   order 0: predictions (0, 0) -> GlobalE 0; confident -> low LocalE.
#   order 1: predictions (0, 1) -> GlobalE ln 2.
#   order 2: uniform, argmax ties -> label 0 twice: GlobalE 0, LocalE ln 2.
PROBS = np.array([[[0.9, 0.1], [0.8, 0.2]],
                  [[0.6, 0.4], [0.3, 0.7]],
                  [[0.5, 0.5], [0.5, 0.5]]])


def _h(*p: float) -> float:
  return -sum(x * math.log(x) for x in p)


TEMPLATE = order_selection.ProbeTemplate(
    input_prefix="Review: ", output_separator="\nSentiment: ",
    example_separator="\n\n")


class EntropyTest(absltest.TestCase):

  def test_global_entropy_by_hand(self):
    np.testing.assert_allclose(order_selection.global_entropy(PROBS),
                               [0.0, math.log(2), 0.0], atol=1e-12)

  def test_global_entropy_of_a_three_label_histogram(self):
    # Predictions (0, 0, 2, 1): histogram [1/2, 1/4, 1/4].
    probs = np.array([[[0.7, 0.2, 0.1], [0.5, 0.4, 0.1],
                       [0.1, 0.2, 0.7], [0.3, 0.6, 0.1]]])
    np.testing.assert_allclose(order_selection.global_entropy(probs),
                               [_h(0.5, 0.25, 0.25)], rtol=1e-12)

  def test_local_entropy_by_hand(self):
    np.testing.assert_allclose(
        order_selection.local_entropy(PROBS),
        [(_h(0.9, 0.1) + _h(0.8, 0.2)) / 2,
         (_h(0.6, 0.4) + _h(0.3, 0.7)) / 2,
         math.log(2)], rtol=1e-12)

  def test_select_orders(self):
    np.testing.assert_array_equal(
        order_selection.select_orders(PROBS, method="globale"), [1])
    np.testing.assert_array_equal(
        order_selection.select_orders(PROBS, method="locale"), [2])
    # GlobalE ties orders 0 and 2 at 0: the lower index comes first.
    np.testing.assert_array_equal(
        order_selection.select_orders(PROBS, method="globale", top=3),
        [1, 0, 2])
    np.testing.assert_array_equal(
        order_selection.select_orders(PROBS, method="locale", top=3),
        [2, 1, 0])

  def test_bad_input_is_a_one_line_error(self):
    cases = [
        (lambda: order_selection.select_orders(PROBS, method="mdl"),
         "method must be one of"),
        (lambda: order_selection.select_orders(PROBS, top=4), "top=4"),
        (lambda: order_selection.global_entropy(PROBS[0]), r"\[num_perms"),
        (lambda: order_selection.local_entropy(PROBS * 2),
         r"probs\[0, 0\] is not a distribution"),
    ]
    for fn, message in cases:
      with self.assertRaisesRegex(ValueError, message) as ctx:
        fn()
      self.assertNotIn("\n", str(ctx.exception))


class CandidatePermutationsTest(absltest.TestCase):

  def test_all_permutations_when_they_fit(self):
    perms = order_selection.candidate_permutations(3, num=6, seed=0)
    np.testing.assert_array_equal(
        perms, [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1],
                [2, 1, 0]])

  def test_seeded_distinct_subset_otherwise(self):
    perms = order_selection.candidate_permutations(4, num=20, seed=13)
    self.assertEqual(perms.shape, (20, 4))
    self.assertLen({tuple(p) for p in perms.tolist()}, 20)
    for p in perms:
      self.assertCountEqual(p.tolist(), range(4))
    np.testing.assert_array_equal(
        perms, order_selection.candidate_permutations(4, num=20, seed=13))
    self.assertFalse(np.array_equal(
        perms, order_selection.candidate_permutations(4, num=20, seed=21)))

  def test_bad_k(self):
    with self.assertRaisesRegex(ValueError, "k=0"):
      order_selection.candidate_permutations(0, num=3, seed=0)


class ProbingSetTest(absltest.TestCase):

  def test_format_context(self):
    context = order_selection.format_context(
        [("good", "positive"), ("bad", "negative")], (1, 0), TEMPLATE)
    self.assertEqual(context, "Review: bad\nSentiment: negative\n\n"
                              "Review: good\nSentiment: positive\n\n")
    with self.assertRaisesRegex(ValueError, "order \\[0, 0\\] is not a perm"):
      order_selection.format_context([("a", "b"), ("c", "d")], (0, 0),
                                     TEMPLATE)

  def test_parses_generations_and_counts_drops(self):
    demos = [("good", "positive"), ("bad", "negative")]
    contexts = [order_selection.format_context(demos, order, TEMPLATE)
                for order in ((0, 1), (1, 0))]
    generations = {
        contexts[0]: ("Review: a fine film\nSentiment: positive\n\n"
                      "Review: \nSentiment: negative\n\n"  # Empty input.
                      "Review: dull plot\nSentiment: neg"),
        contexts[1]: ("  Review: loud, long\nSentiment: negative\n\n\n\n"
                      "Review: cut off mid-sent"),  # No output separator.
    }
    seen = []

    def generate_fn(context: str) -> str:
      seen.append(context)
      return generations[context]

    probing = order_selection.probing_set_from_generations(
        contexts, generate_fn, TEMPLATE)
    self.assertEqual(seen, contexts)
    self.assertEqual(probing.inputs,
                     ("a fine film", "dull plot", "loud, long"))
    self.assertEqual(probing.num_empty, 1)
    self.assertEqual(probing.num_incomplete, 1)

  def test_samples_per_context(self):
    calls = []
    order_selection.probing_set_from_generations(
        ["c"], lambda c: calls.append(c) or "x\nSentiment: y", TEMPLATE,
        samples_per_context=3)
    self.assertEqual(calls, ["c", "c", "c"])

  def test_nothing_parsed_is_a_one_line_error(self):
    with self.assertRaisesRegex(
        ValueError, r"no probe input parsed from 2 generations \(1 empty, "
        r"1 without"
    ) as ctx:
      order_selection.probing_set_from_generations(
          ["a", "b"], {"a": "Review: \nSentiment: x", "b": "???"}.get,
          TEMPLATE)
    self.assertNotIn("\n", str(ctx.exception))

  def test_indistinct_separators_rejected(self):
    with self.assertRaisesRegex(ValueError, "must be non-empty and differ"):
      order_selection.ProbeTemplate("", " ", " ")


if __name__ == "__main__":
  absltest.main()
