"""Tests for prompt_jax.icl.demo_selection: seeded random draws, KATE kNN.

The kNN index is checked on hand-built 2-D/3-D embeddings whose cosine
neighbours are known: a tie (two train rows pointing the same way), and a
query whose L2-nearest row is not its cosine-nearest one.
"""

from absl.testing import absltest
import numpy as np

from prompt_jax.icl import demo_selection

# Rows 0 and 3 point the same way (a tie for any query); row 2 is long.
TRAIN = np.array([[1.0, 0.0, 0.0],
                  [0.0, 1.0, 0.0],
                  [10.0, 0.0, 1.0],
                  [3.0, 0.0, 0.0],
                  [1.0, 1.0, 0.0]])


class RandomDemonstrationsTest(absltest.TestCase):

  def test_reproducible_distinct_and_seed_dependent(self):
    first = demo_selection.random_demonstrations(16, 4, seed=13)
    np.testing.assert_array_equal(
        first, demo_selection.random_demonstrations(16, 4, seed=13))
    self.assertEqual(first.shape, (4,))
    self.assertLen(set(first.tolist()), 4)
    self.assertTrue(((first >= 0) & (first < 16)).all())
    draws = {tuple(demo_selection.random_demonstrations(16, 4, seed=s))
             for s in (13, 21, 42, 87, 100)}
    self.assertLen(draws, 5)

  def test_k_equal_to_split_is_a_permutation(self):
    self.assertCountEqual(
        demo_selection.random_demonstrations(5, 5, seed=0).tolist(),
        range(5))

  def test_k_larger_than_split_is_a_one_line_error(self):
    with self.assertRaisesRegex(
        ValueError, "task sst2: k=17 .* train split has 16 examples"
    ) as ctx:
      demo_selection.random_demonstrations(16, 17, seed=0, task="sst2")
    self.assertNotIn("\n", str(ctx.exception))


class NearestNeighbourIndexTest(absltest.TestCase):

  def test_cosine_neighbours_of_hand_built_set(self):
    index = demo_selection.NearestNeighbourIndex(TRAIN)
    queries = np.array([[0.0, 2.0, 0.0],   # Row 1 exactly, then row 4.
                        [1.0, 0.9, 0.0]])  # Row 4 (45°) before rows 0/3.
    indices, sims = index.query(queries, k=3)
    np.testing.assert_array_equal(indices, [[1, 4, 0], [4, 0, 3]])
    norm = np.sqrt(1.81)
    np.testing.assert_allclose(
        sims, [[1.0, 1 / np.sqrt(2), 0.0],
               [1.9 / (norm * np.sqrt(2)), 1 / norm, 1 / norm]], atol=1e-12)

  def test_tie_keeps_the_lower_index_first(self):
    index = demo_selection.NearestNeighbourIndex(TRAIN)
    indices, sims = index.query(np.array([[5.0, 0.0, 0.0]]), k=2)
    np.testing.assert_array_equal(indices, [[0, 3]])
    np.testing.assert_array_equal(sims, [[1.0, 1.0]])

  def test_cosine_not_l2(self):
    train = np.array([[10.0, 0.0], [1.0, 1.0]])
    query = np.array([[1.0, 0.2]])
    l2 = np.linalg.norm(train - query, axis=1)  # [9.002, 0.8]
    self.assertEqual(int(np.argmin(l2)), 1)
    indices, sims = demo_selection.NearestNeighbourIndex(train).query(
        query, k=1)
    np.testing.assert_array_equal(indices, [[0]])
    np.testing.assert_allclose(sims, [[1 / np.sqrt(1.04)]], atol=1e-12)

  def test_kate_order_puts_the_most_similar_last(self):
    np.testing.assert_array_equal(
        demo_selection.kate_order([[1, 4, 0], [4, 0, 3]]),
        [[0, 4, 1], [3, 0, 4]])
    np.testing.assert_array_equal(demo_selection.kate_order([2, 7]), [7, 2])

  def test_bad_input_is_a_one_line_error(self):
    index = demo_selection.NearestNeighbourIndex(TRAIN, task="rte")
    cases = [
        (lambda: index.query(TRAIN[:1], k=6),
         "task rte: k=6 neighbours .* holds 5 train examples"),
        (lambda: index.query(TRAIN[:1], k=0), "k=0"),
        (lambda: index.query(np.zeros((1, 3)), k=1),
         "query embeddings row 0 has zero"),
        (lambda: index.query(np.ones((1, 4)), k=1),
         "query width 4 != index width 3"),
        (lambda: demo_selection.NearestNeighbourIndex(
            np.array([[1.0, 0.0], [0.0, 0.0]])), "train_embeddings row 1"),
    ]
    for fn, message in cases:
      with self.assertRaisesRegex(ValueError, message) as ctx:
        fn()
      self.assertNotIn("\n", str(ctx.exception))


if __name__ == "__main__":
  absltest.main()
