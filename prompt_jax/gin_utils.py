"""Gin plumbing in ONE place: search path, imports before parsing, dumps.

Library modules carry no gin decorators; configs bind them through
`from __gin__ import dynamic_registration`. Everything a config may name is
imported here before parsing, so late imports cannot break a parse.
"""

import logging
import pathlib
from typing import Sequence

import gin


class _QuietSearchPathMisses(logging.Filter):
  """Drops gin's 'Path not found' ERRORs logged while it tries each search
  path for an include (a real miss still fails the parse)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Path not found")


GIN_CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin_configs"


def import_configurables() -> None:
  """Imports every module that gin files may reference, and the tasks."""
  # pylint: disable=g-import-not-at-top,unused-import
  import tasks  # Registers seqio tasks (the only registration point).
  from prompt_jax import checkpoints, data, optim, run_setup, schedules
  from prompt_jax import evaluate, infer, train, unseen_eval
  from prompt_jax.prompts import specs
  # pylint: enable=g-import-not-at-top,unused-import


def parse(gin_files: Sequence[str], bindings: Sequence[str]) -> None:
  """Parses config files (searched also in `gin_configs/`) and bindings.

  Raises:
    ValueError: one line naming the file or binding that failed to parse.
  """
  import_configurables()
  if not any(isinstance(f, _QuietSearchPathMisses)
             for f in logging.getLogger().filters):
    logging.getLogger().addFilter(_QuietSearchPathMisses())
  gin.clear_config()  # A process may run several entry points (tests).
  gin.add_config_file_search_path(str(GIN_CONFIGS_DIR))
  try:
    gin.parse_config_files_and_bindings(
        [resolve_path(f) for f in gin_files], list(bindings),
        finalize_config=False)
    gin.finalize()  # Checks that every %gin.REQUIRED macro is bound.
  except (ValueError, KeyError, IOError, SyntaxError) as e:
    message = " ".join(str(e).split())
    raise ValueError(f"gin config error: {message}") from None


def resolve_path(gin_file: str) -> str:
  """A gin file as given if it exists, else under `gin_configs/`."""
  path = pathlib.Path(gin_file)
  if path.exists() or path.is_absolute():
    return str(path)
  candidate = GIN_CONFIGS_DIR / path
  if not candidate.exists():
    raise ValueError(f"no file {gin_file} (looked in the working directory "
                     f"and {GIN_CONFIGS_DIR})")
  return str(candidate)


def write_config(model_dir: str | pathlib.Path, name: str = "config.gin"
                 ) -> pathlib.Path:
  """Writes the full parsed config to `model_dir/name`."""
  path = pathlib.Path(model_dir) / name
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(gin.config_str(), encoding="utf-8")
  return path


def write_operative_config(model_dir: str | pathlib.Path) -> pathlib.Path:
  """Writes the values actually used to `model_dir/operative_config.gin`."""
  path = pathlib.Path(model_dir) / "operative_config.gin"
  path.write_text(gin.operative_config_str(), encoding="utf-8")
  return path
