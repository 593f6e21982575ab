"""The PEFT seams: neutral values change nothing; active ones do the math."""

import flax
import jax
import jax.numpy as jnp
import numpy as np

from prompt_jax import testing
from prompt_jax.backbones.t5 import attention
from prompt_jax.backbones.t5 import network
from prompt_jax.backbones import seams as seams_lib

CFG = testing.tiny_t5_config(num_encoder_layers=2, num_decoder_layers=2)
N, D, H, F = CFG.num_heads, CFG.head_dim, CFG.emb_dim, CFG.mlp_dim


def _setup():
  model = network.T5Transformer(CFG)
  rng = np.random.RandomState(0)
  enc = testing.padded_batch(rng, 2, 9, CFG.vocab_size, lengths=[9, 5])
  dec = testing.padded_batch(rng, 2, 6, CFG.vocab_size, start_with_pad=True)
  params = flax.core.meta.unbox(
      model.init(jax.random.key(0), enc, dec)["params"])
  return model, params, enc, dec


def _edit(params, path: str, fn):
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  flat[path] = fn(flat[path])
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def _run(model, params, enc, dec, seams=None):
  return np.asarray(model.apply({"params": params}, enc, dec, seams=seams))


def test_neutral_seams_change_nothing():
  model, params, enc, dec = _setup()
  ones = seams_lib.AttentionSeams(key_scale=jnp.ones((N, D)),
                                  value_scale=jnp.ones((N, D)))
  layer = seams_lib.LayerSeams(
      self_attention=ones, cross_attention=ones,
      mlp=seams_lib.MlpSeams(hidden_scale=jnp.ones((F,)),
                             post_fn=lambda x: x))
  seams = seams_lib.Seams(encoder_embed_fn=lambda x, m: (x, m),
                          encoder_layers=(layer, layer),
                          decoder_layers=(layer, layer))
  np.testing.assert_array_equal(_run(model, params, enc, dec, seams),
                                _run(model, params, enc, dec))


def test_low_rank_delta_equals_merged_kernel():
  model, params, enc, dec = _setup()
  rng = np.random.RandomState(1)
  a = rng.normal(size=(H, 3)).astype(np.float32)
  b = rng.normal(size=(3, N, D)).astype(np.float32) * 0.1
  delta = seams_lib.LowRankDelta(a=a, b=b, scale=0.5)
  seams = seams_lib.Seams(encoder_layers=(seams_lib.LayerSeams(
      self_attention=seams_lib.AttentionSeams(deltas={"query": delta})),))
  merged = _edit(params, "encoder/layers_0/attention/query/kernel",
                 lambda k: k + 0.5 * np.einsum("hr,rnd->hnd", a, b))
  with_delta = _run(model, params, enc, dec, seams)
  np.testing.assert_allclose(with_delta, _run(model, merged, enc, dec),
                             atol=1e-5)
  assert not np.allclose(with_delta, _run(model, params, enc, dec), atol=1e-4)


def test_activation_scales_equal_scaled_kernels():
  model, params, enc, dec = _setup()
  rng = np.random.RandomState(2)
  k_scale = rng.uniform(0.5, 1.5, (N, D)).astype(np.float32)
  h_scale = rng.uniform(0.5, 1.5, (F,)).astype(np.float32)
  seams = seams_lib.Seams(decoder_layers=(None, seams_lib.LayerSeams(
      cross_attention=seams_lib.AttentionSeams(key_scale=k_scale),
      mlp=seams_lib.MlpSeams(hidden_scale=h_scale))))
  merged = _edit(
      params, "decoder/layers_1/encoder_decoder_attention/key/kernel",
      lambda k: k * k_scale[None])
  merged = _edit(merged, "decoder/layers_1/mlp/wo/kernel",
                 lambda k: k * h_scale[:, None])
  np.testing.assert_allclose(_run(model, params, enc, dec, seams),
                             _run(model, merged, enc, dec), atol=1e-5)


def test_post_ffn_hook_is_applied():
  model, params, enc, dec = _setup()
  seams = seams_lib.Seams(encoder_layers=(seams_lib.LayerSeams(
      mlp=seams_lib.MlpSeams(post_fn=lambda x: 0.0 * x)),))
  zeroed = _edit(params, "encoder/layers_0/mlp/wo/kernel", np.zeros_like)
  np.testing.assert_allclose(_run(model, params, enc, dec, seams),
                             _run(model, zeroed, enc, dec), atol=1e-6)


def _reference_attention(p, x, mask, prefix_k, prefix_v):
  """Independent numpy attention with prepended keys/values."""
  q = np.einsum("bth,hnd->btnd", x, p["query"]["kernel"])
  k = np.einsum("bth,hnd->btnd", x, p["key"]["kernel"])
  v = np.einsum("bth,hnd->btnd", x, p["value"]["kernel"])
  k = np.concatenate([np.broadcast_to(prefix_k, (2,) + prefix_k.shape[1:]),
                      k], 1)
  v = np.concatenate([np.broadcast_to(prefix_v, (2,) + prefix_v.shape[1:]),
                      v], 1)
  full_mask = np.concatenate([np.ones((2, prefix_k.shape[1]), bool), mask], 1)
  logits = np.einsum("bqnd,bknd->bnqk", q, k)
  logits = np.where(full_mask[:, None, None, :], logits, -1e30)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out = np.einsum("bnqk,bknd->bqnd", w, v)
  return np.einsum("bqnd,ndh->bqh", out, p["out"]["kernel"])


def test_prefix_keys_values_match_reference():
  attn = attention.MultiHeadAttention(num_heads=N, head_dim=D, emb_dim=H)
  rng = np.random.RandomState(3)
  x = rng.normal(size=(2, 5, H)).astype(np.float32)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
  prefix_k = rng.normal(size=(1, 3, N, D)).astype(np.float32)
  prefix_v = rng.normal(size=(1, 3, N, D)).astype(np.float32)
  p = flax.core.meta.unbox(attn.init(jax.random.key(1), x, x,
                                     mask[:, None, None])["params"])
  s = seams_lib.AttentionSeams(prefix_key=prefix_k, prefix_value=prefix_v)
  ours = attn.apply({"params": p}, x, x, mask[:, None, None], seams=s)
  np.testing.assert_allclose(
      np.asarray(ours), _reference_attention(p, x, mask, prefix_k, prefix_v),
      atol=1e-5)


def test_encoder_embed_hook_prepends_visible_tokens():
  model, params, enc, dec = _setup()
  prompt = np.random.RandomState(4).normal(size=(3, H)).astype(np.float32)

  def prepend(x, mask):  # [B, T, H] -> [B, 3 + T, H]
    p = jnp.broadcast_to(prompt, (x.shape[0],) + prompt.shape)
    return (jnp.concatenate([p, x], 1),
            jnp.concatenate([jnp.ones((x.shape[0], 3), bool), mask], 1))

  seams = seams_lib.Seams(encoder_embed_fn=prepend)
  encoded, mask = model.apply({"params": params}, enc, seams=seams,
                              method=network.T5Transformer.encode)
  assert encoded.shape == (2, 3 + enc.shape[1], H)
  np.testing.assert_array_equal(np.asarray(mask[:, :3]), True)
  logits = _run(model, params, enc, dec, seams)
  assert not np.allclose(logits, _run(model, params, enc, dec), atol=1e-4)


def test_attention_post_fn_and_biases_act_on_their_outputs():
  model, params, enc, dec = _setup()
  zero_attn = seams_lib.Seams(decoder_layers=(seams_lib.LayerSeams(
      cross_attention=seams_lib.AttentionSeams(post_fn=lambda y: 0.0 * y)),))
  zeroed = _edit(params, "decoder/layers_0/encoder_decoder_attention/out/"
                 "kernel", np.zeros_like)
  np.testing.assert_allclose(_run(model, params, enc, dec, zero_attn),
                             _run(model, zeroed, enc, dec), atol=1e-6)
  bias = np.random.RandomState(5).normal(size=(H,)).astype(np.float32)
  as_bias = seams_lib.Seams(encoder_layers=(seams_lib.LayerSeams(
      self_attention=seams_lib.AttentionSeams(biases={"out": bias}),
      mlp=seams_lib.MlpSeams(biases={"wo": bias})),))
  as_post = seams_lib.Seams(encoder_layers=(seams_lib.LayerSeams(
      self_attention=seams_lib.AttentionSeams(post_fn=lambda y: y + bias),
      mlp=seams_lib.MlpSeams(post_fn=lambda y: y + bias)),))
  got = _run(model, params, enc, dec, as_bias)
  np.testing.assert_allclose(got, _run(model, params, enc, dec, as_post),
                             atol=1e-5)
  assert np.abs(got - _run(model, params, enc, dec)).max() > 1e-3


def test_pseudo_tokens_fill_the_encoder_embeddings():
  model, params, enc, dec = _setup()
  table = params["token_embedder"]["embedding"]
  with_pseudo = enc.copy()
  with_pseudo[:, 2] = -1
  expected = enc.copy()
  expected[:, 2] = 7

  def fill(tokens, x):
    return jnp.where((tokens < 0)[..., None], table[7], x)
  np.testing.assert_allclose(
      _run(model, params, with_pseudo, dec,
           seams_lib.Seams(pseudo_token_fn=fill)),
      _run(model, params, expected, dec), atol=1e-6)
