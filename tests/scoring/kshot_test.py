"""KShotScorer on a T5: k-shot option scores (direct and channel) equal
`score_batch` on the rows written out by hand, [demonstrations, query, EOS]
as the encoder input and [scored text, EOS] as the target."""

import zlib

import jax
import numpy as np
import pytest

from prompt_jax import partitioning
from prompt_jax import testing
from prompt_jax.icl import kshot_format
from prompt_jax.methods.prompt_tuning import method as prompt_tuning_lib
from prompt_jax.scoring import kshot

CFG = testing.tiny_t5_config()
EOS = CFG.eos_id
DEMOS = [("a fine film", "yes"), ("dull and slow", "no")]
QUERIES = ["very good acting", "boring"]
OPTIONS = ("yes", "no", "maybe so")


def _encode(text: str) -> list[int]:
  """Stub tokenizer: one id in [3, 97) per whitespace-separated word."""
  return [3 + zlib.crc32(w.encode()) % 94 for w in text.split()]


@pytest.fixture(scope="module", name="scorer")
def _scorer() -> kshot.KShotScorer:
  model = prompt_tuning_lib.t5_model(CFG, 3)
  mesh = partitioning.make_mesh(1, 1, jax.devices()[:1])
  frozen = partitioning.init_params(
      model.module, jax.random.key(0), mesh,
      partitioning.standard_logical_axis_rules("model"))
  return kshot.KShotScorer(model, frozen, _encode,
                           trainable=model.init_trainable(jax.random.key(1)))


def _reference(scorer, inputs: str, target: str) -> float:
  enc = np.array([_encode(inputs) + [EOS]], np.int32)
  tgt = np.array([_encode(target) + [EOS]], np.int32)
  return float(scorer.model.score_batch(scorer.trainable, scorer.frozen, enc,
                                        tgt)[0][0])


@pytest.mark.parametrize("method", ["direct", "channel"])
def test_t5_option_scores_equal_score_batch(scorer, method):
  fmt = kshot_format.KShotFormat(method=method, layout="enc_dec")
  got, truncated = kshot.option_scores(
      scorer, fmt, [DEMOS] * len(QUERIES), QUERIES, [OPTIONS] * len(QUERIES),
      batch_size=4, where="t5 test")
  assert truncated == 0
  for query, row in zip(QUERIES, got):
    want = [_reference(scorer, *kshot_format.option_pairs(
        DEMOS, query, [o], fmt)[0]) for o in OPTIONS]
    np.testing.assert_allclose(row, want, rtol=1e-4, atol=1e-4)
  if method == "channel":  # The scored text is the query, not the option.
    assert kshot_format.option_pairs(DEMOS, QUERIES[0], ["no"], fmt) == [
        ("yes a fine film no dull and slow no", "very good acting")]


def test_layout_of_another_family_fails_in_one_line(scorer):
  assert scorer.layout == "enc_dec"
  with pytest.raises(ValueError, match="^t5 test row 0: KShotFormat layout "
                     "'decoder' does not fit the encoder_decoder model "
                     r"\(use layout 'enc_dec'\)$"):
    kshot.option_scores(scorer, kshot_format.KShotFormat(layout="decoder"),
                        [DEMOS], QUERIES[:1], [OPTIONS], where="t5 test")


def test_sample_continuations_on_t5(scorer):
  scorer = kshot.KShotScorer(scorer.model, scorer.frozen, _encode,
                             decode=lambda ids: " ".join(map(str, ids)))
  out = kshot.sample_continuations(scorer, ["a fine film yes", "boring"],
                                   max_new_tokens=3, seed=0, max_tokens=8)
  assert len(out) == 2
  assert all(len(o.split()) <= 3 for o in out), out
  assert any(out), out  # Something was sampled.
