"""Tests of prompt_jax.partitioning on the 8 fake CPU devices of conftest.

A tiny T5 (dims divisible by 8, so sharding really happens) runs on 8x1,
2x4 and 1x8 meshes and must match the unsharded model; parameters must be
really split across devices and activation constraints really present.
"""

import flax.core.meta
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from prompt_jax import partitioning
from prompt_jax import types
from prompt_jax.backbones.t5 import config as config_lib
from prompt_jax.backbones.t5 import network

B, T_IN, T_OUT = 8, 6, 5
_CFG = config_lib.T5Config(
    vocab_size=128, emb_dim=16, num_heads=8, head_dim=4, mlp_dim=32,
    num_encoder_layers=1, num_decoder_layers=1,
    relative_attention_num_buckets=8, relative_attention_max_distance=16)


@pytest.fixture(scope="module")
def model():
  return network.T5Transformer(_CFG)


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  enc = rng.integers(2, _CFG.vocab_size, (B, T_IN)).astype(np.int32)
  enc[:, -2:] = 0  # Padding, so the encoder mask matters.
  dec = rng.integers(2, _CFG.vocab_size, (B, T_OUT)).astype(np.int32)
  return {"encoder_input_tokens": jnp.asarray(enc),
          "decoder_input_tokens": jnp.asarray(dec),
          "encoder_mask": jnp.asarray(enc != 0)}


@pytest.fixture(scope="module")
def reference(model, batch):
  """Unsharded params (same key as the sharded init) and their logits."""
  enc, dec = batch["encoder_input_tokens"], batch["decoder_input_tokens"]
  params = jax.jit(lambda k: flax.core.meta.unbox(
      model.init(k, enc[:1, :1], dec[:1, :1])["params"]))(jax.random.key(0))
  logits = jax.jit(lambda p: model.apply(
      {"params": p}, enc, dec, batch["encoder_mask"]))(params)
  return params, np.asarray(logits)


# ------------------------------------------------------------- meshes ----


def test_make_mesh_axes_and_shape():
  mesh = partitioning.make_mesh(2, 4)
  assert mesh.axis_names == ("data", "model")
  assert dict(mesh.shape) == {"data": 2, "model": 4}
  assert list(mesh.devices.flat) == jax.devices()


@pytest.mark.parametrize("data,model", [(3, 2), (8, 2), (0, 8)])
def test_make_mesh_bad_shape_is_one_line_error(data, model):
  with pytest.raises(ValueError, match=r"needs \d+ devices, but 8") as e:
    partitioning.make_mesh(data, model)
  assert "\n" not in str(e.value)


# -------------------------------------------------------------- rules ----


@pytest.mark.parametrize("parallelism", partitioning.PARALLELISMS)
def test_rules_cover_every_logical_axis(parallelism):
  rules = partitioning.standard_logical_axis_rules(parallelism)
  assert partitioning.missing_axes(rules) == []
  assert partitioning.missing_axes(rules[:-1]) == [types.CACHE_LENGTH]


@pytest.mark.parametrize("parallelism", partitioning.PARALLELISMS)
def test_rules_cover_every_axis_the_model_uses(parallelism):
  rules = partitioning.standard_logical_axis_rules(parallelism)
  abstract = partitioning.abstract_variables(
      network.T5Transformer(_CFG.replace(logits_via_embedding=False)))
  specs = jax.tree.leaves(nn.get_partition_spec(abstract["params"]),
                          is_leaf=lambda x: isinstance(x, P))
  used = {a for spec in specs for a in spec}
  assert used >= {types.EMBED, types.MLP, types.HEADS, types.KV, types.VOCAB,
                  types.RELPOS_BUCKETS}
  assert used <= set(types.ALL_AXES)
  assert partitioning.missing_axes(rules, sorted(used)) == []


@pytest.mark.parametrize("parallelism,param,activation,logits", [
    ("data", (None, None), ("data", None, None), ("data", None, None)),
    ("model", (None, "model"), ("data", None, "model"),
     ("data", None, "model")),
    ("2d", ("data", "model"), ("data", None, "model"),
     ("data", None, "model")),
])
def test_rules_map_axes(parallelism, param, activation, logits):
  rules = partitioning.standard_logical_axis_rules(parallelism)
  resolve = lambda axes: tuple(nn.logical_to_mesh_axes(axes, rules))
  assert resolve((types.EMBED, types.MLP)) == param
  assert resolve((types.BATCH, types.LENGTH, types.MLP)) == activation
  assert resolve((types.BATCH, types.LENGTH, types.VOCAB)) == logits
  # The residual stream keeps embed whole, even when params shard it.
  assert resolve((types.BATCH, types.LENGTH, types.EMBED)) == (
      "data", None, None)
  assert resolve((types.PROMPT, types.PROMPT_EMBED)) == (None, None)


def test_prompt_rules_replicate():
  rules = dict(partitioning.prompt_rules())
  assert rules == {types.PROMPT: None, types.PROMPT_EMBED: None,
                   types.RANK: None, types.RELPOS_BUCKETS: None,
                   types.CACHE_LENGTH: None}


def test_additional_rules_take_precedence():
  rules = partitioning.standard_logical_axis_rules(
      "model", additional_rules=((types.PROMPT_EMBED, "model"),))
  assert tuple(nn.logical_to_mesh_axes(
      (types.PROMPT, types.PROMPT_EMBED), rules)) == (None, "model")


def test_unknown_parallelism():
  with pytest.raises(ValueError, match="parallelism='3d'"):
    partitioning.standard_logical_axis_rules("3d")


# ---------------------------------------------------------- shardings ----


def test_fit_spec_replicates_only_indivisible_dims():
  mesh = partitioning.make_mesh(2, 4)
  fit = lambda spec, shape: tuple(partitioning.fit_spec(spec, shape, mesh))
  assert fit(P("data", "model"), (6, 6)) == ("data", None)
  assert fit(P(("data", "model"), None), (16, 3)) == (("data", "model"), None)
  assert fit(P(("data", "model")), (12, 5)) == (None, None)


def test_param_shardings_fall_back_for_six_heads():
  cfg = _CFG.replace(num_heads=6)
  mesh = partitioning.make_mesh(1, 8)
  abstract = partitioning.abstract_variables(network.T5Transformer(cfg))
  shardings = partitioning.param_shardings(
      abstract["params"], mesh, partitioning.standard_logical_axis_rules())
  layer = shardings["encoder"]["layers_0"]
  assert tuple(layer["attention"]["query"]["kernel"].spec) == (
      None, None, None)
  assert tuple(layer["mlp"]["wi_0"]["kernel"].spec) == (None, "model")
  assert tuple(shardings["encoder"]["relpos_bias"]["rel_embedding"].spec) == (
      None, None)


# (data, model, parallelism, wi_0 shard, embedding shard, logits shard)
_MESHES = [
    (8, 1, "data", (16, 32), (128, 16), (1, T_OUT, 128)),
    (2, 4, "model", (16, 8), (32, 16), (4, T_OUT, 32)),
    (2, 4, "2d", (8, 8), (32, 8), (4, T_OUT, 32)),
    (1, 8, "model", (16, 4), (16, 16), (8, T_OUT, 16)),
]


@pytest.mark.parametrize("data,model_size,parallelism,wi_shard,emb_shard,"
                         "logits_shard", _MESHES)
def test_sharded_forward_matches_unsharded(
    model, batch, reference, data, model_size, parallelism, wi_shard,
    emb_shard, logits_shard):
  ref_params, ref_logits = reference
  mesh = partitioning.make_mesh(data, model_size)
  rules = partitioning.standard_logical_axis_rules(parallelism)
  params = partitioning.init_params(model, jax.random.key(0), mesh, rules)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               params, ref_params)

  wi = params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]  # [H, F]
  assert wi.addressable_shards[0].data.shape == wi_shard
  emb = params["token_embedder"]["embedding"]  # [V, H]
  assert emb.addressable_shards[0].data.shape == emb_shard
  assert len(wi.sharding.device_set) == 8

  forward = partitioning.jit_forward(model, mesh, rules,
                                     partitioning.shardings_of(params))
  logits = forward(params, batch)
  np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
  assert logits.addressable_shards[0].data.shape == logits_shard
  assert tuple(logits.sharding.spec) == (
      "data", None, "model" if model_size > 1 else None)


def test_activation_constraints_are_present(model, batch, reference):
  params = reference[0]
  mesh = partitioning.make_mesh(2, 4)
  rules = partitioning.standard_logical_axis_rules("model")
  shardings = partitioning.param_shardings(
      partitioning.abstract_variables(model)["params"], mesh, rules)
  forward = partitioning.jit_forward(model, mesh, rules, shardings)
  text = forward.lower(params, batch).as_text()
  constraints = [l for l in text.splitlines() if "sharding_constraint" in l]
  # [B, T, N, D] attention activations split over heads on 'model'.
  heads = [l for l in constraints
           if f"tensor<{B}x{T_IN}x8x4x" in l and '"model"' in l]
  assert len(heads) >= 4, "\n".join(constraints)
  # The same function jitted plainly gets no constraints: Flax drops them
  # without a mesh and rules in context, which MeshJitted provides.
  plain = jax.jit(lambda p, b: model.apply(
      {"params": p}, b["encoder_input_tokens"], b["decoder_input_tokens"]))
  assert "sharding_constraint" not in plain.lower(params, batch).as_text()
  # No context leaks out of the call.
  assert jax.sharding.get_abstract_mesh().empty
  assert not nn.get_logical_axis_rules()


def test_with_sharding_constraint_is_not_a_noop_on_cpu():
  mesh = partitioning.make_mesh(2, 4)
  rules = partitioning.standard_logical_axis_rules("model")
  x = jnp.arange(8 * 3 * 16, dtype=jnp.float32).reshape(8, 3, 16)

  @jax.jit
  def f(x):
    return partitioning.with_sharding_constraint(
        x * 2, (types.BATCH, types.LENGTH, types.MLP), mesh, rules)

  y = f(x)
  assert tuple(y.sharding.spec) == ("data", None, "model")
  assert y.addressable_shards[0].data.shape == (4, 3, 4)
  np.testing.assert_array_equal(y, x * 2)


def test_with_sharding_constraint_uses_context_or_raises():
  mesh = partitioning.make_mesh(2, 4)
  rules = partitioning.standard_logical_axis_rules("model")
  x = jnp.ones((8, 16))
  f = partitioning.jit_sharded(
      lambda x: partitioning.with_sharding_constraint(
          x, (types.BATCH, types.MLP)), mesh, rules)
  assert tuple(f(x).sharding.spec) == ("data", "model")
  with pytest.raises(ValueError, match="no mesh"):
    partitioning.with_sharding_constraint(x, (types.BATCH, types.MLP))
  with pytest.raises(ValueError, match="no logical axis rules"):
    partitioning.with_sharding_constraint(x, (types.BATCH, types.MLP), mesh)


def test_mesh_jitted_nests_and_rejects_a_foreign_trace():
  mesh = partitioning.make_mesh(2, 4)
  rules = partitioning.standard_logical_axis_rules("model")
  inner = partitioning.jit_sharded(
      lambda x: nn.with_logical_constraint(x, (types.BATCH, types.MLP)),
      mesh, rules)
  outer = partitioning.jit_sharded(lambda x: inner(x) + 1, mesh, rules)
  text = outer.lower(jnp.ones((8, 16))).as_text()
  assert '[{"data"}, {"model"}]' in text
  with pytest.raises(ValueError, match="traced without this mesh"):
    jax.jit(inner)(jnp.ones((8, 16)))
