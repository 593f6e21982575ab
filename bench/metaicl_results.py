"""MetaICL on unseen tasks with SmolLM2-135M: the rows of docs/RESULTS.md.

For a MetaICL split (`hr_to_lr`, `class_to_class`), six rows, each scored by
`prompt_jax.evaluators.unseen_decoder` on the split's unseen test tasks (rank
classification over each row's options, MetaICL's macro-F1 or accuracy,
mean and worst over the demonstration seeds):

  zero_shot        k = 0
  icl              k demonstrations of the seed's train file (direct)
  icl_calibrated   the same, contextual calibration (Zhao et al. 2021)
  icl_knn          k nearest train rows per query (KATE)
  metaicl_full     every weight meta-trained on the split's train tasks
                   (MetaICL, direct), then `icl`
  metaicl_prompt   a soft prompt meta-trained on the frozen backbone, then
                   `icl` behind the prompt

Meta-training (no seqio: this runs on the GPU image too): every train task's
`meta_train` rows (capped per task), each with k demonstrations sampled from
the same task (`kshot_format.meta_train_examples`), mixed
examples-proportionally (`array_batches.MixtureBatches`) and trained with the
`Trainer` train step (prompt: Adafactor; full: AdamW).

Each finished row is written to `<out>/<split>__<row>.json` (table, settings,
hardware, wall time; default out: `bench/results/metaicl_<settings>/`);
`--render` rewrites the MetaICL section of docs/RESULTS.md from the stored
rows of every settings directory.

  .venv/bin/python bench/metaicl_results.py --splits=hr_to_lr --settings=cpu
  .venv/bin/python bench/metaicl_results.py --render
  python3 bench/metaicl_results.py --settings=gpu --gguf=/tmp/smollm2.gguf \\
      --out=$OUT                         # the GPU image: no seqio, no gin
"""

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import platform
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# pylint: disable=wrong-import-position
from bench import markdown_section  # pylint: disable=wrong-import-position
from prompt_jax.data import array_batches
from prompt_jax import optim
from prompt_jax import setup as run_setup
from prompt_jax import trainer as trainer_lib
from prompt_jax.evaluators import unseen_decoder as ude
from prompt_jax.icl import kshot_format
from prompt_jax.icl import metaicl_pool
from prompt_jax.icl import metaicl_splits
from prompt_jax.methods.prompt_tuning import specs
from prompt_jax.methods import full_finetune
from prompt_jax.methods import prompt_tuning
# pylint: enable=wrong-import-position

RESULTS_DIR = ROOT / "bench" / "results"
RESULTS_MD = ROOT / "docs" / "RESULTS.md"
BEGIN, END = "<!-- metaicl_results.py:begin -->", "<!-- metaicl_results.py:end -->"
ROWS = ("zero_shot", "icl", "metaicl_prompt", "metaicl_full", "icl_calibrated",
        "icl_knn")
META_SEED = 100  # MetaICL's meta-training seed.


@dataclasses.dataclass(frozen=True)
class Settings:
  """One budget (see SETTINGS)."""
  k: int = 4
  seeds: tuple[int, ...] = metaicl_pool.SEEDS
  max_rows_per_task: int = 64  # First N query rows of each test file.
  test_tasks: int | None = None  # First N test folders with data (None: all).
  meta_steps: int = 300
  meta_seconds: float | None = None  # Also stop after this long (steps kept).
  meta_batch: int = 16
  meta_rows_per_task: int = 256  # First N `meta_train` rows of a train task.
  meta_train_tasks: int | None = None
  max_length: int = 1024
  trim_to_multiple: int | None = None  # None: every batch [B, max_length].
  prompt_length: int = 100
  prompt_lr: float = 0.03  # Adafactor (the SST-2 P=100 setting).
  full_lr: float = 2e-5  # AdamW.
  eval_batch: int = 32
  shared_context: bool = True
  length_bucket: int = 16


SETTINGS = {
    # H100/H200, one call of the device tool: all test tasks with data.
    "gpu": Settings(max_rows_per_task=48, meta_steps=500, meta_seconds=50,
                    meta_batch=16, eval_batch=64, shared_context=False,
                    length_bucket=256),
    # This 2-core CPU: a fixed subset (first 6 test tasks with data).
    "cpu": Settings(seeds=(13, 21), max_rows_per_task=16, test_tasks=6,
                    meta_steps=40, meta_batch=4, meta_rows_per_task=32,
                    max_length=512, eval_batch=16, shared_context=False,
                    length_bucket=256),
    # The pipeline end to end on a tiny random decoder (minutes, any machine).
    "smoke": Settings(seeds=(13,), max_rows_per_task=4, test_tasks=2,
                      meta_steps=3, meta_batch=8, meta_rows_per_task=8,
                      meta_train_tasks=3, max_length=256, eval_batch=8,
                      shared_context=False, length_bucket=128,
                      prompt_length=4),
}


def hardware() -> str:
  device = jax.devices()[0]
  if device.platform == "cpu":
    return f"CPU ({os.cpu_count()} cores, {platform.machine()})"
  return f"{device.device_kind} x{jax.device_count()}"


def backbone_config(settings_name: str, gguf: str) -> run_setup.BackboneConfig:
  """SmolLM2 (GGUF), or for 'smoke' a tiny random decoder with its vocab."""
  if settings_name == "smoke":
    return run_setup.BackboneConfig(
        random_weights=True, preset="tiny", kind="decoder", vocab_path=gguf,
        overrides={"vocab_size": 49152, "bos_id": 1, "eos_id": 2,
                   "pad_id": 0})
  return run_setup.BackboneConfig(path=gguf, preset="smollm2_135m",
                                  kind="decoder")


def test_folders(split: str, s: Settings) -> list[str]:
  """The split's test folders; with `test_tasks` the first N with data."""
  folders = ude.split_test_folders([split])
  if s.test_tasks is None:
    return folders
  cfg = ude.DecoderEvalConfig(k=s.k, seeds=s.seeds)
  return [f for f in folders if ude.skip_reason(f, cfg) is None
          ][:s.test_tasks]


def eval_config(s: Settings, row: str) -> ude.DecoderEvalConfig:
  return ude.DecoderEvalConfig(
      k=0 if row == "zero_shot" else s.k, seeds=s.seeds,
      calibration="contextual" if row == "icl_calibrated" else None,
      demonstrations="knn" if row == "icl_knn" else "seed",
      max_rows_per_task=s.max_rows_per_task, max_length=s.max_length,
      batch_size=s.eval_batch, shared_context=s.shared_context,
      length_bucket=s.length_bucket)


# ------------------------------ meta-training ------------------------------


def meta_train_examples(split: str, s: Settings, encode
                        ) -> tuple[dict[str, list], list[str]]:
  """{train folder: [(input ids, target ids)]} and the examples that could
  not be formatted (listed, never silently dropped)."""
  fmt = kshot_format.KShotFormat(method="direct", layout="decoder",
                                 max_length=s.max_length)
  tasks, dropped = {}, []
  for folder in metaicl_splits.train_folders(split)[:s.meta_train_tasks]:
    rows = metaicl_pool.MetaICLFiles(folder).read("meta_train")
    pairs = [r[:2] for r in rows[:s.meta_rows_per_task]]
    examples = kshot_format.meta_train_examples(
        pairs, s.k, META_SEED, fmt, encode, task=folder, errors=dropped)
    if examples:
      tasks[folder] = [(e.inputs, e.targets) for e in examples]
  return tasks, dropped


def meta_train(run: run_setup.Run, tasks: dict[str, list], part: str,
               s: Settings) -> tuple[object, list[dict]]:
  """Trains `part` ('prompt' or 'full'); returns (trainable, loss log)."""
  if part == "full":
    run = run_setup.with_method(run, full_finetune.FullFinetune())
  if part == "prompt":
    optimizer = optim.make_optimizer(name="adafactor",
                                     learning_rate=s.prompt_lr,
                                     weight_decay=1e-5)
  else:
    optimizer = optim.make_optimizer(name="adamw", learning_rate=s.full_lr,
                                     weight_decay=0.01)
  trainer = trainer_lib.Trainer(
      run.model, optimizer, run.mesh, run.rules,
      jax.tree.map(lambda x: x.sharding, run.frozen))
  state = trainer.init_state(jax.random.key(0))
  batches = array_batches.MixtureBatches(
      tasks, batch_size=s.meta_batch, max_length=s.max_length, seed=0,
      trim_to_multiple=s.trim_to_multiple)
  log, rng, start = [], jax.random.key(0), time.time()
  for step in range(1, s.meta_steps + 1):
    state, metrics = trainer.train_step(state, run.frozen,
                                        trainer.put_batch(next(batches)), rng)
    out_of_time = (s.meta_seconds is not None
                   and time.time() - start > s.meta_seconds)
    if (step % max(1, s.meta_steps // 10) == 0 or step in (1, s.meta_steps)
        or out_of_time):
      loss = float(jax.device_get(metrics["loss"]))
      log.append({"step": step, "loss": loss,
                  "seconds": round(time.time() - start, 1)})
      print(f"  {part} step {step}: loss {loss:.4f}"
            f" ({log[-1]['seconds']} s)", flush=True)
      if not np.isfinite(loss):
        raise FloatingPointError(f"meta-training ({part}) diverged: loss"
                                 f" {loss} at step {step}")
    if out_of_time:
      break
  return state.trainable, log


# --------------------------------- rows ------------------------------------


def run_row(row: str, split: str, s: Settings, run: run_setup.Run,
            folders: list[str]) -> dict:
  """One row's record (the unseen table plus what was trained)."""
  start = time.time()
  scorer = ude.DecoderScorer(run.model, run.frozen, run.tokenizer.encode,
                             decode=run.tokenizer.decode)
  meta = None
  if row.startswith("metaicl_"):
    part = "full" if row == "metaicl_full" else "prompt"
    tasks, dropped = meta_train_examples(split, s, scorer.encode)
    trained, log = meta_train(run, tasks, part, s)
    meta = {"part": part, "train_tasks": len(tasks),
            "examples": sum(len(v) for v in tasks.values()),
            "dropped": len(dropped), "dropped_first": dropped[:3],
            "steps": log[-1]["step"], "batch": s.meta_batch,
            "loss_log": log,
            "seconds": round(time.time() - start, 1)}
    if part == "full":
      scorer = dataclasses.replace(scorer, frozen=trained["backbone"])
    else:
      scorer = dataclasses.replace(scorer, trainable=trained)
  table = ude.evaluate_folders(scorer, folders, eval_config(s, row))
  return {"split": split, "row": row, "mean": table["mean"],
          "mean_worst": table.get("mean_worst"), "table": table,
          "meta_training": meta, "wall_s": round(time.time() - start, 1)}


def _json_default(value):
  return value.item() if isinstance(value, np.generic) else str(value)


def _build(backbone: run_setup.BackboneConfig, s: Settings
           ) -> run_setup.Run:
  return run_setup.build_run(
      backbone=backbone, method=prompt_tuning.PromptTuning(
          s.prompt_length, specs.sampled_vocab(), "prefix"))


_RUNS = {}


def _shared_run(backbone: run_setup.BackboneConfig, s: Settings
                ) -> run_setup.Run:
  """One run (weights loaded once) for every row that leaves them alone."""
  key = (repr(backbone), s.prompt_length)
  if key not in _RUNS:
    _RUNS[key] = _build(backbone, s)
  return _RUNS[key]


def run_split(split: str, rows: list[str], settings_name: str, gguf: str,
              out: pathlib.Path, deadline: float) -> None:
  """Runs the rows of one split, writing each record as it finishes."""
  s = SETTINGS[settings_name]
  backbone = backbone_config(settings_name, gguf)
  folders = test_folders(split, s)
  for row in rows:
    if time.time() > deadline:
      print(f"{split} {row}: skipped, past the deadline", flush=True)
      continue
    # Full fine-tuning takes the weights into its train state: a fresh run.
    run = (_build(backbone, s) if row == "metaicl_full"
           else _shared_run(backbone, s))
    print(f"{split} {row} ({settings_name})", flush=True)
    try:
      record = run_row(row, split, s, run, folders)
    except (ValueError, FloatingPointError) as e:
      record = {"split": split, "row": row, "error": str(e)}
      print(f"  failed: {e}", flush=True)
    record.update(settings=settings_name, config=dataclasses.asdict(s),
                  hardware=hardware(), model=str(backbone.path or "tiny"),
                  command=" ".join(sys.argv))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{split}__{row}.json"
    path.write_text(json.dumps(record, indent=1, default=_json_default) + "\n")
    if "mean" in record:
      print(f"  mean {record['mean']:.2f} (worst-seed mean"
            f" {record['mean_worst'] or float('nan'):.2f}),"
            f" {record['wall_s']} s", flush=True)


# -------------------------------- render -----------------------------------


def render_all(root: pathlib.Path = RESULTS_DIR) -> str:
  """One subsection per `metaicl_<settings>` directory under `root`."""
  parts = []
  for out in sorted(root.glob("metaicl_*"), reverse=True):  # gpu first.
    settings = out.name.removeprefix("metaicl_")
    parts += [f"Settings `{settings}` (`{out.relative_to(ROOT)}`):", "",
              render(out)]
  return "\n".join(parts)


def render(out: pathlib.Path) -> str:
  """The Markdown of one directory: what "trimmed" and "dropped" count,
  then per split one line per row."""
  records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
  lines = [_legend(records), ""]
  present = {r["split"] for r in records}
  for split in [s for s in metaicl_splits.SPLIT_NAMES if s in present]:
    mine = {r["row"]: r for r in records if r["split"] == split}
    any_row = next(r for r in mine.values() if "table" in r)
    table = any_row["table"]
    lines += [f"**{split}** — {len(table['rows'])} unseen test tasks"
              f" ({', '.join(r['task'] for r in table['rows'])}); first"
              f" {table['max_examples_per_task']} test rows per task; k ="
              f" {any_row['config']['k']} for the k-shot rows; seeds"
              f" {any_row['config']['seeds']}; hardware per row.", "",
              "| method | mean over tasks | worst-seed mean | trimmed /"
              " contexts | trained on | wall |", "|---|---|---|---|---|---|"]
    for row in ROWS:
      r = mine.get(row)
      if r is None:
        lines.append(f"| {row} | not run | | | | |")
      elif "error" in r:
        lines.append(f"| {row} | failed: {r['error'][:80]} | | | | |")
      else:
        m = r["meta_training"]
        trained = ("-" if m is None else f"{m['train_tasks']} tasks,"
                   f" {m['steps']} x {m['batch']} ({m['part']});"
                   f" {m['examples']} examples, {m['dropped']} dropped")
        worst = ("-" if r["mean_worst"] is None
                 else f"{r['mean_worst']:.2f}")
        trims = _trims(r["table"]["rows"])
        cut = [t["task"] for t in r["table"]["rows"] if t["trimmed_inputs"]
               or t["trimmed_options"]]
        trims += f" ({', '.join(cut)})" if cut else ""
        lines.append(f"| {row} | {r['mean']:.2f} | {worst} | {trims} |"
                     f" {trained} | {r['wall_s']:.0f} s ({r['hardware']}) |")
    left_out = _left_out_line(split, table, any_row["config"])
    lines += ["", left_out, "", *_per_task(mine, left_out), ""]
  return "\n".join(lines)


def _short_reason(reason: str) -> str:
  if reason.startswith("not in the MetaICL pool"):
    return "not in the MetaICL pool here"
  if reason.startswith("no data: ") and "has no split 'test'" in reason:
    return "no test file"
  return reason


def _left_out_line(split: str, table: dict, config: dict) -> str:
  """The split's test tasks left out of the means, grouped by why (the
  table's reason, else: not in the pool, no test file, or beyond the
  settings' first `test_tasks`); "none" when every one was evaluated."""
  done = {r["task"] for r in table["rows"]}
  why = {s["task"]: _short_reason(s["reason"]) for s in table["skipped"]}
  folders = metaicl_splits.test_folders(split)
  groups: dict[str, list[str]] = {}
  for folder in folders:
    if folder in done:
      continue
    if folder in why:
      reason = why[folder]
    elif folder not in metaicl_pool.NAME_OF:
      reason = "not in the MetaICL pool here"
    elif folder not in metaicl_pool.TASKS_WITH_TEST_FILE:
      reason = "no test file"
    elif config.get("test_tasks"):
      reason = f"beyond the first {config['test_tasks']} test tasks with data"
    else:
      reason = "not evaluated"
    groups.setdefault(reason, []).append(folder)
  count = sum(len(v) for v in groups.values())
  if not count:
    return "Left out of the means: none."
  return (f"Left out of the means ({count} of {len(folders)} test tasks): "
          + "; ".join(f"{', '.join(v)} ({k})" for k, v in groups.items())
          + ".")


def _per_task(mine: dict[str, dict], left_out: str) -> list[str]:
  """Per task, each row's score (mean over seeds), then `left_out`."""
  done = [row for row in ROWS if "table" in mine.get(row, {})]
  scores = {row: {t["task"]: t for t in mine[row]["table"]["rows"]}
            for row in done}
  first = scores[done[0]]
  lines = ["<details><summary>per task</summary>", "",
           "| task | metric | " + " | ".join(done) + " |",
           "|---|---|" + "---|" * len(done)]
  for task, t in first.items():
    cells = []
    for row in done:
      cell = scores[row][task]
      trims = ("" if not (cell["trimmed_inputs"] or cell["trimmed_options"])
               else f" ({_trims([cell])} trimmed)")
      cells.append(f"{cell['score']:.2f}{trims}")
    lines.append(f"| {task} | {t['metric']} | " + " | ".join(cells) + " |")
  return lines + ["", left_out, "", "</details>"]


def _contexts(task_row: dict) -> int:
  """Contexts scored for one task: its test rows x seeds (k = 0: one run,
  no `seeds`)."""
  return task_row["examples"] * len(task_row.get("seeds") or [None])


def _trims(task_rows: list[dict]) -> str:
  """`trimmed / contexts` over `task_rows` (e.g. `37 / 6000`), with the
  trimmed options when there are any."""
  inputs = sum(t["trimmed_inputs"] for t in task_rows)
  options = sum(t["trimmed_options"] for t in task_rows)
  return (f"{inputs} / {sum(_contexts(t) for t in task_rows)}"
          + (f" + {options} options" if options else ""))


def _legend(records: list[dict]) -> str:
  """What the "trimmed" and "dropped" counts of these records mean."""
  tables = [r["table"] for r in records if "table" in r]
  lengths = sorted({t["max_length"] for t in tables}) or ["?"]
  per_example = sorted({t["max_length_per_example"] for t in tables}) or ["?"]
  options = sum(t["trimmed_options"] for tab in tables for t in tab["rows"])
  return (
      "\"trimmed / contexts\": of the contexts scored (test rows x seeds;"
      " k = 0: x 1, with no demonstrations to cut), those whose"
      " demonstrations were cut from the left so that demonstrations + query"
      f" + option fit max_length = {' / '.join(map(str, lengths))} tokens"
      " (a row counts once per seed if any of its options needed the cut);"
      " per task, after the score where not 0. Not counted, nor recorded: an"
      " input (demonstration or query) cut from its end to fit"
      f" max_length_per_example = {' / '.join(map(str, per_example))}"
      " tokens with its output. "
      + ("No option was cut (`trimmed_options` is 0 in every row). "
         if not options else "\"+ N options\": options cut"
         " (`trimmed_options`). ")
      + "\"dropped\": meta-training examples that could not be formatted"
      " (an output leaving no room within max_length_per_example, or query +"
      " output over max_length), left out of meta-training.")


def write_markdown(root: pathlib.Path = RESULTS_DIR) -> None:
  markdown_section.replace_section(RESULTS_MD, BEGIN, END,
                                   "\n" + render_all(root))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--splits", default="hr_to_lr,class_to_class")
  parser.add_argument("--rows", default=",".join(ROWS))
  parser.add_argument("--settings", default="cpu", choices=sorted(SETTINGS))
  parser.add_argument("--gguf", default="smollm2",
                      help="SmolLM2 GGUF path ('smollm2': the wheel's)")
  parser.add_argument("--out", default=None,
                      help="default: bench/results/metaicl_<settings>")
  parser.add_argument("--minutes", type=float, default=1e9,
                      help="start no new row after this many minutes")
  parser.add_argument("--render", action="store_true")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  if args.render:
    write_markdown()
    return
  out = pathlib.Path(args.out or RESULTS_DIR / f"metaicl_{args.settings}")
  rows = args.rows.split(",")
  unknown = sorted(set(rows) - set(ROWS))
  if unknown:
    parser.error(f"unknown rows {unknown}; expected {list(ROWS)}")
  deadline = time.time() + 60 * args.minutes
  splits = args.splits.split(",")
  # Rows across splits in ROWS order: the most important rows come first.
  for row in rows:
    for split in splits:
      run_split(split, [row], args.settings, args.gguf, out, deadline)


if __name__ == "__main__":
  main()
