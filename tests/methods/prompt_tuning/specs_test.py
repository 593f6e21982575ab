"""Prompt-initializer specs: only the tokenizer's own EOS is dropped."""

import jax
import numpy as np
import pytest

from prompt_jax.methods.prompt_tuning import specs

V, H = 100, 3


class _Tokenizer:
  """Appends its EOS, like a T5 vocabulary with add_eos."""

  def __init__(self, eos_id: int):
    self.eos_id = eos_id

  def encode(self, text: str) -> list[int]:
    del text
    return [1, 7, self.eos_id]


@pytest.fixture(scope="module")
def embedding() -> np.ndarray:
  table = np.random.RandomState(0).normal(size=(V, H)).astype(np.float32)
  table[:, 0] = np.arange(V)  # Row i identifies token i.
  return table


def _prompt_ids(spec, embedding, encode, length: int) -> list[int]:
  init = spec(embedding, encode)
  rows = np.asarray(init(jax.random.key(0), (length, H)))
  return rows[:, 0].astype(int).tolist()


def test_smollm2_like_tokenizer_keeps_id_1(embedding):
  # EOS 2 (<|im_end|>); id 1 is <|im_start|> in SmolLM2 and must stay.
  ids = _prompt_ids(specs.text("x"), embedding, _Tokenizer(2).encode, 2)
  assert ids == [1, 7]


def test_t5_like_tokenizer_drops_its_eos(embedding):
  ids = _prompt_ids(specs.text("x"), embedding, _Tokenizer(1).encode, 1)
  assert ids == [7]


def test_class_labels_drop_only_the_owner_eos(embedding):
  tok = _Tokenizer(7)
  init = specs.class_labels(["a"], population_size=50)(embedding, tok.encode)
  row = np.asarray(init(jax.random.key(0), (1, H)))[0]
  np.testing.assert_allclose(row, embedding[1])  # Mean over [1] only.


def test_plain_function_keeps_every_id(embedding):
  ids = _prompt_ids(specs.text("x"), embedding, lambda t: [1, 2], 2)
  assert ids == [1, 2]


def test_only_eos_is_an_error(embedding):
  with pytest.raises(ValueError, match="tokenizes to nothing"):
    specs.text("x")(embedding, _OnlyEos().encode)


class _OnlyEos:
  eos_id = 1

  def encode(self, text: str) -> list[int]:
    del text
    return [1]
