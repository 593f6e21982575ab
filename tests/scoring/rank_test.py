"""Tests for prompt_jax.scoring.rank and rank classification end to
end.

Unit tests: hand-made scores with hand-computed decisions (grouping of
shuffled rows, length normalisation, several words per label, PVP ensemble
averaging, the one-line errors).

End to end: registered rank-classification tasks (PET, EFL) run through
`prompt_jax.evaluate.decode_metrics` (seqio Evaluator + our sharded
`score_fn`) on a tiny random T5; every row's score, and the task metric,
must equal an independent computation: a random Hugging Face T5 (the same
weights, converted) scoring each input alone, unpadded, with the soft prompt
prepended as input embeddings, and a numpy log-softmax.
"""

import collections
import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
import seqio

import tasks  # pylint: disable=unused-import  # Registers the tasks.
from prompt_jax.data import seqio_batches as data_lib
from prompt_jax import evaluate
from prompt_jax import partitioning
from prompt_jax.decoding import predictor as predicting
from prompt_jax.scoring import rank as rc
from prompt_jax import testing
from prompt_jax.methods.prompt_tuning import method as prompt_tuning_lib

_LENGTHS = {"inputs": 256, "targets": 32}

T = rc.RankTarget


def _metric(targets, scores, **kwargs):
  def accuracy(gold, pred):
    return {"accuracy": 100.0 * np.mean(np.equal(gold, pred))}
  return rc.rank_metric(targets, scores, metric_fns=(accuracy,), **kwargs)


class LabelScoresTest(absltest.TestCase):

  def test_groups_shuffled_rows_by_example_and_pattern(self):
    # T(idx, pattern, option_label, label, num_tokens); rows out of order.
    targets = [T(5, 0, 1, 1, 2), T(2, 0, 0, 0, 2), T(5, 0, 0, 1, 2),
               T(2, 0, 1, 0, 2)]
    ids, gold, scores = rc.label_scores(targets, [-1.0, -2.0, -3.0, -4.0])
    np.testing.assert_array_equal(ids, [2, 5])
    np.testing.assert_array_equal(gold, [0, 1])
    np.testing.assert_array_equal(scores[:, 0, :], [[-2.0, -4.0],
                                                    [-3.0, -1.0]])
    np.testing.assert_array_equal(rc.predict(scores), [0, 1])

  def test_length_normalisation_changes_the_decision(self):
    # Option 0: one token, log p = -2 (mean -2). Option 1: four tokens,
    # log p = -4 (mean -1). Sum prefers 0, the per-token mean prefers 1.
    targets = [T(0, 0, 0, 1, 1), T(0, 0, 1, 1, 4)]
    self.assertEqual(_metric(targets, [-2.0, -4.0]), {"accuracy": 0.0})
    self.assertEqual(_metric(targets, [-2.0, -4.0], length_normalize=True),
                     {"accuracy": 100.0})
    _, _, normalised = rc.label_scores(targets, [-2.0, -4.0],
                                       length_normalize=True)
    np.testing.assert_allclose(normalised[0, 0], [-2.0, -1.0])

  def test_several_words_max_versus_logsumexp(self):
    # Label 0: one word at -1.0. Label 1: two words at -1.2 and -1.3.
    # max: [-1.0, -1.2] → 0. logsumexp: log(e^-1.2 + e^-1.3) = -0.5556 → 1.
    targets = [T(0, 0, 0, 1, 1), T(0, 0, 1, 1, 1), T(0, 0, 1, 1, 1)]
    scores = [-1.0, -1.2, -1.3]
    _, _, by_max = rc.label_scores(targets, scores)
    np.testing.assert_allclose(by_max[0, 0], [-1.0, -1.2])
    _, _, by_lse = rc.label_scores(targets, scores, word_reduce="logsumexp")
    np.testing.assert_allclose(
        by_lse[0, 0], [-1.0, np.log(np.exp(-1.2) + np.exp(-1.3))])
    self.assertAlmostEqual(by_lse[0, 0, 1], -0.555603, places=5)
    self.assertEqual(_metric(targets, scores), {"accuracy": 0.0})
    self.assertEqual(_metric(targets, scores, word_reduce="logsumexp"),
                     {"accuracy": 100.0})

  def test_missing_option_is_a_clear_error(self):
    # A training split keeps only gold options: ranking must refuse.
    with self.assertRaisesRegex(ValueError, "example idx 3 pattern 0 has no"
                                " option for label 1"):
      rc.label_scores([T(3, 0, 0, 0, 1), T(4, 0, 0, 0, 1),
                       T(4, 0, 1, 0, 1)], [0.0, 0.0, 0.0])

  def test_bad_inputs_raise(self):
    with self.assertRaisesRegex(ValueError, "2 targets but 1 scores"):
      rc.label_scores([T(0, 0, 0, 0, 1), T(0, 0, 1, 0, 1)], [0.0])
    with self.assertRaisesRegex(ValueError, "word_reduce='mean'"):
      rc.label_scores([T(0, 0, 0, 0, 1)], [0.0], word_reduce="mean")
    with self.assertRaisesRegex(ValueError, "two gold labels"):
      rc.label_scores([T(0, 0, 0, 0, 1), T(0, 0, 1, 1, 1)], [0.0, 0.0])
    with self.assertRaisesRegex(ValueError, r"option labels \[0, 2\]"):
      rc.label_scores([T(0, 0, 0, 0, 1), T(0, 0, 2, 0, 1)], [0.0, 0.0])
    with self.assertRaisesRegex(ValueError, "zero rows"):
      rc.label_scores([], [])


class EnsembleTest(absltest.TestCase):

  def test_average_of_pattern_distributions(self):
    # Patterns: [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]. Mean [0.5667, 0.4333]
    # → label 0, although two of three patterns (a majority vote) say 1.
    dists = np.array([[[0.9, 0.1], [0.4, 0.6], [0.4, 0.6]]])
    scores = np.log(dists) + 7.0  # Softmax is shift invariant.
    np.testing.assert_allclose(rc.ensemble_probs(scores),
                               [[1.7 / 3, 1.3 / 3]], atol=1e-12)
    np.testing.assert_array_equal(rc.predict(scores), [0])
    majority = np.bincount(np.argmax(dists[0], -1)).argmax()
    self.assertEqual(majority, 1)

  def test_one_pattern_is_plain_argmax(self):
    scores = np.array([[[-3.0, -1.0, -2.0]], [[0.0, -5.0, -1.0]]])
    np.testing.assert_array_equal(rc.predict(scores), [1, 0])

  def test_rank_metric_ensembles_patterns(self):
    # Example 0, gold 0: pattern 0 log-probs (log .9, log .1), pattern 1
    # (log .4, log .6), pattern 2 (log .4, log .6) → ensemble says 0.
    targets, scores = [], []
    for pattern, dist in enumerate([(0.9, 0.1), (0.4, 0.6), (0.4, 0.6)]):
      for label, p in enumerate(dist):
        targets.append(T(0, pattern, label, 0, 3))
        scores.append(np.log(p))
    self.assertEqual(_metric(targets, scores), {"accuracy": 100.0})

  def test_metric_fns_receive_gold_and_predictions(self):
    seen = {}

    def spy(gold, pred):
      seen["args"] = (gold, pred)
      return {"n": len(gold)}

    targets = [T(1, 0, 0, 1, 1), T(1, 0, 1, 1, 1), T(0, 0, 0, 0, 1),
               T(0, 0, 1, 0, 1)]
    metric = functools.partial(rc.rank_metric, metric_fns=(spy,))
    self.assertEqual(metric(targets, [0.0, -1.0, 0.0, -1.0]), {"n": 2})
    self.assertEqual(seen["args"], ([0, 1], [0, 0]))


class OptionPostprocessorTest(absltest.TestCase):

  def test_target_becomes_rank_target(self):
    example = {"idx": np.int64(7), "pattern": np.int64(2),
               "option_label": np.int64(1), "label": np.int64(0),
               "targets": np.array([32099, 248, 32098, 1], np.int32)}
    self.assertEqual(
        rc.option_postprocessor("<extra_id_0> great", example, True),
        T(7, 2, 1, 0, 4))

  def test_prediction_passes_through(self):
    self.assertEqual(rc.option_postprocessor("great", {}, False), "great")

  def test_target_needs_example(self):
    with self.assertRaisesRegex(ValueError, "needs the example"):
      rc.option_postprocessor("great", None, True)


def _rows(task_name: str, split: str) -> list[dict]:
  ds = seqio.get_mixture_or_task(task_name).get_dataset(
      _LENGTHS, split=split, shuffle=False)
  return list(ds.as_numpy_iterator())


def _hf_scores(hf_model, prompt: np.ndarray, inputs: np.ndarray,
               options: list[np.ndarray]) -> list[float]:
  """log p(option | prompt + inputs) per option; numpy log-softmax.

  One unpadded encoder input, its options as a batch of decoder rows padded
  at the END (causal decoding: a position never sees later ones), each
  summed over its own tokens only.
  """
  import torch  # pylint: disable=g-import-not-at-top
  inputs = inputs[inputs != 0]
  options = [o[o != 0] for o in options]
  width = max(len(o) for o in options)
  targets = np.zeros((len(options), width), np.int64)
  for k, o in enumerate(options):
    targets[k, :len(o)] = o
  decoder_inputs = np.concatenate(  # Shift right, start id 0.
      [np.zeros((len(options), 1), np.int64), targets[:, :-1]], axis=1)
  with torch.no_grad():
    embeds = hf_model.shared(torch.tensor(inputs[None], dtype=torch.long))
    embeds = torch.cat([torch.tensor(prompt[None]), embeds], dim=1)
    logits = hf_model(
        inputs_embeds=embeds.expand(len(options), -1, -1),
        decoder_input_ids=torch.tensor(decoder_inputs)).logits.double()
  logits = logits.numpy()
  top = logits.max(-1, keepdims=True)
  log_probs = logits - top - np.log(
      np.exp(logits - top).sum(-1, keepdims=True))
  return [float(log_probs[k, np.arange(len(o)), o].sum())
          for k, o in enumerate(options)]


def _independent_scores(hf_model, prompt, rows) -> list[float]:
  """Scores rows in groups of consecutive rows sharing their inputs."""
  scores, start = [], 0
  while start < len(rows):
    stop = start + 1
    while (stop < len(rows) and
           np.array_equal(rows[stop]["inputs"], rows[start]["inputs"])):
      stop += 1
    scores += _hf_scores(hf_model, prompt, rows[start]["inputs"],
                         [r["targets"] for r in rows[start:stop]])
    start = stop
  return scores


def _reference_accuracy(rows, scores, length_normalize: bool) -> float:
  """Plain re-implementation: max over words, mean of softmaxes, argmax."""
  best = collections.defaultdict(dict)
  gold = {}
  for row, score in zip(rows, scores):
    if length_normalize:
      score /= np.count_nonzero(row["targets"])
    key = (int(row["idx"]), int(row["pattern"]))
    label = int(row["option_label"])
    best[key][label] = max(best[key].get(label, -np.inf), score)
    gold[int(row["idx"])] = int(row["label"])
  probs = collections.defaultdict(list)
  for (idx, _), by_label in best.items():
    s = np.array([by_label[k] for k in sorted(by_label)])
    probs[idx].append(np.exp(s - s.max()) / np.exp(s - s.max()).sum())
  hits = [np.argmax(np.mean(p, axis=0)) == gold[i] for i, p in probs.items()]
  return 100.0 * np.mean(hits)


class RankClassificationOnTinyT5Test(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    import torch  # pylint: disable=g-import-not-at-top
    # Next to JAX's and TF's thread pools, multi-threaded torch runs ~40x
    # slower on a small CPU box; the reference model is tiny anyway.
    cls.torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cls.hf_model, cfg, params = testing.random_hf_t5(
        "t5_1_1", seed=0, vocab_size=32128)
    model = prompt_tuning_lib.t5_model(cfg, prompt_length=3)
    cls.trainable = model.init_trainable(jax.random.key(1))
    mesh = partitioning.make_mesh(jax.device_count(), 1)
    rules = partitioning.standard_logical_axis_rules("model")
    shardings = partitioning.param_shardings(
        partitioning.abstract_variables(model.module)["params"], mesh, rules)
    cls.frozen = jax.device_put(params, shardings)
    cls.predictor = predicting.Predictor(model, mesh, rules, shardings,
                                         max_decode_length=4, batch_size=16)

  @classmethod
  def tearDownClass(cls):
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(cls.torch_threads)
    super().tearDownClass()

  @parameterized.named_parameters(
      # COPA: length-normalised, two patterns averaged.
      ("pet_ensemble", "pet_copa_ensemble_v100", True),
      # EFL: log p(yes) of each (sentence, description) pair.
      ("efl", "efl_rte_v100", False))
  def test_eval_entry_matches_independent_scores(self, task_name,
                                                 length_normalize):
    cfg = data_lib.DatasetConfig(task_name, _LENGTHS, split="dev32",
                                 batch_size=16)
    metrics, outputs = evaluate.decode_metrics(
        self.predictor, self.trainable, self.frozen, cfg)
    scores = outputs[task_name][seqio.metrics.ModelOutputType.SCORE]
    rows = _rows(task_name, "dev32")
    self.assertLen(scores, len(rows))
    prompt = np.asarray(self.trainable["prompt"]["prompt"], np.float32)
    reference = _independent_scores(self.hf_model, prompt, rows)
    np.testing.assert_allclose(np.asarray(scores, np.float64), reference,
                               rtol=1e-5, atol=1e-4)
    self.assertAlmostEqual(
        metrics[task_name]["accuracy"],
        _reference_accuracy(rows, reference, length_normalize), places=6)


if __name__ == "__main__":
  absltest.main()
