"""The docs/RESULTS.md section of `bench/peft_table.py`, from stored rows.

One table per task (accuracy mean (min) over seeds, trainable parameters,
train s/step, peak memory, the lr chosen, final loss), the lr sweep, the
budget line with the hours measured, and the rows still missing: absent
rows are named, never filled in.

  .venv/bin/python bench/peft_table.py --render
"""

import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import markdown_section  # pylint: disable=wrong-import-position
from bench import peft_table_rows as pt  # pylint: disable=wrong-import-position

LOADED = "†"  # s/step measured while the machine had other work.


def busy(row: dict) -> bool:
  """True if the row's 1-minute load average exceeded its machine's cores
  (other work ran beside it: its s/step is inflated)."""
  load, hw = row.get("load_average"), row.get("hardware", "")
  cores = int(hw.split("(")[1].split()[0]) if "cores" in hw else None
  return bool(load and cores and load[0] > cores + 0.5)


def _task_table(rows: dict[str, dict], task: str) -> list[str]:
  lines = [f"`{pt.TASKS[task]}`:", "", "| method | accuracy % mean (min) | "
           "seeds | trainable params (%) | train s/step | peak memory | lr |"
           " final train loss |", "|---|---|---|---|---|---|---|---|"]
  zs = rows.get(pt.row_name(task, "zero_shot"))
  lines.append("| zero_shot | " + (
      f"{zs['accuracy']:.2f} | - | 0 | - | - | - | - |" if zs
      else "missing | | | | | | |"))
  for v in pt.VARIANTS:
    lr, missing = pt.choose_lr(rows, v)
    have = {} if lr is None else {
        seed: rows[n] for seed in pt.SEEDS
        if (n := pt.row_name(task, v, lr, seed)) in rows}
    if not have:
      why = (f"sweep incomplete (lr {', '.join(f'{x:g}' for x in missing)})"
             if lr is None else f"seeds {', '.join(map(str, pt.SEEDS))}")
      lines.append(f"| {v} | missing: {why} | | | | | "
                   f"{'' if lr is None else f'{lr:g}'} | |")
      continue
    accs, rs = [r["accuracy"] for r in have.values()], list(have.values())
    steps = [r["s_per_step"] for r in rs if r["s_per_step"]]
    gone = [str(x) for x in pt.SEEDS if x not in have]
    lines.append(
        f"| {v} | {np.mean(accs):.2f} ({min(accs):.2f}) | "
        + ", ".join(map(str, have))
        + (f" ({', '.join(gone)} missing)" if gone else "")
        + f" | {rs[0]['trainable']:,} ({rs[0]['trainable_percent']:.3f}%) | "
        + (f"{np.mean(steps):.3f}" if steps else "-")
        + (LOADED if any(map(busy, rs)) else "") + " | "
        + f"{max(r['peak_memory_bytes'] for r in rs) / 2**30:.2f} GiB | "
        + f"{lr:g} | {np.mean([r['final_train_loss'] for r in rs]):.3f} |")
  return lines + [""]


def _sweep_table(rows: dict[str, dict]) -> list[str]:
  lines = ["Learning-rate sweep (SST-2, seed 0): selection-set accuracy % at"
           " each lr of the grid, the chosen lr in bold.", "",
           "| method | selection accuracy % by lr |", "|---|---|"]
  for v in pt.VARIANTS:
    lr, cells = pt.choose_lr(rows, v)[0], []
    for x in pt.VARIANTS[v].grid:
      r = rows.get(pt.row_name(pt.SWEEP_TASK, v, x, 0))
      cell = f"{x:g}: " + (f"{r['selection_accuracy']:.2f}" if r
                           else "missing")
      cells.append(f"**{cell}**" if x == lr else cell)
    lines.append(f"| {v} | {', '.join(cells)} |")
  return lines + [""]


def render_settings(rows: dict[str, dict], name: str) -> list[str]:
  """One settings folder: its budget, tables, and the rows missing."""
  if not rows:
    return [f"**{name}**: no rows stored yet (`bench/peft_table.py "
            f"--settings={name} --sweep`, then `--final`).", ""]
  s, trained = pt.SETTINGS[name], [r for r in rows.values() if "steps" in r]
  cut = "; ".join(f"{t} " + ", ".join(sorted({
      f"{r['truncated_train_rows']} of {r['train_rows']}" for r in trained
      if r["task_key"] == t})) for t in pt.TASKS if any(
          r["task_key"] == t for r in trained))
  lines = [
      f"**{name}**: {s['steps']} steps x {s['batch']} rows per training run "
      f"({s['steps'] * s['batch']} train examples) for every method; train "
      f"inputs keep their last max_length - 1 tokens (max_length "
      f"{s['max_length']}; rows truncated: {cut or '-'}). Measured: "
      f"{sum(r['wall_s'] for r in rows.values()) / 3600:.2f} h of "
      f"{', '.join(sorted({r['hardware'] for r in rows.values()}))}, the sum "
      f"of the {len(rows)} stored rows' wall times.", ""]
  for task in pt.TASKS:
    lines += _task_table(rows, task)
  lines += _sweep_table(rows)
  missing, waiting = [], [v for v in pt.VARIANTS if pt.choose_lr(rows, v)[0] is None]
  for phase in ("sweep", "final"):
    want = pt.planned(phase, rows, list(pt.VARIANTS), list(pt.TASKS))[0]
    missing += [pt.row_name(*r) for r in want if (
        r[2] is not None or r[1] == "zero_shot") and pt.row_name(*r) not in rows]
  kinds = sorted({r["peak_memory_kind"] for r in trained})
  return lines + [
      f"Missing rows ({len(missing)}): {', '.join(missing) or 'none'}"
      + (f"; and the final rows (3 seeds x {len(pt.TASKS)} tasks) of "
         f"{', '.join(waiting)}, whose sweep is incomplete" if waiting
         else "") + ".", "",
      f"Peak memory: {' / '.join(kinds) or '-'} of the row's process after "
      "training (backbone load + training; before the eval backbone is "
      "loaded). Train s/step: the mean over the steps after the first "
      f"logged one (loss logged every {s['log_every']} step(s); the first "
      f"step holds the compilation); {LOADED}: a row measured while the "
      "machine's 1-minute load exceeded its cores (other work beside it), "
      "its s/step inflated.", ""]


def render(root: pathlib.Path, names=("cpu", "gpu")) -> str:
  lines = [pt.BEGIN, "", "Generated by `bench/peft_table.py` from the rows in "
           "bench/results/peft/<settings>/ (one JSON per task, method, lr, "
           "seed, with its command, settings, hardware, wall time and train "
           "log). Every method: AdamW (weight decay 0.01, constant lr; not "
           "prompt tuning's published Adafactor, for a like-for-like table),"
           " batches drawn with replacement from 90% of the train split (10%"
           " held out as the selection set of the lr sweep), rank "
           "classification on the whole dev set. The lr is chosen on SST-2 "
           "(seed 0, selection-set accuracy; ties: the variant's default lr,"
           " else the smallest) and reused for RTE. prefix and p_tuning_v2 "
           "are the same computation on a decoder (P-tuning v2 as PEFT runs "
           "it: per-layer prefixes without projection; no classification "
           "head here); only their lr grids differ. prompt_p20: 20 slots, "
           "class-label init.", ""]
  for name in names:
    lines += render_settings(pt.stored(root, name), name)
  return "\n".join(lines + [pt.END])


def write_markdown(md: pathlib.Path, body: str) -> None:
  """Replaces the section between the markers (appended if absent)."""
  if pt.BEGIN not in md.read_text(encoding="utf-8"):
    with md.open("a", encoding="utf-8") as f:
      f.write(f"\n## SmolLM2-135M: parameter-efficient methods\n\n{pt.BEGIN}\n"
              f"{pt.END}\n")
  markdown_section.replace_section(
      md, pt.BEGIN, pt.END, body.removeprefix(pt.BEGIN).removesuffix(pt.END))
