"""T5 through the k-shot loop of prompt_jax.evaluators.unseen_decoder.

A tiny random T5 with a random soft prompt and a stub word tokenizer on real
MetaICL test rows (superglue-cb: one option set; superglue-copa: per-row
options), k = 2 demonstrations of seed 13. Direct and channel option scores
of the unseen-task evaluation are checked against `score_batch` on rows
written out here by hand ([demonstrations, query, EOS] as the encoder
input, [scored text, EOS] as the target); GlobalE / LocalE order selection
against entropies recomputed from those hand-written scores.
"""

import functools
import zlib

import jax
import numpy as np
import pytest

from prompt_jax import models
from prompt_jax import partitioning
from prompt_jax import setup as run_setup
from prompt_jax import testing
from prompt_jax.evaluators import unseen as unseen_eval
from prompt_jax.evaluators import unseen_decoder as ude
from prompt_jax.evaluators import unseen_kshot
from prompt_jax.icl import calibration
from prompt_jax.icl import config as icl_config
from prompt_jax.icl import kshot_format
from prompt_jax.icl import metaicl_pool
from prompt_jax.icl import order_selection
from prompt_jax.methods import prompt_tuning
from prompt_jax.methods.prompt_tuning import method as prompt_tuning_lib

CFG = testing.tiny_t5_config()
EOS = CFG.eos_id
SEED, ROWS = 13, 4
LENGTHS = {"inputs": 1024, "targets": 16}
ENC, TGT = 768, 128  # Padded sizes of the hand-written rows (one compile).


def _encode(text: str) -> list[int]:
  """Stub tokenizer: one id in [3, 97) per whitespace-separated word."""
  return [3 + zlib.crc32(w.encode()) % 94 for w in text.split()]


@pytest.fixture(scope="module", name="scorer")
def _scorer() -> ude.KShotScorer:
  model = prompt_tuning_lib.t5_model(CFG, 3)
  mesh = partitioning.make_mesh(1, 1, jax.devices()[:1])
  frozen = partitioning.init_params(
      model.module, jax.random.key(0), mesh,
      partitioning.standard_logical_axis_rules("model"))
  return ude.KShotScorer(model, frozen, _encode,
                         trainable=model.init_trainable(jax.random.key(1)))


def _config(**icl) -> ude.KShotEvalConfig:
  icl = icl_config.ICLConfig(**{"k_shot": 2, "seeds": (SEED,),
                                "max_examples_per_task": ROWS,
                                "score_normalization": "sum", **icl})
  return unseen_kshot.eval_config(icl, models.ENCODER_DECODER, LENGTHS)


def _demos(folder: str) -> list[tuple[str, str]]:
  train = [r[:2] for r in metaicl_pool.MetaICLFiles(folder).read(
      f"train_{SEED}")]
  return kshot_format.train_file_demonstrations(train, 2, SEED, task=folder)


@functools.partial(jax.jit, static_argnums=0)
def _score_batch(model, trainable, frozen, inputs, targets):
  return model.score_batch(trainable, frozen, inputs, targets)[0]


def _hand_scores(scorer, demos, queries, options, method: str,
                 normalization: str = "sum") -> list[np.ndarray]:
  """Per row [C]: log p(scored | written-out encoder input), no kshot code:
  direct  "x_1 y_1 ... x_k y_k x" -> "y";
  channel "y_1 x_1 ... y_k x_k y" -> "x"."""
  cells = []
  for query, row_options in zip(queries, options):
    for option in row_options:
      pairs = [*demos, (query, option)]
      if method == "channel":
        pairs = [(y, x) for x, y in pairs]
      words = [w for pair in pairs for w in pair]
      cells.append((_encode(" ".join(words[:-1])) + [EOS],
                    _encode(words[-1]) + [EOS]))
  inputs = np.zeros((len(cells), ENC), np.int32)
  targets = np.zeros((len(cells), TGT), np.int32)
  for i, (enc, tgt) in enumerate(cells):
    inputs[i, :len(enc)], targets[i, :len(tgt)] = enc, tgt
  flat = np.asarray(_score_batch(scorer.model, scorer.trainable,
                                 scorer.frozen, inputs, targets), np.float64)
  if normalization == "mean":
    flat = flat / np.array([len(t) for _, t in cells])
  ends = np.cumsum([len(o) for o in options])
  return [flat[e - len(o):e] for o, e in zip(options, ends)]


def test_family_decides_layout_and_budget():
  assert unseen_kshot.family_budget(models.ENCODER_DECODER, LENGTHS) == (
      "enc_dec", 1024)
  assert unseen_kshot.family_budget(models.DECODER_ONLY, LENGTHS) == (
      "decoder", 1040)
  cfg = _config(method="channel")
  assert (cfg.layout, cfg.max_length, cfg.method) == ("enc_dec", 1024,
                                                     "channel")
  assert cfg.kshot_format().layout == "enc_dec"
  with pytest.raises(ValueError, match="unknown model family 'rnn'"):
    unseen_kshot.family_budget("rnn", LENGTHS)


@pytest.mark.parametrize("method", ["direct", "channel"])
@pytest.mark.parametrize("folder", ["superglue-cb", "superglue-copa"])
def test_t5_unseen_scores_equal_written_out_score_batch(scorer, method,
                                                        folder, monkeypatch):
  seen = []
  option_scores = ude.option_scores
  monkeypatch.setattr(ude, "option_scores", lambda *a, **kw: (
      seen.append(option_scores(*a, **kw)) or seen[-1]))
  got = ude.evaluate_seed(scorer, folder, SEED, _config(method=method))
  rows = metaicl_pool.MetaICLFiles(folder).read("test")[:ROWS]
  options = [r[2] for r in rows]
  want = _hand_scores(scorer, _demos(folder), [r[0] for r in rows], options,
                      method)
  (scores, truncated), = seen
  assert truncated == 0 and got["trimmed_inputs"] == 0
  np.testing.assert_allclose(np.concatenate(scores), np.concatenate(want),
                             rtol=1e-4, atol=1e-4)
  preds = [o[int(np.argmax(s))] for o, s in zip(options, want)]
  gold = [r[1] for r in rows]
  assert got["score"] == pytest.approx(
      metaicl_pool.macro_f1(gold, preds) if folder == "superglue-cb"
      else metaicl_pool.exact_match_accuracy(gold, preds))


def test_channel_and_direct_differ(scorer):
  rows = metaicl_pool.MetaICLFiles("superglue-cb").read("test")[:2]
  args = (scorer, _demos("superglue-cb"), [r[0] for r in rows],
          [r[2] for r in rows])
  assert not np.allclose(np.concatenate(_hand_scores(*args, "direct")),
                         np.concatenate(_hand_scores(*args, "channel")))


@pytest.mark.parametrize("order", ["globale", "locale"])
def test_order_selection_on_t5_uses_max_entropy_order(scorer, order):
  cfg = _config(order=order, order_probe="dev", score_normalization="mean")
  cfg = ude.KShotEvalConfig(**{**cfg.__dict__, "probe_size": 4})
  table = ude.evaluate_folders(scorer, ["superglue-cb"], cfg)
  assert table["variant"] == f"direct_seed_{order}_devprobe"
  assert table["backbone"] == "t5"
  (row,) = table["rows"]
  record = row["seed_orders"][str(SEED)]
  assert record["candidates"] == [[0, 1], [1, 0]] and record["probes"] == 4
  demos = _demos("superglue-cb")
  dev = metaicl_pool.MetaICLFiles("superglue-cb").read(f"dev_{SEED}")[:4]
  probs = np.stack([calibration.option_probs(np.stack(_hand_scores(
      scorer, [demos[i] for i in perm], [r[0] for r in dev],
      [r[2] for r in dev], "direct", "mean"))) for perm in
                    record["candidates"]])  # [P, N, C]
  entropy = (order_selection.global_entropy if order == "globale"
             else order_selection.local_entropy)(probs)
  np.testing.assert_allclose(record["entropies"], entropy, atol=1e-4)
  best = record["candidates"][int(np.argmax(entropy))]
  assert record["permutation"] == best
  rows = metaicl_pool.MetaICLFiles("superglue-cb").read("test")[:ROWS]
  scores = _hand_scores(scorer, [demos[i] for i in best],
                        [r[0] for r in rows], [r[2] for r in rows], "direct",
                        "mean")
  preds = [r[2][int(np.argmax(s))] for r, s in zip(rows, scores)]
  assert row["seeds"][str(SEED)] == pytest.approx(
      metaicl_pool.macro_f1([r[1] for r in rows], preds))


def test_evaluate_unseen_routes_t5_channel_through_the_kshot_loop(
    monkeypatch):
  seen = {}
  monkeypatch.setattr(unseen_kshot, "evaluate_unseen_kshot_run",
                      lambda **kwargs: seen.update(kwargs) or {})
  unseen_eval.evaluate_unseen(
      model_dir="/nonexistent", task_names=["superglue-cb"],
      backbone=run_setup.BackboneConfig(preset="t5_1_1_tiny",
                                        random_weights=True),
      method=prompt_tuning.PromptTuning(length=2),
      task_feature_lengths={"inputs": 200, "targets": 56},
      icl=icl_config.ICLConfig(k_shot=2, method="channel"))
  cfg = seen["cfg"]
  assert (cfg.layout, cfg.max_length, cfg.method, cfg.k) == (
      "enc_dec", 200, "channel", 2)


def test_gin_channel_run_on_the_tiny_t5_writes_a_t5_table(tmp_path):
  from prompt_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  prompt_file = tmp_path / "prompt.npy"
  np.save(prompt_file, np.zeros((8, 64), np.float32))  # P, H of the gin.
  model_dir = tmp_path / "run"
  table = main_lib.run([
      "--mode=unseen", "--gin_file=runs/unseen_eval.gin",
      "--gin_file=models/t5_1_1_tiny.gin", "--gin_file=prompts/random.gin",
      f"--gin.MODEL_DIR='{model_dir}'", "--gin.PROMPT_LENGTH=8",
      f"--gin.PROMPT_FILE='{prompt_file}'",
      "--gin.TASK_NAMES=['metaicl_superglue_cb_v100']",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 384, 'targets': 8}",
      "--gin.K_SHOT=1", "--gin.SEEDS=(13,)", "--gin.MAX_EXAMPLES_PER_TASK=2",
      "--gin.EVAL_BATCH_SIZE=8", "--gin.DECODER_METHOD='channel'"])
  assert (table["backbone"], table["variant"], table["layout"],
          table["max_length"], table["k_shot"]) == (
              "t5", "channel_seed", "enc_dec", 384, 1)
  (row,) = table["rows"]
  assert (row["task"], row["examples"], row["method"]) == (
      "superglue-cb", 2, "rank-channel")
  assert 0.0 <= row["score"] <= 100.0
  out = model_dir / "unseen_eval"
  assert (out / "unseen_t5_channel_seed_test_k1.json").exists()
  assert (out / "unseen_t5_channel_seed_test_k1.md").read_text().startswith(
      "T5 `channel_seed`")
