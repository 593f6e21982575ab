"""Tests for prompt_jax.evaluators.unseen_decoder (MetaICL unseen tasks, decoder).

A tiny random decoder and a stub word tokenizer on two real MetaICL test
tasks (superglue-cb: classification; superglue-copa: multiple choice with
per-row options), k = 2 demonstrations, seeds 13 and 21, 8 rows each. Direct
and channel scores are checked against `score_batch` on sequences written
out here by hand; table metrics, mean and worst against recomputation.
"""

import functools
import json
import zlib

import jax
import numpy as np
import pytest

from prompt_jax.evaluators import unseen_decoder as ude
from prompt_jax.testing import llama as decoder_testing
from prompt_jax.icl import calibration
from prompt_jax.methods.prompt_tuning import method as prompt_tuning_lib
from tasks import kshot
from tasks import metaicl

CFG = decoder_testing.tiny_decoder_config(num_layers=2,
                                          max_position_embeddings=2048)
SEEDS = (13, 21)
ROWS = 8


def _encode(text: str) -> list[int]:
  """Stub tokenizer: one id in [3, 97) per whitespace-separated word."""
  return [3 + zlib.crc32(w.encode()) % 94 for w in text.split()]


@pytest.fixture(scope="module", name="scorer")
def _scorer():
  model = prompt_tuning_lib.decoder_model(CFG, 3)
  return ude.DecoderScorer(model, decoder_testing.random_params(CFG, seed=0),
                           _encode)


def _rows(folder: str, seed: int, k: int = 2):
  source = metaicl.MetaICLSource(folder)
  train = [r[:2] for r in source.read(f"train_{seed}")]
  demos = kshot.train_file_demonstrations(train, k, seed, task=folder)
  return demos, source.read("test")[:ROWS]


@functools.partial(jax.jit, static_argnums=0)
def _score_batch(model, trainable, frozen, inputs, targets, in_mask, t_mask):
  return model.score_batch(trainable, frozen, inputs, targets,
                           input_mask=in_mask, target_mask=t_mask)[0]


def _reference(scorer, trainable, context_ids, target_ids) -> float:
  """score_batch on [context, target] (padded to fixed sizes: one compile)."""
  inputs, targets = np.zeros((1, 512), np.int32), np.zeros((1, 128), np.int32)
  inputs[0, :len(context_ids)], targets[0, :len(target_ids)] = (context_ids,
                                                                target_ids)
  return float(_score_batch(scorer.model, trainable, scorer.frozen, inputs,
                            targets, inputs != 0, targets != 0)[0])


def _written_out(demos, first: str, scored: str, method: str):
  """(conditioning ids, scored ids), each piece tokenized on its own."""
  ids = []
  for i, (x, y) in enumerate(demos):
    a, b = (x, y) if method == "direct" else (y, x)
    ids += _encode((" " if i else "") + a) + _encode(" " + b)
  return ids + _encode(" " + first), _encode(" " + scored)


@pytest.mark.parametrize("method,folder,with_prompt", [
    ("direct", "superglue-cb", False), ("direct", "superglue-copa", True),
    ("channel", "superglue-cb", False), ("channel", "superglue-copa", False)])
def test_scores_equal_written_out_log_likelihood(scorer, method, folder,
                                                 with_prompt):
  trainable = (scorer.model.init_trainable(jax.random.key(1)) if with_prompt
               else None)
  prompted = ude.DecoderScorer(scorer.model, scorer.frozen, _encode,
                               trainable)
  demos, rows = _rows(folder, seed=13)
  rows = rows[:4]
  fmt = ude.DecoderEvalConfig(method=method).kshot_format()
  got, truncated = ude.option_scores(
      prompted, fmt, [demos] * len(rows), [r[0] for r in rows],
      [r[2] for r in rows], where=folder)
  assert truncated == 0
  unshared, _ = ude.option_scores(  # The kNN path: context inside each row.
      prompted, fmt, [demos] * len(rows), [r[0] for r in rows],
      [r[2] for r in rows], share_context=False)
  np.testing.assert_allclose(np.concatenate(unshared), np.concatenate(got),
                             rtol=1e-4, atol=1e-4)
  coarse, _ = ude.option_scores(  # Fixed shapes: inputs padded to 256.
      prompted, fmt, [demos] * len(rows), [r[0] for r in rows],
      [r[2] for r in rows], share_context=False, bucket=256, batch_size=3)
  np.testing.assert_allclose(np.concatenate(coarse), np.concatenate(got),
                             rtol=1e-4, atol=1e-4)
  for row, scores in zip(rows, got):
    want = []
    for option in row[2]:
      first, scored = ((row[0], option) if method == "direct"
                       else (option, row[0]))
      want.append(_reference(prompted, trainable,
                             *_written_out(demos, first, scored, method)))
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-4)
  if folder == "superglue-copa":  # Per-row options really differ.
    assert len({r[2] for r in rows}) == len(rows)


def test_mean_normalization_divides_by_option_tokens(scorer):
  demos, rows = _rows("superglue-copa", seed=21)
  fmt = ude.DecoderEvalConfig().kshot_format()
  args = (scorer, fmt, [demos] * 2, [r[0] for r in rows[:2]],
          [r[2] for r in rows[:2]])
  summed, _ = ude.option_scores(*args)
  mean, _ = ude.option_scores(*args, normalization="mean")
  for row, s, m in zip(rows, summed, mean):
    lengths = [len(_encode(" " + o)) for o in row[2]]
    np.testing.assert_allclose(m, s / np.array(lengths), rtol=1e-6)


def test_table_metrics_mean_worst_and_skipped(scorer, tmp_path):
  cfg = ude.DecoderEvalConfig(k=2, seeds=SEEDS, max_rows_per_task=ROWS,
                              score_normalization="sum")
  folders = ["superglue-cb", "no-such-task", "superglue-copa",
             "yelp_polarity"]
  table = ude.evaluate_folders(scorer, folders, cfg)
  assert [s["task"] for s in table["skipped"]] == ["no-such-task",
                                                   "yelp_polarity"]
  assert "no split 'test'" in table["skipped"][1]["reason"]
  cb, copa = table["rows"]
  assert (cb["type"], cb["metric"]) == ("classification", "macro_f1")
  assert (copa["type"], copa["metric"]) == ("multi-choice", "accuracy")
  fmt = cfg.kshot_format()
  for row in (cb, copa):
    assert (row["examples"], row["available"]) == (
        ROWS, {"superglue-cb": 56, "superglue-copa": 100}[row["task"]])
    for seed in SEEDS:
      demos, rows = _rows(row["task"], seed)
      scores, _ = ude.option_scores(scorer, fmt, [demos] * ROWS,
                                    [r[0] for r in rows],
                                    [r[2] for r in rows])
      preds = [r[2][int(np.argmax(s))] for r, s in zip(rows, scores)]
      gold = [r[1] for r in rows]
      want = (metaicl.macro_f1(gold, preds) if row is cb
              else metaicl.exact_match_accuracy(gold, preds))
      assert row["seeds"][str(seed)] == pytest.approx(want)
    seed_scores = [row["seeds"][str(s)] for s in SEEDS]
    assert row["score"] == pytest.approx(np.mean(seed_scores))
    assert row["worst"] == min(seed_scores)
  assert "macro_f1" not in copa["seed_metrics"]["13"]
  assert table["mean"] == pytest.approx((cb["score"] + copa["score"]) / 2)
  assert table["mean_worst"] == pytest.approx((cb["worst"] + copa["worst"]) / 2)
  json_path, md_path = ude.write_table(table, tmp_path)
  assert json.loads(json_path.read_text())["rows"][0]["task"] == "superglue-cb"
  markdown = md_path.read_text()
  assert "| superglue-copa | multi-choice | accuracy | 8 |" in markdown
  lines = markdown.splitlines()
  assert lines[-2:] == ["", "Left out of the mean (2): no-such-task (not in"
                        " the MetaICL pool under the data root),"
                        f" yelp_polarity ({table['skipped'][1]['reason']})."]
  assert lines[-3].startswith("| **mean** |")


def test_contextual_calibration_reweights_by_content_free_scores(scorer):
  cfg = ude.DecoderEvalConfig(k=2, seeds=(13,), max_rows_per_task=ROWS,
                              calibration="contextual")
  got = ude.evaluate_seed(scorer, "superglue-cb", 13, cfg)
  fmt = cfg.kshot_format()
  demos, rows = _rows("superglue-cb", 13)
  options = rows[0][2]
  assert all(r[2] == options for r in rows)
  cf, _ = ude.option_scores(scorer, fmt, [demos] * 3,
                            list(calibration.CONTENT_FREE_INPUTS),
                            [options] * 3, normalization="mean")
  p_cf = calibration.content_free_probs(np.stack(cf))
  scores, _ = ude.option_scores(scorer, fmt, [demos] * ROWS,
                                [r[0] for r in rows], [options] * ROWS,
                                normalization="mean")
  preds = [options[int(i)] for i in
           calibration.calibrated_predictions(np.stack(scores), p_cf)]
  assert got["score"] == pytest.approx(
      metaicl.macro_f1([r[1] for r in rows], preds))


def test_knn_picks_the_most_similar_train_rows_last(scorer):
  source = metaicl.MetaICLSource("superglue-cb")
  train = [r[:2] for r in source.read("train_13")]
  queries = [r[0] for r in source.read("test")[:3]]
  got = ude.knn_demonstrations(scorer, train, queries, 3, task="cb",
                               max_tokens=256)
  emb = lambda texts: ude.sentence_embeddings(scorer, texts, max_tokens=256)
  train_e, query_e = emb([x for x, _ in train]), emb(queries)
  # Independent: mean of the final states of the query alone.
  ids = np.array([_encode(queries[0])], np.int32)
  hidden = scorer.model.module.apply({"params": scorer.frozen}, ids,
                                     np.ones_like(ids, bool),
                                     return_hidden=True)
  np.testing.assert_allclose(query_e[0], np.asarray(hidden)[0].mean(0),
                             rtol=1e-4, atol=1e-5)
  cos = (query_e / np.linalg.norm(query_e, axis=1, keepdims=True)) @ (
      train_e / np.linalg.norm(train_e, axis=1, keepdims=True)).T
  for q, demos in enumerate(got):
    nearest = np.argsort(-cos[q], kind="stable")[:3][::-1]
    assert demos == [train[i] for i in nearest]


def test_bad_settings_are_one_line_errors():
  with pytest.raises(ValueError, match=r"k=17: .* 0 <= k <= 16") as e:
    ude.DecoderEvalConfig(k=17)
  assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="knn' needs k > 0"):
    ude.DecoderEvalConfig(k=0, demonstrations="knn")
  with pytest.raises(ValueError, match="method='noisy'"):
    ude.DecoderEvalConfig(method="noisy")
  with pytest.raises(ValueError, match="neither a MetaICL split"):
    ude.split_test_folders(["metaicl_nope_v100"])
  with pytest.raises(ValueError, match="layout='t5' not in"):
    ude.KShotEvalConfig(layout="t5")


def test_split_test_folders_expand_splits_and_keep_missing_tasks():
  folders = ude.split_test_folders(["hr_to_lr", "metaicl_superglue_cb_v100"])
  assert folders[:3] == ["quarel", "financial_phrasebank", "openbookqa"]
  assert len(folders) == 26 and folders.count("superglue-cb") == 1
  assert ude.split_test_folders(["metaicl_class_to_class_test_v100"]) == (
      ude.split_test_folders(["class_to_class"]))
  assert ude.split_test_folders(["glue-rte"]) == ["glue-rte"]
