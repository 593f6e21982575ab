"""JSON Lines reading and safe writing for the command-line tools.

Reading keeps each record's 1-based line number so that every later check can
report `path:line: what is wrong` (`JsonlError`). Writing never leaves a
half-written file and never replaces an existing one unless asked: records go
to a temporary file in the output's directory, which is then atomically
linked (no overwrite) or `os.replace`d (overwrite) into place.
"""

import json
import os
import pathlib
import tempfile
from typing import Any, Iterable

PathLike = str | os.PathLike[str]


class JsonlError(ValueError):
  """An input line is invalid; the message starts with `path:line: `."""

  def __init__(self, path: PathLike, line: int, what: str):
    super().__init__(f"{os.fspath(path)}:{line}: {what}")
    self.path, self.line, self.what = os.fspath(path), line, what


def read_jsonl(path: PathLike) -> list[tuple[int, dict[str, Any]]]:
  """Reads a JSONL file of objects; blank lines are skipped.

  Returns:
    [(line_number, object)], line numbers 1-based.

  Raises:
    FileNotFoundError: if `path` is missing.
    JsonlError: for a line that is not UTF-8, not JSON or not an object.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"input file not found: {os.fspath(path)}")
  records = []
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      try:
        text = raw.decode("utf-8").rstrip("\r\n")
      except UnicodeDecodeError as e:
        raise JsonlError(path, number, f"not UTF-8 ({e.reason})") from None
      if not text.strip():
        continue
      try:
        value = json.loads(text)
      except json.JSONDecodeError as e:
        raise JsonlError(path, number, f"not valid JSON ({e.msg} at column "
                         f"{e.colno})") from None
      if not isinstance(value, dict):
        raise JsonlError(path, number, "expected a JSON object, got "
                         f"{type(value).__name__}")
      records.append((number, value))
  return records


def check_output_path(path: PathLike, overwrite: bool) -> None:
  """Fails early if `path` cannot be written as asked.

  Raises:
    FileExistsError: if it exists and `overwrite` is False.
    IsADirectoryError: if it is a directory.
    FileNotFoundError: if its directory does not exist.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    raise IsADirectoryError(f"output path is a directory: {path}")
  if path.exists() and not overwrite:
    raise FileExistsError(f"output file exists: {path} (pass --overwrite to "
                          "replace it)")
  if not path.parent.is_dir():
    raise FileNotFoundError(f"output directory not found: {path.parent}")


def write_jsonl(path: PathLike, records: Iterable[dict[str, Any]],
                overwrite: bool = False, allow_non_finite: bool = False
                ) -> None:
  """Writes one JSON object per line, atomically.

  Nothing is left at `path` (or in its directory) if serialisation fails.
  `allow_non_finite` writes NaN and +-inf as Python's json does
  (`NaN`, `Infinity`, `-Infinity`: not strict JSON, read back by `json`);
  the caller decides which non-finite values are acceptable.

  Raises:
    FileExistsError: if `path` exists and `overwrite` is False (checked
      atomically via a hard link where the file system allows it).
    ValueError: if a record is not JSON-serialisable (e.g. NaN, unless
      `allow_non_finite`).
  """
  check_output_path(path, overwrite)
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                             suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      for record in records:
        f.write(json.dumps(record, allow_nan=allow_non_finite,
                           ensure_ascii=False) + "\n")
      f.flush()
      os.fsync(f.fileno())
    if overwrite:
      os.replace(tmp, path)
    else:
      _link_no_overwrite(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def _link_no_overwrite(tmp: str, path: pathlib.Path) -> None:
  """Moves `tmp` to `path`, failing if `path` appeared meanwhile."""
  try:
    os.link(tmp, path)  # Atomic and fails if `path` exists.
  except FileExistsError:
    raise FileExistsError(f"output file exists: {path} (pass --overwrite to "
                          "replace it)") from None
  except OSError:  # No hard links here (e.g. some network file systems).
    if path.exists():
      raise FileExistsError(f"output file exists: {path}") from None
    os.replace(tmp, path)


def write_text_atomic(path: str | os.PathLike, text: str) -> pathlib.Path:
  """Writes `text` to `path` through a temporary file and `os.replace`: a
  reader sees the old file or the new one, never a partial one."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                             suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return path
