"""P-tuning v2: prefix tuning's deep prompts under their own name.

PEFT parity, the layouts and the NumPy reference are
`prefix_tuning_test.py`'s (P-tuning v2 is PEFT's `PrefixTuningConfig(
prefix_projection=False)`); here: it binds exactly what prefix tuning
binds, trains the prompts themselves, its artifact, errors and gin file.
"""

import flax
import gin
import jax
import numpy as np
import pytest

from prompt_jax import gin_utils
from prompt_jax import models
from prompt_jax import optim
from prompt_jax import partitioning
from prompt_jax import testing
from prompt_jax.methods import METHODS
from prompt_jax.methods import base
from prompt_jax.methods.p_tuning_v2 import PTuningV2
from prompt_jax.methods.prefix_tuning import PrefixTuning
from prompt_jax.testing import llama as llama_testing


@pytest.fixture(scope="module")
def t5():
  cfg = testing.tiny_t5_config(num_encoder_layers=1, num_decoder_layers=1)
  lm = models.EncoderDecoderLM(cfg)
  rng = np.random.RandomState(0)
  batch = {"encoder_input_tokens": testing.padded_batch(
      rng, 2, 6, cfg.vocab_size, lengths=[6, 3]),
           "decoder_input_tokens": testing.padded_batch(
               rng, 2, 3, cfg.vocab_size)}
  return lm, batch


def test_binds_prefix_tunings_deep_prompts(t5):
  lm, batch = t5
  params = jax.tree.map(
      lambda x: 0.3 * np.random.RandomState(x.size).standard_normal(
          x.shape).astype(np.float32),
      flax.core.meta.unbox(partitioning.abstract_variables(
          lm.module, lm.sample_inputs)["params"]))
  method = PTuningV2(length=3)
  trainable = method.init_trainable(jax.random.key(1), lm, params, None)
  assert list(trainable) == ["prefix"]  # The prompts themselves train.
  assert set(trainable["prefix"]) == {"encoder", "decoder_self",
                                      "decoder_cross"}
  run = jax.jit(lambda p, s: lm.logits(p, batch, seams=s))

  def logits(m):
    return np.asarray(run(*m.bind(lm, trainable, params)))

  np.testing.assert_array_equal(logits(method), logits(PrefixTuning(3)))
  bare = np.asarray(run(params, models.Seams()))
  assert np.abs(logits(method) - bare).max() > 1e-4


def test_decoder_prompts_follow_pefts_conventions():
  lm = models.DecoderOnlyLM(llama_testing.tiny_decoder_config())
  method = PTuningV2(length=4)
  layout = method.layout(lm)
  assert layout.offset == 4 and layout.heads == lm.config.num_kv_heads
  abstract = base.abstract_values(method, lm)
  assert abstract["prefix"]["self_attention"]["key"].shape == (3, 4, 2, 8)


def test_artifact_round_trips(t5, tmp_path):
  lm, _ = t5
  method = PTuningV2(length=2)
  trainable = method.init_trainable(jax.random.key(2), lm, None, None)
  path = method.save_artifact(trainable, method.artifact_path(tmp_path, 5))
  assert path == tmp_path / "p_tuning_v2" / "prompt_step_5.npz"
  assert method.latest_artifact(tmp_path) == path
  jax.tree.map(np.testing.assert_array_equal,
               method.load_artifact(path, lm), jax.device_get(trainable))


@pytest.mark.parametrize("kwargs,needle", [
    (dict(dropout=1.0), "dropout"),
    (dict(length=0), "PTuningV2 length"),
    (dict(mode="deep"), "'deep'"),
])
def test_bad_settings_are_one_line_errors(kwargs, needle):
  with pytest.raises(ValueError) as e:
    PTuningV2(**kwargs)
  assert needle in str(e.value) and "\n" not in str(e.value)


def test_mode_on_a_decoder_is_a_one_line_error():
  lm = models.DecoderOnlyLM(llama_testing.tiny_decoder_config())
  with pytest.raises(ValueError) as e:
    base.TunedModel(lm, PTuningV2(mode="paper"))
  assert "decoder-only" in str(e.value) and "\n" not in str(e.value)


def test_registry_and_settings():
  assert METHODS["p_tuning_v2"] is PTuningV2
  assert PTuningV2(8).settings() == {
      "method": "p_tuning_v2", "prefix_length": 8,
      "prefix_projection": False, "prefix_hidden": None,
      "prefix_mode": None, "p_tuning_v2_dropout": 0.0}
  assert PTuningV2(8) != PrefixTuning(8)


def test_gin_file_builds_the_method_and_the_optimizer():
  gin_utils.parse(
      ["runs/prompt_train.gin", "models/t5_1_1_tiny.gin",
       "methods/p_tuning_v2.gin"],
      ["MODEL_DIR='/tmp/x'", "TRAIN_STEPS=10",
       "MIXTURE_OR_TASK_NAME='sst2_v100'",
       "TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}",
       "PTV2_LENGTH=6", "PTV2_MODE='peft_compat'"])
  assert "METHOD = @p_tuning_v2.PTuningV2()" in gin.config_str()
  assert gin.get_configurable(PTuningV2)() == PTuningV2(
      6, mode="peft_compat")
  assert gin.get_bindings(optim.make_optimizer) == {
      "name": "adamw", "learning_rate": 1e-2}


def test_prefix_dropout_acts_at_training_steps_only():
  lm = models.DecoderOnlyLM(llama_testing.tiny_decoder_config(num_layers=1))
  params = flax.core.meta.unbox(lm.module.init(
      jax.random.key(0), jax.numpy.ones((1, 1), jax.numpy.int32))["params"])
  plain, dropped = PTuningV2(length=3), PTuningV2(length=3, dropout=0.5)
  trainable = plain.init_trainable(jax.random.key(1), lm, params, None)
  batch = {"decoder_target_tokens": np.array([[5, 6, 7, 8]], np.int32),
           "decoder_loss_weights": np.array([[0, 1, 1, 1]], np.int32)}

  compiled = {}

  def loss(method, rng, dropout=True):
    key = (method, dropout)
    if key not in compiled:
      model = base.TunedModel(lm, method)
      compiled[key] = jax.jit(lambda r: model.loss_fn(
          trainable, params, batch, rng=r, enable_dropout=dropout)[0])
    return float(compiled[key](rng))
  key = jax.random.key(3)
  assert loss(dropped, key, dropout=False) == loss(plain, key, False)
  assert loss(dropped, key) == loss(dropped, key)
  assert loss(dropped, key) != loss(dropped, jax.random.key(4))
  assert loss(dropped, key) != loss(plain, key)
