"""Tests of the T5 unseen-task ICL variants: calibration and kNN demos.

The tiny random T5 (`t5_1_1_tiny` preset, the real T5 vocabulary size) and a
random prompt score real MetaICL rows of superglue-cb
(`metaicl_superglue_cb_v100`). Every check is against an independent
computation that uses no `unseen_eval` / `unseen_t5_scoring` code: option
log-likelihoods from `PromptT5Model.score_batch`, encoder states from
`T5Transformer.encode`, the calibration formula from `icl.calibration`.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from prompt_jax import main as main_lib
from prompt_jax.decoding import predictor as predicting
from prompt_jax import setup as run_setup
from prompt_jax.evaluators import unseen as unseen_eval
from prompt_jax.icl import calibration
from prompt_jax.icl import config as icl_config
from prompt_jax.icl import metaicl_pool
from prompt_jax.backbones.t5 import network
from prompt_jax.methods import prompt_tuning
from tasks import metaicl  # pylint: disable=unused-import  Registers CB.
from tasks import vocab

CB = "metaicl_superglue_cb_v100"
P, H = 8, 64  # Prompt length; H of models/t5_1_1_tiny.gin.
LENGTHS = {"inputs": 384, "targets": 8}  # Trims nothing in the rows used.
SEED, N = 13, 6  # Train file of seed 13; the first N test rows.


@pytest.fixture(scope="module")
def setup():
  """(run, trainable, predictor) of the tiny T5 with a random prompt."""
  run = run_setup.build_run(
      backbone=run_setup.BackboneConfig(
          preset="t5_1_1_tiny", random_weights=True, overrides={
          "vocab_size": 32128, "emb_dim": H, "num_heads": 4, "head_dim": 16,
          "mlp_dim": 128}),
      method=prompt_tuning.PromptTuning(length=P), mesh_cfg=run_setup.MeshConfig())
  prompt = np.random.default_rng(3).uniform(-0.5, 0.5, (P, H))
  trainable = {"prompt": {"prompt": jnp.asarray(prompt, jnp.float32)}}
  predictor = predicting.Predictor(
      run.model, run.mesh, run.rules,
      jax.tree.map(lambda x: x.sharding, run.frozen), max_decode_length=8,
      batch_size=8)
  return run, trainable, predictor


def _scorer(setup, **variant):
  _, trainable, predictor = setup
  return unseen_eval._Scorer(predictor, trainable, setup[0].frozen,
                             LENGTHS, "sum", **variant)


def _ids(texts, length):
  v = vocab.t5_vocabulary()
  ids = [v.encode(t) + [1] for t in texts]
  assert max(len(i) for i in ids) <= length  # Nothing trimmed to mirror.
  return np.asarray([i + [0] * (length - len(i)) for i in ids], np.int32)


def _option_scores(setup, inputs, options):
  """[len(inputs), C] summed log p(option | input) under the prompt."""
  run, trainable, _ = setup
  enc = _ids([t for t in inputs for _ in options], LENGTHS["inputs"])
  tgt = _ids(list(options) * len(inputs), LENGTHS["targets"])
  scores, _ = jax.jit(run.model.score_batch)(trainable, run.frozen, enc, tgt)
  return np.asarray(scores, np.float64).reshape(len(inputs), len(options))


def _predictions_of(monkeypatch, fn):
  """Runs fn(); returns the predictions unseen_eval scored (one scoring run;
  its metrics all see the same predictions)."""
  seen = []
  accuracy = metaicl_pool.exact_match_accuracy
  monkeypatch.setattr(metaicl_pool, "exact_match_accuracy",
                      lambda t, p: seen.append(list(p)) or accuracy(t, p))
  row = fn()
  assert seen and all(p == seen[0] for p in seen), seen
  return row, seen[0]


def test_contextual_calibration_is_calibrate_of_content_free_scores(
    setup, monkeypatch):
  rows = seqio.get_mixture_or_task(CB).source.read("test")[:N]
  demo = seqio.get_mixture_or_task(CB).source.read(f"train_{SEED}")[0][:2]
  options = rows[0][2]
  assert all(r[2] == options for r in rows)  # Classification: one key.
  query = _option_scores(setup, [" ".join([*demo, r[0]]) for r in rows],
                         options)  # [N, C]
  free = _option_scores(setup, [" ".join([*demo, t]) for t in
                                calibration.CONTENT_FREE_INPUTS], options)
  p_cf = calibration.content_free_probs(free)  # [C]
  want = [options[i] for i in
          np.argmax(calibration.calibrate(query, p_cf), axis=1)]
  plain = [options[i] for i in np.argmax(query, axis=1)]
  assert want != plain  # The calibration flips at least one prediction.

  def evaluate(**variant):
    return unseen_eval.evaluate_task(
        _scorer(setup, **variant), CB, split="test", k_shot=1, seeds=(SEED,),
        max_examples=N)
  row, got = _predictions_of(monkeypatch,
                             lambda: evaluate(calibration="contextual"))
  assert got == want and row["calibrated"] is True
  row, got = _predictions_of(monkeypatch, evaluate)  # (c) Default: plain.
  assert got == plain and "calibrated" not in row


def _encoder_embeddings(setup, texts):
  """[N, H] mean of the plain model's encoder states over real tokens."""
  run = setup[0]
  tokens = _ids(texts, LENGTHS["inputs"])
  encoded, _ = run.model.module.apply(
      {"params": run.frozen}, tokens, tokens != 0,
      method=network.T5Transformer.encode)  # [N, Ti, H]
  mask = (tokens != 0)[..., None]
  return (np.asarray(encoded, np.float64) * mask).sum(1) / mask.sum(1)


def test_knn_demonstrations_are_nearest_by_encoder_most_similar_last(
    setup, monkeypatch):
  task = seqio.get_mixture_or_task(CB)
  train = [r[:2] for r in task.source.read(f"train_{SEED}")]  # 16 rows.
  queries = [r[0] for r in task.source.read("test")[:N]]
  unit = lambda e: e / np.linalg.norm(e, axis=1, keepdims=True)
  sims = unit(_encoder_embeddings(setup, queries)) @ unit(
      _encoder_embeddings(setup, [x for x, _ in train])).T  # [N, 16]
  k = 3
  want = [[train[i] for i in np.argsort(-s, kind="stable")[:k][::-1]]
          for s in sims]
  used = []
  score_task = unseen_eval.score_task
  monkeypatch.setattr(unseen_eval, "score_task",
                      lambda *a: used.append(a[-1]) or score_task(*a))
  unseen_eval.evaluate_task(_scorer(setup, demonstrations="knn"), CB,
                            split="test", k_shot=k, seeds=(SEED,),
                            max_examples=N)
  assert [list(d) for d in used[0]] == want
  assert len({tuple(d) for d in want}) > 1  # Per query, not one set.
  for row, s in zip(used[0], sims):  # Most similar last.
    assert train.index(row[-1]) == int(np.argmax(s))
  used.clear()  # (c) Default: the seed's first k rows for every query.
  unseen_eval.evaluate_task(_scorer(setup), CB, split="test", k_shot=k,
                            seeds=(SEED,), max_examples=N)
  assert used[0] == [train[:k]] * N


def test_gin_macros_reach_the_t5_table(tmp_path):
  prompt_file = tmp_path / "prompt.npy"
  np.save(prompt_file, np.zeros((P, H), np.float32))
  model_dir = tmp_path / "run"
  args = ["--mode=unseen", "--gin_file=runs/unseen_eval.gin",
          "--gin_file=models/t5_1_1_tiny.gin", "--gin_file=prompts/random.gin",
          f"--gin.MODEL_DIR='{model_dir}'", f"--gin.PROMPT_LENGTH={P}",
          f"--gin.PROMPT_FILE='{prompt_file}'", f"--gin.TASK_NAMES={[CB]}",
          f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.K_SHOT=1",
          "--gin.SEEDS=(13,)", "--gin.MAX_EXAMPLES_PER_TASK=2",
          "--gin.EVAL_BATCH_SIZE=8", "--gin.CALIBRATION='contextual'",
          "--gin.DECODER_DEMONSTRATIONS='knn'"]  # Deprecated alias.
  table = main_lib.run(args)
  assert (table["calibration"], table["demonstrations"], table["variant"]) == (
      "contextual", "knn", "direct_knn_calibrated")
  out = model_dir / "unseen_eval"
  stem = "unseen_direct_knn_calibrated_test_k1"
  assert json.loads((out / f"{stem}.json").read_text()) == table
  assert (out / f"{stem}.md").read_text().startswith(
      "T5 `direct_knn_calibrated` (calibration: contextual; demonstrations:"
      " knn).")
  assert table["rows"][0]["calibrated"] is True


def _evaluate(decoder_calibration=None, decoder_demonstrations="seed",
              **icl):
  return unseen_eval.evaluate_unseen(
      model_dir="/nonexistent", backbone=run_setup.BackboneConfig(
          preset="t5_1_1_tiny", random_weights=True),
      method=prompt_tuning.PromptTuning(length=P),
      task_names=[CB], task_feature_lengths=LENGTHS,
      icl=icl_config.ICLConfig(**icl),
      decoder_calibration=decoder_calibration,
      decoder_demonstrations=decoder_demonstrations)


@pytest.mark.parametrize("kwargs,message", [
    (dict(calibration="platt"),
     r"calibration='platt'; use one of \(None, 'contextual'\)"),
    (dict(demonstrations="random", k_shot=2),
     r"demonstrations='random'; use one of \('seed', 'knn'\)"),
    (dict(demonstrations="knn"), "demonstrations='knn' needs k_shot > 0"),
    (dict(calibration="contextual", decoder_calibration="other"),
     "calibration='contextual' and its deprecated alias"
     " decoder_calibration='other' disagree"),
    (dict(demonstrations="knn", decoder_demonstrations="random", k_shot=1),
     "demonstrations='knn' and its deprecated alias"),
    (dict(method="noisy"), r"method='noisy'; use one of \('direct',"),
    (dict(order="globale", k_shot=1), "order='globale' needs k >= 2"),
    (dict(demonstrations="knn", decoder_demonstrations="seed"),
     "demonstrations='knn' needs k_shot > 0"),
])
def test_bad_values_are_one_line_errors(kwargs, message):
  with pytest.raises(ValueError, match=message) as error:
    _evaluate(**kwargs)
  assert "\n" not in str(error.value)


def test_bad_gin_macro_is_one_line_on_the_command_line(tmp_path, capsys):
  code = main_lib.main([
      "--mode=unseen", "--gin_file=runs/unseen_eval.gin",
      "--gin_file=models/t5_1_1_tiny.gin", "--gin_file=prompts/random.gin",
      f"--gin.MODEL_DIR='{tmp_path}'", f"--gin.TASK_NAMES={[CB]}",
      f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.DEMONSTRATIONS='nn'"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  assert len(err) == 1 and "demonstrations='nn'; use one of" in err[0], err
