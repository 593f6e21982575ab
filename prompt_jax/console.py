"""What a command-line run prints: the project's own lines, not the probes.

On a machine without a GPU, TensorFlow (under seqio) and XLA log from C++
that they looked for CUDA (`E0000 ... failed call to cuInit`, `Could not
find cuda drivers`, oneDNN notices): error-looking lines on a healthy run.
Those come from native code that writes to file descriptor 2 directly, so
no Python logging setting reaches them. `setup(verbose=False)` puts a line
filter on descriptor 2 that drops native INFO/WARNING lines and the
GPU-probe errors, and keeps everything else (Python warnings, tracebacks,
the project's errors, any other native error). `verbose=True` keeps it all.
"""

import atexit
import logging
import os
import re
import sys
import threading

# Native absl-style lines: `I0000 00:00:1796668815.893226    5152 file.cc:31]`.
_NATIVE = r"[IWEF]\d{4} [\d:.]+ +\d+ (?P<file>[\w./-]+):\d+\]"
_NATIVE_LINE = re.compile(_NATIVE)
_GPU_PROBE_FILE = re.compile(r"cuda|cudart|gpu|rocm|tpu", re.IGNORECASE)
_NATIVE_PREAMBLE = "WARNING: All log messages before absl::InitializeLog()"
_QUIET_LOGGERS = ("absl", "orbax", "jax", "tensorflow", "h5py")


def is_noise(line: str) -> bool:
  """True for a native log line a user need not see (see module doc)."""
  if line.startswith(_NATIVE_PREAMBLE):
    return True
  match = _NATIVE_LINE.match(line)
  if match is None:
    return False
  return line[0] in "IW" or bool(_GPU_PROBE_FILE.search(match["file"]))


class _Fd2Filter:
  """Routes descriptor 2 through a pipe; a thread copies kept lines."""

  def __init__(self):
    self._original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    self._thread = threading.Thread(target=self._pump, args=(read_end,),
                                    daemon=True)
    self._thread.start()
    atexit.register(self.close)

  def _pump(self, read_end: int) -> None:
    with os.fdopen(read_end, "rb") as source:
      for raw in source:
        if not is_noise(raw.decode("utf-8", "replace")):
          os.write(self._original, raw)

  def close(self) -> None:
    """Flushes, gives descriptor 2 back, and lets the pump drain."""
    try:
      sys.stderr.flush()
    except (OSError, ValueError):
      pass
    os.dup2(self._original, 2)  # Closes the pipe's last write end here.
    self._thread.join(timeout=5)


def setup(verbose: bool = False, native_filter: bool = True) -> None:
  """Logging for a command-line entry point (call before heavy imports).

  The project's loggers print INFO (progress) and above, third-party
  loggers WARNING and above (with `verbose`, INFO). `native_filter` puts
  the line filter on descriptor 2 (only for a real command line: it
  would hide output from a test's capture).
  """
  logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                      format="%(levelname)s %(name)s: %(message)s")
  for name in ("prompt_jax", "tasks"):
    logging.getLogger(name).setLevel(logging.INFO)
  if not verbose:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in _QUIET_LOGGERS:  # Orbax logs every save at INFO.
      logging.getLogger(name).setLevel(logging.WARNING)
  if native_filter:
    _Fd2Filter()
