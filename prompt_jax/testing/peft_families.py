"""Tiny random backbones with their Hugging Face twins, for PEFT parity.

`llama()` is a grouped-query Llama (6 query / 2 kv heads, width 48, since
HF needs the width divisible by the heads), `t5()` a T5 1.1; each comes with
one batch (right padding with a mask) in our form and as HF forward
arguments, and `make_hf()` builds a fresh torch model with the same
weights (PEFT wraps and mutates the one it is given).
"""

from typing import Any, NamedTuple

import numpy as np
import torch

from prompt_jax import models
from prompt_jax import testing
from prompt_jax.testing import llama as llama_testing


class Family(NamedTuple):
  """A backbone, its HF twin factory and one batch."""
  lm: Any
  params: Any
  make_hf: Any  # () -> fresh torch model with the same weights.
  inputs: tuple  # Ours: (ids, mask) or (enc, dec).
  kwargs: dict  # HF forward arguments.
  valid: np.ndarray  # bool [B, T] compared slots.


def llama() -> Family:
  cfg = llama_testing.tiny_decoder_config(emb_dim=48, num_heads=6,
                                          num_kv_heads=2,
                                          num_layers=2)
  _, params = llama_testing.random_hf_llama(cfg, seed=3)
  rng = np.random.RandomState(0)
  ids = rng.randint(3, cfg.vocab_size, (2, 8)).astype(np.int32)
  ids[:, 0] = cfg.bos_id
  mask = np.ones_like(ids)
  mask[1, 5:] = 0
  ids = ids * mask
  kwargs = dict(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask))
  return Family(models.DecoderOnlyLM(cfg), params,
                lambda: llama_testing.random_hf_llama(cfg, seed=3)[0],
                (ids, mask.astype(bool)), kwargs, mask.astype(bool))


def t5() -> Family:
  _, cfg, params = testing.random_hf_t5("t5_1_1", num_layers=2,
                                        num_decoder_layers=1)
  rng = np.random.RandomState(0)
  enc = testing.padded_batch(rng, 2, 9, cfg.vocab_size, lengths=[9, 6])
  dec = testing.padded_batch(rng, 2, 4, cfg.vocab_size, start_with_pad=True)
  kwargs = dict(input_ids=torch.tensor(enc, dtype=torch.long),
                attention_mask=torch.tensor(enc != 0),
                decoder_input_ids=torch.tensor(dec, dtype=torch.long))
  return Family(models.EncoderDecoderLM(cfg), params,
                lambda: testing.random_hf_t5("t5_1_1", num_layers=2,
                                             num_decoder_layers=1)[0],
                (enc, dec), kwargs, np.ones(dec.shape, bool))


def logits_fn(lm, inputs):
  """(params, seams) -> text logits [B, T, V]."""
  if lm.family == models.ENCODER_DECODER:
    batch = {"encoder_input_tokens": inputs[0],
             "decoder_input_tokens": inputs[1]}
    return lambda params, seams: lm.logits(params, batch, seams=seams)
  ids, mask = inputs
  return lambda params, seams: lm.text_logits(params, ids, mask, seams=seams)


def hf_case(t5_style: str | None, llama_cfg: Any = None):
  """One parity case: (HF model, our params, lm, our inputs, HF kwargs,
  valid [B, T] mask of compared slots).

  A random T5 of `t5_style` ('t5_1_0', 't5_1_1') with a padded encoder
  batch, else a Llama (`llama_cfg`, default 6 query / 2 kv heads, width
  48) with right padding and explicit HF positions.
  """
  rng = np.random.RandomState(0)
  if t5_style is not None:
    hf, cfg, params = testing.random_hf_t5(t5_style)
    enc = testing.padded_batch(rng, 2, 10, cfg.vocab_size, lengths=[10, 6])
    dec = testing.padded_batch(rng, 2, 5, cfg.vocab_size,
                               start_with_pad=True)
    kwargs = dict(input_ids=torch.tensor(enc, dtype=torch.long),
                  attention_mask=torch.tensor(enc != 0),
                  decoder_input_ids=torch.tensor(dec, dtype=torch.long))
    return (hf, params, models.EncoderDecoderLM(cfg), (enc, dec), kwargs,
            np.ones(dec.shape, bool))
  cfg = llama_cfg or llama_testing.tiny_decoder_config(
      emb_dim=48, num_heads=6, num_kv_heads=2)
  hf, params = llama_testing.random_hf_llama(cfg, seed=3)
  ids = rng.randint(3, cfg.vocab_size, (2, 8)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 5:] = 0
  ids = ids * mask
  kwargs = dict(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask),
                position_ids=torch.tensor(np.maximum(np.cumsum(mask, 1) - 1,
                                                     0)))
  return (hf, params, models.DecoderOnlyLM(cfg), (ids, mask), kwargs,
          mask.astype(bool))
