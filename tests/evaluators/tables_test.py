"""Tests for prompt_jax.evaluators.tables: the tasks left out of the mean are
named under the Markdown table (or "none"), and those of a MetaICL test
mixture that the mixture lacks are found."""

import json

from prompt_jax.evaluators import tables as unseen_table
from prompt_jax.icl import metaicl_pool


def _table(skipped):
  return {"split": "test", "k_shot": 0, "seeds": [],
          "score_normalization": "mean", "mean": 50.0, "skipped": skipped,
          "rows": [{"task": "superglue-cb", "type": "classification",
                    "metric": "macro_f1", "examples": 56, "score": 50.0}]}


def test_markdown_names_the_left_out_tasks_under_the_table():
  text = unseen_table.markdown(_table([
      {"task": "financial_phrasebank",
       "reason": "not in the MetaICL pool under the data root"},
      {"task": "tab_fact", "reason": "no test file"}]))
  assert text.splitlines()[-4:] == [
      "| superglue-cb | classification | macro_f1 | 56 | 50.00 |",
      "| **mean** |  |  |  | 50.00 |",
      "",
      "Left out of the mean (2): financial_phrasebank (not in the MetaICL"
      " pool under the data root), tab_fact (no test file)."]


def test_markdown_says_when_none_was_left_out():
  assert unseen_table.markdown(_table([])).splitlines()[-2:] == [
      "", "Left out of the mean: none."]


def test_metaicl_left_out_of_a_test_mixture():
  with_file = [metaicl_pool.NAME_OF[f] for f in (
      "tweet_eval-stance_feminist", "ethos-national_origin",
      "tweet_eval-hate", "ag_news", "hate_speech18", "poem_sentiment",
      "climate_fever", "medical_questions_pairs", "tweet_eval-stance_atheism",
      "superglue-cb", "wiki_qa", "emo", "ethos-religion", "anli",
      "ethos-race")]
  pool = "not in the MetaICL pool under the data root"
  assert unseen_table.metaicl_left_out(
      ["metaicl_class_to_class_test_v100"], with_file) == [
          {"task": "amazon_polarity", "reason": pool},
          {"task": "dbpedia_14", "reason": pool},
          {"task": "metaicl_yelp_polarity_v100", "reason": "no test file"},
          {"task": "financial_phrasebank", "reason": pool},
          {"task": "metaicl_tab_fact_v100", "reason": "no test file"}]
  # Plain task names (no test mixture): nothing is known to be left out.
  assert unseen_table.metaicl_left_out(with_file[:2], with_file[:2]) == []


def test_write_puts_both_files_atomically(tmp_path):
  table = {"variant": "direct_seed", "mean": 41.5, "rows": []}
  json_path, md_path = unseen_table.write(table, tmp_path / "out", "t",
                                          "| a |\n")
  assert json.loads(json_path.read_text()) == table
  assert md_path.read_text() == "| a |\n"
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["t.json",
                                                                 "t.md"]
