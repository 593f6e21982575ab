"""Rewrites one generated section of a Markdown file, atomically.

Each results script owns a section between its own markers
(`<!-- NAME:begin -->` ... `<!-- NAME:end -->`) and never touches the rest
of the file.
"""

import os
import pathlib
import tempfile


def replace_section(path: pathlib.Path, begin: str, end: str,
                    body: str) -> None:
  """Replaces everything from `begin` to `end` (markers included) with
  `begin + body + end`; the file is swapped in whole (temp file + rename).

  Raises:
    SystemExit: the file lacks one of the markers.
  """
  text = path.read_text(encoding="utf-8")
  if text.count(begin) != 1 or text.count(end) != 1:
    raise SystemExit(f"{path}: needs exactly one {begin} and one {end}")
  head, rest = text.split(begin, 1)
  tail = rest.split(end, 1)[1]
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(head + begin + body + end + tail)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
