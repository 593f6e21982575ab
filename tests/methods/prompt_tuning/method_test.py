"""A soft prompt on a tiny random T5: identity, virtual-token parity, grads.

The parity check does not use the embedding seam at all: a prompt is
equivalent to P extra "virtual" vocabulary rows whose ids are placed where
the prompt goes. So the reference run appends the prompt to the embedding
table (and P dead columns to the untied head), inserts ids V..V+P-1 by hand
in numpy, and runs the plain backbone.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax import testing
from prompt_jax.methods.prompt_tuning import combine
from prompt_jax.methods.prompt_tuning import initializers
from prompt_jax.methods.prompt_tuning import modules
from prompt_jax.backbones.t5 import network

CFG = testing.tiny_t5_config()
P = 3
LENGTHS = [9, 5]


@pytest.fixture(scope="module")
def setup():
  model = network.T5Transformer(CFG)
  rng = np.random.RandomState(0)
  enc = testing.padded_batch(rng, 2, 9, CFG.vocab_size, lengths=LENGTHS)
  dec = testing.padded_batch(rng, 2, 6, CFG.vocab_size, start_with_pad=True)
  params = flax.core.meta.unbox(
      model.init(jax.random.key(0), enc, dec)["params"])
  return model, params, enc, dec


def _prompt(length: int, seed: int = 1) -> jax.Array:
  module = modules.Prompt(length, CFG.emb_dim, initializers.random_uniform())
  return flax.core.meta.unbox(
      module.init(jax.random.key(seed)))["params"]["prompt"]


def _logits(model, params, enc, dec, seams=None):
  return np.asarray(model.apply({"params": params}, enc, dec, seams=seams))


def _with_virtual_tokens(params, prompt):
  """Params of a backbone whose vocabulary has the prompt as rows V..V+P-1."""
  params = jax.tree.map(lambda a: a, params)  # Shallow copy of the dicts.
  table = params["token_embedder"]["embedding"]
  params["token_embedder"] = {"embedding": jnp.concatenate([table, prompt])}
  kernel = params["decoder"]["logits_dense"]["kernel"]  # [H, V]
  params["decoder"] = dict(params["decoder"], logits_dense={
      "kernel": jnp.concatenate([kernel, jnp.zeros((CFG.emb_dim, P))], 1)})
  return params


def _insert_ids(enc: np.ndarray, where: str) -> np.ndarray:
  """Inserts ids V..V+P-1 before the text or after its last real token."""
  ids = np.arange(CFG.vocab_size, CFG.vocab_size + P)
  rows = []
  for row, n in zip(enc, LENGTHS):
    at = 0 if where == "prefix" else n
    rows.append(np.concatenate([row[:at], ids, row[at:]]))
  return np.stack(rows).astype(np.int32)


@pytest.mark.parametrize("fn", [combine.prefix, combine.suffix])
def test_zero_length_prompt_is_the_backbone(setup, fn):
  model, params, enc, dec = setup
  seams = combine.encoder_prompt_seams(_prompt(0), fn)
  np.testing.assert_array_equal(_logits(model, params, enc, dec, seams),
                                _logits(model, params, enc, dec))


@pytest.mark.parametrize("where", ["prefix", "suffix"])
def test_prompt_equals_virtual_tokens(setup, where):
  model, params, enc, dec = setup
  prompt = _prompt(P)
  seams = combine.encoder_prompt_seams(prompt, getattr(combine, where))
  got = jax.jit(lambda p, e, d: model.apply(
      {"params": p}, e, d,
      seams=combine.encoder_prompt_seams(prompt, getattr(combine, where))))(
          params, enc, dec)
  eager = _logits(model, params, enc, dec, seams)
  big = network.T5Transformer(CFG.replace(vocab_size=CFG.vocab_size + P))
  want = _logits(big, _with_virtual_tokens(params, prompt),
                 _insert_ids(enc, where), dec)[..., :CFG.vocab_size]
  np.testing.assert_allclose(eager, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  assert not np.allclose(want, _logits(model, params, enc, dec), atol=1e-3)


def test_prefix_and_suffix_differ(setup):
  model, params, enc, dec = setup
  prompt = _prompt(P)
  pre = _logits(model, params, enc, dec,
                combine.encoder_prompt_seams(prompt, combine.prefix))
  suf = _logits(model, params, enc, dec,
                combine.encoder_prompt_seams(prompt, combine.suffix))
  assert not np.allclose(pre, suf, atol=1e-3)


def test_encode_returns_extended_mask(setup):
  model, params, enc, _ = setup
  seams = combine.encoder_prompt_seams(_prompt(P), combine.suffix)
  encoded, mask = model.apply({"params": params}, enc, seams=seams,
                              method=network.T5Transformer.encode)
  assert encoded.shape == (2, 9 + P, CFG.emb_dim)
  np.testing.assert_array_equal(mask, _insert_ids(enc, "suffix") != 0)


def test_bf16_activations_get_a_bf16_prompt(setup):
  _, params, enc, dec = setup
  model = network.T5Transformer(CFG.replace(dtype=jnp.bfloat16))
  seen = {}

  def spy(prompt, x, mask):
    seen["dtypes"] = (prompt.dtype, x.dtype)
    return combine.prefix(prompt, x, mask)

  logits = _logits(model, params, enc, dec,
                   combine.encoder_prompt_seams(_prompt(P), spy))
  assert seen["dtypes"] == (jnp.bfloat16, jnp.bfloat16)
  assert np.isfinite(logits).all()


def _loss(prompt, params, model, enc, dec, targets, fn):
  logits = model.apply({"params": params}, enc, dec,
                       seams=combine.encoder_prompt_seams(prompt, fn))
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], -1))


def _eqn_shapes(jaxpr) -> set[tuple[int, ...]]:
  """Shapes of all values computed anywhere in a jaxpr (sub-jaxprs too)."""
  shapes = set()
  for eqn in jaxpr.eqns:
    shapes.update(tuple(v.aval.shape) for v in eqn.outvars)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          shapes |= _eqn_shapes(inner)
  return shapes


@pytest.mark.parametrize("fn", [combine.prefix, combine.suffix])
def test_grad_only_wrt_prompt(setup, fn):
  model, params, enc, dec = setup
  targets = np.random.RandomState(3).randint(2, CFG.vocab_size, dec.shape)
  prompt = _prompt(P)
  args = (params, model, enc, dec, targets, fn)
  grad_fn = jax.grad(lambda p: _loss(p, *args))
  grad = grad_fn(prompt)
  assert isinstance(grad, jax.Array) and grad.shape == prompt.shape
  assert np.isfinite(grad).all() and np.abs(grad).max() > 0
  # Backbone-shaped values in the backward pass would be backbone grads:
  # none may appear beyond those the forward pass already computes.
  param_shapes = {tuple(a.shape) for a in jax.tree.leaves(params)}
  forward = _eqn_shapes(jax.make_jaxpr(lambda p: _loss(p, *args))(prompt))
  backward = _eqn_shapes(jax.make_jaxpr(grad_fn)(prompt))
  assert (backward & param_shapes) <= forward
  # The detector is real: differentiating the backbone too trips it.
  full = jax.grad(lambda p, b: _loss(p, b, *args[1:]), argnums=(0, 1))
  assert (_eqn_shapes(jax.make_jaxpr(full)(prompt, params)) & param_shapes
          ) - forward
