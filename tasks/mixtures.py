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
    listed in `MISSING_TRAIN_TASKS` (and logged as a WARNING, with their
    count and names, on import), never silently dropped; a task listed as
    both train and test (`sick` in non_nli_to_nli, as upstream) is left out
    of training and listed in `TRAIN_TEST_OVERLAP`.
  * `TEST_TASK_LISTS["metaicl_<split>_test_tasks"]`: the split's unseen test
    tasks in the pool (seqio names); `TEST_TASKS_WITH_TEST_FILE[...]` those
    that have a `test` split; `MISSING_TEST_TASKS[<split>]` the rest.
  * `metaicl_<split>_test_v100`: an eval mixture over the test tasks with a
    test file (for `--mode=eval` / `--mode=unseen` with split `test`).
"""

import logging
from collections.abc import Sequence

import seqio

from prompt_jax.icl.metaicl_splits import (  # pylint: disable=unused-import
    METAICL_RATE_CAP, METAICL_RATE_SPLIT, METAICL_SPLITS, SPLIT_NAMES,
    test_list_name, test_mixture_name, train_mixture_name)
from tasks import metaicl

_LOG = logging.getLogger(__name__)

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


class LeftOutReportingMixture(seqio.Mixture):
  """A mixture that names, as a WARNING when a run first reads it, the
  tasks it should hold but the data lacks (`left_out`)."""

  left_out: tuple[str, ...] = ()
  _reported: bool = False

  def get_dataset(self, *args, **kwargs):  # pylint: disable=arguments-differ
    if self.left_out and not self._reported:
      self._reported = True
      _LOG.warning("%s: %d of its tasks are absent from the data and left "
                   "out: %s", self.name, len(self.left_out),
                   ", ".join(self.left_out))
    return super().get_dataset(*args, **kwargs)


def add_mixture(name: str, tasks: Sequence, left_out: Sequence[str] = (),
                **kwargs) -> seqio.Mixture:
  """(Re-)registers a seqio mixture that reports `left_out` tasks on use."""
  seqio.MixtureRegistry.remove(name)
  mixture = seqio.MixtureRegistry.add(
      name, list(tasks), mixture_cls=LeftOutReportingMixture, **kwargs)
  mixture.left_out = tuple(left_out)
  return mixture


def register_mixture(name: str, task_names: Sequence[str], *, split: str,
                     cap: int | None = None, left_out: Sequence[str] = ()
                     ) -> seqio.Mixture:
  """(Re-)registers an examples-proportional mixture with a rate cap.

  Args:
    name: the mixture name.
    task_names: registered seqio tasks, no duplicates.
    split: the split whose row count sets each task's rate.
    cap: the largest rate (None: uncapped).
    left_out: tasks the mixture should hold but cannot (named in a WARNING
      when a run reads the mixture).

  Raises:
    ValueError: (one line) for no task, a duplicate or an unknown task.
  """
  task_names = tuple(task_names)
  _check_registered(task_names)
  rate = ExamplesProportionalRate(split, cap)
  return add_mixture(name, [(t, rate) for t in task_names], left_out)


# ------------------------------ MetaICL splits -----------------------------


def _in_pool(folders: Sequence[str]) -> tuple[tuple[str, ...],
                                              tuple[str, ...]]:
  """(seqio names of the folders in the pool, folders not in the pool)."""
  present = tuple(metaicl.NAME_OF[f] for f in folders if f in metaicl.NAME_OF)
  missing = tuple(f for f in folders if f not in metaicl.NAME_OF)
  return present, missing


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
    test_tasks = TEST_TASKS_WITH_TEST_FILE[test_list_name(split)]
    no_test_file = tuple(
        metaicl.FOLDER_OF[n] for n in TEST_TASK_LISTS[test_list_name(split)]
        if n not in test_tasks)
    register_mixture(train_mixture_name(split), TRAIN_TASKS[split],
                     split=METAICL_RATE_SPLIT, cap=METAICL_RATE_CAP,
                     left_out=MISSING_TRAIN_TASKS[split])
    register_mixture(test_mixture_name(split), test_tasks, split="test",
                     cap=METAICL_RATE_CAP,
                     left_out=MISSING_TEST_TASKS[split] + no_test_file)


def missing_folders() -> tuple[str, ...]:
  """Every folder some split names but the pool lacks, first one first."""
  return tuple(dict.fromkeys(
      f for split in SPLIT_NAMES
      for f in MISSING_TRAIN_TASKS[split] + MISSING_TEST_TASKS[split]))


def missing_report(verbose: bool = False) -> str:
  """One line: per split, how many named tasks the pool lacks (or which);
  `verbose` starts with the number of distinct tasks left out."""
  parts = []
  for split in SPLIT_NAMES:
    train, test = MISSING_TRAIN_TASKS[split], MISSING_TEST_TASKS[split]
    if verbose:
      parts.append(f"{split}: train {list(train)}, test {list(test)}")
    else:
      parts.append(f"{split} train {len(train)}/"
                   f"{len(METAICL_SPLITS[split]['train'])} test {len(test)}/"
                   f"{len(METAICL_SPLITS[split]['test'])}")
  count = f"{len(missing_folders())} " if verbose else ""
  return (f"{count}MetaICL split tasks absent from the data, left out of the"
          " mixtures: " + ", ".join(parts) + ("" if verbose else
          " (lists: tasks.mixtures.MISSING_TRAIN_TASKS / MISSING_TEST_TASKS,"
          " or `python -m tasks list --split SPLIT`)"))


register_metaicl_mixtures()
del _split, _lists, _test
