"""T5 SentencePiece vocabulary helpers.

`t5_vocabulary` returns the seqio vocabulary used by tasks. Machines without
seqio (e.g. the GPU image) use `SentencePieceTokenizer`, which reproduces
seqio's ids exactly: the 32,000 T5 pieces plus `extra_ids` sentinels
`<extra_id_N>` appended in reverse, so `<extra_id_0>` = 32099 for T5.
"""

import os
import pathlib

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from prompt_jax.data import root as data_root_lib

T5_EXTRA_IDS = 100


def default_vocab_path() -> pathlib.Path:
  return data_root_lib.data_root() / "vocab" / "t5_spiece.model"


def _resolve(path: str | os.PathLike[str] | None) -> str:
  path = default_vocab_path() if path is None else pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"SentencePiece model not found: {path}")
  return str(path)


def t5_vocabulary(path: str | None = None, extra_ids: int = T5_EXTRA_IDS):
  """Returns `seqio.SentencePieceVocabulary(path, extra_ids)` (seqio needed)."""
  import seqio  # pylint: disable=g-import-not-at-top  # heavy, TF-based.

  return seqio.SentencePieceVocabulary(_resolve(path), extra_ids)


class SentencePieceTokenizer:
  """seqio-free equivalent of `seqio.SentencePieceVocabulary` (encode/decode).

  Like seqio, sentinels are added to the model as user-defined pieces
  `▁<extra_id_N>` in reverse order, and `decode` stops after the first EOS
  and maps ids >= `vocab_size` to UNK.
  """

  def __init__(self, path: str | None = None, extra_ids: int = T5_EXTRA_IDS):
    self.path = _resolve(path)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(pathlib.Path(self.path).read_bytes())
    user_defined = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    for i in reversed(range(extra_ids)):
      proto.pieces.add(piece=f"▁<extra_id_{i}>", score=0.0, type=user_defined)
    self._sp = spm.SentencePieceProcessor()
    self._sp.LoadFromSerializedProto(proto.SerializeToString())
    self.extra_ids = extra_ids

  @property
  def vocab_size(self) -> int:
    return self._sp.GetPieceSize()

  @property
  def pad_id(self) -> int:
    return 0

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def unk_id(self) -> int:
    return self._sp.unk_id()

  def encode(self, text: str) -> list[int]:
    """Tokenizes `text` to ids, without EOS."""
    return self._sp.EncodeAsIds(text)

  def decode(self, ids) -> str:
    """Detokenizes ids up to and including the first EOS."""
    ids = [self.unk_id if i >= self.vocab_size else int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[: ids.index(self.eos_id) + 1]
    return self._sp.DecodeIds(ids)


def check_vocab_size(
    vocab_size: int, model_vocab_size: int, path: str | os.PathLike[str]
) -> None:
  """Raises ValueError if the vocabulary has ids the model cannot embed.

  A model vocab larger than the tokenizer's is fine (T5 pads 32100 → 32128).
  """
  if vocab_size > model_vocab_size:
    raise ValueError(
        f"Vocabulary {path} has {vocab_size} ids but the model embedding has"
        f" only {model_vocab_size}."
    )
