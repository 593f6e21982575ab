"""Span-constrained decoding: every output is a span of a passage.

`SpanConstraint` is a `decoding.LogitsConstraint`: a trie over all
contiguous token spans of each row's passage, held in array form. Its state
keeps, per row, a boolean mask over passage START positions whose span still
equals the generated prefix; the tokens allowed next are the passage tokens
right after those spans, EOS once the prefix is a complete answer (at least
one token), and the next token of any `extra_sequences` (e.g. a no-answer
target) still matching the prefix. Every step is a few [B, Tp] gathers and a
[B, V] scatter, so it runs inside the `lax.while_loop` of
`prompt_jax.decoding.search` and beam search gathers it like the cache.

Worked example (passage ids `[5, 6, 5, 7]`, extra `[9, 8]`, EOS 1):

  state = c.init_state()              # starts [T, T, T, T], extra [T]
  c.allowed(state, V)                 # {5, 6, 7, 9}; no EOS before a token
  state = c.update(state, [5])        # starts [T, F, T, F], extra [F]
  c.allowed(state, V)                 # {6, 7, EOS}: "5 6", "5 7" or "5"
  state = c.update(state, [7])        # starts [F, F, T, F]
  c.allowed(state, V)                 # {EOS}: the span "5 7" is complete

Tokenization caveat: the passage tokens are the context's ids as they
appear inside the encoder input. SentencePiece may split an answer
differently in isolation (how targets are tokenized in training) than
inside the passage (e.g. `$1,000,000`, `DTIME(f(n))`); the constraint
follows the passage's tokens, so every prediction detokenizes to a
substring of the detokenized passage (up to whitespace at its edges), but a
gold answer whose isolated tokenization is not a passage token span cannot
be produced token-for-token. On the SQuAD 2.0 slice, 669 of 705 first gold
answers (94.9%) are passage token spans.

`span_constraint_after_marker` builds the constraint from encoder inputs
like `question: ... context: <passage>` (the passage is what follows the
first occurrence of the marker ids, up to EOS), so a predictor needs no
extra features (seqio's `EncDecFeatureConverter` drops them).
"""

from collections.abc import Sequence

import flax.struct
import jax.numpy as jnp
import numpy as np

from prompt_jax import types

Array = types.Array


@flax.struct.dataclass
class SpanState:
  """Per-row decoding state of `SpanConstraint` (all leaves lead with B)."""
  passage: Array        # [B, Tp] int32 passage ids.
  passage_mask: Array   # [B, Tp] bool, where the passage is.
  starts: Array         # [B, Tp] bool: span from here matches the prefix.
  extra_alive: Array    # [B, E] bool: extra sequence matches the prefix.
  length: Array         # [B] int32 tokens generated so far.


@flax.struct.dataclass
class SpanConstraint:
  """Allows exactly the passage spans (and extra sequences), then EOS.

  Build with `SpanConstraint.create`. A pytree: pass it through `jax.jit`
  as an ordinary argument (`eos_id` is static).

  Attributes:
    passage_tokens: [B, Tp] int32.
    passage_mask: [B, Tp] bool; positions outside it never appear in a span
      (a span never crosses a False position).
    extra_tokens: [E, Le] int32, padded with 0; allowed in every row.
    extra_lengths: [E] int32 true lengths (>= 1).
    eos_id: end-of-sequence id (static).
  """
  passage_tokens: Array
  passage_mask: Array
  extra_tokens: Array
  extra_lengths: Array
  eos_id: int = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, passage_tokens: Array, passage_mask: Array, *, eos_id: int,
             extra_sequences: Sequence[Sequence[int]] = ()
             ) -> "SpanConstraint":
    """Builds the constraint.

    Args:
      passage_tokens: [B, Tp] ids.
      passage_mask: [B, Tp] bool, True on the passage.
      eos_id: end-of-sequence id.
      extra_sequences: token sequences allowed besides the spans, the same
        for every row (e.g. the ids of a no-answer target), each non-empty.

    Raises:
      ValueError: on mismatched shapes or an empty extra sequence.
    """
    passage_tokens = jnp.asarray(passage_tokens, jnp.int32)
    passage_mask = jnp.asarray(passage_mask, bool)
    if passage_tokens.ndim != 2 or passage_tokens.shape != passage_mask.shape:
      raise ValueError(
          f"SpanConstraint: passage_tokens {passage_tokens.shape} and"
          f" passage_mask {passage_mask.shape} must be equal [B, Tp] shapes")
    if any(len(seq) == 0 for seq in extra_sequences):
      raise ValueError("SpanConstraint: extra sequences must be non-empty")
    width = max([len(seq) for seq in extra_sequences], default=1)
    extra = np.zeros((len(extra_sequences), width), np.int32)
    for i, seq in enumerate(extra_sequences):
      extra[i, :len(seq)] = seq
    lengths = np.array([len(seq) for seq in extra_sequences], np.int32)
    return cls(passage_tokens, passage_mask, jnp.asarray(extra),
               jnp.asarray(lengths), eos_id)

  def init_state(self) -> SpanState:
    """Every passage position may start a span; every extra is alive."""
    b = self.passage_tokens.shape[0]
    return SpanState(
        passage=self.passage_tokens, passage_mask=self.passage_mask,
        starts=self.passage_mask,
        extra_alive=jnp.ones((b, self.extra_lengths.shape[0]), bool),
        length=jnp.zeros((b,), jnp.int32))

  def _next_passage(self, state: SpanState) -> tuple[Array, Array]:
    """(token [B, Tp], valid [B, Tp]): what extends the span from each start."""
    tp = state.passage.shape[1]
    nxt = jnp.arange(tp)[None, :] + state.length[:, None]  # [B, Tp]
    clipped = jnp.minimum(nxt, tp - 1)
    token = jnp.take_along_axis(state.passage, clipped, axis=1)
    valid = (state.starts & (nxt < tp)
             & jnp.take_along_axis(state.passage_mask, clipped, axis=1))
    return token, valid

  def _next_extra(self, state: SpanState) -> tuple[Array, Array]:
    """(token [B, E], valid [B, E]): what extends each extra sequence."""
    width = self.extra_tokens.shape[1]
    pos = jnp.minimum(state.length, width - 1)  # [B]
    token = self.extra_tokens.T[pos]  # [B, E]
    valid = state.extra_alive & (state.length[:, None]
                                 < self.extra_lengths[None, :])
    return token, valid

  def allowed(self, state: SpanState, vocab_size: int) -> Array:
    """[B, V] bool: the tokens that keep the output a span (or an extra).

    EOS is allowed once the prefix is a non-empty span or a complete extra
    sequence, and also whenever nothing else is (an empty passage, or a row
    past its EOS), so a row never has zero allowed tokens.
    """
    b = state.passage.shape[0]
    rows = jnp.arange(b)[:, None]
    allowed = jnp.zeros((b, vocab_size), bool)
    for token, valid in (self._next_passage(state), self._next_extra(state)):
      # Invalid entries point past V and are dropped.
      allowed = allowed.at[rows, jnp.where(valid, token, vocab_size)].set(
          True, mode="drop")
    span_done = (state.length > 0) & jnp.any(state.starts, axis=1)
    extra_done = jnp.any(state.extra_alive & (
        self.extra_lengths[None, :] == state.length[:, None]), axis=1)
    eos = span_done | extra_done | ~jnp.any(allowed, axis=1)
    return allowed.at[:, self.eos_id].set(allowed[:, self.eos_id] | eos)

  def update(self, state: SpanState, tokens: Array) -> SpanState:
    """Keeps the starts and extras whose next token is `tokens` [B]."""
    p_token, p_valid = self._next_passage(state)
    e_token, e_valid = self._next_extra(state)
    return state.replace(
        starts=p_valid & (p_token == tokens[:, None]),
        extra_alive=e_valid & (e_token == tokens[:, None]),
        length=state.length + 1)


def segment_after_marker(encoder_tokens: Array, marker_ids: Sequence[int], *,
                         eos_id: int, pad_id: int = 0) -> Array:
  """[B, Ti] bool mask of the tokens after the first marker, up to EOS/pad.

  Rows without the marker get an all-False mask. Jittable (the marker is
  static).

  Args:
    encoder_tokens: [B, Ti] ids.
    marker_ids: the marker's ids as tokenized inside the input (e.g.
      `vocab.encode("context:")` = `[2625, 10]` for T5's vocabulary).
    eos_id: end-of-sequence id (ends the segment).
    pad_id: padding id (ends the segment).
  """
  tokens = jnp.asarray(encoder_tokens)
  ti = tokens.shape[1]
  m = len(marker_ids)
  if m == 0:
    raise ValueError("segment_after_marker: empty marker")
  padded = jnp.pad(tokens, ((0, 0), (0, m)), constant_values=-1)
  match = jnp.ones(tokens.shape, bool)
  for i, marker_id in enumerate(marker_ids):
    match &= padded[:, i:i + ti] == marker_id
  start = jnp.argmax(match, axis=1) + m  # [B]
  pos = jnp.arange(ti)[None, :]
  after = (pos >= start[:, None]) & jnp.any(match, axis=1)[:, None]
  is_end = (tokens == eos_id) | (tokens == pad_id)
  ended = jnp.cumsum(after & is_end, axis=1) > 0
  return after & ~ended


def span_constraint_after_marker(
    encoder_tokens: Array, *, marker_ids: Sequence[int], eos_id: int,
    pad_id: int = 0, extra_sequences: Sequence[Sequence[int]] = ()
) -> SpanConstraint:
  """A `SpanConstraint` over the segment after `marker_ids` of each input.

  The passage is the encoder input itself, masked to that segment, so the
  spans are exactly the tokens the encoder sees (including truncation).
  Bind the keyword arguments with `functools.partial` to get a
  `Predictor` `constraint_fn`.

  Args:
    encoder_tokens: [B, Ti] ids.
    marker_ids: ids that precede the passage (first occurrence wins).
    eos_id: end-of-sequence id.
    pad_id: padding id.
    extra_sequences: sequences allowed besides spans (no-answer target).
  """
  mask = segment_after_marker(encoder_tokens, marker_ids, eos_id=eos_id,
                              pad_id=pad_id)
  return SpanConstraint.create(encoder_tokens, mask, eos_id=eos_id,
                               extra_sequences=extra_sequences)


def is_span(tokens: Sequence[int], passage: Sequence[int]) -> bool:
  """Whether tokens is a non-empty contiguous subsequence of passage."""
  tokens, passage = list(tokens), list(passage)
  n = len(tokens)
  return n > 0 and any(passage[i:i + n] == tokens
                       for i in range(len(passage) - n + 1))
