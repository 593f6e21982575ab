"""Mixtures: examples-proportional rates with a cap, and the MetaICL splits.

Generic part: `register_mixture(name, task_names, split=..., cap=...)` mixes
any registered tasks with rate `min(num_examples(split), cap)` per task
(`ExamplesProportionalRate`; T5's "examples-proportional mixing"). Rates are
computed when the mixture is first read, so registering reads no data.

  register_mixture("my_mix_v1", ["metaicl_glue_rte_v100", "sst2_v100"],
                   split="train", cap=1000)  # sst2 needs a "train" split;
                                              # every task needs `split`.

Evaluating a mixture evaluates each of its tasks separately (seqio's
Evaluator; `--mode=eval` writes one metrics file per task).

MetaICL part: the task splits of `metaicl/config/<split>.json`, written out
in `METAICL_SPLITS` (a test checks them against the files), become

  * `metaicl_<split>_train_v100`: a train mixture over the split's train
    tasks that exist in the pool (`tasks.metaicl`), rated on their
    `meta_train` split (every k-shot row plus the test file) capped at
    `METAICL_RATE_CAP`. Train on it with split `meta_train` (or one
    `train_<seed>`). Train tasks the split names but the pool lacks are
    listed in `MISSING_TRAIN_TASKS` (and logged at INFO on import), never
    silently dropped; a task listed as both train and test (`sick` in
    non_nli_to_nli, as upstream) is left out of training and listed in
    `TRAIN_TEST_OVERLAP`.
  * `TEST_TASK_LISTS["metaicl_<split>_test_tasks"]`: the split's unseen test
    tasks in the pool (seqio names); `TEST_TASKS_WITH_TEST_FILE[...]` those
    that have a `test` split; `MISSING_TEST_TASKS[<split>]` the rest.
  * `metaicl_<split>_test_v100`: an eval mixture over the test tasks with a
    test file (for `--mode=eval` / `--mode=unseen` with split `test`).
"""

import logging
from collections.abc import Sequence

import seqio

from tasks import metaicl

_LOG = logging.getLogger(__name__)

# MetaICL meta-trains on at most 16,384 examples per task.
METAICL_RATE_CAP = 16_384
METAICL_RATE_SPLIT = "meta_train"

# `train`/`test` of metaicl/config/<split>.json, in upstream order.
METAICL_SPLITS = {
    "hr_to_lr": {
        "train": (
            "piqa", "hate_speech_offensive", "google_wellformed_query",
            "social_i_qa", "circa", "quoref", "glue-sst2", "scitail", "emo",
            "cosmos_qa", "freebase_qa", "ag_news", "art", "paws", "kilt_ay2",
            "glue-qnli", "quail", "ade_corpus_v2-classification", "sciq",
            "hatexplain", "emotion", "glue-qqp", "kilt_fever", "kilt_nq",
            "dbpedia_14", "kilt_zsre", "hellaswag", "squad-with_context",
            "hotpot_qa", "glue-mnli", "ropes", "squad-no_context",
            "kilt_hotpotqa", "discovery", "superglue-record", "race-middle",
            "race-high", "lama-trex", "swag", "gigaword", "amazon_polarity",
            "biomrc", "tab_fact", "tweet_eval-emoji", "tweet_eval-offensive",
            "tweet_eval-sentiment", "tweet_qa", "imdb", "lama-conceptnet",
            "liar", "anli", "wiki_qa", "kilt_trex", "wikisql", "wino_grande",
            "wiqa", "search_qa", "xsum", "yahoo_answers_topics",
            "yelp_polarity", "yelp_review_full",
        ),
        "test": (
            "quarel", "financial_phrasebank", "openbookqa", "codah", "qasc",
            "glue-mrpc", "dream", "sick", "commonsense_qa",
            "medical_questions_pairs", "quartz-with_knowledge",
            "poem_sentiment", "quartz-no_knowledge", "glue-wnli",
            "climate_fever", "ethos-national_origin", "ethos-race",
            "ethos-religion", "ai2_arc", "hate_speech18", "glue-rte",
            "superglue-cb", "superglue-copa", "tweet_eval-hate",
            "tweet_eval-stance_atheism", "tweet_eval-stance_feminist",
        ),
    },
    "class_to_class": {
        "train": (
            "superglue-rte", "tweet_eval-sentiment", "discovery", "glue-rte",
            "superglue-wsc", "glue-mrpc", "tweet_eval-stance_hillary",
            "tweet_eval-offensive", "emotion", "hatexplain", "glue-cola",
            "sick", "paws", "ethos-sexual_orientation", "glue-qqp",
            "tweet_eval-emotion", "sms_spam", "health_fact", "glue-mnli",
            "imdb", "ethos-disability", "glue-wnli", "scitail",
            "trec-finegrained", "yahoo_answers_topics", "liar", "glue-sst2",
            "tweet_eval-stance_abortion", "circa", "tweet_eval-stance_climate",
            "glue-qnli", "tweet_eval-emoji", "ethos-directed_vs_generalized",
            "ade_corpus_v2-classification", "hate_speech_offensive",
            "superglue-wic", "google_wellformed_query", "tweet_eval-irony",
            "ethos-gender", "onestop_english", "trec", "rotten_tomatoes",
            "kilt_fever",
        ),
        "test": (
            "tweet_eval-stance_feminist", "ethos-national_origin",
            "tweet_eval-hate", "ag_news", "amazon_polarity", "hate_speech18",
            "poem_sentiment", "climate_fever", "medical_questions_pairs",
            "tweet_eval-stance_atheism", "superglue-cb", "dbpedia_14",
            "wiki_qa", "emo", "yelp_polarity", "ethos-religion",
            "financial_phrasebank", "tab_fact", "anli", "ethos-race",
        ),
    },
    "non_class_to_class": {
        "train": (
            "ade_corpus_v2-dosage", "art", "biomrc",
            "blimp-anaphor_number_agreement", "blimp-ellipsis_n_bar_2",
            "blimp-sentential_negation_npi_licensor_present",
            "blimp-sentential_negation_npi_scope", "commonsense_qa",
            "crows_pairs", "dream", "freebase_qa", "gigaword", "hellaswag",
            "hotpot_qa", "kilt_ay2", "kilt_hotpotqa", "kilt_trex", "kilt_zsre",
            "lama-conceptnet", "lama-google_re", "lama-squad", "numer_sense",
            "openbookqa", "piqa", "proto_qa", "qa_srl", "quarel",
            "quartz-no_knowledge", "race-high", "ropes", "sciq", "social_i_qa",
            "spider", "superglue-multirc", "wikisql", "xsum",
            "yelp_review_full",
        ),
        "test": (
            "tweet_eval-stance_feminist", "ethos-national_origin",
            "tweet_eval-hate", "ag_news", "amazon_polarity", "hate_speech18",
            "poem_sentiment", "climate_fever", "medical_questions_pairs",
            "tweet_eval-stance_atheism", "superglue-cb", "dbpedia_14",
            "wiki_qa", "emo", "yelp_polarity", "ethos-religion",
            "financial_phrasebank", "tab_fact", "anli", "ethos-race",
        ),
    },
    "qa_to_qa": {
        "train": (
            "biomrc", "boolq", "freebase_qa", "hotpot_qa", "kilt_hotpotqa",
            "kilt_nq", "kilt_trex", "kilt_zsre", "lama-conceptnet",
            "lama-google_re", "lama-squad", "lama-trex", "mc_taco",
            "numer_sense", "quoref", "ropes", "search_qa", "squad-no_context",
            "squad-with_context", "superglue-multirc", "superglue-record",
            "tweet_qa", "web_questions", "unifiedqa:squad2",
            "unifiedqa:natural_questions_with_dpr_para",
            "unifiedqa:race_string", "unifiedqa:squad1_1", "unifiedqa:drop",
            "unifiedqa:newsqa", "unifiedqa:narrativeqa",
            "unifiedqa:winogrande_xl", "unifiedqa:social_iqa",
            "unifiedqa:quoref", "unifiedqa:physical_iqa", "unifiedqa:ropes",
            "unifiedqa:commonsenseqa", "unifiedqa:boolq",
        ),
        "test": (
            "ai2_arc", "codah", "cosmos_qa", "dream", "hellaswag", "openbookqa",
            "qasc", "quail", "quarel", "quartz-no_knowledge",
            "quartz-with_knowledge", "sciq", "superglue-copa", "swag",
            "wino_grande", "wiqa", "unifiedqa:qasc", "unifiedqa:qasc_with_ir",
            "unifiedqa:openbookqa", "unifiedqa:openbookqa_with_ir",
            "unifiedqa:mctest", "unifiedqa:ai2_science_middle",
        ),
    },
    "non_qa_to_qa": {
        "train": (
            "hate_speech_offensive", "google_wellformed_query", "circa",
            "glue-sst2", "scitail", "emo", "ag_news", "art", "paws", "kilt_ay2",
            "glue-qnli", "ade_corpus_v2-classification", "hatexplain",
            "emotion", "glue-qqp", "kilt_fever", "dbpedia_14", "glue-mnli",
            "discovery", "gigaword", "amazon_polarity", "tab_fact",
            "tweet_eval-emoji", "tweet_eval-offensive", "tweet_eval-sentiment",
            "imdb", "liar", "anli", "wikisql", "xsum", "yahoo_answers_topics",
            "yelp_polarity", "yelp_review_full",
        ),
        "test": (
            "ai2_arc", "codah", "cosmos_qa", "dream", "hellaswag", "openbookqa",
            "qasc", "quail", "quarel", "quartz-no_knowledge",
            "quartz-with_knowledge", "sciq", "superglue-copa", "swag",
            "wino_grande", "wiqa", "unifiedqa:qasc", "unifiedqa:qasc_with_ir",
            "unifiedqa:openbookqa", "unifiedqa:openbookqa_with_ir",
            "unifiedqa:mctest", "unifiedqa:ai2_science_middle",
        ),
    },
    "non_nli_to_nli": {
        "train": (
            "ade_corpus_v2-classification", "ag_news", "amazon_polarity",
            "circa", "climate_fever", "dbpedia_14", "discovery", "emo",
            "emotion", "ethos-directed_vs_generalized", "ethos-disability",
            "ethos-gender", "ethos-national_origin", "ethos-race",
            "ethos-religion", "ethos-sexual_orientation",
            "financial_phrasebank", "glue-cola", "glue-mrpc", "glue-qqp",
            "glue-sst2", "google_wellformed_query", "hate_speech18",
            "hate_speech_offensive", "hatexplain", "health_fact", "imdb",
            "kilt_fever", "liar", "medical_questions_pairs", "onestop_english",
            "paws", "poem_sentiment", "rotten_tomatoes", "sick", "sms_spam",
            "superglue-wic", "superglue-wsc", "tab_fact", "trec",
            "trec-finegrained", "tweet_eval-emoji", "tweet_eval-emotion",
            "tweet_eval-hate", "tweet_eval-irony", "tweet_eval-offensive",
            "tweet_eval-sentiment", "tweet_eval-stance_abortion",
            "tweet_eval-stance_atheism", "tweet_eval-stance_climate",
            "tweet_eval-stance_feminist", "tweet_eval-stance_hillary",
            "wiki_qa", "yahoo_answers_topics", "yelp_polarity",
        ),
        "test": (
            "anli", "glue-mnli", "glue-qnli", "glue-rte", "glue-wnli",
            "scitail", "sick", "superglue-cb",
        ),
    },
    "non_paraphrase_to_paraphrase": {
        "train": (
            "ade_corpus_v2-classification", "ag_news", "amazon_polarity",
            "anli", "circa", "climate_fever", "dbpedia_14", "discovery", "emo",
            "emotion", "ethos-directed_vs_generalized", "ethos-disability",
            "ethos-gender", "ethos-national_origin", "ethos-race",
            "ethos-religion", "ethos-sexual_orientation",
            "financial_phrasebank", "glue-cola", "glue-mnli", "glue-qnli",
            "glue-rte", "glue-sst2", "glue-wnli", "google_wellformed_query",
            "hate_speech18", "hate_speech_offensive", "hatexplain",
            "health_fact", "imdb", "kilt_fever", "liar", "onestop_english",
            "poem_sentiment", "rotten_tomatoes", "scitail", "sick", "sms_spam",
            "superglue-cb", "superglue-rte", "superglue-wic", "superglue-wsc",
            "tab_fact", "trec", "trec-finegrained", "tweet_eval-emoji",
            "tweet_eval-emotion", "tweet_eval-hate", "tweet_eval-irony",
            "tweet_eval-offensive", "tweet_eval-sentiment",
            "tweet_eval-stance_abortion", "tweet_eval-stance_atheism",
            "tweet_eval-stance_climate", "tweet_eval-stance_feminist",
            "tweet_eval-stance_hillary", "wiki_qa", "yahoo_answers_topics",
            "yelp_polarity",
        ),
        "test": (
            "glue-mrpc", "glue-qqp", "medical_questions_pairs", "paws",
        ),
    },
}

SPLIT_NAMES = tuple(METAICL_SPLITS)
# Every mixture this module registers, spelled out for grep.
MIXTURE_NAMES = (
    "metaicl_hr_to_lr_train_v100", "metaicl_class_to_class_train_v100",
    "metaicl_non_class_to_class_train_v100", "metaicl_qa_to_qa_train_v100",
    "metaicl_non_qa_to_qa_train_v100", "metaicl_non_nli_to_nli_train_v100",
    "metaicl_non_paraphrase_to_paraphrase_train_v100",
    "metaicl_hr_to_lr_test_v100", "metaicl_class_to_class_test_v100",
    "metaicl_non_class_to_class_test_v100", "metaicl_qa_to_qa_test_v100",
    "metaicl_non_qa_to_qa_test_v100", "metaicl_non_nli_to_nli_test_v100",
    "metaicl_non_paraphrase_to_paraphrase_test_v100",
)


# ------------------------------ generic rates ------------------------------


class ExamplesProportionalRate:
  """Mixing rate `min(task.num_input_examples(split), cap)` (no cap: None).

  A seqio rate callable: seqio calls it with the Task when the mixture is
  read. Counts are of input examples (rows), not preprocessed examples.
  """

  def __init__(self, split: str, cap: int | None = None):
    if cap is not None and cap <= 0:
      raise ValueError(f"cap must be > 0 or None, got {cap}")
    self.split = split
    self.cap = cap

  def __call__(self, task: seqio.Task) -> float:
    if self.split not in task.splits:
      raise ValueError(f"task {task.name!r} has no split {self.split!r} to"
                       f" rate it by; it has {sorted(task.splits)}")
    n = task.num_input_examples(self.split)
    if n is None:
      raise ValueError(f"task {task.name!r} does not know its number of"
                       f" examples in {self.split!r}")
    return float(n if self.cap is None else min(n, self.cap))

  def __repr__(self) -> str:
    return f"ExamplesProportionalRate(split={self.split!r}, cap={self.cap})"


def _check_registered(task_names: Sequence[str]) -> None:
  if not task_names:
    raise ValueError("a mixture needs at least one task")
  if len(set(task_names)) != len(task_names):
    raise ValueError(f"duplicate task names in {list(task_names)}")
  registered = set(seqio.TaskRegistry.names())
  unknown = [n for n in task_names if n not in registered]
  if unknown:
    raise ValueError(f"unknown seqio tasks {unknown}; was their module"
                     " imported?")


def mixing_rates(task_names: Sequence[str], *, split: str,
                 cap: int | None = None) -> dict[str, float]:
  """The rates `register_mixture` would use, computed now (reads data)."""
  _check_registered(task_names)
  rate = ExamplesProportionalRate(split, cap)
  return {name: rate(seqio.TaskRegistry.get(name)) for name in task_names}


def register_mixture(name: str, task_names: Sequence[str], *, split: str,
                     cap: int | None = None) -> seqio.Mixture:
  """(Re-)registers an examples-proportional mixture with a rate cap.

  Args:
    name: the mixture name.
    task_names: registered seqio tasks, no duplicates.
    split: the split whose row count sets each task's rate.
    cap: the largest rate (None: uncapped).

  Raises:
    ValueError: (one line) for no task, a duplicate or an unknown task.
  """
  task_names = tuple(task_names)
  _check_registered(task_names)
  rate = ExamplesProportionalRate(split, cap)
  seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, [(t, rate) for t in task_names])


# ------------------------------ MetaICL splits -----------------------------


def _in_pool(folders: Sequence[str]) -> tuple[tuple[str, ...],
                                              tuple[str, ...]]:
  """(seqio names of the folders in the pool, folders not in the pool)."""
  present = tuple(metaicl.NAME_OF[f] for f in folders if f in metaicl.NAME_OF)
  missing = tuple(f for f in folders if f not in metaicl.NAME_OF)
  return present, missing


def train_mixture_name(split: str) -> str:
  return f"metaicl_{split}_train_v100"


def test_mixture_name(split: str) -> str:
  return f"metaicl_{split}_test_v100"


def test_list_name(split: str) -> str:
  return f"metaicl_{split}_test_tasks"


TRAIN_TASKS: dict[str, tuple[str, ...]] = {}
MISSING_TRAIN_TASKS: dict[str, tuple[str, ...]] = {}
# Tasks a split lists as BOTH train and test (upstream MetaICL lists `sick`
# so in non_nli_to_nli): left out of the train mixture, so that its test
# tasks stay unseen.
TRAIN_TEST_OVERLAP: dict[str, tuple[str, ...]] = {}
TEST_TASK_LISTS: dict[str, tuple[str, ...]] = {}
TEST_TASKS_WITH_TEST_FILE: dict[str, tuple[str, ...]] = {}
MISSING_TEST_TASKS: dict[str, tuple[str, ...]] = {}

for _split, _lists in METAICL_SPLITS.items():
  TRAIN_TEST_OVERLAP[_split] = tuple(
      f for f in _lists["train"] if f in _lists["test"])
  TRAIN_TASKS[_split], MISSING_TRAIN_TASKS[_split] = _in_pool(
      [f for f in _lists["train"] if f not in TRAIN_TEST_OVERLAP[_split]])
  _test, MISSING_TEST_TASKS[_split] = _in_pool(_lists["test"])
  TEST_TASK_LISTS[test_list_name(_split)] = _test
  TEST_TASKS_WITH_TEST_FILE[test_list_name(_split)] = tuple(
      n for n in _test if metaicl.FOLDER_OF[n] in metaicl.TASKS_WITH_TEST_FILE)


def register_metaicl_mixtures() -> None:
  """(Re-)registers the train and test mixtures of every MetaICL split."""
  for split in SPLIT_NAMES:
    register_mixture(train_mixture_name(split), TRAIN_TASKS[split],
                     split=METAICL_RATE_SPLIT, cap=METAICL_RATE_CAP)
    register_mixture(test_mixture_name(split),
                     TEST_TASKS_WITH_TEST_FILE[test_list_name(split)],
                     split="test", cap=METAICL_RATE_CAP)


def missing_report(verbose: bool = False) -> str:
  """One line: per split, how many named tasks the pool lacks (or which)."""
  parts = []
  for split in SPLIT_NAMES:
    train, test = MISSING_TRAIN_TASKS[split], MISSING_TEST_TASKS[split]
    if verbose:
      parts.append(f"{split}: train {list(train)}, test {list(test)}")
    else:
      parts.append(f"{split} train {len(train)}/"
                   f"{len(METAICL_SPLITS[split]['train'])} test {len(test)}/"
                   f"{len(METAICL_SPLITS[split]['test'])}")
  return ("MetaICL split tasks absent from the data, left out of the"
          " mixtures: " + ", ".join(parts) + ("" if verbose else
          " (lists: tasks.mixtures.MISSING_TRAIN_TASKS / MISSING_TEST_TASKS,"
          " or `python -m tasks list --split SPLIT`)"))


register_metaicl_mixtures()
# INFO, not WARNING: CLI errors must stay one line on stderr.
_LOG.info(missing_report(verbose=True))
del _split, _lists, _test
