"""End to end for the decoder backbone through the real gin files.

models/decoder_tiny.gin (random tiny Llama, T5-sized vocabulary) on the real
SST-2 task: train, eval (teacher forced + seqio decode metrics), and
a kill -9 / resume run that must end with the prompt of an uninterrupted run.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from prompt_jax import main as main_lib

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


def _rows(model_dir, split="train"):
  with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def _subprocess(args):
  return subprocess.Popen([sys.executable, "-m", "prompt_jax.main", *args],
                          env=dict(os.environ), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


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
  assert 0.0 <= metrics["sst2_v100"]["accuracy"] <= 100.0



def test_decoder_kill9_then_resume_equals_uninterrupted_run(tmp_path):
  steps, save_every = 120, 10
  killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
  proc = _subprocess(_train_args(killed_dir, steps, save_every))
  marker = killed_dir / "prompts" / "prompt_step_20.npy"
  deadline = time.time() + 240
  while not marker.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  assert proc.poll() is None, "run ended before it could be killed: " + (
      proc.stderr.read()[-2000:])
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  final = killed_dir / "prompts" / f"prompt_step_{steps}.npy"
  assert not final.exists()
  before = len(_rows(killed_dir))
  clean = _subprocess(_train_args(clean_dir, steps, save_every))
  resumed = _subprocess(_train_args(killed_dir, steps, save_every))
  for p in (clean, resumed):
    assert p.wait(timeout=600) == 0, p.stderr.read()[-3000:]
  np.testing.assert_array_equal(
      np.load(final),
      np.load(clean_dir / "prompts" / f"prompt_step_{steps}.npy"))
  resumed_rows = _rows(killed_dir)[before:]
  assert resumed_rows[0]["step"] > 1
