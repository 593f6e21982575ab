"""MetaICL test folders of split / task names, and their metrics.

  split_test_folders(["hr_to_lr"])   # the split's 26 test folders, in order
  task_metrics("classification", gold, predictions)  # ('macro_f1', {...})
"""

from collections.abc import Sequence

from prompt_jax.icl import metaicl_pool
from prompt_jax.icl import metaicl_splits


def split_test_folders(names: Sequence[str]) -> list[str]:
  """Split names (`hr_to_lr`), their test mixtures / lists, MetaICL task
  names or folders → test folders, in order (absent ones included, so that
  they are listed as skipped).

  Raises:
    ValueError: (one line) for a `metaicl_...` name that is none of these.
  """
  by_name = {}
  for split in metaicl_splits.SPLIT_NAMES:
    for alias in (split, metaicl_splits.test_mixture_name(split),
                  metaicl_splits.test_list_name(split)):
      by_name[alias] = metaicl_splits.test_folders(split)
  out = []
  for name in names:
    if name in by_name:
      folders = by_name[name]
    elif name in metaicl_pool.FOLDER_OF:
      folders = (metaicl_pool.FOLDER_OF[name],)
    elif name.startswith("metaicl_"):
      raise ValueError(f"{name!r} is neither a MetaICL split, its test"
                       " mixture/list, nor a MetaICL task")
    else:
      folders = (name,)
    out.extend(f for f in folders if f not in out)
  return out


def task_metrics(kind: str, targets: Sequence[str],
                 predictions: Sequence[str]) -> tuple[str, dict[str, float]]:
  """(primary metric, metrics): macro-F1 for classification, else accuracy."""
  metrics = {"accuracy": metaicl_pool.exact_match_accuracy(targets,
                                                          predictions)}
  if kind == "classification":
    metrics["macro_f1"] = metaicl_pool.macro_f1(targets, predictions)
    return "macro_f1", metrics
  return "accuracy", metrics
