"""What every backbone family provides: a `Tokenizer` and a loaded `Backbone`.

`backbones.load(cfg, mesh, rules)` returns a `Backbone`; its `family` is one
of `models.ENCODER_DECODER` / `models.DECODER_ONLY` names ('t5' and
'decoder' in configs).
"""

import dataclasses
from typing import Any, Protocol, Sequence

from prompt_jax.types import PyTree

T5 = "t5"
DECODER = "decoder"
KINDS = (T5, DECODER)


class Tokenizer(Protocol):
  """Text <-> ids for one backbone (SentencePiece for T5, BPE for Llama)."""

  @property
  def vocab_size(self) -> int: ...

  @property
  def eos_id(self) -> int | None: ...

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


@dataclasses.dataclass
class Backbone:
  """A loaded frozen backbone.

  Attributes:
    kind: 't5' or 'decoder'.
    config: its `T5Config` or `DecoderConfig`.
    params: weights placed in their shardings (unboxed).
    tokenizer: its tokenizer (None for a random decoder without one).
    add_bos: the tokenizer expects BOS first (decoder-only).
  """
  kind: str
  config: Any
  params: PyTree
  tokenizer: Tokenizer | None
  add_bos: bool = False
