"""The `evaluate_unseen` entry point: a prompt on tasks it was not trained on.

Takes any registered tasks or mixtures (e.g. `metaicl_hr_to_lr_test_v100`,
the unseen test tasks of MetaICL's hr_to_lr split), zero-shot or with k
demonstrations, and writes ONE table, per-task scores plus their mean, as
JSON and Markdown (`<output_dir>/unseen_<split>_k<k>.{json,md}`, default
output_dir `<model_dir>/unseen_eval/`). `main.py --mode=unseen` binds it
(`gin_configs/runs/unseen_eval.gin`).

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
every input, `in_1 out_1 ... in_k out_k input` (`tasks.metaicl.kshot_text`).
The input is then trimmed from the START to fit `task_feature_lengths
['inputs']`, so the example itself survives (MetaICL trims the same way); the
table counts trimmed inputs and options. Each seed is one run; a row reports
the mean over seeds as `score`, the worst seed as `worst`, and every seed
(trimmed counts are summed over seeds).

Table (JSON): {"rows": [{"task", "type", "method", "metric", "score",
"metrics", "examples", "available", ...}], "mean": mean of the row scores,
and with k > 0 "mean_worst" and "seed_means"}, plus the run settings.
"""

import dataclasses
import json
import logging
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import seqio

from prompt_jax import evaluate as evaluate_lib
from prompt_jax import predicting
from prompt_jax import run_setup
from prompt_jax import unseen_decoder_eval
from prompt_jax.unseen_table import add_seed_summary, markdown, summarize
from tasks import metaicl  # Registers every task (entry points may).

_LOG = logging.getLogger(__name__)
NORMALIZATIONS = ("mean", "sum")


@dataclasses.dataclass
class TaskRows:
  """The evaluated examples of one task split (texts before tokenization)."""
  name: str
  inputs: list[str]
  targets: list[str]
  options: list[tuple[str, ...]]
  examples: list[dict[str, Any]]  # Raw numpy examples, for postprocessors.
  available: int  # Rows in the split (>= len(inputs) with a row limit).


@dataclasses.dataclass
class _Scorer:
  """What every task evaluation needs: model, prompt, lengths, settings."""
  predictor: predicting.Predictor
  trainable: Any
  frozen: Any
  lengths: Mapping[str, int]
  normalization: str


# ------------------------------ task selection -----------------------------


def resolve_tasks(names: Sequence[str]) -> list[str]:
  """Task and mixture names → task names (mixtures expanded, order kept).

  Raises:
    ValueError: (one line) for a name that is neither.
  """
  out = []
  for name in names:
    if name in seqio.TaskRegistry.names():
      subtasks = [name]
    elif name in seqio.MixtureRegistry.names():
      subtasks = [t.name for t in seqio.get_subtasks(
          seqio.get_mixture_or_task(name))]
    else:
      raise ValueError(f"unknown task or mixture {name!r} (see `python -m"
                       " tasks list` and `python -m tasks list --mixtures`)")
    out.extend(t for t in subtasks if t not in out)
  if not out:
    raise ValueError("evaluate_unseen needs at least one task")
  return out


def check_unseen(task_names: Sequence[str], trained_on: Sequence[str]) -> None:
  """Raises a one-line ValueError if a task was among the training tasks."""
  seen = set(resolve_tasks(trained_on)) if trained_on else set()
  overlap = [t for t in task_names if t in seen]
  if overlap:
    raise ValueError(f"tasks {overlap} were trained on ({list(trained_on)});"
                     " an unseen-task evaluation must leave them out")


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


def demonstrations(task: seqio.Task, seed: int,
                   k: int) -> list[tuple[str, str]]:
  """k (input, target) demonstrations of `task` for `seed` (see module doc)."""
  split = f"train_{seed}"
  if split in task.splits:
    rows = read_rows(task, split, k)
  elif "train" in task.splits:
    rows = read_rows(task, "train")
    order = np.random.default_rng(seed).permutation(len(rows.inputs))[:k]
    rows.inputs = [rows.inputs[i] for i in order]
    rows.targets = [rows.targets[i] for i in order]
  else:
    raise ValueError(f"task {task.name!r} has neither {split!r} nor 'train'"
                     " to draw demonstrations from")
  if len(rows.inputs) < k:
    raise ValueError(f"task {task.name!r}: {k} demonstrations asked, only"
                     f" {len(rows.inputs)} rows to draw from")
  return list(zip(rows.inputs, rows.targets))


def task_type(rows: TaskRows) -> str:
  """`classification`, `multi-choice` or `free-form` (see module doc)."""
  has_options = {bool(o) for o in rows.options}
  if len(has_options) != 1:
    raise ValueError(f"task {rows.name!r}: some examples have options and"
                     " some do not")
  if rows.name in metaicl.FOLDER_OF:
    kind = metaicl.task_type(metaicl.FOLDER_OF[rows.name])
    if (kind == "free-form") == has_options.pop():
      raise ValueError(f"task {rows.name!r} is {kind} but its examples"
                       f" {'have' if rows.options[0] else 'lack'} options")
    return kind
  if not rows.options[0]:
    return "free-form"
  return ("classification" if len({frozenset(o) for o in rows.options}) == 1
          else "multi-choice")


# ------------------------------ tokenization -------------------------------


def fit(ids: Sequence[int], length: int, eos_id: int | None, *,
        keep_end: bool) -> tuple[np.ndarray, bool]:
  """Ids trimmed (from the start if `keep_end`) + EOS, zero-padded.

  Returns:
    ([length] int32, whether anything was trimmed).
  """
  room = length - (eos_id is not None)
  trimmed = len(ids) > room
  if trimmed:
    ids = ids[len(ids) - room:] if keep_end else ids[:room]
  ids = list(ids) + ([eos_id] if eos_id is not None else [])
  return np.asarray(ids + [0] * (length - len(ids)), np.int32), trimmed


def _encode(task: seqio.Task, key: str, texts: Sequence[str], length: int,
            keep_end: bool) -> tuple[np.ndarray, int]:
  feature = task.output_features[key]
  eos = feature.vocabulary.eos_id if feature.add_eos else None
  fitted = [fit(feature.vocabulary.encode(t), length, eos, keep_end=keep_end)
            for t in texts]
  return (np.stack([f[0] for f in fitted]),
          sum(f[1] for f in fitted))


# -------------------------------- scoring ----------------------------------


def rank_predictions(scorer: _Scorer, task: seqio.Task, encoder: np.ndarray,
                     options: Sequence[tuple[str, ...]]
                     ) -> tuple[list[str], int]:
  """The best option per example, and how many options were trimmed."""
  counts = np.asarray([len(o) for o in options])
  flat = [o for opts in options for o in opts]
  targets, trimmed = _encode(task, "targets", flat, scorer.lengths["targets"],
                             keep_end=False)
  scores = scorer.predictor.score(scorer.trainable, scorer.frozen,
                                  np.repeat(encoder, counts, axis=0), targets)
  if scorer.normalization == "mean":
    scores = scores / np.maximum(np.count_nonzero(targets, axis=1), 1)
  ends = np.cumsum(counts)
  best = [int(np.argmax(scores[end - n:end])) for n, end in zip(counts, ends)]
  return [opts[b] for opts, b in zip(options, best)], trimmed


def _generation_metrics(scorer: _Scorer, task: seqio.Task, rows: TaskRows,
                        encoder: np.ndarray) -> dict[str, float]:
  vocab = task.output_features["targets"].vocabulary
  tokens = scorer.predictor.predict(scorer.trainable, scorer.frozen, encoder)
  predictions = [task.postprocess_fn(vocab.decode(t.tolist()), example=ex,
                                     is_target=False)
                 for t, ex in zip(tokens, rows.examples)]
  targets = [task.postprocess_fn(t, example=ex, is_target=True)
             for t, ex in zip(rows.targets, rows.examples)]
  if not task.predict_metric_fns:
    raise ValueError(f"task {task.name!r} has no (targets, predictions)"
                     " metric for generation")
  metrics = {}
  for fn in task.predict_metric_fns:
    metrics.update(fn(targets, predictions))
  return {k: float(v) for k, v in metrics.items()}


def score_task(scorer: _Scorer, task: seqio.Task, rows: TaskRows, kind: str,
               demos: Sequence[tuple[str, str]]) -> dict[str, Any]:
  """One run (one seed) of one task: {metric, score, metrics, trimmed...}."""
  texts = [metaicl.kshot_text(demos, t) if demos else t for t in rows.inputs]
  encoder, trimmed_inputs = _encode(task, "inputs", texts,
                                    scorer.lengths["inputs"], keep_end=True)
  trimmed_options = 0
  if kind == "free-form":
    metrics = _generation_metrics(scorer, task, rows, encoder)
    metric = "accuracy" if "accuracy" in metrics else next(iter(metrics))
  else:
    predictions, trimmed_options = rank_predictions(scorer, task, encoder,
                                                    rows.options)
    metrics = {"accuracy": metaicl.exact_match_accuracy(rows.targets,
                                                        predictions)}
    metric = "accuracy"
    if kind == "classification":
      metrics["macro_f1"] = metaicl.macro_f1(rows.targets, predictions)
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
    runs = {seed: score_task(scorer, task, rows, kind,
                             demonstrations(task, seed, k_shot))
            for seed in seeds}
  else:
    runs = {None: score_task(scorer, task, rows, kind, [])}
  first = next(iter(runs.values()))
  row = {"task": name, "type": kind,
         "method": "generation" if kind == "free-form" else "rank",
         "metric": first["metric"], "examples": len(rows.inputs),
         "available": rows.available,
         "trimmed_inputs": sum(r["trimmed_inputs"] for r in runs.values()),
         "trimmed_options": sum(r["trimmed_options"] for r in runs.values())}
  add_seed_summary(row, runs, per_seed=bool(k_shot))
  if row["trimmed_options"]:
    _LOG.warning("unseen %s: %d options longer than targets length %d were"
                 " trimmed (they may tie)", name, row["trimmed_options"],
                 scorer.lengths["targets"])
  _LOG.info("unseen %s: %s %.2f (%d examples)", name, row["metric"],
            row["score"], row["examples"])
  return row


# --------------------------------- table -----------------------------------


def write_table(table: Mapping[str, Any], output_dir: pathlib.Path
                ) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes `unseen_<split>_k<k>.json` and `.md`; returns both paths."""
  output_dir.mkdir(parents=True, exist_ok=True)
  stem = output_dir / f"unseen_{table['split']}_k{table['k_shot']}"
  json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
  json_path.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
  md_path.write_text(markdown(table), encoding="utf-8")
  return json_path, md_path


# ------------------------------ entry point --------------------------------


def _check_args(k_shot: int, seeds: Sequence[int], normalization: str,
                max_examples: int | None) -> None:
  if k_shot < 0 or (k_shot and not seeds):
    raise ValueError(f"k_shot={k_shot} must be >= 0, with seeds when > 0")
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"score_normalization={normalization!r}; use one of"
                     f" {NORMALIZATIONS}")
  if max_examples is not None and max_examples <= 0:
    raise ValueError(f"max_examples_per_task={max_examples} must be > 0")


def evaluate_unseen(*, model_dir: str, backbone: run_setup.BackboneConfig,
                    prompt: run_setup.PromptConfig, task_names: Sequence[str],
                    split: str = "test", k_shot: int = 0,
                    seeds: Sequence[int] = (100, 13, 21, 42, 87),
                    task_feature_lengths: Mapping[str, int],
                    batch_size: int = 32, prompt_file: str | None = None,
                    mesh_cfg: run_setup.MeshConfig = run_setup.MeshConfig(),
                    output_dir: str | None = None,
                    max_examples_per_task: int | None = None,
                    score_normalization: str = "mean",
                    trained_on: Sequence[str] = (),
                    max_decode_length: int | None = None,
                    decoder_method: str = "direct",
                    decoder_calibration: str | None = None,
                    decoder_demonstrations: str = "seed") -> dict[str, Any]:
  """Evaluates a prompt on unseen tasks; writes and returns the table.

  Args:
    model_dir: run directory; its latest `prompts/*.npy` is used unless
      `prompt_file` is given.
    backbone, prompt, mesh_cfg: as for `evaluate`.
    task_names: tasks and/or mixtures (expanded to their tasks).
    split: the split to evaluate.
    k_shot: demonstrations per input (0: zero-shot).
    seeds: one run per seed when k_shot > 0 (ignored when 0).
    task_feature_lengths: TEXT lengths {'inputs': Ti, 'targets': To}
      (demonstrations included; the prompt adds P positions).
    batch_size: rows per compiled call.
    prompt_file: a `.npy` prompt [P, H].
    output_dir: where the table goes (default `<model_dir>/unseen_eval`).
    max_examples_per_task: evaluate only the first N rows of each task.
    score_normalization: 'mean' (per target token, as MetaICL) or 'sum'.
    trained_on: tasks/mixtures the prompt was trained on; any overlap with
      `task_names` is an error.
    max_decode_length: generation length (default `targets` length).
    decoder_method, decoder_calibration, decoder_demonstrations: for a
      decoder backbone, which is evaluated by
      `unseen_decoder_eval.evaluate_unseen_decoder_run` (task_names may
      then be split names such as 'hr_to_lr'; the k-shot budget is
      inputs + targets; prompt_file='none' evaluates without a prompt).

  Returns:
    The table (also written as JSON and Markdown).
  """
  _check_args(k_shot, seeds, score_normalization, max_examples_per_task)
  if run_setup.backbone_kind(backbone) == "decoder":
    cfg = unseen_decoder_eval.DecoderEvalConfig(
        k=k_shot, seeds=tuple(seeds), method=decoder_method,
        calibration=decoder_calibration, demonstrations=decoder_demonstrations,
        split=split, max_rows_per_task=max_examples_per_task,
        score_normalization=score_normalization, batch_size=batch_size,
        max_length=sum(task_feature_lengths.values()))
    return unseen_decoder_eval.evaluate_unseen_decoder_run(
        model_dir=model_dir, backbone=backbone, prompt=prompt,
        mesh_cfg=mesh_cfg, task_names=task_names, cfg=cfg,
        prompt_file=prompt_file, output_dir=output_dir, trained_on=trained_on)
  if (decoder_method, decoder_calibration, decoder_demonstrations) != (
      "direct", None, "seed"):
    raise ValueError("decoder_method / decoder_calibration /"
                     " decoder_demonstrations apply to decoder backbones only")
  names = resolve_tasks(task_names)
  check_unseen(names, trained_on)
  run = run_setup.build_run(backbone=backbone, prompt=prompt,
                            mesh_cfg=mesh_cfg)
  trainable = evaluate_lib.load_trainable(run, model_dir, prompt_file)
  predictor = predicting.Predictor(
      run.model, run.mesh, run.rules,
      jax.tree.map(lambda x: x.sharding, run.frozen),
      max_decode_length=max_decode_length or task_feature_lengths["targets"],
      batch_size=batch_size)
  scorer = _Scorer(predictor, trainable, run.frozen,
                   dict(task_feature_lengths), score_normalization)
  rows = [evaluate_task(scorer, name, split=split, k_shot=k_shot, seeds=seeds,
                        max_examples=max_examples_per_task) for name in names]
  table = {"split": split, "k_shot": k_shot,
           "seeds": list(seeds) if k_shot else [],
           "score_normalization": score_normalization,
           "max_examples_per_task": max_examples_per_task,
           "task_feature_lengths": dict(task_feature_lengths),
           "prompt_file": prompt_file, "rows": rows,
           **summarize(rows, k_shot, seeds)}
  out_dir = pathlib.Path(output_dir or pathlib.Path(model_dir) / "unseen_eval")
  json_path, md_path = write_table(table, out_dir)
  _LOG.info("unseen-task table: %s, %s", json_path, md_path)
  print(markdown(table), flush=True)
  return table
