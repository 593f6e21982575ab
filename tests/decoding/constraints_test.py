"""Tests of `prompt_jax.decoding.constraints` (span trie in array form).

The automaton is checked against a brute-force set of span prefixes; the
searches of `prompt_jax.decoding.search` against exhaustive enumeration of every
allowed output on a toy recurrent model, and a random tiny T5 through
`generation.generate`. Real SQuAD rows with the full T5 vocabulary are
decoded in `tests/tasks/squad_test.py`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax.decoding import constraints as cd
from prompt_jax.decoding import search as decoding
from prompt_jax import testing
from prompt_jax.backbones.t5 import generation
from prompt_jax.backbones.t5 import network

EOS = 1
START = 0


def _allowed_ids(constraint, state, vocab: int, row: int = 0) -> list[int]:
  return np.nonzero(np.asarray(constraint.allowed(state, vocab))[row])[0] \
      .tolist()


def _segments(passage, mask) -> list[list[int]]:
  """Maximal runs of masked tokens; spans never cross a False position."""
  runs, run = [], []
  for tok, keep in zip(passage, mask):
    if keep:
      run.append(int(tok))
    elif run:
      runs.append(run)
      run = []
  return runs + ([run] if run else [])


def _brute_allowed(prefix, passage, mask, extras) -> set[int]:
  """Next tokens keeping prefix a span prefix / extra prefix, EOS if done."""
  spans = {tuple(seg[i:j]) for seg in _segments(passage, mask)
           for i in range(len(seg)) for j in range(i + 1, len(seg) + 1)}
  outputs = spans | {tuple(e) for e in extras}
  n = len(prefix)
  nxt = {o[n] for o in outputs if len(o) > n and list(o[:n]) == prefix}
  if tuple(prefix) in outputs or not nxt:
    nxt.add(EOS)
  return nxt


# The automaton ----------------------------------------------------------------


def test_worked_example_from_the_docstring():
  c = cd.SpanConstraint.create([[5, 6, 5, 7]], [[True] * 4], eos_id=EOS,
                               extra_sequences=[[9, 8]])
  update = jax.jit(c.update)
  state = jax.jit(c.init_state)()
  assert _allowed_ids(c, state, 12) == [5, 6, 7, 9]
  state = update(state, jnp.array([5]))
  assert _allowed_ids(c, state, 12) == [EOS, 6, 7]
  state = update(state, jnp.array([7]))
  assert _allowed_ids(c, state, 12) == [EOS]
  state = update(c.init_state(), jnp.array([9]))
  assert _allowed_ids(c, state, 12) == [8]  # "9" alone is not an answer.
  assert _allowed_ids(c, update(state, jnp.array([8])), 12) == [EOS]


def test_allowed_equals_brute_force_on_random_walks():
  rng = np.random.RandomState(0)
  vocab, b, tp = 9, 6, 12
  passage = rng.randint(2, vocab, (b, tp))
  mask = rng.rand(b, tp) < 0.8
  mask[0] = False  # No passage: only the extra sequences.
  extras = [[3, 4, 5], [7]]
  c = cd.SpanConstraint.create(passage, mask, eos_id=EOS,
                               extra_sequences=extras)
  allowed_fn = jax.jit(lambda s: c.allowed(s, vocab))
  update = jax.jit(c.update)
  for _ in range(20):
    state, prefixes = c.init_state(), [[] for _ in range(b)]
    for _ in range(5):
      allowed = np.asarray(allowed_fn(state))
      tokens = []
      for r in range(b):
        want = _brute_allowed(prefixes[r], passage[r], mask[r], extras)
        assert set(np.nonzero(allowed[r])[0]) == want, (r, prefixes[r])
        choices = sorted(want - {EOS}) or [EOS]
        tokens.append(rng.choice(choices))
        prefixes[r] = prefixes[r] + [tokens[-1]] if tokens[-1] != EOS else []
      state = update(state, jnp.asarray(tokens, jnp.int32))
      if any(t == EOS for t in tokens):
        break


def test_empty_passage_without_extras_allows_only_eos():
  c = cd.SpanConstraint.create([[4, 5]], [[False, False]], eos_id=EOS)
  assert _allowed_ids(c, c.init_state(), 8) == [EOS]


def test_create_rejects_bad_shapes_and_empty_extras():
  with pytest.raises(ValueError, match="must be equal"):
    cd.SpanConstraint.create([[1, 2]], [[True]], eos_id=EOS)
  with pytest.raises(ValueError, match="non-empty"):
    cd.SpanConstraint.create([[1, 2]], [[True, True]], eos_id=EOS,
                             extra_sequences=[[]])


@pytest.mark.parametrize("tokens,want", [
    ([3, 4, 10, 11, 12, EOS, 0], [0, 0, 1, 1, 1, 0, 0]),
    ([3, 4, 3, 4, 5, 0, 0], [0, 0, 1, 1, 1, 0, 0]),      # First marker wins.
    ([10, 11, EOS, 3, 4, 0, 0], [0, 0, 0, 0, 0, 0, 0]),  # After EOS: none.
    ([10, 3, 11, 4, 12, EOS, 0], [0, 0, 0, 0, 0, 0, 0]),  # Not contiguous.
    ([9, 3, 4, EOS, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]),    # Empty passage.
    ([9, 3, 4, 8, 7, 6, 5], [0, 0, 0, 1, 1, 1, 1]),      # Runs to the end.
])
def test_segment_after_marker(tokens, want):
  got = jax.jit(lambda t: cd.segment_after_marker(t, [3, 4], eos_id=EOS))(
      jnp.asarray([tokens]))
  assert np.asarray(got)[0].astype(int).tolist() == want


def test_is_span():
  assert cd.is_span([5, 6], [4, 5, 6, 7])
  assert not cd.is_span([5, 7], [4, 5, 6, 7])
  assert not cd.is_span([], [4, 5])


# Searches on a toy model ----------------------------------------------------


class Toy:
  """A random tanh RNN decoder: `step(tokens [B, 1], cache) -> logits`.

  `eos_bias` < 0 makes long outputs likely, so a beam whose constraint state
  is not carried with it (wrong parent) would soon leave the passage.
  """

  def __init__(self, vocab: int, batch: int, seed: int = 0, hidden: int = 8,
               eos_bias: float = -3.0):
    rng = np.random.RandomState(seed)
    self.bias = jnp.zeros(vocab).at[EOS].set(eos_bias)
    self.embed = jnp.asarray(rng.randn(vocab, hidden), jnp.float32)
    self.mix = jnp.asarray(rng.randn(hidden, hidden) * 0.5, jnp.float32)
    self.out = jnp.asarray(rng.randn(hidden, vocab) * 1.5, jnp.float32)
    self.h0 = jnp.asarray(rng.randn(batch, hidden), jnp.float32)

  def cache(self) -> dict:
    return {"h": self.h0, "n": jnp.zeros((), jnp.int32)}

  def step(self, tokens, cache):
    h = jnp.tanh(cache["h"] @ self.mix + self.embed[tokens[:, 0]])
    return h @ self.out + self.bias, {"h": h, "n": cache["n"] + 1}

  def log_prob(self, row: int, seq: list[int]) -> float:
    """Summed log-probs of seq (ending in EOS) for example `row`."""
    cache = {"h": self.h0[row:row + 1], "n": jnp.zeros((), jnp.int32)}
    total, prev = 0.0, START
    for tok in seq:
      logits, cache = self.step(jnp.array([[prev]]), cache)
      total += float(jax.nn.log_softmax(logits)[0, tok])
      prev = tok
    return total


def _until_eos(row) -> list[int]:
  row = list(np.asarray(row))
  return row[:row.index(EOS)] if EOS in row else row


def _valid(out, passage, mask, extras) -> bool:
  out = [int(t) for t in out]
  return (out in [list(e) for e in extras]
          or any(cd.is_span(out, seg) for seg in _segments(passage, mask)))


def _toy_problem(seed: int = 0, b: int = 4, tp: int = 6, vocab: int = 10):
  rng = np.random.RandomState(seed)
  passage = rng.randint(2, vocab, (b, tp))
  mask = np.ones((b, tp), bool)
  mask[1, 4:] = False
  extras = [[9, 9, 8]]
  return (Toy(vocab, b, seed), passage, mask, extras,
          cd.SpanConstraint.create(passage, mask, eos_id=EOS,
                                   extra_sequences=extras))


def _search(method: str, toy, constraint, length: int, b: int,
            all_beams: bool = False):
  common = dict(batch_size=b, max_decode_length=length, eos_id=EOS,
                constraint=constraint)
  if method == "greedy":
    return decoding.greedy_search(toy.step, toy.cache(), **common)
  if method == "sample":
    return decoding.temperature_sample(toy.step, toy.cache(),
                                       jax.random.key(3), temperature=2.0,
                                       **common)
  seqs, scores = decoding.beam_search(toy.step, toy.cache(), num_beams=16,
                                      alpha=0.0, **common)
  return (seqs, scores) if all_beams else (seqs[:, 0], scores[:, 0])


@pytest.mark.parametrize("method", ["greedy", "sample", "beam"])
def test_toy_searches_emit_only_spans(method):
  toy, passage, mask, extras, constraint = _toy_problem()
  tokens, scores = jax.jit(lambda c: _search(method, toy, c, 8, 4, True))(
      constraint)
  if method == "beam":  # Every finished hypothesis, not only the best.
    keep = np.isfinite(np.asarray(scores))
    assert keep.sum() > 4 * 8
    tokens = np.asarray(tokens)[keep]
    rows = np.nonzero(keep)[0]
  else:
    rows = range(4)
  lengths = [len(_until_eos(t)) for t in tokens]
  assert max(lengths) >= 3  # Long enough to test the carried state.
  for r, out in zip(rows, tokens):
    assert _valid(_until_eos(out), passage[r], mask[r], extras), r
  # Without the constraint the same model leaves the passage.
  free, _ = _search(method, toy, None, 8, 4)
  assert not all(_valid(_until_eos(free[r]), passage[r], mask[r], extras)
                 for r in range(4))


def _all_outputs(passage, mask, extras) -> list[list[int]]:
  spans = {tuple(seg[i:j]) for seg in _segments(passage, mask)
           for i in range(len(seg)) for j in range(i + 1, len(seg) + 1)}
  return [list(o) + [EOS] for o in sorted(spans | {tuple(e) for e in extras})]


def test_constrained_beam_search_finds_the_best_allowed_output():
  # K = 16 beams exceed the allowed prefixes per step, so the search is exact.
  toy, passage, mask, extras, constraint = _toy_problem(seed=1)
  seqs, scores = _search("beam", toy, constraint, 7, 4)
  for r in range(4):
    candidates = _all_outputs(passage[r], mask[r], extras)
    lps = [toy.log_prob(r, c) for c in candidates]
    best = candidates[int(np.argmax(lps))]
    assert list(np.asarray(seqs[r, :len(best)])) == best
    np.testing.assert_allclose(float(scores[r]), max(lps), rtol=1e-5)


def test_constrained_greedy_is_argmax_over_allowed_tokens():
  toy, passage, mask, extras, constraint = _toy_problem(seed=2)
  seqs, scores = _search("greedy", toy, constraint, 8, 4)
  for r in range(4):
    c = cd.SpanConstraint.create(passage[r:r + 1], mask[r:r + 1],
                                 eos_id=EOS, extra_sequences=extras)
    state, seq, prev = c.init_state(), [], START
    cache = {"h": toy.h0[r:r + 1], "n": jnp.zeros((), jnp.int32)}
    while len(seq) < 8 and (not seq or seq[-1] != EOS):
      logits, cache = toy.step(jnp.array([[prev]]), cache)
      allowed = np.asarray(c.allowed(state, logits.shape[-1]))[0]
      prev = int(np.argmax(np.where(allowed, np.asarray(logits)[0], -np.inf)))
      seq.append(prev)
      state = c.update(state, jnp.array([prev]))
    assert list(np.asarray(seqs[r, :len(seq)])) == seq
    # Scores are the model's own (not renormalised) log-probs.
    np.testing.assert_allclose(float(scores[r]), toy.log_prob(r, seq),
                               rtol=1e-5)


# Tiny T5 through generate ---------------------------------------------------


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_generate_with_t5_emits_only_spans(method):
  cfg = testing.tiny_t5_config()
  module = network.T5Transformer(cfg)
  rng = np.random.RandomState(0)
  enc = testing.padded_batch(rng, 4, 24, cfg.vocab_size,
                             lengths=[24, 20, 16, 12])
  params = module.init(jax.random.key(0), enc[:, :2], enc[:, :2])["params"]
  marker = [int(enc[0, 3]), int(enc[0, 4])]
  enc[1:, 3:5] = marker  # Every row: passage = tokens after positions 3-4.
  extras = [[7, 8, 9]]
  constraint = cd.span_constraint_after_marker(
      enc, marker_ids=marker, eos_id=cfg.eos_id, extra_sequences=extras)
  kwargs = dict(max_decode_length=6, method=method, num_beams=3,
                rng=jax.random.key(1), temperature=1.5)
  tokens, _ = generation.generate(module, params, enc, constraint=constraint,
                                  **kwargs)
  free, _ = generation.generate(module, params, enc, **kwargs)
  mask = np.asarray(constraint.passage_mask)
  for r, length in enumerate([24, 20, 16, 12]):
    assert mask[r].sum() == length - 5  # No EOS in padded_batch rows.
    assert _valid(_until_eos(tokens[r]), enc[r], mask[r], extras), r
  assert not all(_valid(_until_eos(free[r]), enc[r], mask[r], extras)
                 for r in range(4))
