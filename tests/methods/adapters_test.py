"""Bottleneck adapters: equations, placement, inits, sharding, errors, gin.

References, independent of our code: the adapter equation
`x + act(x W_down + b_down) W_up + b_up` in NumPy (activations from torch);
its placement in the same random backbones in transformers (1-layer T5
1.1 and Llama), with forward hooks on the attention (after the out
projection) and FFN modules that apply the adapter in torch before the
layer's residual add. Logits and the gradients of `sum(logits * W)` w.r.t.
every adapter weight are compared (max |ours - ref| / max |ref|).
"""

import json
from typing import Any, NamedTuple

import flax.traverse_util
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from prompt_jax import gin_utils
from prompt_jax import models
from prompt_jax import optim
from prompt_jax import partitioning
from prompt_jax import testing
from prompt_jax import trainer as trainer_lib
from prompt_jax.backbones import layers
from prompt_jax.methods import METHODS
from prompt_jax.methods import base
from prompt_jax.methods.adapters import Adapters
from prompt_jax.methods.adapters import bottleneck
from prompt_jax.methods.lora import LoRA
from prompt_jax.testing import llama as llama_testing

RF = 4  # H = 32 -> bottleneck 8 (divisible by the 4-way model axis).
LOGITS_REL_BOUND = 1e-5
GRAD_REL_BOUND = 1e-4
TORCH_ACTS = {"relu": torch.relu, "silu": torch.nn.functional.silu,
              "gelu": torch.nn.functional.gelu,
              "gelu_new": lambda x: torch.nn.functional.gelu(
                  x, approximate="tanh"),
              "gelu_pytorch_tanh": lambda x: torch.nn.functional.gelu(
                  x, approximate="tanh")}
# (family, settings): both configs on both families; T5 Houlsby also
# adapts cross-attention, so every seam kind is compared.
PARITY = [("t5", dict(config="houlsby", cross_attention=True)),
          ("t5", dict(config="pfeiffer", activation="silu")),
          ("llama", dict(config="houlsby", activation="silu")),
          ("llama", dict(config="pfeiffer"))]


def _flat(tree: Any) -> dict[str, Any]:
  return flax.traverse_util.flatten_dict(tree, sep="/")


def _host(tree: Any) -> Any:
  """A host copy that survives donation of the device buffers."""
  return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def _moved(before: dict, after: dict) -> set[str]:
  return {k for k in before if not np.array_equal(before[k], after[k])}


def _np_adapter(p: dict, x: np.ndarray, act: str) -> np.ndarray:
  """x + act(x W_down + b_down) W_up + b_up, activation from torch."""
  pre = x @ p["down/kernel"] + p["down/bias"]
  hidden = TORCH_ACTS[act](torch.from_numpy(pre)).numpy()
  return x + (hidden @ p["up/kernel"] + p["up/bias"])


# ------------------------------------------------------- the backbones ----


class Family(NamedTuple):
  """One family: HF model, our params and lm, inputs, compiled programs."""
  hf: Any
  params: Any
  lm: Any
  inputs: tuple
  hf_kwargs: dict
  valid: np.ndarray  # bool [B, T] positions compared.
  weights: np.ndarray  # [B, T, V] fixed random loss weights.
  hf_modules: dict[str, Any]  # Our block path -> the HF module it hooks.


def _t5_family() -> Family:
  hf, cfg, params = testing.random_hf_t5("t5_1_1", num_layers=1,
                                         num_decoder_layers=1)
  rng = np.random.RandomState(0)
  enc = testing.padded_batch(rng, 2, 7, cfg.vocab_size, lengths=[7, 4])
  dec = testing.padded_batch(rng, 2, 4, cfg.vocab_size, start_with_pad=True)
  kwargs = dict(input_ids=torch.tensor(enc, dtype=torch.long),
                attention_mask=torch.tensor(enc != 0),
                decoder_input_ids=torch.tensor(dec, dtype=torch.long))
  e, d = hf.encoder.block[0].layer, hf.decoder.block[0].layer
  modules = {"encoder/layers_0/attention": e[0].SelfAttention,
             "encoder/layers_0/mlp": e[1].DenseReluDense,
             "decoder/layers_0/self_attention": d[0].SelfAttention,
             "decoder/layers_0/encoder_decoder_attention": d[1].EncDecAttention,
             "decoder/layers_0/mlp": d[2].DenseReluDense}
  return _family(hf, params, models.EncoderDecoderLM(cfg), (enc, dec),
                 kwargs, np.ones(dec.shape, bool), modules)


def _llama_family() -> Family:
  cfg = llama_testing.tiny_decoder_config(num_layers=1)
  hf, params = llama_testing.random_hf_llama(cfg, seed=3)
  ids = np.random.RandomState(0).randint(3, cfg.vocab_size, (2, 6))
  mask = np.ones_like(ids)
  mask[1, 4:] = 0
  ids = (ids * mask).astype(np.int32)
  kwargs = dict(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask),
                position_ids=torch.tensor(np.maximum(np.cumsum(mask, 1) - 1,
                                                     0)))
  layer = hf.model.layers[0]
  modules = {"layers_0/self_attention": layer.self_attn,
             "layers_0/mlp": layer.mlp}
  return _family(hf, params, models.DecoderOnlyLM(cfg), (ids, mask), kwargs,
                 mask.astype(bool), modules)


def _family(hf, params, lm, inputs, kwargs, valid, modules) -> Family:
  shape = jax.eval_shape(_logits_fn(lm, inputs), params,
                         models.Seams()).shape
  weights = np.random.RandomState(1).standard_normal(shape).astype(
      np.float32) * valid[..., None]
  return Family(hf, params, lm, inputs, kwargs, valid, weights, modules)


def _logits_fn(lm, inputs):
  if lm.family == models.ENCODER_DECODER:
    enc, dec = inputs
    batch = {"encoder_input_tokens": enc, "decoder_input_tokens": dec}
    return lambda params, seams: lm.logits(params, batch, seams=seams)
  ids, mask = inputs
  return lambda params, seams: lm.module.apply(
      {"params": params}, ids, mask.astype(bool), seams=seams)


@pytest.fixture(scope="module")
def families() -> dict[str, Family]:
  return {"t5": _t5_family(), "llama": _llama_family()}


# ---------------------------------- parity with hooked transformers ----


def _random_adapters(method: Adapters, lm, seed: int) -> Any:
  """Every adapter weight and bias N(0, 0.3^2): a large, visible change."""
  rng = np.random.RandomState(seed)
  abstract = _flat(base.abstract_values(method, lm))
  return flax.traverse_util.unflatten_dict(
      {k: jnp.asarray(0.3 * rng.standard_normal(v.shape), jnp.float32)
       for k, v in abstract.items()}, sep="/")


def _hooked_reference(fam: Family, method: Adapters, trainable: Any):
  """(logits, grads by '/'-key) of the HF model with the adapters applied
  by forward hooks on the hooked blocks' outputs, in torch."""
  flat = {k: torch.tensor(np.asarray(v), requires_grad=True)
          for k, v in _flat(trainable).items()}
  act = TORCH_ACTS[method.activation]

  def hook(path):
    p = {k.split("/adapter/")[1]: v for k, v in flat.items()
         if k.startswith(f"{path}/adapter/")}

    def fn(module, args, output):
      del module, args
      y = output[0] if isinstance(output, tuple) else output
      y = y + (act(y @ p["down/kernel"] + p["down/bias"]) @ p["up/kernel"]
               + p["up/bias"])
      return (y,) + tuple(output[1:]) if isinstance(output, tuple) else y
    return fn

  paths = sorted({k.split("/adapter/")[0] for k in flat})
  handles = [fam.hf_modules[p].register_forward_hook(hook(p)) for p in paths]
  try:
    logits = fam.hf(**fam.hf_kwargs).logits
    (logits * torch.from_numpy(fam.weights)).sum().backward()
  finally:
    for h in handles:
      h.remove()
  return logits.detach().numpy(), {k: v.grad.numpy() for k, v in flat.items()}


@pytest.fixture(scope="module", params=PARITY,
                ids=[f"{f}-{s['config']}" for f, s in PARITY])
def parity(request, families):
  family, settings = request.param
  fam = families[family]
  method = Adapters(reduction_factor=RF, **settings)
  trainable = _random_adapters(method, fam.lm, seed=len(settings))
  logits_fn = _logits_fn(fam.lm, fam.inputs)

  def loss(t, p):
    logits = logits_fn(*method.bind(fam.lm, t, p))
    return jnp.sum(logits * fam.weights), logits

  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      trainable, fam.params)
  ref_logits, ref_grads = _hooked_reference(fam, method, trainable)
  bare = jax.jit(logits_fn)(fam.params, models.Seams())
  return dict(fam=fam, method=method, logits=np.asarray(logits),
              grads=_flat(grads), bare=np.asarray(bare), ref=ref_logits,
              ref_grads=ref_grads)


def test_adapter_equation_matches_numpy():
  rng = np.random.RandomState(0)
  p = {"down/kernel": rng.standard_normal((6, 3)),
       "down/bias": rng.standard_normal(3), "up/kernel":
       rng.standard_normal((3, 6)), "up/bias": rng.standard_normal(6)}
  p = {k: v.astype(np.float32) for k, v in p.items()}
  x = rng.standard_normal((2, 5, 6)).astype(np.float32)
  for act in layers.ACTIVATIONS:
    got = bottleneck.apply(flax.traverse_util.unflatten_dict(p, sep="/"), x,
                           layers.ACTIVATIONS[act])
    np.testing.assert_allclose(got, _np_adapter(p, x, act), rtol=1e-5,
                               atol=1e-5, err_msg=act)


def test_logits_match_the_hooked_reference(parity):
  valid = parity["fam"].valid
  ours, ref = parity["logits"][valid], parity["ref"][valid]
  err = np.abs(ours - ref).max() / np.abs(ref).max()
  print(f"max |ours - ref| / max |ref| = {err:.2e}")
  assert err <= LOGITS_REL_BOUND
  # The adapters matter: the bare backbone is far from the reference.
  assert np.abs(parity["bare"][valid] - ref).max() / np.abs(ref).max() > 1e-2


def test_gradients_match_the_hooked_reference(parity):
  ours, ref = parity["grads"], parity["ref_grads"]
  assert ours.keys() == ref.keys()
  errors = {k: float(np.abs(np.asarray(ours[k]) - ref[k]).max()
                     / np.abs(ref[k]).max()) for k in ref}
  worst = max(errors, key=errors.get)
  print(f"worst relative grad error {errors[worst]:.2e} ({worst})")
  assert errors[worst] <= GRAD_REL_BOUND
  assert min(np.abs(ref[k]).max() for k in ref) > 1e-4


def test_sites_are_the_configs_blocks(parity):
  """Houlsby: every self-attention block and FFN (T5 cross-attention only
  when asked); Pfeiffer: the FFNs only, the attention seams stay empty."""
  method, lm = parity["method"], parity["fam"].lm
  blocks = sorted({k.split("/adapter/")[0] for k in parity["grads"]})
  want = [p for p in parity["fam"].hf_modules
          if p.endswith("mlp") or (method.config == "houlsby" and (
              "encoder_decoder" not in p or method.cross_attention))]
  assert blocks == sorted(want)
  _, seams = method.bind(lm, _random_adapters(method, lm, 0), {})
  stacks = [s for s in (seams.encoder_layers, seams.decoder_layers) if s]
  for layer in (l for stack in stacks for l in stack):
    assert layer.mlp.post_fn is not None
    for attn in (layer.self_attention, layer.cross_attention):
      if method.config == "pfeiffer":
        assert attn is None or attn.post_fn is None


def test_cached_greedy_decoding_runs_the_adapters(families):
  """Adapters also act on the one-token steps of cached decoding: greedy
  tokens are the argmax of the teacher-forced adapted logits."""
  fam = families["t5"]
  method = Adapters(reduction_factor=RF, cross_attention=True)
  model = base.TunedModel(fam.lm, method, fam.params)
  trainable = _random_adapters(method, fam.lm, 7)
  enc = fam.inputs[0]
  tokens = np.asarray(model.generate(trainable, fam.params, enc,
                                     max_decode_length=4,
                                     input_mask=enc != 0)[0])
  dec = np.pad(tokens[:, :-1], ((0, 0), (1, 0)))
  logits = _logits_fn(fam.lm, (enc, dec))(*method.bind(fam.lm, trainable,
                                                       fam.params))
  np.testing.assert_array_equal(np.asarray(logits).argmax(-1), tokens)


# ------------------------------------------------------ initial state ----


@pytest.fixture(scope="module", params=["t5", "llama"])
def inits(request, families):
  """Forward-only logits: bare, 'mam' init and 'houlsby' init (the same
  compiled program for both inits)."""
  fam = families[request.param]
  cross = fam.lm.family == models.ENCODER_DECODER
  mam = Adapters(reduction_factor=RF, cross_attention=cross)
  houlsby = Adapters(reduction_factor=RF, cross_attention=cross,
                     init="houlsby")
  logits_fn = _logits_fn(fam.lm, fam.inputs)
  adapted = jax.jit(lambda t, p: logits_fn(*mam.bind(fam.lm, t, p)))
  trees = {m.init: m.init_trainable(jax.random.key(0), fam.lm, fam.params,
                                    None) for m in (mam, houlsby)}
  return dict(bare=np.asarray(jax.jit(logits_fn)(fam.params,
                                                 models.Seams())),
              **{k: np.asarray(adapted(t, fam.params))
                 for k, t in trees.items()}, trees=trees, valid=fam.valid)


def test_mam_init_is_the_bare_backbone_bit_for_bit(inits):
  np.testing.assert_array_equal(inits["mam"], inits["bare"])


def test_houlsby_init_is_near_the_backbone(inits):
  valid = inits["valid"]
  got, bare = inits["houlsby"][valid], inits["bare"][valid]
  err = np.abs(got - bare).max() / np.abs(bare).max()
  assert 0 < err <= 1e-2, err


def test_init_distributions():
  """mam: W_down ~ U(+-1/sqrt(H)), all else 0. houlsby: weights N(0,
  1e-2^2) truncated at +-2 std (std 0.88e-2), biases 0."""
  h, r = 256, 64
  mam = _flat(bottleneck.init(jax.random.key(0), h, r, "mam"))
  down = np.asarray(mam["down/kernel"]) * np.sqrt(h)  # U(-1, 1).
  assert np.abs(down).max() <= 1.0
  assert abs(down.std() - 3 ** -0.5) < 0.01 and abs(down.mean()) < 0.01
  assert all(not np.asarray(mam[k]).any()
             for k in ("down/bias", "up/kernel", "up/bias"))
  houlsby = _flat(bottleneck.init(jax.random.key(0), h, r, "houlsby"))
  for k in ("down/kernel", "up/kernel"):
    w = np.asarray(houlsby[k]) / bottleneck.HOULSBY_STD
    assert np.abs(w).max() <= 2.0 and abs(w.std() - 0.8796) < 0.02, k
  assert not np.asarray(houlsby["down/bias"]).any()
  assert not np.asarray(houlsby["up/bias"]).any()


def test_identity_at_init_follows_the_init():
  assert Adapters.identity_at_init  # The default init, 'mam'.
  assert Adapters().identity_at_init
  assert not Adapters(init="houlsby").identity_at_init


# ------------------------------------- a train step on the 2x4 mesh ----


@pytest.fixture(scope="module")
def trained(families):
  """Two Adam steps of T5 Houlsby adapters (mam init, cross-attention
  too) on a 2x4 ('data', 'model') mesh."""
  fam = families["t5"]
  mesh = partitioning.make_mesh(2, 4)
  rules = partitioning.standard_logical_axis_rules("model")
  abstract = partitioning.abstract_variables(fam.lm.module,
                                             fam.lm.sample_inputs)["params"]
  params = jax.device_put(fam.params, partitioning.param_shardings(
      abstract, mesh, rules))
  method = Adapters(reduction_factor=RF, cross_attention=True)
  model = base.TunedModel(fam.lm, method, params)
  trainer = trainer_lib.Trainer(model, optax.adam(1e-2), mesh, rules,
                                partitioning.shardings_of(params))
  state = trainer.init_state(jax.random.key(1))
  enc = np.tile(fam.inputs[0], (2, 1))
  tgt = np.tile(fam.inputs[1][:, 1:], (2, 1))
  batch = trainer.put_batch({
      "encoder_input_tokens": enc, "decoder_input_tokens": np.pad(
          tgt[:, :-1], ((0, 0), (1, 0))), "decoder_target_tokens": tgt,
      "decoder_loss_weights": np.ones_like(tgt)})
  trees, losses = [_host(state.trainable)], []
  for _ in range(2):
    state, metrics = trainer.train_step(state, params, batch,
                                        jax.random.key(2))
    trees.append(_host(state.trainable))
    losses.append(float(metrics["loss"]))
  return dict(state=state, trees=[_flat(t) for t in trees], losses=losses,
              params=params, host_params=fam.params, h=fam.lm.config.emb_dim)


def test_adapters_are_sharded_on_the_model_axis(trained):
  h, r = trained["h"], trained["h"] // RF
  leaves = _flat(trained["state"].trainable)
  assert len(leaves) == 4 * 5  # 5 blocks, 4 arrays each.
  want = {"down/kernel": ((None, "model"), (h, r // 4)),
          "down/bias": (("model",), (r // 4,)),
          "up/kernel": (("model", None), (r // 4, h)),
          "up/bias": ((), (h,))}
  for key, x in leaves.items():
    spec, shard = want[key.split("/adapter/")[1]]
    assert tuple(x.sharding.spec) in (spec, spec + (None,)), (key, x.sharding)
    assert x.addressable_shards[0].data.shape == shard, key


def test_gradients_flow_only_into_the_adapters(trained):
  """The backbone is unchanged; the optimizer holds adapter-sized leaves
  only. With W_up = 0, step 1 moves only the up-projections (the
  down-projections' gradients are exactly 0); step 2 moves everything."""
  for key, x in _flat(trained["params"]).items():
    np.testing.assert_array_equal(np.asarray(x),
                                  _flat(trained["host_params"])[key])
  largest = max(x.size for x in jax.tree.leaves(trained["state"].trainable))
  optim.assert_no_large_leaves(trained["state"].opt_state, largest)
  init, step1, step2 = trained["trees"]
  assert _moved(init, step1) == {k for k in init if "/up/" in k}
  assert _moved(init, step2) == set(init)
  assert trained["losses"][1] < trained["losses"][0]


# ------------------------------------------------ errors and artifacts ----


@pytest.mark.parametrize("kwargs, words", [
    (dict(config="double_seq_bn"), ["'double_seq_bn'", "['houlsby', "
                                    "'pfeiffer']"]),
    (dict(init="bert"), ["'bert'", "['houlsby', 'mam']"]),
    (dict(activation="swish"), ["'swish'", str(sorted(layers.ACTIVATIONS))]),
    (dict(reduction_factor=0), ["reduction_factor", "0"]),
    (dict(reduction_factor=2.5), ["reduction_factor", "2.5"]),
])
def test_bad_settings_are_one_line_errors(kwargs, words):
  with pytest.raises(ValueError) as e:
    Adapters(**kwargs)
  assert "\n" not in str(e.value)
  for w in words:
    assert w in str(e.value)


@pytest.mark.parametrize("kwargs, words", [
    (dict(reduction_factor=5), ["5", "width 32", "[1, 2, 4, 8, 16, 32]"]),
    (dict(reduction_factor=64), ["64", "width 32"]),
    (dict(cross_attention=True), ["cross_attention", "decoder_only"]),
])
def test_settings_that_do_not_fit_the_model_fail_when_built(
    families, kwargs, words):
  with pytest.raises(ValueError) as e:
    base.TunedModel(families["llama"].lm, Adapters(**kwargs))
  assert "\n" not in str(e.value)
  for w in words:
    assert w in str(e.value)


def test_artifact_round_trips_and_refuses_other_backbones_and_methods(
    families, tmp_path):
  t5, llama = families["t5"].lm, families["llama"].lm
  method = Adapters(reduction_factor=RF)
  trainable = _random_adapters(method, t5, 0)
  path = method.save_artifact(trainable, method.artifact_path(tmp_path, 3))
  assert path == tmp_path / "adapters" / "adapters_step_3.npz"
  assert method.latest_artifact(tmp_path) == path
  loaded = method.load_artifact(path, t5)
  for k, v in _flat(trainable).items():
    np.testing.assert_array_equal(_flat(loaded)[k], v)
  lora = LoRA(rank=2)
  lora_path = lora.save_artifact(
      lora.init_trainable(jax.random.key(0), t5, None, None),
      tmp_path / "lora.npz")
  other_width = models.EncoderDecoderLM(testing.tiny_t5_config(
      num_encoder_layers=1, num_decoder_layers=1))  # H = 16.
  for file, lm in ((path, llama), (lora_path, t5), (path, other_width)):
    with pytest.raises(ValueError) as e:
      method.load_artifact(file, lm)
    assert str(file) in str(e.value) and "\n" not in str(e.value)


def test_settings_are_json_and_the_registry_entry():
  method = Adapters(config="pfeiffer", reduction_factor=8)
  settings = method.settings()
  assert json.loads(json.dumps(settings)) == settings
  assert settings == {"method": "adapters", "adapters_config": "pfeiffer",
                      "adapters_reduction_factor": 8,
                      "adapters_activation": "relu",
                      "adapters_cross_attention": False}
  assert METHODS["adapters"] is Adapters
  assert Adapters.artifact_dir == "adapters"


def test_gin_file_builds_the_method_and_replaces_the_optimizer():
  gin_utils.parse(
      ["runs/prompt_train.gin", "models/t5_1_1_tiny.gin",
       "methods/adapters.gin"],
      ["MODEL_DIR='/tmp/x'", "TRAIN_STEPS=10",
       "MIXTURE_OR_TASK_NAME='sst2_v100'",
       "TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}",
       "ADAPTERS_CONFIG='pfeiffer'", "ADAPTERS_REDUCTION_FACTOR=4",
       "ADAPTERS_ACTIVATION='silu'"])
  assert "METHOD = @adapters.Adapters()" in gin.config_str()
  assert gin.get_configurable(Adapters)() == Adapters(
      "pfeiffer", 4, "silu", "mam", False)
  assert gin.get_bindings(optim.make_optimizer) == {
      "name": "adamw", "learning_rate": 1e-4}
