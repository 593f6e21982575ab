"""Decoder generation: the KV cache reproduces teacher forcing; searches agree.

Random tiny models (no downloads); parity of greedy tokens with transformers'
`generate` is in `decoder_parity_test.py`. Prompts are padded on either side,
with and without a soft prompt (which lengthens the cached sequence) and
per-layer prefixes and LoRA deltas (which act at every step).
"""

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax.backbones.llama import generation
from prompt_jax.backbones.llama import network
from prompt_jax.testing import llama as testing
from prompt_jax.methods.prompt_tuning import combine
from prompt_jax.backbones import seams as seams_lib

CFG = testing.tiny_decoder_config(vocab_size=61, num_layers=2)
K, D, H = CFG.num_kv_heads, CFG.head_dim, CFG.emb_dim
MODEL = network.DecoderLM(CFG)
PROMPT_IDS = np.array([5, 9, 14], np.int32)


@functools.lru_cache(maxsize=None)
def _params():
  return testing.random_params(CFG)


def _prompts(side: str) -> tuple[np.ndarray, np.ndarray]:
  """[3, 6] prompts of 6, 2 and 4 tokens padded on `side`."""
  rng = np.random.RandomState(0)
  ids, mask = np.zeros((3, 6), np.int32), np.zeros((3, 6), np.int32)
  for row, n in enumerate([6, 2, 4]):
    span = slice(0, n) if side == "right" else slice(6 - n, 6)
    ids[row, span] = rng.randint(3, CFG.vocab_size, n)
    mask[row, span] = 1
  return ids, mask


def _seams(kind: str):
  """Seams of each case; the soft prompt embeds PROMPT_IDS."""
  if kind == "plain":
    return None
  if kind == "soft_prompt":
    prompt = _params()["token_embedder"]["embedding"][PROMPT_IDS]
    return seams_lib.Seams(
        decoder_embed_fn=lambda x, m: combine.prefix(prompt, x, m))
  rng = np.random.RandomState(1)
  prefix = [rng.normal(size=(1, 2, K, D)).astype(np.float32) for _ in "kv"]
  lora = seams_lib.LowRankDelta(
      a=rng.normal(size=(H, 2)).astype(np.float32),
      b=rng.normal(size=(2, K, D)).astype(np.float32) * 0.3)
  attn = seams_lib.AttentionSeams(prefix_key=prefix[0],
                                  prefix_value=prefix[1],
                                  deltas={"value": lora})
  return seams_lib.Seams(decoder_layers=(
      None, seams_lib.LayerSeams(self_attention=attn)))


@functools.partial(jax.jit, static_argnames=("kind",))
def _cached_and_forced(params, ids, mask, continuation, kind):
  """Logits of the cached decoder and of the full forward, and last slots."""
  seams = _seams(kind)
  n = continuation.shape[1]
  step, state = generation.prepare_decoder(
      MODEL, params, ids, max_decode_length=n + 1, prompt_mask=mask,
      seams=seams)
  # The first call's token is ignored (it returns the prefill logits).
  feed = jnp.concatenate([continuation[:, :1], continuation], 1)
  state, cached = jax.lax.scan(lambda s, tok: step(tok[:, None], s)[::-1],
                               state, feed.T)
  forced = MODEL.apply(
      {"params": params}, jnp.concatenate([ids, continuation], 1),
      jnp.concatenate([mask, jnp.ones_like(continuation)], 1), seams=seams)
  return cached.transpose(1, 0, 2), forced, state


@pytest.mark.parametrize("kind", ["plain", "soft_prompt", "prefix_lora"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_cached_decoding_equals_teacher_forcing(kind, side):
  ids, mask = _prompts(side)
  continuation = np.random.RandomState(2).randint(3, CFG.vocab_size, (3, 4))
  cached, forced, state = _cached_and_forced(
      _params(), ids, mask, continuation.astype(np.int32), kind=kind)
  cached, forced = np.asarray(cached), np.asarray(forced)
  p = len(PROMPT_IDS) if kind == "soft_prompt" else 0
  t = p + ids.shape[1]  # Prompt slots in the cache (T').
  last = p + np.max(np.where(mask == 1, np.arange(6), 0), axis=1)
  # Call 0 returns the prefill logits at each row's last real slot.
  np.testing.assert_allclose(cached[:, 0], forced[np.arange(3), last],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(cached[:, 1:], forced[:, t:], rtol=1e-5,
                             atol=1e-5)
  cache = state["model"]
  assert cache["layers_0"]["self_attention"]["cached_key"].shape == (
      3, t + 4, K, D)  # T' + L - 1 slots for L = 5 tokens.
  assert int(cache["cache_index"]) == t + 4
  np.testing.assert_array_equal(cache["next_position"],
                                p + mask.sum(1) + 4)


def test_prefill_in_chunks_equals_one_prefill():
  ids, mask = _prompts("right")

  @jax.jit
  def run_chunk(cache, chunk_ids, chunk_mask):
    logits, variables = MODEL.apply(
        {"params": _params(), "cache": cache}, chunk_ids, chunk_mask,
        decode=True, mutable=["cache"])
    return logits, variables["cache"]

  def run(chunks):
    cache = generation.init_cache(MODEL, 3, 6)
    outs = []
    for span in chunks:
      logits, cache = run_chunk(cache, ids[:, span], mask[:, span])
      outs.append(logits)
    return np.concatenate(outs, 1)
  np.testing.assert_allclose(run([slice(0, 6)]),
                             run([slice(0, 2), slice(2, 3), slice(3, 6)]),
                             rtol=1e-5, atol=1e-5)


@jax.jit
def _forward(params, ids, mask, seams):
  return MODEL.apply({"params": params}, ids, mask, seams=seams)


def _log_likelihood(ids, mask, tokens, seams=None, alpha=0.0):
  """Teacher-forced score of generated tokens (up to EOS) and argmaxes."""
  tokens = np.asarray(tokens)
  logits = _forward(_params(), np.concatenate([ids, tokens], 1),
                    np.concatenate([mask, np.ones_like(tokens)], 1), seams)
  # Slot j predicts slot j+1; the first token comes from the last real slot.
  preds = np.asarray(jax.nn.log_softmax(logits), np.float64)
  last = np.max(np.where(mask == 1, np.arange(ids.shape[1]), 0), axis=1)
  rows = np.arange(len(ids))[:, None]
  slots = np.concatenate([last[:, None], ids.shape[1] + np.arange(
      tokens.shape[1] - 1)[None].repeat(len(ids), 0)], 1)
  token_lp = preds[rows, slots, tokens]
  done = np.cumsum(tokens == CFG.eos_id, 1) - (tokens == CFG.eos_id)
  valid = done == 0
  score = (token_lp * valid).sum(1) / ((5.0 + valid.sum(1)) / 6.0) ** alpha
  return score, preds[rows, slots].argmax(-1), valid


def test_greedy_and_sampling_scores_are_the_model_likelihood():
  ids, mask = _prompts("left")
  tokens, scores = generation.generate(MODEL, _params(), ids,
                                       max_decode_length=6, prompt_mask=mask)
  expected, argmax, valid = _log_likelihood(ids, mask, tokens)
  np.testing.assert_allclose(scores, expected, rtol=1e-4)
  np.testing.assert_array_equal(np.asarray(tokens)[valid], argmax[valid])
  sample = functools.partial(generation.generate, MODEL, _params(), ids,
                             max_decode_length=6, prompt_mask=mask,
                             method="sample")
  cold, _ = sample(rng=jax.random.key(0), temperature=1e-5)
  top1, _ = sample(rng=jax.random.key(0), top_k=1)
  np.testing.assert_array_equal(cold, tokens)
  np.testing.assert_array_equal(top1, tokens)
  drawn, drawn_scores = sample(rng=jax.random.key(3), temperature=2.0)
  again, _ = sample(rng=jax.random.key(3), temperature=2.0)
  np.testing.assert_array_equal(drawn, again)
  assert not np.array_equal(drawn, tokens)
  np.testing.assert_allclose(drawn_scores,
                             _log_likelihood(ids, mask, drawn)[0], rtol=1e-4)


def test_beam_search_scores_its_tokens():
  """Beams are reordered every step; their caches must follow them."""
  ids, mask = _prompts("right")
  seams = _seams("prefix_lora")
  beam, beam_scores = generation.generate(
      MODEL, _params(), ids, max_decode_length=5, prompt_mask=mask,
      seams=seams, method="beam", num_beams=4, alpha=0.6)
  np.testing.assert_allclose(
      beam_scores, _log_likelihood(ids, mask, beam, seams, alpha=0.6)[0],
      rtol=1e-4)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_soft_prompt_generates_like_the_tokens_it_embeds(method):
  ids, mask = _prompts("right")
  with_ids = np.concatenate([np.tile(PROMPT_IDS, (3, 1)), ids], 1)
  with_mask = np.concatenate([np.ones((3, 3), np.int32), mask], 1)
  run = functools.partial(generation.generate, MODEL, _params(),
                          max_decode_length=5, method=method, num_beams=3)
  tokens, scores = run(ids, prompt_mask=mask, seams=_seams("soft_prompt"))
  ref_tokens, ref_scores = run(with_ids, prompt_mask=with_mask)
  np.testing.assert_array_equal(tokens, ref_tokens)
  np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)


@flax.struct.dataclass
class _EvenTokens:
  """Allows only even ids; its state counts the tokens seen, [B]."""
  batch: int = flax.struct.field(pytree_node=False)

  def init_state(self):
    return jnp.zeros((self.batch,), jnp.int32)

  def allowed(self, state, vocab_size):
    return jnp.broadcast_to(jnp.arange(vocab_size) % 2 == 0,
                            (state.shape[0], vocab_size))

  def update(self, state, tokens):
    return state + (tokens >= 0)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_constraint_applies_from_the_first_token(method):
  ids, mask = _prompts("right")
  tokens, scores = generation.generate(
      MODEL, _params(), ids, max_decode_length=5, prompt_mask=mask,
      method=method, num_beams=3, constraint=_EvenTokens(3))
  tokens = np.asarray(tokens)
  assert np.all(tokens % 2 == 0)  # EOS (2) and pad (0) are even too.
  np.testing.assert_allclose(
      scores, _log_likelihood(ids, mask, tokens,
                              alpha=0.6 if method == "beam" else 0.0)[0],
      rtol=1e-4)


def test_bad_arguments_fail_clearly():
  ids, mask = _prompts("right")
  with pytest.raises(ValueError, match="method='top'"):
    generation.generate(MODEL, _params(), ids, max_decode_length=3,
                        method="top")
  with pytest.raises(ValueError, match="needs an rng"):
    generation.generate(MODEL, _params(), ids, max_decode_length=3,
                        prompt_mask=mask, method="sample")
