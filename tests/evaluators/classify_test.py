"""The `classify` entry point on the real SmolLM2-135M and 16 SST-2 dev rows.

Accuracies must equal a direct `option_scoring` computation on rows read
straight from seqio, with and without a hand-written prompt; bad input gives
one line (through `main`: exit 2).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from prompt_jax.evaluators import classify
from prompt_jax.data import seqio_batches as data
from prompt_jax import gin_utils
from prompt_jax import main
from prompt_jax.scoring import options as option_scoring
from prompt_jax import setup as run_setup
from prompt_jax.methods.prompt_tuning import specs
from prompt_jax.methods import prompt_tuning
import tasks  # pylint: disable=unused-import  Registers the tasks.

TASK = "sst2_smollm2_v100"
OPTIONS = [" negative", " positive"]
ROWS = 16
BACKBONE = run_setup.BackboneConfig(path="smollm2", preset="smollm2_135m",
                                    kind="decoder")
PROMPT = prompt_tuning.PromptTuning(length=20, init=specs.random_uniform())


@pytest.fixture(scope="module")
def smollm2_run() -> run_setup.Run:
  return run_setup.build_run(backbone=BACKBONE, method=PROMPT)


@pytest.fixture(scope="module")
def dev_rows() -> tuple[list[list[int]], np.ndarray]:
  ds = seqio.get_mixture_or_task(TASK).get_dataset(
      None, split="validation", shuffle=False)
  rows = list(ds.take(ROWS).as_numpy_iterator())
  return ([r["inputs"].tolist() for r in rows],
          np.asarray([r["label"] for r in rows]))


def _direct_scores(run, trainable, dev_rows) -> np.ndarray:
  options = [run.tokenizer.encode(o) for o in OPTIONS]
  assert options == [[3524], [2731]]
  return option_scoring.score_options(run.model, trainable,
                                      classify.scoring_params(run.frozen),
                                      inputs=dev_rows[0], options=options,
                                      batch_size=ROWS)


@pytest.fixture(name="reuse_run")
def reuse_run_fixture(monkeypatch, smollm2_run):
  """`classify` gets the module's run instead of loading the GGUF again."""
  def build_run(*, backbone, method, mesh_cfg):
    assert (backbone, method) == (BACKBONE, PROMPT), mesh_cfg
    return smollm2_run
  monkeypatch.setattr(classify.run_setup, "build_run", build_run)


@pytest.fixture(scope="module")
def zero_shot_scores(smollm2_run, dev_rows) -> np.ndarray:
  return _direct_scores(smollm2_run, None, dev_rows)


def _classify(model_dir, **kwargs) -> dict:
  return classify.classify(model_dir=str(model_dir), backbone=BACKBONE,
                           method=PROMPT, task=TASK, options=OPTIONS,
                           max_rows=ROWS, batch_size=ROWS, **kwargs)


def test_zero_shot_equals_option_scoring_and_is_written(
    tmp_path, capsys, reuse_run, zero_shot_scores, dev_rows):
  del reuse_run
  result = _classify(tmp_path, prompt_file=None)
  expected = option_scoring.accuracy(zero_shot_scores, dev_rows[1])
  assert 50.0 < expected < 100.0  # The real model, not a constant guess.
  assert result["zero_shot_accuracy"] == pytest.approx(expected, abs=1e-9)
  assert (result["prompt_accuracy"], result["prompt_file"]) == (None, None)
  assert result["rows"] == ROWS and result["options"] == OPTIONS
  written = json.loads(
      (tmp_path / f"classify_{TASK}_validation.json").read_text())
  assert written == result
  assert capsys.readouterr().out.strip().splitlines()[-1] == (
      f"{TASK} validation ({ROWS} rows): zero-shot {expected:.2f}%")


def test_latest_prompt_file_equals_option_scoring_with_that_prompt(
    tmp_path, capsys, reuse_run, smollm2_run, zero_shot_scores, dev_rows):
  del reuse_run
  (tmp_path / "prompts").mkdir()
  np.save(tmp_path / "prompts" / "prompt_step_5.npy",
          np.full((20, 576), 9.0, np.float32))
  zeros = np.zeros((20, 576), np.float32)
  np.save(tmp_path / "prompts" / "prompt_step_40.npy", zeros)  # The latest.
  result = _classify(tmp_path, prompt_file="latest", compare_zero_shot=False)
  trainable = {"prompt": {"prompt": jnp.asarray(zeros)}}
  with_prompt = _direct_scores(smollm2_run, trainable, dev_rows)
  assert not np.allclose(with_prompt, zero_shot_scores, atol=1e-3)  # Used.
  expected = option_scoring.accuracy(with_prompt, dev_rows[1])
  assert result["prompt_accuracy"] == pytest.approx(expected, abs=1e-9)
  assert result["zero_shot_accuracy"] is None
  assert result["prompt_file"].endswith("prompt_step_40.npy")
  assert capsys.readouterr().out.strip().splitlines()[-1] == (
      f"{TASK} validation ({ROWS} rows): prompt {expected:.2f}%")
  both = dict(result, zero_shot_accuracy=77.981, prompt_accuracy=84.4037)
  assert classify.summary_line(both) == (
      f"{TASK} validation ({ROWS} rows): zero-shot 77.98% -> prompt 84.40%")


def test_replicated_params_are_scored_on_one_device(smollm2_run):
  leaf = jax.tree.leaves(smollm2_run.frozen)[0]
  assert len(leaf.devices()) == 8  # conftest's fake CPU devices.
  single = jax.tree.leaves(classify.scoring_params(smollm2_run.frozen))[0]
  assert single.devices() == {jax.devices()[0]}
  np.testing.assert_array_equal(np.asarray(single), np.asarray(leaf))


def test_option_without_tokens_and_foreign_vocabulary_fail(smollm2_run):
  with pytest.raises(ValueError, match="^classify: option '' tokenizes to no "
                     "tokens$"):
    classify.encode_options(smollm2_run, [" negative", ""], TASK)
  with pytest.raises(ValueError, match="task 'sst2_v100' tokenizes with "
                     "another vocabulary than the backbone"):
    classify.encode_options(smollm2_run, OPTIONS, "sst2_v100")


def test_bad_arguments_fail_in_one_line(tmp_path):
  with pytest.raises(FileNotFoundError, match="prompt file .*nope.npy does "
                     "not exist"):
    _classify(tmp_path, prompt_file=str(tmp_path / "nope.npy"))
  with pytest.raises(FileNotFoundError, match="no prompt_step_.*npy under"):
    _classify(tmp_path, prompt_file="latest")
  with pytest.raises(ValueError, match="options=' positive'; give a list"):
    classify.classify(model_dir=str(tmp_path), backbone=BACKBONE,
                      method=PROMPT, task=TASK, options=" positive")
  with pytest.raises(ValueError, match="has label 1, outside the 1 options"):
    classify.read_labelled_rows(TASK, "validation", 1, max_rows=16)
  with pytest.raises(ValueError, match="has no split 'dev'; it has "):
    classify.read_labelled_rows(TASK, "dev", 2)


def test_main_classify_mode_exits_2_with_one_line(tmp_path, capsys):
  args = ["--mode=classify", "--gin_file=runs/classify.gin",
          "--gin_file=demo/sst2_smollm2.gin",
          f"--gin.MODEL_DIR='{tmp_path}'", "--gin.PROMPT_FILE='latest'"]
  assert main.main(args) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f"error: no prompt_step_*.npy under {tmp_path}/prompts; "
                 "train first or pass an artifact file"]
  assert main.main(args[:2] + ["--gin_file=models/t5_1_1_tiny.gin",
                               "--gin_file=prompts/random.gin",
                               f"--gin.MODEL_DIR='{tmp_path}'",
                               f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
                               f"--gin.OPTIONS={OPTIONS}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and (
      f"task '{TASK}' tokenizes with another vocabulary than the backbone"
      in err[0]), err


T5_TASK = "sst2_v100"
T5_OPTIONS = ["negative", "positive"]
T5_BACKBONE = run_setup.BackboneConfig(preset="t5_1_1_tiny",
                                       random_weights=True,
                                       overrides={"vocab_size": 32128})
T5_PROMPT = prompt_tuning.PromptTuning(length=4, init=specs.random_uniform())


@pytest.fixture(scope="module")
def t5_run() -> run_setup.Run:
  return run_setup.build_run(backbone=T5_BACKBONE, method=T5_PROMPT)


def test_t5_accuracies_equal_option_scoring(tmp_path, monkeypatch, t5_run):
  def build_run(*, backbone, method, mesh_cfg):
    assert (backbone, method) == (T5_BACKBONE, T5_PROMPT), mesh_cfg
    return t5_run
  monkeypatch.setattr(classify.run_setup, "build_run", build_run)
  (tmp_path / "prompts").mkdir()
  prompt = np.random.RandomState(0).uniform(-3, 3, (4, 16))
  np.save(tmp_path / "prompts" / "prompt_step_7.npy",
          prompt.astype(np.float32))
  result = classify.classify(
      model_dir=str(tmp_path), backbone=T5_BACKBONE, method=T5_PROMPT,
      task=T5_TASK, options=T5_OPTIONS, prompt_file="latest",
      max_rows=ROWS, batch_size=8)
  rows = classify.read_labelled_rows(T5_TASK, "validation", 2, ROWS)
  assert rows.inputs[0][-1] == 1  # T5 ids, EOS-terminated.
  options = [t5_run.tokenizer.encode(o) for o in T5_OPTIONS]
  assert options == [[2841], [1465]]
  trainable = {"prompt": {"prompt": jnp.asarray(prompt, jnp.float32)}}
  scores = {}
  for name, tree in (("zero_shot", None), ("prompt", trainable)):
    scores[name] = option_scoring.score_options(
        t5_run.model, tree, classify.scoring_params(t5_run.frozen),
        inputs=rows.inputs, options=options, batch_size=ROWS)
    assert result[f"{name}_accuracy"] == pytest.approx(
        option_scoring.accuracy(scores[name], rows.labels), abs=1e-9)
  assert not np.allclose(scores["prompt"], scores["zero_shot"], atol=1e-3)
  assert result["prompt_file"].endswith("prompt_step_7.npy")


def test_demo_config_covers_every_train_row():
  import gin  # pylint: disable=g-import-not-at-top
  gin_utils.parse(["runs/prompt_train.gin", "demo/sst2_smollm2.gin"], [])
  lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
  with gin.config_scope("train"):
    train_cfg = gin.get_configurable(data.DatasetConfig)(
        TASK, lengths, "train", 8)
  assert (train_cfg.trim_to_multiple, train_cfg.feature_converter) == (
      16, "prefix_lm")
  assert gin.query_parameter("%EVAL_EVERY_STEPS") is None
  ds = seqio.get_mixture_or_task(TASK).get_dataset(None, split="train",
                                                   shuffle=False)
  longest = max(len(r["inputs"]) for r in ds.as_numpy_iterator())
  assert longest == 87 <= lengths["inputs"]
  assert (lengths["inputs"] + lengths["targets"]) % 16 == 0
  gin_utils.parse(["runs/classify.gin", "demo/sst2_smollm2.gin"], [])
  assert gin.query_parameter("%OPTIONS") == OPTIONS
  assert gin.query_parameter("%MODEL_DIR") == "runs/demo_sst2_smollm2"
