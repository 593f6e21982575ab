"""What `python -m prompt_jax.main` writes into a run directory, and what a
resumed run refuses: the training config survives other modes, a failing
call writes nothing, a resume with another data stream stops. The 2-step run
is trained once (`trained_run`); each test gets its own copy."""

import json
import shutil

import pytest

from prompt_jax import main as main_lib

COMMON = [
    "--gin_file=models/t5_1_1_tiny.gin",
    "--gin_file=prompts/sampled_vocab.gin",
    "--gin.MIXTURE_OR_TASK_NAME='sst2_v100'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
    "--gin.PROMPT_LENGTH=4",
]


def _train(model_dir, *extra):
  return ["--gin_file=runs/prompt_train.gin", *COMMON,
          f"--gin.MODEL_DIR='{model_dir}'", "--gin.BATCH_SIZE=8",
          "--gin.SAVE_EVERY_STEPS=2", *extra]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """A run directory of 2 training steps (batch 8, seed 0); do not change
  it: `_copy_of` it."""
  model_dir = tmp_path_factory.mktemp("trained") / "run"
  assert main_lib.main(_train(model_dir, "--gin.TRAIN_STEPS=2")) == 0
  return model_dir


def _copy_of(trained_run, tmp_path):
  model_dir = tmp_path / "run"
  shutil.copytree(trained_run, model_dir)
  return model_dir


def _error_line(capsys) -> str:
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  return err[0]


def test_failing_calls_write_nothing(tmp_path, capsys):
  model_dir = tmp_path / "run"
  assert main_lib.main(_train(model_dir, "--gin.TRAIN_STEPS=2",
                              "--gin.BATCH_SIZ=4")) == 2
  assert _error_line(capsys) == ("error: unknown gin macro BATCH_SIZ (did "
                                 "you mean BATCH_SIZE?): no config reads it")
  assert main_lib.main(_train(model_dir, "--gin.TRAIN_STEPS=2",
                              "--gin.MIXTURE_OR_TASK_NAME='sst3_v100'")) == 2
  assert "sst3_v100" in _error_line(capsys)
  assert main_lib.main(_train(model_dir, "--gin.TRAIN_STEPS=2",
                              "--gin.BATCH_SIZE=4")) == 2
  assert _error_line(capsys) == (
      "error: batch size 4 is not divisible by the mesh's data axis (8 "
      "devices); use a multiple of 8 or set MESH_DATA")
  assert not model_dir.exists()


def test_other_modes_keep_the_training_config(trained_run, tmp_path, capsys):
  model_dir = _copy_of(trained_run, tmp_path)
  config = (model_dir / "config.gin").read_bytes()
  operative = (model_dir / "operative_config.gin").read_bytes()
  assert b"TRAIN_STEPS = 2" in config
  assert b"train_lib.train" in operative or b"train.train" in operative
  rows = tmp_path / "in.jsonl"
  rows.write_text('{"inputs": "sst2 sentence: a great movie"}\n')
  infer = ["--mode=infer", "--gin_file=runs/prompt_infer.gin", *COMMON,
           f"--gin.MODEL_DIR='{model_dir}'", f"--gin.INPUT_FILE='{rows}'",
           "--gin.MAX_DECODE_LENGTH=2"]
  capsys.readouterr()
  # Fails (the input file is missing): nothing is written.
  assert main_lib.main(infer[:-2] + ["--gin.INPUT_FILE='/no/such.jsonl'",
                                     f"--gin.OUTPUT_FILE='{tmp_path}/o1'",
                                     "--gin.MAX_DECODE_LENGTH=2"]) == 2
  assert "/no/such.jsonl" in _error_line(capsys)
  assert not (model_dir / "config_infer.gin").exists()
  assert main_lib.main(infer + [f"--gin.OUTPUT_FILE='{tmp_path}/o2'"]) == 0
  assert (model_dir / "config.gin").read_bytes() == config
  assert (model_dir / "operative_config.gin").read_bytes() == operative
  assert b"INPUT_FILE" in (model_dir / "config_infer.gin").read_bytes()
  assert (model_dir / "operative_config_infer.gin").exists()


def test_resume_with_another_data_stream_is_refused(trained_run, tmp_path,
                                                    capsys):
  model_dir = _copy_of(trained_run, tmp_path)
  settings = json.loads((model_dir / "train_settings.json").read_text())
  assert settings["data"]["batch_size"] == 8
  capsys.readouterr()
  changed = ["--gin.TRAIN_STEPS=4", "--gin.BATCH_SIZE=16", "--gin.SEED=1"]
  assert main_lib.main(_train(model_dir, *changed)) == 2
  assert _error_line(capsys) == (
      f"error: {model_dir} was trained with other settings; resuming would "
      "replay a different data stream: data.batch_size 8 -> 16; data.seed "
      "0 -> 1; seed 0 -> 1 (use a new MODEL_DIR, or ALLOW_CHANGED_SETTINGS "
      "= True to resume anyway)")
  assert main_lib.main(_train(model_dir, *changed,
                              "--gin.ALLOW_CHANGED_SETTINGS=True")) == 0
  settings = json.loads((model_dir / "train_settings.json").read_text())
  assert settings["data"]["batch_size"] == 16
  assert (model_dir / "prompts" / "prompt_step_4.npy").exists()
