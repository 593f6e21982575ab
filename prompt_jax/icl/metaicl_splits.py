"""MetaICL's task splits (`metaicl/config/<split>.json`), as folder lists.

No seqio here: `tasks.mixtures` builds seqio mixtures from these lists, and
seqio-free runs (`bench/metaicl_results.py` on the GPU image) read them
directly. A test checks `METAICL_SPLITS` against the config files.

  train_folders("hr_to_lr")  # the train folders present in the pool
  test_folders("hr_to_lr")   # the 26 unseen test folders (present or not)
"""

from prompt_jax.icl import metaicl_pool

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
SPLIT_NAMES = tuple(METAICL_SPLITS)

def _check(split: str) -> dict[str, tuple[str, ...]]:
  if split not in METAICL_SPLITS:
    raise ValueError(f"unknown MetaICL split {split!r}; expected one of"
                     f" {SPLIT_NAMES}")
  return METAICL_SPLITS[split]


def train_folders(split: str) -> tuple[str, ...]:
  """The split's train folders that the pool has, minus any the split also
  lists as a test task (`sick` in non_nli_to_nli), in upstream order,
  without repeats."""
  lists = _check(split)
  return tuple(dict.fromkeys(
      f for f in lists["train"]
      if f in metaicl_pool.NAME_OF and f not in lists["test"]))


def test_folders(split: str) -> tuple[str, ...]:
  """The split's test folders, in upstream order (absent ones included)."""
  return tuple(_check(split)["test"])


def train_mixture_name(split: str) -> str:
  """The seqio train mixture of a split (registered by tasks.mixtures)."""
  return f"metaicl_{split}_train_v100"


def test_mixture_name(split: str) -> str:
  return f"metaicl_{split}_test_v100"


def test_list_name(split: str) -> str:
  return f"metaicl_{split}_test_tasks"
