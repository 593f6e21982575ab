"""Smoke test of `bench/metaicl_results.py` on a tiny random decoder.

The pipeline of the MetaICL rows end to end (test folders, k-shot scoring
without a shared context, meta-training of a prompt on the split's train
tasks, the stored records and their Markdown), on the SmolLM2 tokenizer.
"""

import importlib.util
import json
import pathlib

_PATH = pathlib.Path(__file__).parents[1] / "bench" / "metaicl_results.py"


def _load_bench():
  spec = importlib.util.spec_from_file_location("metaicl_results", _PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


bench = _load_bench()


def test_smoke_rows_are_stored_and_rendered(tmp_path):
  bench.main(["--settings=smoke", "--splits=class_to_class",
              "--rows=icl,metaicl_prompt", f"--out={tmp_path}"])
  icl = json.loads((tmp_path / "class_to_class__icl.json").read_text())
  prompt = json.loads(
      (tmp_path / "class_to_class__metaicl_prompt.json").read_text())
  for record in (icl, prompt):
    assert "error" not in record, record.get("error")
    table = record["table"]
    assert [r["task"] for r in table["rows"]] == [
        "tweet_eval-stance_feminist", "ethos-national_origin"]
    assert table["k_shot"] == 4 and table["seeds"] == [13]
    assert table["max_examples_per_task"] == 4
    assert 0 <= record["mean"] <= 100
  assert icl["meta_training"] is None and not icl["table"]["prompt"]
  meta = prompt["meta_training"]
  assert prompt["table"]["prompt"] and meta["part"] == "prompt"
  assert (meta["train_tasks"], meta["steps"], meta["batch"]) == (3, 3, 8)
  assert meta["examples"] == 3 * 8 and meta["dropped"] == 0
  text = bench.render(tmp_path)
  assert "**class_to_class** — 2 unseen test tasks" in text
  assert f"| icl | {icl['mean']:.2f} | " in text
  assert "| metaicl_prompt | " in text and "3 tasks, 3 x 8 (prompt)" in text
  assert "| zero_shot | not run |" in text
