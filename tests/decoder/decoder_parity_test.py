"""Parity with transformers' `LlamaForCausalLM` on random tiny models.

Grouped-query attention (4 query / 2 kv heads), 3 layers, tied and untied
heads, randomised norm scales; no downloads. Also the checkpoint conversion
(strict, exact round trip) and the config mapping.
"""

import functools

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from prompt_jax.testing import parity_checks as pc
from prompt_jax.backbones.llama import attention
from prompt_jax.backbones.llama import config as config_lib
from prompt_jax.backbones.llama import convert
from prompt_jax.backbones.llama import generation
from prompt_jax.backbones.llama import network
from prompt_jax.testing import llama as testing

_CONFIGS = pc.decoder_configs()


@functools.lru_cache(maxsize=None)
def _models(name: str, eos_boost: float = 1.0):
  """(config, HF model, our params); `eos_boost` scales the head's EOS row
  (of a fresh model: the shared one of `pc.decoder_models` stays intact)."""
  if eos_boost == 1.0:
    return pc.decoder_models(name)
  cfg = _CONFIGS[name]
  hf_model, _ = testing.random_hf_llama(cfg, seed=len(name))
  with torch.no_grad():
    hf_model.lm_head.weight[cfg.eos_id] *= eos_boost
  state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
  return cfg, hf_model, convert.params_from_hf(state, cfg)


_batch = pc.decoder_batch


@pytest.mark.parametrize("name", sorted(_CONFIGS))
@pytest.mark.parametrize("side", ["right", "left"])
def test_logits_match_transformers(name, side):
  err = pc.decoder_logits_diff(name, side)
  print(f"{name} {side}: max |ours - HF| = {err:.2e}")
  assert err <= pc.bound(f"decoder_logits_{name}")


def test_rotary_frequencies_match_transformers():
  for name in ("tied", "llama3_rope"):
    cfg, hf_model, _ = _models(name)
    np.testing.assert_allclose(
        attention.rope_inverse_frequencies(cfg.head_dim, cfg.rope_theta,
                                           cfg.rope_scaling),
        hf_model.model.rotary_emb.inv_freq.numpy(), rtol=1e-6)


@pytest.mark.parametrize("name,eos_boost", [
    ("tied", 1.0), ("untied", 1.0),
    ("untied", 3.0),  # EOS at steps 0 and 1 of two rows; pad after it.
])
def test_greedy_tokens_match_transformers_generate(name, eos_boost):
  """HF needs left padding; ours gives the same tokens with either side."""
  cfg, hf_model, params = _models(name, eos_boost)
  ids, mask = _batch(cfg.vocab_size, "left")
  steps = 8
  with torch.no_grad():
    hf_out = hf_model.generate(
        torch.tensor(ids), attention_mask=torch.tensor(mask),
        max_new_tokens=steps, do_sample=False, num_beams=1,
        pad_token_id=cfg.pad_id, eos_token_id=cfg.eos_id).numpy()
  expected = np.full((4, steps), cfg.pad_id)
  new = hf_out[:, ids.shape[1]:]
  expected[:, :new.shape[1]] = new
  print(f"{name} x{eos_boost}: {expected.tolist()}")
  assert (eos_boost == 1.0) == (cfg.eos_id not in expected)
  model = network.DecoderLM(cfg)
  for side in ("left", "right"):
    ids_s, mask_s = _batch(cfg.vocab_size, side)
    tokens, _ = generation.generate(
        model, params, jnp.asarray(ids_s), max_decode_length=steps,
        prompt_mask=jnp.asarray(mask_s))
    np.testing.assert_array_equal(np.asarray(tokens), expected,
                                  err_msg=f"{side} padding")


# Conversion -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tied", "untied"])
def test_conversion_round_trips_exactly(name):
  cfg, hf_model, params = _models(name)
  state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
  back = convert.hf_from_params(params, cfg)
  assert sorted(back) == sorted(state)
  for key, value in state.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_conversion_reports_every_mismatch_in_one_error():
  cfg, hf_model, _ = _models("untied")
  state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
  del state["model.layers.1.mlp.up_proj.weight"]
  del state["lm_head.weight"]
  state["model.layers.0.self_attn.k_proj.weight"] = np.zeros((32, 32))
  state["model.layers.7.self_attn.q_proj.weight"] = np.zeros((32, 32))
  with pytest.raises(convert.CheckpointMismatchError) as info:
    convert.params_from_hf(state, cfg, "demo.safetensors")
  message = str(info.value)
  print(message)
  assert message.startswith("demo.safetensors does not match the model")
  assert "\n" not in message
  for part in ("2 missing", "model.layers.1.mlp.up_proj.weight",
               "lm_head.weight", "1 unexpected", "model.layers.7.",
               "1 wrong shape", "k_proj.weight: (32, 32), model wants "
               "(16, 32)"):
    assert part in message


# Config mapping ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(config_lib.PRESETS))
def test_hf_config_round_trip(name):
  cfg = config_lib.PRESETS[name]
  hf = transformers.LlamaConfig(**config_lib.to_hf_config(cfg)).to_dict()
  assert config_lib.from_hf_config(hf) == cfg


def test_transformers_4_style_config():
  """Llama 3.2 1B's config.json as written by transformers 4."""
  hf = dict(model_type="llama", vocab_size=128256, hidden_size=2048,
            intermediate_size=8192, num_hidden_layers=16,
            num_attention_heads=32, num_key_value_heads=8, head_dim=64,
            rms_norm_eps=1e-5, rope_theta=500000.0,
            rope_scaling=dict(factor=32.0, high_freq_factor=4.0,
                              low_freq_factor=1.0,
                              original_max_position_embeddings=8192,
                              rope_type="llama3"),
            tie_word_embeddings=True, bos_token_id=128000,
            eos_token_id=[128001, 128008, 128009],
            max_position_embeddings=131072, hidden_act="silu")
  assert (config_lib.from_hf_config(hf)
          == config_lib.PRESETS["llama3_2_1b"])


@pytest.mark.parametrize("change,expected", [
    (dict(model_type="mistral"), "model_type 'mistral'"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(hidden_act="gelu"), "hidden_act 'gelu'"),
    (dict(rope_scaling=dict(rope_type="yarn", factor=2.0)),
     "rope_type 'yarn'"),
    (dict(hidden_size=None), "missing Llama config keys ['hidden_size']"),
])
def test_unsupported_configs_fail_with_one_line(change, expected):
  hf = config_lib.to_hf_config(config_lib.PRESETS["tiny"])
  hf.pop("rope_parameters")
  hf.update(change)
  hf = {k: v for k, v in hf.items() if v is not None}
  with pytest.raises(ValueError, match="^my/config.json: ") as info:
    config_lib.from_hf_config(hf, "my/config.json")
  assert expected in str(info.value) and "\n" not in str(info.value)
