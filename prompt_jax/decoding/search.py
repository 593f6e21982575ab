"""Autoregressive search over a cached one-step decoder: greedy, sampling, beam.

Every search here is model-agnostic and fully jittable: it drives a
`TokensToLogits` function with `jax.lax.while_loop` (one iteration per token,
no Python loop) and stops early once every sequence has finished. Model glue
(encode once, create the key/value cache, close over params) lives with the
model, e.g. `prompt_jax.backbones.t5.generation`.

Conventions shared by all searches:

* The first step feeds `start_id` (T5: the pad id 0); step i feeds the token
  chosen at step i - 1.
* Returned sequences hold only generated tokens, [.., L]: they include the EOS
  token as emitted and hold `pad_id` after it (and after `L` steps without
  EOS, the sequence is simply truncated). Hugging Face's `generate` output
  additionally starts with the decoder start token.
* Cache contract: every non-scalar leaf of the cache has the batch as its
  leading axis (beam search repeats and gathers along it); scalar leaves (step
  counters) are carried as they are.
* Scores are log-probabilities under the model's own distribution (softmax of
  the raw logits, no temperature or filtering), summed over the generated
  tokens up to and including EOS. Beam search divides that sum by the T5X
  brevity penalty `((5 + length) / 6) ** alpha`.
* Optional `constraint` (a `LogitsConstraint`, e.g.
  `prompt_jax.decoding.constraints.SpanConstraint`): tokens it does not allow
  get -inf before the choice (greedy, sampling: renormalised over the allowed
  set) or before ranking (beam search). Scores stay the model's own,
  unrenormalised log-probs, so a constrained beam search looks for the most
  likely allowed sequence. Its state is carried in the loop and, in beam
  search, expanded and gathered by beam like the cache.
"""

import functools
from typing import Callable, Protocol

import flax.struct
import jax
import jax.numpy as jnp

from prompt_jax import types

Array = types.Array
PRNGKey = types.PRNGKey
PyTree = types.PyTree

# (tokens [B, 1], cache) -> (logits [B, V], new_cache).
TokensToLogits = Callable[[Array, PyTree], tuple[Array, PyTree]]

# Temperatures at or below this pick the argmax: dividing by ~0 overflows.
MIN_TEMPERATURE = 1e-4


class LogitsConstraint(Protocol):
  """A jittable automaton deciding which tokens may come next, per row.

  State leaves lead with the batch (the cache contract), so beam search can
  expand and gather them; the constraint itself must be a pytree (or
  hashable) to pass through `jax.jit`.
  """

  def init_state(self) -> PyTree:
    """State before the first token, leaves [B, ...]."""

  def allowed(self, state: PyTree, vocab_size: int) -> Array:
    """[B', V] bool: tokens allowed next (at least one per row)."""

  def update(self, state: PyTree, tokens: Array) -> PyTree:
    """State after appending tokens [B'] to each row."""


def _mask_disallowed(values: Array, constraint: LogitsConstraint | None,
                     state: PyTree) -> Array:
  """values [B, V] with -inf where the constraint forbids the token."""
  if constraint is None:
    return values
  return jnp.where(constraint.allowed(state, values.shape[-1]), values,
                   -jnp.inf)


def brevity_penalty(alpha: float | Array, length: int | Array) -> Array:
  """T5X/GNMT length normalisation `((5 + length) / 6) ** alpha`."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


# Logit filters ---------------------------------------------------------------


def top_k_filter(logits: Array, k: int) -> Array:
  """Keeps the k largest logits of each row ([.., V]); others become -inf.

  Ties with the k-th value are kept. `k <= 0` or `k >= V` is a no-op.
  """
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: Array, p: float | Array) -> Array:
  """Nucleus filter: keeps the smallest set of tokens with total prob >= p.

  Tokens are taken in order of decreasing probability until the cumulative
  probability reaches p; the most likely token is always kept.

  Args:
    logits: [.., V].
    p: threshold in (0, 1]; 1 keeps everything.

  Returns:
    [.., V] logits with the dropped tokens set to -inf.
  """
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  return jnp.where(logits < _nucleus_cutoff(sorted_logits, p), -jnp.inf,
                   logits)


def _nucleus_cutoff(sorted_logits: Array, p: float | Array) -> Array:
  """Smallest logit of the nucleus, [.., 1], from logits sorted descending."""
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep = (mass_before < p).at[..., 0].set(True)
  return jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1,
                 keepdims=True)


def sample_token(logits: Array, rng: PRNGKey, *, temperature: float | Array,
                 top_k: int = 0, top_p: float | None = None) -> Array:
  """Draws one token per row of logits [B, V] -> [B] int32.

  Temperature is applied first, then top-k, then top-p. Temperatures at or
  below `MIN_TEMPERATURE` return the argmax.
  """
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled = logits / jnp.maximum(temperature, MIN_TEMPERATURE)
  use_top_p = top_p is not None and not (isinstance(top_p, (int, float))
                                         and top_p >= 1.0)
  if 0 < top_k < logits.shape[-1]:
    # The k largest come sorted, so the nucleus needs no full-vocab sort.
    top_values = jax.lax.top_k(scaled, top_k)[0]
    cutoff = top_values[..., -1:]
    if use_top_p:
      cutoff = jnp.maximum(cutoff, _nucleus_cutoff(top_values, top_p))
    scaled = jnp.where(scaled < cutoff, -jnp.inf, scaled)
  elif use_top_p:
    scaled = top_p_filter(scaled, top_p)
  sampled = jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)
  return jnp.where(temperature <= MIN_TEMPERATURE, greedy, sampled)


# Greedy and sampling ---------------------------------------------------------


@flax.struct.dataclass
class _SampleState:
  step: Array     # [] tokens generated so far.
  last: Array     # [B] token fed at the next step.
  seqs: Array     # [B, L] generated tokens, pad after EOS.
  done: Array     # [B] whether EOS was emitted.
  scores: Array   # [B] summed model log-probs of the generated tokens.
  cache: PyTree
  constraint_state: PyTree = None  # None without a constraint.


def _sample_loop(tokens_to_logits: TokensToLogits, cache: PyTree,
                 batch_size: int, max_decode_length: int,
                 choose_fn: Callable[[Array, Array], Array], *, eos_id: int,
                 start_id: int, pad_id: int,
                 constraint: LogitsConstraint | None = None
                 ) -> tuple[Array, Array]:
  """Shared loop of greedy and sampling; `choose_fn(logits, step) -> [B]`."""
  init = _SampleState(
      step=jnp.zeros((), jnp.int32),
      last=jnp.full((batch_size,), start_id, jnp.int32),
      seqs=jnp.full((batch_size, max_decode_length), pad_id, jnp.int32),
      done=jnp.zeros((batch_size,), bool),
      scores=jnp.zeros((batch_size,), jnp.float32),
      cache=cache,
      constraint_state=(None if constraint is None
                        else constraint.init_state()))

  def cond(s: _SampleState) -> Array:
    return (s.step < max_decode_length) & ~jnp.all(s.done)

  def body(s: _SampleState) -> _SampleState:
    logits, cache = tokens_to_logits(s.last[:, None], s.cache)
    logits = logits.astype(jnp.float32)
    allowed_logits = _mask_disallowed(logits, constraint, s.constraint_state)
    token = jnp.where(s.done, pad_id, choose_fn(allowed_logits, s.step))
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    token_lp = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
    return _SampleState(
        step=s.step + 1, last=token,
        seqs=s.seqs.at[:, s.step].set(token),
        done=s.done | (token == eos_id),
        scores=s.scores + jnp.where(s.done, 0.0, token_lp),
        cache=cache,
        constraint_state=(None if constraint is None else
                          constraint.update(s.constraint_state, token)))

  final = jax.lax.while_loop(cond, body, init)
  return final.seqs, final.scores


def greedy_search(tokens_to_logits: TokensToLogits, cache: PyTree, *,
                  batch_size: int, max_decode_length: int, eos_id: int,
                  start_id: int = 0, pad_id: int = 0,
                  constraint: LogitsConstraint | None = None
                  ) -> tuple[Array, Array]:
  """Picks the argmax token at each step.

  Args:
    tokens_to_logits: one-step decoder `(tokens [B, 1], cache) -> (logits
      [B, V], cache)`.
    cache: initial decoder cache for B sequences.
    batch_size: B.
    max_decode_length: L, the most tokens generated.
    eos_id: end-of-sequence id.
    start_id: token fed at the first step.
    pad_id: token written after EOS.
    constraint: optional; picks the argmax over the allowed tokens.

  Returns:
    (tokens [B, L] int32, scores [B] summed log-probs).
  """
  choose = lambda logits, step: jnp.argmax(logits, -1).astype(jnp.int32)
  return _sample_loop(tokens_to_logits, cache, batch_size, max_decode_length,
                      choose, eos_id=eos_id, start_id=start_id, pad_id=pad_id,
                      constraint=constraint)


def temperature_sample(tokens_to_logits: TokensToLogits, cache: PyTree,
                       rng: PRNGKey, *, batch_size: int,
                       max_decode_length: int, eos_id: int,
                       temperature: float | Array = 1.0, top_k: int = 0,
                       top_p: float | None = None, start_id: int = 0,
                       pad_id: int = 0,
                       constraint: LogitsConstraint | None = None
                       ) -> tuple[Array, Array]:
  """Samples each token; the key of step i is `fold_in(rng, i)`.

  Args:
    tokens_to_logits: one-step decoder, see `greedy_search`.
    cache: initial decoder cache for B sequences.
    rng: base PRNG key.
    batch_size: B.
    max_decode_length: L.
    eos_id: end-of-sequence id.
    temperature: softmax temperature (may be traced); <= `MIN_TEMPERATURE`
      means argmax.
    top_k: keep only the k most likely tokens (0: off). Static.
    top_p: nucleus threshold (None or 1.0: off).
    start_id: token fed at the first step.
    pad_id: token written after EOS.
    constraint: optional; samples among the allowed tokens only.

  Returns:
    (tokens [B, L] int32, scores [B] summed untempered model log-probs).
  """
  def choose(logits: Array, step: Array) -> Array:
    return sample_token(logits, jax.random.fold_in(rng, step),
                        temperature=temperature, top_k=top_k, top_p=top_p)
  return _sample_loop(tokens_to_logits, cache, batch_size, max_decode_length,
                      choose, eos_id=eos_id, start_id=start_id, pad_id=pad_id,
                      constraint=constraint)


# Beam search -----------------------------------------------------------------


def _map_batched(fn: Callable[[Array], Array], tree: PyTree) -> PyTree:
  """Applies fn to every non-scalar leaf (scalars are step counters)."""
  return jax.tree.map(lambda x: x if jnp.ndim(x) == 0 else fn(x), tree)


def expand_beams(tree: PyTree, num_beams: int) -> PyTree:
  """[B, ...] -> [B * K, ...], the K copies of an example adjacent."""
  return _map_batched(lambda x: jnp.repeat(x, num_beams, axis=0), tree)


def gather_beams(tree: PyTree, beam_indices: Array) -> PyTree:
  """Selects beams per example in a flat tree: [B * K, ...] -> [B * K', ...].

  Args:
    tree: leaves [B * K, ...] (scalars pass through).
    beam_indices: [B, K'] indices into the K beams of each example.
  """
  b, k_new = beam_indices.shape

  def gather(x: Array) -> Array:
    x = x.reshape((b, -1) + x.shape[1:])  # [B * K, ...] -> [B, K, ...]
    idx = beam_indices.reshape((b, k_new) + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1).reshape((b * k_new,)
                                                       + x.shape[2:])
  return _map_batched(gather, tree)


@flax.struct.dataclass
class _BeamState:
  step: Array           # [] tokens generated so far.
  alive_seqs: Array     # [B, K, L] unfinished hypotheses.
  alive_lp: Array       # [B, K] their summed log-probs (-inf: empty slot).
  fin_seqs: Array       # [B, K, L] finished hypotheses, best first.
  fin_scores: Array     # [B, K] their length-penalised scores (-inf: empty).
  cache: PyTree         # leaves [B * K, ...], aligned with alive_seqs.
  constraint_state: PyTree = None  # Like cache; None without a constraint.


def _beam_init(cache: PyTree, batch_size: int, num_beams: int,
               max_decode_length: int, pad_id: int,
               constraint: LogitsConstraint | None = None) -> _BeamState:
  # Only beam 0 is live at first, so the K copies do not repeat hypotheses.
  alive_lp = jnp.full((batch_size, num_beams), -jnp.inf).at[:, 0].set(0.0)
  seqs = jnp.full((batch_size, num_beams, max_decode_length), pad_id,
                  jnp.int32)
  return _BeamState(
      step=jnp.zeros((), jnp.int32), alive_seqs=seqs, alive_lp=alive_lp,
      fin_seqs=seqs, fin_scores=jnp.full((batch_size, num_beams), -jnp.inf),
      cache=expand_beams(cache, num_beams),
      constraint_state=(None if constraint is None else
                        expand_beams(constraint.init_state(), num_beams)))


def _beam_cond(s: _BeamState, alpha: float | Array,
               max_decode_length: int) -> Array:
  """Continues unless at L, or no live beam can still enter the top K."""
  # Log-probs only fall, so an alive beam's best final score uses the largest
  # penalty over the lengths it can still reach (monotone in length).
  max_bp = jnp.maximum(brevity_penalty(alpha, s.step + 1),
                       brevity_penalty(alpha, max_decode_length))
  best_alive = jnp.max(s.alive_lp, axis=1) / max_bp
  worst_finished = jnp.min(s.fin_scores, axis=1)
  settled = jnp.all(worst_finished > best_alive)
  return (s.step < max_decode_length) & ~settled


def _top(values: Array, k: int, *arrays: Array) -> tuple[Array, ...]:
  """Top-k of values [B, M] along axis 1, with arrays [B, M, ...] gathered."""
  top_values, idx = jax.lax.top_k(values, k)
  picked = [jnp.take_along_axis(a, idx.reshape(idx.shape + (1,) * (a.ndim - 2)),
                                axis=1) for a in arrays]
  return (top_values, idx, *picked)


def _beam_body(s: _BeamState, tokens_to_logits: TokensToLogits,
               alpha: float | Array, eos_id: int, start_id: int,
               max_decode_length: int,
               constraint: LogitsConstraint | None = None) -> _BeamState:
  """Extends every live beam by every token and keeps the best K of each."""
  b, k, length = s.alive_seqs.shape
  prev = jnp.where(s.step == 0, start_id,
                   s.alive_seqs[:, :, jnp.maximum(s.step - 1, 0)])
  logits, cache = tokens_to_logits(prev.reshape(b * k, 1), s.cache)
  log_probs = _mask_disallowed(
      jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), constraint,
      s.constraint_state)
  v = log_probs.shape[-1]
  # [B * K, V] -> [B, K * V] candidate totals.
  totals = (log_probs.reshape(b, k, v) + s.alive_lp[:, :, None]).reshape(b, -1)
  # 2K candidates leave K live ones even if K of them just emitted EOS.
  cand_lp, cand_idx = jax.lax.top_k(totals, min(2 * k, k * v))
  cand_beam, cand_tok = cand_idx // v, (cand_idx % v).astype(jnp.int32)
  cand_seqs = jnp.take_along_axis(s.alive_seqs, cand_beam[:, :, None], axis=1)
  cand_seqs = cand_seqs.at[:, :, s.step].set(cand_tok)
  is_eos = cand_tok == eos_id
  # At the last step every candidate ends (truncated without EOS).
  ends = is_eos | (s.step == max_decode_length - 1)
  cand_scores = jnp.where(ends, cand_lp / brevity_penalty(alpha, s.step + 1),
                          -jnp.inf)
  fin_scores, _, fin_seqs = _top(
      jnp.concatenate([s.fin_scores, cand_scores], axis=1), k,
      jnp.concatenate([s.fin_seqs, cand_seqs], axis=1))
  alive_lp, _, alive_seqs, alive_beam, alive_tok = _top(
      jnp.where(is_eos, -jnp.inf, cand_lp), k, cand_seqs, cand_beam, cand_tok)
  constraint_state = None
  if constraint is not None:
    constraint_state = constraint.update(
        gather_beams(s.constraint_state, alive_beam), alive_tok.reshape(-1))
  return _BeamState(step=s.step + 1, alive_seqs=alive_seqs, alive_lp=alive_lp,
                    fin_seqs=fin_seqs, fin_scores=fin_scores,
                    cache=gather_beams(cache, alive_beam),
                    constraint_state=constraint_state)


def beam_search(tokens_to_logits: TokensToLogits, cache: PyTree, *,
                batch_size: int, max_decode_length: int, eos_id: int,
                num_beams: int = 4, alpha: float | Array = 0.6,
                start_id: int = 0, pad_id: int = 0,
                constraint: LogitsConstraint | None = None
                ) -> tuple[Array, Array]:
  """Beam search with finished and alive hypothesis sets (as in T5X).

  Each step extends the K live beams by every token, takes the best 2K
  candidates by summed log-prob, moves those ending in EOS (or reaching L
  tokens) into the finished set scored by log-prob / brevity penalty, and
  keeps the best K others alive. The cache is expanded to B * K rows once and
  gathered by the surviving beams' parents every step. The loop stops at L
  tokens or when no live beam can still beat the K-th finished score.

  NOTE: unlike Hugging Face (which runs greedy search for one beam), K = 1
  keeps a finished set too, so a runner-up ending in EOS can win over the
  greedy continuation; without EOS among the top-2 candidates K = 1 is greedy.

  Args:
    tokens_to_logits: one-step decoder, see `greedy_search`; called with
      B * K rows, the K beams of an example adjacent.
    cache: initial decoder cache for B sequences (expanded here).
    batch_size: B.
    max_decode_length: L.
    eos_id: end-of-sequence id.
    num_beams: K. Static.
    alpha: brevity penalty exponent (0: plain log-likelihood).
    start_id: token fed at the first step.
    pad_id: token written after EOS.
    constraint: optional; only allowed tokens extend a beam (its state is
      built for B rows and expanded to B * K here).

  Returns:
    (tokens [B, K, L] int32, scores [B, K]), best first. Slots that hold no
    hypothesis (K larger than the number of distinct sequences) score -inf.
  """
  init = _beam_init(cache, batch_size, num_beams, max_decode_length, pad_id,
                    constraint)
  cond = functools.partial(_beam_cond, alpha=alpha,
                           max_decode_length=max_decode_length)
  body = functools.partial(_beam_body, tokens_to_logits=tokens_to_logits,
                           alpha=alpha, eos_id=eos_id, start_id=start_id,
                           max_decode_length=max_decode_length,
                           constraint=constraint)
  final = jax.lax.while_loop(cond, body, init)
  return final.fin_seqs, final.fin_scores



METHODS = ("greedy", "sample", "beam")


def check_search_args(method: str, max_decode_length: int, num_beams: int,
                      rng: PRNGKey | None) -> None:
  """One-line `ValueError`s for a bad search configuration."""
  if method not in METHODS:
    raise ValueError(f"generate: method={method!r}; expected one of {METHODS}")
  if max_decode_length < 1:
    raise ValueError(f"generate: max_decode_length={max_decode_length} < 1")
  if method == "beam" and num_beams < 1:
    raise ValueError(f"generate: num_beams={num_beams} < 1")
  if method == "sample" and rng is None:
    raise ValueError("generate: method='sample' needs an rng key")


def run_search(tokens_to_logits: TokensToLogits, cache: PyTree, *,
               method: str, batch_size: int, max_decode_length: int,
               eos_id: int, start_id: int, pad_id: int,
               rng: PRNGKey | None = None,
               temperature: float | Array = 1.0, top_k: int = 0,
               top_p: float | None = None, num_beams: int = 4,
               alpha: float | Array = 0.6,
               constraint: "LogitsConstraint | None" = None
               ) -> tuple[Array, Array]:
  """Runs the chosen search; the one dispatch both backbones share.

  For beam search the cache must already hold B * num_beams rows.

  Returns:
    (tokens [B, L], scores [B]); for beam search the best beam.
  """
  common = dict(batch_size=batch_size, max_decode_length=max_decode_length,
                eos_id=eos_id, start_id=start_id, pad_id=pad_id,
                constraint=constraint)
  if method == "greedy":
    return greedy_search(tokens_to_logits, cache, **common)
  if method == "sample":
    return temperature_sample(tokens_to_logits, cache, rng,
                              temperature=temperature, top_k=top_k,
                              top_p=top_p, **common)
  tokens, scores = beam_search(tokens_to_logits, cache, num_beams=num_beams,
                               alpha=alpha, **common)
  return tokens[:, 0], scores[:, 0]
