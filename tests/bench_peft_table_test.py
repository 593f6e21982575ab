"""bench/peft_table.py end to end on a tiny random decoder (settings
'smoke': 3 steps of 8 rows, 16 eval rows) with in-memory SST-2-shaped data:
stored rows and their fields, the lr choice, the rendered table with its
missing rows, and the one-line failure of a method not in the registry."""

import json

import numpy as np
import pytest

from prompt_jax import testing

bench = testing.load_bench_script("peft_table")
render = testing.load_bench_script("peft_table_render")
rows_lib = render.pt  # bench/peft_table_rows.py, as the scripts import it.


@pytest.fixture(scope="module")
def stored_rows(tmp_path_factory):
  """(root, rows): lora and prompt_p20 rows trained and stored by `--one`,
  in this process."""
  tmp = tmp_path_factory.mktemp("peft")
  rng = np.random.default_rng(0)
  rows = lambda n: [[rng.integers(10, 40000, rng.integers(4, 40)).tolist(),
                     i % 2] for i in range(n)]
  (tmp / "sst2.json").write_text(json.dumps({
      "task": "sst2_smollm2_v100", "labels": ["negative", "positive"],
      "options": [[3524], [3893]], "train": rows(60),
      "validation": rows(20)}))
  runs, bench.RUNS_ROOT = bench.RUNS_ROOT, tmp / "runs"
  try:
    for variant, lr in (("lora", "0.01"), ("prompt_p20", "0.1")):
      bench.main(["--one", "--settings=smoke", "--task=sst2",
                  f"--variant={variant}", f"--lr={lr}", "--seed=0",
                  f"--root={tmp}", f"--data_dir={tmp}"])
  finally:
    bench.RUNS_ROOT = runs
  return tmp, bench.stored(tmp, "smoke")


def test_rows_are_stored_with_every_field(stored_rows):
  _, rows = stored_rows
  assert sorted(rows) == ["sst2__lora__lr0.01__s0",
                          "sst2__prompt_p20__lr0.1__s0"]
  for r in rows.values():
    assert 0 <= r["accuracy"] <= 100 and 0 <= r["selection_accuracy"] <= 100
    assert (r["eval_rows"], r["selection_rows"]) == (16, 6)  # 10% of 60.
    assert (r["steps"], r["batch"], r["train_rows"]) == (3, 8, 54)
    assert r["s_per_step"] > 0 and r["timed_steps"] == 1
    assert r["peak_memory_bytes"] > 2**20
    assert r["peak_memory_kind"] == "host peak RSS (ru_maxrss)"
    assert np.isfinite(r["final_train_loss"]) and len(r["train_log"]) == 3
    assert r["wall_s"] > r["train_call_s"] > 0
    assert r["settings"] == "smoke" and r["hardware"].startswith("CPU")
    assert r["optimizer"] == {"name": "adamw", "learning_rate": r["lr"],
                              "weight_decay": 0.01}
    assert r["command"].startswith("python bench/peft_table.py --one ")
  lora, prompt = rows.values()
  assert prompt["trainable"] == 20 * 32  # P x H of the tiny decoder.
  # r = 8 on q (32 -> 32) and v (32 -> 2 kv heads x 8) of 2 layers.
  assert lora["trainable"] == 2 * (8 * (32 + 32) + 8 * (32 + 16))
  assert lora["trainable_percent"] == pytest.approx(
      100 * lora["trainable"] / lora["all_params"])


def test_render_names_missing_rows_and_writes_the_section(stored_rows,
                                                          tmp_path):
  root, _ = stored_rows
  text = render.render(root, names=("smoke", "cpu"))
  assert "| lora | missing: sweep incomplete (lr 0.0001, 0.001) |" in text
  assert "| prompt_p20 | missing: sweep incomplete (lr 0.001, 0.01) |" in text
  assert "**0.1: " not in text  # No lr is chosen from an incomplete sweep.
  assert "| zero_shot | missing |" in text
  missing = text.split("Missing rows (")[1].split("\n")[0]
  assert missing.startswith("39): sst2__prompt_p20__lr0.001__s0, ")
  assert (", sst2__zero_shot, rte__zero_shot; and the final rows (3 seeds x"
          " 2 tasks) of prompt_p20, p_tuning_mlp,") in missing
  assert "sst2__lora__lr0.01__s0" not in missing
  assert "**cpu**: no rows stored yet" in text
  md = tmp_path / "RESULTS.md"
  md.write_text("# Results\n")
  for _ in range(2):  # Appended once, then replaced.
    render.write_markdown(md, text)
  out = md.read_text()
  assert out.count(bench.BEGIN) == 1 and out.count("| lora | missing") == 2


def test_lr_choice_and_step_timing():
  rows = {bench.row_name("sst2", "lora", lr, 0): {"selection_accuracy": acc}
          for lr, acc in ((1e-4, 60.0), (1e-3, 70.0), (1e-2, 70.0))}
  assert rows_lib.choose_lr(rows, "lora") == (1e-3, [])  # Tie: the default.
  rows[bench.row_name("sst2", "lora", 1e-2, 0)]["selection_accuracy"] = 71
  assert rows_lib.choose_lr(rows, "lora") == (1e-2, [])
  assert rows_lib.choose_lr(rows, "ia3") == (None, [1e-4, 1e-3, 1e-2])
  asked = {0: 0.0, 1: 10.0, 2: 11.0, 3: 12.5, 4: 14.0}  # Step 1 compiles.
  assert bench.step_seconds(asked, 1, 5) == (4.0 / 3, 3)
  assert bench.step_seconds(asked, 2, 5) == (3.0 / 2, 2)
  assert bench.step_seconds(asked, 1, 2) == (None, 0)


def test_a_method_missing_from_the_registry_is_one_line(monkeypatch):
  monkeypatch.setitem(bench.VARIANTS, "lora",
                      rows_lib.Variant("no_such_method", {}, (1e-3,), 1e-3))
  with pytest.raises(ValueError, match=r"^variant lora: method "
                     r"'no_such_method' is not in prompt_jax.methods.METHODS"):
    bench.build_method("lora", ["no", "yes"])


def test_rows_measured_beside_other_work_are_flagged():
  hw = "CPU (2 cores, x86_64)"
  assert render.busy({"load_average": [3.1, 2.0, 1.0], "hardware": hw})
  assert not render.busy({"load_average": [2.2, 2.0, 1.0], "hardware": hw})
  assert not render.busy({"hardware": "NVIDIA H100 x1"})
