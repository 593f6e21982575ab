"""Tests for demonstration-order selection in prompt_jax.evaluators.unseen_decoder.

GlobalE / LocalE order selection (Lu et al. 2022) on real MetaICL rows
(superglue-cb: one option set; superglue-copa: per-row options), seed 13.
The selection tests replace `option_scores` with a deterministic fake
(pseudo-random log-scores per (demonstrations, query)) and recompute the
entropies by hand; the end-to-end test runs a tiny random decoder, sampling
probes with a word tokenizer whose ids = 3 (mod 4) decode to a newline, so
that samples contain the probe template's separators.
"""

import zlib

import numpy as np
import pytest

from prompt_jax.scoring import kshot as kshot_option_scores
from prompt_jax.evaluators import unseen_decoder as ude
from prompt_jax.testing import llama as decoder_testing
from prompt_jax.icl import kshot_format
from prompt_jax.icl import metaicl_pool
from prompt_jax.icl import order_selection
from prompt_jax.methods.prompt_tuning import method as prompt_tuning_lib
from prompt_jax.methods import prompt_tuning

CFG = decoder_testing.tiny_decoder_config(num_layers=2,
                                          max_position_embeddings=2048)
SEED = 13
CB_OPTIONS = ("contradiction", "entailment", "neutral")


def _encode(text: str) -> list[int]:
  """Stub tokenizer: "\\n" -> 3; each other word -> an id in [4, 97) that is
  not 3 (mod 4)."""
  ids = []
  for piece in text.replace("\n", " \n ").split(" "):
    if piece == "\n":
      ids.append(3)
    elif piece:
      i = 4 + zlib.crc32(piece.encode()) % 93
      ids.append(i + 1 if i % 4 == 3 else i)
  return ids


def _decode(ids) -> str:
  return "".join("\n" if i % 4 == 3 else f" w{i}" for i in ids)


@pytest.fixture(scope="module", name="scorer")
def _scorer():
  model = prompt_tuning_lib.decoder_model(CFG, 3)
  return ude.DecoderScorer(model, decoder_testing.random_params(CFG, seed=0),
                           _encode, decode=_decode)


def _seed_demos(folder: str, k: int) -> list[tuple[str, str]]:
  train = [r[:2] for r in metaicl_pool.MetaICLFiles(folder).read(
      f"train_{SEED}")]
  return kshot_format.train_file_demonstrations(train, k, SEED, task=folder)


def _fake_scores(demos, query, options) -> np.ndarray:
  """Deterministic pseudo-random log-scores [C] of one row."""
  key = zlib.crc32(repr((tuple(demos), query, "salt-1")).encode())
  return np.random.default_rng(key).normal(size=len(options)) * 2.0


class _FakeOptionScores:
  """Stands in for `option_scores`; records every call."""

  def __init__(self):
    self.calls = []

  def __call__(self, scorer, fmt, demos, queries, options, **kwargs):
    del scorer, fmt
    self.calls.append(dict(demos=[list(d) for d in demos],
                           queries=list(queries), options=list(options),
                           where=kwargs.get("where", "")))
    return [_fake_scores(d, q, o)
            for d, q, o in zip(demos, queries, options)], 0


def _entropy(p: np.ndarray) -> float:
  return float(-sum(x * np.log(x) for x in p if x > 0))


def _hand_entropy(scores: np.ndarray, method: str) -> float:
  """GlobalE / LocalE of one order's [N, C] log-scores, by hand."""
  probs = np.exp(scores - scores.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  if method == "locale":
    return float(np.mean([_entropy(p) for p in probs]))
  counts = np.bincount(probs.argmax(1), minlength=probs.shape[1])
  return _entropy(counts / len(probs))


@pytest.mark.parametrize("method", ["globale", "locale"])
def test_selects_max_entropy_order_and_evaluates_with_it(scorer, method,
                                                         monkeypatch):
  fake, contexts_seen = _FakeOptionScores(), []

  def fake_sample(scorer, contexts, **kwargs):
    del scorer
    contexts_seen.append((list(contexts), kwargs))
    return [f"probe {j // 2} a\nentailment\n\nprobe b{j % 3}\nneutral\n\n"
            f"cut off without a separator" for j in range(len(contexts))]

  monkeypatch.setattr(ude, "option_scores", fake)
  monkeypatch.setattr(kshot_option_scores, "sample_continuations", fake_sample)
  cfg = ude.DecoderEvalConfig(k=3, seeds=(SEED,), max_rows_per_task=5,
                              order=method, probe_size=6,
                              probe_max_new_tokens=16)
  run = ude.evaluate_seed(scorer, "superglue-cb", SEED, cfg)
  demos = _seed_demos("superglue-cb", 3)
  perms = order_selection.candidate_permutations(3, 4, SEED)
  assert perms.shape == (4, 3)
  # Probing set: 4 orders x 2 samples, parsed, unique, first 6 kept.
  (contexts, kwargs), = contexts_seen
  assert contexts == [order_selection.format_context(
      demos, p, ude.PROBE_TEMPLATE) for p in perms for _ in range(2)]
  assert (kwargs["max_new_tokens"], kwargs["seed"]) == (16, SEED)
  probes = ["probe 0 a", "probe b0", "probe b1", "probe 1 a", "probe b2",
            "probe 2 a"]
  probe_call, eval_call = fake.calls
  assert probe_call["queries"] == probes * 4
  assert probe_call["options"] == [CB_OPTIONS] * 24
  entropies = []
  for m, perm in enumerate(perms):
    ordered = [demos[i] for i in perm]
    assert probe_call["demos"][6 * m:6 * m + 6] == [ordered] * 6
    entropies.append(_hand_entropy(np.stack(
        [_fake_scores(ordered, q, CB_OPTIONS) for q in probes]), method))
  best = int(np.argmax(entropies))
  assert best != 0  # The fake makes a non-first order win.
  assert run["order"]["permutation"] == perms[best].tolist()
  assert run["order"]["probes"] == 6
  np.testing.assert_allclose(run["order"]["entropies"], entropies, atol=1e-5)
  assert eval_call["demos"] == [[demos[i] for i in perms[best]]] * 5
  test_rows = metaicl_pool.MetaICLFiles("superglue-cb").read("test")[:5]
  assert eval_call["queries"] == [r[0] for r in test_rows]


def test_order_none_is_unchanged(scorer):
  cfg = ude.DecoderEvalConfig(k=2, seeds=(SEED,), max_rows_per_task=4,
                              score_normalization="sum")
  got = ude.evaluate_seed(scorer, "superglue-cb", SEED, cfg)
  inert = ude.evaluate_seed(scorer, "superglue-cb", SEED, ude.DecoderEvalConfig(
      k=2, seeds=(SEED,), max_rows_per_task=4, score_normalization="sum",
      probe="dev", order_candidates=7, probe_size=1))
  assert got == inert and "order" not in got
  assert cfg.variant == "direct_seed"
  rows = metaicl_pool.MetaICLFiles("superglue-cb").read("test")[:4]
  scores, _ = ude.option_scores(scorer, cfg.kshot_format(),
                                [_seed_demos("superglue-cb", 2)] * 4,
                                [r[0] for r in rows], [r[2] for r in rows])
  preds = [r[2][int(np.argmax(s))] for r, s in zip(rows, scores)]
  assert got["score"] == pytest.approx(
      metaicl_pool.macro_f1([r[1] for r in rows], preds))


def test_dev_probes_are_the_dev_inputs_with_their_options(scorer,
                                                          monkeypatch):
  fake = _FakeOptionScores()
  monkeypatch.setattr(ude, "option_scores", fake)
  monkeypatch.setattr(kshot_option_scores, "sample_continuations",
                      lambda *a, **k: pytest.fail("dev probes sampled"))
  cfg = ude.DecoderEvalConfig(k=2, seeds=(SEED,), max_rows_per_task=3,
                              order="locale", probe="dev", probe_size=5)
  assert cfg.variant == "direct_seed_locale_devprobe"
  run = ude.evaluate_seed(scorer, "superglue-copa", SEED, cfg)
  dev = metaicl_pool.MetaICLFiles("superglue-copa").read(f"dev_{SEED}")[:5]
  probe_call = fake.calls[0]
  assert probe_call["queries"] == [r[0] for r in dev] * 2  # 2! orders.
  assert probe_call["options"] == [r[2] for r in dev] * 2
  assert len({r[2] for r in dev}) == 5  # Really per-row options.
  assert run["order"]["probes"] == 5
  assert run["order"]["candidates"] == [[0, 1], [1, 0]]


def test_bad_settings_are_one_line_errors(scorer, monkeypatch):
  for kwargs, match in [
      (dict(k=1, order="globale"), "needs k >= 2 and demonstrations='seed'"),
      (dict(k=4, order="locale", demonstrations="knn"),
       "demonstrations='seed'"),
      (dict(order="entropy"), "order='entropy' not in"),
      (dict(probe="test"), "probe='test' not in"),
      (dict(order_candidates=1), "order_candidates=1 must be >= 2"),
      (dict(probe_size=0), "probe_size=0 must be > 0")]:
    with pytest.raises(ValueError, match=match) as e:
      ude.DecoderEvalConfig(**kwargs)
    assert "\n" not in str(e.value)
  cfg = ude.DecoderEvalConfig(k=2, seeds=(SEED,), max_rows_per_task=2,
                              order="globale")
  assert ude.skip_reason("superglue-copa", cfg).startswith(
      "order: probe='generated' needs one option set shared by the rows")
  assert ude.skip_reason("superglue-cb", cfg) is None
  with pytest.raises(ValueError, match="'superglue-copa' seed 13: probe="):
    ude.evaluate_seed(scorer, "superglue-copa", SEED, cfg)
  no_decode = ude.DecoderScorer(scorer.model, scorer.frozen, _encode)
  with pytest.raises(ValueError, match="needs DecoderScorer.decode"):
    ude.evaluate_seed(no_decode, "superglue-cb", SEED, cfg)
  monkeypatch.setattr(kshot_option_scores, "sample_continuations",
                      lambda s, contexts, **k: ["no separators"] * len(
                          contexts))
  with pytest.raises(ValueError, match=r"'superglue-cb' seed 13: probing_set"
                     r".* no probe input parsed") as e:
    ude.evaluate_seed(scorer, "superglue-cb", SEED, cfg)
  assert "\n" not in str(e.value)


def test_sampling_is_seeded(scorer):
  contexts = ["w1 w2\nw5\n\n", "w9\nw6\n\n"]
  sample = lambda seed: kshot_option_scores.sample_continuations(
      scorer, contexts, max_new_tokens=16, seed=seed, max_tokens=64)
  first = sample(SEED)
  assert first == sample(SEED) and first != sample(SEED + 1)
  assert all(isinstance(t, str) and t for t in first)


def test_end_to_end_globale_on_the_tiny_decoder(scorer, tmp_path):
  cfg = ude.DecoderEvalConfig(k=2, seeds=(SEED,), max_rows_per_task=4,
                              order="globale", probe_size=8,
                              probe_max_new_tokens=32)
  table = ude.evaluate_folders(scorer, ["superglue-cb"], cfg)
  assert table["variant"] == "direct_seed_globale"
  (row,) = table["rows"]
  order = row["seed_orders"][str(SEED)]
  assert order["candidates"] == [[0, 1], [1, 0]]
  assert 1 <= order["probes"] <= 8
  best = int(np.argmax(order["entropies"]))
  assert order["permutation"] == order["candidates"][best]
  demos = _seed_demos("superglue-cb", 2)
  rows = metaicl_pool.MetaICLFiles("superglue-cb").read("test")[:4]
  scores, _ = ude.option_scores(
      scorer, cfg.kshot_format(),
      [[demos[i] for i in order["permutation"]]] * 4, [r[0] for r in rows],
      [r[2] for r in rows], normalization="mean")
  preds = [r[2][int(np.argmax(s))] for r, s in zip(rows, scores)]
  assert row["seeds"][str(SEED)] == pytest.approx(
      metaicl_pool.macro_f1([r[1] for r in rows], preds))
  json_path, _ = ude.write_table(table, tmp_path)
  assert json_path.name == "unseen_decoder_direct_seed_globale_test_k2.json"


def test_evaluate_unseen_passes_the_order_to_the_decoder_config(monkeypatch):
  from prompt_jax import setup as run_setup  # pylint: disable=g-import-not-at-top
  from prompt_jax.evaluators import unseen as unseen_eval  # pylint: disable=g-import-not-at-top
  from prompt_jax.evaluators import unseen_kshot  # pylint: disable=g-import-not-at-top
  from prompt_jax.icl import config as icl_config  # pylint: disable=g-import-not-at-top
  seen = {}
  monkeypatch.setattr(unseen_kshot, "evaluate_unseen_kshot_run",
                      lambda **kwargs: seen.update(kwargs) or {})
  unseen_eval.evaluate_unseen(
      model_dir="/nonexistent", task_names=["hr_to_lr"],
      backbone=run_setup.BackboneConfig(preset="tiny", kind="decoder",
                                        random_weights=True),
      method=prompt_tuning.PromptTuning(length=2),
      task_feature_lengths={"inputs": 200, "targets": 56},
      icl=icl_config.ICLConfig(k_shot=2, order="locale", order_probe="dev"))
  cfg = seen["cfg"]
  assert (cfg.order, cfg.probe, cfg.k, cfg.max_length, cfg.layout) == (
      "locale", "dev", 2, 256, "decoder")
  assert cfg.variant.startswith("direct_seed_locale")
