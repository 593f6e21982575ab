"""Every gin file parses, with its required macros bound, and builds."""

import os
import pathlib
import subprocess
import sys

import gin
import pytest

from prompt_jax.data import seqio_batches as data
from prompt_jax.decoding import constraints
from prompt_jax import evaluate as evaluate_lib
from prompt_jax import gin_utils
from prompt_jax import optim
from prompt_jax import setup as run_setup
from prompt_jax.methods import prompt_tuning

CONFIGS = gin_utils.GIN_CONFIGS_DIR
MODELS = sorted(p.name for p in (CONFIGS / "models").glob("*.gin"))
PROMPTS = sorted(p.name for p in (CONFIGS / "prompts").glob("*.gin"))
RUNS = sorted(p.name for p in (CONFIGS / "runs").glob("*.gin"))

REQUIRED = {
    "prompt_train.gin": ["MODEL_DIR='/tmp/x'", "TRAIN_STEPS=10",
                         "MIXTURE_OR_TASK_NAME='sst2_v100'",
                         "TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}"],
    "prompt_eval.gin": ["MODEL_DIR='/tmp/x'",
                        "MIXTURE_OR_TASK_NAME='sst2_v100'",
                        "TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}"],
    "prompt_infer.gin": ["MODEL_DIR='/tmp/x'", "OUTPUT_FILE='/tmp/x.jsonl'"],
    "classify.gin": ["MODEL_DIR='/tmp/x'",
                     "MIXTURE_OR_TASK_NAME='sst2_smollm2_v100'",
                     "OPTIONS=[' negative', ' positive']"],
    "unseen_eval.gin": ["MODEL_DIR='/tmp/x'",
                        "TASK_NAMES=['metaicl_glue_rte_v100']",
                        "TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}"],
    "class_labels.gin": ["CLASS_LABELS=['negative', 'positive']"],
    "text.gin": ["PROMPT_TEXT='Is it positive?'"],
    "from_file.gin": ["PROMPT_INIT_FILE='/tmp/p.npy'"],
}


def test_every_file_is_covered():
  assert {"prompt_train.gin", "prompt_eval.gin", "prompt_infer.gin"} <= set(
      RUNS)
  assert {f"t5_1_1_{s}.gin" for s in
          ("tiny", "small", "base", "large", "xl", "xxl")} <= set(MODELS)
  assert {"random.gin", "sampled_vocab.gin", "class_labels.gin", "text.gin",
          "from_file.gin"} <= set(PROMPTS)


def _parse(run: str, model: str, prompt: str) -> None:
  files = [f"runs/{run}", f"models/{model}", f"prompts/{prompt}"]
  bindings = REQUIRED.get(run, []) + REQUIRED.get(prompt, [])
  gin_utils.parse(files, bindings)


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_run_and_prompt_files_parse_and_build(run, prompt):
  _parse(run, "t5_1_1_tiny.gin", prompt)
  prompt_cfg = gin.get_configurable(prompt_tuning.PromptTuning)()
  assert prompt_cfg.length == 100
  assert callable(prompt_cfg.init)
  for macro in ("MODEL_DIR",):
    assert gin.query_parameter(f"%{macro}") == "/tmp/x"


# Model files whose preset is not their file name, and default paths.
PRESET_OF = {"decoder_tiny.gin": "tiny"}
PATH_OF = {"smollm2_135m.gin": "smollm2"}
DECODERS = ("decoder_tiny.gin", "smollm2_135m.gin")
RANDOM_MODELS = ("decoder_tiny.gin", "t5_1_1_tiny.gin")


@pytest.mark.parametrize("model", MODELS)
def test_model_files_name_their_preset(model):
  _parse("prompt_train.gin", model, "random.gin")
  backbone = gin.get_configurable(run_setup.BackboneConfig)()
  assert backbone.path == PATH_OF.get(model)
  # Only the tiny test backbones ask for random weights themselves.
  assert backbone.random_weights == (model in RANDOM_MODELS)
  assert backbone.preset == PRESET_OF.get(model, pathlib.Path(model).stem)
  assert run_setup.backbone_kind(backbone) == (
      "decoder" if model in DECODERS else "t5")


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("model", MODELS)
def test_decoder_files_choose_the_prefix_lm_converter(run, model):
  _parse(run, model, "sampled_vocab.gin")
  with gin.config_scope("train"):
    converter = gin.get_configurable(data.DatasetConfig)(
        "t", {"inputs": 4, "targets": 2}, "train", 2).feature_converter
  assert converter == ("prefix_lm" if model in DECODERS else "enc_dec")


def test_missing_required_macro_fails_clearly():
  with pytest.raises(ValueError, match="gin config error: MODEL_DIR.*"
                     "gin.REQUIRED` but not subsequently overridden"):
    gin_utils.parse(["runs/prompt_train.gin", "models/t5_1_1_tiny.gin",
                     "prompts/random.gin"], [])


def test_missing_file_is_one_line():
  with pytest.raises(ValueError, match="no file runs/nope.gin"):
    gin_utils.parse(["runs/nope.gin"], [])


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("model", DECODERS)
def test_decoder_files_parse_with_every_prompt(model, prompt):
  for run in RUNS:
    _parse(run, model, prompt)
    assert callable(gin.get_configurable(prompt_tuning.PromptTuning)().init)



def test_full_finetune_method_replaces_the_optimizer():
  gin_utils.parse(["runs/prompt_train.gin", "models/t5_1_1_tiny.gin",
                   "prompts/random.gin", "methods/full_finetune.gin"],
                  REQUIRED["prompt_train.gin"])
  assert "METHOD = @full_finetune.FullFinetune()" in gin.config_str()
  assert gin.get_bindings(optim.make_optimizer) == {
      "name": "adamw", "learning_rate": 1e-5, "weight_decay": 0.01}


def test_metaicl_method_reads_the_meta_train_split():
  gin_utils.parse(["runs/prompt_train.gin", "methods/metaicl_train.gin",
                   "models/smollm2_135m.gin", "prompts/random.gin"],
                  ["MODEL_DIR='/tmp/x'", "TRAIN_STEPS=10"])
  with gin.config_scope("train"):
    cfg = gin.get_configurable(data.DatasetConfig)()
  assert (cfg.split, cfg.trim_to_multiple, cfg.feature_converter) == (
      "meta_train", 64, "prefix_lm")
  assert cfg.mixture_or_task_name == (
      "metaicl_hr_to_lr_16shot_direct_train_v100")
  assert dict(cfg.task_feature_lengths) == {"inputs": 1024, "targets": 256}


def test_misspelled_macro_names_the_closest_known_one():
  with pytest.raises(ValueError) as e:
    gin_utils.parse(["runs/prompt_train.gin", "models/t5_1_1_tiny.gin",
                     "prompts/random.gin"],
                    REQUIRED["prompt_train.gin"] + ["BATCH_SIZ=8"])
  assert str(e.value) == ("unknown gin macro BATCH_SIZ (did you mean "
                          "BATCH_SIZE?): no config reads it")
  with pytest.raises(ValueError, match=r"BACKBONE_DR \(did you mean "
                     r"BACKBONE_DIR\?\)"):
    gin_utils.parse(["runs/prompt_train.gin", "models/t5_1_1_base.gin",
                     "prompts/random.gin"],
                    REQUIRED["prompt_train.gin"] + ["BACKBONE_DR='/ckpt'"])


def test_macro_read_only_in_another_mode_is_accepted():
  # OPTIONS is read by runs/classify.gin, not by the train config.
  gin_utils.parse(["runs/prompt_train.gin", "models/t5_1_1_tiny.gin",
                   "prompts/random.gin"],
                  REQUIRED["prompt_train.gin"] + ["OPTIONS=[' a']"])
  assert gin.query_parameter("%OPTIONS") == [" a"]


def test_unknown_configurable_and_parameter_are_refused():
  for binding, name in (("foo.bar=3", "foo"),
                        ("run_setup.BackboneConfig.pth=3", "pth")):
    with pytest.raises(ValueError, match=f"gin config error: .*'{name}'"):
      gin_utils.parse(["runs/prompt_train.gin", "models/t5_1_1_tiny.gin",
                       "prompts/random.gin"],
                      REQUIRED["prompt_train.gin"] + [binding])


def test_full_size_model_without_checkpoint_stops():
  _parse("prompt_train.gin", "t5_1_1_base.gin", "random.gin")
  backbone = gin.get_configurable(run_setup.BackboneConfig)()
  with pytest.raises(ValueError, match=r"no backbone checkpoint for "
                     r"t5_1_1_base: set BACKBONE_DIR .* RANDOM_BACKBONE"):
    run_setup.build_run(backbone=backbone,
                        method=prompt_tuning.PromptTuning(length=2))


@pytest.mark.parametrize("run", RUNS)
def test_run_files_import_the_tasks(run):
  # The library does not import `tasks`; each run file registers them.
  lines = (CONFIGS / "runs" / run).read_text(encoding="utf-8").splitlines()
  assert any(line.split("#")[0].strip() == "import tasks" for line in lines)


def test_parsing_a_run_file_registers_the_tasks():
  code = ("import sys, seqio\n"
          "from prompt_jax import gin_utils\n"
          "gin_utils.import_configurables()\n"
          "assert 'tasks' not in sys.modules, 'the library imported tasks'\n"
          "gin_utils.parse(['runs/prompt_eval.gin', 'models/t5_1_1_tiny.gin',"
          " 'prompts/random.gin'], ['MODEL_DIR=\"/tmp/x\"',"
          " 'MIXTURE_OR_TASK_NAME=\"squad_v2_span_v100\"',"
          " 'TASK_FEATURE_LENGTHS={\"inputs\": 8, \"targets\": 4}'])\n"
          "names = seqio.TaskRegistry.names()\n"
          "print('squad_v2_span_v100' in names, 'sst2_v100' in names)\n")
  root = CONFIGS.parent
  env = {**os.environ, "PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu"}
  done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env,
                        capture_output=True, text=True, timeout=300,
                        check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.split() == ["True", "True"]


@pytest.mark.parametrize("binding", [
    "CONSTRAINT_FN=%SQUAD_SPAN_CONSTRAINT",
    "CONSTRAINT_FN=@squad.span_constraint_fn()"])
def test_eval_span_constraint_comes_from_tasks(binding):
  files = ["runs/prompt_eval.gin", "models/t5_1_1_tiny.gin",
           "prompts/random.gin"]
  gin_utils.parse(files, REQUIRED["prompt_eval.gin"])
  assert gin.get_bindings(evaluate_lib.evaluate)["constraint_fn"] is None
  gin_utils.parse(files, REQUIRED["prompt_eval.gin"] + [binding])
  constraint_fn = gin.get_bindings(evaluate_lib.evaluate)["constraint_fn"]
  assert constraint_fn.func is constraints.span_constraint_after_marker
  assert constraint_fn.keywords == {
      "marker_ids": [2625, 10], "eos_id": 1,
      "extra_sequences": [[73, 3247, 3321, 179]]}
