"""Text generation with the decoder: prefill the prompt once, then search.

`generate` has the shape of `prompt_jax.backbones.t5.generation.generate`, with the
prompt in place of the encoder input:

1. The cache is created without compute (`init_cache`: every cache variable
   of `DecoderLM` starts at zero, so zeros of the right shapes are the
   T5X-style creation call's result) for `T' + L - 1` slots, where T' is the
   prompt length after the embed hook (a soft prompt makes it longer) and L
   the most tokens generated. The last generated token is never fed back.
2. One `decode=True` call prefills the whole prompt (with the embed hook):
   its keys fill slots [0, T'), and the logits at each row's last real slot
   give the first token.
3. A one-step `tokens_to_logits` closure drives a search from
   `prompt_jax.decoding.search`. Its first call returns the prefill logits (the
   search's start token is ignored); each later call appends one token at the
   next slot, all rows in step, with rotary positions continuing from each
   row's own count of real tokens. So prompts may be left- or right-padded
   (`prompt_mask`), and the result equals an unpadded run.

Output layout: only the generated tokens, [B, L]: EOS included, `pad_id`
after it. Hugging Face's `generate` returns the prompt first.
"""

import functools

import jax
import jax.numpy as jnp

from prompt_jax.decoding import search as decoding
from prompt_jax import types
from prompt_jax.backbones.llama.network import DecoderLM
from prompt_jax.backbones import seams as seams_lib

Array = types.Array
PyTree = types.PyTree
METHODS = decoding.METHODS


def init_cache(model: DecoderLM, batch_size: int, cache_length: int) -> PyTree:
  """The decode cache of B rows and `cache_length` slots (zeros, no compute).

  Returns:
    The Flax 'cache' collection: per layer `cached_key`/`cached_value`
    [B, cache_length, K, D]; top level `cache_index` [], `cache_mask`
    [B, cache_length] bool and `next_position` [B].
  """
  dummy = jax.ShapeDtypeStruct((batch_size, cache_length), jnp.int32)
  shapes = jax.eval_shape(
      lambda t: model.init(jax.random.key(0), t, decode=True)["cache"], dummy)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def sequence_length(model: DecoderLM, batch_size: int, length: int,
                    seams: seams_lib.Seams | None) -> int:
  """T', the length after the embed hook of a [B, T] input (static)."""
  if seams is None or seams.decoder_embed_fn is None:
    return length
  cfg = model.config
  x = jax.ShapeDtypeStruct((batch_size, length, cfg.emb_dim), cfg.dtype)
  mask = jax.ShapeDtypeStruct((batch_size, length), jnp.bool_)
  return jax.eval_shape(seams.decoder_embed_fn, x, mask)[0].shape[1]


def prefill(model: DecoderLM, params: PyTree, prompt_tokens: Array, *,
            max_decode_length: int, prompt_mask: Array | None = None,
            seams: seams_lib.Seams | None = None) -> tuple[Array, PyTree]:
  """Runs the prompt through a fresh cache.

  Args:
    model: the decoder.
    params: its parameters.
    prompt_tokens: [B, T] int ids.
    max_decode_length: L; the cache gets T' + L - 1 slots.
    prompt_mask: [B, T] real tokens (default: all); each row needs at least
      one real token or prompt slot.
    seams: PEFT seams; the embed hook applies here.

  Returns:
    (logits [B, V] fp32 at each row's last real slot, cache after T' slots).
  """
  b, t = prompt_tokens.shape
  t_full = sequence_length(model, b, t, seams)
  cache = init_cache(model, b, t_full + max_decode_length - 1)
  logits, variables = model.apply(
      {"params": params, "cache": cache}, prompt_tokens, prompt_mask,
      seams=seams, decode=True, mutable=["cache"])
  cache = variables["cache"]
  slots = jnp.arange(t_full)
  last = jnp.max(jnp.where(cache["cache_mask"][:, :t_full], slots, 0), axis=1)
  return jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0], cache


def prepare_decoder(model: DecoderLM, params: PyTree, prompt_tokens: Array,
                    *, max_decode_length: int, rows_per_example: int = 1,
                    prompt_mask: Array | None = None,
                    seams: seams_lib.Seams | None = None
                    ) -> tuple[decoding.TokensToLogits, PyTree]:
  """Prefills the prompt and returns a one-step decoder with its state.

  Args:
    model: the decoder.
    params: its parameters.
    prompt_tokens: [B, T] int ids.
    max_decode_length: L, the most tokens generated.
    rows_per_example: R, adjacent decoder rows per example (beam search: K);
      the returned state still has B rows and must be repeated to B * R
      (`decoding.expand_beams`) before stepping.
    prompt_mask: [B, T] real tokens (default: all).
    seams: PEFT seams; the embed hook is used for the prefill only.

  Returns:
    (tokens_to_logits, state): `tokens_to_logits(tokens [B*R, 1], state) ->
    (logits [B*R, V] fp32, state)`. Its first call ignores `tokens` and
    returns the prefill logits; later calls feed one token per row. `state`
    is `{'model': the Flax cache collection, 'calls': [] int32}`.
  """
  first_logits, cache = prefill(
      model, params, prompt_tokens, max_decode_length=max_decode_length,
      prompt_mask=prompt_mask, seams=seams)
  first_logits = jnp.repeat(first_logits, rows_per_example, axis=0)
  step_seams = None if seams is None else seams.replace(decoder_embed_fn=None)

  def tokens_to_logits(tokens: Array, state: PyTree):
    def first():
      return first_logits, state["model"]

    def step():
      logits, variables = model.apply(
          {"params": params, "cache": state["model"]}, tokens,
          seams=step_seams, decode=True, mutable=["cache"])
      return logits[:, 0], variables["cache"]
    logits, cache = jax.lax.cond(state["calls"] == 0, first, step)
    return logits, {"model": cache, "calls": state["calls"] + 1}
  return tokens_to_logits, {"model": cache,
                            "calls": jnp.zeros((), jnp.int32)}


@functools.partial(jax.jit, static_argnames=(
    "model", "max_decode_length", "method", "top_k", "top_p", "num_beams"))
def generate(model: DecoderLM, params: PyTree, prompt_tokens: Array, *,
             max_decode_length: int, method: str = "greedy",
             temperature: float | Array = 1.0, top_k: int = 0,
             top_p: float | None = None, num_beams: int = 4,
             alpha: float | Array = 0.6, rng: Array | None = None,
             prompt_mask: Array | None = None,
             seams: seams_lib.Seams | None = None,
             constraint: "decoding.LogitsConstraint | None" = None
             ) -> tuple[Array, Array]:
  """Generates up to L tokens after each prompt.

  Args:
    model: the decoder (static: hashable, its config decides the ids).
    params: its parameters (boxed or plain).
    prompt_tokens: [B, T] int ids.
    max_decode_length: L, the most tokens generated (static).
    method: "greedy", "sample" or "beam" (static).
    temperature: sampling temperature; <= 1e-4 means argmax.
    top_k: sampling keeps the k most likely tokens (0: all; static).
    top_p: sampling nucleus threshold (None: off; static).
    num_beams: K for beam search (static).
    alpha: beam-search brevity penalty exponent, `((5 + len) / 6) ** alpha`.
    rng: PRNG key, required for sampling; step i uses `fold_in(rng, i)`.
    prompt_mask: [B, T] real tokens, left and/or right padding (default:
      all real; never inferred from `pad_id`).
    seams: PEFT seams. Under beam search, per-example seam arrays used after
      the prefill (prefixes, scales) must have batch 1.
    constraint: optional `decoding.LogitsConstraint` for B rows; only the
      tokens it allows are generated (from the first one on).

  Returns:
    tokens [B, L] int32: generated ids including EOS, then `pad_id`.
    scores [B] float32: summed model log-probs of the generated tokens (up to
      and including EOS); for beam search divided by the brevity penalty.

  Raises:
    ValueError: on an unknown method or invalid sizes (at trace time).
  """
  decoding.check_search_args(method, max_decode_length, num_beams, rng)
  cfg = model.config
  step, cache = prepare_decoder(
      model, params, prompt_tokens, max_decode_length=max_decode_length,
      rows_per_example=num_beams if method == "beam" else 1,
      prompt_mask=prompt_mask, seams=seams)
  return decoding.run_search(
      step, cache, method=method, batch_size=prompt_tokens.shape[0],
      max_decode_length=max_decode_length, eos_id=cfg.eos_id,
      start_id=cfg.bos_id, pad_id=cfg.pad_id, rng=rng,
      temperature=temperature, top_k=top_k, top_p=top_p,
      num_beams=num_beams, alpha=alpha, constraint=constraint)
