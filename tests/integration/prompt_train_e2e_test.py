"""End to end through the real gin files: train, kill -9, resume, eval, infer.

Runs the tiny random T5 on the real SST-2 task (data root) on 8 fake CPU
devices. The kill test uses real subprocesses and SIGKILL, so nothing gets a
chance to save on the way out; the resumed run must still end with exactly
the prompt of an uninterrupted run. (SIGTERM from outside, in a subprocess:
preemption_test.py.)
"""

import json
import os

import numpy as np
import pytest

from prompt_jax.data import seqio_batches as data_lib
from prompt_jax import infer as infer_lib
from prompt_jax import main as main_lib
from prompt_jax import setup as run_setup
from prompt_jax import testing
from prompt_jax.methods import prompt_tuning

COMMON = [
    "--gin_file=models/t5_1_1_tiny.gin",
    "--gin_file=prompts/sampled_vocab.gin",
    "--gin.MIXTURE_OR_TASK_NAME='sst2_v100'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}",
    "--gin.PROMPT_LENGTH=8",
]


def _tiny_backbone() -> run_setup.BackboneConfig:
  """The backbone of models/t5_1_1_tiny.gin, built in Python."""
  return run_setup.BackboneConfig(
      preset="t5_1_1_tiny", random_weights=True, overrides={
      "vocab_size": 32128, "emb_dim": 64, "num_heads": 4, "head_dim": 16,
      "mlp_dim": 128})


def _train_args(model_dir, steps, save_every, log_every=1):
  return ["--gin_file=runs/prompt_train.gin", *COMMON,
          f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}",
          "--gin.BATCH_SIZE=8", f"--gin.SAVE_EVERY_STEPS={save_every}",
          f"--gin.LOG_EVERY_STEPS={log_every}"]


_rows = testing.metric_rows


def test_train_then_eval_then_infer(tmp_path):
  model_dir = str(tmp_path / "run")
  result = main_lib.run(_train_args(model_dir, 30, 15, log_every=5))
  assert result["step"] == 30 and not result["preempted"]
  losses = [r["loss"] for r in _rows(model_dir)]
  assert losses[-1] < 0.8 * losses[0], losses
  for name in ("config.gin", "operative_config.gin",
               "prompts/prompt_step_15.npy", "prompts/prompt_step_30.npy",
               "checkpoints/30"):
    assert os.path.exists(os.path.join(model_dir, name)), name
  assert "PROMPT_LENGTH = 8" in open(os.path.join(model_dir, "config.gin"),
                                     encoding="utf-8").read()
  prompt = np.load(os.path.join(model_dir, "prompts/prompt_step_30.npy"))
  assert prompt.shape == (8, 64)

  metrics = main_lib.run(["--mode=eval", "--gin_file=runs/prompt_eval.gin",
                          *COMMON, f"--gin.MODEL_DIR='{model_dir}'"])
  assert metrics["teacher_forced"]["examples"] == 872.0
  # The fixed seeds' values (8 fake CPU devices): after 30 steps the random
  # tiny T5 gets 878 of the 1744 target tokens (label word, EOS) right
  # teacher-forced and decodes the right word for 6 of the 872 rows.
  assert metrics["teacher_forced"]["loss"] == pytest.approx(6.2093, abs=2e-3)
  assert metrics["teacher_forced"]["token_accuracy"] == pytest.approx(
      878 / 1744)
  assert metrics["sst2_v100"]["accuracy"] == pytest.approx(100 * 6 / 872)
  with open(os.path.join(model_dir, "eval/sst2_v100.json"),
            encoding="utf-8") as f:
    assert json.load(f)["accuracy"] == metrics["sst2_v100"]["accuracy"]
  with open(os.path.join(model_dir, "eval/sst2_v100_predictions.jsonl"),
            encoding="utf-8") as f:
    predictions = [json.loads(line) for line in f]
  assert len(predictions) == 872 and "prediction" in predictions[0]

  inputs = tmp_path / "in.jsonl"
  inputs.write_text('{"inputs": "sst2 sentence: a great movie"}\n'
                    '{"inputs": "sst2 sentence: dull and slow"}\n')
  out = tmp_path / "out.jsonl"
  rows = main_lib.run(["--mode=infer", "--gin_file=runs/prompt_infer.gin",
                       *COMMON, f"--gin.MODEL_DIR='{model_dir}'",
                       f"--gin.INPUT_FILE='{inputs}'",
                       f"--gin.OUTPUT_FILE='{out}'",
                       "--gin.MAX_DECODE_LENGTH=4"])
  written = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(written) == 2 == len(rows)
  assert all("prediction" in r and len(r["prediction_ids"]) <= 4
             for r in written)
  assert list((tmp_path / "run" / "tb" / "train").glob("events.out.*"))

  # Scores for a task split, through the library entry point directly.
  scored = infer_lib.infer(
      model_dir=model_dir, backbone=_tiny_backbone(),
      method=prompt_tuning.PromptTuning(length=8), output_file=str(
          tmp_path / "scores.jsonl"), mode="score",
      dataset_cfg=data_lib.DatasetConfig(
          "sst2_v100", {"inputs": 32, "targets": 4}, "validation", 64))
  assert len(scored) == 872
  assert all(r["score"] < 0 and r["targets"] in ("negative", "positive")
             for r in scored)


def test_kill9_then_resume_equals_uninterrupted_run(tmp_path):
  resumed, clean, first_step = testing.kill_then_resume(
      lambda d: _train_args(d, 60, 10), tmp_path, steps=60,
      kill_after_step=20)
  np.testing.assert_array_equal(resumed, clean)
  assert first_step > 1  # Resumed from a saved step, not from scratch.


def test_gin_typo_is_one_clear_line(tmp_path, capsys):
  code = main_lib.main(_train_args(tmp_path, 3, 3) +
                       ["--gin.train_lib.train.totl_steps=3"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  assert len(err) == 1 and "totl_steps" in err[0], err


def test_unknown_task_is_one_clear_line(tmp_path, capsys):
  code = main_lib.main(_train_args(tmp_path, 3, 3) +
                       ["--gin.MIXTURE_OR_TASK_NAME='sst3_v100'"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  assert len(err) == 1 and "sst3_v100" in err[0], err
