"""Tests for prompt_jax.evaluators.unseen (the `--mode=unseen` entry point).

End to end: the real gin files, the tiny random T5 and a random `.npy`
prompt on three MetaICL test tasks (classification, multiple choice,
free-form), k = 2 over two seeds, a few rows each. The zero-shot scores are
checked against an independent computation of every option's
log-likelihood. The rest are unit tests without a model.
"""

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from prompt_jax import main as main_lib
from prompt_jax import setup as run_setup
from prompt_jax.evaluators import unseen as unseen_eval
from prompt_jax.icl import config as icl_config
from prompt_jax.methods import prompt_tuning
from tasks import metaicl
from tasks import testing_tasks
from tasks import vocab

CB, COPA, LAMA = ("metaicl_superglue_cb_v100", "metaicl_superglue_copa_v100",
                  "metaicl_lama_squad_v100")
P, H = 8, 64  # Prompt length; H of models/t5_1_1_tiny.gin.
LENGTHS = {"inputs": 96, "targets": 8}
LONG = {"inputs": 192, "targets": 24}  # Trims nothing in the rows used.


def _prompt_file(tmp_path: pathlib.Path) -> str:
  path = tmp_path / "prompt.npy"
  rng = np.random.default_rng(0)
  np.save(path, rng.uniform(-0.5, 0.5, (P, H)).astype(np.float32))
  return str(path)


def _tiny_backbone() -> run_setup.BackboneConfig:
  """The backbone of models/t5_1_1_tiny.gin (random weights, seed 0)."""
  return run_setup.BackboneConfig(
      preset="t5_1_1_tiny", random_weights=True, overrides={
      "vocab_size": 32128, "emb_dim": H, "num_heads": 4, "head_dim": 16,
      "mlp_dim": 128})


def _args(model_dir, prompt_file, *extra):
  return ["--mode=unseen", "--gin_file=runs/unseen_eval.gin",
          "--gin_file=models/t5_1_1_tiny.gin", "--gin_file=prompts/random.gin",
          f"--gin.MODEL_DIR='{model_dir}'", f"--gin.PROMPT_LENGTH={P}",
          f"--gin.PROMPT_FILE='{prompt_file}'",
          f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", *extra]


def test_end_to_end_k_shot_table(tmp_path):
  model_dir = tmp_path / "run"
  table = main_lib.run(_args(
      model_dir, _prompt_file(tmp_path),
      f"--gin.TASK_NAMES={[CB, COPA, LAMA]}", "--gin.K_SHOT=2",
      "--gin.SEEDS=(100, 13)", "--gin.MAX_EXAMPLES_PER_TASK=6",
      "--gin.EVAL_BATCH_SIZE=16"))
  out = model_dir / "unseen_eval"
  written = json.loads((out / "unseen_test_k2.json").read_text())
  assert written == table
  rows = table["rows"]
  assert [r["task"] for r in rows] == [CB, COPA, LAMA]
  assert [(r["type"], r["method"], r["metric"]) for r in rows] == [
      ("classification", "rank", "macro_f1"),
      ("multi-choice", "rank", "accuracy"),
      ("free-form", "generation", "accuracy")]
  assert [(r["examples"], r["available"]) for r in rows] == [
      (6, 56), (6, 100), (6, 61)]
  # k = 2 demonstrations overflow 96 CB tokens (kept: the example's end);
  # COPA's sentence options overflow 8 target tokens.
  assert rows[0]["trimmed_inputs"] > 0 and rows[1]["trimmed_options"] > 0
  for r in rows:
    assert set(r["seeds"]) == {"100", "13"}
    assert r["score"] == pytest.approx(np.mean(list(r["seeds"].values())))
    assert r["worst"] == min(r["seeds"].values())
    assert 0.0 <= r["worst"] <= r["score"] <= 100.0
  assert table["mean"] == pytest.approx(np.mean([r["score"] for r in rows]))
  assert table["mean_worst"] == pytest.approx(
      np.mean([r["worst"] for r in rows]))
  assert table["seed_means"]["13"] == pytest.approx(
      np.mean([r["seeds"]["13"] for r in rows]))

  markdown = (out / "unseen_test_k2.md").read_text()
  body = [line for line in markdown.splitlines() if line.startswith("| ")]
  assert body[0] == ("| task | type | metric | n | score | worst | seed 100"
                     " | seed 13 |")
  assert [line.split(" | ")[0][2:] for line in body[1:]] == [
      CB, COPA, LAMA, "**mean**"]
  assert f"| {table['mean']:.2f} |" in body[-1]
  # Tasks named one by one (no MetaICL test mixture): none left out.
  assert table["skipped"] == []
  assert markdown.splitlines()[-1] == "Left out of the mean: none."


def _independent_scores(run, prompt_file: str, task_name: str, n: int):
  """Predictions from per-option log-likelihoods, no unseen_eval code."""
  trainable = {"prompt": {"prompt": jnp.asarray(np.load(prompt_file))}}
  v = vocab.t5_vocabulary()
  rows = seqio.get_mixture_or_task(task_name).source.read("test")[:n]

  def pad(ids, length):
    assert len(ids) <= length  # Nothing trimmed: no trimming to mirror.
    return ids + [0] * (length - len(ids))

  enc, tgt = [], []
  for text, _, options in rows:
    for option in options:
      enc.append(pad(v.encode(text) + [1], LONG["inputs"]))
      tgt.append(pad(v.encode(option) + [1], LONG["targets"]))
  scores, _ = jax.jit(run.model.score_batch)(
      trainable, run.frozen, jnp.asarray(enc), jnp.asarray(tgt))
  scores, start, predictions = np.asarray(scores), 0, []
  for _, _, options in rows:
    k = len(options)
    predictions.append(options[int(np.argmax(scores[start:start + k]))])
    start += k
  return [r[1] for r in rows], predictions


def test_zero_shot_equals_independent_log_likelihoods(tmp_path, monkeypatch):
  built = []
  build_run = run_setup.build_run
  monkeypatch.setattr(run_setup, "build_run",
                      lambda **kw: built.append(build_run(**kw)) or built[-1])
  prompt_file = _prompt_file(tmp_path)
  table = unseen_eval.evaluate_unseen(
      model_dir=str(tmp_path / "run"), backbone=_tiny_backbone(),
      method=prompt_tuning.PromptTuning(length=P), task_names=[CB, COPA],
      task_feature_lengths=LONG, batch_size=8, prompt_file=prompt_file,
      icl=icl_config.ICLConfig(max_examples_per_task=5,
                               score_normalization="sum"),
      output_dir=str(tmp_path / "tables"))
  assert (tmp_path / "tables" / "unseen_test_k0.md").exists()
  assert "seeds" not in table["rows"][0] and table["seeds"] == []
  assert all(r["trimmed_inputs"] == r["trimmed_options"] == 0
             for r in table["rows"])
  targets, predictions = _independent_scores(built[0], prompt_file, CB, 5)
  assert table["rows"][0]["metrics"] == pytest.approx({
      "accuracy": metaicl.exact_match_accuracy(targets, predictions),
      "macro_f1": metaicl.macro_f1(targets, predictions)})
  targets, predictions = _independent_scores(built[0], prompt_file, COPA, 5)
  assert table["rows"][1]["score"] == pytest.approx(
      metaicl.exact_match_accuracy(targets, predictions))
  assert table["mean"] == pytest.approx(
      np.mean([r["score"] for r in table["rows"]]))


def test_unknown_task_is_one_line(tmp_path, capsys):
  code = main_lib.main(_args(tmp_path / "run", tmp_path / "p.npy",
                             "--gin.TASK_NAMES=['metaicl_nope_v100']"))
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  assert len(err) == 1 and "unknown task or mixture 'metaicl_nope_v100'" in (
      err[0]), err


# ------------------------------ unit tests ---------------------------------


def test_fit_trims_from_the_start_for_inputs():
  ids, trimmed = unseen_eval.fit([5, 6, 7, 8], 4, 1, keep_end=True)
  assert ids.tolist() == [6, 7, 8, 1] and trimmed
  ids, trimmed = unseen_eval.fit([5, 6, 7, 8], 4, 1, keep_end=False)
  assert ids.tolist() == [5, 6, 7, 1] and trimmed
  ids, trimmed = unseen_eval.fit([5], 4, 1, keep_end=True)
  assert ids.tolist() == [5, 1, 0, 0] and not trimmed
  ids, _ = unseen_eval.fit([5, 6], 2, None, keep_end=True)
  assert ids.tolist() == [5, 6]


class _FakePredictor:
  """`score` returns fixed per-row scores, in row order."""

  def __init__(self, scores):
    self.scores = np.asarray(scores, np.float32)
    self.targets = None

  def score(self, trainable, frozen, encoder, targets):
    del trainable, frozen
    assert len(encoder) == len(targets) == len(self.scores)
    self.targets = targets
    return self.scores


@pytest.mark.parametrize("normalization,want", [
    ("sum", ["a", "yes"]),               # -2 > -3.5; -4 > -5 > -9.
    ("mean", ["b c d", "no way at"]),    # -2/3 < -3.5/7; -4/2 < -5/4.
])
def test_rank_predictions_groups_and_normalizes(normalization, want):
  task = seqio.get_mixture_or_task(CB)
  options = [("a", "b c d"), ("yes", "no way at", "maybe")]
  predictor = _FakePredictor([-2.0, -3.5, -4.0, -5.0, -9.0])
  scorer = unseen_eval._Scorer(predictor, None, None, {"targets": 8},
                               normalization)
  predictions, trimmed = unseen_eval.rank_predictions(
      scorer, task, np.ones((2, 4), np.int32), options)
  assert predictions == want and trimmed == 0
  # Target tokens, EOS included: a 3, "b c d" 7, yes 2, "no way at" 4,
  # maybe 2 (T5 vocabulary).
  assert np.count_nonzero(predictor.targets, axis=1).tolist() == [
      3, 7, 2, 4, 2]


def test_rank_predictions_counts_trimmed_options():
  task = seqio.get_mixture_or_task(CB)
  scorer = unseen_eval._Scorer(_FakePredictor([0.0, -1.0]), None, None,
                               {"targets": 3}, "sum")
  predictions, trimmed = unseen_eval.rank_predictions(
      scorer, task, np.ones((1, 4), np.int32), [("b c d", "a")])
  assert predictions == ["b c d"] and trimmed == 1


def test_demonstrations_are_the_first_k_rows_of_the_seed_file():
  task = seqio.get_mixture_or_task(CB)
  demos = unseen_eval.demonstrations(task, 13, 3)
  rows = task.source.read("train_13")[:3]
  assert demos == [(r[0], r[1]) for r in rows]
  assert unseen_eval.demonstrations(task, 21, 3) != demos
  with pytest.raises(ValueError, match="17 demonstrations asked, only 16"):
    unseen_eval.demonstrations(task, 13, 17)


def test_demonstrations_of_a_task_without_seed_files_are_seeded():
  pairs = [{"inputs": f"q{i}", "targets": f"a{i}"} for i in range(10)]
  testing_tasks.register_in_memory_task("unseen_t_mem", pairs)
  task = seqio.get_mixture_or_task("unseen_t_mem")
  first = unseen_eval.demonstrations(task, 7, 4)
  assert first == unseen_eval.demonstrations(task, 7, 4)
  assert first != unseen_eval.demonstrations(task, 8, 4)
  assert all(re.fullmatch(r"q(\d) a\1", f"{i} {o}") for i, o in first)


def test_task_types():
  def rows(name, options):
    return unseen_eval.TaskRows(name, ["x"] * len(options),
                                ["y"] * len(options), options, [], 0)
  assert unseen_eval.task_type(rows(CB, [("a", "b")])) == "classification"
  assert unseen_eval.task_type(rows("other", [(), ()])) == "free-form"
  assert unseen_eval.task_type(
      rows("other", [("a", "b"), ("b", "a")])) == "classification"
  assert unseen_eval.task_type(
      rows("other", [("a", "b"), ("c", "d")])) == "multi-choice"
  with pytest.raises(ValueError, match="some examples have options"):
    unseen_eval.task_type(rows("other", [("a",), ()]))
  with pytest.raises(ValueError, match="is free-form but its examples have"):
    unseen_eval.task_type(rows(LAMA, [("a", "b")]))


def test_resolve_and_check_unseen():
  names = unseen_eval.resolve_tasks(["metaicl_non_paraphrase_to_paraphrase"
                                     "_test_v100", CB])
  assert names == ["metaicl_glue_mrpc_v100",
                   "metaicl_medical_questions_pairs_v100", CB]
  unseen_eval.check_unseen(names, ["metaicl_hr_to_lr_train_v100"])
  with pytest.raises(ValueError, match="metaicl_glue_sst2_v100.*trained on"):
    unseen_eval.check_unseen(["metaicl_glue_sst2_v100"],
                             ["metaicl_hr_to_lr_train_v100"])
  with pytest.raises(ValueError, match="unknown task or mixture 'x_v1'"):
    unseen_eval.resolve_tasks(["x_v1"])
