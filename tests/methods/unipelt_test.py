"""UniPELT: each gate switches its submodule off (bias -30) or passes it
whole (bias +30, where it equals our LoRA / prefix tuning / adapters, each
tested against PEFT or a transformers reference in its own file)."""

import dataclasses

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax import gin_utils
from prompt_jax import models
from prompt_jax import optim
from prompt_jax import testing
from prompt_jax.methods import METHODS
from prompt_jax.methods import Adapters
from prompt_jax.methods import LoRA
from prompt_jax.methods import PrefixTuning
from prompt_jax.methods import UniPELT
from prompt_jax.methods import base
from prompt_jax.testing import llama as llama_testing

TOL = dict(rtol=1e-5, atol=1e-5)


def _method(**kw) -> UniPELT:
  return UniPELT(rank=2, alpha=4.0, prefix_length=2, reduction_factor=4,
                 **kw)


@pytest.fixture(scope="module", params=["t5", "llama"])
def setup(request):
  if request.param == "t5":
    lm = models.EncoderDecoderLM(testing.tiny_t5_config(
        num_encoder_layers=1, num_decoder_layers=1))
  else:
    lm = models.DecoderOnlyLM(llama_testing.tiny_decoder_config(
        num_layers=1))
  inputs = [jnp.ones((1, 1), jnp.int32)] * (2 if request.param == "t5"
                                            else 1)
  params = flax.core.meta.unbox(lm.module.init(jax.random.key(0),
                                               *inputs)["params"])
  trainable = _method().init_trainable(jax.random.key(1), lm, params, None)
  # Nonzero LoRA B and adapter up-projections, so every submodule acts.
  for part in ("lora", "adapters"):
    trainable[part] = jax.tree.map(
        lambda x: x + 0.2 * jax.random.normal(jax.random.key(2), x.shape),
        trainable[part])
  rng = np.random.RandomState(0)
  x = rng.randint(3, lm.config.vocab_size, (2, 5)).astype(np.int32)
  x[1, 3:] = 0
  y = rng.randint(3, lm.config.vocab_size, (2, 3)).astype(np.int32)
  return lm, params, trainable, x, y


def _gates(trainable, **biases):
  """`trainable` with every gate of each named kind at kernel 0, bias b."""
  flat = flax.traverse_util.flatten_dict(trainable["gates"], sep="/")
  for key in list(flat):
    kind = key.split("/")[-2]
    if kind in biases:
      flat[key] = (jnp.zeros_like(flat[key]) if key.endswith("kernel")
                   else jnp.full_like(flat[key], biases[kind]))
  return dict(trainable,
              gates=flax.traverse_util.unflatten_dict(flat, sep="/"))


_COMPILED = {}


def _scores(lm, method, trainable, params, x, y):
  """Token scores [B, To], one compiled program per (lm, method, bare)."""
  key = (id(lm), method, trainable is None)
  if key not in _COMPILED:
    model = base.TunedModel(lm, method)
    _COMPILED[key] = jax.jit(
        lambda t, p, x, y: model.score_batch(t, p, x, y)[1])
  return np.asarray(_COMPILED[key](trainable, params, x, y))


def _zeroed(tree, leaf_filter):
  return flax.traverse_util.unflatten_dict({
      k: (jnp.zeros_like(v) if leaf_filter(k) else v)
      for k, v in flax.traverse_util.flatten_dict(tree, sep="/").items()},
                                           sep="/")


def test_closed_gates_remove_their_submodule(setup):
  lm, params, trainable, x, y = setup
  m = _method()
  full = _scores(lm, m, trainable, params, x, y)
  bare = _scores(lm, m, None, params, x, y)
  np.testing.assert_allclose(
      _scores(lm, m, _gates(trainable, lora=-30.0, prefix=-30.0,
                            adapter=-30.0), params, x, y), bare, **TOL)
  no_lora = dict(trainable, lora=_zeroed(trainable["lora"],
                                         lambda k: k.endswith("/b")))
  np.testing.assert_allclose(
      _scores(lm, m, _gates(trainable, lora=-30.0), params, x, y),
      _scores(lm, m, no_lora, params, x, y), **TOL)
  no_adapter = dict(trainable, adapters=_zeroed(trainable["adapters"],
                                                lambda k: "/up/" in k))
  np.testing.assert_allclose(
      _scores(lm, m, _gates(trainable, adapter=-30.0), params, x, y),
      _scores(lm, m, no_adapter, params, x, y), **TOL)
  # Prefix closed: the same seams without the prefix keys/values.
  _, seams = m.bind(lm, trainable, params)
  strip = lambda s: None if s is None else dataclasses.replace(
      s, prefix_key=None, prefix_value=None, prefix_gate=None)
  stripped = dataclasses.replace(seams, **{
      stack: None if layers is None else tuple(
          None if l is None else dataclasses.replace(
              l, self_attention=strip(l.self_attention),
              cross_attention=strip(l.cross_attention)) for l in layers)
      for stack, layers in (("encoder_layers", seams.encoder_layers),
                            ("decoder_layers", seams.decoder_layers))})
  np.testing.assert_allclose(
      _scores(lm, m, _gates(trainable, prefix=-30.0), params, x, y),
      np.asarray(jax.jit(lambda p: lm.score(p, x, y, seams=stripped)[1])(
          params)), **TOL)
  for closed in (bare, _scores(lm, m, no_lora, params, x, y)):
    assert np.abs(full - closed).max() > 1e-3


@pytest.mark.parametrize("kind", ["lora", "lora_alpha", "prefix",
                                  "adapter"])
def test_an_open_gate_alone_is_its_method(setup, kind):
  lm, params, trainable, x, y = setup
  scaling = "gate_times_alpha" if kind == "lora_alpha" else "gate"
  m = _method(lora_scaling=scaling)
  part = "lora" if kind.startswith("lora") else kind
  biases = {k: -30.0 for k in ("lora", "prefix", "adapter")}
  biases[part] = 30.0
  got = _scores(lm, m, _gates(trainable, **biases), params, x, y)
  alone = {"lora": (LoRA(rank=2, alpha=2.0), "lora"),
           "lora_alpha": (LoRA(rank=2, alpha=4.0), "lora"),
           "prefix": (PrefixTuning(length=2), "prefix"),
           "adapter": (Adapters(config="pfeiffer", reduction_factor=4),
                       "adapters")}[kind]
  np.testing.assert_allclose(
      got, _scores(lm, alone[0], trainable[alone[1]], params, x, y), **TOL)


def test_decoder_gates_are_causal(setup):
  """A later target token never changes an earlier one's score."""
  lm, params, trainable, x, y = setup
  m = _method()
  y2 = y.copy()
  y2[:, -1] = (y[:, -1] + 1) % lm.config.vocab_size + 1
  a = _scores(lm, m, trainable, params, x, y)
  b = _scores(lm, m, trainable, params, x, y2)
  np.testing.assert_allclose(a[:, :-1], b[:, :-1], **TOL)
  assert np.abs(a[:, -1] - b[:, -1]).max() > 1e-4


def test_settings_registry_errors_and_gin():
  assert METHODS["unipelt"] is UniPELT
  with pytest.raises(ValueError, match="lora_scaling='alpha'; expected one "
                     "of") as e:
    UniPELT(lora_scaling="alpha")
  assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="rank"):
    UniPELT(rank=0)
  gin_utils.parse(
      ["runs/prompt_train.gin", "models/t5_1_1_tiny.gin",
       "methods/unipelt.gin"],
      ["MODEL_DIR='/tmp/x'", "TRAIN_STEPS=10",
       "MIXTURE_OR_TASK_NAME='sst2_v100'",
       "TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}",
       "UNIPELT_RANK=4", "UNIPELT_LORA_SCALING='gate_times_alpha'"])
  try:
    method = gin.get_configurable(UniPELT)()
    assert (method.rank, method.lora_scaling) == (4, "gate_times_alpha")
    assert gin.get_bindings(optim.make_optimizer) == {
        "name": "adamw", "learning_rate": 5e-4}
  finally:
    gin.clear_config()
