"""BitFit (added biases): parity with torch biases and with PEFT's BEFT.

Each setup loads the same random weights into our backbone and into two
transformers models: one whose target `nn.Linear`s get the biases as their
own `.bias` (plain torch, no PEFT), one wrapped by `peft.get_peft_model(
BeftConfig)` with the biases loaded by `set_peft_model_state_dict`. Biases
are random (0.3 N(0, 1)) on every projection ('all-linear'); logits and the
gradients of `sum(logits * W)` w.r.t. every bias are compared. Setups: T5
1.1 (gated-GELU) and a grouped-query Llama (6 query / 2 key-value heads).
"""

import copy
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
from prompt_jax.methods.bitfit import BitFit
from prompt_jax.methods.bitfit import peft_format
from prompt_jax.methods.lora import targets as lora_targets
from prompt_jax.testing import llama as llama_testing
from prompt_jax.testing import peft_families

LOGITS_REL_BOUND = 1e-5  # max |ours - ref| / max |ref|, over valid slots.
GRAD_REL_BOUND = 1e-4  # per bias: max |ours - PEFT| / max |PEFT|.
NAMES = {models.ENCODER_DECODER: ["q", "k", "v", "o", "wi_0", "wi_1", "wo"],
         models.DECODER_ONLY: ["q_proj", "k_proj", "v_proj", "o_proj",
                               "gate_proj", "up_proj", "down_proj"]}


class Setup(NamedTuple):
  lm: Any
  trainable: Any  # Random biases on every projection.
  ours: dict[str, Any]  # logits, grads, init (biases 0), bare.
  torch_logits: np.ndarray  # HF model with the biases as nn.Linear biases.
  peft: dict[str, Any]  # PEFT BEFT's logits, grads (our layout), init.
  valid: np.ndarray  # bool [B, T] slots compared.


def _hf_models(case: str):
  """(HF model, our params, lm, inputs (ours), HF kwargs, valid mask)."""
  return peft_families.hf_case("t5_1_1" if case == "t5" else None)


_logits_fn = peft_families.logits_fn


def _torch_bias_logits(hf_model, trainable, family, kwargs) -> np.ndarray:
  """Logits of `hf_model` with each bias set as its nn.Linear's `.bias`."""
  with torch.no_grad():
    for key, b in flax.traverse_util.flatten_dict(trainable,
                                                  sep="/").items():
      module = hf_model.get_submodule(
          lora_targets.hf_module(family, key.rpartition("/")[0]))
      assert module.bias is None
      module.bias = torch.nn.Parameter(torch.tensor(np.asarray(b).ravel()))
    return hf_model(**kwargs).logits.numpy()


def _peft_run(hf_model, trainable, family, kwargs, weights) -> dict:
  model = peft.get_peft_model(hf_model, peft.BeftConfig(
      target_modules=NAMES[family]))
  init = {k: v.detach().numpy().copy()
          for k, v in peft.get_peft_model_state_dict(model).items()}
  result = peft.set_peft_model_state_dict(model, {
      k: torch.tensor(v)
      for k, v in peft_format.to_peft_state(trainable, family).items()})
  assert not result.unexpected_keys
  logits = model(**kwargs).logits
  (logits * torch.tensor(weights)).sum().backward()
  grads = {n.replace(".default", ""): p.grad.numpy()
           for n, p in model.named_parameters() if "beft_bias" in n}
  return dict(init=init, logits=logits.detach().numpy(), grads=grads)


@pytest.fixture(scope="module", params=["t5", "llama"])
def setup(request) -> Setup:
  hf_model, params, lm, inputs, kwargs, valid = _hf_models(request.param)
  method = BitFit()
  init = method.init_trainable(jax.random.key(0), lm, params, None)
  rng = np.random.RandomState(5)
  trainable = jax.tree.map(lambda v: jnp.asarray(
      0.3 * rng.standard_normal(v.shape), jnp.float32), init)
  logits_fn = _logits_fn(lm, inputs)
  shape = jax.eval_shape(logits_fn, params, models.Seams()).shape
  weights = np.random.RandomState(1).standard_normal(shape).astype(
      np.float32) * valid[..., None]

  def loss(trainable, params):
    logits = logits_fn(*method.bind(lm, trainable, params))
    return jnp.sum(logits * weights), logits

  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      trainable, params)
  bitfit_fn = jax.jit(lambda t, p: logits_fn(*method.bind(lm, t, p)))
  bare_fn = jax.jit(lambda p: logits_fn(p, models.Seams()))
  ours = dict(logits=np.asarray(logits), grads=grads,
              init=np.asarray(bitfit_fn(init, params)),
              bare=np.asarray(bare_fn(params)))
  torch_logits = _torch_bias_logits(copy.deepcopy(hf_model), trainable,
                                    lm.family, kwargs)
  ref = _peft_run(hf_model, trainable, lm.family, kwargs, weights)
  ref["grads"] = peft_format.from_peft_state(
      ref["grads"], base.abstract_values(method, lm), lm.family)
  return Setup(lm, trainable, ours, torch_logits, ref, valid)


@pytest.mark.parametrize("reference", ["torch", "peft"])
def test_logits_match_the_references(setup, reference):
  ref = (setup.torch_logits if reference == "torch"
         else setup.peft["logits"])[setup.valid]
  ours = setup.ours["logits"][setup.valid]
  err = np.abs(ours - ref).max() / np.abs(ref).max()
  print(f"{setup.lm.family} vs {reference}: {err:.2e}")
  assert err <= LOGITS_REL_BOUND
  assert np.abs(setup.ours["bare"][setup.valid] - ref).max() > 1e-2


def test_gradients_match_peft(setup):
  """Every bias's gradient matches PEFT's; T5's key biases get none (up
  to rounding) on both sides: the softmax ignores a per-query shift."""
  ours = flax.traverse_util.flatten_dict(setup.ours["grads"], sep="/")
  ref = flax.traverse_util.flatten_dict(setup.peft["grads"], sep="/")
  assert ours.keys() == ref.keys()
  top = max(np.abs(r).max() for r in ref.values())
  t5 = setup.lm.family == models.ENCODER_DECODER
  for k, r in ref.items():
    o = np.asarray(ours[k])
    if t5 and k.endswith("/key/bias"):
      assert max(np.abs(o).max(), np.abs(r).max()) < 1e-5 * top, k
      continue
    assert np.abs(o - r).max() / np.abs(r).max() <= GRAD_REL_BOUND, k
    assert np.abs(r).max() > 1e-3 * top, k


def test_bias_names_shapes_and_init_are_pefts(setup):
  init = BitFit().init_trainable(jax.random.key(0), setup.lm, None, None)
  ours = peft_format.to_peft_state(init, setup.lm.family)
  assert set(ours) == set(setup.peft["init"])
  for k, v in ours.items():
    np.testing.assert_array_equal(v, setup.peft["init"][k], err_msg=k)


def test_init_is_the_bare_backbone_bit_for_bit(setup):
  np.testing.assert_array_equal(setup.ours["init"], setup.ours["bare"])


def test_beft_variant_is_pefts_default_beft():
  cfg = llama_testing.tiny_decoder_config()
  hf, _ = llama_testing.random_hf_llama(cfg)
  lm = models.DecoderOnlyLM(cfg)
  want = peft.get_peft_model_state_dict(peft.get_peft_model(
      hf, peft.BeftConfig()))
  method = BitFit(targets="beft")
  ours = peft_format.to_peft_state(method.init_trainable(None, lm, None, None),
                                   lm.family)
  assert set(ours) == set(want) and len(ours) == cfg.num_layers
  mapping = peft_constants.TRANSFORMERS_MODELS_TO_BEFT_TARGET_MODULES_MAPPING
  t5 = models.EncoderDecoderLM(testing.tiny_t5_config())
  assert (method.sites(t5) == BitFit(targets=mapping["t5"]).sites(t5)
          != [])
  assert method.sites(lm) == BitFit(targets=mapping["llama"]).sites(lm)


def test_all_linear_is_every_projection_with_its_output_axes():
  lm = models.EncoderDecoderLM(testing.tiny_t5_config(num_encoder_layers=1,
                                                      num_decoder_layers=1))
  assert BitFit().sites(lm) == BitFit(targets=NAMES[lm.family]).sites(lm)
  boxed = BitFit().abstract_trainable(lm)
  enc, dec = boxed["encoder"]["layers_0"], boxed["decoder"]["layers_0"]
  assert enc["attention"]["query"]["bias"].names == ("heads", "kv")
  assert dec["encoder_decoder_attention"]["out"]["bias"].names == ("embed",)
  assert dec["mlp"]["wi_1"]["bias"].names == ("mlp",)
  assert len(flax.traverse_util.flatten_dict(boxed)) == 4 + 4 + 4 + 3 + 3


@pytest.mark.parametrize("targets,names", [
    (("q", "bogus"), "'bogus'"),
    (("q_proj",), "'q_proj'"),  # A Llama name on T5.
    (("wi",), "'wi'"),  # T5 1.1 is gated: wi_0 and wi_1.
])
def test_unknown_target_is_a_one_line_error(targets, names):
  lm = models.EncoderDecoderLM(testing.tiny_t5_config())
  with pytest.raises(ValueError) as e:
    base.TunedModel(lm, BitFit(targets=targets))
  message = str(e.value)
  assert names in message and "'wi_0'" in message and "\n" not in message
  assert "'all-linear'" in message and "'beft'" in message
  with pytest.raises(ValueError, match="empty"):
    BitFit(targets=())


def test_registry_and_settings():
  assert METHODS["bitfit"] is BitFit
  assert BitFit().settings() == {"method": "bitfit",
                                 "bitfit_targets": ["all-linear"]}
  assert BitFit(targets=["v", "o"]).targets == ("v", "o")
  assert hash(BitFit("beft")) == hash(BitFit(["beft"]))


def test_gin_file_builds_the_method_and_replaces_the_optimizer():
  gin_utils.parse(
      ["runs/prompt_train.gin", "models/t5_1_1_tiny.gin",
       "methods/bitfit.gin"],
      ["MODEL_DIR='/tmp/x'", "TRAIN_STEPS=10",
       "MIXTURE_OR_TASK_NAME='sst2_v100'",
       "TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}",
       "BITFIT_TARGETS='beft'"])
  assert "METHOD = @bitfit.BitFit()" in gin.config_str()
  assert gin.get_configurable(BitFit)() == BitFit("beft")
  assert gin.get_bindings(optim.make_optimizer) == {
      "name": "adamw", "learning_rate": 1e-3}
