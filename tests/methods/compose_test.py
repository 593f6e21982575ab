"""Compose: methods trained together, seams merged, double claims refused."""

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax import gin_utils
from prompt_jax import models
from prompt_jax import optim
from prompt_jax import testing
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.methods import METHODS
from prompt_jax.methods import Compose
from prompt_jax.methods import FullFinetune
from prompt_jax.methods import LoRA
from prompt_jax.methods import PromptTuning
from prompt_jax.methods import base
from prompt_jax.methods.compose import merge
from prompt_jax.methods.prompt_tuning import specs
from prompt_jax.testing import llama as llama_testing


def _lm(family: str):
  if family == "t5":
    return models.EncoderDecoderLM(testing.tiny_t5_config(
        num_encoder_layers=1, num_decoder_layers=1))
  return models.DecoderOnlyLM(llama_testing.tiny_decoder_config(num_layers=1))


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_prompt_plus_lora_equals_the_prompt_on_merged_kernels(family):
  lm = _lm(family)
  prompt = PromptTuning(length=3, init=specs.random_uniform())
  lora = LoRA(rank=2, targets=("q", "v") if family == "t5"
              else ("q_proj", "v_proj"))
  both = Compose(methods=(prompt, lora))
  zeros = [jnp.ones((1, 1), jnp.int32)] * (2 if family == "t5" else 1)
  params = flax.core.meta.unbox(lm.module.init(jax.random.key(0),
                                               *zeros)["params"])
  trainable = both.init_trainable(jax.random.key(1), lm, params, None)
  trainable["lora"] = jax.tree.map(  # Nonzero B, so LoRA acts.
      lambda x: x + 0.3, trainable["lora"])
  rng = np.random.RandomState(0)
  inputs = rng.randint(3, lm.config.vocab_size, (2, 5)).astype(np.int32)
  targets = rng.randint(3, lm.config.vocab_size, (2, 3)).astype(np.int32)
  got = base.TunedModel(lm, both).score_batch(trainable, params, inputs,
                                              targets)[0]
  merged = lora.merge(trainable["lora"], params)
  want = base.TunedModel(lm, prompt).score_batch(
      trainable["prompt_tuning"], merged, inputs, targets)[0]
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
  alone = base.TunedModel(lm, prompt).score_batch(
      trainable["prompt_tuning"], params, inputs, targets)[0]
  assert np.abs(np.asarray(got) - np.asarray(alone)).max() > 1e-3


def test_merge_keeps_distinct_seams_and_refuses_double_claims():
  delta = seams_lib.LowRankDelta(jnp.zeros((4, 1)), jnp.zeros((1, 4)))
  a = seams_lib.Seams(decoder_layers=(seams_lib.LayerSeams(
      self_attention=seams_lib.AttentionSeams(deltas={"query": delta})),))
  b = seams_lib.Seams(decoder_layers=(None, seams_lib.LayerSeams(
      self_attention=seams_lib.AttentionSeams(deltas={"value": delta}))),
      decoder_embed_fn=lambda x, m: (x, m))
  c = seams_lib.Seams(decoder_layers=(seams_lib.LayerSeams(
      self_attention=seams_lib.AttentionSeams(
          deltas={"value": delta}, key_scale=jnp.ones((2, 2)))),))
  ab = merge.merge(a, b, ("x", "y"))
  assert ab.decoder_embed_fn is b.decoder_embed_fn
  assert set(merge.merge(ab, c, ("x", "z")).decoder_layer(0)
             .self_attention.deltas) == {"query", "value"}
  with pytest.raises(ValueError, match=r"^compose: x and z both set "
                     r"decoder_layers\[1\]\.self_attention\.deltas\['value'\]"):
    merge.merge(ab, dataclasses_replace_layers(c), ("x", "z"))
  with pytest.raises(ValueError, match="both set decoder_embed_fn"):
    merge.merge(b, b, ("y", "w"))
  with pytest.raises(ValueError, match="both set position_offset"):
    merge.merge(seams_lib.Seams(position_offset=2),
                seams_lib.Seams(position_offset=3), ("p", "q"))


def dataclasses_replace_layers(s: seams_lib.Seams) -> seams_lib.Seams:
  """`s` with its layer 0 moved to layer 1."""
  return seams_lib.Seams(decoder_layers=(None, s.decoder_layers[0]))


def test_two_prompts_fail_when_the_model_is_built():
  class OtherPrompt(PromptTuning):
    name = "other_prompt"
  lm = _lm("llama")
  both = Compose(methods=(PromptTuning(length=2, init=specs.random_uniform()),
                          OtherPrompt(length=2, init=specs.random_uniform())))
  with pytest.raises(ValueError, match="^compose: prompt_tuning and "
                     "other_prompt both set decoder_embed_fn"):
    base.TunedModel(lm, both)


@pytest.mark.parametrize("methods, message", [
    ((LoRA(),), "two or more"),
    ((LoRA(), LoRA(rank=2)), "appear once"),
    ((LoRA(), FullFinetune()), "does not compose"),
])
def test_bad_compositions_are_one_line_errors(methods, message):
  with pytest.raises(ValueError, match=message) as err:
    Compose(methods=methods)
  assert "\n" not in str(err.value)


def test_registry_settings_and_gin_file():
  assert METHODS["compose"] is Compose
  gin_utils.parse(
      ["runs/prompt_train.gin", "models/t5_1_1_tiny.gin",
       "methods/compose.gin"],
      ["MODEL_DIR='/tmp/x'", "TRAIN_STEPS=10",
       "MIXTURE_OR_TASK_NAME='sst2_v100'",
       "TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}",
       "PROMPT_LENGTH=5", "LORA_RANK=4"])
  method = gin.get_configurable(Compose)()
  assert [m.name for m in method.methods] == ["prompt_tuning", "lora"]
  assert method.methods[0].length == 5 and method.methods[1].rank == 4
  assert gin.get_bindings(optim.make_optimizer) == {
      "name": "adamw", "learning_rate": 1e-3}
  settings = method.settings()
  assert settings["method"] == "compose"
  assert [s["method"] for s in settings["methods"]] == ["prompt_tuning",
                                                        "lora"]
  gin.clear_config()
