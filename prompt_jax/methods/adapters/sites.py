"""Where adapters go: the configs, the blocks they select, their seams.

A site is one block of one layer, named by its module path in our param
tree; the adapter's parameters sit beside the block's frozen weights at
`<path>/adapter/{down,up}/{kernel,bias}`:

  T5 encoder self-attention  `encoder/layers_0/attention`
  T5 decoder self-attention  `decoder/layers_0/self_attention`
  T5 cross-attention         `decoder/layers_0/encoder_decoder_attention`
  T5 FFN                     `encoder/layers_0/mlp`, `decoder/layers_0/mlp`
  Llama self-attention, FFN  `layers_0/self_attention`, `layers_0/mlp`

Configs (the adapters library's names in brackets):
  'houlsby' [double_seq_bn, Houlsby et al. 2019]: after every
    self-attention block (its `mh_adapter`) and every FFN (`output_adapter`).
  'pfeiffer' [seq_bn, Pfeiffer et al. 2020]: after every FFN only.
Cross-attention gets adapters only with `cross_attention=True` (the
library's `cross_adapter`, False in both of its configs).

Attention adapters run as `AttentionSeams.post_fn` (after the out
projection), FFN adapters as `MlpSeams.post_fn` (after wo); both before the
block's residual add.
"""

import re
from typing import Callable, Mapping

import flax.traverse_util

from prompt_jax import partitioning
from prompt_jax.backbones import seams as seams_lib

CONFIGS: dict[str, tuple[str, ...]] = {
    "houlsby": ("self_attention", "mlp"),
    "pfeiffer": ("mlp",),
}
CROSS = "cross_attention"
# Our block name -> the `LayerSeams` field it plugs into.
BLOCK_FIELDS = {"attention": "self_attention",
                "self_attention": "self_attention",
                "encoder_decoder_attention": CROSS,
                "mlp": "mlp"}
_PATH = re.compile(r"^(?:(encoder|decoder)/)?layers_(\d+)/"
                   r"(attention|self_attention|encoder_decoder_attention|mlp)$")


def parse(path: str) -> tuple[str, int, str]:
  """(stack, layer, `LayerSeams` field) of a block path.

  Raises:
    ValueError: `path` is not a layer block.
  """
  match = _PATH.match(path)
  if not match:
    raise ValueError(f"adapters: {path!r} is not a layer block path")
  stack, layer, block = match.groups()
  return stack or "decoder", int(layer), BLOCK_FIELDS[block]


def all_blocks(lm) -> list[str]:
  """Every attention / FFN block path of `lm`'s backbone, sorted (from its
  abstract params: nothing is allocated)."""
  abstract = partitioning.abstract_variables(lm.module, lm.sample_inputs)
  flat = flax.traverse_util.flatten_dict(abstract["params"], sep="/")
  found = set()
  for key in flat:
    parts = key.split("/")
    for end in range(1, len(parts)):
      if _PATH.match("/".join(parts[:end])):
        found.add("/".join(parts[:end]))
  return sorted(found, key=lambda p: parse(p)[:2] + (p,))


def select(lm, config: str, cross_attention: bool) -> list[str]:
  """The block paths `config` adapts on `lm`.

  Raises:
    ValueError: an unknown config, or `cross_attention` on a backbone
      without cross-attention.
  """
  if config not in CONFIGS:
    raise ValueError(f"adapters config {config!r} is unknown; expected one "
                     f"of {sorted(CONFIGS)}")
  fields = set(CONFIGS[config]) | ({CROSS} if cross_attention else set())
  blocks = [p for p in all_blocks(lm) if parse(p)[2] in fields]
  if cross_attention and not any(parse(p)[2] == CROSS for p in blocks):
    raise ValueError(f"adapters cross_attention=True, but this {lm.family} "
                     "model has no cross-attention; use False")
  return blocks


def seams_of(fns: Mapping[str, Callable]) -> seams_lib.Seams:
  """The `Seams` whose post functions are `fns` (keyed by block path)."""
  return seams_lib.from_fields({parse(path): {"post_fn": fn}
                                for path, fn in fns.items()})
