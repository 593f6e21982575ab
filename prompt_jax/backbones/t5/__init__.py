"""Flax T5 (1.0, 1.1, LM-adapted, Flan, mT5, ByT5 shapes) matching HF."""

from prompt_jax.backbones.seams import (AttentionSeams, LayerSeams,
                                        LowRankDelta, MlpSeams, Seams)
from prompt_jax.backbones.t5.config import (PRESETS, T5Config, from_hf_config,
                                            preset)
from prompt_jax.backbones.t5.network import T5Transformer
