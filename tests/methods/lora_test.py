"""LoRA: parity with Hugging Face PEFT, init, merge, artifact, target names.

The parity setups load the same random weights into our backbone and into
a transformers model wrapped by `peft.get_peft_model`, put the same A/B
(B nonzero, so gradients of A are nonzero) into both, and compare logits
and the gradients of `sum(logits * W)` (W fixed random) w.r.t. A and B.
Every LoRA target of the family is adapted (all attention blocks and MLPs).
"""

from typing import Any, NamedTuple

import flax
import flax.traverse_util
import gin
import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch

from prompt_jax import gin_utils
from prompt_jax import models
from prompt_jax import optim
from prompt_jax import testing
from prompt_jax.methods import METHODS
from prompt_jax.methods import base
from prompt_jax.methods.lora import LoRA
from prompt_jax.methods.lora import peft_format
from prompt_jax.testing import llama as llama_testing
from prompt_jax.testing import peft_families

R, ALPHA = 4, 8.0
TARGETS = {"t5": ("q", "k", "v", "o", "wi_0", "wi_1", "wo"),
           "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                     "up_proj", "down_proj")}
LOGITS_REL_BOUND = 1e-5  # max |ours - PEFT| / max |PEFT|, over valid slots.
GRAD_REL_BOUND = 1e-4  # per A or B: max |ours - PEFT| / max |PEFT|.


class Setup(NamedTuple):
  """One family's models and every number the tests compare."""
  lm: Any
  method: LoRA
  params: Any
  trainable: Any  # B nonzero.
  init: Any  # `init_trainable`'s output (B zero).
  peft_init: dict[str, np.ndarray]  # PEFT's own initial lora tensors.
  peft_keys: set[str]  # `get_peft_model_state_dict` keys.
  ours: dict[str, Any]  # logits, grads, zero_b, bare, merged.
  ref: dict[str, Any]  # PEFT's logits and grads (grads in our layout).
  valid: np.ndarray  # bool [B, T] slots compared.


def _with_nonzero_b(trainable, seed: int = 5):
  rng = np.random.RandomState(seed)
  flat = flax.traverse_util.flatten_dict(trainable, sep="/")
  out = {k: (jnp.asarray(0.3 * rng.standard_normal(v.shape), jnp.float32)
             if k.endswith("/b") else v) for k, v in flat.items()}
  return flax.traverse_util.unflatten_dict(out, sep="/")


def _hf_models(family: str):
  """(HF model, our params, lm, inputs (ours), HF kwargs, valid mask)."""
  return peft_families.hf_case("t5_1_1" if family == "t5" else None, llama_testing.tiny_decoder_config())


_logits_fn = peft_families.logits_fn


def _peft_run(hf_model, method, trainable, family, kwargs, weights):
  """(PEFT's initial lora tensors, its logits, its lora grads by tensor
  name) after loading `trainable` into a PEFT-wrapped `hf_model`."""
  model = peft.get_peft_model(hf_model, peft.LoraConfig(
      r=R, lora_alpha=ALPHA, lora_dropout=0.0, use_rslora=method.rslora,
      target_modules=list(method.targets)))
  initial = {k: v.detach().numpy().copy()
             for k, v in peft.get_peft_model_state_dict(model).items()}
  state = peft_format.to_peft_state(trainable, family)
  result = peft.set_peft_model_state_dict(
      model, {k: torch.tensor(v) for k, v in state.items()})
  assert not result.unexpected_keys
  logits = model(**kwargs).logits
  (logits * torch.tensor(weights)).sum().backward()
  grads = {n.replace(".default.", "."): p.grad.numpy()
           for n, p in model.named_parameters() if "lora_" in n}
  return initial, logits.detach().numpy(), grads


@pytest.fixture(scope="module", params=["t5", "llama", "llama-rslora"])
def setup(request) -> Setup:
  family, _, variant = request.param.partition("-")
  hf_model, params, lm, inputs, kwargs, valid = _hf_models(family)
  method = LoRA(rank=R, alpha=ALPHA, targets=TARGETS[family],
                rslora=variant == "rslora")
  init = method.init_trainable(jax.random.key(0), lm, params, None)
  trainable = _with_nonzero_b(init)
  logits_fn = _logits_fn(lm, inputs)
  shape = jax.eval_shape(logits_fn, params, models.Seams()).shape
  weights = np.random.RandomState(1).standard_normal(shape).astype(
      np.float32) * valid[..., None]

  def loss(trainable, params):
    logits = logits_fn(*method.bind(lm, trainable, params))
    return jnp.sum(logits * weights), logits

  grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
  # Forward-only programs: the bit-for-bit check compares two of these (a
  # gradient program may fuse its forward pass differently).
  lora_fn = jax.jit(lambda t, p: logits_fn(*method.bind(lm, t, p)))
  bare_fn = jax.jit(lambda p: logits_fn(p, models.Seams()))
  (_, logits), grads = grad_fn(trainable, params)
  zero_b = lora_fn(init, params)
  ours = dict(logits=np.asarray(logits), grads=grads,
              zero_b=np.asarray(zero_b), bare=np.asarray(bare_fn(params)),
              merged=np.asarray(bare_fn(method.merge(trainable, params))))
  peft_init, ref_logits, ref_grads = _peft_run(
      hf_model, method, trainable, lm.family, kwargs, weights)
  abstract = base.abstract_values(method, lm)
  ref = dict(logits=ref_logits, grads=peft_format.from_peft_state(
      ref_grads, abstract, lm.family))
  return Setup(lm, method, params, trainable, init, peft_init,
               set(peft_init), ours, ref, valid)


def test_logits_match_peft(setup):
  ours, ref = setup.ours["logits"][setup.valid], setup.ref["logits"][
      setup.valid]
  err = np.abs(ours - ref).max() / np.abs(ref).max()
  print(f"{setup.lm.family}: max |ours - PEFT| / max |PEFT| = {err:.2e} "
        f"(abs {np.abs(ours - ref).max():.2e})")
  assert err <= LOGITS_REL_BOUND
  # The deltas matter: without them the logits are far from PEFT's.
  assert np.abs(setup.ours["bare"][setup.valid] - ref).max() > 1e-2


def test_gradients_match_peft(setup):
  ours = flax.traverse_util.flatten_dict(setup.ours["grads"], sep="/")
  ref = flax.traverse_util.flatten_dict(setup.ref["grads"], sep="/")
  assert ours.keys() == ref.keys()
  errors = {k: float(np.abs(np.asarray(ours[k]) - ref[k]).max()
                     / np.abs(ref[k]).max()) for k in ref}
  worst = max(errors, key=errors.get)
  print(f"{setup.lm.family}: worst relative grad error {errors[worst]:.2e} "
        f"({worst}) over {len(errors)} tensors")
  assert errors[worst] <= GRAD_REL_BOUND
  assert min(np.abs(ref[k]).max() for k in ref) > 1e-4  # A's included.


def test_adapter_names_are_pefts(setup):
  ours = peft_format.to_peft_state(setup.trainable, setup.lm.family)
  assert set(ours) == setup.peft_keys
  for k, v in ours.items():
    assert v.shape == setup.peft_init[k].shape, k


def test_init_is_pefts_default(setup):
  """A ~ U(+-1/sqrt(fan_in)) (PEFT's kaiming_uniform(a=sqrt(5))), B = 0."""
  ours = peft_format.to_peft_state(setup.init, setup.lm.family)
  for values in (ours, setup.peft_init):
    a = [v * np.sqrt(v.shape[1]) for k, v in values.items() if "lora_A" in k]
    a = np.concatenate([x.ravel() for x in a])  # U(-1, 1) if PEFT's init.
    assert np.abs(a).max() <= 1.0
    assert abs(a.std() - 3 ** -0.5) < 0.03 and abs(a.mean()) < 0.05
    assert all(not v.any() for k, v in values.items() if "lora_B" in k)


def test_zero_b_is_the_bare_backbone_bit_for_bit(setup):
  np.testing.assert_array_equal(setup.ours["zero_b"], setup.ours["bare"])


def test_merged_kernels_equal_the_unmerged_deltas(setup):
  ours = setup.ours["logits"]
  np.testing.assert_allclose(setup.ours["merged"], ours,
                             atol=1e-5 * np.abs(ours).max())
  merged = setup.method.merge(setup.trainable, setup.params)
  assert jax.tree.structure(merged) == jax.tree.structure(setup.params)


def test_artifact_round_trips(setup, tmp_path):
  method, lm = setup.method, setup.lm
  path = method.save_artifact(setup.trainable,
                              method.artifact_path(tmp_path, 3))
  assert path == tmp_path / "lora" / "lora_step_3.npz"
  assert method.latest_artifact(tmp_path) == path
  loaded = method.load_artifact(path, lm)
  jax.tree.map(np.testing.assert_array_equal, loaded,
               jax.device_get(setup.trainable))


def test_logical_axes_follow_the_kernel_and_rank():
  lm = models.EncoderDecoderLM(testing.tiny_t5_config())
  boxed = LoRA(rank=2, targets=("o", "wi_0")).abstract_trainable(lm)
  layer = boxed["encoder"]["layers_0"]
  assert layer["attention"]["out"]["a"].names == ("heads", "kv", "rank")
  assert layer["attention"]["out"]["b"].names == ("rank", "embed")
  assert layer["mlp"]["wi_0"]["a"].names == ("embed", "rank")
  assert layer["mlp"]["wi_0"]["b"].names == ("rank", "mlp")


def test_targets_default_to_pefts_and_all_linear_is_every_projection():
  t5 = models.EncoderDecoderLM(testing.tiny_t5_config())
  llama = models.DecoderOnlyLM(llama_testing.tiny_decoder_config())
  assert {s.proj for s in LoRA().sites(t5)} == {"query", "value"}
  blocks = {(s.stack, s.block) for s in LoRA().sites(t5)}
  assert blocks == {("encoder", "attention"), ("decoder", "self_attention"),
                    ("decoder", "encoder_decoder_attention")}
  assert {s.proj for s in LoRA().sites(llama)} == {"query", "value"}
  assert len(LoRA().sites(llama)) == 2 * llama.config.num_layers
  for lm, family in ((t5, "t5"), (llama, "llama")):
    assert ([s.path for s in LoRA(targets="all-linear").sites(lm)]
            == [s.path for s in LoRA(targets=TARGETS[family]).sites(lm)])


@pytest.mark.parametrize("targets,names", [
    (("q", "bogus"), "'bogus'"),
    (("q_proj",), "'q_proj'"),  # A Llama name on T5.
    (("wi",), "'wi'"),  # T5 1.1 is gated: wi_0 and wi_1.
])
def test_unknown_target_is_a_one_line_error(targets, names):
  lm = models.EncoderDecoderLM(testing.tiny_t5_config())
  with pytest.raises(ValueError) as e:
    base.TunedModel(lm, LoRA(targets=targets))
  message = str(e.value)
  assert names in message and "'wi_0'" in message and "\n" not in message


def test_bad_settings_are_one_line_errors():
  with pytest.raises(ValueError, match="rank"):
    LoRA(rank=0)
  with pytest.raises(ValueError, match="dropout"):
    LoRA(dropout=-0.1)
  with pytest.raises(ValueError, match="empty"):
    LoRA(targets=())


def test_registry_and_settings():
  assert METHODS["lora"] is LoRA
  method = LoRA(rank=4, alpha=16, targets=["q", "v"])
  assert method.targets == ("q", "v") and method.scale == 4.0
  assert method.settings() == {"method": "lora", "lora_rank": 4,
                               "lora_alpha": 16, "lora_dropout": 0.0,
                               "lora_targets": ["q", "v"],
                               "lora_rslora": False}
  assert LoRA(rank=4, alpha=16, rslora=True).scale == 8.0  # 16 / sqrt(4)
  assert hash(method) == hash(LoRA(rank=4, alpha=16, targets=("q", "v")))


def test_gin_file_builds_the_method_and_replaces_the_optimizer():
  gin_utils.parse(
      ["runs/prompt_train.gin", "models/t5_1_1_tiny.gin", "methods/lora.gin"],
      ["MODEL_DIR='/tmp/x'", "TRAIN_STEPS=10",
       "MIXTURE_OR_TASK_NAME='sst2_v100'",
       "TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}",
       "LORA_RANK=4", "LORA_TARGETS=['q', 'o']"])
  assert "METHOD = @lora.LoRA()" in gin.config_str()
  assert gin.get_configurable(LoRA)() == LoRA(4, 8.0, ("q", "o"))
  assert gin.get_bindings(optim.make_optimizer) == {
      "name": "adamw", "learning_rate": 1e-4}


def test_dropout_acts_at_training_steps_only():
  """LoRA dropout: evaluation (`bind`) ignores it; a training bind with a
  key drops the delta's input (deterministic per key, different across
  keys), and a rate of 0 trains exactly as without dropout."""
  lm = models.DecoderOnlyLM(llama_testing.tiny_decoder_config(num_layers=1))
  params = flax.core.meta.unbox(lm.module.init(
      jax.random.key(0), jnp.ones((1, 1), jnp.int32))["params"])
  plain, dropped = LoRA(rank=2), LoRA(rank=2, dropout=0.5)
  trainable = _with_nonzero_b(plain.init_trainable(jax.random.key(1), lm,
                                                   params, None))
  batch = {"decoder_target_tokens": np.array([[5, 6, 7, 8]], np.int32),
           "decoder_loss_weights": np.array([[0, 1, 1, 1]], np.int32)}

  compiled = {}

  def loss(method, rng, dropout=True):
    key = (method, dropout)
    if key not in compiled:
      model = base.TunedModel(lm, method)
      compiled[key] = jax.jit(lambda r: model.loss_fn(
          trainable, params, batch, rng=r, enable_dropout=dropout)[0])
    return float(compiled[key](rng))
  key = jax.random.key(3)
  assert loss(dropped, key, dropout=False) == loss(plain, key, False)
  assert loss(plain, key) == loss(plain, key, False)
  assert loss(dropped, key) == loss(dropped, key)
  assert loss(dropped, key) != loss(dropped, jax.random.key(4))
  assert loss(dropped, key) != loss(plain, key)
  with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
    LoRA(dropout=1.0)


def test_rank_above_a_projection_is_a_one_line_error():
  lm = models.DecoderOnlyLM(llama_testing.tiny_decoder_config(num_layers=1))
  width = lm.config.num_kv_heads * lm.config.head_dim
  with pytest.raises(ValueError, match=r"LoRA rank .* exceeds layers_0/"
                     r"self_attention/value's") as e:
    base.TunedModel(lm, LoRA(rank=width + 1))
  assert "\n" not in str(e.value)
  base.TunedModel(lm, LoRA(rank=width))
