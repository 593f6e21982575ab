"""Byte-level BPE tokenizers for decoder backbones (GGUF or HF directory).

`from_gguf` rebuilds the tokenizer a GGUF describes in its `tokenizer.ggml.*`
metadata (tokens, merges, token types, special ids, pre-tokenizer name) as a
Hugging Face `tokenizers.Tokenizer`; `from_hf_dir` reads a `tokenizer.json`.
Both give a `BPETokenizer`, which needs neither seqio nor TensorFlow (the GPU
image has neither). `seqio_vocabulary` wraps one as a `seqio.Vocabulary` so
seqio tasks work unchanged; seqio is imported only there.

`encode` never adds BOS/EOS: callers decide (`add_bos` says what the model
expects; SmolLM2 expects none). Text such as `<|im_start|>` maps to its
special token, as in transformers.
"""

import functools
import json
import os
import pathlib
from typing import Any, Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers

from prompt_jax.backbones.llama import gguf_loading

# llama.cpp token types (`tokenizer.ggml.token_type`).
_CONTROL = 3
_USER_DEFINED = 4

# Llama 3's split regex (llama.cpp's LLAMA_VOCAB_PRE_TYPE_LLAMA3).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _gpt2() -> pre_tokenizers.PreTokenizer:
  return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_gpt2() -> pre_tokenizers.PreTokenizer:
  # llama.cpp splits every digit off first ("\p{N}"), then GPT-2's regex;
  # the same as these models' tokenizer.json.
  return pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True), _gpt2()])


def _llama3() -> pre_tokenizers.PreTokenizer:
  return pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(_LLAMA3_SPLIT), "isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


# `tokenizer.ggml.pre` -> pre-tokenizer (None: key absent).
_PRE_TOKENIZERS = {
    None: _gpt2, "default": _gpt2, "gpt-2": _gpt2,
    "smollm": _digits_then_gpt2, "starcoder": _digits_then_gpt2,
    "refact": _digits_then_gpt2,
    "llama3": _llama3, "llama-v3": _llama3, "llama-bpe": _llama3,
}


class BPETokenizer:
  """A `tokenizers.Tokenizer` plus the model's special ids.

  Attributes:
    tokenizer: the underlying `tokenizers.Tokenizer`.
    source: the file it came from (for error messages).
  """

  def __init__(self, tokenizer: tokenizers.Tokenizer, *, bos_id: int | None,
               eos_id: int | None, unk_id: int | None = None,
               pad_id: int | None = None, add_bos: bool = False,
               source: str = "tokenizer"):
    self.tokenizer = tokenizer
    self.source = source
    self._ids = dict(bos=bos_id, eos=eos_id, unk=unk_id, pad=pad_id)
    self._add_bos = add_bos

  @property
  def vocab_size(self) -> int:
    """Number of ids, special tokens included."""
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  @property
  def bos_id(self) -> int | None:
    return self._ids["bos"]

  @property
  def eos_id(self) -> int | None:
    return self._ids["eos"]

  @property
  def unk_id(self) -> int | None:
    return self._ids["unk"]

  @property
  def pad_id(self) -> int | None:
    """The model's padding id (may equal EOS); seqio pads with 0 regardless."""
    return self._ids["pad"]

  @property
  def add_bos(self) -> bool:
    """Whether the model expects BOS before the text (llama.cpp's flag)."""
    return self._add_bos

  def encode(self, text: str) -> list[int]:
    """Tokenizes `text`, without BOS or EOS."""
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` for each text (parallel in Rust)."""
    return [e.ids for e in self.tokenizer.encode_batch(
        list(texts), add_special_tokens=False)]

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = False
             ) -> str:
    """Detokenizes ids (special tokens kept unless skipped)."""
    return self.tokenizer.decode([int(i) for i in ids],
                                 skip_special_tokens=skip_special_tokens)

  def token_to_id(self, token: str) -> int | None:
    return self.tokenizer.token_to_id(token)

  def id_to_token(self, token_id: int) -> str | None:
    return self.tokenizer.id_to_token(token_id)

  def __repr__(self) -> str:
    return f"BPETokenizer({self.source}, vocab_size={self.vocab_size})"


def from_gguf(source: gguf_loading.GGUFSource) -> BPETokenizer:
  """Builds the byte-level BPE tokenizer described by a GGUF's metadata.

  Args:
    source: a GGUF path or an open `gguf.GGUFReader`.

  Raises:
    FileNotFoundError: no such file.
    ValueError: (one line) not a BPE (`gpt2`) tokenizer, an unknown
      pre-tokenizer, or missing tokens/merges.
  """
  reader = gguf_loading.open_gguf(source)
  name = gguf_loading.source_name(reader)
  meta = lambda key, default=None: gguf_loading.metadata(
      reader, f"tokenizer.ggml.{key}", default)
  kind = meta("model")
  if kind != "gpt2":
    raise ValueError(
        f"{name}: unsupported GGUF tokenizer model {kind!r}; supported:"
        " 'gpt2' (byte-level BPE)")
  pre = meta("pre")
  if pre not in _PRE_TOKENIZERS:
    raise ValueError(
        f"{name}: unsupported GGUF pre-tokenizer {pre!r}; supported:"
        f" {sorted(k for k in _PRE_TOKENIZERS if k)}")
  tokens, merges = meta("tokens"), meta("merges")
  if not tokens or not merges:
    raise ValueError(f"{name}: GGUF has no tokenizer.ggml.tokens/merges")
  vocab = {token: i for i, token in enumerate(tokens)}
  if len(vocab) != len(tokens):
    raise ValueError(f"{name}: tokenizer.ggml.tokens has duplicate tokens")
  bpe = models.BPE(vocab, [tuple(m.split(" ", 1)) for m in merges])
  tok = tokenizers.Tokenizer(bpe)
  tok.pre_tokenizer = _PRE_TOKENIZERS[pre]()
  tok.decoder = decoders.ByteLevel()
  _add_special_tokens(tok, tokens, meta("token_type") or ())
  return BPETokenizer(
      tok, bos_id=meta("bos_token_id"), eos_id=meta("eos_token_id"),
      unk_id=meta("unknown_token_id"), pad_id=meta("padding_token_id"),
      add_bos=bool(meta("add_bos_token", False)), source=name)


def _add_special_tokens(tok: tokenizers.Tokenizer, tokens: Sequence[str],
                        token_types: Sequence[int]) -> None:
  """Control tokens match whole as special, user-defined ones as plain."""
  pairs = list(zip(tokens, token_types))
  # Both are already in the vocab, so their ids are kept.
  tok.add_special_tokens([
      tokenizers.AddedToken(t, special=True, normalized=False)
      for t, kind in pairs if kind == _CONTROL])
  tok.add_tokens([tokenizers.AddedToken(t, normalized=False)
                  for t, kind in pairs if kind == _USER_DEFINED])


def from_hf_dir(path: str | os.PathLike[str]) -> BPETokenizer:
  """Reads a Hugging Face directory's `tokenizer.json` (+ special ids).

  Special ids come from `config.json` (bos/eos/pad_token_id) when present;
  `tokenizer_config.json`'s `add_bos_token` sets `add_bos`.

  Raises:
    FileNotFoundError: no `tokenizer.json`.
    ValueError: (one line) unreadable `tokenizer.json`.
  """
  path = pathlib.Path(path)
  file = path / "tokenizer.json"
  if not file.is_file():
    raise FileNotFoundError(f"{path}: no tokenizer.json")
  try:
    tok = tokenizers.Tokenizer.from_file(str(file))
  except Exception as e:  # pylint: disable=broad-except  # Rust errors.
    raise ValueError(f"{file}: unreadable tokenizer ({e})") from None
  config = _json_or_empty(path / "config.json")
  tok_config = _json_or_empty(path / "tokenizer_config.json")

  def special(key: str) -> int | None:
    if isinstance(config.get(f"{key}_token_id"), int):
      return config[f"{key}_token_id"]
    token = tok_config.get(f"{key}_token")
    token = token.get("content") if isinstance(token, dict) else token
    return tok.token_to_id(token) if isinstance(token, str) else None

  return BPETokenizer(
      tok, bos_id=special("bos"), eos_id=special("eos"),
      unk_id=special("unk"), pad_id=special("pad"),
      add_bos=bool(tok_config.get("add_bos_token", False)), source=str(file))


def _json_or_empty(file: pathlib.Path) -> dict[str, Any]:
  if not file.is_file():
    return {}
  try:
    value = json.loads(file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{file}: invalid JSON ({e})") from None
  return value if isinstance(value, dict) else {}


def check_vocab_size(tokenizer: BPETokenizer, model_vocab_size: int,
                     model_source: str = "model") -> None:
  """Raises a one-line ValueError unless the sizes are equal."""
  if tokenizer.vocab_size != model_vocab_size:
    raise ValueError(
        f"tokenizer {tokenizer.source} has {tokenizer.vocab_size} ids but"
        f" {model_source} has a vocabulary of {model_vocab_size}")


def seqio_vocabulary(tokenizer: BPETokenizer) -> Any:
  """Wraps `tokenizer` as a `seqio.Vocabulary` (imports seqio and TF).

  seqio reserves id 0 for padding and pads with it. Decoding (in Python and
  TF) stops at the first EOS (seqio) and drops id 0 and special tokens, as a
  SentencePiece vocabulary drops its control symbols.
  """
  return _seqio_vocabulary_cls()(tokenizer)


@functools.cache
def _seqio_vocabulary_cls() -> type:
  """Defines the seqio subclass on first use, so seqio stays optional."""
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  class BPEVocabulary(seqio.Vocabulary):
    """`seqio.Vocabulary` over a `BPETokenizer` (tf ops via numpy_function)."""

    def __init__(self, tokenizer: BPETokenizer):
      self.tokenizer = tokenizer
      super().__init__(extra_ids=0)

    @property
    def bos_id(self) -> int | None:
      return self.tokenizer.bos_id

    @property
    def eos_id(self) -> int | None:
      return self.tokenizer.eos_id

    @property
    def unk_id(self) -> int | None:
      return self.tokenizer.unk_id

    @property
    def _base_vocab_size(self) -> int:
      return self.tokenizer.vocab_size

    def _encode(self, s: str) -> Sequence[int]:
      return self.tokenizer.encode(s)

    def _decode(self, ids) -> str:
      return self.tokenizer.decode((i for i in ids if int(i) != self.pad_id),
                                   skip_special_tokens=True)

    def _encode_np(self, s: bytes | np.ndarray) -> np.ndarray:
      s = s.item() if isinstance(s, np.ndarray) else s  # Eager: 0-d array.
      return np.asarray(self._encode(s.decode("utf-8")), np.int32)

    def _decode_np(self, ids: np.ndarray) -> bytes:
      return self._decode(ids.tolist()).encode("utf-8")

    def _encode_tf(self, s):
      """[] string -> [T] int32; [B] strings -> ragged [B, (T)]."""
      def one(x):
        ids = tf.numpy_function(self._encode_np, [x], tf.int32)
        ids.set_shape([None])
        return ids
      if s.shape.rank == 0:
        return one(s)
      return tf.map_fn(one, s, fn_output_signature=tf.RaggedTensorSpec(
          [None], tf.int32))

    def _decode_tf(self, ids):
      """[T] ids -> [] string; [B, T] -> [B] strings."""
      def one(x):
        text = tf.numpy_function(self._decode_np, [x], tf.string)
        text.set_shape([])
        return text
      ids = tf.cast(ids, tf.int32)
      if ids.shape.rank == 1:
        return one(ids)
      return tf.map_fn(one, ids, fn_output_signature=tf.string)

    def __eq__(self, other) -> bool:
      return (isinstance(other, BPEVocabulary)
              and other.tokenizer.source == self.tokenizer.source
              and other.vocab_size == self.vocab_size)

    def __hash__(self) -> int:
      return hash((self.tokenizer.source, self.vocab_size))

    def __str__(self) -> str:
      return f"BPEVocabulary({self.tokenizer.source})"

  return BPEVocabulary
