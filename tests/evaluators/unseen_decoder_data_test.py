"""Missing MetaICL data is skipped (and named); malformed data is an error
naming file and line, never "no data" left out of a mean. A tmp data root
holds superglue-cb's seed-13 train file, test file and task metadata."""

import json
import pathlib
import re
import shutil

import pytest

from prompt_jax.data import root as data_root_lib
from prompt_jax.evaluators import unseen_decoder as ude

FOLDER = "superglue-cb"
# order='globale' reads the test rows while choosing what to skip.
CFG = ude.DecoderEvalConfig(k=2, seeds=(13,), order="globale")


@pytest.fixture(name="root")
def _root(tmp_path, monkeypatch) -> pathlib.Path:
  real = data_root_lib.data_root() / "metaicl"
  (tmp_path / "metaicl" / FOLDER).mkdir(parents=True)
  (tmp_path / "metaicl" / "config" / "tasks").mkdir(parents=True)
  for name in (f"{FOLDER}_16_13_train.jsonl", f"{FOLDER}_16_100_test.jsonl"):
    shutil.copy(real / FOLDER / name, tmp_path / "metaicl" / FOLDER / name)
  meta = pathlib.Path("config") / "tasks" / f"{FOLDER}.json"
  shutil.copy(real / meta, tmp_path / "metaicl" / meta)
  monkeypatch.setenv(data_root_lib.ENV_VAR, str(tmp_path))
  return tmp_path


def _test_file(root: pathlib.Path) -> pathlib.Path:
  return root / "metaicl" / FOLDER / f"{FOLDER}_16_100_test.jsonl"


def _replace_line(path: pathlib.Path, lineno: int, text: str) -> None:
  lines = path.read_text().splitlines()
  lines[lineno - 1] = text
  path.write_text("\n".join(lines) + "\n")


def test_intact_copy_is_evaluable(root):
  assert ude.skip_reason(FOLDER, CFG) is None
  assert len(_test_file(root).read_text().splitlines()) == 56


def test_unparsable_line_is_an_error_naming_file_and_line(root):
  path = _test_file(root)
  _replace_line(path, 3, '{"task": "superglue-cb", "input": "x"')
  with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:3: not a"
                     " JSON object line: "):
    ude.evaluate_folders(None, [FOLDER], CFG)  # Raises before scoring.


def test_row_missing_a_key_is_an_error_naming_file_and_line(root):
  path = _test_file(root)
  _replace_line(path, 5, json.dumps(
      {"task": FOLDER, "input": "x", "output": "neutral"}))
  with pytest.raises(ValueError) as e:
    ude.skip_reason(FOLDER, CFG)
  assert str(e.value) == (
      f"{path}:5: expected the keys ['input', 'options', 'output', 'task'],"
      " got ['input', 'output', 'task']")


def test_malformed_task_metadata_is_an_error_naming_file_and_line(root):
  meta = root / "metaicl" / "config" / "tasks" / f"{FOLDER}.json"
  meta.write_text('{\n  "task_type": classification\n}\n')
  with pytest.raises(ValueError) as e:
    ude.skip_reason(FOLDER, ude.DecoderEvalConfig(k=2, seeds=(13,)))
  assert str(e.value) == f"{meta}:2: not valid JSON: Expecting value"


def test_missing_file_is_skipped_and_named(root):
  path = _test_file(root)
  path.unlink()
  assert ude.skip_reason(FOLDER, CFG) == (
      f"no data: Data file for split 'test' not found: {path}")
