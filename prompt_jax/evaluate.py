"""The `evaluate` entry point: a trained method on any registered task.

Loads the frozen backbone and the method's small artifact (prompt tuning:
a `.npy` prompt; the latest one of a run directory, or a given file), then reports teacher-forced loss and
token accuracy plus seqio's decode-based task metrics (per task of a
mixture). Writes `eval/<task>.json` and `eval/<task>_predictions.jsonl`
under the model directory. Gin-free; `main.py --mode=eval` binds it.

`constraint_fn` restricts decoding; tasks supply their own, e.g.
`tasks.squad.span_constraint_fn()` decodes only spans of the passage after
"context:" in each input, or "unanswerable", for `squad_v2_span_v100`:

  evaluate(model_dir=..., backbone=..., method=...,
           dataset_cfg=DatasetConfig("squad_v2_span_v100",
                                     {"inputs": 512, "targets": 32},
                                     "test_from_val", 32),
           constraint_fn=squad.span_constraint_fn())
"""

import json
import pathlib
from typing import Any

import jax
import seqio

from prompt_jax.data import jsonl as jsonl_io
from prompt_jax.data import seqio_batches as data_lib
from prompt_jax.evaluators import teacher_forced as evaluation
from prompt_jax.decoding import predictor as predicting
from prompt_jax import setup as run_setup
from prompt_jax import trainer as trainer_lib
from prompt_jax.methods import base as method_base


def load_trainable(run: run_setup.Run, model_dir: str,
                   artifact_file: str | None) -> dict:
  """The trainable tree from the method's artifact (`artifact_file`, else
  the latest one under `model_dir`), checked against the model."""
  path = artifact_file or run.method.latest_artifact(model_dir)
  return run.method.load_artifact(path, run.model.lm)


def decode_metrics(predictor: predicting.Predictor, trainable, frozen,
                   dataset_cfg: data_lib.DatasetConfig
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
  """seqio Evaluator metrics and outputs per task of the task or mixture."""
  evaluator = seqio.Evaluator(
      mixture_or_task_name=dataset_cfg.mixture_or_task_name,
      feature_converter=seqio.EncDecFeatureConverter(pack=False),
      eval_split=dataset_cfg.split,
      sequence_length=dict(dataset_cfg.task_feature_lengths),
      use_memory_cache=False, async_compute_metrics=False)
  metrics, outputs = evaluator.evaluate(
      compute_metrics=True,
      predict_fn=predictor.seqio_predict_fn(trainable, frozen),
      score_fn=predictor.seqio_score_fn(trainable, frozen))
  return metrics.result(), outputs


def _write(out_dir: pathlib.Path, name: str, metrics: dict,
           outputs: dict) -> None:
  """Writes metrics JSON and one line per example of each model output,
  each file atomically (a temporary file renamed into place)."""
  jsonl_io.write_text_atomic(out_dir / f"{name}.json", json.dumps(
      metrics, indent=2, default=float))
  lines = []
  for output_type, values in outputs.items():
    kind = seqio.metrics.ModelOutputType.to_str(output_type)
    for index, value in enumerate(values):
      value = value.tolist() if hasattr(value, "tolist") else value
      lines.append(json.dumps({"index": index, kind: value}, default=str))
  jsonl_io.write_text_atomic(out_dir / f"{name}_predictions.jsonl",
                             "".join(line + "\n" for line in lines))


def evaluate(*, model_dir: str, backbone: run_setup.BackboneConfig,
             method: method_base.Method,
             dataset_cfg: data_lib.DatasetConfig,
             prompt_file: str | None = None,
             mesh_cfg: run_setup.MeshConfig = run_setup.MeshConfig(),
             max_decode_length: int | None = None,
             decode_method: str = "greedy", num_beams: int = 4,
             constraint_fn: predicting.ConstraintFn | None = None
             ) -> dict[str, Any]:
  """Evaluates a trained method; returns {task: metrics} plus 'teacher_forced'.

  `constraint_fn`: the `Predictor`'s decoding constraint, e.g.
  `tasks.squad.span_constraint_fn()` for span extraction (module docs);
  None decodes freely.
  """
  run = run_setup.build_run(backbone=backbone,
                            method=method.inference_method(),
                            mesh_cfg=mesh_cfg)
  trainable = load_trainable(run, model_dir, prompt_file)
  frozen_shardings = jax.tree.map(lambda x: x.sharding, run.frozen)
  evaluator = trainer_lib.Trainer(run.model, None, run.mesh, run.rules,
                                  frozen_shardings)
  results = {"teacher_forced": evaluation.teacher_forced(
      evaluator, trainable, run.frozen, dataset_cfg)}
  predictor = predicting.Predictor(
      run.model, run.mesh, run.rules, frozen_shardings,
      max_decode_length=(max_decode_length or
                         dataset_cfg.task_feature_lengths["targets"]),
      method=decode_method, num_beams=num_beams,
      batch_size=dataset_cfg.batch_size,
      constraint_fn=constraint_fn)
  metrics, outputs = decode_metrics(predictor, trainable, run.frozen,
                                    dataset_cfg)
  out_dir = pathlib.Path(model_dir) / "eval"
  for task, task_metrics in metrics.items():
    results[task] = {k: float(v) if hasattr(v, "__float__") else v
                     for k, v in task_metrics.items()}
    _write(out_dir, task, results[task], outputs.get(task, {}))
  print(json.dumps(results, indent=2, default=str), flush=True)
  return results
