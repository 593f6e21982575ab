"""bench/results.py renders what its stored rows record: the optimizer
(with Adafactor's decay offset), truncated train rows, the rows not run."""

from prompt_jax import testing

results = testing.load_bench_script("results")


def test_training_cell_shows_optimizer_offset_and_truncation():
  row = {"train_steps": 150, "batch": 8, "learning_rate": 0.03,
         "final_train_loss": 0.2747, "truncated_train_rows": 1,
         "train_rows": 6920,
         "optimizer": results.optim.adafactor_paper_settings(
             learning_rate=0.03)}
  assert results._training_cell(row) == (
      "150 steps x 8, adafactor (decay offset -1,100,000) lr 0.03, final "
      "loss 0.275, 1 of 6920 train rows truncated")
  older = {"train_steps": 150, "batch": 8, "learning_rate": 0.3,
           "final_train_loss": 1.449}
  assert results._training_cell(older) == (
      "150 steps x 8, optimizer not recorded (an older row), lr 0.3, final "
      "loss 1.449")
  assert results._training_cell({"accuracy": 1.0}) == "-"


def test_prompt_rows_differ_only_in_the_learning_rate():
  paper = results.optimizer_settings("prompt", results.SETTINGS["cpu"], None)
  lower = results.optimizer_settings("prompt", results.SETTINGS["cpu"], 0.03)
  assert paper["learning_rate"] == 0.3 and lower["learning_rate"] == 0.03
  assert dict(paper, learning_rate=0) == dict(lower, learning_rate=0)


def test_left_out_line_names_rows_without_a_record():
  done = [{"task_key": "sst2", "row": r} for r in results.ROWS]
  done += [{"task_key": "rte", "row": r} for r in results.ROWS
           if r not in ("icl_k16", "full")]
  done += [{"task_key": "boolq", "row": r} for r in results.ROWS]
  assert results._left_out_line(done) == (
      "Left out (not run here): rte_smollm2_v100: icl_k16, full.")
