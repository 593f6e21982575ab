"""`count_trainable` reproduces the counts PEFT records, from shapes alone.

bloomz-560m's counts depend only on its width (1024) and depth (24 layers,
16 heads of 64, no grouped-query attention), so a decoder config of those
shapes stands in for it; SmolLM2-135M is our preset. Nothing is allocated.
"""

import pytest

from prompt_jax import models
from prompt_jax.backbones.llama import config as llama_config
from prompt_jax.methods import IA3
from prompt_jax.methods import PTuning
from prompt_jax.methods import PrefixTuning
from prompt_jax.methods import counting
from prompt_jax.methods import full_finetune
from prompt_jax.methods import lora
from prompt_jax.methods import prompt_tuning
from prompt_jax.methods.prompt_tuning import specs

BLOOMZ_560M_SHAPES = llama_config.preset(
    "smollm2_135m", num_layers=24, emb_dim=1024, num_heads=16,
    num_kv_heads=16, head_dim=64, mlp_dim=4096, vocab_size=250880)


@pytest.fixture(scope="module")
def smollm2():
  return models.DecoderOnlyLM(llama_config.preset("smollm2_135m"))


@pytest.fixture(scope="module")
def bloomz_shapes():
  return models.DecoderOnlyLM(BLOOMZ_560M_SHAPES)


def test_prompt_tuning_on_bloomz_shapes_is_pefts_8192(bloomz_shapes):
  count = counting.count_trainable(
      prompt_tuning.PromptTuning(length=8, init=specs.random_uniform()),
      bloomz_shapes)
  assert count.trainable == 8_192
  assert count.all == count.backbone + 8_192


def test_lora_q_v_on_smollm2_is_460800(smollm2):
  count = counting.count_trainable(lora.LoRA(rank=8), smollm2)
  assert count.trainable == 460_800
  assert count.backbone == 134_515_008  # SmolLM2-135M (tied head).
  assert "trainable params: 460,800 || all params: 134,975,808" in (
      count.line("lora"))
  assert count.percent == pytest.approx(100 * 460_800 / 134_975_808)


def test_full_finetune_trains_everything(smollm2):
  count = counting.count_trainable(full_finetune.FullFinetune(), smollm2)
  assert count.trainable == count.all == count.backbone
  assert count.percent == 100.0


@pytest.mark.parametrize("backbone, method, want", [
    # The counts PEFT records (its docs and tests) for these shapes.
    ("bloomz", PrefixTuning(length=20), 983_040),
    ("bloomz", PTuning(length=20, encoder_hidden_size=128), 300_288),
    ("smollm2", PrefixTuning(length=20), 230_400),
    ("smollm2", IA3(), 57_600),
])
def test_pefts_recorded_counts(backbone, method, want, smollm2,
                               bloomz_shapes):
  lm = smollm2 if backbone == "smollm2" else bloomz_shapes
  assert counting.count_trainable(method, lm).trainable == want
