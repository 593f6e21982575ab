"""Tests of the model-agnostic searches in `prompt_jax.decoding.search`.

A toy recurrent "decoder" (state h [B, H] carried in the cache) stands in for
a model: its scores depend on the whole prefix, its teacher-forced
log-likelihood is easy to recompute, and with V = 6 and L = 3 every sequence
can be enumerated, so beam search can be checked against exhaustive search.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax.decoding import search as decoding

EOS = 1
START = 0


class Toy:
  """`tokens_to_logits` of a random tanh RNN; logits get `eos_bias` on EOS."""

  def __init__(self, seed: int = 0, vocab: int = 6, hidden: int = 8,
               eos_bias: float = 0.0, batch: int = 2):
    rng = np.random.RandomState(seed)
    self.vocab = vocab
    self.embed = jnp.asarray(rng.randn(vocab, hidden), jnp.float32)
    self.mix = jnp.asarray(rng.randn(hidden, hidden) * 0.5, jnp.float32)
    self.out = jnp.asarray(rng.randn(hidden, vocab) * 1.5, jnp.float32)
    self.bias = jnp.zeros(vocab).at[EOS].set(eos_bias) if EOS < vocab else 0.
    self.h0 = jnp.asarray(rng.randn(batch, hidden), jnp.float32)

  def cache(self) -> dict:
    # `n` is a scalar step counter: searches must carry it ungathered.
    return {"h": self.h0, "n": jnp.zeros((), jnp.int32)}

  def step(self, tokens, cache):
    h = jnp.tanh(cache["h"] @ self.mix + self.embed[tokens[:, 0]])
    return h @ self.out + self.bias, {"h": h, "n": cache["n"] + 1}

  def scores(self, example: int, seqs: np.ndarray, alpha: float = 0.0,
             eos_id: int = EOS) -> np.ndarray:
    """Teacher-forced summed log-probs up to EOS / brevity penalty, [S]."""
    seqs = np.asarray(seqs)
    n, length = seqs.shape
    cache = {"h": jnp.repeat(self.h0[example:example + 1], n, 0),
             "n": jnp.zeros((), jnp.int32)}
    prev = np.full((n, 1), START)
    total, alive, lengths = np.zeros(n), np.ones(n, bool), np.zeros(n)
    for t in range(length):
      logits, cache = self.step(jnp.asarray(prev), cache)
      lp = np.asarray(jax.nn.log_softmax(logits), np.float64)
      total += np.where(alive, lp[np.arange(n), seqs[:, t]], 0.0)
      lengths += alive
      alive &= seqs[:, t] != eos_id
      prev = seqs[:, t:t + 1]
    return total / ((5.0 + lengths) / 6.0) ** alpha


def _truncate(seq, length: int) -> tuple:
  """Sequence as the searches return it: pad (0) after the first EOS."""
  seq = list(seq)
  if EOS in seq:
    seq = seq[:seq.index(EOS) + 1]
  return tuple(seq + [0] * (length - len(seq)))


def _length(seq) -> int:
  seq = list(seq)
  return seq.index(EOS) + 1 if EOS in seq else len(seq)


def _exhaustive(toy: Toy, example: int, length: int, alpha: float):
  """All distinct outputs of length <= L, sorted by score (best first)."""
  seqs = sorted({_truncate(s, length)
                 for s in itertools.product(range(toy.vocab), repeat=length)})
  scores = toy.scores(example, np.array(seqs), alpha)
  order = np.argsort(-scores, kind="stable")
  return np.array(seqs)[order], scores[order]


def _jit(fn, **static):
  return jax.jit(functools.partial(fn, **static))


def _greedy(toy: Toy, length: int, eos_id: int = EOS):
  return _jit(decoding.greedy_search, tokens_to_logits=toy.step,
              batch_size=toy.h0.shape[0], max_decode_length=length,
              eos_id=eos_id)(cache=toy.cache())


def _beam(toy: Toy, length: int, beams: int, alpha: float, eos_id: int = EOS):
  return _jit(decoding.beam_search, tokens_to_logits=toy.step,
              batch_size=toy.h0.shape[0], max_decode_length=length,
              eos_id=eos_id, num_beams=beams)(cache=toy.cache(), alpha=alpha)


def _sample(toy: Toy, length: int, rng, **kwargs):
  kwargs.setdefault("temperature", 1.0)
  temperature = kwargs.pop("temperature")
  return _jit(decoding.temperature_sample, tokens_to_logits=toy.step,
              batch_size=toy.h0.shape[0], max_decode_length=length,
              eos_id=EOS, **kwargs)(cache=toy.cache(), rng=rng,
                                    temperature=temperature)


def _reference_greedy(toy: Toy, example: int, length: int) -> list:
  """Step-by-step argmax in Python, stopping at EOS."""
  cache = {"h": toy.h0[example:example + 1], "n": jnp.zeros((), jnp.int32)}
  prev, out = START, []
  while len(out) < length and EOS not in out:
    logits, cache = toy.step(jnp.array([[prev]]), cache)
    prev = int(np.argmax(logits[0]))
    out.append(prev)
  return out + [0] * (length - len(out))


# Greedy ----------------------------------------------------------------------


def test_greedy_matches_reference_and_pads_after_eos():
  toy = Toy(seed=3, eos_bias=1.5, batch=4)
  length = 6
  tokens, scores = _greedy(toy, length)
  tokens = np.asarray(tokens)
  ended_early = [EOS in row[:-1] for row in tokens]
  assert any(ended_early) and not all(ended_early), tokens
  for b in range(4):
    assert tokens[b].tolist() == _reference_greedy(toy, b, length)
    np.testing.assert_allclose(scores[b], toy.scores(b, tokens[b:b + 1])[0],
                               atol=1e-5)


def _count_steps(fn) -> int:
  calls = []

  def counted(tokens, cache):
    jax.debug.callback(lambda: calls.append(1))
    return fn(tokens, cache)
  return counted, calls


def test_searches_stop_when_all_sequences_end():
  toy = Toy(seed=0, eos_bias=50.0)
  step, calls = _count_steps(toy.step)
  tokens, _ = jax.jit(functools.partial(
      decoding.greedy_search, step, batch_size=2, max_decode_length=7,
      eos_id=EOS))(toy.cache())
  jax.effects_barrier()
  assert len(calls) == 1 and (np.asarray(tokens)[:, 0] == EOS).all()
  calls.clear()
  # Beam: step 0 finishes [EOS]; step 1 finishes [x, EOS] (~ -50), which
  # fills K = 2 slots with scores no live beam (~ -100) can reach.
  jax.jit(functools.partial(
      decoding.beam_search, step, batch_size=2, max_decode_length=7,
      eos_id=EOS, num_beams=2, alpha=0.0))(toy.cache())
  jax.effects_barrier()
  assert len(calls) == 2


# Beam search -----------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_with_one_beam_equals_greedy_when_eos_is_unreachable(alpha):
  toy = Toy(seed=1, vocab=7, batch=3)
  greedy, greedy_scores = _greedy(toy, 5, eos_id=99)
  beam, beam_scores = _beam(toy, 5, 1, alpha, eos_id=99)
  np.testing.assert_array_equal(beam[:, 0], greedy)
  np.testing.assert_allclose(
      beam_scores[:, 0],
      greedy_scores / decoding.brevity_penalty(alpha, 5), atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 3.0])
def test_beam_search_with_enough_beams_is_exhaustive_search(alpha):
  """V = 6, L = 3: 36 beams keep every prefix, so the top 36 are exact."""
  toy = Toy(seed=2, eos_bias=1.0)
  tokens, scores = _beam(toy, 3, 36, alpha)
  lengths = set()
  for b in range(2):
    best_seqs, best_scores = _exhaustive(toy, b, 3, alpha)
    np.testing.assert_array_equal(tokens[b, 0], best_seqs[0])
    np.testing.assert_allclose(scores[b], best_scores[:36], atol=1e-5)
    np.testing.assert_allclose(scores[b], toy.scores(b, tokens[b], alpha),
                               atol=1e-5)
    lengths.add(_length(best_seqs[0]))
  if alpha == 0.0:  # The penalty matters: short wins at 0, long at 3.
    assert lengths != {3}
  if alpha == 3.0:
    assert lengths == {3}


def test_beam_scores_are_teacher_forced_scores_with_few_beams():
  toy = Toy(seed=4, vocab=9, eos_bias=0.5, batch=3)
  alpha = 0.6
  tokens, scores = _beam(toy, 5, 3, alpha)
  scores = np.asarray(scores)
  assert (np.diff(scores, axis=1) <= 0).all()  # Best first.
  for b in range(3):
    np.testing.assert_allclose(scores[b], toy.scores(b, tokens[b], alpha),
                               atol=1e-5)
    assert len({tuple(s) for s in np.asarray(tokens[b])}) == 3
    # Beam search cannot beat the greedy sequence by being worse than it.
    greedy = np.asarray(_greedy(toy, 5)[0])[b:b + 1]
    assert scores[b, 0] >= toy.scores(b, greedy, alpha)[0] - 1e-5


def test_expand_and_gather_beams():
  tree = {"x": jnp.arange(6).reshape(2, 3), "n": jnp.array(7)}
  flat = decoding.expand_beams(tree, 2)
  np.testing.assert_array_equal(flat["x"][:, 0], [0, 0, 3, 3])
  assert int(flat["n"]) == 7
  flat = {"x": jnp.arange(4) * 10, "n": jnp.array(7)}
  out = decoding.gather_beams(flat, jnp.array([[1, 1], [1, 0]]))
  np.testing.assert_array_equal(out["x"], [10, 10, 30, 20])
  assert int(out["n"]) == 7


def test_brevity_penalty():
  np.testing.assert_allclose(decoding.brevity_penalty(0.6, 7),
                             (12 / 6) ** 0.6, rtol=1e-6)
  assert float(decoding.brevity_penalty(0.0, 9)) == 1.0


# Filters and sampling ---------------------------------------------------------

_PROBS = np.array([0.15, 0.5, 0.05, 0.3])  # Sorted: 0.5, 0.3, 0.15, 0.05.


@pytest.mark.parametrize("p,kept", [
    (0.3, {1}), (0.6, {1, 3}), (0.79, {1, 3}), (0.81, {0, 1, 3}),
    (0.9, {0, 1, 3}), (0.96, {0, 1, 2, 3}), (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_smallest_set_reaching_p(p, kept):
  logits = jnp.log(jnp.asarray(np.stack([_PROBS, _PROBS[::-1]])))
  out = np.asarray(jax.jit(decoding.top_p_filter)(logits, p))
  assert set(np.flatnonzero(np.isfinite(out[0]))) == kept
  assert set(3 - np.flatnonzero(np.isfinite(out[1]))) == kept
  np.testing.assert_allclose(out[0][list(kept)], np.log(_PROBS[list(kept)]),
                             rtol=1e-6)


def test_top_k_keeps_k_largest():
  logits = jnp.array([[0.1, 3.0, -1.0, 2.0], [5.0, 4.0, 3.0, 2.0]])
  out = np.asarray(decoding.top_k_filter(logits, 2))
  np.testing.assert_array_equal(np.isfinite(out),
                                [[0, 1, 0, 1], [1, 1, 0, 0]])
  np.testing.assert_array_equal(decoding.top_k_filter(logits, 0), logits)


def test_sample_token_frequencies_follow_filtered_distribution():
  n = 20000
  logits = jnp.log(jnp.broadcast_to(jnp.asarray(_PROBS, jnp.float32), (n, 4)))
  draw = jax.jit(functools.partial(decoding.sample_token, temperature=1.0,
                                   top_p=0.79))
  freq = np.bincount(np.asarray(draw(logits, jax.random.key(0))), minlength=4)
  np.testing.assert_allclose(freq / n, [0, 0.5 / 0.8, 0, 0.3 / 0.8],
                             atol=0.015)
  # Top-p applies to the top-k renormalised: 0.5/0.95 + 0.3/0.95 >= 0.7.
  draw = jax.jit(functools.partial(decoding.sample_token, temperature=1.0,
                                   top_k=3, top_p=0.7))
  freq = np.bincount(np.asarray(draw(logits, jax.random.key(2))), minlength=4)
  np.testing.assert_allclose(freq / n, [0, 0.5 / 0.8, 0, 0.3 / 0.8],
                             atol=0.015)
  draw = jax.jit(functools.partial(decoding.sample_token, temperature=2.0))
  freq = np.bincount(np.asarray(draw(logits, jax.random.key(1))), minlength=4)
  tempered = np.sqrt(_PROBS) / np.sqrt(_PROBS).sum()
  np.testing.assert_allclose(freq / n, tempered, atol=0.015)


@pytest.mark.parametrize("kwargs", [
    dict(top_k=1), dict(temperature=1e-3), dict(temperature=0.0),
    dict(top_p=1e-6)], ids=["top_k_1", "temp_1e-3", "temp_0", "top_p_tiny"])
def test_sampling_degenerates_to_greedy(kwargs):
  toy = Toy(seed=5, vocab=11, eos_bias=1.0, batch=4)
  greedy, greedy_scores = _greedy(toy, 6)
  tokens, scores = _sample(toy, 6, jax.random.key(0), **kwargs)
  np.testing.assert_array_equal(tokens, greedy)
  np.testing.assert_allclose(scores, greedy_scores, atol=1e-5)


def test_sampling_is_a_function_of_the_rng():
  toy = Toy(seed=6, vocab=11, batch=4)
  first, scores = _sample(toy, 8, jax.random.key(0), top_k=5, top_p=0.9)
  again, _ = _sample(toy, 8, jax.random.key(0), top_k=5, top_p=0.9)
  other, _ = _sample(toy, 8, jax.random.key(1), top_k=5, top_p=0.9)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  greedy, _ = _greedy(toy, 8)
  assert not np.array_equal(first, greedy)
  for b in range(4):  # Scores are untempered model log-probs.
    np.testing.assert_allclose(scores[b], toy.scores(b, first[b:b + 1])[0],
                               atol=1e-5)
