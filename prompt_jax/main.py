"""Command line: `python -m prompt_jax.main --gin_file=... --gin.KEY=VALUE`.

The only module with flags. It parses gin, writes the config to the model
directory, and calls the chosen entry point
(`--mode=train|eval|infer|unseen|classify`) through `gin.get_configurable`,
so the library stays gin-free. Expected errors (bad config, unknown task,
wrong file) print one line and exit 2.
"""

import argparse
import logging
import sys
from typing import Sequence

import gin

from prompt_jax import gin_utils


def _parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(prog="python -m prompt_jax.main")
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin file (repeatable); searched in gin_configs/")
  parser.add_argument("--mode", default="train",
                      choices=("train", "eval", "infer", "unseen", "classify"))
  args, rest = parser.parse_known_args(argv)
  bindings = []
  for arg in rest:
    if not arg.startswith("--gin."):
      parser.error(f"unknown argument {arg!r}")
    bindings.append(arg[len("--gin."):])
  return args, bindings


def _entry(mode: str):
  # pylint: disable=g-import-not-at-top
  from prompt_jax import classify, evaluate, infer, train, unseen_eval
  return {"train": train.train, "eval": evaluate.evaluate,
          "infer": infer.infer, "unseen": unseen_eval.evaluate_unseen,
          "classify": classify.classify}[mode]


def run(argv: Sequence[str]) -> dict:
  """Parses flags and gin, then runs the entry point; returns its result."""
  args, bindings = _parse_args(argv)
  gin_utils.parse(args.gin_file, bindings)
  entry = gin.get_configurable(_entry(args.mode))
  model_dir = gin.query_parameter("%MODEL_DIR")
  gin_utils.write_config(model_dir)
  try:
    return entry()
  finally:
    gin_utils.write_operative_config(model_dir)


def main(argv: Sequence[str] | None = None) -> int:
  logging.basicConfig(level=logging.WARNING,
                      format="%(levelname)s %(name)s: %(message)s")
  logging.getLogger("prompt_jax").setLevel(logging.INFO)
  for noisy in ("absl", "orbax", "jax"):  # Orbax logs every save at INFO.
    logging.getLogger(noisy).setLevel(logging.WARNING)
  try:
    run(sys.argv[1:] if argv is None else argv)
  except (ValueError, KeyError, FileNotFoundError, FloatingPointError) as e:
    # Gin appends "In call to configurable ..." lines; keep the message.
    message = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    print(f"error: {message}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
