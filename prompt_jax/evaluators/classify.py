"""The `classify` entry point: rank classification of a task split.

Every row of a labelled task split (seqio; rows with `inputs` token ids and
an int `label`) is scored with each option text as its continuation
(decoder-only backbones) or its target (T5: the encoder reads the row) by
`option_scoring.score_options`; the prediction is the best-scoring option,
whose index is compared with `label`. The task's vocabulary must be the
backbone's (T5: e.g. `sst2_v100`; SmolLM2: `sst2_smollm2_v100`). The same rows are
scored with a trained soft prompt and, optionally, without one (zero-shot),
so one call shows what the prompt bought. Gin-free; `main.py --mode=classify`
binds it (`gin_configs/runs/classify.gin`).

Example (the `make run` job, after training):

  result = classify(model_dir="runs/demo_sst2_smollm2",
                    backbone=run_setup.BackboneConfig(path="smollm2"),
                    method=prompt_tuning.PromptTuning(length=20),
                    task="sst2_smollm2_v100",
                    options=[" negative", " positive"],
                    prompt_file="latest")
  # prints: sst2_smollm2_v100 validation (872 rows): zero-shot A% ->
  #         prompt B%
  # writes runs/demo_sst2_smollm2/classify_sst2_smollm2_v100_validation.json
  result["prompt_accuracy"]   # B (`make run` stores its own in
                              # bench/results/make_run.json)
"""

import dataclasses
import pathlib
import time
from typing import Any, Sequence

import jax
import numpy as np

from prompt_jax.data import jsonl as jsonl_io
from prompt_jax.scoring import options as option_scoring
from prompt_jax import setup as run_setup
from prompt_jax.methods import base as method_base

LATEST = "latest"  # `prompt_file` value: the run's newest prompt export.


@dataclasses.dataclass
class LabelledRows:
  """The rows of one task split.

  Attributes:
    inputs: N token-id rows (the task vocabulary's ids, unpadded).
    labels: [N] int label ids (option indices).
  """
  inputs: list[list[int]]
  labels: np.ndarray


def resolve_prompt_file(model_dir: str, prompt_file: str | None,
                        method: method_base.Method
                        ) -> pathlib.Path | None:
  """None, `method`'s latest artifact under `model_dir` ('latest'), or an
  existing file.

  Raises:
    FileNotFoundError: (one line) if the file, or any export, is missing.
  """
  if prompt_file is None:
    return None
  if prompt_file == LATEST:
    return method.latest_artifact(model_dir)
  path = pathlib.Path(prompt_file)
  if not path.is_file():
    raise FileNotFoundError(f"prompt file {path} does not exist")
  return path


def read_labelled_rows(task: str, split: str, num_options: int,
                       max_rows: int | None = None) -> LabelledRows:
  """The first `max_rows` (None: all) rows of `task`'s `split`, in order.

  Raises:
    ValueError: (one line, naming the task, split and row) for an unknown
      task or split, a row without `inputs` or `label`, or a label outside
      [0, num_options).
  """
  import seqio  # pylint: disable=g-import-not-at-top
  if task not in seqio.TaskRegistry.names():
    raise ValueError(f"classify: unknown seqio task {task!r} (a task, not a "
                     "mixture; see `python -m tasks list`)")
  provider = seqio.get_mixture_or_task(task)
  if split not in provider.splits:
    raise ValueError(f"classify: task {task!r} has no split {split!r}; it "
                     f"has {sorted(provider.splits)}")
  ds = provider.get_dataset(sequence_length=None, split=split, shuffle=False,
                            num_epochs=1)
  if max_rows is not None:
    ds = ds.take(max_rows)
  inputs, labels = [], []
  for index, ex in enumerate(ds.as_numpy_iterator()):
    where = f"task {task!r} split {split!r} row {index}"
    if "inputs" not in ex or "label" not in ex:
      raise ValueError(f"classify: {where} lacks 'inputs' or 'label' (has "
                       f"{sorted(ex)})")
    label = int(ex["label"])
    if not 0 <= label < num_options:
      raise ValueError(f"classify: {where} has label {label}, outside the "
                       f"{num_options} options")
    inputs.append(np.asarray(ex["inputs"]).tolist())
    labels.append(label)
  if not inputs:
    raise ValueError(f"classify: task {task!r} split {split!r} has no rows")
  return LabelledRows(inputs, np.asarray(labels, np.int32))


def task_vocabulary(task: str):
  """The seqio vocabulary of `task`'s `inputs` feature."""
  import seqio  # pylint: disable=g-import-not-at-top
  return seqio.get_mixture_or_task(task).output_features["inputs"].vocabulary


def encode_options(run: run_setup.Run, options: Sequence[str],
                   task: str) -> list[list[int]]:
  """The options' token ids under the run's tokenizer.

  Raises:
    ValueError: (one line) for no options, an option with no tokens, or a
      task whose vocabulary gives other ids than the backbone's tokenizer.
  """
  if run.tokenizer is None:
    raise ValueError("classify: the backbone has no tokenizer (set "
                     "BackboneConfig.vocab_path)")
  encoded = [run.tokenizer.encode(text) for text in options]
  for text, ids in zip(options, encoded):
    if not ids:
      raise ValueError(f"classify: option {text!r} tokenizes to no tokens")
  task_ids = [list(task_vocabulary(task).encode(text)) for text in options]
  if task_ids != encoded:
    raise ValueError(f"classify: task {task!r} tokenizes with another "
                     f"vocabulary than the backbone ({options[0]!r}: "
                     f"{task_ids[0]} vs {encoded[0]})")
  return encoded


def scoring_params(frozen):
  """`frozen` on one device when it is replicated on several, else as is.

  `score_options` does not split rows over the mesh, so replicated params
  would make every device compute the same scores (8 fake CPU devices: 8x
  the work); model-sharded params stay sharded.
  """
  leaves = jax.tree.leaves(frozen)
  if len(jax.devices()) > 1 and all(
      leaf.sharding.is_fully_replicated for leaf in leaves):
    return jax.device_put(frozen, jax.devices()[0])
  return frozen


def summary_line(result: dict[str, Any]) -> str:
  """`<task> <split> (<N> rows): zero-shot A% -> prompt B%`."""
  parts = []
  if result["zero_shot_accuracy"] is not None:
    parts.append(f"zero-shot {result['zero_shot_accuracy']:.2f}%")
  if result["prompt_accuracy"] is not None:
    parts.append(f"prompt {result['prompt_accuracy']:.2f}%")
  return (f"{result['task']} {result['split']} ({result['rows']} rows): "
          + " -> ".join(parts))


def _check_args(options: Sequence[str], prompt_file: str | None,
                compare_zero_shot: bool, max_rows: int | None,
                batch_size: int) -> None:
  if isinstance(options, str) or len(options) < 2:
    raise ValueError(f"classify: options={options!r}; give a list of at "
                     "least two continuation texts, by label id")
  if prompt_file is None and not compare_zero_shot:
    raise ValueError("classify: nothing to score (prompt_file=None and "
                     "compare_zero_shot=False)")
  if max_rows is not None and max_rows <= 0:
    raise ValueError(f"classify: max_rows={max_rows} must be > 0")
  if batch_size <= 0:
    raise ValueError(f"classify: batch_size={batch_size} must be > 0")


def classify(*, model_dir: str, backbone: run_setup.BackboneConfig,
             method: method_base.Method, task: str,
             split: str = "validation", options: Sequence[str],
             prompt_file: str | None = None, compare_zero_shot: bool = True,
             max_rows: int | None = None, batch_size: int = 32,
             mesh_cfg: run_setup.MeshConfig = run_setup.MeshConfig()
             ) -> dict[str, Any]:
  """Rank-classifies a task split with and without a soft prompt.

  Args:
    model_dir: run directory; the result goes to
      `<model_dir>/classify_<task>_<split>.json`.
    backbone: the backbone (decoder-only or T5); its tokenizer must give
      the task's ids.
    method: the trained method (its artifact must match it).
    task: a registered seqio task with `inputs` ids and an int `label`.
    split: the split to classify.
    options: continuation texts by label id, e.g. [' negative', ' positive'].
    prompt_file: the method's artifact (prompt tuning: a `.npy` [P, H]);
      'latest': the newest one under `model_dir`; None: none.
    compare_zero_shot: also score the rows without a prompt.
    max_rows: classify only the first N rows (None: all).
    batch_size: rows per scoring call.
    mesh_cfg: the device mesh.

  Returns:
    {'task', 'split', 'rows', 'options', 'prompt_file',
     'zero_shot_accuracy', 'prompt_accuracy' (percent, None when not run),
     'seconds'}.

  Raises:
    ValueError / FileNotFoundError: one line for bad arguments, a task
      vocabulary other than the backbone's, a missing prompt file or a bad
      task split.
  """
  start = time.time()
  _check_args(options, prompt_file, compare_zero_shot, max_rows, batch_size)
  path = resolve_prompt_file(model_dir, prompt_file, method)
  rows = read_labelled_rows(task, split, len(options), max_rows)
  run = run_setup.build_run(backbone=backbone,
                            method=method.inference_method(),
                            mesh_cfg=mesh_cfg)
  option_ids = encode_options(run, options, task)
  frozen = scoring_params(run.frozen)

  def accuracy(trainable) -> float:
    scores = option_scoring.score_options(
        run.model, trainable, frozen, inputs=rows.inputs,
        options=option_ids, batch_size=batch_size)
    return option_scoring.accuracy(scores, rows.labels)

  prompt_accuracy = None
  if path is not None:
    prompt_accuracy = accuracy(run.method.load_artifact(path, run.model.lm))
  result = {
      "task": task, "split": split, "rows": len(rows.inputs),
      "options": list(options),
      "prompt_file": None if path is None else str(path),
      "zero_shot_accuracy": accuracy(None) if compare_zero_shot else None,
      "prompt_accuracy": prompt_accuracy,
  }
  result["seconds"] = round(time.time() - start, 1)
  out = pathlib.Path(model_dir) / f"classify_{task}_{split}.json"
  out.parent.mkdir(parents=True, exist_ok=True)
  jsonl_io.write_jsonl(out, [result], overwrite=True)
  print(summary_line(result), flush=True)
  return result
