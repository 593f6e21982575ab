"""Trainable trees of one leaf per module path (BitFit's biases, IA3's
vectors): `{<module path>: {<leaf>: [*shape]}}` beside the frozen kernel.

A site here is anything with `.path`, and the shape and logical axes its
method gives it.
"""

from typing import Any, Callable, Iterable, Mapping

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from prompt_jax.types import Array, PyTree

Leaf = tuple[str, tuple[int, ...], tuple[str | None, ...]]  # path, shape, axes


def abstract(leaves: Iterable[Leaf], leaf: str) -> PyTree:
  """Boxed float32 shapes with their logical axes."""
  return flax.traverse_util.unflatten_dict({
      f"{path}/{leaf}": nn.LogicallyPartitioned(
          jax.ShapeDtypeStruct(shape, jnp.float32), names=axes)
      for path, shape, axes in leaves}, sep="/")


def constant(leaves: Iterable[Leaf], leaf: str, value: float) -> PyTree:
  """Every leaf filled with `value` (float32)."""
  return flax.traverse_util.unflatten_dict({
      f"{path}/{leaf}": jnp.full(shape, value, jnp.float32)
      for path, shape, _ in leaves}, sep="/")


def by_module(trainable: PyTree) -> dict[str, Array]:
  """{module path: its one leaf} of such a tree."""
  return {k.rpartition("/")[0]: v for k, v in
          flax.traverse_util.flatten_dict(trainable, sep="/").items()}


def from_peft_state(state: Mapping[str, Any], abstract: PyTree,
                    name_of: Callable[[str], str], peft_leaf: str,
                    what: str) -> PyTree:
  """Our tree from PEFT tensors named `name_of(module path)` (ending in
  `peft_leaf`), shaped like `abstract` (unboxed `ShapeDtypeStruct`s).

  Raises:
    ValueError: one line naming missing or unexpected tensor names.
  """
  flat = flax.traverse_util.flatten_dict(abstract, sep="/")
  wanted = {name_of(k.rpartition("/")[0]): (k, spec)
            for k, spec in flat.items()}
  missing = sorted(wanted.keys() - state.keys())
  extra = sorted(k for k in state.keys() - wanted.keys()
                 if k.endswith(peft_leaf))
  if missing or extra:
    raise ValueError(f"PEFT state does not match the {what} (missing "
                     f"{missing}, unexpected {extra})")
  return flax.traverse_util.unflatten_dict({
      key: np.asarray(state[name]).reshape(spec.shape).astype(spec.dtype)
      for name, (key, spec) in wanted.items()}, sep="/")
