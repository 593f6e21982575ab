"""Small method artifacts: atomic `.npy` / `.npz` files of trainable trees.

An artifact is what a method exports besides the Orbax train state: a
prompt `[P, H]` as one `.npy` (prompt tuning, loadable by anything that
reads NumPy), or any trainable tree as one `.npz` whose keys are the
'/'-joined paths of its leaves (LoRA's `a`/`b` matrices). Files are written
to a temporary name and renamed, so a kill never leaves a partial file.
"""

import os
import pathlib
import tempfile
from typing import Any, Callable

import flax.traverse_util
import jax
import numpy as np

from prompt_jax.types import PyTree


def _write_atomic(path: str | os.PathLike, suffix: str,
                  write: Callable[[Any], None]) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=f"{suffix}.tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path


def save_array(path: str | os.PathLike, array: Any) -> pathlib.Path:
  """Atomically writes one array as `.npy` (e.g. a prompt [P, H])."""
  value = np.asarray(jax.device_get(array))
  return _write_atomic(path, ".npy", lambda f: np.save(f, value))


def load_array(path: str | os.PathLike,
               expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
  """Reads a `.npy`; checks its shape if `expected_shape` is given.

  Raises:
    FileNotFoundError / ValueError: one line naming the file.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"artifact file {path} does not exist")
  try:
    value = np.load(path, allow_pickle=False)
  except ValueError as e:
    raise ValueError(f"{path}: not a valid .npy array ({e})") from None
  if expected_shape is not None and tuple(value.shape) != tuple(
      expected_shape):
    raise ValueError(f"{path}: shape {tuple(value.shape)} does not match "
                     f"the model's expected {tuple(expected_shape)}")
  return value


def save_tree(path: str | os.PathLike, tree: PyTree) -> pathlib.Path:
  """Atomically writes a nested dict of arrays as one `.npz`."""
  flat = flax.traverse_util.flatten_dict(jax.device_get(tree), sep="/")
  arrays = {key: np.asarray(value) for key, value in flat.items()}
  return _write_atomic(path, ".npz", lambda f: np.savez(f, **arrays))


def load_tree(path: str | os.PathLike, abstract: PyTree) -> PyTree:
  """Reads a `.npz` written by `save_tree`, checked against `abstract`
  (a tree of `jax.ShapeDtypeStruct`): same keys, same shapes.

  Raises:
    FileNotFoundError / ValueError: one line naming the file and the key.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"artifact file {path} does not exist")
  expected = flax.traverse_util.flatten_dict(abstract, sep="/")
  try:
    with np.load(path, allow_pickle=False) as data:
      loaded = {key: data[key] for key in data.files}
  except (ValueError, OSError) as e:
    raise ValueError(f"{path}: not a valid .npz file ({e})") from None
  missing = sorted(expected.keys() - loaded.keys())
  extra = sorted(loaded.keys() - expected.keys())
  if missing or extra:
    raise ValueError(f"{path}: keys do not match the method's trainable "
                     f"tree (missing {missing}, unexpected {extra})")
  for key, spec in expected.items():
    if tuple(loaded[key].shape) != tuple(spec.shape):
      raise ValueError(f"{path}: {key} has shape {loaded[key].shape}, "
                       f"expected {tuple(spec.shape)}")
  return flax.traverse_util.unflatten_dict(
      {k: v.astype(expected[k].dtype) for k, v in loaded.items()}, sep="/")
