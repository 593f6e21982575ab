"""What `bench/peft_table.py` runs: tasks, method variants with their lr
grids, budgets per machine, row names, and which rows a phase needs (the
sweep's lr choice). Shared by the runner and `peft_table_render.py`."""

import dataclasses
import json
import pathlib

BEGIN, END = "<!-- peft_table.py:begin -->", "<!-- peft_table.py:end -->"
TASKS = {"sst2": "sst2_smollm2_v100", "rte": "rte_smollm2_v100"}
SWEEP_TASK, SEEDS, HOLD_OUT, SPLIT_SEED = "sst2", (0, 1, 2), 0.1, 20261127
WEIGHT_DECAY = 0.01  # torch's AdamW default, for every method.


@dataclasses.dataclass(frozen=True)
class Variant:
  """Registry name, constructor kwargs (JSON-able; init 'class_labels' is
  resolved against the task's labels), lr grid, default lr (tie-break)."""
  method: str
  kwargs: dict
  grid: tuple[float, ...]
  default_lr: float


GRID = (1e-4, 1e-3, 1e-2)
VARIANTS = {
    "prompt_p20": Variant("prompt_tuning", {
        "length": 20, "init": "class_labels"}, (1e-3, 1e-2, 1e-1), 1e-2),
    "p_tuning_mlp": Variant("p_tuning", {
        "length": 20, "encoder_type": "MLP"}, GRID, 1e-3),
    "p_tuning_lstm": Variant("p_tuning", {
        "length": 20, "encoder_type": "LSTM"}, GRID, 1e-3),
    "prefix": Variant("prefix_tuning", {"length": 20}, GRID, 1e-2),
    "prefix_mlp": Variant("prefix_tuning", {
        "length": 20, "projection": True}, GRID, 1e-3),
    # The paper's range, 5e-3 to 1e-2.
    "p_tuning_v2": Variant("p_tuning_v2", {"length": 20},
                           (1e-3, 5e-3, 1e-2), 5e-3),
    "lora": Variant("lora", {"rank": 8, "alpha": 8.0,
                             "targets": ["q_proj", "v_proj"]}, GRID, 1e-3),
    "ia3": Variant("ia3", {}, GRID, 1e-2),
    "adapters_houlsby": Variant("adapters", {
        "config": "houlsby", "reduction_factor": 16, "activation": "silu"},
                                GRID, 1e-3),
    "adapters_pfeiffer": Variant("adapters", {
        "config": "pfeiffer", "reduction_factor": 16, "activation": "relu"},
                                 GRID, 1e-3),
    "bitfit": Variant("bitfit", {}, GRID, 1e-3),
    "unipelt": Variant("unipelt", {}, GRID, 1e-3),
    "full": Variant("full_finetune", {}, (1e-5, 3e-5, 1e-4), 3e-5),
}
SMOLLM2 = {"path": "smollm2", "preset": "smollm2_135m", "kind": "decoder"}
SETTINGS = {
    # This 2-core CPU: --sweep + --final in ~5.2 h by --plan (aim: 6 h).
    # Train inputs keep their LAST max_length - 1 tokens (the answer cue).
    "cpu": {"steps": 40, "batch": 4, "max_length": {"sst2": 64, "rte": 256},
            "log_every": 1, "eval_batch": 32, "eval_rows": None,
            "backbone": SMOLLM2, "compile_cache": True},
    # One H100/H200: longer, nothing truncated (longest rows 88 and 308).
    "gpu": {"steps": 500, "batch": 32, "max_length": {"sst2": 96, "rte": 320},
            "log_every": 10, "eval_batch": 64, "eval_rows": None,
            "backbone": SMOLLM2, "compile_cache": True},
    # The pipeline on a tiny random decoder (tests): 3 steps, 16 eval rows.
    "smoke": {"steps": 3, "batch": 8, "max_length": {"sst2": 64, "rte": 64},
              "log_every": 1, "eval_batch": 8, "eval_rows": 16,
              "backbone": {"random_weights": True, "preset": "tiny",
                           "kind": "decoder", "vocab_path": "smollm2",
                           "overrides": {"vocab_size": 49152,
                                         "max_position_embeddings": 256}},
              "compile_cache": False},
}


def row_name(task: str, variant: str, lr: float | None = None,
             seed: int | None = None) -> str:
  if variant == "zero_shot":
    return f"{task}__zero_shot"
  return f"{task}__{variant}__lr{lr:g}__s{seed}"


def stored(root: pathlib.Path, settings_name: str) -> dict[str, dict]:
  folder = root / settings_name
  return {p.stem: json.loads(p.read_text())
          for p in sorted(folder.glob("*.json"))} if folder.exists() else {}


def choose_lr(rows: dict[str, dict], variant: str
              ) -> tuple[float | None, list[float]]:
  """(the lr of best selection accuracy, or None while grid lrs are
  missing; those lrs). Ties: the default lr, else the first of the grid."""
  v = VARIANTS[variant]
  found = {lr: rows.get(row_name(SWEEP_TASK, variant, lr, 0)) for lr in v.grid}
  missing = [lr for lr, r in found.items() if r is None]
  if missing:
    return None, missing
  best = max(r["selection_accuracy"] for r in found.values())
  tied = [lr for lr, r in found.items() if r["selection_accuracy"] == best]
  return (v.default_lr if v.default_lr in tied else tied[0]), []


def planned(phase: str, rows: dict[str, dict], variants, tasks
            ) -> tuple[list[tuple], list[str]]:
  """((task, variant, lr, seed) rows the phase needs, notes); a final row
  of a variant whose sweep is incomplete has lr None (not runnable)."""
  if phase == "sweep":
    return [(SWEEP_TASK, v, lr, 0) for v in variants
            for lr in VARIANTS[v].grid], []
  out, notes = [(t, "zero_shot", None, None) for t in tasks], []
  for v in variants:
    lr, missing = choose_lr(rows, v)
    if lr is None:
      notes.append(f"{v}: sweep incomplete (lr "
                   f"{', '.join(f'{x:g}' for x in missing)} not stored)")
    out += [(t, v, lr, seed) for t in tasks for seed in SEEDS
            if lr is not None or (t, seed) != (SWEEP_TASK, 0)]
  return out, notes
