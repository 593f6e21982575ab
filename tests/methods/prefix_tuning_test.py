"""Prefix tuning: parity with Hugging Face PEFT, a NumPy reference, caching,
the artifact, shapes, errors and the gin file.

PEFT parity: the same random weights in our backbone and in a transformers
model wrapped by `peft.get_peft_model(PrefixTuningConfig)`, PEFT's own
random prefix parameters imported into ours (`peft_format`), right-padded
batches with an attention mask; logits and the gradients of
`sum(logits * W)` w.r.t. the prefix parameters are compared. Llama has
grouped-query attention (6 query / 2 kv heads, so PEFT's `token_dim` is
K * D = 16, not the hidden size 48); T5 runs in 'peft_compat' mode with 3
encoder and 2 decoder layers (decoder layer 1 reads PEFT slot 2).
"""

from typing import Any, NamedTuple

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
from prompt_jax import partitioning
from prompt_jax import testing
from prompt_jax import types
from prompt_jax.backbones.llama.config import DecoderConfig
from prompt_jax.methods import METHODS
from prompt_jax.methods import base
from prompt_jax.methods.prefix_tuning import PrefixTuning
from prompt_jax.methods.prefix_tuning import layout as layout_lib
from prompt_jax.methods.prefix_tuning import peft_format
from prompt_jax.testing import llama as llama_testing

P = 3
LOGITS_REL_BOUND = 1e-5  # max |ours - PEFT| / max |PEFT| over valid slots.
GRAD_REL_BOUND = 1e-4  # per leaf, relative to the leaf's max |PEFT grad|.
CASES = [("llama", False), ("llama", True), ("t5", False), ("t5", True)]


def _flat(tree: Any) -> dict[str, Any]:
  return flax.traverse_util.flatten_dict(tree, sep="/")


class Setup(NamedTuple):
  lm: Any
  method: PrefixTuning
  params: Any
  trainable: Any  # PEFT's random prefix parameters, imported.
  logits_fn: Any  # (params, seams) -> logits.
  valid: np.ndarray  # [B, T] slots compared.
  ours: dict[str, Any]
  ref: dict[str, Any]


def _llama(rng):
  cfg = llama_testing.tiny_decoder_config(num_heads=6, num_kv_heads=2,
                                          emb_dim=48, num_layers=2)
  hf, params = llama_testing.random_hf_llama(cfg, seed=3)
  ids = rng.randint(3, cfg.vocab_size, (2, 8)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 5:] = 0  # Right padding.
  ids = ids * mask
  lm = models.DecoderOnlyLM(cfg)
  kwargs = dict(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask))
  fn = lambda p, s: lm.module.apply({"params": p}, ids, mask.astype(bool),
                                    seams=s)
  return hf, params, lm, kwargs, fn, mask.astype(bool), "CAUSAL_LM"


def _t5(rng):
  hf, cfg, params = testing.random_hf_t5("t5_1_1")
  enc = testing.padded_batch(rng, 2, 10, cfg.vocab_size, lengths=[10, 6])
  dec = testing.padded_batch(rng, 2, 5, cfg.vocab_size, start_with_pad=True)
  lm = models.EncoderDecoderLM(cfg)
  kwargs = dict(input_ids=torch.tensor(enc, dtype=torch.long),
                attention_mask=torch.tensor(enc != 0),
                decoder_input_ids=torch.tensor(dec, dtype=torch.long))
  batch = {"encoder_input_tokens": enc, "decoder_input_tokens": dec}
  fn = lambda p, s: lm.logits(p, batch, seams=s)
  return (hf, params, lm, kwargs, fn, np.ones(dec.shape, bool),
          "SEQ_2_SEQ_LM")


def _peft_run(hf, task, projection, kwargs, weights):
  """(named prefix params, logits, grads, saved prompt_embeddings)."""
  model = peft.get_peft_model(hf, peft.PrefixTuningConfig(
      task_type=task, num_virtual_tokens=P, prefix_projection=projection))
  logits = model(**kwargs).logits
  (logits * torch.tensor(weights)).sum().backward()
  trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
  saved = peft.get_peft_model_state_dict(model)["prompt_embeddings"]
  return ({n: p.detach().numpy() for n, p in trained},
          logits.detach().numpy(), {n: p.grad.numpy() for n, p in trained},
          saved.numpy())


@pytest.fixture(scope="module", params=CASES,
                ids=[f"{f}-{'proj' if p else 'plain'}" for f, p in CASES])
def setup(request) -> Setup:
  family, projection = request.param
  hf, params, lm, kwargs, fn, valid, task = (_llama if family == "llama"
                                             else _t5)(np.random.RandomState(0))
  mode = "peft_compat" if family == "t5" else None
  method = PrefixTuning(P, projection=projection, mode=mode)
  shape = jax.eval_shape(fn, params, models.Seams()).shape
  weights = np.random.RandomState(1).standard_normal(shape).astype(
      np.float32) * valid[..., None]
  named, ref_logits, ref_grads, saved = _peft_run(hf, task, projection,
                                                  kwargs, weights)
  abstract = base.abstract_values(method, lm)
  trainable = peft_format.from_peft_params(named, abstract)

  def loss(trainable, params):
    logits = fn(*method.bind(lm, trainable, params))
    return jnp.sum(logits * weights), logits

  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      trainable, params)
  ours = dict(logits=np.asarray(logits), grads=grads,
              bare=np.asarray(fn(params, models.Seams())))
  if family == "t5" and not projection:  # Prefix slots without HF's biases.
    _, seams = method.bind(lm, trainable, params)
    ours["no_offset"] = np.asarray(jax.jit(fn)(
        params, seams.replace(position_offset=0)))
  ref = dict(logits=ref_logits, saved=saved,
             grads=peft_format.from_peft_params(ref_grads, abstract))
  return Setup(lm, method, params, trainable, fn, valid, ours, ref)


def _rel(ours, ref):
  return np.abs(ours - ref).max() / np.abs(ref).max()


def test_logits_match_peft(setup):
  ref = setup.ref["logits"][setup.valid]
  err = _rel(setup.ours["logits"][setup.valid], ref)
  print(f"{setup.lm.family}: max |ours - PEFT| / max |PEFT| = {err:.2e}")
  assert err <= LOGITS_REL_BOUND
  assert np.abs(setup.ours["bare"][setup.valid] - ref).max() > 1e-2
  if "no_offset" in setup.ours:  # HF T5 gives the prefix relative biases.
    assert np.abs(setup.ours["no_offset"][setup.valid] - ref).max() > 1e-3


def test_gradients_match_peft(setup):
  ours, ref = _flat(setup.ours["grads"]), _flat(setup.ref["grads"])
  assert ours.keys() == ref.keys()
  errors = {k: _rel(np.asarray(ours[k]), ref[k]) for k in ref}
  worst = max(errors, key=errors.get)
  print(f"worst relative grad error {errors[worst]:.2e} ({worst})")
  assert errors[worst] <= GRAD_REL_BOUND


def test_artifact_is_pefts_saved_prompt_embeddings(setup, tmp_path):
  """The artifact holds the computed prefixes: PEFT's `prompt_embeddings`
  (also with projection), and loading it reproduces the trained logits."""
  method, lm = setup.method, setup.lm
  path = method.save_artifact(setup.trainable,
                              method.artifact_path(tmp_path, 7))
  assert path == tmp_path / "prefix" / "prefix_step_7.npz"
  assert method.latest_artifact(tmp_path) == path
  loaded = method.load_artifact(path, lm)
  assert list(loaded) == ["prefix"]
  plain = PrefixTuning(P, mode=method.mode)  # What entry points evaluate.
  jax.tree.map(np.testing.assert_array_equal, plain.load_artifact(path, lm),
               loaded)
  assert (jax.tree.structure(loaded) ==
          jax.tree.structure(base.abstract_values(plain, lm)))
  np.testing.assert_allclose(
      peft_format.to_prompt_embeddings(loaded["prefix"]), setup.ref["saved"],
      rtol=1e-6, atol=1e-6)
  from_saved = peft_format.from_prompt_embeddings(setup.ref["saved"], loaded)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               from_saved, loaded)
  logits = np.asarray(jax.jit(lambda t, p: setup.logits_fn(
      *method.bind(lm, t, p)))(loaded, setup.params))
  trained = setup.ours["logits"]
  assert np.abs(logits - trained)[setup.valid].max() <= 1e-6 * np.abs(
      trained).max()


# --------------------------------------------- T5 'paper' and the layout ----


def _random_params(lm, seed=0):
  abstract = partitioning.abstract_variables(lm.module, lm.sample_inputs)
  rng = np.random.RandomState(seed)
  flat = {}
  for k, v in _flat(flax.core.meta.unbox(abstract["params"])).items():
    mean, std = (1.0, 0.1) if k.endswith("scale") else (0.0, 0.3)
    flat[k] = (mean + std * rng.standard_normal(v.shape)).astype(np.float32)
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def _np_bucket(rel: np.ndarray, bidirectional: bool, buckets: int):
  """T5's bucket for distances below max_exact (all this test uses)."""
  if bidirectional:
    buckets //= 2
    out, n = (rel > 0) * buckets, np.abs(rel)
  else:
    out, n = 0, -np.minimum(rel, 0)
  assert n.max() < buckets // 2
  return out + n


def _np_t5_paper(f: dict, cfg, enc: np.ndarray, dec: np.ndarray,
                 pre: dict) -> np.ndarray:
  """Logits [B, To, V] of a 1+1-layer T5 1.1 with the three 'paper'
  prefixes `pre[site] = (key [P, N, D], value)`, in NumPy."""
  eps = cfg.layer_norm_epsilon

  def rms(x, name):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * f[name]

  def attention(xq, xkv, path, prefix, mask, bias):
    q, k, v = (np.einsum("th,hnd->tnd", x, f[f"{path}/{n}/kernel"])
               for x, n in ((xq, "query"), (xkv, "key"), (xkv, "value")))
    k, v = np.concatenate([prefix[0], k]), np.concatenate([prefix[1], v])
    logits = np.einsum("qnd,knd->nqk", q, k)
    p = prefix[0].shape[0]
    bias = np.concatenate([np.zeros(bias.shape[:2] + (p,)), bias], -1)
    mask = np.concatenate([np.ones(mask.shape[:1] + (p,), bool), mask], -1)
    logits = np.where(mask[None], logits + bias, -1e30)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = np.einsum("nqk,knd->qnd", w, v)
    return np.einsum("qnd,ndh->qh", out, f[f"{path}/out/kernel"])

  def mlp(x, path):
    g = x @ f[f"{path}/wi_0/kernel"]
    g = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
    return (g * (x @ f[f"{path}/wi_1/kernel"])) @ f[f"{path}/wo/kernel"]

  def relpos(stack, tq, tk, bidirectional):
    rel = np.arange(tk)[None] - np.arange(tq)[:, None]
    table = f[f"{stack}/relpos_bias/rel_embedding"]
    return table[:, _np_bucket(rel, bidirectional,
                               cfg.relative_attention_num_buckets)]

  out = []
  for e_ids, d_ids in zip(enc, dec):
    emask = e_ids != 0
    x = f["token_embedder/embedding"][e_ids]
    ti, to = len(e_ids), len(d_ids)
    m = np.broadcast_to(emask[None], (ti, ti))
    e = "encoder/layers_0"
    x = x + attention(rms(x, f"{e}/pre_attention_layer_norm/scale"),
                      rms(x, f"{e}/pre_attention_layer_norm/scale"),
                      f"{e}/attention", pre["encoder"], m,
                      relpos("encoder", ti, ti, True))
    x = x + mlp(rms(x, f"{e}/pre_mlp_layer_norm/scale"), f"{e}/mlp")
    encoded = rms(x, "encoder/encoder_norm/scale")
    y = f["token_embedder/embedding"][d_ids]
    d = "decoder/layers_0"
    h = rms(y, f"{d}/pre_self_attention_layer_norm/scale")
    y = y + attention(h, h, f"{d}/self_attention", pre["decoder_self"],
                      np.tril(np.ones((to, to), bool)),
                      relpos("decoder", to, to, False))
    h = rms(y, f"{d}/pre_cross_attention_layer_norm/scale")
    y = y + attention(h, encoded, f"{d}/encoder_decoder_attention",
                      pre["decoder_cross"],
                      np.broadcast_to(emask[None], (to, ti)),
                      np.zeros((cfg.num_heads, to, ti)))
    y = y + mlp(rms(y, f"{d}/pre_mlp_layer_norm/scale"), f"{d}/mlp")
    out.append(rms(y, "decoder/decoder_norm/scale")
               @ f["decoder/logits_dense/kernel"])
  return np.stack(out)


@pytest.fixture(scope="module")
def t5_paper():
  cfg = testing.tiny_t5_config(num_encoder_layers=1, num_decoder_layers=1)
  lm = models.EncoderDecoderLM(cfg)
  params = _random_params(lm)
  rng = np.random.RandomState(2)
  enc = testing.padded_batch(rng, 2, 6, cfg.vocab_size, lengths=[6, 4])
  dec = testing.padded_batch(rng, 2, 4, cfg.vocab_size)
  batch = {"encoder_input_tokens": enc, "decoder_input_tokens": dec}
  run = jax.jit(lambda p, s: lm.logits(p, batch, seams=s))
  return lm, params, batch, run


def test_t5_paper_mode_matches_numpy(t5_paper):
  lm, params, batch, run = t5_paper
  method = PrefixTuning(P)  # T5 default: 'paper'.
  trainable = method.init_trainable(jax.random.key(4), lm, params, None)
  ours = np.asarray(run(*method.bind(lm, trainable, params)))
  pre = {site: (np.asarray(kv["key"][0]), np.asarray(kv["value"][0]))
         for site, kv in trainable["prefix"].items()}
  ref = _np_t5_paper(_flat(params), lm.config, batch["encoder_input_tokens"],
                     batch["decoder_input_tokens"], pre)
  assert _rel(ours, ref) <= 1e-5
  bare = np.asarray(run(params, models.Seams()))
  assert np.abs(bare - ref).max() > 1e-2


def test_encoder_prefix_only_in_paper_mode(t5_paper):
  lm, params, batch, _ = t5_paper
  enc = batch["encoder_input_tokens"]

  def encoded(seams):
    return np.asarray(lm.module.apply({"params": params}, enc, seams=seams,
                                      method="encode")[0])

  bare = encoded(models.Seams())
  for mode, changes in (("paper", True), ("peft_compat", False)):
    method = PrefixTuning(P, mode=mode)
    trainable = method.init_trainable(jax.random.key(0), lm, params, None)
    out = encoded(method.bind(lm, trainable, params)[1])
    assert (np.abs(out - bare).max() > 1e-3) == changes, mode
  # peft_compat's encoder output is the bare one bit for bit.
  np.testing.assert_array_equal(out, bare)


def test_peft_compat_slot_map_and_sites():
  cfg = testing.tiny_t5_config(num_encoder_layers=4, num_decoder_layers=4,
                               num_heads=2, head_dim=8)
  lm = models.EncoderDecoderLM(cfg)
  method = PrefixTuning(2, mode="peft_compat")
  layout = method.layout(lm)
  assert layout.sites == (("peft_slots", 4),) and layout.offset == 2
  key = jnp.arange(4.0)[:, None, None, None] * jnp.ones((4, 2, 2, 8))
  tree = {"prefix": {"peft_slots": {"key": key, "value": key}}}
  seams = method.bind(lm, tree, {})[1]
  read = [int(seams.decoder_layer(i).self_attention.prefix_key[0, 0, 0, 0])
          for i in range(4)]
  assert read == [0, 2, 0, 2]  # Decoder layer i reads PEFT slot 2i mod 4.
  assert seams.encoder_layers is None
  assert all(seams.decoder_layer(i).cross_attention is None
             for i in range(4))
  paper = PrefixTuning(2).layout(lm)
  assert paper.sites == (("encoder", 4), ("decoder_self", 4),
                         ("decoder_cross", 4)) and paper.offset == 0


def test_zero_prefix_is_not_an_identity(t5_paper):
  """Zero keys and values still take softmax mass (e^0 per slot)."""
  assert not PrefixTuning.identity_at_init
  lm, params, _, run = t5_paper
  method = PrefixTuning(P)
  zero = jax.tree.map(jnp.zeros_like,
                      method.init_trainable(jax.random.key(0), lm, None, None))
  out = np.asarray(run(*method.bind(lm, zero, params)))
  assert np.abs(out - np.asarray(run(params, models.Seams()))).max() > 1e-3
  # Decoder-only: against the same position offset without prefixes.
  cfg = llama_testing.tiny_decoder_config(num_layers=1)
  dlm = models.DecoderOnlyLM(cfg)
  dparams = llama_testing.random_params(cfg)
  zero = jax.tree.map(jnp.zeros_like, PrefixTuning(P).init_trainable(
      jax.random.key(0), dlm, None, None))
  ids = np.array([[5, 6, 7, 8]], np.int32)
  seams = PrefixTuning(P).bind(dlm, zero, dparams)[1]
  with_zero = dlm.module.apply({"params": dparams}, ids, seams=seams)
  shifted = dlm.module.apply({"params": dparams}, ids,
                             seams=models.Seams(position_offset=P))
  assert np.abs(np.asarray(with_zero) - np.asarray(shifted)).max() > 1e-3


# ------------------------------------------- generation with the cache ----


def test_cached_generation_equals_full_forward_argmax():
  cfg = llama_testing.tiny_decoder_config()
  lm = models.DecoderOnlyLM(cfg)
  params = llama_testing.random_params(cfg, seed=1)
  method = PrefixTuning(P, projection=True)
  trainable = method.init_trainable(jax.random.key(3), lm, params, None)
  _, seams = method.bind(lm, trainable, params)
  steps = 4
  inputs = np.array([[5, 9, 12, 7, 30], [40, 11, 3, 0, 0]], np.int32)
  tokens, _ = lm.generate(params, inputs, seams=seams,
                          max_decode_length=steps)
  lengths = (inputs != 0).sum(1)
  seq = np.zeros((2, inputs.shape[1] + steps), np.int32)
  seq[:, :inputs.shape[1]] = inputs
  forward = jax.jit(lambda s, m: lm.module.apply({"params": params}, s, m,
                                                 seams=seams))
  want = np.full((2, steps), cfg.pad_id, np.int32)
  done = np.zeros(2, bool)
  for i in range(steps):
    mask = np.arange(seq.shape[1])[None] < (lengths + i)[:, None]
    logits = np.asarray(forward(seq, mask))
    nxt = logits[np.arange(2), lengths + i - 1].argmax(-1)
    want[~done, i] = nxt[~done]
    seq[np.arange(2), lengths + i] = nxt
    done |= nxt == cfg.eos_id
  np.testing.assert_array_equal(np.asarray(tokens), want)


@pytest.mark.parametrize("mode", ["paper", "peft_compat"])
def test_t5_cached_generation_equals_full_forward_argmax(t5_paper, mode):
  """The decode path: cross-attention prefixes over the cached encoder keys
  ('paper'), relative biases of the prefix at each step ('peft_compat')."""
  lm, params, batch, _ = t5_paper
  method = PrefixTuning(P, mode=mode)
  trainable = method.init_trainable(jax.random.key(5), lm, params, None)
  _, seams = method.bind(lm, trainable, params)
  enc, steps = batch["encoder_input_tokens"], 4
  tokens, _ = lm.generate(params, enc, seams=seams, max_decode_length=steps)
  forward = jax.jit(lambda d: lm.logits(params, {
      "encoder_input_tokens": enc, "decoder_input_tokens": d}, seams=seams))
  dec = np.zeros((2, steps), np.int32)  # Start id 0, then the argmaxes.
  want = np.zeros((2, steps), np.int32)
  done = np.zeros(2, bool)
  for i in range(steps):
    nxt = np.asarray(forward(dec))[:, i].argmax(-1)
    want[~done, i] = nxt[~done]
    done |= nxt == lm.config.eos_id
    if i + 1 < steps:
      dec[:, i + 1] = nxt
  np.testing.assert_array_equal(np.asarray(tokens), want)


# --------------------------------------------------- shapes and errors ----


def test_smollm2_135m_prefix_count():
  cfg = DecoderConfig(vocab_size=49152, emb_dim=576, num_heads=9,
                      num_kv_heads=3, head_dim=64, mlp_dim=1536,
                      num_layers=30)
  lm = models.DecoderOnlyLM(cfg)
  abstract = base.abstract_values(PrefixTuning(20), lm)
  assert sum(x.size for x in jax.tree.leaves(abstract)) == 230_400
  assert 230_400 == 20 * 30 * 2 * 192


def test_logical_axes_shard_heads():
  lm = models.DecoderOnlyLM(llama_testing.tiny_decoder_config())
  boxed = PrefixTuning(P).abstract_trainable(lm)
  leaf = boxed["prefix"]["self_attention"]["key"]
  assert leaf.names == (None, types.PROMPT, types.HEADS, types.KV)
  boxed = PrefixTuning(P, projection=True, hidden=8).abstract_trainable(lm)
  assert boxed["embedding"].names == (types.PROMPT, types.PROMPT_EMBED)
  assert boxed["hidden"]["kernel"].value.shape == (16, 8)
  assert boxed["out"]["self_attention"]["kernel"].names[-2:] == (
      types.HEADS, types.KV)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(length=0), "length"),
    (dict(mode="both"), "'both'"),
    (dict(hidden=8), "projection"),
])
def test_bad_settings_are_one_line_errors(kwargs, needle):
  with pytest.raises(ValueError) as e:
    PrefixTuning(**kwargs)
  assert needle in str(e.value) and "\n" not in str(e.value)


def test_mode_on_a_decoder_and_peft_compat_width_are_one_line_errors():
  dlm = models.DecoderOnlyLM(llama_testing.tiny_decoder_config())
  with pytest.raises(ValueError) as e:
    base.TunedModel(dlm, PrefixTuning(mode="paper"))
  assert "decoder-only" in str(e.value) and "\n" not in str(e.value)
  t5 = models.EncoderDecoderLM(testing.tiny_t5_config(head_dim=4))
  with pytest.raises(ValueError) as e:
    base.TunedModel(t5, PrefixTuning(mode="peft_compat"))
  assert "d_model" in str(e.value) and "\n" not in str(e.value)
  assert layout_lib.layout_of(t5, 2, "paper").token_dim == 8


def test_registry_and_settings():
  assert METHODS["prefix_tuning"] is PrefixTuning
  assert PrefixTuning(4, True, 8, "paper").settings() == {
      "method": "prefix_tuning", "prefix_length": 4,
      "prefix_projection": True, "prefix_hidden": 8, "prefix_mode": "paper"}


def test_gin_file_builds_the_method_and_the_optimizer():
  gin_utils.parse(
      ["runs/prompt_train.gin", "models/t5_1_1_tiny.gin",
       "methods/prefix_tuning.gin"],
      ["MODEL_DIR='/tmp/x'", "TRAIN_STEPS=10",
       "MIXTURE_OR_TASK_NAME='sst2_v100'",
       "TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}",
       "PREFIX_LENGTH=5", "PREFIX_PROJECTION=True"])
  assert "METHOD = @prefix_tuning.PrefixTuning()" in gin.config_str()
  assert gin.get_configurable(PrefixTuning)() == PrefixTuning(5, True)
  assert gin.get_bindings(optim.make_optimizer) == {
      "name": "adamw", "learning_rate": 1e-2}
