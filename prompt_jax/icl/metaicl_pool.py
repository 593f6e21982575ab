"""The MetaICL task pool as plain files: folders, splits, rows, metrics.

No seqio or TensorFlow here (the GPU image has neither): `tasks.metaicl`
builds its seqio tasks on top of this module, and the unseen-task
evaluation and the seqio-free meta-training path read the pool through it.

Files live under the data root in `metaicl/<task>/` (MetaICL / CrossFit
format): one JSON object per line, `{"task", "input", "output", "options"}`;
`options` is `[]` for free-form tasks. Splits per folder (`split_files`):
`train_<seed>` / `dev_<seed>` (the 16-shot files of seeds 13, 21, 42, 87,
100), `test` (folders in `TASKS_WITH_TEST_FILE`), `meta_train` (every k-shot
file, then the test file if any) and, for `glue-rte`, `train_full`.

  files = MetaICLFiles("superglue-cb")
  rows = files.read("train_13")   # 16 (input, output, options) rows
  task_type("superglue-cb")        # 'classification'
  macro_f1(["a", "b"], ["a", "a"])  # 33.33...: MetaICL's macro-F1
"""

import functools
import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from prompt_jax.data import root as data_root_lib

SEEDS = (13, 21, 42, 87, 100)
K_SHOT = 16
METAICL_DIR = "metaicl"
TASK_TYPES = ("classification", "multi-choice", "free-form")

# The 113 task folders under `metaicl/` (checked against the data by a test).
TASK_FOLDERS = (
    "ade_corpus_v2-classification", "ade_corpus_v2-dosage", "ag_news",
    "ai2_arc", "anli", "art", "blimp-anaphor_number_agreement",
    "blimp-ellipsis_n_bar_2", "blimp-sentential_negation_npi_licensor_present",
    "blimp-sentential_negation_npi_scope", "boolq", "circa", "climate_fever",
    "codah", "commonsense_qa", "cosmos_qa", "crows_pairs", "discovery", "dream",
    "emo", "emotion", "ethos-directed_vs_generalized", "ethos-disability",
    "ethos-gender", "ethos-national_origin", "ethos-race", "ethos-religion",
    "ethos-sexual_orientation", "freebase_qa", "glue-cola", "glue-mnli",
    "glue-mrpc", "glue-qnli", "glue-qqp", "glue-rte", "glue-sst2", "glue-wnli",
    "google_wellformed_query", "hate_speech18", "hate_speech_offensive",
    "hatexplain", "health_fact", "hellaswag", "hotpot_qa", "imdb", "kilt_ay2",
    "kilt_fever", "kilt_hotpotqa", "kilt_nq", "kilt_trex", "kilt_zsre",
    "lama-conceptnet", "lama-google_re", "lama-squad", "lama-trex", "liar",
    "mc_taco", "medical_questions_pairs", "numer_sense", "onestop_english",
    "openbookqa", "paws", "piqa", "poem_sentiment", "proto_qa", "qa_srl",
    "qasc", "quail", "quarel", "quartz-no_knowledge", "quartz-with_knowledge",
    "quoref", "race-high", "race-middle", "ropes", "rotten_tomatoes", "sciq",
    "scitail", "sick", "sms_spam", "social_i_qa", "squad-no_context",
    "squad-with_context", "superglue-cb", "superglue-copa", "superglue-multirc",
    "superglue-record", "superglue-rte", "superglue-wic", "superglue-wsc",
    "swag", "tab_fact", "trec", "trec-finegrained", "tweet_eval-emoji",
    "tweet_eval-emotion", "tweet_eval-hate", "tweet_eval-irony",
    "tweet_eval-offensive", "tweet_eval-sentiment",
    "tweet_eval-stance_abortion", "tweet_eval-stance_atheism",
    "tweet_eval-stance_climate", "tweet_eval-stance_feminist",
    "tweet_eval-stance_hillary", "tweet_qa", "web_questions", "wiki_qa",
    "wikisql", "wino_grande", "wiqa", "xsum", "yelp_polarity",
)

# The seqio name of each folder, same order: `metaicl_<folder>_v100` with
# `-` → `_` (seqio names allow no `-`); `FOLDER_OF` maps back.
TASK_NAMES = (
    "metaicl_ade_corpus_v2_classification_v100",
    "metaicl_ade_corpus_v2_dosage_v100", "metaicl_ag_news_v100",
    "metaicl_ai2_arc_v100", "metaicl_anli_v100", "metaicl_art_v100",
    "metaicl_blimp_anaphor_number_agreement_v100",
    "metaicl_blimp_ellipsis_n_bar_2_v100",
    "metaicl_blimp_sentential_negation_npi_licensor_present_v100",
    "metaicl_blimp_sentential_negation_npi_scope_v100", "metaicl_boolq_v100",
    "metaicl_circa_v100", "metaicl_climate_fever_v100", "metaicl_codah_v100",
    "metaicl_commonsense_qa_v100", "metaicl_cosmos_qa_v100",
    "metaicl_crows_pairs_v100", "metaicl_discovery_v100", "metaicl_dream_v100",
    "metaicl_emo_v100", "metaicl_emotion_v100",
    "metaicl_ethos_directed_vs_generalized_v100",
    "metaicl_ethos_disability_v100", "metaicl_ethos_gender_v100",
    "metaicl_ethos_national_origin_v100", "metaicl_ethos_race_v100",
    "metaicl_ethos_religion_v100", "metaicl_ethos_sexual_orientation_v100",
    "metaicl_freebase_qa_v100", "metaicl_glue_cola_v100",
    "metaicl_glue_mnli_v100", "metaicl_glue_mrpc_v100",
    "metaicl_glue_qnli_v100", "metaicl_glue_qqp_v100", "metaicl_glue_rte_v100",
    "metaicl_glue_sst2_v100", "metaicl_glue_wnli_v100",
    "metaicl_google_wellformed_query_v100", "metaicl_hate_speech18_v100",
    "metaicl_hate_speech_offensive_v100", "metaicl_hatexplain_v100",
    "metaicl_health_fact_v100", "metaicl_hellaswag_v100",
    "metaicl_hotpot_qa_v100", "metaicl_imdb_v100", "metaicl_kilt_ay2_v100",
    "metaicl_kilt_fever_v100", "metaicl_kilt_hotpotqa_v100",
    "metaicl_kilt_nq_v100", "metaicl_kilt_trex_v100", "metaicl_kilt_zsre_v100",
    "metaicl_lama_conceptnet_v100", "metaicl_lama_google_re_v100",
    "metaicl_lama_squad_v100", "metaicl_lama_trex_v100", "metaicl_liar_v100",
    "metaicl_mc_taco_v100", "metaicl_medical_questions_pairs_v100",
    "metaicl_numer_sense_v100", "metaicl_onestop_english_v100",
    "metaicl_openbookqa_v100", "metaicl_paws_v100", "metaicl_piqa_v100",
    "metaicl_poem_sentiment_v100", "metaicl_proto_qa_v100",
    "metaicl_qa_srl_v100", "metaicl_qasc_v100", "metaicl_quail_v100",
    "metaicl_quarel_v100", "metaicl_quartz_no_knowledge_v100",
    "metaicl_quartz_with_knowledge_v100", "metaicl_quoref_v100",
    "metaicl_race_high_v100", "metaicl_race_middle_v100", "metaicl_ropes_v100",
    "metaicl_rotten_tomatoes_v100", "metaicl_sciq_v100", "metaicl_scitail_v100",
    "metaicl_sick_v100", "metaicl_sms_spam_v100", "metaicl_social_i_qa_v100",
    "metaicl_squad_no_context_v100", "metaicl_squad_with_context_v100",
    "metaicl_superglue_cb_v100", "metaicl_superglue_copa_v100",
    "metaicl_superglue_multirc_v100", "metaicl_superglue_record_v100",
    "metaicl_superglue_rte_v100", "metaicl_superglue_wic_v100",
    "metaicl_superglue_wsc_v100", "metaicl_swag_v100", "metaicl_tab_fact_v100",
    "metaicl_trec_v100", "metaicl_trec_finegrained_v100",
    "metaicl_tweet_eval_emoji_v100", "metaicl_tweet_eval_emotion_v100",
    "metaicl_tweet_eval_hate_v100", "metaicl_tweet_eval_irony_v100",
    "metaicl_tweet_eval_offensive_v100", "metaicl_tweet_eval_sentiment_v100",
    "metaicl_tweet_eval_stance_abortion_v100",
    "metaicl_tweet_eval_stance_atheism_v100",
    "metaicl_tweet_eval_stance_climate_v100",
    "metaicl_tweet_eval_stance_feminist_v100",
    "metaicl_tweet_eval_stance_hillary_v100", "metaicl_tweet_qa_v100",
    "metaicl_web_questions_v100", "metaicl_wiki_qa_v100",
    "metaicl_wikisql_v100", "metaicl_wino_grande_v100", "metaicl_wiqa_v100",
    "metaicl_xsum_v100", "metaicl_yelp_polarity_v100",
)

# Folders with `<task>_16_100_test.jsonl` (the others have no test split).
TASKS_WITH_TEST_FILE = (
    "ade_corpus_v2-dosage", "ag_news", "ai2_arc", "anli",
    "blimp-anaphor_number_agreement", "blimp-ellipsis_n_bar_2",
    "blimp-sentential_negation_npi_licensor_present",
    "blimp-sentential_negation_npi_scope", "climate_fever", "codah",
    "commonsense_qa", "crows_pairs", "dream", "emo", "emotion",
    "ethos-directed_vs_generalized", "ethos-disability", "ethos-gender",
    "ethos-national_origin", "ethos-race", "ethos-religion",
    "ethos-sexual_orientation", "glue-cola", "glue-mnli", "glue-mrpc",
    "glue-rte", "glue-sst2", "glue-wnli", "hate_speech18", "hatexplain",
    "health_fact", "kilt_nq", "kilt_zsre", "lama-google_re", "lama-squad",
    "liar", "mc_taco", "medical_questions_pairs", "numer_sense",
    "onestop_english", "openbookqa", "poem_sentiment", "proto_qa", "qasc",
    "quarel", "quartz-no_knowledge", "quartz-with_knowledge", "ropes",
    "rotten_tomatoes", "scitail", "sick", "sms_spam", "superglue-cb",
    "superglue-copa", "superglue-rte", "superglue-wic", "superglue-wsc", "trec",
    "trec-finegrained", "tweet_eval-emotion", "tweet_eval-hate",
    "tweet_eval-irony", "tweet_eval-offensive", "tweet_eval-sentiment",
    "tweet_eval-stance_abortion", "tweet_eval-stance_atheism",
    "tweet_eval-stance_climate", "tweet_eval-stance_feminist",
    "tweet_eval-stance_hillary", "tweet_qa", "web_questions", "wiki_qa",
    "wino_grande",
)

FOLDER_OF: dict[str, str] = dict(zip(TASK_NAMES, TASK_FOLDERS))
NAME_OF: dict[str, str] = dict(zip(TASK_FOLDERS, TASK_NAMES))
_EXTRA_SPLITS = {"glue-rte": {"train_full": "overall_train_rte.jsonl"}}
_FIELDS = ("input", "options", "output", "task")

# (input, output, options) of one line.
Row = tuple[str, str, tuple[str, ...]]


def task_name(folder: str) -> str:
  """Seqio name of a folder: `glue-rte` → `metaicl_glue_rte_v100`."""
  return f"metaicl_{folder.replace('-', '_')}_v100"


def split_files(folder: str) -> dict[str, tuple[str, ...]]:
  """Split → file names inside `metaicl/<folder>/`, from the naming scheme."""
  files = {}
  for seed in SEEDS:
    files[f"train_{seed}"] = (f"{folder}_{K_SHOT}_{seed}_train.jsonl",)
    files[f"dev_{seed}"] = (f"{folder}_{K_SHOT}_{seed}_dev.jsonl",)
  kshot = tuple(name for names in files.values() for name in names)
  if folder in TASKS_WITH_TEST_FILE:
    files["test"] = (f"{folder}_{K_SHOT}_100_test.jsonl",)
  files["meta_train"] = kshot + files.get("test", ())
  for split, name in _EXTRA_SPLITS.get(folder, {}).items():
    files[split] = (name,)
  return files



# ------------------------------- reading ----------------------------------


def _parse_line(raw: bytes, where: str, folder: str) -> Row:
  try:
    obj = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{where}: not a JSON object line: {e}") from None
  if not isinstance(obj, dict) or tuple(sorted(obj)) != _FIELDS:
    got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(f"{where}: expected the keys {list(_FIELDS)}, got {got}")
  if obj["task"] != folder:
    raise ValueError(f"{where}: task {obj['task']!r} in the folder of"
                     f" {folder!r}")
  text, output, options = obj["input"], obj["output"], obj["options"]
  if not (isinstance(text, str) and isinstance(output, str)
          and isinstance(options, list)
          and all(isinstance(o, str) for o in options)):
    raise ValueError(f"{where}: 'input' and 'output' must be strings and"
                     " 'options' a list of strings")
  if options and output not in options:
    raise ValueError(f"{where}: unknown label: output {output!r} is not one of"
                     f" the options {options}")
  return text, output, tuple(options)


def parse_metaicl_lines(data: bytes, path: str | os.PathLike[str],
                        folder: str) -> list[Row]:
  """Parses MetaICL JSON lines into (input, output, options) rows.

  One trailing newline is allowed; every other line, blank ones included,
  must be an example whose `task` is `folder` and, when `options` is
  non-empty, whose `output` is one of them.

  Raises:
    ValueError: `path:line: ...` for the first malformed line.
  """
  lines = data.split(b"\n")
  if lines and not lines[-1]:
    lines.pop()
  return [_parse_line(raw.rstrip(b"\r"), f"{path}:{lineno}", folder)
          for lineno, raw in enumerate(lines, start=1)]


@functools.lru_cache(maxsize=256)
def _read_cached(path: str, mtime_ns: int, size: int,
                 folder: str) -> tuple[Row, ...]:
  del mtime_ns, size  # Part of the cache key only: a changed file is re-read.
  rows = parse_metaicl_lines(pathlib.Path(path).read_bytes(), path, folder)
  if not rows:
    raise ValueError(f"{path}: no examples")
  return tuple(rows)


def _root(root: str | os.PathLike[str] | None) -> pathlib.Path:
  return data_root_lib.data_root() if root is None else pathlib.Path(root)


@functools.lru_cache(maxsize=None)
def _task_type_cached(path: str) -> str:
  try:
    meta = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8: {e}") from None
  if not isinstance(meta, dict) or "task_type" not in meta:
    raise ValueError(f"{path}: no 'task_type' key in the task metadata")
  task_type = meta["task_type"]
  if task_type not in TASK_TYPES:
    raise ValueError(f"{path}: task_type {task_type!r} not in {TASK_TYPES}")
  return task_type


def task_type(folder: str, root: str | os.PathLike[str] | None = None) -> str:
  """`classification`, `multi-choice` or `free-form`, from
  `metaicl/config/tasks/<folder>.json` (read on first use, then cached).

  Raises:
    FileNotFoundError: (one line) if the metadata file is missing.
    ValueError: (one line, `path[:line]: ...`) if it is malformed.
  """
  path = _root(root) / METAICL_DIR / "config" / "tasks" / f"{folder}.json"
  if not path.is_file():
    raise FileNotFoundError(f"MetaICL task metadata not found: {path}")
  return _task_type_cached(str(path))


class MetaICLFiles:
  """The split files of one MetaICL folder, read and validated on use."""

  def __init__(self, folder: str, *,
               root: str | os.PathLike[str] | None = None):
    """Args: folder under `metaicl/` (e.g. `glue-rte`); root: the data root
    (None: `data_root()` at read time, honouring `$PROMPT_JAX_DATA_ROOT`)."""
    self.folder = folder
    self.files = split_files(folder)
    self._root = root

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self.files)

  def paths(self, split: str) -> list[pathlib.Path]:
    """The files of `split` (raises a one-line error if one is missing)."""
    if split not in self.files:
      raise ValueError(f"MetaICL task {self.folder!r} has no split {split!r};"
                       f" it has {sorted(self.files)}.")
    folder = _root(self._root) / METAICL_DIR / self.folder
    paths = [folder / name for name in self.files[split]]
    for path in paths:
      if not path.is_file():
        raise FileNotFoundError(
            f"Data file for split {split!r} not found: {path}")
    return paths

  def read(self, split: str) -> tuple[Row, ...]:
    """The (input, output, options) rows of `split`, parsed and validated."""
    rows = []
    for path in self.paths(split):
      stat = path.stat()
      rows.extend(_read_cached(str(path), stat.st_mtime_ns, stat.st_size,
                               self.folder))
    return tuple(rows)


# -------------------------------- metrics ---------------------------------

def exact_match_accuracy(targets: Sequence[str],
                         predictions: Sequence[str]) -> float:
  """Percent of predictions equal to their target (whitespace-stripped)."""
  if len(targets) != len(predictions) or not targets:
    raise ValueError(f"need as many predictions as targets (> 0), got"
                     f" {len(predictions)} and {len(targets)}")
  hits = sum(t.strip() == p.strip() for t, p in zip(targets, predictions))
  return 100.0 * hits / len(targets)


def macro_f1(targets: Sequence[str], predictions: Sequence[str]) -> float:
  """MetaICL's macro-F1 in percent (`metaicl/data.py:evaluate`).

  The mean over the GOLD classes of per-class F1: a class that is predicted
  but never gold adds no term (sklearn's default would average it in as 0).
  """
  exact_match_accuracy(targets, predictions)  # Validates the lengths.
  recalls, precisions = {}, {}
  for t, p in zip(targets, predictions):
    t, p = t.strip(), p.strip()
    recalls.setdefault(t, []).append(t == p)
    precisions.setdefault(p, []).append(t == p)
  f1s = []
  for label, hits in recalls.items():
    precision = np.mean(precisions[label]) if label in precisions else 1.0
    recall = np.mean(hits)
    f1s.append(0.0 if precision + recall == 0 else
               2 * precision * recall / (precision + recall))
  return 100.0 * float(np.mean(f1s))
