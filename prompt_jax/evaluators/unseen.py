"""The `evaluate_unseen` entry point: a prompt on tasks it was not trained on.

Takes any registered tasks or mixtures (e.g. `metaicl_hr_to_lr_test_v100`,
the unseen test tasks of MetaICL's hr_to_lr split), zero-shot or with k
demonstrations, and writes ONE table, per-task scores plus their mean, as
JSON and Markdown (`<output_dir>/unseen_<split>_k<k>.{json,md}`, default
output_dir `<model_dir>/unseen_eval/`). `main.py --mode=unseen` binds it
(`gin_configs/runs/unseen_eval.gin`). Tasks are looked up in seqio's
registries (`task_selection.resolve_tasks`): the caller registers them (the
gin run file imports `tasks`).

How a task is scored:
  * examples with `options` (MetaICL classification / multiple choice):
    rank classification, as MetaICL does: every option is scored as the
    target with the prompt in place (`Predictor.score`: summed target
    log-probability, EOS included), divided by its token count when
    `score_normalization='mean'` (MetaICL's per-token loss; 'sum' keeps the
    sum), and the best option is the prediction. Metric: MetaICL's macro-F1
    for classification tasks, accuracy for multiple choice (task type from
    `metaicl/config/tasks/<task>.json`, else from the options: one fixed set
    of options = classification);
  * examples without options: greedy generation, then the task's own
    postprocessor and `(targets, predictions)` metrics (accuracy, exact
    match for MetaICL free-form tasks).

k > 0: the first k rows of the task's `train_<seed>` split (MetaICL's 16-shot
file of that seed; tasks without one: a seeded sample of `train`) go before
every input, `in_1 out_1 ... in_k out_k input` (`kshot_format.kshot_text`).
The input is then trimmed from the START to fit `task_feature_lengths
['inputs']`, so the example itself survives (MetaICL trims the same way); the
table counts trimmed inputs and options. Each seed is one run; a row reports
the mean over seeds as `score`, the worst seed as `worst`, and every seed
(trimmed counts are summed over seeds).

In-context settings come as one `icl.config.ICLConfig` for both families.
Channel scoring (`method='channel'`) and demonstration-order selection
(`order='globale'|'locale'`) go, for a T5 as for a decoder, through the
family-agnostic k-shot loop (`unseen_kshot`: MetaICL test files, the layout
and length budget of the family; table `unseen_t5_<variant>_...`). ICL
variants of the T5 path here (`calibration`, `demonstrations`):
  * `demonstrations='knn'` (KATE; needs k > 0): per query, the k rows of the
    seed's train pool (its whole `train_<seed>` file; tasks without one: a
    seeded sample of max(16, k) `train` rows) nearest by cosine similarity of
    mean-pooled T5 ENCODER states (plain model, no prompt), most similar
    LAST, i.e. next to the query;
  * `calibration='contextual'` (Zhao et al. 2021; rank tasks only):
    the options are also scored after each content-free input
    (`icl.calibration.CONTENT_FREE_INPUTS`) put where the query goes, after
    the same demonstrations; p_cf = their mean option distribution, and the
    prediction is the argmax of `calibration.calibrate(scores, p_cf)`.
    Free-form rows are generated as usual and marked `"calibrated": false`.
Scoring helpers live in `prompt_jax.scoring.unseen_t5`.

Table (JSON): {"rows": [{"task", "type", "method", "metric", "score",
"metrics", "examples", "available", ...}], "mean": mean of the row scores,
and with k > 0 "mean_worst" and "seed_means"; "skipped": the tasks of a
MetaICL test mixture left out of it, also named under the Markdown table},
plus the run settings and the variant: "calibration", "demonstrations",
"variant" (`direct_seed`, `direct_knn_calibrated`, ...). Files:
`unseen_<split>_k<k>.{json,md}` for `direct_seed`, else
`unseen_<variant>_<split>_k<k>.{json,md}`.

Example (what `main.py --mode=unseen` runs from `runs/unseen_eval.gin`):

  table = evaluate_unseen(
      model_dir="/tmp/run",
      backbone=run_setup.BackboneConfig(path="/ckpt/t5_base"),
      method=prompt_tuning.PromptTuning(length=100),
      task_names=["metaicl_hr_to_lr_test_v100"],
      icl=ICLConfig(k_shot=4, calibration="contextual",
                    demonstrations="knn"),
      task_feature_lengths={"inputs": 512, "targets": 16})
  table["variant"], table["mean"]   # 'direct_knn_calibrated', 41.3
"""

import dataclasses
import logging
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import seqio

from prompt_jax import evaluate as evaluate_lib
from prompt_jax import models
from prompt_jax.decoding import predictor as predicting
from prompt_jax import setup as run_setup
from prompt_jax.evaluators import unseen_kshot
from prompt_jax.scoring import unseen_t5 as unseen_t5_scoring
from prompt_jax.evaluators import tables as unseen_table
from prompt_jax.icl import calibration as calibration_lib
from prompt_jax.icl import config as icl_config
from prompt_jax.icl import kshot_format
from prompt_jax.icl import metaicl_pool
from prompt_jax.evaluators.tables import add_seed_summary
from prompt_jax.evaluators.tables import markdown
from prompt_jax.evaluators.tables import summarize
from prompt_jax.evaluators.task_selection import check_unseen
from prompt_jax.evaluators.task_selection import resolve_tasks

_LOG = logging.getLogger(__name__)
NORMALIZATIONS = icl_config.NORMALIZATIONS
CALIBRATIONS = icl_config.CALIBRATIONS
DEMONSTRATIONS = icl_config.DEMONSTRATIONS
Demo = unseen_t5_scoring.Demo
# The T5 scoring helpers, under their historical names here.
_Scorer = unseen_t5_scoring.T5Scorer
fit = unseen_t5_scoring.fit
rank_predictions = unseen_t5_scoring.rank_predictions


@dataclasses.dataclass
class TaskRows:
  """The evaluated examples of one task split (texts before tokenization)."""
  name: str
  inputs: list[str]
  targets: list[str]
  options: list[tuple[str, ...]]
  examples: list[dict[str, Any]]  # Raw numpy examples, for postprocessors.
  available: int  # Rows in the split (>= len(inputs) with a row limit).


def _text(ex: Mapping[str, Any], key: str, vocab) -> str:
  raw = ex.get(f"{key}_pretokenized")
  if raw is None:
    return vocab.decode(ex[key].tolist())
  return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


def read_rows(task: seqio.Task, split: str,
              max_examples: int | None = None) -> TaskRows:
  """The first `max_examples` (None: all) examples of a split, in order."""
  if split not in task.splits:
    raise ValueError(f"task {task.name!r} has no split {split!r}; it has"
                     f" {sorted(task.splits)}")
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False,
                        num_epochs=1)
  vocab = task.output_features["inputs"].vocabulary
  rows = TaskRows(task.name, [], [], [], [],
                  available=task.num_input_examples(split) or 0)
  for ex in (ds if max_examples is None else ds.take(max_examples)
             ).as_numpy_iterator():
    rows.inputs.append(_text(ex, "inputs", vocab))
    rows.targets.append(_text(ex, "targets", vocab))
    rows.options.append(tuple(o.decode("utf-8") if isinstance(o, bytes)
                              else str(o) for o in ex.get("options", ())))
    rows.examples.append(ex)
  if not rows.inputs:
    raise ValueError(f"task {task.name!r} split {split!r} has no examples")
  return rows


def train_pool(task: seqio.Task, seed: int, size: int) -> list[Demo]:
  """The seed's (input, target) train rows: all of `train_<seed>`, else the
  first `size` of a seeded permutation of `train`."""
  split = f"train_{seed}"
  if split in task.splits:
    rows = read_rows(task, split)
  elif "train" in task.splits:
    rows = read_rows(task, "train")
    order = np.random.default_rng(seed).permutation(len(rows.inputs))[:size]
    rows.inputs = [rows.inputs[i] for i in order]
    rows.targets = [rows.targets[i] for i in order]
  else:
    raise ValueError(f"task {task.name!r} has neither {split!r} nor 'train'"
                     " to draw demonstrations from")
  return list(zip(rows.inputs, rows.targets))


def _check_pool(task: seqio.Task, pool: Sequence[Demo], k: int) -> None:
  if len(pool) < k:
    raise ValueError(f"task {task.name!r}: {k} demonstrations asked, only"
                     f" {len(pool)} rows to draw from")


def demonstrations(task: seqio.Task, seed: int, k: int) -> list[Demo]:
  """k (input, target) demonstrations of `task` for `seed` (see module doc)."""
  pool = train_pool(task, seed, k)
  _check_pool(task, pool, k)
  return pool[:k]


def row_demonstrations(scorer: _Scorer, task: seqio.Task, rows: TaskRows,
                       seed: int, k: int) -> list[list[Demo]]:
  """Per row, its k demonstrations: the seed's (`demonstrations`), or its
  nearest train rows, most similar last (`demonstrations='knn'`)."""
  if scorer.demonstrations != "knn":
    return [demonstrations(task, seed, k)] * len(rows.inputs)
  pool = train_pool(task, seed, max(metaicl_pool.K_SHOT, k))
  _check_pool(task, pool, k)
  return unseen_t5_scoring.knn_demonstrations(scorer, task, pool, rows.inputs,
                                              k)


def task_type(rows: TaskRows) -> str:
  """`classification`, `multi-choice` or `free-form` (see module doc)."""
  has_options = {bool(o) for o in rows.options}
  if len(has_options) != 1:
    raise ValueError(f"task {rows.name!r}: some examples have options and"
                     " some do not")
  if rows.name in metaicl_pool.FOLDER_OF:
    kind = metaicl_pool.task_type(metaicl_pool.FOLDER_OF[rows.name])
    if (kind == "free-form") == has_options.pop():
      raise ValueError(f"task {rows.name!r} is {kind} but its examples"
                       f" {'have' if rows.options[0] else 'lack'} options")
    return kind
  if not rows.options[0]:
    return "free-form"
  return ("classification" if len({frozenset(o) for o in rows.options}) == 1
          else "multi-choice")


# -------------------------------- scoring ----------------------------------


def _content_free_probs(scorer: _Scorer, task: seqio.Task,
                        demos: Sequence[Sequence[Demo]],
                        options: Sequence[tuple[str, ...]]) -> list[np.ndarray]:
  """Per row, p_cf [C_i] of its (demonstrations, options); each distinct
  pair is scored once."""
  keys = list(dict.fromkeys(zip(map(tuple, demos), options)))
  contexts = [[kshot_format.kshot_text(d, text) if d else text
               for text in calibration_lib.CONTENT_FREE_INPUTS]
              for d, _ in keys]
  p_cf = dict(zip(keys, unseen_t5_scoring.content_free_probs(
      scorer, task, contexts, [o for _, o in keys])))
  return [p_cf[(tuple(d), o)] for d, o in zip(demos, options)]


def score_task(scorer: _Scorer, task: seqio.Task, rows: TaskRows, kind: str,
               demos: Sequence[Sequence[Demo]]) -> dict[str, Any]:
  """One run (one seed) of one task: {metric, score, metrics, trimmed...}.

  `demos`: per row, its demonstrations (empty: zero-shot).
  """
  texts = [kshot_format.kshot_text(d, t) if d else t
           for d, t in zip(demos, rows.inputs)]
  encoder, trimmed_inputs = unseen_t5_scoring.encode(
      task, "inputs", texts, scorer.lengths["inputs"], keep_end=True)
  trimmed_options = 0
  if kind == "free-form":
    metrics = unseen_t5_scoring.generation_metrics(
        scorer, task, encoder, rows.targets, rows.examples)
    metric = "accuracy" if "accuracy" in metrics else next(iter(metrics))
  else:
    p_cf = (_content_free_probs(scorer, task, demos, rows.options)
            if scorer.calibration == "contextual" else None)
    predictions, trimmed_options = rank_predictions(scorer, task, encoder,
                                                    rows.options, p_cf)
    metrics = {"accuracy": metaicl_pool.exact_match_accuracy(
        rows.targets, predictions)}
    metric = "accuracy"
    if kind == "classification":
      metrics["macro_f1"] = metaicl_pool.macro_f1(rows.targets, predictions)
      metric = "macro_f1"
  return {"metric": metric, "score": metrics[metric], "metrics": metrics,
          "trimmed_inputs": trimmed_inputs, "trimmed_options": trimmed_options}


def evaluate_task(scorer: _Scorer, name: str, *, split: str, k_shot: int,
                  seeds: Sequence[int],
                  max_examples: int | None) -> dict[str, Any]:
  """The table row of one task: one run, or one run per seed (k > 0)."""
  task = seqio.get_mixture_or_task(name)
  rows = read_rows(task, split, max_examples)
  kind = task_type(rows)
  if k_shot:
    runs = {seed: score_task(scorer, task, rows, kind, row_demonstrations(
        scorer, task, rows, seed, k_shot)) for seed in seeds}
  else:
    runs = {None: score_task(scorer, task, rows, kind,
                             [[]] * len(rows.inputs))}
  first = next(iter(runs.values()))
  row = {"task": name, "type": kind,
         "method": "generation" if kind == "free-form" else "rank",
         "metric": first["metric"], "examples": len(rows.inputs),
         "available": rows.available,
         "trimmed_inputs": sum(r["trimmed_inputs"] for r in runs.values()),
         "trimmed_options": sum(r["trimmed_options"] for r in runs.values())}
  add_seed_summary(row, runs, per_seed=bool(k_shot))
  if scorer.calibration:
    row["calibrated"] = kind != "free-form"
    if kind == "free-form":
      _LOG.warning("unseen %s: free-form (generation), not calibrated", name)
  if row["trimmed_options"]:
    _LOG.warning("unseen %s: %d options longer than targets length %d were"
                 " trimmed (they may tie)", name, row["trimmed_options"],
                 scorer.lengths["targets"])
  _LOG.info("unseen %s: %s %.2f (%d examples)", name, row["metric"],
            row["score"], row["examples"])
  return row


# --------------------------------- table -----------------------------------

DEFAULT_VARIANT = "direct_seed"


def variant_name(calibration: str | None, demonstrations: str) -> str:
  """`direct_<demonstrations>[_calibrated]`, as the decoder table names it."""
  return f"direct_{demonstrations}" + ("_calibrated" if calibration else "")


def table_markdown(table: Mapping[str, Any]) -> str:
  """`unseen_table.markdown`, headed by the variant."""
  head = (f"T5 `{table['variant']}` (calibration:"
          f" {table['calibration'] or 'none'}; demonstrations:"
          f" {table['demonstrations']}).\n\n")
  return head + markdown(table)


def write_table(table: Mapping[str, Any], output_dir: pathlib.Path
                ) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes `unseen_[<variant>_]<split>_k<k>.{json,md}` atomically (no
  variant in the name for `direct_seed`); returns both paths."""
  variant = ("" if table["variant"] == DEFAULT_VARIANT
             else f"{table['variant']}_")
  stem = f"unseen_{variant}{table['split']}_k{table['k_shot']}"
  return unseen_table.write(table, output_dir, stem, table_markdown(table))


# ------------------------------ entry point --------------------------------


def _merge_alias(name: str, value: Any, old_name: str, old_value: Any,
                 default: Any) -> Any:
  """`value`, or its deprecated alias `old_value` if only that one is set.

  Raises:
    ValueError: (one line) if both are set, to different values.
  """
  if old_value == default:
    return value
  if value not in (default, old_value):
    raise ValueError(f"{name}={value!r} and its deprecated alias"
                     f" {old_name}={old_value!r} disagree; set only {name}")
  _LOG.warning("%s is deprecated; use %s", old_name, name)
  return old_value


def _with_aliases(icl: icl_config.ICLConfig, decoder_calibration: str | None,
                  decoder_demonstrations: str) -> icl_config.ICLConfig:
  """`icl` with the deprecated `decoder_*` aliases merged in."""
  return dataclasses.replace(
      icl, calibration=_merge_alias(
          "calibration", icl.calibration, "decoder_calibration",
          decoder_calibration, None),
      demonstrations=_merge_alias(
          "demonstrations", icl.demonstrations, "decoder_demonstrations",
          decoder_demonstrations, "seed"))


def _family(backbone: run_setup.BackboneConfig) -> str:
  return (models.DECODER_ONLY if run_setup.backbone_kind(backbone) == "decoder"
          else models.ENCODER_DECODER)


def evaluate_unseen(*, model_dir: str, backbone: run_setup.BackboneConfig,
                    method: Any, task_names: Sequence[str],
                    split: str = "test",
                    icl: icl_config.ICLConfig = icl_config.ICLConfig(),
                    task_feature_lengths: Mapping[str, int],
                    batch_size: int = 32, prompt_file: str | None = None,
                    mesh_cfg: run_setup.MeshConfig = run_setup.MeshConfig(),
                    output_dir: str | None = None,
                    trained_on: Sequence[str] = (),
                    max_decode_length: int | None = None,
                    decoder_calibration: str | None = None,
                    decoder_demonstrations: str = "seed") -> dict[str, Any]:
  """Evaluates a prompt on unseen tasks; writes and returns the table.

  Args:
    model_dir: run directory; its latest `prompts/*.npy` is used unless
      `prompt_file` is given.
    backbone, method, mesh_cfg: as for `evaluate`.
    task_names: tasks and/or mixtures (expanded to their tasks).
    split: the split to evaluate.
    icl: the in-context settings (k-shot, seeds, method, calibration,
      demonstrations, order, normalization, row limit). A decoder, or a T5
      with `method='channel'` or an `order`, is evaluated through the k-shot
      loop (`unseen_kshot.evaluate_unseen_kshot_run`: MetaICL test files;
      task_names may then be split names such as 'hr_to_lr';
      prompt_file='none' evaluates without a prompt); a T5 otherwise here.
    task_feature_lengths: TEXT lengths {'inputs': Ti, 'targets': To}
      (demonstrations included; the prompt adds P positions). The k-shot
      budget follows the family (`unseen_kshot.family_budget`).
    batch_size: rows per compiled call.
    prompt_file: a `.npy` prompt [P, H].
    output_dir: where the table goes (default `<model_dir>/unseen_eval`).
    trained_on: tasks/mixtures the prompt was trained on; any overlap with
      `task_names` is an error.
    max_decode_length: generation length (default `targets` length).
    decoder_calibration, decoder_demonstrations: deprecated aliases of
      `icl.calibration` / `icl.demonstrations` (an error if both are set
      and differ).

  Returns:
    The table (also written as JSON and Markdown).
  """
  icl = _with_aliases(icl, decoder_calibration, decoder_demonstrations)
  family = _family(backbone)
  if (family == models.DECODER_ONLY or icl.method != "direct"
      or icl.order is not None):
    cfg = unseen_kshot.eval_config(icl, family, task_feature_lengths,
                                   split=split, batch_size=batch_size)
    return unseen_kshot.evaluate_unseen_kshot_run(
        model_dir=model_dir, backbone=backbone, method=method,
        mesh_cfg=mesh_cfg, task_names=task_names, cfg=cfg,
        prompt_file=prompt_file, output_dir=output_dir, trained_on=trained_on)
  names = resolve_tasks(task_names)
  check_unseen(names, trained_on)
  run = run_setup.build_run(backbone=backbone,
                            method=method.inference_method(),
                            mesh_cfg=mesh_cfg)
  trainable = evaluate_lib.load_trainable(run, model_dir, prompt_file)
  predictor = predicting.Predictor(
      run.model, run.mesh, run.rules,
      jax.tree.map(lambda x: x.sharding, run.frozen),
      max_decode_length=max_decode_length or task_feature_lengths["targets"],
      batch_size=batch_size)
  scorer = _Scorer(predictor, trainable, run.frozen,
                   dict(task_feature_lengths), icl.score_normalization,
                   icl.calibration, icl.demonstrations)
  rows = [evaluate_task(scorer, name, split=split, k_shot=icl.k_shot,
                        seeds=icl.seeds,
                        max_examples=icl.max_examples_per_task)
          for name in names]
  skipped = unseen_table.metaicl_left_out(task_names, names)
  if skipped:
    _LOG.warning("unseen: %s", unseen_table.left_out_line(skipped))
  table = {"split": split, "k_shot": icl.k_shot,
           "seeds": list(icl.seeds) if icl.k_shot else [],
           "score_normalization": icl.score_normalization,
           "max_examples_per_task": icl.max_examples_per_task,
           "task_feature_lengths": dict(task_feature_lengths),
           "prompt_file": prompt_file, "calibration": icl.calibration,
           "demonstrations": icl.demonstrations,
           "variant": variant_name(icl.calibration, icl.demonstrations),
           "rows": rows, "skipped": skipped,
           **summarize(rows, icl.k_shot, icl.seeds)}
  out_dir = pathlib.Path(output_dir or pathlib.Path(model_dir) / "unseen_eval")
  json_path, md_path = write_table(table, out_dir)
  _LOG.info("unseen-task table: %s, %s", json_path, md_path)
  print(table_markdown(table), flush=True)
  return table
