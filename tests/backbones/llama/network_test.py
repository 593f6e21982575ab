"""The decoder network: masking, positions, seams, axes, sizes, sharding.

Random tiny models, no reference implementation (parity with transformers is
`decoder_parity_test.py`). Full-size presets are only shape-evaluated.
"""

import functools
import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax import partitioning
from prompt_jax import types
from prompt_jax.backbones.llama import config as config_lib
from prompt_jax.backbones.llama import network
from prompt_jax.testing import llama as testing
from prompt_jax.methods.prompt_tuning import combine
from prompt_jax.backbones import seams as seams_lib

CFG = testing.tiny_decoder_config()
N, K, D, H, F = (CFG.num_heads, CFG.num_kv_heads, CFG.head_dim, CFG.emb_dim,
                 CFG.mlp_dim)


@functools.lru_cache(maxsize=None)
def _params(cfg: config_lib.DecoderConfig = CFG):
  model = network.DecoderLM(cfg)
  tokens = jnp.zeros((1, 4), jnp.int32)
  params = flax.core.meta.unbox(model.init(jax.random.key(0), tokens)["params"])
  # Larger than init so that masking mistakes show in the logits.
  return model, jax.tree.map(lambda p: p * 1.5, params)


def _ids(batch: int = 3, length: int = 7, seed: int = 0) -> np.ndarray:
  return np.random.RandomState(seed).randint(3, CFG.vocab_size,
                                             (batch, length)).astype(np.int32)


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, ids, mask, positions, seams):
  return model.apply({"params": params}, ids, mask, positions, seams=seams)


def _run(ids, mask=None, seams=None, params=None, positions=None):
  model, base = _params()
  return np.asarray(_apply(model, params or base, ids, mask, positions,
                           seams))


def _edit(params, path: str, fn):
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  flat[path] = fn(flat[path])
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def test_logits_are_causal_and_fp32():
  ids = _ids()
  changed = ids.copy()
  changed[:, 4:] = (changed[:, 4:] + 1) % CFG.vocab_size
  a, b = _run(ids), _run(changed)
  assert a.dtype == np.float32 and a.shape == (3, 7, CFG.vocab_size)
  np.testing.assert_array_equal(a[:, :4], b[:, :4])
  assert np.abs(a[:, 4:] - b[:, 4:]).max() > 1e-2


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_gives_the_unpadded_logits(side):
  ids = _ids(1, 5)
  alone = _run(ids)[0]
  pad = np.zeros((1, 3), np.int32)
  padded = np.concatenate([pad, ids] if side == "left" else [ids, pad], 1)
  mask = padded * 0 + 1
  if side == "left":
    mask[:, :3] = 0
  else:
    mask[:, 5:] = 0
  out = _run(padded, mask)[0]
  np.testing.assert_allclose(out[mask[0] == 1], alone, rtol=2e-5, atol=2e-5)


def test_explicit_positions_shift_rotary_only_relatively():
  """RoPE is relative: a uniform shift of positions leaves the logits."""
  ids = _ids(2, 6)
  pos = np.tile(np.arange(6, dtype=np.int32), (2, 1))
  np.testing.assert_allclose(_run(ids, positions=jnp.asarray(pos + 11)),
                             _run(ids), rtol=5e-5, atol=5e-5)
  assert np.abs(_run(ids, positions=jnp.asarray(pos[:, ::-1].copy()))
                - _run(ids)).max() > 1e-2


def test_neutral_seams_change_nothing():
  ids = _ids()
  mask = np.ones_like(ids)
  mask[1, 5:] = 0
  zero_prefix = jnp.zeros((1, 0, K, D))
  attn = seams_lib.AttentionSeams(
      prefix_key=zero_prefix, prefix_value=zero_prefix,
      key_scale=jnp.ones((K, D)), value_scale=jnp.ones((K, D)))
  mlp = seams_lib.MlpSeams(hidden_scale=jnp.ones((F,)), post_fn=lambda x: x)
  layer = seams_lib.LayerSeams(self_attention=attn, mlp=mlp)
  seams = seams_lib.Seams(decoder_embed_fn=lambda x, m: (x, m),
                          decoder_layers=(layer,) * CFG.num_layers)
  # Equal up to float reassociation: XLA fuses the no-op seams differently.
  np.testing.assert_allclose(_run(ids, mask, seams), _run(ids, mask),
                             rtol=1e-5, atol=5e-5)


_DELTA_SHAPES = {  # name -> (path, a shape, b shape)
    "query": ("self_attention/query", (H, 3), (3, N, D)),
    "key": ("self_attention/key", (H, 3), (3, K, D)),
    "value": ("self_attention/value", (H, 3), (3, K, D)),
    "out": ("self_attention/out", (N, D, 3), (3, H)),
    "wi_0": ("mlp/wi_0", (H, 3), (3, F)),
    "wi_1": ("mlp/wi_1", (H, 3), (3, F)),
    "wo": ("mlp/wo", (F, 3), (3, H)),
}


@pytest.mark.parametrize("name", sorted(_DELTA_SHAPES))
def test_low_rank_delta_equals_merged_kernel(name):
  path, a_shape, b_shape = _DELTA_SHAPES[name]
  rng = np.random.RandomState(1)
  a = rng.normal(size=a_shape).astype(np.float32)
  b = rng.normal(size=b_shape).astype(np.float32) * 0.1
  delta = seams_lib.LowRankDelta(a=a, b=b, scale=0.5)
  if name in ("wi_0", "wi_1", "wo"):
    layer = seams_lib.LayerSeams(mlp=seams_lib.MlpSeams(deltas={name: delta}))
  else:
    layer = seams_lib.LayerSeams(
        self_attention=seams_lib.AttentionSeams(deltas={name: delta}))
  seams = seams_lib.Seams(decoder_layers=(None, layer))
  merged = np.tensordot(a, b, axes=1) * 0.5
  params = _edit(_params()[1], f"layers_1/{path}/kernel",
                 lambda k: k + merged)
  ids = _ids()
  with_delta = _run(ids, seams=seams)
  np.testing.assert_allclose(with_delta, _run(ids, params=params), rtol=5e-5,
                             atol=5e-5)
  assert np.abs(with_delta - _run(ids)).max() > 1e-3


def test_prefix_is_per_kv_head_and_broadcasts_over_the_batch():
  ids = _ids()
  rng = np.random.RandomState(2)
  pk = rng.normal(size=(1, 2, K, D)).astype(np.float32)
  pv = rng.normal(size=(1, 2, K, D)).astype(np.float32)

  def seams(k, v):
    attn = seams_lib.AttentionSeams(prefix_key=k, prefix_value=v)
    return seams_lib.Seams(
        decoder_layers=(seams_lib.LayerSeams(self_attention=attn),))
  shared = _run(ids, seams=seams(pk, pv))
  tiled = _run(ids, seams=seams(np.tile(pk, (3, 1, 1, 1)),
                                np.tile(pv, (3, 1, 1, 1))))
  np.testing.assert_allclose(shared, tiled, rtol=1e-5, atol=1e-5)
  # Prefix slots are visible from the first token on.
  assert np.abs(shared[:, 0] - _run(ids)[:, 0]).max() > 1e-3


def test_activation_scales_act_on_their_activation():
  """value_scale 0 zeroes the attention output; hidden_scale 0 the MLP."""
  ids = _ids()
  zeros_v = seams_lib.AttentionSeams(value_scale=jnp.zeros((K, D)))
  out_zero = _edit(_params()[1], "layers_0/self_attention/out/kernel",
                   jnp.zeros_like)
  np.testing.assert_allclose(
      _run(ids, seams=seams_lib.Seams(decoder_layers=(
          seams_lib.LayerSeams(self_attention=zeros_v),))),
      _run(ids, params=out_zero), rtol=2e-5, atol=2e-5)
  hidden_zero = seams_lib.MlpSeams(hidden_scale=jnp.zeros((F,)))
  wo_zero = _edit(_params()[1], "layers_2/mlp/wo/kernel", jnp.zeros_like)
  np.testing.assert_allclose(
      _run(ids, seams=seams_lib.Seams(decoder_layers=(
          None, None, seams_lib.LayerSeams(mlp=hidden_zero)))),
      _run(ids, params=wo_zero), rtol=2e-5, atol=2e-5)


def test_soft_prompt_equals_the_tokens_it_embeds():
  """A prompt made of token embeddings acts exactly like those tokens."""
  ids, prompt_ids = _ids(), _ids(1, 4, seed=3)[0]
  mask = np.ones_like(ids)
  mask[2, 3:] = 0
  prompt = _params()[1]["token_embedder"]["embedding"][prompt_ids]
  seams = seams_lib.Seams(
      decoder_embed_fn=lambda x, m: combine.prefix(prompt, x, m))
  with_prompt = _run(ids, mask, seams)
  as_tokens = _run(np.concatenate([np.tile(prompt_ids, (3, 1)), ids], 1),
                   np.concatenate([np.ones((3, 4), int), mask], 1))
  assert with_prompt.shape == (3, 4 + 7, CFG.vocab_size)
  np.testing.assert_allclose(with_prompt, as_tokens, rtol=2e-5, atol=2e-5)
  with pytest.raises(ValueError, match="after the embed hook"):
    _run(ids, mask, seams, positions=jnp.zeros(ids.shape, jnp.int32))


def test_untied_head_and_bf16():
  cfg = CFG.replace(tie_word_embeddings=False)
  model, params = _params(cfg)
  assert "logits_dense" in params
  ids = jnp.asarray(_ids())
  fp32 = model.apply({"params": params}, ids)
  bf16 = network.DecoderLM(cfg.replace(dtype=jnp.bfloat16)).apply(
      {"params": params}, ids)
  assert bf16.dtype == jnp.float32
  scale = float(jnp.abs(fp32).max())
  assert float(jnp.abs(bf16 - fp32).max()) < 0.05 * scale


def test_every_param_has_known_logical_axes():
  abstract = partitioning.abstract_variables(
      network.DecoderLM(CFG), (jax.ShapeDtypeStruct((1, 1), jnp.int32),))
  boxes = jax.tree.leaves(abstract["params"],
                          is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert boxes and all(isinstance(b, nn.Partitioned) for b in boxes)
  names = {n for b in boxes for n in b.names}
  assert names <= set(types.ALL_AXES)
  for parallelism in partitioning.PARALLELISMS:
    rules = partitioning.standard_logical_axis_rules(parallelism)
    assert not partitioning.missing_axes(rules, sorted(names))


def test_sharded_forward_equals_single_device():
  """Model-parallel heads (4 query, 2 kv over 2 devices), batch over 4."""
  cfg = CFG.replace(num_heads=4, num_kv_heads=2, mlp_dim=48)
  model, params = _params(cfg)
  mesh = partitioning.make_mesh(4, 2)
  rules = partitioning.standard_logical_axis_rules("2d")
  abstract = partitioning.abstract_variables(
      model, (jax.ShapeDtypeStruct((1, 1), jnp.int32),))["params"]
  shardings = partitioning.param_shardings(abstract, mesh, rules)
  sharded = jax.device_put(params, shardings)
  ids = jnp.asarray(_ids(8, 5))
  forward = partitioning.jit_sharded(
      lambda p, t: model.apply({"params": p}, t), mesh, rules)
  # Sharded contractions sum in another order.
  np.testing.assert_allclose(np.asarray(forward(sharded, ids)),
                             np.asarray(model.apply({"params": params}, ids)),
                             rtol=2e-5, atol=2e-4)
  kernel = sharded["layers_0"]["self_attention"]["key"]["kernel"]
  assert kernel.sharding.spec[1] == partitioning.MODEL


# HF `LlamaForCausalLM.num_parameters()` of each preset (the Hugging Face
# model cards: SmolLM2-135M 134.5M, Llama-3.2-1B 1.24B, Llama-3-8B 8.03B).
_PUBLISHED = {
    "smollm2_135m": 134_515_008,
    "llama3_2_1b": 1_235_814_400,
    "llama3_8b": 8_030_261_248,
}


@pytest.mark.parametrize("name", sorted(_PUBLISHED))
def test_parameter_count_matches_hf(name):
  cfg = config_lib.PRESETS[name]
  abstract = partitioning.abstract_variables(
      network.DecoderLM(cfg), (jax.ShapeDtypeStruct((1, 1), jnp.int32),))
  count = sum(math.prod(x.shape) for x in
              jax.tree.leaves(flax.core.meta.unbox(abstract["params"])))
  assert count == _PUBLISHED[name]


def test_smollm2_count_matches_transformers_on_meta_device():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  hf_cfg = transformers.LlamaConfig(
      **config_lib.to_hf_config(config_lib.PRESETS["smollm2_135m"]))
  with torch.device("meta"):
    model = transformers.LlamaForCausalLM(hf_cfg)
  assert model.num_parameters() == _PUBLISHED["smollm2_135m"]


def test_attention_post_fn_and_biases_act_on_their_outputs():
  """post_fn 0 on attention = zero out kernel; a bias on `out`/`wo` is the
  same as a post_fn adding it."""
  ids = _ids()
  zero_attn = seams_lib.Seams(decoder_layers=(seams_lib.LayerSeams(
      self_attention=seams_lib.AttentionSeams(post_fn=lambda y: 0.0 * y)),))
  out_zero = _edit(_params()[1], "layers_0/self_attention/out/kernel",
                   jnp.zeros_like)
  np.testing.assert_allclose(_run(ids, seams=zero_attn),
                             _run(ids, params=out_zero), rtol=2e-5, atol=2e-5)
  bias = np.random.RandomState(5).normal(size=(H,)).astype(np.float32)
  as_bias = seams_lib.Seams(decoder_layers=(None, seams_lib.LayerSeams(
      self_attention=seams_lib.AttentionSeams(biases={"out": bias}),
      mlp=seams_lib.MlpSeams(biases={"wo": bias}))))
  as_post = seams_lib.Seams(decoder_layers=(None, seams_lib.LayerSeams(
      self_attention=seams_lib.AttentionSeams(post_fn=lambda y: y + bias),
      mlp=seams_lib.MlpSeams(post_fn=lambda y: y + bias))))
  got = _run(ids, seams=as_bias)
  np.testing.assert_allclose(got, _run(ids, seams=as_post), rtol=2e-5,
                             atol=2e-5)
  assert np.abs(got - _run(ids)).max() > 1e-3


def test_pseudo_tokens_and_position_offset():
  """Negative ids take the rows pseudo_token_fn writes (here: the embedding
  rows of real ids, so the logits equal those tokens'); position_offset
  equals explicit shifted positions."""
  ids = _ids()
  table = _params()[1]["token_embedder"]["embedding"]
  real = np.array([5, 9], np.int32)
  with_pseudo = ids.copy()
  with_pseudo[:, 1], with_pseudo[:, 4] = -1, -2

  def fill(tokens, x):
    rows = jnp.asarray(table)[real][jnp.clip(-1 - tokens, 0, 1)]
    return jnp.where((tokens < 0)[..., None], rows, x)
  expected = ids.copy()
  expected[:, 1], expected[:, 4] = real
  np.testing.assert_allclose(
      _run(with_pseudo, seams=seams_lib.Seams(pseudo_token_fn=fill)),
      _run(expected), rtol=2e-5, atol=2e-5)
  pos = np.tile(np.arange(ids.shape[1]), (ids.shape[0], 1)) + 4
  np.testing.assert_allclose(
      _run(ids, seams=seams_lib.Seams(position_offset=4)),
      _run(ids, positions=jnp.asarray(pos, jnp.int32)), rtol=1e-6, atol=1e-6)


def test_low_rank_delta_gate_scales_the_update_per_row():
  """gate 0 removes the delta; a per-row gate g equals the delta's scale
  times g (row 0 at 1, row 1 at 0.25)."""
  rng = np.random.RandomState(6)
  a = rng.normal(size=(H, 3)).astype(np.float32)
  b = rng.normal(size=(3, N, D)).astype(np.float32) * 0.1
  ids = _ids(2)

  def seams(scale, gate=None):
    delta = seams_lib.LowRankDelta(a=a, b=b, scale=scale, gate=gate)
    return seams_lib.Seams(decoder_layers=(seams_lib.LayerSeams(
        self_attention=seams_lib.AttentionSeams(deltas={"query": delta})),))
  np.testing.assert_allclose(
      _run(ids, seams=seams(0.5, lambda x: jnp.zeros(x.shape[:2]))),
      _run(ids), rtol=1e-6, atol=1e-6)
  gated = _run(ids, seams=seams(
      1.0, lambda x: jnp.array([[1.0], [0.25]]) * jnp.ones(x.shape[:2])))
  np.testing.assert_allclose(gated[0], _run(ids, seams=seams(1.0))[0],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gated[1], _run(ids, seams=seams(0.25))[1],
                             rtol=1e-5, atol=1e-5)


def test_prefix_gate_weighs_the_prefix_slots():
  """gate 1 is the plain prefix; gate ~0 removes it; gate g equals a
  prefix whose slots count g times (here: the prefix duplicated, g = 2
  would double it; 0.5 on a duplicated prefix equals the single one)."""
  ids = _ids()
  rng = np.random.RandomState(7)
  pk = rng.normal(size=(1, 2, K, D)).astype(np.float32)
  pv = rng.normal(size=(1, 2, K, D)).astype(np.float32)

  def seams(k, v, gate=None):
    attn = seams_lib.AttentionSeams(prefix_key=k, prefix_value=v,
                                    prefix_gate=gate)
    return seams_lib.Seams(
        decoder_layers=(seams_lib.LayerSeams(self_attention=attn),))
  plain = _run(ids, seams=seams(pk, pv))
  ones = lambda x: jnp.ones(x.shape[:2])
  np.testing.assert_allclose(_run(ids, seams=seams(pk, pv, ones)), plain,
                             rtol=1e-6, atol=1e-6)
  tiny = lambda x: jnp.full(x.shape[:2], 1e-30)
  np.testing.assert_allclose(_run(ids, seams=seams(pk, pv, tiny)),
                             _run(ids), rtol=1e-4, atol=1e-4)
  half = lambda x: jnp.full(x.shape[:2], 0.5)
  twice = seams(np.concatenate([pk, pk], 1), np.concatenate([pv, pv], 1),
                half)
  np.testing.assert_allclose(_run(ids, seams=twice), plain, rtol=1e-4,
                             atol=1e-4)
  assert np.abs(plain - _run(ids)).max() > 1e-2
