"""Which registered seqio tasks an unseen-task evaluation covers.

Both unseen-task evaluators (`unseen` for T5, `unseen_decoder` for decoders)
take task and mixture names; this turns them into task names and checks that
none was trained on. The names are looked up in seqio's registries, so the
caller must have registered the tasks first (the gin run files import
`tasks`; tests import the task modules they use).

  resolve_tasks(["metaicl_hr_to_lr_test_v100"])  # its tasks, in order
  check_unseen(names, trained_on=["metaicl_hr_to_lr_train_v100"])
"""

from collections.abc import Sequence

import seqio


def resolve_tasks(names: Sequence[str]) -> list[str]:
  """Task and mixture names → task names (mixtures expanded, order kept).

  Raises:
    ValueError: (one line) for a name that is neither, or no names.
  """
  out = []
  for name in names:
    if name in seqio.TaskRegistry.names():
      subtasks = [name]
    elif name in seqio.MixtureRegistry.names():
      subtasks = [t.name for t in seqio.get_subtasks(
          seqio.get_mixture_or_task(name))]
    else:
      raise ValueError(f"unknown task or mixture {name!r} (see `python -m"
                       " tasks list` and `python -m tasks list --mixtures`)")
    out.extend(t for t in subtasks if t not in out)
  if not out:
    raise ValueError("evaluate_unseen needs at least one task")
  return out


def check_unseen(task_names: Sequence[str], trained_on: Sequence[str]) -> None:
  """Raises a one-line ValueError if a task was among the training tasks."""
  seen = set(resolve_tasks(trained_on)) if trained_on else set()
  overlap = [t for t in task_names if t in seen]
  if overlap:
    raise ValueError(f"tasks {overlap} were trained on ({list(trained_on)});"
                     " an unseen-task evaluation must leave them out")
