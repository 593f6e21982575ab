"""Checkpoint tensors read slice by slice; params built straight into shards.

Loaders describe each stored tensor as a `Tensor` (shape, dtype and
`read(index)` of a slice) instead of reading it. A `Layout` says how a stored
tensor becomes ours (a transpose, then one axis split into heads x head_dim)
and maps an index into our shape to the stored slice that holds it. `build`
then makes each param either

  * whole, as numpy (no shardings; what the loaders always returned), or
  * as a `jax.Array` in its target sharding, with
    `jax.make_array_from_callback`: each device's shard is read on its own
    (safetensors `get_slice`, a TensorStore slice, a torch mmap slice), so a
    host needs memory for one shard of one tensor at a time, not the model.
    Formats that decode whole tensors (GGUF blocks, inline T5X leaves) decode
    one tensor at a time (`LastTensorCache`).
"""

import dataclasses
import math
import os
from typing import Any, Callable, Mapping, Sequence

import flax.traverse_util
import jax
import numpy as np
from safetensors import safe_open

Index = tuple[slice, ...]
# A sharding tree (nested like the params), or a function of the loaded
# config that returns one (called before any weight is read).
Shardings = Any | Callable[[Any], Any]

_COMPARE_ELEMENTS = 1 << 22  # Elements per read when comparing tensors.


class Tensor:
  """A stored tensor (numpy axis order) whose slices can be read alone."""

  shape: tuple[int, ...]

  def read(self, index: Index) -> np.ndarray:
    """The slice `index` (one `slice` per axis, step 1) as numpy."""
    raise NotImplementedError

  def full(self) -> np.ndarray:
    return self.read(tuple(slice(None) for _ in self.shape))

  @property
  def dtype(self) -> np.dtype:
    if not self.shape:
      return self.full().dtype
    return self.read(tuple(slice(0, 0) for _ in self.shape)).dtype

  def __array__(self, dtype=None, copy=None):
    del copy
    value = self.full()
    return value if dtype is None else value.astype(dtype)


class ArrayTensor(Tensor):
  """An in-memory array."""

  def __init__(self, value: Any):
    self.value = np.asarray(value)
    self.shape = tuple(self.value.shape)

  def read(self, index: Index) -> np.ndarray:
    return self.value[index]

  def full(self) -> np.ndarray:
    return self.value

  @property
  def dtype(self) -> np.dtype:
    return self.value.dtype


def as_tensor(value: Any) -> Tensor:
  return value if isinstance(value, Tensor) else ArrayTensor(value)


class SafetensorsTensor(Tensor):
  """One tensor of a safetensors file; a slice read touches only its bytes."""

  def __init__(self, handle: Any, name: str):
    self.handle, self.name = handle, name
    self.shape = tuple(int(n) for n in handle.get_slice(name).get_shape())

  def read(self, index: Index) -> np.ndarray:
    return self.handle.get_slice(self.name)[index]

  def full(self) -> np.ndarray:
    return self.handle.get_tensor(self.name)


def open_safetensors(files: Sequence[str | os.PathLike]
                     ) -> dict[str, Tensor]:
  """name -> `SafetensorsTensor` of every tensor in `files` (none is read).

  Raises:
    ValueError: (one line naming the file) unreadable safetensors.
  """
  state = {}
  for f in files:
    try:
      handle = safe_open(str(f), framework="numpy")
      state.update({name: SafetensorsTensor(handle, name)
                    for name in handle.keys()})
    except Exception as e:  # pylint: disable=broad-except  # Rust errors.
      raise ValueError(f"{f}: unreadable safetensors ({e})") from None
  return state


class CastTensor(Tensor):
  """`base` with floats (bfloat16 included) cast to `dtype` on read."""

  def __init__(self, base: Tensor, dtype: Any):
    self.base, self.to = base, np.dtype(dtype)
    self.shape = base.shape

  def _cast(self, value: np.ndarray) -> np.ndarray:
    value = np.asarray(value)
    if value.dtype == self.to or value.dtype.kind in "biu":
      return value
    return value.astype(self.to)

  def read(self, index: Index) -> np.ndarray:
    return self._cast(self.base.read(index))

  def full(self) -> np.ndarray:
    return self._cast(self.base.full())


class LastTensorCache:
  """Keeps the last decoded whole tensor, so memory is about one tensor."""

  def __init__(self):
    self.key, self.value = None, None

  def get(self, key: Any, decode: Callable[[], np.ndarray]) -> np.ndarray:
    if self.key is not key:
      self.key, self.value = None, None  # Free the old one first.
      self.value = decode()
      self.key = key
    return self.value


class DecodedTensor(Tensor):
  """A tensor that is decoded whole (e.g. quantized blocks), then sliced."""

  def __init__(self, shape: Sequence[int], decode: Callable[[], np.ndarray],
               cache: LastTensorCache, dtype: Any = None):
    self.shape = tuple(int(n) for n in shape)
    self.decode, self.cache = decode, cache
    self._dtype = None if dtype is None else np.dtype(dtype)

  def read(self, index: Index) -> np.ndarray:
    return self.full()[index]

  def full(self) -> np.ndarray:
    return self.cache.get(self, self.decode)

  @property
  def dtype(self) -> np.dtype:
    return self._dtype if self._dtype is not None else self.full().dtype


def equal(a: Tensor, b: Tensor) -> bool:
  """Exact equality, read in row blocks (never two whole tensors at once)."""
  if a is b:
    return True
  if a.shape != b.shape:
    return False
  if not a.shape:
    return bool(np.array_equal(a.full(), b.full()))
  row = max(1, math.prod(a.shape[1:]))
  step = max(1, _COMPARE_ELEMENTS // row)
  rest = tuple(slice(None) for _ in a.shape[1:])
  rows = a.shape[0]
  return all(np.array_equal(a.read((slice(i, min(i + step, rows)),) + rest),
                            b.read((slice(i, min(i + step, rows)),) + rest))
             for i in range(0, rows, step))


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a stored tensor becomes ours.

  Ours is the stored tensor, transposed (all axes reversed) if `transpose`,
  with axis `split` (of the transposed tensor) then split into
  (`heads`, `head_dim`). E.g. HF's query weight [N*D, H] is
  `Layout(True, 1, N, D)`: [H, N*D] -> [H, N, D].
  """
  transpose: bool = False
  split: int | None = None
  heads: int = 0
  head_dim: int = 0

  def to_ours(self, w: np.ndarray) -> np.ndarray:
    w = w.T if self.transpose else w
    if self.split is None:
      return w
    a = self.split
    return w.reshape(w.shape[:a] + (self.heads, self.head_dim)
                     + w.shape[a + 1:])

  def from_ours(self, p: np.ndarray) -> np.ndarray:
    if self.split is not None:
      a = self.split
      p = p.reshape(p.shape[:a] + (p.shape[a] * p.shape[a + 1],)
                    + p.shape[a + 2:])
    return p.T if self.transpose else p

  def our_shape(self, stored: Sequence[int]) -> tuple[int, ...] | None:
    """Our shape of a stored tensor of shape `stored` (None: no reshape)."""
    s = tuple(reversed(stored)) if self.transpose else tuple(stored)
    if self.split is None:
      return s
    a = self.split
    if len(s) <= a or s[a] != self.heads * self.head_dim:
      return None
    return s[:a] + (self.heads, self.head_dim) + s[a + 1:]

  def stored_shape(self, ours: Sequence[int]) -> tuple[int, ...]:
    """The stored shape that gives our shape `ours`."""
    s = tuple(ours)
    if self.split is not None:
      a = self.split
      s = s[:a] + (s[a] * s[a + 1],) + s[a + 2:]
    return tuple(reversed(s)) if self.transpose else s

  def read(self, tensor: Tensor, index: Index) -> np.ndarray:
    """`to_ours(tensor)[index]`, reading only the stored slice it needs.

    A cut through head_dim reads whole heads (sharding cuts heads, not D).
    """
    shape = self.our_shape(tensor.shape)
    idx = []
    for s, n in zip(tuple(index) + (slice(None),) * (len(shape) - len(index)),
                    shape):
      start, stop, step = s.indices(n)
      if step != 1:
        raise ValueError(f"strided index {s} is not supported")
      idx.append(slice(start, max(start, stop)))
    heads = dims = None
    if self.split is not None:
      a, d = self.split, self.head_dim
      heads, dims = idx[a], idx[a + 1]
      idx[a:a + 2] = [slice(heads.start * d, heads.stop * d)]
    stored = tuple(reversed(idx)) if self.transpose else tuple(idx)
    x = tensor.read(stored)
    x = x.T if self.transpose else x
    if self.split is not None:
      x = x.reshape(x.shape[:a] + (heads.stop - heads.start, d)
                    + x.shape[a + 1:])
      x = x[(slice(None),) * (a + 1) + (dims,)]
    return x


Leaves = Mapping[str, tuple[Tensor, Layout]]


def flat_shardings(shardings: Shardings | None, cfg: Any
                   ) -> dict[str, Any] | None:
  """{'a/b/c': sharding} of a sharding tree or of `shardings(cfg)`."""
  if shardings is None:
    return None
  tree = shardings(cfg) if callable(shardings) else shardings
  return flax.traverse_util.flatten_dict(tree, sep="/")


def build(leaves: Leaves, shardings: Mapping[str, Any] | None = None
          ) -> dict:
  """Our nested param tree from {path: (stored tensor, layout)}.

  Args:
    leaves: every param's stored tensor and layout (shapes already checked).
    shardings: {path: `jax.sharding.Sharding`} (`flat_shardings`); None
      gives whole numpy arrays.

  Returns:
    numpy arrays, or `jax.Array`s in their shardings (built shard by shard).
  """
  if shardings is None:
    flat = {path: layout.to_ours(tensor.full())
            for path, (tensor, layout) in leaves.items()}
  else:
    flat = {path: _sharded(tensor, layout, shardings[path])
            for path, (tensor, layout) in leaves.items()}
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def _sharded(tensor: Tensor, layout: Layout, sharding: Any) -> jax.Array:
  shape = layout.our_shape(tensor.shape)
  reads: dict[tuple, np.ndarray] = {}  # Devices that hold the same slice.

  def callback(index: Index) -> np.ndarray:
    key = tuple(s.indices(n)[:2] for s, n in zip(index, shape))
    if key not in reads:
      reads[key] = np.asarray(layout.read(tensor, index))
    return reads[key]

  return jax.make_array_from_callback(shape, sharding, callback)
