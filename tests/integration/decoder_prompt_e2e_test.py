"""End to end for the decoder backbone through the real gin files.

models/decoder_tiny.gin (random tiny Llama, T5-sized vocabulary) on the real
SST-2 task: train, eval (teacher forced + seqio decode metrics), and
a kill -9 / resume run that must end with the prompt of an uninterrupted run.
"""

import os

import numpy as np
import pytest

from prompt_jax import main as main_lib
from prompt_jax import testing

COMMON = [
    "--gin_file=models/decoder_tiny.gin",
    "--gin_file=prompts/sampled_vocab.gin",
    "--gin.MIXTURE_OR_TASK_NAME='sst2_v100'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}",
    "--gin.PROMPT_LENGTH=8",
]


def _train_args(model_dir, steps, save_every, log_every=1):
  return ["--gin_file=runs/prompt_train.gin", *COMMON,
          f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}",
          "--gin.BATCH_SIZE=8", f"--gin.SAVE_EVERY_STEPS={save_every}",
          f"--gin.LOG_EVERY_STEPS={log_every}"]


_rows = testing.metric_rows


def test_decoder_train_then_eval(tmp_path):
  model_dir = str(tmp_path / "run")
  result = main_lib.run(_train_args(model_dir, 30, 15, log_every=5))
  assert result["step"] == 30 and not result["preempted"]
  losses = [r["loss"] for r in _rows(model_dir)]
  assert losses[-1] < 0.8 * losses[0], losses
  prompt = np.load(os.path.join(model_dir, "prompts/prompt_step_30.npy"))
  assert prompt.shape == (8, 32)

  metrics = main_lib.run(["--mode=eval", "--gin_file=runs/prompt_eval.gin",
                          *COMMON, f"--gin.MODEL_DIR='{model_dir}'"])
  assert metrics["teacher_forced"]["examples"] == 872.0
  # The fixed seeds' values (8 fake CPU devices): after 30 steps the random
  # tiny decoder gets 132 of the 1744 target tokens right teacher-forced and
  # decodes no label word exactly.
  assert metrics["teacher_forced"]["loss"] == pytest.approx(12.9515, abs=2e-3)
  assert metrics["teacher_forced"]["token_accuracy"] == pytest.approx(
      132 / 1744)
  assert metrics["sst2_v100"]["accuracy"] == 0.0



def test_decoder_kill9_then_resume_equals_uninterrupted_run(tmp_path):
  resumed, clean, first_step = testing.kill_then_resume(
      lambda d: _train_args(d, 60, 10), tmp_path, steps=60,
      kill_after_step=20)
  np.testing.assert_array_equal(resumed, clean)
  assert first_step > 1  # Resumed from a saved step, not from scratch.
