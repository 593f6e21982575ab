"""Prompt tuning equals Hugging Face PEFT's on the same prompt.

A tiny random T5 1.1 (seq2seq) and a grouped-query Llama (causal) are
wrapped by `peft.get_peft_model` with a `PromptTuningConfig`; PEFT's own
random `prompt_embeddings` [P, H] become our prompt. PEFT puts the prompt
before everything it is fed (BOS included), so the decoder runs with
`add_bos=False` on ids that start with BOS; PEFT returns logits for the P
virtual slots too, we compare the text slots (`[:, P:]`). PEFT's seq2seq
models keep 2P rows (one set per transformer submodule) and use the first
P on the encoder input.
"""

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch

from prompt_jax import models
from prompt_jax.methods import PromptTuning
from prompt_jax.methods.prompt_tuning import specs
from prompt_jax.testing import peft_families

P = 4
REL_BOUND = 1e-5  # max |ours - PEFT| / max |PEFT| on text slots.


def _rel(ours, ref) -> float:
  ours, ref = np.asarray(ours), np.asarray(ref)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_logits_and_gradients_match_peft(family):
  fam = getattr(peft_families, family)()
  causal = fam.lm.family == models.DECODER_ONLY
  model = peft.get_peft_model(fam.make_hf(), peft.PromptTuningConfig(
      task_type="CAUSAL_LM" if causal else "SEQ_2_SEQ_LM",
      num_virtual_tokens=P))
  table = model.prompt_encoder["default"].embedding.weight
  method = PromptTuning(length=P, init=specs.random_uniform())
  trainable = {"prompt": {"prompt": jnp.asarray(
      table.detach().numpy()[:P])}}
  logits_fn = peft_families.logits_fn(fam.lm, fam.inputs)
  shape = jax.eval_shape(logits_fn, fam.params, models.Seams()).shape
  weights = np.random.RandomState(1).standard_normal(shape).astype(
      np.float32) * fam.valid[..., None]

  def loss(t):
    logits = logits_fn(*method.bind(fam.lm, t, fam.params))
    return jnp.sum(logits * weights), logits
  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      trainable)
  ref = model(**fam.kwargs).logits
  if causal:
    ref = ref[:, P:]
  (ref * torch.tensor(weights)).sum().backward()
  ref_logits = ref.detach().numpy()
  valid = fam.valid
  assert _rel(np.asarray(logits)[valid], ref_logits[valid]) < REL_BOUND
  ref_grad = table.grad.numpy()[:P]
  assert _rel(grads["prompt"]["prompt"], ref_grad) < 1e-4
  assert np.abs(ref_grad).max() > 0
