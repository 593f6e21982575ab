"""Prompt banks route each row to its task's prompt; ensembles average."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax import models
from prompt_jax import testing
from prompt_jax.methods import METHODS
from prompt_jax.methods import PromptBank
from prompt_jax.methods import PromptTuning
from prompt_jax.methods import base
from prompt_jax.methods.prompt_bank import ensemble
from prompt_jax.methods.prompt_bank import rows
from prompt_jax.methods.prompt_tuning import specs
from prompt_jax.testing import llama as llama_testing

P = 3
BANK = PromptBank(tasks=("rte", "sst2", "cb"), length=P,
                  init=specs.random_uniform())


def _setup(family: str, add_bos: bool = False):
  if family == "t5":
    lm = models.EncoderDecoderLM(testing.tiny_t5_config(
        num_encoder_layers=1, num_decoder_layers=1))
  else:
    lm = models.DecoderOnlyLM(llama_testing.tiny_decoder_config(
        num_layers=1), add_bos=add_bos)
  inputs = [jnp.ones((1, 1), jnp.int32)] * (2 if family == "t5" else 1)
  params = flax.core.meta.unbox(lm.module.init(jax.random.key(0),
                                               *inputs)["params"])
  bank = BANK.init_trainable(jax.random.key(1), lm, params, None)
  rng = np.random.RandomState(0)
  x = rng.randint(3, lm.config.vocab_size, (4, 5)).astype(np.int32)
  x[1, 3:] = 0
  y = rng.randint(3, lm.config.vocab_size, (4, 2)).astype(np.int32)
  return lm, params, bank, x, y


@pytest.mark.parametrize("family, add_bos", [("t5", False),
                                             ("llama", False),
                                             ("llama", True)])
def test_each_row_scores_as_its_tasks_prompt_alone(family, add_bos):
  lm, params, bank, x, y = _setup(family, add_bos)
  index = np.array([2, 0, 1, 2])
  got = base.TunedModel(lm, BANK).score_batch(
      bank, params, rows.prepend(x, index, P), y)[1]
  position = "prefix"
  single = PromptTuning(P, specs.random_uniform(), position)
  for k in range(3):
    want = base.TunedModel(lm, single).score_batch(
        {"prompt": {"prompt": BANK.prompt(bank, k)}}, params, x, y)[1]
    for b in np.flatnonzero(index == k):
      np.testing.assert_allclose(got[b], want[b], rtol=2e-5, atol=2e-5)


def test_rows_without_prompt_ids_run_the_bare_backbone():
  lm, params, bank, x, y = _setup("llama")
  got = base.TunedModel(lm, BANK).score_batch(bank, params, x, y)[1]
  bare = base.TunedModel(lm, BANK).score_batch(None, params, x, y)[1]
  np.testing.assert_array_equal(got, bare)


def test_only_the_prompts_of_rows_in_the_batch_get_gradients():
  lm, params, bank, x, y = _setup("t5")
  batch = {"encoder_input_tokens": x, "decoder_target_tokens": y,
           "decoder_input_tokens": np.concatenate(
               [np.zeros((4, 1), np.int32), y[:, :-1]], 1),
           "decoder_loss_weights": np.ones_like(y)}
  routed = rows.with_prompts(batch, np.array([0, 2, 0, 2]), P,
                             lm.family)
  model = base.TunedModel(lm, BANK)
  grads = jax.jit(jax.grad(lambda t: model.loss_fn(t, params, routed)[0]))(
      bank)
  norms = np.abs(np.asarray(grads["bank"]["prompts"])).sum(axis=(1, 2))
  assert norms[0] > 0 and norms[2] > 0 and norms[1] == 0


def test_ensemble_expands_rows_and_averages_probabilities():
  x = np.array([[5, 6, 0], [7, 0, 0]], np.int32)
  expanded = ensemble.expand(x, members=2, length=2)
  np.testing.assert_array_equal(expanded, [[-1, -2, 5, 6, 0],
                                           [-3, -4, 5, 6, 0],
                                           [-1, -2, 7, 0, 0],
                                           [-3, -4, 7, 0, 0]])
  scores = np.log(np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5],
                            [0.5, 0.5]]))
  np.testing.assert_allclose(np.exp(ensemble.average(scores, 2)),
                             [[0.4, 0.6], [0.5, 0.5]], atol=1e-12)
  # Unnormalised member scores are normalised over the options first.
  np.testing.assert_allclose(ensemble.average(scores - 3.0, 2),
                             ensemble.average(scores, 2), atol=1e-12)


def test_ensemble_of_one_prompt_repeated_is_that_prompt():
  lm, params, bank, x, y = _setup("llama")
  same = {"bank": {"prompts": jnp.stack([bank["bank"]["prompts"][0]] * 3)}}
  model = base.TunedModel(lm, BANK)
  options = np.array([[4, 0], [9, 0]], np.int32)
  def option_scores(inputs, trainable):
    return np.stack([np.asarray(model.score_batch(
        trainable, params, inputs, np.repeat(o[None], len(inputs), 0))[0])
                     for o in options], axis=1)
  members = option_scores(ensemble.expand(x, 3, P), same)
  single = option_scores(rows.prepend(x, np.zeros(4, int), P), same)
  np.testing.assert_allclose(
      ensemble.average(members, 3),
      single - np.log(np.exp(single.astype(np.float64)).sum(-1, keepdims=True)),
      atol=1e-5)


def test_bad_banks_are_one_line_errors():
  with pytest.raises(ValueError, match="name the tasks"):
    PromptBank()
  with pytest.raises(ValueError, match="repeated"):
    PromptBank(tasks=("a", "a"))
  with pytest.raises(ValueError, match=r"no prompt for task 'mnli'; the "
                     r"bank holds \['rte', 'sst2', 'cb'\]"):
    BANK.index("mnli")
  assert METHODS["prompt_bank"] is PromptBank
  assert BANK.settings() == {"method": "prompt_bank",
                             "bank_tasks": ["rte", "sst2", "cb"],
                             "prompt_length": P}
