"""The parameter-efficient methods table of docs/RESULTS.md (SmolLM2-135M).

Every method of `VARIANTS` trains on SST-2 and RTE (`*_smollm2_v100`) at one
fixed budget (the same steps x batch for all), AdamW at a constant lr, and
is scored by rank classification over the task's target words on the whole
dev set (`prompt_jax.scoring.options`). A row is (task, variant, lr, seed);
each runs in a subprocess of its own (`--one`, so its peak memory is its
own) and is stored as
`bench/results/peft/<settings>/<task>__<variant>__lr<lr>__s<seed>.json`,
skipped on the next call unless `--force` (the table resumes).

  --sweep   every lr of a variant's grid, seed 0, SST-2 only (budget); the
            lr is chosen on a selection set, 10% of the train split held
            out of every run's training data (the dev set is not used).
  --final   zero-shot, then seeds 0-2 at the chosen lr on SST-2 and RTE (the
            SST-2 seed-0 row is the sweep's; RTE reuses SST-2's lr).
  --plan    with --sweep/--final: the rows they would run, and an estimate.
  --render  the generated section of docs/RESULTS.md from the stored rows.

  .venv/bin/python bench/peft_table.py --settings=cpu --plan --sweep --final
  .venv/bin/python bench/peft_table.py --settings=cpu --sweep --minutes=300
  .venv/bin/python bench/peft_table.py --render

The parent caches the token ids in runs/peft_table/data/ (seqio, once); a
`--one` process imports no seqio or TensorFlow. Methods are built by
registry name when a row runs: a variant whose method is not in
`prompt_jax.methods.METHODS` fails its rows with one line; the rest run.
"""

import argparse
import json
import math
import os
import pathlib
import platform
import resource
import shutil
import subprocess
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# pylint: disable=wrong-import-position
from prompt_jax import checkpoints
from prompt_jax import methods as methods_lib
from prompt_jax import optim
from prompt_jax import setup as run_setup
from prompt_jax import train as train_lib
from prompt_jax.data import array_batches
from prompt_jax.methods import counting
from prompt_jax.methods.prompt_tuning import specs
from prompt_jax.scoring import options as option_scoring
# pylint: enable=wrong-import-position
from bench.peft_table_rows import BEGIN, HOLD_OUT, SETTINGS, SPLIT_SEED  # pylint: disable=wrong-import-position
from bench.peft_table_rows import SWEEP_TASK, TASKS, VARIANTS  # pylint: disable=wrong-import-position
from bench.peft_table_rows import WEIGHT_DECAY, planned, row_name, stored  # pylint: disable=wrong-import-position

RESULTS_ROOT = ROOT / "bench" / "results" / "peft"
RUNS_ROOT = ROOT / "runs" / "peft_table"
DATA_DIR = RUNS_ROOT / "data"
RESULTS_MD = ROOT / "docs" / "RESULTS.md"
def hardware() -> str:
  device = jax.devices()[0]
  if device.platform == "cpu":
    return f"CPU ({os.cpu_count()} cores, {platform.machine()})"
  return f"{device.device_kind} x{jax.device_count()}"


def ensure_data(data_dir: pathlib.Path) -> None:
  """Writes `<task>.json` (train / validation [ids, label] rows, labels,
  option ids) for each task not in `data_dir`, read with seqio."""
  missing = [t for t in TASKS if not (data_dir / f"{t}.json").exists()]
  if not missing:
    return
  from bench import results as results_lib  # pylint: disable=g-import-not-at-top
  tokenizer = results_lib.vocab.smollm2_vocabulary().tokenizer
  data_dir.mkdir(parents=True, exist_ok=True)
  for task in missing:
    spec = results_lib.TASKS[task]
    words = results_lib.smollm2_tasks.CLASSIFICATION_TASKS[spec.name]
    data = {"task": spec.name, "labels": [w.strip() for w in words],
            "options": [list(tokenizer.encode(w)) for w in words]}
    for split in ("train", "validation"):
      data[split] = [[[int(i) for i in r[0]], r[1]]
                     for r in results_lib.read_split(spec, split)]
    (data_dir / f"{task}.json").write_text(json.dumps(data))


def load_data(data_dir: pathlib.Path, task: str) -> dict:
  path = data_dir / f"{task}.json"
  if not path.exists():
    raise SystemExit(f"{path}: no cached data; a --plan, --sweep or --final "
                     "call writes it (with seqio)")
  return json.loads(path.read_text())


def split_train(n: int) -> tuple[list[int], list[int]]:
  """(fit, selection) indices of n train rows: a fixed HOLD_OUT share is
  held out of training, to choose the lr on."""
  order = np.random.default_rng(SPLIT_SEED).permutation(n)
  held = math.ceil(HOLD_OUT * n)
  return sorted(order[held:].tolist()), sorted(order[:held].tolist())


# ------------------------------ one row -------------------------------------


def build_method(variant: str, labels: list[str]):
  """The variant's method from the registry (one-line error if absent)."""
  v = VARIANTS[variant]
  if v.method not in methods_lib.METHODS:
    raise ValueError(f"variant {variant}: method {v.method!r} is not in "
                     "prompt_jax.methods.METHODS (known: "
                     f"{', '.join(sorted(methods_lib.METHODS))})")
  kwargs = dict(v.kwargs)
  if kwargs.get("init") == "class_labels":
    kwargs["init"] = specs.class_labels(labels)
  try:
    return methods_lib.METHODS[v.method](**kwargs)
  except TypeError as e:
    raise ValueError(f"variant {variant}: {v.method}({v.kwargs}): {e}"
                     ) from None


class TimedBatches:
  """Batches that note when each is asked for: after a logged step (whose
  loss `train` fetches, a sync) that is the moment the step ended."""

  def __init__(self, batches: array_batches.MixtureBatches):
    self._batches, self.asked = batches, {}

  position = property(lambda self: self._batches.position)
  batch_size = property(lambda self: self._batches.batch_size)
  settings = property(lambda self: self._batches.settings)

  def __iter__(self):
    return self

  def __next__(self):
    self.asked[self._batches.position] = time.perf_counter()
    return next(self._batches)


def step_seconds(asked: dict[int, float], log_every: int, steps: int
                 ) -> tuple[float | None, int]:
  """(mean seconds per step, steps timed) between synced step ends, from
  the end of the first logged step (it holds the compilation) on."""
  ends = sorted(p for p in asked if p % log_every == 0 and 0 < p < steps)
  if len(ends) < 2:
    return None, 0
  timed = ends[-1] - ends[0]
  return (asked[ends[-1]] - asked[ends[0]]) / timed, timed


def peak_memory() -> tuple[int, str]:
  """(bytes, kind): the device's peak bytes in use, else (CPU) the
  process's peak resident set."""
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
  return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
          "host peak RSS (ru_maxrss)")


def accuracy(run, trainable, rows, options, batch) -> float:
  scores = option_scoring.score_options(
      run.model, trainable, run.frozen, inputs=[r[0] for r in rows],
      options=options, batch_size=batch)
  return option_scoring.accuracy(scores, [r[1] for r in rows])


def run_row(task: str, variant: str, lr: float | None, seed: int | None,
            s: dict, data_dir: pathlib.Path = DATA_DIR,
            runs_dir: pathlib.Path = RUNS_ROOT) -> dict:
  """Trains (unless zero-shot) and evaluates one row in this process, with
  settings values `s`; returns its record (accuracies in percent)."""
  data = load_data(data_dir, task)
  dev = data["validation"][:s["eval_rows"]]
  backbone = run_setup.BackboneConfig(**s["backbone"])
  record = {"task": data["task"], "task_key": task, "variant": variant,
            "lr": lr, "seed": seed, "settings_values": s,
            "eval_rows": len(dev)}
  if variant == "zero_shot":
    run = run_setup.build_run(backbone=backbone)
    return record | {"accuracy": accuracy(run, None, dev, data["options"],
                                          s["eval_batch"])}
  method = build_method(variant, data["labels"])
  fit, held = split_train(len(data["train"]))
  length, train = s["max_length"][task], [data["train"][i] for i in fit]
  batches = TimedBatches(array_batches.MixtureBatches(
      {task: [(np.asarray(ids[-(length - 1):], np.int32),
               np.asarray(data["options"][label], np.int32))
              for ids, label in train]},
      batch_size=s["batch"], max_length=length, seed=seed))
  optimizer = dict(name="adamw", learning_rate=lr, weight_decay=WEIGHT_DECAY)
  model_dir = runs_dir / row_name(task, variant, lr, seed)
  shutil.rmtree(model_dir, ignore_errors=True)
  start = time.perf_counter()
  result = train_lib.train(
      model_dir=str(model_dir), backbone=backbone, method=method,
      optimizer=optim.make_optimizer(**optimizer), total_steps=s["steps"],
      train_batches_fn=lambda position: batches, target_length=1,
      checkpoint_cfg=checkpoints.CheckpointConfig(
          save_every_steps=s["steps"], keep=1),
      log_every_steps=s["log_every"], seed=seed)
  train_s = time.perf_counter() - start
  peak, peak_kind = peak_memory()  # Before the eval backbone is loaded.
  per_step, timed = step_seconds(batches.asked, s["log_every"], s["steps"])
  log = [[r["step"], r["loss"]]
         for r in map(json.loads, (model_dir / "metrics.jsonl").open())
         if r["split"] == "train"]
  shutil.rmtree(model_dir, ignore_errors=True)
  run = run_setup.build_run(backbone=backbone, method=method)
  count = counting.count_trainable(method, run.model.lm)
  start = time.perf_counter()
  record["accuracy"] = accuracy(run, result["trainable"], dev,
                                data["options"], s["eval_batch"])
  if (task, seed) == (SWEEP_TASK, 0):
    sel = [data["train"][i] for i in held][:s["eval_rows"]]
    record.update(selection_rows=len(sel), selection_accuracy=accuracy(
        run, result["trainable"], sel, data["options"], s["eval_batch"]))
  return record | {
      "method": VARIANTS[variant].method,
      "method_kwargs": VARIANTS[variant].kwargs,
      "method_settings": repr(method.settings()), "optimizer": optimizer,
      "schedule": "constant", "steps": s["steps"], "batch": s["batch"],
      "max_length": length, "train_rows": len(train),
      "truncated_train_rows": sum(len(r[0]) > length - 1 for r in train),
      "trainable": count.trainable, "all_params": count.all,
      "trainable_percent": count.percent, "s_per_step": per_step,
      "timed_steps": timed, "peak_memory_bytes": peak,
      "peak_memory_kind": peak_kind,
      "final_train_loss": result["train"]["loss"], "train_log": log,
      "train_call_s": train_s, "eval_s": time.perf_counter() - start}


def one(args) -> dict:
  """`--one`: runs a row in this process and stores it."""
  s = SETTINGS[args.settings] | ({"steps": args.steps} if args.steps else {})
  if args.gguf:
    s = s | {"backbone": s["backbone"] | {"path": args.gguf}}
  if s["compile_cache"]:
    jax.config.update("jax_compilation_cache_dir", str(RUNS_ROOT / "jax_cache"))
  t0 = args.t0 or time.time()
  zero = args.variant == "zero_shot"
  lr, seed = (None, None) if zero else (args.lr, args.seed)
  record = run_row(args.task, args.variant, lr, seed, s, args.data_dir,
                   RUNS_ROOT / args.settings)
  name = row_name(args.task, args.variant, lr, seed)
  record.update(
      settings=args.settings, wall_s=time.time() - t0, hardware=hardware(),
      jax_version=jax.__version__, load_average=os.getloadavg(),
      command=(f"python bench/peft_table.py --one --settings={args.settings} "
               f"--task={args.task} --variant={args.variant}"
               + ("" if zero else f" --lr={lr:g} --seed={seed}")
               + (f" --steps={args.steps}" if args.steps else "")))
  # A row at other steps is a calibration row (`cost_model`), kept apart.
  out = args.root / ("calibration" if args.steps else args.settings)
  out.mkdir(parents=True, exist_ok=True)
  (out / f"{name}.tmp").write_text(json.dumps(record, indent=1) + "\n")
  (out / f"{name}.tmp").replace(out / f"{name}.json")
  return record


# ------------------------- rows, lrs, estimate ------------------------------


def _slots(variant: str) -> int:
  """Input slots a variant adds (soft prompts) to each row."""
  return 20 if VARIANTS[variant].method in ("prompt_tuning", "p_tuning") else 0


def cost_model() -> dict[str, dict[str, float]]:
  """Per task, from the 5-step rows in bench/results/peft/calibration/
  (this CPU): fixed seconds of a row (process, two loads, compilation,
  save), eval seconds per scored row, train seconds per token-example, and
  full fine-tuning's (from SST-2)."""
  cal = list(stored(RESULTS_ROOT, "calibration").values())
  token = lambda r: r["s_per_step"] / r["batch"] / (
      r["max_length"] + _slots(r["variant"]))
  full = [token(r) for r in cal if r["variant"] == "full"]
  model = {}
  for task in TASKS:
    rows = [r for r in cal if r["task_key"] == task]
    model[task] = {
        "fixed": np.mean([r["wall_s"] - r["steps"] * r["s_per_step"]
                          - r["eval_s"] for r in rows]),
        "eval": np.mean([r["eval_s"] / (r["eval_rows"] + r.get(
            "selection_rows", 0)) for r in rows]),
        "token": np.mean([token(r) for r in rows if r["variant"] != "full"])}
    model[task]["full"] = np.mean(full) if full else 2 * model[task]["token"]
  return model


def estimate_s(row: tuple, s: dict, model: dict, data: dict) -> float:
  """Seconds of a row on this CPU by `cost_model`."""
  task, variant, _, seed = row
  m, dev = model[task], len(data[task]["validation"][:s["eval_rows"]])
  if variant == "zero_shot":
    return m["fixed"] + m["eval"] * dev
  scored = dev + (math.ceil(HOLD_OUT * len(data[task]["train"]))
                  if (task, seed) == (SWEEP_TASK, 0) else 0)
  per_token = m["full" if variant == "full" else "token"]
  return m["fixed"] + m["eval"] * scored + s["steps"] * s["batch"] * (
      per_token * (s["max_length"][task] + _slots(variant)))


def plan(args, phases) -> list[tuple]:
  """Prints the rows of `phases` not stored, with estimates; returns every
  runnable row of them."""
  rows, s = stored(args.root, args.settings), SETTINGS[args.settings]
  data, model = {t: load_data(args.data_dir, t) for t in TASKS}, cost_model()
  for v in args.variants:
    try:
      state = f"ok ({build_method(v, ['no', 'yes']).name})"
    except ValueError as e:
      state = f"FAILS: {e}"
    print(f"{v}: {VARIANTS[v].method}({VARIANTS[v].kwargs}), lr grid "
          f"{', '.join(f'{x:g}' for x in VARIANTS[v].grid)}: {state}")
  pairs = [(r["wall_s"], estimate_s((r["task_key"], r["variant"], r["lr"],
                                     r["seed"]), s, model, data))
           for r in rows.values()]
  ratio = sum(a for a, _ in pairs) / sum(b for _, b in pairs) if pairs else 1
  total, runnable = 0.0, []
  for phase in phases:
    want, notes = planned(phase, rows, args.variants, args.tasks)
    runnable += [r for r in want if r[2] is not None or r[1] == "zero_shot"]
    todo = [r for r in want if (r[2] is None and r[1] != "zero_shot")
            or row_name(*r) not in rows]
    secs = [estimate_s(r, s, model, data) * ratio for r in todo]
    total += sum(secs)
    print(f"--{phase}: {len(todo)} rows to run, {len(want) - len(todo)} "
          f"stored; about {sum(secs) / 3600:.2f} h")
    for r, sec in zip(todo, secs):
      lr = "(after the sweep)" if r[2] is None else f"{r[2]:g}"
      print(f"  {r[0]} {r[1]}" + ("" if r[1] == "zero_shot" else
                                  f" lr {lr} seed {r[3]}") + f": ~{sec:.0f} s")
    print("".join(f"  note: {n}\n" for n in notes), end="")
  print(f"settings {args.settings}: {s['steps']} steps x {s['batch']} per "
        f"training run, max_length {s['max_length']}. Estimate: "
        f"{total / 3600:.2f} h of this 2-core CPU (cost model x {ratio:.2f}, "
        f"measured / model over the {len(pairs)} stored rows)"
        + ("" if args.settings == "cpu" else
           f"; not an estimate for the {args.settings} machine"))
  return runnable


def run_rows(args, todo: list[tuple]) -> list[str]:
  """Runs each row in a `--one` subprocess; returns the failures."""
  start, failures = time.time(), []
  (RUNS_ROOT / args.settings).mkdir(parents=True, exist_ok=True)
  for i, (task, variant, lr, seed) in enumerate(todo, 1):
    if args.minutes and time.time() - start > 60 * args.minutes:
      print(f"--minutes={args.minutes:g} reached: {len(todo) - i + 1} rows "
            "left for the next call")
      break
    name = row_name(task, variant, lr, seed)
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--one",
           f"--settings={args.settings}", f"--task={task}",
           f"--variant={variant}", f"--root={args.root}",
           f"--data_dir={args.data_dir}", f"--t0={time.time()!r}"]
    cmd += [f"--lr={lr!r}", f"--seed={seed}"] if lr is not None else []
    cmd += [f"--gguf={args.gguf}"] if args.gguf else []
    log = RUNS_ROOT / args.settings / f"{name}.log"
    with log.open("w") as f:
      rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                          check=False).returncode
    if rc:
      last = [x for x in log.read_text().splitlines() if x.strip()][-1:]
      failures.append(f"{name}: exit {rc}: {''.join(last)} (log {log})")
      print(f"[{i}/{len(todo)}] FAILED {failures[-1]}", flush=True)
      continue
    r = json.loads((args.root / args.settings / f"{name}.json").read_text())
    print(f"[{i}/{len(todo)}] {name}: accuracy {r['accuracy']:.2f}"
          + (f" (selection {r['selection_accuracy']:.2f})"
             if "selection_accuracy" in r else "")
          + (f", {r['s_per_step']:.3f} s/step" if r.get("s_per_step") else "")
          + f", {r['wall_s']:.0f} s", flush=True)
  return failures


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--settings", choices=sorted(SETTINGS))
  for flag in ("plan", "sweep", "final", "render", "force", "one"):
    p.add_argument(f"--{flag}", action="store_true")
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--tasks", default=",".join(TASKS))
  p.add_argument("--minutes", type=float, help="start no row after this")
  p.add_argument("--root", type=pathlib.Path, default=RESULTS_ROOT)
  p.add_argument("--data_dir", type=pathlib.Path, default=DATA_DIR)
  p.add_argument("--md", type=pathlib.Path, default=RESULTS_MD)
  p.add_argument("--gguf", help="the SmolLM2 GGUF (default: the wheel's)")
  p.add_argument("--task", choices=sorted(TASKS))  # --one ...
  p.add_argument("--variant", choices=["zero_shot", *VARIANTS])
  p.add_argument("--lr", type=float)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--t0", type=float, help="when the parent started it")
  p.add_argument("--steps", type=int, help="--one: other steps; the row "
                 "goes to <root>/calibration (the --plan cost model)")
  args = p.parse_args(argv)
  args.variants = [v for v in args.variants.split(",") if v]
  args.tasks = [t for t in args.tasks.split(",") if t]
  bad = [x for x in args.variants if x not in VARIANTS] + [
      x for x in args.tasks if x not in TASKS]
  if bad:
    p.error(f"unknown variant or task {bad[0]!r}; variants: "
            f"{', '.join(VARIANTS)}; tasks: {', '.join(TASKS)}")
  if args.render:
    from bench import peft_table_render  # pylint: disable=g-import-not-at-top
    peft_table_render.write_markdown(args.md,
                                     peft_table_render.render(args.root))
    print(f"wrote the {BEGIN} section of {args.md}")
    return
  if not args.settings:
    p.error("--settings is required (cpu, gpu or smoke)")
  if args.one:
    if not args.task or not args.variant or (
        args.variant != "zero_shot" and args.lr is None):
      p.error("--one needs --task, --variant and (unless zero_shot) --lr")
    try:
      one(args)
    except ValueError as e:
      raise SystemExit(f"error: {e}") from None
    return
  phases = [ph for ph in ("sweep", "final") if getattr(args, ph)]
  if not phases:
    p.error("give --sweep and/or --final (with --plan: only print them), "
            "--render or --one")
  ensure_data(args.data_dir)
  if args.plan:
    plan(args, phases)
    return
  failures = []
  for phase in phases:  # The final rows are planned after the sweep ran.
    rows = stored(args.root, args.settings)
    failures += run_rows(args, [r for r in plan(args, [phase])
                                if args.force or row_name(*r) not in rows])
  print(f"{len(failures)} rows failed" + "".join(f"\n  {f}"
                                                 for f in failures))


if __name__ == "__main__":
  main()
