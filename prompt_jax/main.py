"""Command line: `python -m prompt_jax.main --gin_file=... --gin.KEY=VALUE`.

The only module with flags. It parses gin, calls the chosen entry point
(`--mode=train|eval|infer|unseen|classify`) through `gin.get_configurable`,
so the library stays gin-free, and records the config in the model
directory: training writes `config.gin` and `operative_config.gin` once its
setup succeeded (before the first step); any other mode writes
`config_<mode>.gin` and `operative_config_<mode>.gin` after it succeeded, so
it never overwrites the training config and a failing call writes nothing.

Exit status: 0 done; 2 an expected error (bad config, unknown task, wrong
file), printed as one line; 143 (128 + SIGTERM) training was preempted
after saving a checkpoint of its last step (rerun the command to resume).
"""

import argparse
import sys
from typing import Sequence

import gin

from prompt_jax import console
from prompt_jax import gin_utils

PREEMPTED_EXIT = 143  # 128 + SIGTERM, as a shell reports a terminated job.


def _parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(prog="python -m prompt_jax.main")
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin file (repeatable); searched in gin_configs/")
  parser.add_argument("--mode", default="train",
                      choices=("train", "eval", "infer", "unseen", "classify"))
  parser.add_argument("--verbose", action="store_true",
                      help="also print third-party INFO logs and the native "
                      "GPU-probe lines")
  args, rest = parser.parse_known_args(argv)
  bindings = []
  for arg in rest:
    if not arg.startswith("--gin."):
      parser.error(f"unknown argument {arg!r}")
    bindings.append(arg[len("--gin."):])
  return args, bindings


def _entry(mode: str):
  # pylint: disable=g-import-not-at-top
  from prompt_jax.evaluators import classify
  from prompt_jax import evaluate
  from prompt_jax import infer
  from prompt_jax import train
  from prompt_jax.evaluators import unseen as unseen_eval
  return {"train": train.train, "eval": evaluate.evaluate,
          "infer": infer.infer, "unseen": unseen_eval.evaluate_unseen,
          "classify": classify.classify}[mode]


def _write_configs(model_dir: str, suffix: str = "") -> None:
  gin_utils.write_config(model_dir, f"config{suffix}.gin")
  gin_utils.write_operative_config(model_dir, f"operative_config{suffix}.gin")


def run(argv: Sequence[str]) -> dict:
  """Parses flags and gin, then runs the entry point; returns its result."""
  args, bindings = _parse_args(argv)
  gin_utils.parse(args.gin_file, bindings)
  entry = gin.get_configurable(_entry(args.mode))
  model_dir = gin.query_parameter("%MODEL_DIR")
  if args.mode != "train":
    result = entry()
    _write_configs(model_dir, f"_{args.mode}")
    return result
  result = entry(on_start=lambda: _write_configs(model_dir))
  gin_utils.write_operative_config(model_dir)
  return result


def main(argv: Sequence[str] | None = None,
         filter_native_logs: bool = False) -> int:
  """Runs `run` and turns expected errors into one line; the exit status.

  `filter_native_logs` (the command line) drops the native GPU-probe lines
  from stderr unless `--verbose` is given (`console.setup`).
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  verbose = "--verbose" in argv
  console.setup(verbose=verbose,
                native_filter=filter_native_logs and not verbose)
  try:
    result = run(argv)
  except (ValueError, KeyError, FileNotFoundError, FloatingPointError) as e:
    # Gin appends "In call to configurable ..." lines; keep the message.
    message = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    print(f"error: {message}", file=sys.stderr)
    return 2
  if isinstance(result, dict) and result.get("preempted"):
    print(f"preempted at step {result['step']}: saved a checkpoint of step "
          f"{result['step']}; rerun the same command to resume",
          file=sys.stderr)
    return PREEMPTED_EXIT
  return 0


if __name__ == "__main__":
  sys.exit(main(filter_native_logs=True))
