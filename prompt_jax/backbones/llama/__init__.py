"""Flax Llama-family decoder (SmolLM2, Llama 3 shapes) matching HF Llama."""

from prompt_jax.backbones.llama.config import (PRESETS, DecoderConfig,
                                               Llama3RopeScaling,
                                               from_hf_config, preset,
                                               to_hf_config)
from prompt_jax.backbones.llama.network import DecoderLM
