"""Reads and writes T5X checkpoint directories as flat numpy dicts.

This module knows the on-disk format only; `loading.py` turns its flat dicts
into a `T5Config` and our 3-D param tree. Layout of a T5X model directory
(the msgpack + TensorStore format of t5x `checkpoints.Checkpointer`):

  <model_dir>/config.gin                     operative gin config (optional)
  <model_dir>/checkpoint_<step>/checkpoint   msgpack state dict
  <model_dir>/checkpoint_<step>/target.encoder.layers_0.attention.query.kernel/
      .zarray, 0.0, ...                      one zarr array per large leaf

The msgpack holds `{'version': 3, 'optimizer': {'target': params, 'state':
{'step': ..., 'param_states': ...}}}` (version 0: the optimizer dict itself).
A leaf stored in TensorStore is replaced by its zarr spec as a dict whose
`kvstore.path` is relative to the checkpoint directory (`'target.a.b'` for
param `target/a/b`); small leaves are inline numpy arrays. Orbax-written T5X
checkpoints (`_METADATA`, OCDBT) are read through orbax when it is installed.
Kernels are kept as stored (T5X attention kernels are 2-D).
`open_t5x_checkpoint` opens the same leaves without reading them
(`lazy_tensors.Tensor`s that read one slice at a time).
"""

import ast
import math
import os
import pathlib
import re
import time
from typing import Any, Iterator, Mapping

from flax import serialization
import jax
import numpy as np
import tensorstore as ts

from prompt_jax.backbones import lazy_tensors

_MSGPACK = "checkpoint"
_ORBAX_MARKERS = ("_METADATA", "manifest.ocdbt")
_STEP_DIR = re.compile(r"checkpoint_(\d+)")
_PLACEHOLDER = "PLACEHOLDER://"  # Legacy orbax aggregate-file leaf reference.
_VERSION = 3
_CHUNK_BYTES = 64 * 1024 * 1024
_GIN_BINDING = re.compile(r"^(?:[\w.]+\.)?T5Config\.(\w+)\s*=\s*(.+)$")
_GIN_MACRO = re.compile(r"^([A-Z_][A-Z0-9_]*)\s*=\s*(.+)$")

Flat = dict[str, np.ndarray]


def is_t5x_dir(path: pathlib.Path) -> bool:
  """Whether `path` is a T5X model dir, checkpoint_<step> dir or msgpack."""
  if path.is_file():
    return path.name == _MSGPACK
  return _is_step_dir(path) or bool(_steps(path))


def find_checkpoint_dir(path: str | os.PathLike) -> pathlib.Path:
  """Resolves a model dir (latest step), step dir or msgpack file.

  Raises:
    FileNotFoundError: `path` is missing or holds no T5X checkpoint.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"T5X checkpoint not found: {path}")
  if path.is_file() and path.name == _MSGPACK:
    return path.parent
  if _is_step_dir(path):
    return path
  steps = _steps(path)
  if not steps:
    raise FileNotFoundError(
        f"{path}: no T5X checkpoint (expected checkpoint_<step>/checkpoint, "
        f"checkpoint_<step>/_METADATA or a {_MSGPACK} file)")
  return path / f"checkpoint_{max(steps)}"


def _is_step_dir(path: pathlib.Path) -> bool:
  return path.is_dir() and ((path / _MSGPACK).is_file() or any(
      (path / name).exists() for name in _ORBAX_MARKERS))


def _steps(model_dir: pathlib.Path) -> list[int]:
  if not model_dir.is_dir():
    return []
  return [int(m.group(1)) for m in map(_STEP_DIR.fullmatch, os.listdir(
      model_dir)) if m and _is_step_dir(model_dir / m.group(0))]


def model_dir_of(ckpt_dir: pathlib.Path) -> pathlib.Path:
  """The model dir (where t5x writes config.gin) of a checkpoint dir."""
  return ckpt_dir.parent if _STEP_DIR.fullmatch(ckpt_dir.name) else ckpt_dir


def read_t5x_checkpoint(path: str | os.PathLike) -> Flat:
  """Reads the params ('target') of a T5X checkpoint, as stored.

  Args:
    path: model dir (the latest checkpoint_<step> is used), checkpoint_<step>
      dir, or the msgpack `checkpoint` file.

  Returns:
    {'encoder/layers_0/attention/query/kernel': array, ...}; optimizer state
    is dropped.

  Raises:
    FileNotFoundError: no checkpoint at `path`.
    ValueError: unreadable contents (one line naming the file).
  """
  ckpt_dir, source, flat = _stored_leaves(path)
  return _resolve_leaves(flat, ckpt_dir, source)


def open_t5x_checkpoint(path: str | os.PathLike
                        ) -> dict[str, lazy_tensors.Tensor]:
  """`read_t5x_checkpoint` without reading: each leaf reads its own slices.

  TensorStore leaves are opened (concurrently) and read one slice per
  `read`; inline leaves (and Orbax-restored ones) are in memory already.

  Raises:
    FileNotFoundError: no checkpoint at `path`.
    ValueError: unreadable contents (one line naming the file).
  """
  ckpt_dir, source, flat = _stored_leaves(path)
  specs = {name: _absolute_spec(leaf, ckpt_dir, name, source)
           for name, leaf in flat.items() if _is_reference(leaf)}
  out = {name: lazy_tensors.ArrayTensor(leaf) for name, leaf in flat.items()
         if name not in specs}
  stores = {name: ts.open(spec, open=True, read=True)
            for name, spec in specs.items()}
  out.update({name: _TensorStoreTensor(_ts_result(f, name, source), name,
                                       source) for name, f in stores.items()})
  return out


class _TensorStoreTensor(lazy_tensors.Tensor):
  """One TensorStore array of a checkpoint; `read` reads only the slice."""

  def __init__(self, store: Any, name: str, source: pathlib.Path):
    self.store, self.name, self.source = store, name, source
    self.shape = tuple(int(n) for n in store.shape)

  def read(self, index: lazy_tensors.Index) -> np.ndarray:
    future = self.store[index].read()
    return np.asarray(_ts_result(future, self.name, self.source))

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(self.store.dtype.numpy_dtype)


def _stored_leaves(path: str | os.PathLike
                   ) -> tuple[pathlib.Path, pathlib.Path, dict[str, Any]]:
  """(checkpoint dir, file for errors, {name: inline array or spec})."""
  ckpt_dir = find_checkpoint_dir(path)
  if any((ckpt_dir / m).exists() for m in _ORBAX_MARKERS):
    contents, source = _restore_orbax(ckpt_dir), ckpt_dir
  else:
    source = ckpt_dir / _MSGPACK
    contents = _read_msgpack(source)
  target = _target_tree(contents, source)
  return ckpt_dir, source, dict(_flatten(target))


def _read_msgpack(path: pathlib.Path) -> dict:
  raw = path.read_bytes()
  if raw.startswith(b"model_checkpoint_path"):
    raise ValueError(f"{path} is a TensorFlow checkpoint index, not a T5X "
                     "msgpack checkpoint (convert it with t5x first)")
  try:
    contents = serialization.msgpack_restore(raw)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path}: not a msgpack T5X checkpoint "
                     f"({type(e).__name__}: {e})") from None
  if not isinstance(contents, dict):
    raise ValueError(f"{path}: msgpack holds {type(contents).__name__}, "
                     "expected a state dict")
  return contents


def _restore_orbax(ckpt_dir: pathlib.Path) -> dict:
  """Restores an Orbax-written checkpoint as numpy arrays."""
  try:
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(f"{ckpt_dir} is an Orbax checkpoint; reading it needs "
                     "the orbax-checkpoint package") from None
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    metadata = checkpointer.metadata(ckpt_dir)
    tree = getattr(getattr(metadata, "item_metadata", metadata), "tree",
                   metadata)
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                        tree)
    return checkpointer.restore(
        ckpt_dir, args=ocp.args.PyTreeRestore(restore_args=args))
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).splitlines()[0] if str(e) else ""
    raise ValueError(f"{ckpt_dir}: Orbax restore failed "
                     f"({type(e).__name__}: {first})") from None


def _target_tree(contents: Mapping, source: pathlib.Path) -> Mapping:
  """The params subtree of a T5X state dict (any checkpoint version)."""
  state = contents.get("optimizer", contents)
  if not isinstance(state, Mapping) or "target" not in state:
    raise ValueError(f"{source}: no 'target' params in the checkpoint (top "
                     f"keys {sorted(contents)})")
  return state["target"]


def _is_ts_spec(node: Any) -> bool:
  return isinstance(node, Mapping) and "driver" in node and (
      "kvstore" in node or "path" in node)


def _flatten(tree: Mapping, prefix: str = "") -> Iterator[tuple[str, Any]]:
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping) and not _is_ts_spec(value):
      yield from _flatten(value, name + "/")
    elif value is not None:
      yield name, value


def _resolve_leaves(flat: Mapping[str, Any], ckpt_dir: pathlib.Path,
                    source: pathlib.Path) -> Flat:
  """Reads TensorStore leaves (concurrently); inline leaves pass through."""
  specs = {name: _absolute_spec(leaf, ckpt_dir, name, source)
           for name, leaf in flat.items() if _is_reference(leaf)}
  out = {name: np.asarray(leaf) for name, leaf in flat.items()
         if name not in specs}
  stores = {name: ts.open(spec, open=True, read=True)
            for name, spec in specs.items()}
  reads = {name: _ts_result(f, name, source).read()
           for name, f in stores.items()}
  out.update({name: np.asarray(_ts_result(f, name, source))
              for name, f in reads.items()})
  return out


def _ts_result(future: Any, name: str, source: pathlib.Path) -> Any:
  try:
    return future.result()
  except Exception as e:  # pylint: disable=broad-except
    reason = str(e).split(" [tensorstore_spec=")[0].splitlines()[0]
    raise ValueError(f"{source}: cannot read {name} ({reason})") from None


def _is_reference(leaf: Any) -> bool:
  return _is_ts_spec(leaf) or (isinstance(leaf, str)
                               and leaf.startswith(_PLACEHOLDER))


def _absolute_spec(leaf: Any, ckpt_dir: pathlib.Path, name: str,
                   source: pathlib.Path) -> dict:
  """A local zarr spec for a stored spec dict or an orbax placeholder."""
  if isinstance(leaf, str):
    rel = leaf[len(_PLACEHOLDER):]
    return {"driver": "zarr", "kvstore": {
        "driver": "file", "path": str(ckpt_dir / rel)}}
  meta = dict(leaf.get("metadata", {}))
  if leaf.get("dtype") == "uint16" or meta.get("dtype") == "<u2":
    raise ValueError(f"{source}: {name} is stored as uint16 (checkpoint "
                     "version 2 bfloat16); re-save it with a current t5x")
  kvstore = dict(leaf.get("kvstore", {}))
  rel = kvstore.get("path", leaf.get("path"))
  if rel is None:
    raise ValueError(f"{source}: TensorStore spec of {name} has no path")
  spec = {"driver": leaf["driver"],
          "kvstore": {"driver": "file", "path": str(ckpt_dir / rel)}}
  # Chunking and compression need not match to read; shape is checked.
  if "shape" in meta:
    spec["metadata"] = {"shape": list(meta["shape"])}
  if "dtype" in leaf:
    spec["dtype"] = leaf["dtype"]
  return spec


def write_t5x_checkpoint(path: str | os.PathLike, params_flat_2d: Mapping[
    str, np.ndarray], step: int) -> pathlib.Path:
  """Writes params as `<path>/checkpoint_<step>` in the T5X format.

  Every non-scalar param goes to its own gzip zarr array; the msgpack holds
  the relative specs plus `state.step`. Written to a temp dir and renamed,
  as t5x does, so a partial checkpoint never appears.

  Args:
    path: model dir (created if missing).
    params_flat_2d: {'encoder/layers_0/...': array} in T5X (2-D) layout.
    step: training step, used in the directory name.

  Returns:
    The checkpoint_<step> directory.

  Raises:
    FileExistsError: checkpoint_<step> already exists (nothing is written).
  """
  final = pathlib.Path(path) / f"checkpoint_{int(step)}"
  if final.exists():
    raise FileExistsError(f"refusing to overwrite existing checkpoint {final}")
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = final.with_name(f"{final.name}.tmp-{time.time_ns()}")
  tmp.mkdir()
  target: dict = {}
  for name, value in params_flat_2d.items():
    _insert(target, name.split("/"), _write_leaf(tmp, name, np.asarray(value)))
  state = {"step": np.asarray(step, np.int32), "param_states": {}}
  contents = {"version": _VERSION,
              "optimizer": {"target": target, "state": state}}
  (tmp / _MSGPACK).write_bytes(serialization.msgpack_serialize(contents))
  os.rename(tmp, final)
  return final


def _insert(tree: dict, keys: list[str], value: Any) -> None:
  for key in keys[:-1]:
    tree = tree.setdefault(key, {})
  tree[keys[-1]] = value


def _write_leaf(ckpt_dir: pathlib.Path, name: str, arr: np.ndarray) -> Any:
  """Writes `arr` to zarr and returns its relative spec (or `arr` inline)."""
  if arr.ndim == 0 or arr.size == 0:
    return arr
  rel = "target." + name.replace("/", ".")
  spec = {"driver": "zarr", "dtype": np.dtype(arr.dtype).name,
          "kvstore": {"driver": "file", "path": rel},
          "metadata": {"compressor": {"id": "gzip"}, "shape": list(arr.shape),
                       "chunks": _chunk_shape(arr.shape, arr.itemsize)}}
  stored = ts.Spec(spec).to_json()  # Normalised, still relative.
  spec["kvstore"] = {"driver": "file", "path": str(ckpt_dir / rel)}
  store = ts.open(spec, create=True, open=True).result()
  store.write(arr).result()
  return stored


def _chunk_shape(shape: tuple[int, ...], itemsize: int) -> list[int]:
  """Shrinks the largest dim by its smallest factor until a chunk fits."""
  chunks = list(shape)
  while math.prod(chunks) * itemsize > _CHUNK_BYTES:
    i = int(np.argmax(chunks))
    n = chunks[i]
    factor = next((f for f in range(2, math.isqrt(n) + 1) if n % f == 0), n)
    chunks[i] = n // factor
  return chunks


def read_gin_t5_config(model_dir: str | os.PathLike) -> dict[str, Any]:
  """Reads `T5Config.<field> = value` bindings from `<model_dir>/config.gin`.

  Handles `%MACRO` values and continuation lines; values that are not Python
  literals (e.g. `@jnp.bfloat16`) are skipped. No gin import.

  Returns:
    {gin field name: value}, empty if there is no config.gin.
  """
  path = pathlib.Path(model_dir) / "config.gin"
  if not path.is_file():
    return {}
  macros, bindings = {}, {}
  for line in _gin_statements(path.read_text()):
    if m := _GIN_BINDING.match(line):
      bindings[m.group(1)] = m.group(2).strip()
    elif m := _GIN_MACRO.match(line):
      macros[m.group(1)] = m.group(2).strip()
  out = {}
  for key, text in bindings.items():
    for _ in range(10):  # Macros may refer to macros.
      if text.startswith("%") and text[1:] in macros:
        text = macros[text[1:]]
    try:
      out[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      continue
  return out


def _gin_statements(text: str) -> Iterator[str]:
  """Joins `\\`-continued and open-bracket lines; drops comment lines."""
  pending, depth = "", 0
  for raw in text.splitlines():
    line = raw.rstrip()
    if not pending and (not line.strip() or line.lstrip().startswith("#")):
      continue
    continued = line.endswith("\\")
    line = line[:-1] if continued else line
    pending += " " + line.strip()
    depth += sum(line.count(c) for c in "([{") - sum(
        line.count(c) for c in ")]}")
    if not continued and depth <= 0:
      yield pending.strip()
      pending, depth = "", 0
  if pending.strip():
    yield pending.strip()
