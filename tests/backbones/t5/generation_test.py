"""Tests of T5 generation: HF parity, cache exactness, beam optimality, jit.

Random tiny models (no downloads). Random T5 rarely emits EOS, so some cases
scale the EOS row of the output head (and, for tied T5 1.0, the decoder's
residual branches, which otherwise just echo the input token) until EOS
appears mid-batch; both models get the same modified weights.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from prompt_jax.decoding import search as decoding
from prompt_jax import testing
from prompt_jax.backbones.t5 import convert
from prompt_jax.backbones.t5 import generation
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.backbones.t5.network import T5Transformer

EOS = 1


@functools.lru_cache(maxsize=None)
def _hf_model(style: str, seed: int = 0, eos_boost: float = 1.0,
              branch_scale: float = 1.0):
  """(torch model, T5Config, our params) with optionally reshaped weights."""
  model, cfg, _ = testing.random_hf_t5(style, seed=seed)
  with torch.no_grad():
    head = model.lm_head.weight if style == "t5_1_1" else model.shared.weight
    head[EOS] *= eos_boost
    for name, p in model.named_parameters():
      if name.startswith("decoder.") and name.endswith(("o.weight",
                                                         "wo.weight")):
        p *= branch_scale
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  return model, cfg, convert.params_from_hf(state, cfg)


def _encoder_batch(vocab: int, seed: int = 0) -> np.ndarray:
  return testing.padded_batch(np.random.RandomState(seed), 6, 9, vocab,
                              lengths=[9, 5, 7, 3, 9, 1])


def _first_eos(tokens: np.ndarray) -> list[int]:
  return [list(r).index(EOS) if EOS in r else -1 for r in tokens]


def _scores(model: T5Transformer, params, enc, tokens, alpha: float = 0.0,
            seams=None) -> np.ndarray:
  """Teacher-forced log-likelihood up to and incl. EOS / brevity penalty."""
  tokens = np.asarray(tokens)
  dec_in = np.concatenate([np.zeros_like(tokens[:, :1]), tokens[:, :-1]], 1)
  logits = model.apply({"params": params}, jnp.asarray(enc),
                       jnp.asarray(dec_in), seams=seams)
  lp = np.asarray(jax.nn.log_softmax(logits), np.float64)
  token_lp = np.take_along_axis(lp, tokens[..., None], -1)[..., 0]
  eos_at = np.array([r if r >= 0 else tokens.shape[1] - 1
                     for r in _first_eos(tokens)])
  valid = np.arange(tokens.shape[1])[None] <= eos_at[:, None]
  return ((token_lp * valid).sum(1)
          / ((5.0 + valid.sum(1)) / 6.0) ** alpha)


# Greedy: parity with transformers --------------------------------------------

_HF_CASES = {
    "t5_1_0": ("t5_1_0", 0, 1.0, 1.0),
    "t5_1_1": ("t5_1_1", 0, 1.0, 1.0),
    "t5_1_0_eos": ("t5_1_0", 1, 1.5, 10.0),
    "t5_1_1_eos": ("t5_1_1", 0, 2.0, 1.0),
}


@pytest.mark.parametrize("case", sorted(_HF_CASES))
def test_greedy_matches_transformers_generate(case):
  style, seed, eos_boost, branch_scale = _HF_CASES[case]
  hf, cfg, params = _hf_model(style, seed, eos_boost, branch_scale)
  enc = _encoder_batch(cfg.vocab_size)
  n = 12
  ref = hf.generate(
      input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc != 0),
      do_sample=False, num_beams=1, max_new_tokens=n, min_new_tokens=0,
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=EOS).numpy()
  # HF: [B, 1 + n'] with the start token first and n' <= n (all ended).
  assert (ref[:, 0] == 0).all()
  ref = np.pad(ref[:, 1:], ((0, 0), (0, n + 1 - ref.shape[1])))
  model = T5Transformer(cfg)
  tokens, scores = generation.generate(model, params, jnp.asarray(enc),
                                       max_decode_length=n)
  np.testing.assert_array_equal(np.asarray(tokens), ref)
  np.testing.assert_allclose(scores, _scores(model, params, enc, tokens),
                             atol=1e-4)
  eos_at = _first_eos(ref)
  if case.endswith("_eos"):  # Rows end at different steps, some never.
    assert -1 in eos_at and len(set(eos_at) - {-1}) >= 2, eos_at


# Cache exactness -------------------------------------------------------------


def _decoder_prefix_seams(cfg, rng) -> seams_lib.Seams:
  shape = (1, 3, cfg.num_heads, cfg.head_dim)
  attn = seams_lib.AttentionSeams(
      prefix_key=jnp.asarray(rng.randn(*shape), jnp.float32),
      prefix_value=jnp.asarray(rng.randn(*shape), jnp.float32))
  return seams_lib.Seams(
      decoder_layers=(seams_lib.LayerSeams(self_attention=attn),))


@pytest.mark.parametrize("style,with_seams", [
    ("t5_1_0", False), ("t5_1_1", False), ("t5_1_1", True)])
def test_cached_step_logits_equal_teacher_forced_logits(style, with_seams):
  _, cfg, params = _hf_model(style)
  rng = np.random.RandomState(1)
  enc = _encoder_batch(cfg.vocab_size)
  length = 10
  dec_in = testing.padded_batch(rng, 6, length, cfg.vocab_size,
                                start_with_pad=True)
  seams = _decoder_prefix_seams(cfg, rng) if with_seams else None
  model = T5Transformer(cfg)
  full = model.apply({"params": params}, jnp.asarray(enc),
                     jnp.asarray(dec_in), seams=seams)
  step, cache = generation.prepare_decoder(
      model, params, jnp.asarray(enc), max_decode_length=length, seams=seams)
  step = jax.jit(step)
  for t in range(length):
    logits, cache = step(jnp.asarray(dec_in[:, t:t + 1]), cache)
    np.testing.assert_allclose(logits, full[:, t], atol=1e-5, rtol=0,
                               err_msg=f"step {t}")


# Beam search -----------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_with_one_beam_equals_greedy_when_eos_is_unreachable(alpha):
  _, cfg, params = _hf_model("t5_1_1")
  model = T5Transformer(cfg.replace(eos_id=cfg.vocab_size))
  enc = jnp.asarray(_encoder_batch(cfg.vocab_size))
  greedy, greedy_scores = generation.generate(model, params, enc,
                                              max_decode_length=7)
  beam, beam_scores = generation.generate(
      model, params, enc, max_decode_length=7, method="beam", num_beams=1,
      alpha=alpha)
  np.testing.assert_array_equal(beam, greedy)
  np.testing.assert_allclose(
      beam_scores, greedy_scores / decoding.brevity_penalty(alpha, 7),
      atol=1e-5)


def _exhaustive(model, params, enc, vocab: int, length: int, alpha: float):
  """Distinct outputs (pad after EOS) and scores [S] per example, sorted."""
  seqs = set()
  for s in itertools.product(range(vocab), repeat=length):
    s = list(s)[:s.index(EOS) + 1] if EOS in s else list(s)
    seqs.add(tuple(s + [0] * (length - len(s))))
  seqs = np.array(sorted(seqs))
  out = []
  for b in range(enc.shape[0]):
    scores = _scores(model, params, np.repeat(enc[b:b + 1], len(seqs), 0),
                     seqs, alpha)
    order = np.argsort(-scores, kind="stable")
    out.append((seqs[order], scores[order]))
  return out


def test_beam_search_finds_exhaustive_best():
  """V = 6, L = 3: with 36 beams no prefix is ever dropped, so exact."""
  cfg = testing.tiny_t5_config(vocab_size=6)
  model = T5Transformer(cfg)
  enc = testing.padded_batch(np.random.RandomState(2), 2, 5, 6,
                             lengths=[5, 2])
  params = model.init(jax.random.key(3), jnp.asarray(enc),
                      jnp.asarray(enc[:, :3]))["params"]
  step, cache = generation.prepare_decoder(
      model, params, jnp.asarray(enc), max_decode_length=3,
      rows_per_example=36)
  search = jax.jit(
      lambda c, a: decoding.beam_search(step, c, batch_size=2,
                                        max_decode_length=3, eos_id=EOS,
                                        num_beams=36, alpha=a))
  lengths = []
  for alpha in (0.0, 2.0):
    tokens, scores = search(cache, alpha)
    best = _exhaustive(model, params, enc, 6, 3, alpha)
    for b, (seqs, ref_scores) in enumerate(best):
      np.testing.assert_array_equal(tokens[b, 0], seqs[0])
      np.testing.assert_allclose(scores[b], ref_scores[:36], atol=1e-5)
      lengths.append(_first_eos(seqs[:1])[0])
  assert len(set(lengths)) > 1, lengths  # The penalty changes the winner.


def test_beam_scores_equal_teacher_forced_scores():
  _, cfg, params = _hf_model("t5_1_1", 0, eos_boost=2.0)
  model = T5Transformer(cfg)
  enc = _encoder_batch(cfg.vocab_size)
  greedy, _ = generation.generate(model, params, jnp.asarray(enc),
                                  max_decode_length=8)
  for alpha in (0.0, 0.6):
    tokens, scores = generation.generate(
        model, params, jnp.asarray(enc), max_decode_length=8, method="beam",
        num_beams=4, alpha=alpha)
    recomputed = _scores(model, params, enc, tokens, alpha)
    np.testing.assert_allclose(scores, recomputed, atol=1e-4)
    assert (recomputed >= _scores(model, params, enc, greedy, alpha)
            - 1e-4).all()


# Sampling --------------------------------------------------------------------


def test_sampling_through_generate():
  _, cfg, params = _hf_model("t5_1_1", 0, eos_boost=2.0)
  model = T5Transformer(cfg)
  enc = jnp.asarray(_encoder_batch(cfg.vocab_size))
  greedy, _ = generation.generate(model, params, enc, max_decode_length=8)

  def sample(key, **kwargs):
    return generation.generate(model, params, enc, max_decode_length=8,
                               method="sample", rng=jax.random.key(key),
                               **kwargs)
  np.testing.assert_array_equal(sample(0, top_k=1)[0], greedy)
  np.testing.assert_array_equal(sample(0, temperature=1e-3)[0], greedy)
  first, scores = sample(0, top_p=0.95)
  np.testing.assert_array_equal(sample(0, top_p=0.95)[0], first)
  assert not np.array_equal(sample(1, top_p=0.95)[0], first)
  assert not np.array_equal(first, greedy)
  np.testing.assert_allclose(scores, _scores(model, params, enc, first),
                             atol=1e-4)


# Compilation -----------------------------------------------------------------


def test_generate_compiles_once_per_shape():
  _, cfg, params = _hf_model("t5_1_1")
  model = T5Transformer(cfg)
  traces = []

  def embed_fn(x, mask):  # Runs once per trace of `generate`.
    traces.append(x.shape)
    return x, mask
  seams = seams_lib.Seams(encoder_embed_fn=embed_fn)
  enc = _encoder_batch(cfg.vocab_size)
  for seed in (0, 1):  # New values, same shapes: no retrace.
    generation.generate(model, params, jnp.asarray(enc) + seed,
                        max_decode_length=5, method="beam", num_beams=2,
                        alpha=0.3 + seed, seams=seams)
  assert len(traces) == 1
  generation.generate(model, params, jnp.asarray(enc[:4]),
                      max_decode_length=5, method="beam", num_beams=2,
                      seams=seams)
  assert len(traces) == 2


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="topk"), "method='topk'"),
    (dict(method="sample"), "needs an rng"),
    (dict(max_decode_length=0), "max_decode_length=0"),
    (dict(method="beam", num_beams=0), "num_beams=0")])
def test_bad_arguments_raise_one_line_errors(kwargs, message):
  _, cfg, params = _hf_model("t5_1_1")
  kwargs = dict(max_decode_length=4) | kwargs
  with pytest.raises(ValueError, match=message):
    generation.generate(T5Transformer(cfg), params,
                        jnp.asarray(_encoder_batch(cfg.vocab_size)), **kwargs)
