"""SIGTERM at any point of the training loop: a checkpoint of the last
finished step, then exit status 143 with a line that says "preempted".

The evaluation case is the one real subprocess: the test sends it SIGTERM
from outside while its evaluation is running (the child's evaluation waits
for the signal, so the timing is fixed); the step and save cases run
in-process (the signal handler is the same).
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import optax
import pytest

from prompt_jax import checkpoints
from prompt_jax.data import seqio_batches as data_lib
from prompt_jax import setup as run_setup
from prompt_jax import train as train_lib
from prompt_jax import trainer as trainer_lib
from prompt_jax.methods import prompt_tuning
from prompt_jax.methods.prompt_tuning import specs

_CHILD = """
import signal, sys, time
from prompt_jax import console
console.setup(native_filter=True)  # As `python -m prompt_jax.main` does.
from prompt_jax.evaluators import teacher_forced as evaluation
from prompt_jax import main
started = sys.argv.pop(1)  # A file the child creates once it evaluates.
original = evaluation.teacher_forced
def interrupted(*args, **kwargs):
  watcher = signal.getsignal(signal.SIGTERM).__self__  # The loop's watcher.
  open(started, "w").close()
  while not watcher.stop_requested:  # The test's SIGTERM arrives here.
    time.sleep(0.01)
  return original(*args, **kwargs)
evaluation.teacher_forced = interrupted
sys.exit(main.main(sys.argv[1:]))
"""


def test_sigterm_during_eval_saves_the_last_step(tmp_path):
  """`kill -TERM` from outside, while the step-3 evaluation runs."""
  model_dir, started = tmp_path / "run", tmp_path / "eval_started"
  args = ["--gin_file=runs/prompt_train.gin",
          "--gin_file=models/t5_1_1_tiny.gin",
          "--gin_file=prompts/sampled_vocab.gin",
          "--gin.MIXTURE_OR_TASK_NAME='sst2_v100'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
          "--gin.PROMPT_LENGTH=4", f"--gin.MODEL_DIR='{model_dir}'",
          "--gin.TRAIN_STEPS=100", "--gin.BATCH_SIZE=8",
          "--gin.EVAL_BATCH_SIZE=128", "--gin.SAVE_EVERY_STEPS=1000",
          "--gin.EVAL_EVERY_STEPS=3"]
  with open(tmp_path / "stderr", "w+", encoding="utf-8") as err:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(started), *args],
        stdout=subprocess.DEVNULL, stderr=err, text=True)
    deadline = time.time() + 240
    while (not started.exists() and proc.poll() is None
           and time.time() < deadline):
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    returncode = proc.wait(timeout=120)
    err.seek(0)
    stderr = err.read()
  assert returncode == 143, stderr[-3000:]
  assert "preempted at step" in stderr
  assert stderr.strip().splitlines()[-1] == (
      "preempted at step 3: saved a checkpoint of step 3; rerun the same "
      "command to resume")
  # A healthy CPU run shows none of the native GPU-probe lines.
  assert "cuInit" not in stderr and "cuda" not in stderr.lower()
  assert sorted(os.listdir(model_dir / "prompts")) == ["prompt_step_3.npy"]
  saved = sorted(int(p.stem.rsplit("_", 1)[1])
                 for p in (model_dir / "prompts").glob("prompt_step_*.npy"))
  assert len(saved) == 1 and 3 <= saved[0] < 100
  ckpt = checkpoints.TrainCheckpointer(model_dir,
                                       checkpoints.CheckpointConfig())
  assert ckpt.all_steps() == [3]
  ckpt.close()


def _interrupt_during(where: str, monkeypatch) -> None:
  """Sends this process SIGTERM inside the first train step or save."""
  def kill_then(fn):
    def wrapped(*args, **kwargs):
      os.kill(os.getpid(), signal.SIGTERM)
      return fn(*args, **kwargs)
    return wrapped
  if where == "step":
    monkeypatch.setattr(trainer_lib.Trainer, "train_step",
                        kill_then(trainer_lib.Trainer.train_step))
  else:
    monkeypatch.setattr(checkpoints.TrainCheckpointer, "save",
                        kill_then(checkpoints.TrainCheckpointer.save))


@pytest.mark.parametrize("where", ["step", "save"])
def test_sigterm_during_a_step_or_a_save(where, tmp_path, monkeypatch):
  import tasks  # pylint: disable=g-import-not-at-top,unused-import
  handler = signal.getsignal(signal.SIGTERM)
  _interrupt_during(where, monkeypatch)
  result = train_lib.train(
      model_dir=str(tmp_path), backbone=run_setup.BackboneConfig(
          preset="t5_1_1_tiny", random_weights=True,
          overrides={"vocab_size": 32128}),
      method=prompt_tuning.PromptTuning(length=4, init=specs.random_uniform()),
      train_dataset_cfg=data_lib.DatasetConfig(
          "sst2_v100", {"inputs": 16, "targets": 4}, "train", 8),
      optimizer=optax.sgd(0.1), total_steps=50,
      checkpoint_cfg=checkpoints.CheckpointConfig(save_every_steps=2))
  # "step": SIGTERM inside step 1; "save": inside the save of step 2.
  expected = 1 if where == "step" else 2
  assert result["preempted"] and result["step"] == expected
  saved = np.load(tmp_path / "prompts" / f"prompt_step_{expected}.npy")
  np.testing.assert_array_equal(
      saved, np.asarray(result["trainable"]["prompt"]["prompt"]))
  assert signal.getsignal(signal.SIGTERM) is handler
