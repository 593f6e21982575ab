"""Choosing which train examples become the k demonstrations.

Two strategies, both returning indices into a task's train split:

  random   `random_demonstrations(num_train, k, seed)`: k distinct indices
           from a seeded numpy Generator, the same for every query (as
           MetaICL's per-seed k-shot sets).
  kNN      KATE (Liu et al. 2022, "What Makes Good In-Context Examples for
           GPT-3?"): per query, the k train examples whose sentence
           embeddings (`prompt_jax.icl.embeddings`) are most cosine-similar.
           `NearestNeighbourIndex` L2-normalises the train embeddings once
           per task; each `query` is then one [Q, H] x [H, N] product.

Order: `query` returns the most similar first. KATE's default places the
most similar demonstration closest to the query, i.e. LAST in the context
("reversed" order in the paper); `kate_order` performs that reversal.

Worked example (train embeddings in 2-D):

  >>> index = NearestNeighbourIndex(np.array([[1., 0.], [0., 1.], [1., 1.]]))
  >>> indices, sims = index.query(np.array([[1., 0.1]]), k=2)
  >>> indices                        # [[0, 2]]: cos 0.995, then 0.774
  >>> kate_order(indices)            # [[2, 0]]: most similar last
  >>> random_demonstrations(num_train=16, k=4, seed=13)   # 4 distinct ids
"""

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import numpy.typing as npt

T = TypeVar("T")


def random_demonstrations(num_train: int, k: int, seed: int, *,
                          task: str = "") -> np.ndarray:
  """k distinct train indices, reproducible per seed.

  Args:
    num_train: size of the train split to draw from.
    k: number of demonstrations.
    seed: numpy Generator seed (e.g. one of MetaICL's SEEDS).
    task: task name for error messages.

  Returns:
    [k] int64 indices in [0, num_train), in drawn order.

  Raises:
    ValueError: if k < 0 or k > num_train.
  """
  if k < 0 or k > num_train:
    raise ValueError(f"random_demonstrations: task {task or '?'}: k={k} "
                     f"demonstrations requested but the train split has "
                     f"{num_train} examples")
  rng = np.random.default_rng(seed)
  return rng.choice(num_train, size=k, replace=False).astype(np.int64)


def _unit_rows(embeddings: npt.ArrayLike, name: str, task: str) -> np.ndarray:
  """[R, H] float64 rows scaled to unit L2 norm; errors on zero/bad rows."""
  array = np.asarray(embeddings, dtype=np.float64)
  if array.ndim != 2 or 0 in array.shape:
    raise ValueError(f"NearestNeighbourIndex: task {task or '?'}: {name} "
                     f"must be a non-empty [R, H] array; got {array.shape}")
  norms = np.linalg.norm(array, axis=1, keepdims=True)  # [R, 1]
  bad = ~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0)
  if bad.any():
    raise ValueError(f"NearestNeighbourIndex: task {task or '?'}: {name} row "
                     f"{int(np.argmax(bad))} has zero or non-finite norm, "
                     f"so its cosine similarity is undefined")
  return array / norms


class NearestNeighbourIndex:
  """Cosine-similarity kNN over one task's train embeddings (KATE)."""

  def __init__(self, train_embeddings: npt.ArrayLike, *, task: str = ""):
    """Normalises the train embeddings once.

    Args:
      train_embeddings: [N, H] sentence embeddings of the train examples.
      task: task name for error messages.

    Raises:
      ValueError: if not [N, H] with N, H > 0, or a row has zero norm.
    """
    self._task = task
    self._unit = _unit_rows(train_embeddings, "train_embeddings", task)

  @property
  def size(self) -> int:
    """N, the number of indexed train examples."""
    return self._unit.shape[0]

  def query(self, embeddings: npt.ArrayLike,
            k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most cosine-similar train examples of each query.

    Args:
      embeddings: [Q, H] query sentence embeddings.
      k: neighbours per query, 1 <= k <= N.

    Returns:
      (indices [Q, k] int64, similarities [Q, k] float64), most similar
      first; equal similarities keep the lower train index first.

    Raises:
      ValueError: if k is out of range, H differs from the index's, or a
        query has zero norm.
    """
    if not 1 <= k <= self.size:
      raise ValueError(f"NearestNeighbourIndex: task {self._task or '?'}: "
                       f"k={k} neighbours requested but the index holds "
                       f"{self.size} train examples")
    queries = _unit_rows(embeddings, "query embeddings", self._task)
    if queries.shape[1] != self._unit.shape[1]:
      raise ValueError(f"NearestNeighbourIndex: task {self._task or '?'}: "
                       f"query width {queries.shape[1]} != index width "
                       f"{self._unit.shape[1]}")
    similarities = queries @ self._unit.T  # [Q, H] x [H, N] -> [Q, N]
    # A stable sort of -similarity keeps ties in index order.
    order = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
    return (order.astype(np.int64),
            np.take_along_axis(similarities, order, axis=1))


def kate_order(indices: npt.ArrayLike) -> np.ndarray:
  """Reverses the last axis: most similar demonstration last (KATE).

  Args:
    indices: [k] or [Q, k] neighbour indices, most similar first (as
      `NearestNeighbourIndex.query` returns them).

  Returns:
    The same indices with the most similar last, i.e. adjacent to the query
    once the demonstrations are concatenated before it.
  """
  return np.asarray(indices)[..., ::-1].copy()


def kate_demonstrations(train: Sequence[T], train_embeddings: npt.ArrayLike,
                        query_embeddings: npt.ArrayLike, k: int, *,
                        task: str) -> list[list[T]]:
  """Per query, the k train rows nearest by cosine similarity, most similar
  LAST (KATE), from embeddings [N, H] of the train rows and [Q, H] of the
  queries (any backbone's)."""
  index = NearestNeighbourIndex(train_embeddings, task=task)
  nearest, _ = index.query(query_embeddings, k)
  return [[train[i] for i in row] for row in kate_order(nearest)]
