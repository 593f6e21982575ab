"""The unseen-task table: per-seed summaries, means and Markdown.

Shared by `prompt_jax.evaluators.unseen` (T5, seqio tasks) and
`prompt_jax.evaluators.unseen_decoder` (decoders, MetaICL files); no seqio here.
A table is `{split, k_shot, seeds, score_normalization, rows: [{task, type,
metric, examples, score[, worst, seeds]}], skipped: [{task, reason}],
mean[, mean_worst, seed_means]}`; `skipped` lists the tasks asked for but left
out of the mean (the Markdown names them under the table, or says none).

  row = {"task": "superglue-cb", "type": "classification",
         "metric": "macro_f1", "examples": 56}
  add_seed_summary(row, {13: {"score": 40.0, "metrics": {}},
                         21: {"score": 50.0, "metrics": {}}}, per_seed=True)
  row["score"], row["worst"]   # 45.0, 40.0
"""

import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from prompt_jax.data import jsonl as jsonl_io
from prompt_jax.icl import metaicl_pool
from prompt_jax.icl import metaicl_splits


def add_seed_summary(row: dict[str, Any], runs: dict[Any, dict[str, Any]],
                     per_seed: bool) -> None:
  """Adds the score (mean over seeds), worst and per-seed scores to `row`.

  `runs` maps seed -> {'score', 'metrics'}; without `per_seed` the single
  run's score and metrics are copied.
  """
  if per_seed:
    row["seeds"] = {str(s): r["score"] for s, r in runs.items()}
    row["score"] = float(np.mean(list(row["seeds"].values())))
    row["worst"] = float(min(row["seeds"].values()))
    row["seed_metrics"] = {str(s): r["metrics"] for s, r in runs.items()}
  else:
    first = next(iter(runs.values()))
    row["score"], row["metrics"] = first["score"], first["metrics"]


def summarize(rows: Sequence[dict[str, Any]], k_shot: int,
              seeds: Sequence[int]) -> dict[str, Any]:
  """`mean` of the row scores; with k > 0 also `mean_worst`, `seed_means`."""
  out = {"mean": float(np.mean([r["score"] for r in rows]))}
  if k_shot:
    out["mean_worst"] = float(np.mean([r["worst"] for r in rows]))
    out["seed_means"] = {str(s): float(np.mean([r["seeds"][str(s)]
                                                for r in rows]))
                         for s in seeds}
  return out


def metaicl_left_out(task_names: Sequence[str], evaluated: Sequence[str]
                     ) -> list[dict[str, str]]:
  """The test tasks of each MetaICL test mixture in `task_names`
  (`metaicl_<split>_test_v100`) that are not among the `evaluated` seqio
  task names, as `{task, reason}` (seqio name, or the folder for one the
  pool lacks): the mixture holds only pool tasks with a test file."""
  out = {}
  for split in metaicl_splits.SPLIT_NAMES:
    if metaicl_splits.test_mixture_name(split) not in task_names:
      continue
    for folder in metaicl_splits.test_folders(split):
      name = metaicl_pool.NAME_OF.get(folder, folder)
      if name not in evaluated and name not in out:
        out[name] = ("no test file" if folder in metaicl_pool.NAME_OF
                     else "not in the MetaICL pool under the data root")
  return [{"task": name, "reason": reason} for name, reason in out.items()]


def left_out_line(skipped: Sequence[Mapping[str, str]]) -> str:
  """One line naming the tasks left out of the mean and why (or none)."""
  if not skipped:
    return "Left out of the mean: none."
  return (f"Left out of the mean ({len(skipped)}): " + ", ".join(
      f"{s['task']} ({s['reason']})" for s in skipped) + ".")


def markdown(table: Mapping[str, Any]) -> str:
  """The table as Markdown: one row per task, the mean, then the tasks left
  out of it (`left_out_line`)."""
  seeds = [str(s) for s in table["seeds"]] if table["k_shot"] else []
  head = ["task", "type", "metric", "n", "score"]
  if seeds:
    head += ["worst"] + [f"seed {s}" for s in seeds]
  lines = [f"Unseen-task evaluation: split `{table['split']}`, k ="
           f" {table['k_shot']}, score normalization"
           f" `{table['score_normalization']}`.", "",
           "| " + " | ".join(head) + " |",
           "|" + "---|" * len(head)]
  for r in table["rows"]:
    cells = [r["task"], r["type"], r["metric"], str(r["examples"]),
             f"{r['score']:.2f}"]
    if seeds:
      cells += [f"{r['worst']:.2f}"] + [f"{r['seeds'][s]:.2f}" for s in seeds]
    lines.append("| " + " | ".join(cells) + " |")
  mean = ["**mean**", "", "", "", f"{table['mean']:.2f}"]
  if seeds:
    mean += [f"{table['mean_worst']:.2f}"] + [
        f"{table['seed_means'][s]:.2f}" for s in seeds]
  lines.append("| " + " | ".join(mean) + " |")
  lines += ["", left_out_line(table["skipped"])]
  return "\n".join(lines) + "\n"


def write(table: Mapping[str, Any], output_dir: pathlib.Path, stem: str,
          markdown_text: str) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes `<stem>.json` (the table) and `<stem>.md` (`markdown_text`)
  under `output_dir`, each atomically; returns both paths."""
  json_path = jsonl_io.write_text_atomic(
      pathlib.Path(output_dir) / f"{stem}.json",
      json.dumps(table, indent=2) + "\n")
  md_path = jsonl_io.write_text_atomic(
      pathlib.Path(output_dir) / f"{stem}.md", markdown_text)
  return json_path, md_path
