"""Prompt-initializer specs: gin-bindable recipes resolved after loading.

Vocabulary-based initializers need the backbone's embedding table and its
tokenizer, which exist only once the checkpoint is loaded. A spec is a small
callable `(embedding [V, H], encode: str -> list[int]) -> PromptInitializer`
that the train entry point resolves at that moment. Each spec has one gin
file under `gin_configs/prompts/`.
"""

import os
from typing import Callable, Protocol, Sequence

import numpy as np

from prompt_jax.methods.prompt_tuning import initializers

Encode = Callable[[str], list[int]]


class InitSpec(Protocol):
  """Resolves to a `PromptInitializer` given the backbone's embeddings."""

  def __call__(self, embedding: np.ndarray,
               encode: Encode) -> initializers.PromptInitializer:
    ...


def random_uniform(scale: float = 0.5) -> InitSpec:
  """U[-scale, scale], independent of the backbone."""
  return lambda embedding, encode: initializers.random_uniform(scale)


def sampled_vocab(population_size: int = 5000) -> InitSpec:
  """Rows sampled from the embeddings of the most frequent ids."""
  return lambda embedding, encode: initializers.from_sampled_vocab(
      embedding, population_size)


def _eos_id(encode: Encode) -> int | None:
  """The EOS id of the tokenizer `encode` is a bound method of, else None.

  Ids differ per tokenizer (T5: 1; SmolLM2: 2, where 1 is `<|im_start|>`),
  so only the owner's own `eos_id` is ever dropped.
  """
  return getattr(getattr(encode, "__self__", None), "eos_id", None)


def _pieces(text: str, encode: Encode) -> list[int]:
  """Token ids of `text` without the tokenizer's own EOS, if it adds one.

  `encode` is normally a tokenizer's bound `encode` method; a plain function
  has no known EOS and its ids are kept as they are.
  """
  eos = _eos_id(encode)
  ids = [i for i in encode(text) if eos is None or i != eos]
  if not ids:
    raise ValueError(f"prompt init: {text!r} tokenizes to nothing")
  return ids


def class_labels(labels: Sequence[str],
                 population_size: int = 5000) -> InitSpec:
  """Row i = mean embedding of label i's pieces; the rest sampled vocab."""
  def resolve(embedding, encode):
    ids = [_pieces(label, encode) for label in labels]
    fill = initializers.from_sampled_vocab(embedding, population_size)
    return initializers.from_class_labels(embedding, ids, fill=fill)
  return resolve


def text(prompt_text: str, population_size: int = 5000) -> InitSpec:
  """Embeddings of a discrete prompt's tokens; the rest sampled vocab."""
  def resolve(embedding, encode):
    fill = initializers.from_sampled_vocab(embedding, population_size)
    return initializers.from_text(embedding, _pieces(prompt_text, encode),
                                  fill=fill)
  return resolve


def from_file(path: str | os.PathLike) -> InitSpec:
  """A saved [P, H] `.npy` prompt (shape-checked against the model)."""
  return lambda embedding, encode: initializers.from_npy(path)
