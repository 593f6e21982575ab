"""Span-constrained decoding of SQuAD 2.0 rows (tasks.squad + model code).

A random tiny T5 with the full T5 vocabulary decodes real rows of
`squad_v2_span_v100`: every constrained greedy / beam output must be a
span of the row's passage tokens or the no-answer target, while the same
model unconstrained leaves the passage (so the check can fail). The eval
path (`Predictor(constraint_fn=...)` under seqio's Evaluator) is run too.
"""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from prompt_jax.decoding import constraints as cd
from prompt_jax.decoding import search as decoding
from prompt_jax import partitioning
from prompt_jax.decoding import predictor as predicting
from prompt_jax import testing
from prompt_jax.backbones.t5 import generation
from prompt_jax.backbones.t5 import network
from prompt_jax.methods.prompt_tuning import method as prompt_tuning_lib
from tasks import squad
from tasks import vocab

EOS = 1


def _rows(n: int) -> list[dict]:
  task = seqio.get_mixture_or_task(squad.SQUAD_V2_TASK)
  ds = task.get_dataset(squad.FEATURE_LENGTHS, split="validation",
                        shuffle=False)
  return list(ds.take(n).as_numpy_iterator())


def _encoder_tokens(rows: list[dict], length: int) -> np.ndarray:
  enc = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    enc[i, :len(row["inputs"])] = row["inputs"]
  return enc


def _valid(out: list[int], passage: list[int]) -> bool:
  return out == squad.no_answer_ids() or cd.is_span(out, passage)


def _until_eos(tokens) -> list[int]:
  tokens = [int(t) for t in tokens]
  return tokens[:tokens.index(EOS)] if EOS in tokens else tokens


_N = 18  # Real rows decoded: 6 per logit-offset regime.


class SquadDecodingTest(parameterized.TestCase):
  """Random tiny T5 (full vocab) over the first 18 real rows."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.rows = _rows(n=_N)
    # Trimmed to the longest row (rounded up to 32): same outputs, less work.
    longest = max(len(r["inputs"]) for r in cls.rows)
    cls.enc = _encoder_tokens(cls.rows, -(-longest // 32) * 32)
    v = vocab.t5_vocabulary()
    cls.passages = [v.encode(r["context"].decode()) for r in cls.rows]
    cls.cfg = testing.tiny_t5_config(vocab_size=32128)
    cls.module = network.T5Transformer(cls.cfg)
    cls.mesh = partitioning.make_mesh(2, 1, jax.devices()[:2])
    cls.rules = partitioning.standard_logical_axis_rules("model")
    cls.params = partitioning.init_params(cls.module, jax.random.key(0),
                                          cls.mesh, cls.rules)
    # Per-row logit offsets so outputs vary: short answers (EOS favoured),
    # long ones (EOS disfavoured) and the no-answer path ("▁un" favoured).
    bias = np.zeros((_N, cls.cfg.vocab_size), np.float32)
    bias[0::3, EOS] = 3.0
    bias[1::3, EOS] = -100.0
    bias[2::3, squad.no_answer_ids()] = 12.0
    cls.bias = jnp.asarray(bias)

  def _search(self, method: str, constrained: bool
              ) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [B, K, L], scores [B, K]); greedy: K = 1."""
    search = jax.jit(self._traced_search, static_argnums=(0, 1))
    tokens, scores = search(method, constrained, self.params, self.enc,
                            self.bias)
    if method == "greedy":
      return np.asarray(tokens)[:, None], np.asarray(scores)[:, None]
    return np.asarray(tokens), np.asarray(scores)

  def _traced_search(self, method: str, constrained: bool, params, enc,
                     bias) -> tuple[jax.Array, jax.Array]:
    k = 4 if method == "beam" else 1
    step, cache = generation.prepare_decoder(
        self.module, params, enc, max_decode_length=12, rows_per_example=k)
    bias = jnp.repeat(bias, k, axis=0)

    def biased(tokens, c):
      logits, c = step(tokens, c)
      return logits + bias, c

    constraint = None
    if constrained:
      constraint = cd.span_constraint_after_marker(
          enc, marker_ids=squad.context_marker_ids(), eos_id=EOS,
          extra_sequences=[squad.no_answer_ids()])
    common = dict(batch_size=_N, max_decode_length=12, eos_id=EOS,
                  constraint=constraint)
    if method == "greedy":
      return decoding.greedy_search(biased, cache, **common)
    return decoding.beam_search(biased, cache, num_beams=k, **common)

  @parameterized.parameters("greedy", "beam")
  def test_constrained_outputs_are_spans_or_no_answer(self, method):
    tokens, scores = self._search(method, constrained=True)
    # Every finished beam, not only the best (whose ancestors could all be
    # beam 0, hiding a constraint state not gathered with its beam).
    for i, (row, row_scores) in enumerate(zip(tokens, scores)):
      for out in row[np.isfinite(row_scores)]:
        self.assertTrue(_valid(_until_eos(out), self.passages[i]),
                        f"row {i}: {out}")
    outs = [_until_eos(t) for t in tokens[:, 0]]
    # EOS disfavoured: the best output runs to L = 12 tokens unless its span
    # ends the passage (EOS is then the only allowed token). A state that
    # lost its row's prefix allows only EOS too, so ending early is a bug.
    for i in range(1, _N, 3):
      out, passage = outs[i], self.passages[i]
      self.assertTrue(len(out) == 12 or passage[-len(out):] == out,
                      f"row {i}: {out}")
    # The three regimes all occur, so the check covers them.
    self.assertIn(squad.no_answer_ids(), outs)
    self.assertGreaterEqual(max(len(o) for o in outs), 8)
    self.assertTrue(any(1 <= len(o) <= 3 for o in outs))

  def test_unconstrained_outputs_leave_the_passage(self):
    free = [_until_eos(t)
            for t in self._search("greedy", constrained=False)[0][:, 0]]
    self.assertFalse(all(_valid(o, p) for o, p in zip(free, self.passages)))

  def test_generate_and_predictor_with_span_constraint(self):
    """The eval path: `Predictor(constraint_fn=...)` under seqio."""
    frozen = self.params
    model = prompt_tuning_lib.t5_model(self.cfg, prompt_length=3)
    trainable = model.init_trainable(jax.random.key(1))
    constraint_fn = lambda enc: cd.span_constraint_after_marker(
        enc, marker_ids=squad.context_marker_ids(), eos_id=EOS,
        extra_sequences=[squad.no_answer_ids()])
    predictor = predicting.Predictor(
        model, self.mesh, self.rules, partitioning.shardings_of(frozen),
        max_decode_length=6, batch_size=_N, constraint_fn=constraint_fn)
    evaluator = seqio.Evaluator(
        squad.SQUAD_V2_TASK, seqio.EncDecFeatureConverter(pack=False),
        sequence_length=squad.FEATURE_LENGTHS, num_examples=_N,
        use_memory_cache=False, async_compute_metrics=False)
    metrics, outputs = evaluator.evaluate(
        compute_metrics=True,
        predict_fn=predictor.seqio_predict_fn(trainable, frozen),
        score_fn=None)
    self.assertContainsSubset(
        {"em", "f1"}, metrics.result()[squad.SQUAD_V2_TASK])
    tokens = outputs[squad.SQUAD_V2_TASK][
        seqio.metrics.ModelOutputType.PREDICTION]
    self.assertLen(tokens, _N)  # In example order.
    for row, passage in zip(tokens, self.passages):
      self.assertTrue(_valid(_until_eos(row), passage), row)


if __name__ == "__main__":
  absltest.main()
