"""IA3: parity with Hugging Face PEFT, identity at init, merge, targets.

Each parity setup loads the same random weights into our backbone and into
a transformers model wrapped by `peft.get_peft_model(IA3Config)`, puts the
same random non-one vectors (1 + 0.3 N(0, 1)) into both (PEFT through
`set_peft_model_state_dict`), and compares logits and the gradients of
`sum(logits * W)` w.r.t. every vector. Setups: T5 1.0 (ReLU) with PEFT's
defaults, T5 1.1 (gated-GELU) with k, v, wi_1 and wo (wi_1 scales the
output, wo the input: two vectors on one hidden), and a grouped-query Llama
(6 query / 2 key-value heads) with PEFT's defaults.
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
from prompt_jax.backbones.llama import config as llama_config
from prompt_jax.methods import METHODS
from prompt_jax.methods import base
from prompt_jax.methods.ia3 import IA3
from prompt_jax.methods.ia3 import peft_format
from prompt_jax.testing import llama as llama_testing
from prompt_jax.testing import peft_families

LOGITS_REL_BOUND = 1e-5  # max |ours - PEFT| / max |PEFT|, over valid slots.
GRAD_REL_BOUND = 1e-4  # per vector: max |ours - PEFT| / max |PEFT|.
# Setup -> our targets (None: PEFT's defaults on both sides).
CASES = {"t5_1_0": None, "t5_1_1": ("k", "v", "wi_1", "wo"),
         "llama_gqa": None}


class Setup(NamedTuple):
  """One case's models and every number the tests compare."""
  lm: Any
  method: IA3
  params: Any
  trainable: Any  # Random, non-one vectors.
  peft_init: dict[str, np.ndarray]  # PEFT's own initial ia3_l tensors.
  ours: dict[str, Any]  # logits, grads, init (vectors 1), bare, merged.
  ref: dict[str, Any]  # PEFT's logits and grads (grads in our layout).
  valid: np.ndarray  # bool [B, T] slots compared.


def _hf_models(case: str):
  """(HF model, our params, lm, inputs (ours), HF kwargs, valid mask)."""
  return peft_families.hf_case(case if case.startswith("t5") else None)


_logits_fn = peft_families.logits_fn


def _random_vectors(init, seed: int = 5):
  rng = np.random.RandomState(seed)
  return jax.tree.map(lambda v: jnp.asarray(
      1.0 + 0.3 * rng.standard_normal(v.shape), jnp.float32), init)


def _peft_run(hf_model, method, trainable, family, kwargs, weights):
  """(PEFT's initial ia3_l tensors, its logits, its grads by tensor name)
  after loading `trainable` into a PEFT-wrapped `hf_model`."""
  config = peft.IA3Config(target_modules=None if method.targets is None
                          else list(method.targets))
  model = peft.get_peft_model(hf_model, config)
  initial = {k: v.detach().numpy().copy()
             for k, v in peft.get_peft_model_state_dict(model).items()}
  state = peft_format.to_peft_state(trainable, family)
  result = peft.set_peft_model_state_dict(
      model, {k: torch.tensor(v) for k, v in state.items()})
  assert not result.unexpected_keys
  logits = model(**kwargs).logits
  (logits * torch.tensor(weights)).sum().backward()
  grads = {n.replace(".default", ""): p.grad.numpy()
           for n, p in model.named_parameters() if "ia3_l" in n}
  return initial, logits.detach().numpy(), grads


@pytest.fixture(scope="module", params=list(CASES))
def setup(request) -> Setup:
  hf_model, params, lm, inputs, kwargs, valid = _hf_models(request.param)
  method = IA3(targets=CASES[request.param])
  init = method.init_trainable(jax.random.key(0), lm, params, None)
  trainable = _random_vectors(init)
  logits_fn = _logits_fn(lm, inputs)
  shape = jax.eval_shape(logits_fn, params, models.Seams()).shape
  weights = np.random.RandomState(1).standard_normal(shape).astype(
      np.float32) * valid[..., None]

  def loss(trainable, params):
    logits = logits_fn(*method.bind(lm, trainable, params))
    return jnp.sum(logits * weights), logits

  grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
  # Forward-only programs for the bit-for-bit check.
  ia3_fn = jax.jit(lambda t, p: logits_fn(*method.bind(lm, t, p)))
  bare_fn = jax.jit(lambda p: logits_fn(p, models.Seams()))
  (_, logits), grads = grad_fn(trainable, params)
  ours = dict(logits=np.asarray(logits), grads=grads,
              init=np.asarray(ia3_fn(init, params)),
              bare=np.asarray(bare_fn(params)),
              merged=np.asarray(bare_fn(method.merge(trainable, params))))
  peft_init, ref_logits, ref_grads = _peft_run(
      hf_model, method, trainable, lm.family, kwargs, weights)
  abstract = base.abstract_values(method, lm)
  ref = dict(logits=ref_logits, grads=peft_format.from_peft_state(
      ref_grads, abstract, lm.family))
  return Setup(lm, method, params, trainable, peft_init, ours, ref, valid)


def test_logits_match_peft(setup):
  ours = setup.ours["logits"][setup.valid]
  ref = setup.ref["logits"][setup.valid]
  err = np.abs(ours - ref).max() / np.abs(ref).max()
  print(f"{setup.lm.family}: max |ours - PEFT| / max |PEFT| = {err:.2e}")
  assert err <= LOGITS_REL_BOUND
  # The vectors matter: without them the logits are far from PEFT's.
  assert np.abs(setup.ours["bare"][setup.valid] - ref).max() > 1e-2


def test_gradients_match_peft(setup):
  ours = flax.traverse_util.flatten_dict(setup.ours["grads"], sep="/")
  ref = flax.traverse_util.flatten_dict(setup.ref["grads"], sep="/")
  assert ours.keys() == ref.keys()
  errors = {k: float(np.abs(np.asarray(ours[k]) - ref[k]).max()
                     / np.abs(ref[k]).max()) for k in ref}
  worst = max(errors, key=errors.get)
  print(f"worst relative grad error {errors[worst]:.2e} ({worst})")
  assert errors[worst] <= GRAD_REL_BOUND
  assert min(np.abs(ref[k]).max() for k in ref) > 1e-4


def test_vector_names_shapes_and_init_are_pefts(setup):
  """Same `ia3_l` names and shapes as PEFT's; both initialise to 1."""
  init = setup.method.init_trainable(jax.random.key(0), setup.lm, None, None)
  ours = peft_format.to_peft_state(init, setup.lm.family)
  assert set(ours) == set(setup.peft_init)
  for k, v in ours.items():
    np.testing.assert_array_equal(v, setup.peft_init[k], err_msg=k)


def test_init_is_the_bare_backbone_bit_for_bit(setup):
  np.testing.assert_array_equal(setup.ours["init"], setup.ours["bare"])


def test_merged_kernels_equal_the_vectors(setup):
  ours = setup.ours["logits"]
  np.testing.assert_allclose(setup.ours["merged"], ours,
                             atol=1e-5 * np.abs(ours).max())


def test_defaults_are_pefts_mappings():
  ia3_targets = peft_constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING
  ia3_ff = peft_constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING
  for lm, model_type in (
      (models.EncoderDecoderLM(testing.tiny_t5_config()), "t5"),
      (models.DecoderOnlyLM(llama_testing.tiny_decoder_config()), "llama")):
    names = {(v.path.rpartition("/")[2], v.feedforward)
             for v in IA3().vectors(lm)}
    ours = IA3(targets=ia3_targets[model_type],
               feedforward=ia3_ff[model_type]).vectors(lm)
    assert IA3().vectors(lm) == ours, model_type
    assert names == {("key", False), ("value", False), ("wo", True)}


def test_every_attention_block_is_scaled_with_its_logical_axes():
  lm = models.EncoderDecoderLM(testing.tiny_t5_config(num_encoder_layers=1,
                                                      num_decoder_layers=1))
  boxed = IA3().abstract_trainable(lm)
  enc, dec = boxed["encoder"]["layers_0"], boxed["decoder"]["layers_0"]
  for block in (enc["attention"], dec["self_attention"],
                dec["encoder_decoder_attention"]):
    for proj in ("key", "value"):
      assert block[proj]["ia3_l"].names == ("heads", "kv")
  for mlp in (enc["mlp"], dec["mlp"]):
    assert mlp["wo"]["ia3_l"].names == ("mlp",)


def test_smollm2_135m_trains_57600_parameters():
  """30 layers x (k 3x64 + v 3x64 + down_proj input 1536), abstractly."""
  cfg = llama_config.preset("smollm2_135m")
  assert (cfg.num_layers, cfg.emb_dim, cfg.num_heads, cfg.num_kv_heads,
          cfg.head_dim, cfg.mlp_dim, cfg.vocab_size) == (
              30, 576, 9, 3, 64, 1536, 49152)
  abstract = base.abstract_values(IA3(), models.DecoderOnlyLM(cfg))
  assert sum(x.size for x in jax.tree.leaves(abstract)) == 57_600


@pytest.mark.parametrize("style,kwargs,names", [
    ("t5_1_1", dict(targets=("k", "q")), "'q' (output)"),
    ("t5_1_1", dict(targets=("wo",), feedforward=()), "'wo' (output)"),
    ("t5_1_1", dict(targets=("k_proj",)), "'k_proj' (output)"),
    ("t5_1_0", dict(targets=("wi_1",)), "'wi_1' (output)"),  # Not gated.
    ("t5_1_0", dict(targets=("wi",)), "'wi' (output)"),
])
def test_inexpressible_target_is_a_one_line_error(style, kwargs, names):
  gated = style == "t5_1_1"
  lm = models.EncoderDecoderLM(testing.tiny_t5_config(
      gated_mlp=gated, activation="gelu_new" if gated else "relu"))
  with pytest.raises(ValueError) as e:
    base.TunedModel(lm, IA3(**kwargs))
  message = str(e.value)
  assert names in message and "\n" not in message
  assert "k (output)" in message and "wo (input, feedforward)" in message
  assert ("wi_1 (output)" in message) == gated


def test_bad_settings_are_one_line_errors():
  lm = models.EncoderDecoderLM(testing.tiny_t5_config())
  with pytest.raises(ValueError, match="subset"):
    IA3(targets=("k", "v"), feedforward=("wo",)).check(lm)
  with pytest.raises(ValueError, match="empty"):
    IA3(targets=())


def test_registry_and_settings():
  assert METHODS["ia3"] is IA3
  method = IA3(targets=["k", "v", "wi_1"])
  assert method.targets == ("k", "v", "wi_1")
  assert method.settings() == {"method": "ia3",
                               "ia3_targets": ["k", "v", "wi_1"],
                               "ia3_feedforward": None}
  assert hash(method) == hash(IA3(targets=("k", "v", "wi_1")))


def test_gin_file_builds_the_method_and_replaces_the_optimizer():
  gin_utils.parse(
      ["runs/prompt_train.gin", "models/t5_1_1_tiny.gin", "methods/ia3.gin"],
      ["MODEL_DIR='/tmp/x'", "TRAIN_STEPS=10",
       "MIXTURE_OR_TASK_NAME='sst2_v100'",
       "TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}",
       "IA3_TARGETS=['k', 'v', 'wi_1']"])
  assert "METHOD = @ia3.IA3()" in gin.config_str()
  assert gin.get_configurable(IA3)() == IA3(("k", "v", "wi_1"))
  assert gin.get_bindings(optim.make_optimizer) == {
      "name": "adamw", "learning_rate": 3e-3}
