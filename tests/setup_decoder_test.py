"""build_run for decoder backbones: kind inference, random preset, SmolLM2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax import models
from prompt_jax import setup as run_setup
from prompt_jax.methods.prompt_tuning import specs
from prompt_jax.methods import prompt_tuning

BC = run_setup.BackboneConfig


@pytest.mark.parametrize("cfg, kind", [
    (BC(preset="t5_1_1_tiny"), "t5"),
    (BC(preset="tiny"), "decoder"),
    (BC(preset="smollm2_135m"), "decoder"),
    (BC(path="smollm2"), "decoder"),
    (BC(path="/x/model.gguf"), "decoder"),
    (BC(path="/no/such/dir"), "t5"),
    (BC(preset="t5_1_1_tiny", kind="decoder"), "decoder"),
])
def test_backbone_kind(cfg, kind):
  assert run_setup.backbone_kind(cfg) == kind


def test_bad_kind_is_one_line():
  with pytest.raises(ValueError, match="kind='gpt'"):
    run_setup.backbone_kind(BC(kind="gpt"))


def test_random_tiny_decoder_run():
  run = run_setup.build_run(
      backbone=BC(preset="tiny", random_weights=True),
      method=prompt_tuning.PromptTuning(length=3, init=specs.sampled_vocab(50)),
      mesh_cfg=run_setup.MeshConfig(data=2, model=4))
  assert run.model.family == models.DECODER_ONLY
  assert run.tokenizer is None and run.method.position == "prefix" and not run.model.add_bos
  wi = run.frozen["layers_0"]["mlp"]["wi_0"]["kernel"]
  assert wi.addressable_shards[0].data.shape == (32, 64 // 4)
  prompt = run.model.init_trainable(jax.random.key(0))["prompt"]["prompt"]
  assert prompt.shape == (3, 32)


def test_smollm2_run_ranks_the_right_continuation():
  run = run_setup.build_run(
      backbone=BC(path="smollm2", preset="smollm2_135m"),
      method=prompt_tuning.PromptTuning(length=2, init=specs.text("Answer")),
      mesh_cfg=run_setup.MeshConfig(data=-1, model=1))
  tok = run.tokenizer
  assert not tok.add_bos and run.method.position == "prefix" and not run.model.add_bos
  trainable = run.model.init_trainable(jax.random.key(0))
  inputs = tok.encode("The capital of France is")
  options = [tok.encode(" Paris"), tok.encode(" London"),
             tok.encode(" banana")]
  width = max(map(len, options))
  targets = np.zeros((3, width), np.int32)
  for i, o in enumerate(options):
    targets[i, :len(o)] = o
  scores, _ = jax.jit(run.model.score_batch)(
      trainable, run.frozen, jnp.asarray([inputs] * 3), jnp.asarray(targets))
  scores = np.asarray(scores)
  print("SmolLM2 scores (Paris, London, banana):", scores)
  assert scores.argmax() == 0, scores
