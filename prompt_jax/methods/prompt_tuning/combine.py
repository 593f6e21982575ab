"""Combination functions: where the soft prompt goes in the embedded input.

A `CombinationFn` maps `(prompt [P, H], x [B, T, H], mask [B, T])` to
`(x' [B, P+T, H], mask' [B, P+T])`. Prompt slots are always visible (mask
True/1), so the extended mask also opens them to the decoder's
cross-attention. `encoder_prompt_seams` wraps one into the backbone's
`encoder_embed_fn` seam (`prompt_jax.backbones.seams`), which the encoder applies
right after the token embedding lookup, before dropout and the layers.

The encoder computes relative positions over the combined sequence, so the
prompt simply occupies P positions. Packed examples are not supported: a
prompt is per example, and `mask` is a plain key-padding mask.
"""

from typing import Protocol

import jax.numpy as jnp

from prompt_jax.backbones import seams as seams_lib
from prompt_jax.types import Array


class CombinationFn(Protocol):
  """`(prompt [P, H] or [B, P, H], x [B, T, H], mask [B, T]) -> (x', mask')`.

  `x'` is [B, P+T, H] in x's dtype and `mask'` is [B, P+T] in mask's dtype.
  """

  def __call__(self, prompt: Array, x: Array,
               mask: Array) -> tuple[Array, Array]:
    ...


def _batched(prompt: Array, x: Array) -> Array:
  """Prompt as [B, P, H] in x's dtype; validates the shapes."""
  if x.ndim != 3 or prompt.ndim not in (2, 3):
    raise ValueError(f"combine: expected x [B, T, H] and prompt [P, H] or "
                     f"[B, P, H], got x {x.shape} and prompt {prompt.shape}")
  batch, _, width = x.shape
  if prompt.shape[-1] != width or (prompt.ndim == 3
                                   and prompt.shape[0] != batch):
    raise ValueError(f"combine: prompt {prompt.shape} does not fit x "
                     f"{x.shape}")
  prompt = prompt.astype(x.dtype)
  if prompt.ndim == 2:
    prompt = jnp.broadcast_to(prompt[None], (batch,) + prompt.shape)
  return prompt


def _check_mask(mask: Array, x: Array) -> None:
  if mask.shape != x.shape[:2]:
    raise ValueError(f"combine: mask {mask.shape} does not match x "
                     f"{x.shape[:2]} [B, T]")


def prefix(prompt: Array, x: Array, mask: Array) -> tuple[Array, Array]:
  """Puts the prompt before the input (the paper's default).

  Args:
    prompt: [P, H] (or per-example [B, P, H]).
    x: [B, T, H] embedded input.
    mask: [B, T] key-padding mask (bool or int).

  Returns:
    (x' [B, P+T, H], mask' [B, P+T]) with mask' True/1 on the prompt slots.
  """
  prompt = _batched(prompt, x)
  _check_mask(mask, x)
  ones = jnp.ones(prompt.shape[:2], mask.dtype)
  # [B, P, H] + [B, T, H] -> [B, P+T, H]
  return (jnp.concatenate([prompt, x], axis=1),
          jnp.concatenate([ones, mask], axis=1))


def suffix(prompt: Array, x: Array, mask: Array) -> tuple[Array, Array]:
  """Puts the prompt right after each example's last real token.

  With right-padded inputs the prompt lands between the text (including its
  EOS, if the input has one) and the padding, so its position relative to the
  text does not depend on how much padding the batch has; padding stays at
  the end. "Last real token" is the last position where mask is set; an
  all-padding row gets the prompt at positions [0, P). Implemented as a
  per-example gather, so it is jittable and differentiable in the prompt.

  Args:
    prompt: [P, H] (or per-example [B, P, H]).
    x: [B, T, H] embedded input.
    mask: [B, T] key-padding mask (bool or int).

  Returns:
    (x' [B, P+T, H], mask' [B, P+T]) with mask' True/1 on the prompt slots.
  """
  prompt = _batched(prompt, x)
  _check_mask(mask, x)
  length, steps = prompt.shape[1], x.shape[1]
  if length == 0 or steps == 0:
    return prefix(prompt, x, mask)
  positions = jnp.arange(steps)
  # End of the text: one past the last real token, [B, 1].
  end = jnp.max(jnp.where(mask.astype(bool), positions + 1, 0), axis=1,
                keepdims=True)
  out = jnp.arange(length + steps)[None]  # [1, P+T]
  in_prompt = (out >= end) & (out < end + length)  # [B, P+T]
  # Text before the prompt keeps its index; text after shifts by P.
  src = jnp.clip(jnp.where(out < end, out, out - length), 0, steps - 1)
  from_x = jnp.take_along_axis(x, src[..., None], axis=1)
  from_prompt = jnp.take_along_axis(
      prompt, jnp.clip(out - end, 0, length - 1)[..., None], axis=1)
  new_x = jnp.where(in_prompt[..., None], from_prompt, from_x)
  new_mask = jnp.where(in_prompt, jnp.ones((), mask.dtype),
                       jnp.take_along_axis(mask, src, axis=1))
  return new_x, new_mask


def encoder_prompt_seams(prompt: Array,
                         combine_fn: CombinationFn = prefix
                         ) -> seams_lib.Seams:
  """Seams that insert `prompt` into the encoder input with `combine_fn`.

  The hook is a static field of `Seams`, so build the seams inside the traced
  function (the prompt then is a tracer there); the prompt is cast to the
  activation dtype at the seam.

  Args:
    prompt: [P, H] (or per-example [B, P, H]).
    combine_fn: where the prompt goes; `prefix` by default.

  Returns:
    `Seams(encoder_embed_fn=...)`; pass it to `T5Transformer.apply`/`encode`.
  """

  def embed_fn(x: Array, mask: Array) -> tuple[Array, Array]:
    return combine_fn(prompt.astype(x.dtype), x, mask)

  return seams_lib.Seams(encoder_embed_fn=embed_fn)


def prefix_after_bos(prompt: Array, x: Array,
                     mask: Array) -> tuple[Array, Array]:
  """[x_0 (BOS), prompt, x_1..]: a `CombinationFn` ([B, T, H] -> P + T)."""
  head, tail = prefix(prompt, x[:, 1:], mask[:, 1:])
  return (jnp.concatenate([x[:, :1], head], axis=1),
          jnp.concatenate([mask[:, :1], tail], axis=1))


def decoder_prompt_seams(prompt: Array,
                         combine_fn: CombinationFn = prefix
                         ) -> seams_lib.Seams:
  """Seams that insert `prompt` into a decoder-only input."""

  def embed_fn(x: Array, mask: Array) -> tuple[Array, Array]:
    return combine_fn(prompt.astype(x.dtype), x, mask)

  return seams_lib.Seams(decoder_embed_fn=embed_fn)
