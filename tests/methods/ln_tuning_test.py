"""LN tuning: parity with Hugging Face PEFT, the frozen split, targets.

Each setup loads the same random weights into our backbone and into a
transformers model wrapped by `peft.get_peft_model(LNTuningConfig())`, puts
the same random norm scales (1 + 0.3 N(0, 1)) into both (PEFT through
`set_peft_model_state_dict`), and compares logits and the gradients of
`sum(logits * W)` w.r.t. every scale. Setups: T5 1.0 (ReLU) and a
grouped-query Llama (6 query / 2 key-value heads).
"""

from typing import Any, NamedTuple

import flax.traverse_util
import gin
import jax
import jax.numpy as jnp
import numpy as np
import peft
from peft.utils import constants as peft_constants
import pytest
import torch

from prompt_jax import gin_utils
from prompt_jax import models
from prompt_jax import optim
from prompt_jax import testing
from prompt_jax.methods import METHODS
from prompt_jax.methods import base
from prompt_jax.methods.ln_tuning import LNTuning
from prompt_jax.methods.ln_tuning import norms
from prompt_jax.methods.ln_tuning import peft_format
from prompt_jax.testing import llama as llama_testing
from prompt_jax.testing import peft_families

LOGITS_REL_BOUND = 1e-5  # max |ours - PEFT| / max |PEFT|, over valid slots.
GRAD_REL_BOUND = 1e-4  # per scale: max |ours - PEFT| / max |PEFT|.


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep="/")


class Setup(NamedTuple):
  lm: Any
  params: Any
  trainable: Any  # Random scales.
  ours: dict[str, Any]  # logits, grads, bare.
  ref: dict[str, Any]  # PEFT's logits, grads (our layout), init.
  valid: np.ndarray  # bool [B, T] slots compared.


def _hf_models(case: str):
  """(HF model, our params, lm, inputs (ours), HF kwargs, valid mask)."""
  return peft_families.hf_case("t5_1_0" if case == "t5" else None)


_logits_fn = peft_families.logits_fn


def _peft_run(hf_model, trainable, kwargs, weights) -> dict:
  model = peft.get_peft_model(hf_model, peft.LNTuningConfig())
  init = {k: v.detach().numpy().copy()
          for k, v in peft.get_peft_model_state_dict(model).items()}
  result = peft.set_peft_model_state_dict(model, {
      k: torch.tensor(v)
      for k, v in peft_format.to_peft_state(trainable).items()})
  assert not result.unexpected_keys
  logits = model(**kwargs).logits
  (logits * torch.tensor(weights)).sum().backward()
  grads = {n.replace(".default", ""): p.grad.numpy()
           for n, p in model.named_parameters() if "ln_tuning_layers" in n}
  return dict(init=init, logits=logits.detach().numpy(), grads=grads)


@pytest.fixture(scope="module", params=["t5", "llama"])
def setup(request) -> Setup:
  hf_model, params, lm, inputs, kwargs, valid = _hf_models(request.param)
  method = LNTuning()
  rng = np.random.RandomState(5)
  trainable = jax.tree.map(lambda v: jnp.asarray(
      1.0 + 0.3 * rng.standard_normal(v.shape), jnp.float32),
                           base.abstract_values(method, lm))
  frozen = method.frozen_params(params)
  logits_fn = _logits_fn(lm, inputs)
  shape = jax.eval_shape(logits_fn, params, models.Seams()).shape
  weights = np.random.RandomState(1).standard_normal(shape).astype(
      np.float32) * valid[..., None]

  def loss(trainable, frozen):
    logits = logits_fn(*method.bind(lm, trainable, frozen))
    return jnp.sum(logits * weights), logits

  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      trainable, frozen)
  bare = jax.jit(lambda p: logits_fn(p, models.Seams()))(params)
  ours = dict(logits=np.asarray(logits), grads=grads, bare=np.asarray(bare))
  ref = _peft_run(hf_model, trainable, kwargs, weights)
  ref["grads"] = peft_format.from_peft_state(
      ref["grads"], base.abstract_values(method, lm))
  return Setup(lm, params, trainable, ours, ref, valid)


def test_logits_match_peft(setup):
  ours = setup.ours["logits"][setup.valid]
  ref = setup.ref["logits"][setup.valid]
  err = np.abs(ours - ref).max() / np.abs(ref).max()
  print(f"{setup.lm.family}: max |ours - PEFT| / max |PEFT| = {err:.2e}")
  assert err <= LOGITS_REL_BOUND
  assert np.abs(setup.ours["bare"][setup.valid] - ref).max() > 1e-2


def test_gradients_match_peft(setup):
  ours, ref = _flat(setup.ours["grads"]), _flat(setup.ref["grads"])
  assert ours.keys() == ref.keys()
  errors = {k: float(np.abs(np.asarray(ours[k]) - ref[k]).max()
                     / np.abs(ref[k]).max()) for k in ref}
  worst = max(errors, key=errors.get)
  print(f"worst relative grad error {errors[worst]:.2e} ({worst})")
  assert errors[worst] <= GRAD_REL_BOUND
  assert min(np.abs(ref[k]).max() for k in ref) > 1e-4


def test_scale_names_and_init_are_pefts(setup):
  """Every norm, PEFT's names; the initial scales are the loaded ones (the
  same numbers PEFT's copies start from)."""
  method = LNTuning()
  init = method.init_trainable(jax.random.key(0), setup.lm, setup.params,
                               None)
  ours = peft_format.to_peft_state(init)
  assert set(ours) == set(setup.ref["init"])
  for k, v in ours.items():
    np.testing.assert_array_equal(v, setup.ref["init"][k], err_msg=k)


def test_frozen_tree_lacks_the_scales_and_bind_restores_them(setup):
  method = LNTuning()
  frozen = _flat(method.frozen_params(setup.params))
  params = _flat(setup.params)
  trained = _flat(setup.trainable)
  assert frozen.keys() == params.keys() - trained.keys()
  assert all(k.endswith("/scale") for k in trained)
  assert {n.path for n in map(norms.describe, params) if n} == trained.keys()
  init = method.init_trainable(None, setup.lm, setup.params, None)
  bound, _ = method.bind(setup.lm, init, method.frozen_params(setup.params))
  jax.tree.map(np.testing.assert_array_equal, bound, setup.params)


def test_targets_select_norms_and_defaults_are_pefts():
  mapping = (
      peft_constants.TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING)
  t5 = models.EncoderDecoderLM(testing.tiny_t5_config(num_encoder_layers=2,
                                                      num_decoder_layers=1))
  llama = models.DecoderOnlyLM(llama_testing.tiny_decoder_config())
  assert list(LNTuning().norms(t5)) == list(
      LNTuning(targets=mapping["t5"]).norms(t5))
  assert len(LNTuning().norms(t5)) == 2 * 2 + 3 + 2
  assert set(LNTuning(targets="final_layer_norm").norms(t5)) == {
      "decoder/decoder_norm/scale", "encoder/encoder_norm/scale"}
  assert list(LNTuning().norms(llama)) == list(
      LNTuning(targets=mapping["llama"]).norms(llama))
  assert list(LNTuning(targets=["norm"]).norms(llama)) == [
      "decoder_norm/scale"]
  boxed = _flat(LNTuning().abstract_trainable(llama))
  assert {b.names for b in boxed.values()} == {("embed",)}


def test_bad_target_is_a_one_line_error():
  lm = models.EncoderDecoderLM(testing.tiny_t5_config())
  with pytest.raises(ValueError) as e:
    base.TunedModel(lm, LNTuning(targets=("layer_norm", "input_layernorm")))
  message = str(e.value)
  assert "'input_layernorm'" in message and "'final_layer_norm'" in message
  assert "\n" not in message
  with pytest.raises(ValueError, match="empty"):
    LNTuning(targets=())
  with pytest.raises(ValueError, match="params have no .*_norm/scale"):
    LNTuning().init_trainable(None, lm, {}, None)


def test_registry_and_settings():
  assert METHODS["ln_tuning"] is LNTuning
  assert LNTuning().settings() == {"method": "ln_tuning",
                                   "ln_tuning_targets": None}
  assert LNTuning("norm").targets == ("norm",)


def test_gin_file_builds_the_method_and_replaces_the_optimizer():
  gin_utils.parse(
      ["runs/prompt_train.gin", "models/t5_1_1_tiny.gin",
       "methods/ln_tuning.gin"],
      ["MODEL_DIR='/tmp/x'", "TRAIN_STEPS=10",
       "MIXTURE_OR_TASK_NAME='sst2_v100'",
       "TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}",
       "LN_TUNING_TARGETS=['final_layer_norm']"])
  assert "METHOD = @ln_tuning.LNTuning()" in gin.config_str()
  assert gin.get_configurable(LNTuning)() == LNTuning(("final_layer_norm",))
  assert gin.get_bindings(optim.make_optimizer) == {
      "name": "adamw", "learning_rate": 1e-3}
