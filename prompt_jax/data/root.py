"""Location of the offline data assets (vocab, tasks, ...)."""

import os
import pathlib

ENV_VAR = "PROMPT_JAX_DATA_ROOT"
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def data_root() -> pathlib.Path:
  """Returns `$PROMPT_JAX_DATA_ROOT`, else `<repo root>/../shared/data`.

  Raises:
    FileNotFoundError: if the directory does not exist.
  """
  env = os.environ.get(ENV_VAR)
  root = pathlib.Path(env) if env else _REPO_ROOT.parent / "shared" / "data"
  if not root.is_dir():
    raise FileNotFoundError(
        f"Data root {root} not found; set {ENV_VAR} to the shared data dir."
    )
  return root
