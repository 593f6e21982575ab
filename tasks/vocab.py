"""The one vocabulary and the standard output features shared by all tasks.

Every task in `tasks/` tokenizes with the T5 SentencePiece model found under
the data root (`prompt_jax.data_root.data_root()`, overridable with
`$PROMPT_JAX_DATA_ROOT`) at `vocab/t5_spiece.model`, plus T5's 100 sentinels.
"""

import functools

import seqio

from prompt_jax import vocabularies


@functools.cache
def t5_vocabulary() -> seqio.SentencePieceVocabulary:
  """Returns the T5 `seqio.SentencePieceVocabulary` (extra_ids=100).

  Cached: one vocabulary object is shared by every task. The path is resolved
  on the first call, from the data root at that time.

  Raises:
    FileNotFoundError: (one line) if the data root or the model is missing.
  """
  return vocabularies.t5_vocabulary(extra_ids=vocabularies.T5_EXTRA_IDS)


def t5_output_features() -> dict[str, seqio.Feature]:
  """Returns the `inputs`/`targets` features (T5 vocab, EOS appended)."""
  vocab = t5_vocabulary()
  return {
      "inputs": seqio.Feature(vocabulary=vocab, add_eos=True),
      "targets": seqio.Feature(vocabulary=vocab, add_eos=True),
  }
