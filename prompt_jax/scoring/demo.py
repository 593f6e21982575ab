"""`python -m prompt_jax.score_cli --demo`: the scoring CLI on a tiny random T5.

`score_cli` passes its own `run` in (this module does not import it):

  demo(lambda flags: score_cli.run(score_cli.build_parser().parse_args(flags)))
"""

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from prompt_jax.data import jsonl as jsonl_io

# The CLI on a list of flags (`--backbone=...`, ...) -> one record per line.
ScoreFn = Callable[[Sequence[str]], list[dict[str, Any]]]

_DEMO_INPUTS = (
    "sst2 sentence: a gorgeous, witty, seductive movie.",
    "sst2 sentence: the plot is tedious and the acting is flat.",
    "sst2 sentence: an utterly charming and hilarious film.",
)
_DEMO_TARGETS = ("positive", "negative")


def demo(score: ScoreFn) -> list[dict[str, Any]]:
  """Scores a built-in sentiment example end to end with a tiny random T5.

  Builds the model (T5 vocabulary size, tiny widths), saves it as an HF
  directory in a temp dir, writes the JSONL, runs the same path as the CLI
  and prints the scores and the best-ranked target per input.

  Args:
    score: the CLI's scoring run, given its flags (`score_cli.main` passes
      `run(build_parser().parse_args(flags))`).

  Returns:
    The records `score` returned, one per (input, target) pair.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  from prompt_jax.backbones.t5 import config as config_lib
  from prompt_jax.backbones.t5 import loading
  from prompt_jax.backbones.t5 import network
  # pylint: enable=g-import-not-at-top
  cfg = config_lib.T5Config(vocab_size=32128, emb_dim=32, num_heads=2,
                            head_dim=16, mlp_dim=64, num_encoder_layers=2,
                            num_decoder_layers=2)
  tokens = np.ones((1, 8), np.int32)
  params = network.T5Transformer(cfg).init(jax.random.key(0), tokens,
                                           tokens)["params"]
  with tempfile.TemporaryDirectory(prefix="prompt_jax_demo_") as tmp:
    backbone = os.path.join(tmp, "backbone")
    loading.save_hf_dir(backbone, cfg, params)
    input_file = os.path.join(tmp, "in.jsonl")
    rows = [{"inputs": i, "targets": t}
            for i in _DEMO_INPUTS for t in _DEMO_TARGETS]
    jsonl_io.write_jsonl(input_file, rows)
    flags = [f"--backbone={backbone}", f"--input_file={input_file}",
             f"--output_file={os.path.join(tmp, 'out.jsonl')}",
             "--batch_size=4"]
    start = time.perf_counter()
    records = score(flags)
    seconds = time.perf_counter() - start
  _print_table(records)
  print(f"\nscored {len(records)} (input, target) pairs in {seconds:.1f}s "
        f"(load + compile + score) on {jax.devices()[0].platform}")
  return records


def _print_table(records: list[dict[str, Any]]) -> None:
  print("NOTE: the T5 here has RANDOM weights (no pretrained T5 is available "
        "offline),\nso these scores and the ranking below are meaningless; "
        "the demo only shows the pipeline.\n")
  print(f"{'input':<60} {'target':<10} {'score':>9} {'tokens':>6}  best")
  by_input: dict[str, list[dict[str, Any]]] = {}
  for r in records:
    by_input.setdefault(r["inputs"], []).append(r)
  for text, group in by_input.items():
    best = max(group, key=lambda r: r["score"])
    for r in group:
      mark = "<--" if r is best else ""
      print(f"{text[:60]:<60} {r['targets']:<10} {r['score']:>9.3f} "
            f"{len(r['token_scores']):>6}  {mark}".rstrip())
