"""Smoke test of `bench/metaicl_results.py` on a tiny random decoder.

The pipeline of the MetaICL rows end to end (test folders, k-shot scoring
without a shared context, meta-training of a prompt on the split's train
tasks, the stored records and their Markdown), on the SmolLM2 tokenizer.
"""

import json

from prompt_jax import testing

bench = testing.load_bench_script("metaicl_results")


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
  assert "| metaicl_prompt | " in text and (
      "3 tasks, 3 x 8 (prompt); 24 examples, 0 dropped") in text
  trimmed = sum(t["trimmed_inputs"] for t in icl["table"]["rows"])
  assert f" | {trimmed} / 8" in text  # 2 tasks x 4 rows x 1 seed.
  assert "| zero_shot | not run |" in text


def _record(split: str, row: str, tasks: list[str], skipped: list[dict],
            test_tasks, trimmed: dict | None = None, seeds=(13,)) -> dict:
  """A stored row: 4 test rows per task; `trimmed`: {task: (inputs,
  options)}; `seeds=()`: a zero-shot row (no per-seed scores)."""
  rows = [{"task": t, "metric": "macro_f1", "score": 50.0, "examples": 4,
           "trimmed_inputs": (trimmed or {}).get(t, (0, 0))[0],
           "trimmed_options": (trimmed or {}).get(t, (0, 0))[1],
           **({"seeds": {str(s): 50.0 for s in seeds}} if seeds else {})}
          for t in tasks]
  return {"split": split, "row": row, "mean": 50.0,
          "mean_worst": 40.0 if seeds else None,
          "meta_training": None, "wall_s": 1.0, "hardware": "CPU",
          "config": {"k": 4, "seeds": [13], "test_tasks": test_tasks},
          "table": {"rows": rows, "skipped": skipped,
                    "max_examples_per_task": 4, "max_length": 1024,
                    "max_length_per_example": 256}}


def test_render_names_the_left_out_tasks_under_both_tables(tmp_path):
  pool = "not in the MetaICL pool under the data root"
  no_test = ("no data: MetaICL task 'tab_fact' has no split 'test'; it has"
             " ['dev_100', 'train_100'].")
  cases = {
      # Every test folder of the split given: the table's own reasons.
      "class_to_class": (None, [
          "tweet_eval-stance_feminist", "ethos-national_origin",
          "tweet_eval-hate", "ag_news", "hate_speech18", "poem_sentiment",
          "climate_fever", "medical_questions_pairs",
          "tweet_eval-stance_atheism", "superglue-cb", "wiki_qa", "emo",
          "ethos-religion", "anli", "ethos-race"], [
              {"task": "amazon_polarity", "reason": pool},
              {"task": "dbpedia_14", "reason": pool},
              {"task": "yelp_polarity", "reason": no_test},
              {"task": "financial_phrasebank", "reason": pool},
              {"task": "tab_fact", "reason": no_test}],
          "Left out of the means (5 of 20 test tasks): amazon_polarity,"
          " dbpedia_14, financial_phrasebank (not in the MetaICL pool here);"
          " yelp_polarity, tab_fact (no test file)."),
      # The first test task with data (the subset has no `skipped`): the
      # rest, by the pool, the test files and the settings.
      "non_paraphrase_to_paraphrase": (1, ["glue-mrpc"], [], (
          "Left out of the means (3 of 4 test tasks): glue-qqp, paws (no"
          " test file); medical_questions_pairs (beyond the first 1 test"
          " tasks with data).")),
  }
  for split, (test_tasks, done, skipped, _) in cases.items():
    (tmp_path / f"{split}__icl.json").write_text(json.dumps(
        _record(split, "icl", done, skipped, test_tasks)))
  lines = bench.render(tmp_path).splitlines()
  for split, (_, _, _, want) in cases.items():
    at = [i for i, line in enumerate(lines) if line == want]
    assert len(at) == 2, (split, want)  # Under the summary and per task.
    assert lines[at[0] - 2].startswith("| icl_knn | ")
    assert lines[at[1] - 2].startswith("| ") and lines[at[1] + 2] == (
        "</details>")
  assert not [line for line in lines if "Skipped" in line]


def test_render_says_none_when_nothing_was_left_out(tmp_path):
  folders = list(bench.metaicl_splits.test_folders("non_nli_to_nli"))
  (tmp_path / "non_nli_to_nli__icl.json").write_text(json.dumps(
      _record("non_nli_to_nli", "icl", folders, [], None)))
  lines = bench.render(tmp_path).splitlines()
  assert lines.count("Left out of the means: none.") == 2
  assert not [line for line in lines if line.endswith(": .")]


def test_render_counts_trimmed_contexts_and_dropped_examples(tmp_path):
  tasks = ["quarel", "dream"]
  rows = {
      "zero_shot": _record("hr_to_lr", "zero_shot", tasks, [], 2, seeds=()),
      "icl": _record("hr_to_lr", "icl", tasks, [], 2, {"dream": (5, 0)},
                     seeds=(13, 21)),
      "metaicl_prompt": _record("hr_to_lr", "metaicl_prompt", tasks, [], 2,
                                {"dream": (7, 1)}, seeds=(13, 21))}
  rows["metaicl_prompt"]["meta_training"] = {
      "part": "prompt", "train_tasks": 3, "examples": 22, "dropped": 2,
      "steps": 3, "batch": 8}
  for name, record in rows.items():
    (tmp_path / f"hr_to_lr__{name}.json").write_text(json.dumps(record))
  lines = bench.render(tmp_path).splitlines()
  # Contexts: 2 tasks x 4 rows x seeds (zero-shot: one run).
  for want in [
      "| method | mean over tasks | worst-seed mean | trimmed / contexts |"
      " trained on | wall |",
      "| zero_shot | 50.00 | - | 0 / 8 | - | 1 s (CPU) |",
      "| icl | 50.00 | 40.00 | 5 / 16 (dream) | - | 1 s (CPU) |",
      "| metaicl_prompt | 50.00 | 40.00 | 7 / 16 + 1 options (dream) | 3"
      " tasks, 3 x 8 (prompt); 22 examples, 2 dropped | 1 s (CPU) |",
      "| icl_knn | not run | | | | |",
      "| quarel | macro_f1 | 50.00 | 50.00 | 50.00 |",
      "| dream | macro_f1 | 50.00 | 50.00 (5 / 8 trimmed) | 50.00 (7 / 8"
      " + 1 options trimmed) |"]:
    assert want in lines, want
  legend = lines[0]
  assert "fit max_length = 1024 tokens" in legend
  assert "max_length_per_example = 256 tokens" in legend
  assert "\"+ N options\": options cut" in legend
  assert "No option was cut" not in legend
  # Without trimmed options the legend says so.
  rows["metaicl_prompt"]["table"]["rows"][1]["trimmed_options"] = 0
  (tmp_path / "hr_to_lr__metaicl_prompt.json").write_text(
      json.dumps(rows["metaicl_prompt"]))
  legend = bench.render(tmp_path).splitlines()[0]
  assert "No option was cut (`trimmed_options` is 0 in every row)." in legend
