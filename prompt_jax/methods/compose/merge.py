"""Merging the `Seams` of composed methods, refusing double claims.

Two methods may share a layer as long as they fill different insertion
points: one sets the prefix keys, the other a low-rank delta on `query`.
Keyed insertion points (deltas, biases) merge by key. Any insertion point
both methods set (two embed hooks, two prefixes, two deltas on one
projection, two adapters after one block) is a one-line `ValueError`
naming it and both methods: the order in which two such seams should
apply is not something to guess.
"""

import dataclasses
from typing import Any, Mapping

from prompt_jax.backbones import seams as seams_lib

_LAYER_TYPES = (seams_lib.LayerSeams, seams_lib.AttentionSeams,
                seams_lib.MlpSeams)


def _is_set(value: Any, default: Any) -> bool:
  return value is not None and value is not default and not (
      isinstance(value, int) and value == default)


def _merge_value(a: Any, b: Any, where: str, names: tuple[str, str]) -> Any:
  if a is None:
    return b
  if b is None:
    return a
  if isinstance(a, _LAYER_TYPES):
    return _merge_dataclass(a, b, where, names)
  if isinstance(a, Mapping):
    clash = sorted(set(a) & set(b))
    if clash:
      raise ValueError(f"compose: {names[0]} and {names[1]} both set "
                       f"{where}[{clash[0]!r}]; compose methods that use "
                       "different seams")
    return {**a, **b}
  raise ValueError(f"compose: {names[0]} and {names[1]} both set {where}; "
                   "compose methods that use different seams")


def _merge_dataclass(a: Any, b: Any, where: str, names: tuple[str, str]
                     ) -> Any:
  changes = {}
  for field in dataclasses.fields(a):
    va, vb = getattr(a, field.name), getattr(b, field.name)
    if _is_set(va, field.default) and _is_set(vb, field.default):
      changes[field.name] = _merge_value(va, vb, f"{where}.{field.name}",
                                         names)
    elif _is_set(vb, field.default):
      changes[field.name] = vb
  return dataclasses.replace(a, **changes)


def _merge_layers(a, b, where: str, names: tuple[str, str]):
  if a is None:
    return b
  if b is None:
    return a
  n = max(len(a), len(b))
  pad = lambda t: tuple(t) + (None,) * (n - len(t))
  return tuple(_merge_value(x, y, f"{where}[{i}]", names)
               for i, (x, y) in enumerate(zip(pad(a), pad(b))))


def merge(a: seams_lib.Seams, b: seams_lib.Seams,
          names: tuple[str, str]) -> seams_lib.Seams:
  """The seams of two methods together.

  Args:
    a, b: each method's seams.
    names: the two methods' names, for the error.

  Raises:
    ValueError: both set the same insertion point (one line naming it).
  """
  changes = {}
  for field in dataclasses.fields(a):
    va, vb = getattr(a, field.name), getattr(b, field.name)
    if field.name in ("encoder_layers", "decoder_layers"):
      changes[field.name] = _merge_layers(va, vb, field.name, names)
    elif _is_set(va, field.default) and _is_set(vb, field.default):
      _merge_value(va, vb, field.name, names)  # Raises.
    elif _is_set(vb, field.default):
      changes[field.name] = vb
  return dataclasses.replace(a, **changes)
