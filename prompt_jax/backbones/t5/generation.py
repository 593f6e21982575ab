"""Text generation with the T5 network: encode once, cache, search.

`generate` runs the encoder once, creates the decoder key/value cache (T5X
pattern: a `decode=True` call on [B, L] zeros fills the cross-attention
caches and allocates the self-attention ones), then hands a one-step
`tokens_to_logits` closure to a search in `prompt_jax.decoding.search`. The whole
function is one `jax.jit` with the configuration static, so a second call with
the same shapes reuses the compiled program.

Output layout: only the generated tokens, [B, L]. Hugging Face's
`T5ForConditionalGeneration.generate` returns the decoder start token (0)
first; ours is its output without that column, padded with 0 to L.
"""

import functools

import jax
import jax.numpy as jnp

from prompt_jax.decoding import search as decoding
from prompt_jax import types
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.backbones.t5.network import T5Transformer

Array = types.Array
PyTree = types.PyTree
METHODS = decoding.METHODS


def _create_cache(model: T5Transformer, params: PyTree, encoded: Array,
                  encoder_mask: Array, max_decode_length: int,
                  seams: seams_lib.Seams | None) -> PyTree:
  """Decoder cache for [B, Ti, H] encodings and L = max_decode_length."""
  dummy = jnp.zeros((encoded.shape[0], max_decode_length), jnp.int32)
  _, variables = model.apply(
      {"params": params}, encoded, encoder_mask, dummy, seams=seams,
      decode=True, method=T5Transformer.decode, mutable=["cache"])
  return variables["cache"]


def _step_fn(model: T5Transformer, params: PyTree, encoded: Array,
             encoder_mask: Array, seams: seams_lib.Seams | None
             ) -> decoding.TokensToLogits:
  """`(tokens [B', 1], cache) -> (logits [B', V], cache)`."""
  def tokens_to_logits(tokens: Array, cache: PyTree):
    logits, variables = model.apply(
        {"params": params, "cache": cache}, encoded, encoder_mask, tokens,
        seams=seams, decode=True, method=T5Transformer.decode,
        mutable=["cache"])
    return logits[:, 0], variables["cache"]
  return tokens_to_logits


def prepare_decoder(model: T5Transformer, params: PyTree,
                    encoder_tokens: Array, *, max_decode_length: int,
                    rows_per_example: int = 1,
                    encoder_mask: Array | None = None,
                    seams: seams_lib.Seams | None = None
                    ) -> tuple[decoding.TokensToLogits, tuple]:
  """Encodes once and returns a one-step decoder with its initial cache.

  Args:
    model: the T5 network.
    params: its parameters.
    encoder_tokens: [B, Ti] int ids, 0-padded.
    max_decode_length: L, the cache length.
    rows_per_example: R, how many adjacent decoder rows share an example
      (beam search: K); the returned cache still has B rows and must be
      repeated to B * R (`decoding.expand_beams`) before stepping.
    encoder_mask: [B, Ti], defaults to `encoder_tokens != pad_id`.
    seams: PEFT seams for encoder and decoder.

  Returns:
    (tokens_to_logits, cache): `tokens_to_logits(tokens [B*R, 1], cache) ->
    (logits [B*R, V] fp32, cache)` feeds one token per row at the cache's
    next position; `cache` is the Flax cache collection, whose non-scalar
    leaves lead with B (scalars are the shared step counters).
  """
  encoded, encoder_mask = model.apply(
      {"params": params}, encoder_tokens, encoder_mask, seams,
      method=T5Transformer.encode)
  cache = _create_cache(model, params, encoded, encoder_mask,
                        max_decode_length, seams)
  # [B, Ti, ...] -> [B * R, Ti, ...]; beams of an example stay adjacent.
  step = _step_fn(model, params, jnp.repeat(encoded, rows_per_example, axis=0),
                  jnp.repeat(encoder_mask, rows_per_example, axis=0), seams)
  return step, cache


@functools.partial(jax.jit, static_argnames=(
    "model", "max_decode_length", "method", "top_k", "top_p", "num_beams"))
def generate(model: T5Transformer, params: PyTree, encoder_tokens: Array, *,
             max_decode_length: int, method: str = "greedy",
             temperature: float | Array = 1.0, top_k: int = 0,
             top_p: float | None = None, num_beams: int = 4,
             alpha: float | Array = 0.6, rng: Array | None = None,
             encoder_mask: Array | None = None,
             seams: seams_lib.Seams | None = None,
             constraint: decoding.LogitsConstraint | None = None
             ) -> tuple[Array, Array]:
  """Generates up to L tokens for each encoder input.

  Args:
    model: the T5 network (static: hashable, its config decides the ids).
    params: its parameters (boxed or plain).
    encoder_tokens: [B, Ti] int ids, 0-padded.
    max_decode_length: L, the most tokens generated (static).
    method: "greedy", "sample" or "beam" (static).
    temperature: sampling temperature; <= 1e-4 means argmax.
    top_k: sampling keeps the k most likely tokens (0: all; static).
    top_p: sampling nucleus threshold (None: off; static).
    num_beams: K for beam search (static).
    alpha: beam-search brevity penalty exponent, `((5 + len) / 6) ** alpha`.
    rng: PRNG key, required for sampling; step i uses `fold_in(rng, i)`.
    encoder_mask: [B, Ti], defaults to `encoder_tokens != pad_id`.
    seams: PEFT seams for encoder and decoder. Under beam search, per-example
      seam arrays must have batch 1 (broadcast over the B * K rows).
    constraint: optional `decoding.LogitsConstraint` for B rows (a pytree,
      e.g. `constrained_decoding.SpanConstraint`); only the tokens it allows
      are generated.

  Returns:
    tokens [B, L] int32: generated ids including EOS, then pad (0); the
      decoder start token is not included.
    scores [B] float32: summed model log-probs of the generated tokens (up to
      and including EOS); for beam search divided by the brevity penalty.

  Raises:
    ValueError: on an unknown method or invalid sizes (at trace time).
  """
  decoding.check_search_args(method, max_decode_length, num_beams, rng)
  cfg = model.config
  step, cache = prepare_decoder(
      model, params, encoder_tokens, max_decode_length=max_decode_length,
      rows_per_example=num_beams if method == "beam" else 1,
      encoder_mask=encoder_mask, seams=seams)
  return decoding.run_search(
      step, cache, method=method, batch_size=encoder_tokens.shape[0],
      max_decode_length=max_decode_length, eos_id=cfg.eos_id,
      start_id=cfg.decoder_start_id, pad_id=cfg.pad_id, rng=rng,
      temperature=temperature, top_k=top_k, top_p=top_p,
      num_beams=num_beams, alpha=alpha, constraint=constraint)
