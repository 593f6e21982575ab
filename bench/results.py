"""The SmolLM2-135M results table of docs/RESULTS.md, from real runs.

One row per (task, method): zero-shot, k-shot in-context learning (k = 2, 8,
16; seeds 0, 1, 2), soft prompt tuning (P = 20 and 100, class-label init)
and full fine-tuning, on SST-2, RTE and BoolQ (tasks `*_smollm2_v100`,
`tasks/smollm2_tasks.py`). Every row is rank classification over the task's
target words (`prompt_jax.scoring.options`), the protocol of the transformers
reference in ../shared/bench/README.md.

Each finished row is stored as `bench/results/<task>__<row>.json` (with its
command, seeds, settings, hardware and wall time) and skipped on the next
call unless `--force`; `--render` rewrites the generated section of
docs/RESULTS.md from all stored rows.

  .venv/bin/python bench/results.py --tasks=sst2 --rows=zero_shot,icl_k2
  .venv/bin/python bench/results.py --render

Settings: 'cpu' (this 2-core machine: few training steps, BoolQ on a fixed
subset) or 'gpu' (longer training, every row); the row records which.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import shutil
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import seqio  # pylint: disable=g-import-not-at-top,wrong-import-position

import tasks  # pylint: disable=unused-import,wrong-import-position
from prompt_jax import checkpoints  # pylint: disable=wrong-import-position
from prompt_jax.data import seqio_batches as data_lib  # pylint: disable=wrong-import-position
from prompt_jax import optim  # pylint: disable=wrong-import-position
from prompt_jax.scoring import options as option_scoring  # pylint: disable=wrong-import-position
from prompt_jax import setup as run_setup  # pylint: disable=wrong-import-position
from prompt_jax import train as train_lib  # pylint: disable=wrong-import-position
from prompt_jax.backbones.llama import gguf_loading  # pylint: disable=wrong-import-position
from prompt_jax.icl import demo_selection  # pylint: disable=wrong-import-position
from prompt_jax.methods.prompt_tuning import specs  # pylint: disable=wrong-import-position
from prompt_jax.methods.prompt_tuning import method as prompt_tuning_lib  # pylint: disable=wrong-import-position
from prompt_jax.methods import prompt_tuning  # pylint: disable=wrong-import-position
from prompt_jax.methods import full_finetune  # pylint: disable=wrong-import-position
from tasks import smollm2_tasks  # pylint: disable=wrong-import-position
from tasks import vocab  # pylint: disable=wrong-import-position
from bench import markdown_section  # pylint: disable=wrong-import-position

OUT_DIR = ROOT / "bench" / "results"
RUNS_DIR = ROOT / "runs" / "results"
RESULTS_MD = ROOT / "docs" / "RESULTS.md"
BEGIN, END = "<!-- results.py:begin -->", "<!-- results.py:end -->"
ICL_SEEDS = (0, 1, 2)
BENCH_DEMOS = ("Review: a gorgeous, witty, seductive movie.\nSentiment: "
               "positive\nReview: the plot is nothing but boilerplate "
               "clichés.\nSentiment: negative\n")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A results task: seqio name and the text length its training needs."""
  name: str
  inputs_length: int  # Training feature length (covers the longest row).
  cpu_eval_rows: int | None  # Fixed first-N eval rows on CPU (None: all).
  cpu_train_rows_ok: bool  # Whether training rows run on CPU.


TASKS = {
    # SST-2's longest train row is 87 SmolLM2 tokens (dev 65): 95 keeps
    # every row whole, as the `make run` demo (inputs 95).
    "sst2": TaskSpec(smollm2_tasks.SST2_SMOLLM2_TASK, 95, None, True),
    "rte": TaskSpec("rte_smollm2_v100", 320, None, True),
    "boolq": TaskSpec("boolq_smollm2_v100", 1024, 400, False),
}
ROWS = ("zero_shot", "icl_bench2", "icl_k2", "icl_k8", "icl_k16",
        "prompt_p20", "prompt_p100", "full")
SETTINGS = {
    "cpu": {"steps": 150, "batch": 8, "full_lr": 2e-5},
    "gpu": {"steps": 1000, "batch": 32, "full_lr": 1e-5},
}


def hardware() -> str:
  device = jax.devices()[0]
  if device.platform == "cpu":
    return f"CPU ({os.cpu_count()} cores, {platform.machine()})"
  return f"{device.device_kind} x{jax.device_count()}"


class Backbone:
  """SmolLM2 weights, tokenizer and a bare prompt model, loaded once."""

  def __init__(self):
    self.cfg, params = gguf_loading.load_gguf(
        gguf_loading.default_smollm2_gguf())
    self.params = jax.device_put(params)
    self.tokenizer = vocab.smollm2_vocabulary().tokenizer

  def model(self, prompt_length: int = 1):
    return prompt_tuning_lib.decoder_model(self.cfg, prompt_length)

  def encode(self, text: str) -> list[int]:
    return list(self.tokenizer.encode(text))


def read_split(task: TaskSpec, split: str, limit: int | None = None):
  """[(input ids, label, input text, target text)] in file order."""
  ds = seqio.get_mixture_or_task(task.name).get_dataset(
      None, split=split, shuffle=False)
  rows = []
  for ex in ds.as_numpy_iterator():
    rows.append((list(ex["inputs"]), int(ex["label"]),
                 ex["inputs_pretokenized"].decode(),
                 ex["targets_pretokenized"].decode()))
    if limit is not None and len(rows) == limit:
      break
  return rows


def _options(backbone: Backbone, task: TaskSpec) -> list[list[int]]:
  return [backbone.encode(w)
          for w in smollm2_tasks.CLASSIFICATION_TASKS[task.name]]


def _eval(backbone, task, rows, trainable=None, prompt_length=1,
          context="", frozen=None) -> float:
  model = backbone.model(prompt_length)
  scores = option_scoring.score_options(
      model, trainable, backbone.params if frozen is None else frozen,
      inputs=[r[0] for r in rows], options=_options(backbone, task),
      context=backbone.encode(context) if context else ())
  return option_scoring.accuracy(scores, [r[1] for r in rows])


def demonstrations(train_rows, k: int, seed: int) -> str:
  """k seeded train rows as `inputs targets\\n` blocks (the bench format)."""
  idx = demo_selection.random_demonstrations(len(train_rows), k, seed)
  return "".join(f"{train_rows[i][2]}{train_rows[i][3]}\n" for i in idx)


def optimizer_settings(part: str, settings: dict,
                       prompt_lr: float | None) -> dict:
  """The `optim.make_optimizer` arguments of a training row, all of them
  (recorded in the row): the paper's Adafactor for prompts (lr 0.3 unless
  `prompt_lr`; nothing else changes with it), AdamW for full fine-tuning."""
  if part == "prompt":
    return optim.adafactor_paper_settings(learning_rate=prompt_lr or 0.3)
  return dict(name="adamw", learning_rate=settings["full_lr"],
              weight_decay=0.01)


def _train(backbone_cfg, task: TaskSpec, settings: dict, name: str, *,
           prompt_length: int, part: str, optimizer: dict):
  """Trains in a fresh run directory of its own; returns (result, the
  run's settings as recorded, its train log [[step, loss], ...])."""
  model_dir = RUNS_DIR / name
  shutil.rmtree(model_dir, ignore_errors=True)
  labels = [w.strip() for w in smollm2_tasks.CLASSIFICATION_TASKS[task.name]]
  dataset = data_lib.DatasetConfig(
      task.name, {"inputs": task.inputs_length, "targets": 1}, "train",
      settings["batch"], shuffle=True, seed=0, feature_converter="prefix_lm",
      trim_to_multiple=16)
  result = train_lib.train(
      model_dir=str(model_dir), backbone=backbone_cfg,
      method=(prompt_tuning.PromptTuning(
          prompt_length, specs.class_labels(labels), "prefix")
              if part == "prompt" else full_finetune.FullFinetune()),
      train_dataset_cfg=dataset, optimizer=optim.make_optimizer(**optimizer),
      total_steps=settings["steps"],
      checkpoint_cfg=checkpoints.CheckpointConfig(
          save_every_steps=settings["steps"], keep=1),
      log_every_steps=25, seed=0)
  recorded = {"run_dir": str(model_dir.relative_to(ROOT)),
              "dataset": dataclasses.asdict(dataset), "seed": 0,
              "prompt_init": "class_labels" if part == "prompt" else None,
              "prompt_position": "prefix" if part == "prompt" else None,
              "log_every_steps": 25}
  log = [[r["step"], r["loss"]]
         for r in map(json.loads, (model_dir / "metrics.jsonl").open())
         if r["split"] == "train"]
  return result, recorded, log


def run_row(row: str, task_key: str, backbone: Backbone, settings_name: str,
            prompt_lr: float | None = None) -> dict:
  """Runs one row; returns its record (accuracy in percent)."""
  task, settings = TASKS[task_key], SETTINGS[settings_name]
  limit = task.cpu_eval_rows if settings_name == "cpu" else None
  rows = read_split(task, "validation", limit)
  record = {"task": task.name, "row": row, "eval_rows": len(rows),
            "settings": settings_name}
  if row == "zero_shot":
    record["accuracy"] = _eval(backbone, task, rows)
  elif row == "icl_bench2":
    record["accuracy"] = _eval(backbone, task, rows, context=BENCH_DEMOS)
    record["seeds"] = "bench README demos"
  elif row.startswith("icl_k"):
    k = int(row[len("icl_k"):])
    train_rows = read_split(task, "train")
    accs = [_eval(backbone, task, rows,
                  context=demonstrations(train_rows, k, seed))
            for seed in ICL_SEEDS]
    record.update(accuracy=float(np.mean(accs)), worst=min(accs),
                  per_seed=accs, seeds=list(ICL_SEEDS))
  else:
    if settings_name == "cpu" and not task.cpu_train_rows_ok:
      raise SystemExit(f"{task_key}/{row}: training rows are GPU-only "
                       "(too long for the CPU budget)")
    part = "full" if row == "full" else "prompt"
    p = 1 if part == "full" else int(row[len("prompt_p"):])
    backbone_cfg = run_setup.BackboneConfig(
        path="smollm2", preset="smollm2_135m", kind="decoder")
    optimizer = optimizer_settings(part, settings, prompt_lr)
    lr_tag = f"_lr{prompt_lr:g}" if prompt_lr else ""
    result, recorded, log = _train(
        backbone_cfg, task, settings, f"{task_key}_{row}{lr_tag}",
        prompt_length=p, part=part, optimizer=optimizer)
    trained = result["trainable"]
    if part == "full":
      record["accuracy"] = _eval(backbone, task, rows,
                                 frozen=trained["backbone"])
    else:
      record["accuracy"] = _eval(backbone, task, rows, trainable=trained,
                                 prompt_length=p)
    train_rows = read_split(task, "train")
    record.update(train_steps=settings["steps"], batch=settings["batch"],
                  final_train_loss=result["train"]["loss"], seeds=[0],
                  learning_rate=optimizer["learning_rate"],
                  optimizer=optimizer, train_settings=recorded,
                  train_log=log, truncated_train_rows=sum(
                      len(r[0]) > task.inputs_length for r in train_rows),
                  train_rows=len(train_rows))
  return record


def record_make_run(run_dir: pathlib.Path, wall_s: float) -> dict:
  """The stored row of a `make run` job, from what its run wrote: the
  classify result, the recorded train settings, the train log and the
  operative gin config (kept whole in the row)."""
  classify = json.loads((run_dir / f"classify_{TASKS['sst2'].name}_"
                         "validation.json").read_text())
  settings = json.loads((run_dir / "train_settings.json").read_text())
  operative = (run_dir / "operative_config.gin").read_text()
  if "@optim.adafactor_paper()" not in operative:
    raise SystemExit(f"{run_dir}: not the make run recipe (adafactor_paper)")
  log = [[r["step"], r["loss"]]
         for r in map(json.loads, (run_dir / "metrics.jsonl").open())
         if r["split"] == "train"]
  inputs_length = settings["data"]["task_feature_lengths"]["inputs"]
  train_rows = read_split(TASKS["sst2"], "train")
  return {
      "task": classify["task"], "task_key": "sst2", "row": "make_run",
      "eval_rows": classify["rows"], "settings": "make run",
      "accuracy": classify["prompt_accuracy"],
      "zero_shot_accuracy": classify["zero_shot_accuracy"],
      "seeds": [settings["seed"]], "train_steps": log[-1][0],
      "batch": settings["data"]["batch_size"],
      "final_train_loss": log[-1][1],
      "optimizer": optim.adafactor_paper_settings(),
      "learning_rate": optim.adafactor_paper_settings()["learning_rate"],
      "train_settings": settings, "train_log": log,
      "truncated_train_rows": sum(len(r[0]) > inputs_length
                                  for r in train_rows),
      "train_rows": len(train_rows), "operative_config": operative,
      "wall_s": wall_s, "hardware": hardware(),
      "load_average": os.getloadavg(), "command": "make run"}


def render() -> str:
  """The generated Markdown section from every stored row."""
  records = [json.loads(p.read_text()) for p in sorted(OUT_DIR.glob("*.json"))]
  order = {r: i for i, r in enumerate(ROWS + ("make_run",))}
  records.sort(key=lambda r: (list(TASKS).index(r["task_key"]),
                              order[r["row"]]))
  lines = [BEGIN, "", "| task | method | accuracy (%) | eval rows | seeds |"
           " training | wall | hardware |", "|---|---|---|---|---|---|---|---|"]
  for r in records:
    acc = f"{r['accuracy']:.2f}"
    if "worst" in r:
      acc += f" (worst {r['worst']:.2f}; " + ", ".join(
          f"{a:.1f}" for a in r["per_seed"]) + ")"
    if "zero_shot_accuracy" in r:
      acc += f" (zero-shot {r['zero_shot_accuracy']:.2f} in the same run)"
    training = _training_cell(r)
    lines.append(f"| {r['task']} | {r['row']} | {acc} | {r['eval_rows']} | "
                 f"{r.get('seeds', '-')} | {training} | {r['wall_s']:.0f} s |"
                 f" {r['hardware']} ({r['settings']}) |")
  lines += ["", _left_out_line(records)]
  lines += ["", "Each row: `.venv/bin/python bench/results.py --tasks=<task> "
            "--rows=<method>`, plus `--prompt_lr=<lr>` for a prompt row "
            "whose lr is not 0.3; `make_run` is the row `make run` stores "
            "(its gin config `gin_configs/demo/sst2_smollm2.gin`). The exact "
            "command, optimizer settings, train log and truncation counts "
            "are in each row's JSON in bench/results/.", "", END]
  return "\n".join(lines)


def _training_cell(r: dict) -> str:
  """Steps, optimizer (with Adafactor's decay offset), final loss and how
  many train rows were truncated to the input length."""
  if "train_steps" not in r:
    return "-"
  opt = r.get("optimizer", {})
  name = opt.get("name", "optimizer not recorded (an older row),")
  if name == "adafactor":
    name += f" (decay offset {opt['decay_offset']:,})"
  cell = (f"{r['train_steps']} steps x {r['batch']}, {name} lr "
          f"{r['learning_rate']:g}, final loss {r['final_train_loss']:.3f}")
  if "truncated_train_rows" in r:
    cell += (f", {r['truncated_train_rows']} of {r['train_rows']} train rows"
             " truncated")
  return cell


def _left_out_line(records: list[dict]) -> str:
  """The (task, method) rows with no stored record, per task (or none)."""
  done = {(r["task_key"], r["row"]) for r in records}
  parts = []
  for key, task in TASKS.items():
    rows = [row for row in ROWS if (key, row) not in done
            and (row != "icl_bench2" or key == "sst2")]
    if rows:
      parts.append(f"{task.name}: {', '.join(rows)}")
  return ("Left out (not run here): " + "; ".join(parts) + "."
          if parts else "Left out (not run here): none.")


def _write_row(path: pathlib.Path, record: dict) -> None:
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(record, indent=1) + "\n")
  tmp.replace(path)


def write_markdown() -> None:
  body = render().removeprefix(BEGIN).removesuffix(END)
  markdown_section.replace_section(RESULTS_MD, BEGIN, END, body)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tasks", default="sst2")
  parser.add_argument("--rows", default=",".join(ROWS))
  parser.add_argument("--settings", default=None, choices=sorted(SETTINGS))
  parser.add_argument("--prompt_lr", type=float, default=None,
                      help="Adafactor lr of prompt rows (default: the "
                      "paper's optimizer, lr 0.3)")
  parser.add_argument("--force", action="store_true")
  parser.add_argument("--render", action="store_true")
  parser.add_argument("--record_make_run", type=pathlib.Path, default=None,
                      help="store the row of a finished `make run` job "
                      "from its run directory")
  parser.add_argument("--wall_s", type=float, default=None,
                      help="with --record_make_run: its wall-clock seconds")
  args = parser.parse_args(argv)
  if args.record_make_run:
    record = record_make_run(args.record_make_run, args.wall_s)
    _write_row(OUT_DIR / "sst2__make_run.json", record)
    print(f"stored bench/results/sst2__make_run.json: zero-shot "
          f"{record['zero_shot_accuracy']:.2f}% -> prompt "
          f"{record['accuracy']:.2f}%, {record['wall_s']:.0f} s")
  if args.render or args.record_make_run:
    write_markdown()
    return
  settings = args.settings or ("cpu" if jax.default_backend() == "cpu"
                               else "gpu")
  OUT_DIR.mkdir(parents=True, exist_ok=True)
  backbone = Backbone()
  for task_key in args.tasks.split(","):
    for row in args.rows.split(","):
      lr_tag = f"_lr{args.prompt_lr:g}" if (
          args.prompt_lr and row.startswith("prompt")) else ""
      path = OUT_DIR / f"{task_key}__{row}{lr_tag}.json"
      if path.exists() and not args.force:
        continue
      if row == "icl_bench2" and task_key != "sst2":
        continue
      start = time.time()
      record = run_row(row, task_key, backbone, settings, args.prompt_lr)
      record.update(task_key=task_key, wall_s=time.time() - start,
                    hardware=hardware(),
                    command=(f".venv/bin/python bench/results.py "
                             f"--tasks={task_key} --rows={row} "
                             f"--settings={settings}"
                             + (f" --prompt_lr={args.prompt_lr}"
                                if args.prompt_lr else "")))
      _write_row(path, record)
      print(json.dumps(record), flush=True)
  write_markdown()


if __name__ == "__main__":
  main()
