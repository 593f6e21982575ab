"""A prompt-bank mixture routes each task's rows to its prompt's ids."""

import numpy as np
import pytest
import seqio

from tasks import prompt_banks
from tasks import testing_tasks

LENGTHS = {"inputs": 12, "targets": 4}


def test_each_tasks_inputs_start_with_its_prompt_ids():
  for name, text in (("bank_a", "good movie"), ("bank_b", "bad film")):
    testing_tasks.register_in_memory_task(
        name, [{"inputs": text, "targets": "positive"}])
  prompt_banks.register_bank_mixture("bank_ab", ["bank_a", "bank_b"], 2)
  for k, name in enumerate(("bank_a", "bank_b")):
    variant = seqio.get_mixture_or_task(
        prompt_banks.variant_name(name, k, 2))
    plain = next(seqio.get_mixture_or_task(name).get_dataset(
        LENGTHS, "validation", shuffle=False).as_numpy_iterator())
    routed = next(variant.get_dataset(
        LENGTHS, "validation", shuffle=False).as_numpy_iterator())
    want = [-1 - 2 * k, -2 - 2 * k]
    np.testing.assert_array_equal(routed["inputs"][:2], want)
    np.testing.assert_array_equal(routed["inputs"][2:], plain["inputs"])
  mixture = seqio.get_mixture_or_task("bank_ab")
  assert sorted(t.name for t in mixture.tasks) == [
      "bank_a_bank0_p2", "bank_b_bank1_p2"]


def test_unknown_task_is_a_one_line_error():
  with pytest.raises(ValueError, match="no seqio task 'nope'"):
    prompt_banks.register_bank_mixture("bank_x", ["nope"], 2)


def test_gin_file_builds_the_bank_and_its_mixture():
  import gin
  from prompt_jax import gin_utils
  from prompt_jax.methods import PromptBank
  for name in ("bank_a", "bank_b"):
    testing_tasks.register_in_memory_task(
        name, [{"inputs": "fine", "targets": "positive"}])
  gin_utils.parse(
      ["runs/prompt_train.gin", "models/t5_1_1_tiny.gin",
       "methods/prompt_bank.gin"],
      ["MODEL_DIR='/tmp/x'", "TRAIN_STEPS=10",
       "TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}",
       "BANK_TASKS=['bank_a', 'bank_b']", "PROMPT_LENGTH=3"])
  try:
    method = gin.get_configurable(PromptBank)()
    assert method.tasks == ("bank_a", "bank_b") and method.length == 3
    name = gin.get_configurable(prompt_banks.bank_mixture)()
    assert name == "bank_bank_a_bank_b_p3"
    assert len(seqio.get_mixture_or_task(name).tasks) == 2
  finally:
    gin.clear_config()
