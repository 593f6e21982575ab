"""Frozen backbones: T5 (`t5/`) and the Llama family (`llama/`).

`load(cfg, mesh, rules)` is the one place that tells the families apart.
Shared machinery: `seams` (where methods plug in), `layers`, `lazy_tensors`
(per-shard checkpoint reading).
"""

from prompt_jax.backbones.base import Backbone, Tokenizer
from prompt_jax.backbones.loading import BackboneConfig, backbone_kind, load
