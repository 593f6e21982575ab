"""`python -m tasks list` without a data root: task names need no data; what
does need it fails with one line naming the directory and the variable."""

import importlib
import os
import pathlib
import subprocess
import sys

import pytest

from prompt_jax.data import root as data_root_lib
import tasks  # Registers every task.
from tasks import vocab

_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _missing_root_message(root: pathlib.Path) -> str:
  return (f"Data root {root} not found; set PROMPT_JAX_DATA_ROOT to the shared"
          " data dir.")


def test_list_needs_no_data_root(tmp_path):
  missing = tmp_path / "no_data_here"
  env = {**os.environ, "PYTHONPATH": str(_ROOT),
         data_root_lib.ENV_VAR: str(missing)}
  # cwd outside the repository: nothing resolves relative to it.
  out = subprocess.run([sys.executable, "-m", "tasks", "list"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.splitlines() == list(tasks.TASK_NAMES)
  # Listing reads nothing and warns of nothing (a run that reads a MetaICL
  # mixture names its left-out tasks then); TensorFlow's native GPU-probe
  # lines are filtered out (`prompt_jax.console`).
  assert out.stderr == ""


def test_reading_data_without_a_root_is_one_line(monkeypatch):
  monkeypatch.setenv(data_root_lib.ENV_VAR, "/nonexistent/root")
  fresh = vocab.DataRootSentencePieceVocabulary()  # Built: reads nothing.
  with pytest.raises(FileNotFoundError) as e:
    fresh.encode("hello")
  assert str(e.value) == _missing_root_message(
      pathlib.Path("/nonexistent/root"))


def test_a_listing_that_needs_missing_data_is_one_line_exit_2(
    monkeypatch, capsys):
  monkeypatch.setenv(data_root_lib.ENV_VAR, "/nonexistent/root")
  cli = importlib.import_module("tasks.__main__")

  def report_reading_data(split):  # As a listing that reads files would.
    del split
    return [str(data_root_lib.data_root())]

  monkeypatch.setattr(cli, "_split_report", report_reading_data)
  assert cli.main(["list", "--split", "hr_to_lr"]) == 2
  out = capsys.readouterr()
  assert out.out == ""
  assert out.err == "error: " + _missing_root_message(
      pathlib.Path("/nonexistent/root")) + "\n"
