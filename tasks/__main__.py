"""Command line: `python -m tasks list [--mixtures | --split SPLIT]`.

  python -m tasks list                      every task name, one per line
  python -m tasks list --mixtures           every mixture name
  python -m tasks list --split hr_to_lr     a MetaICL split: its train
      mixture and tasks, its unseen test tasks (`[test]` = has a test file)
      and the tasks the split names that the data lacks (or lists as both
      train and test)

Importing `tasks` registers everything; nothing is read from the data files,
so listing works without a data root. A listing that fails (a missing data
root, a malformed file) prints one line, `error: ...`, and exits with 2.
"""

import argparse
import sys
from collections.abc import Sequence

import seqio

import tasks
from tasks import mixtures


def _split_report(split: str) -> list[str]:
  test_key = mixtures.test_list_name(split)
  with_file = set(mixtures.TEST_TASKS_WITH_TEST_FILE[test_key])
  train = mixtures.TRAIN_TASKS[split]
  test = mixtures.TEST_TASK_LISTS[test_key]
  lines = [f"# train mixture {mixtures.train_mixture_name(split)}:"
           f" {len(train)} tasks"]
  lines += [f"train {name}" for name in train]
  lines += [f"missing-train {f}" for f in mixtures.MISSING_TRAIN_TASKS[split]]
  lines += [f"train-and-test {f} (left out of training)"
            for f in mixtures.TRAIN_TEST_OVERLAP[split]]
  lines.append(f"# {test_key}: {len(test)} tasks, {len(with_file)} with a"
               f" test file (eval mixture {mixtures.test_mixture_name(split)})")
  lines += [f"test {name}" + (" [test]" if name in with_file else "")
            for name in test]
  lines += [f"missing-test {f}" for f in mixtures.MISSING_TEST_TASKS[split]]
  return lines


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tasks")
  parser.add_argument("--verbose", action="store_true",
                      help="keep TensorFlow's native log lines")
  sub = parser.add_subparsers(dest="command", required=True)
  listing = sub.add_parser("list", help="list registered tasks")
  group = listing.add_mutually_exclusive_group()
  group.add_argument("--mixtures", action="store_true",
                     help="list mixtures instead of tasks")
  group.add_argument("--split", choices=mixtures.SPLIT_NAMES,
                     help="describe one MetaICL split")
  args = parser.parse_args(argv)
  try:
    if args.split:
      lines = _split_report(args.split)
    elif args.mixtures:
      lines = sorted(seqio.MixtureRegistry.names())
    else:
      registered = set(seqio.TaskRegistry.names())
      missing = [n for n in tasks.TASK_NAMES if n not in registered]
      if missing:
        print(f"error: listed but not registered: {missing}", file=sys.stderr)
        return 1
      lines = list(tasks.TASK_NAMES)
  except (FileNotFoundError, ValueError) as e:
    message = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    print(f"error: {message}", file=sys.stderr)
    return 2
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
