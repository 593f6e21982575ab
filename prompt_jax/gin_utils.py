"""Gin plumbing in ONE place: search path, imports before parsing, dumps.

Library modules carry no gin decorators; configs bind them through
`from __gin__ import dynamic_registration`. Every library module a config may
name is imported here before parsing, so late imports cannot break a parse.
The seqio tasks are not: the library does not import `tasks`. Each run file
under `gin_configs/runs/` imports `tasks` itself (registering every task)
before anything it configures runs.
"""

import difflib
import logging
import pathlib
import re
from typing import Sequence

import gin
from gin import config as gin_config

from prompt_jax.data import jsonl as jsonl_io


class _QuietSearchPathMisses(logging.Filter):
  """Drops gin's 'Path not found' ERRORs logged while it tries each search
  path for an include (a real miss still fails the parse)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Path not found")


GIN_CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin_configs"


def import_configurables() -> None:
  """Imports every library module that gin files may reference."""
  # pylint: disable=g-import-not-at-top,unused-import
  from prompt_jax import checkpoints
  from prompt_jax.data import seqio_batches as data
  from prompt_jax import optim
  from prompt_jax import setup as run_setup
  from prompt_jax import schedules
  from prompt_jax import evaluate
  from prompt_jax import infer
  from prompt_jax import train
  from prompt_jax.evaluators import unseen as unseen_eval
  from prompt_jax.methods.prompt_tuning import specs
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
  check_macros()


_MACRO = "gin.macro"
_MACRO_NAME = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)(?![.\w])|"
                         r"^([A-Z_][A-Z0-9_]*)\s*=", re.MULTILINE)


def project_macros() -> set[str]:
  """Every macro name that a gin file under `gin_configs/` binds or uses."""
  names = set()
  for path in GIN_CONFIGS_DIR.rglob("*.gin"):
    for used, bound in _MACRO_NAME.findall(path.read_text(encoding="utf-8")):
      names.add(used or bound)
  return names


def _bound_and_used_macros() -> tuple[set[str], set[str]]:
  """(macros bound in the parsed config, macros some binding refers to)."""
  config = gin_config._CONFIG  # pylint: disable=protected-access
  bound = {scope for scope, selector in config if selector == _MACRO}
  used = {"/".join(ref.scopes)
          for ref in gin_config.iterate_references(config)
          if ref.selector == _MACRO}
  return bound, used


def check_macros() -> None:
  """Refuses a bound macro that nothing reads and no project file knows.

  A misspelled `--gin.BATCH_SIZ=8` would otherwise be accepted silently
  (the run keeps BATCH_SIZE's default). A macro that this config does not
  read but another project config does (e.g. OPTIONS, read in classify
  mode) is accepted.

  Raises:
    ValueError: `unknown gin macro BATCH_SIZ (did you mean BATCH_SIZE?)`.
  """
  bound, used = _bound_and_used_macros()
  known = used | project_macros()
  for name in sorted(bound - known):
    close = difflib.get_close_matches(name, sorted(known | bound - {name}),
                                      n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ValueError(f"unknown gin macro {name}{hint}: no config reads it")


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
  """Writes the full parsed config to `model_dir/name` (atomically)."""
  return jsonl_io.write_text_atomic(pathlib.Path(model_dir) / name,
                                    gin.config_str())


def write_operative_config(model_dir: str | pathlib.Path,
                           name: str = "operative_config.gin"
                           ) -> pathlib.Path:
  """Writes the values actually used to `model_dir/name` (atomically)."""
  return jsonl_io.write_text_atomic(pathlib.Path(model_dir) / name,
                                    gin.operative_config_str())
