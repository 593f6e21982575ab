"""The `infer` entry point: predictions or scores with a saved prompt.

Reads either a registered task's split (`dataset_cfg`) or a JSONL file of
`{"inputs": text or ids[, "targets": ...]}` lines (`input_file`), and writes
one JSON line per example to `output_file` (atomically; an existing file
needs `overwrite=True`): `prediction` (decoded text and ids) in 'predict'
mode, `score` (summed target log-prob) in 'score' mode.

File text is tokenized as `python -m prompt_jax.score_cli` does: T5 appends EOS
to inputs and targets; a decoder gets the plain text (no EOS; BOS first
when its tokenizer adds one), so with the same prompt (or none: a
zero-length prompt file) both give the same scores. Task splits keep the
task's own features (EOS included).
Gin-free; `main.py --mode=infer` binds it.
"""

import dataclasses
from typing import Any

import jax
import numpy as np

from prompt_jax import evaluate as evaluate_lib
from prompt_jax import models
from prompt_jax import setup as run_setup
from prompt_jax.data import jsonl as jsonl_io
from prompt_jax.data import seqio_batches as data_lib
from prompt_jax.decoding import predictor as predicting
from prompt_jax.methods import base as method_base
from prompt_jax.scoring import scorer as scoring

MODES = ("predict", "score")


def _ids(path: str, line: int, key: str, value: Any, tokenizer,
         decoder: bool) -> list[int]:
  """Ids of one field, as `prompt_jax.score_cli` makes them.

  Text: T5 appends EOS; a decoder gets the plain text (scored as a
  continuation, or continued by generation). Id lists are used as given.
  A decoder's padding mask comes from id 0, so it may not occur.
  """
  if isinstance(value, str):
    if tokenizer is None:
      raise jsonl_io.JsonlError(path, line, f'"{key}" is text but the '
                                "backbone has no tokenizer (give ids or set "
                                "BackboneConfig.vocab_path)")
    ids = tokenizer.encode(value)
    if not decoder:
      return ids + [tokenizer.eos_id]
  elif isinstance(value, list) and value and all(
      isinstance(v, int) and not isinstance(v, bool) for v in value):
    ids = value
  else:
    raise jsonl_io.JsonlError(path, line, f'"{key}" must be text or a '
                              "non-empty list of ints")
  if not ids:
    raise jsonl_io.JsonlError(path, line, f'"{key}" is empty')
  if decoder and 0 in ids:
    raise jsonl_io.JsonlError(path, line, f'"{key}"[{ids.index(0)}] is 0, '
                              "the padding id (it would be ignored)")
  return ids


def _file_rows(path: str, mode: str, tokenizer,
               decoder: bool) -> tuple[list, dict]:
  records = jsonl_io.read_jsonl(path)
  keys = ("inputs", "targets") if mode == "score" else ("inputs",)
  ids = {k: [] for k in keys}
  for line, record in records:
    for key in keys:
      if key not in record:
        raise jsonl_io.JsonlError(path, line, f'missing key "{key}"')
      ids[key].append(_ids(path, line, key, record[key], tokenizer, decoder))
  return [r for _, r in records], {
      k: scoring.pad_batch(v) for k, v in ids.items()}


def _task_rows(dataset_cfg: data_lib.DatasetConfig, tokenizer
               ) -> tuple[list, dict]:
  enc, tgt = [], []
  # Inputs and targets apart, for either backbone (decoders join them).
  dataset_cfg = dataclasses.replace(dataset_cfg, feature_converter="enc_dec")
  for batch, num_real in data_lib.eval_batches(dataset_cfg):
    enc.append(batch["encoder_input_tokens"][:num_real])
    tgt.append(batch["decoder_target_tokens"][:num_real])
  enc, tgt = np.concatenate(enc), np.concatenate(tgt)
  rows = [{"inputs": tokenizer.decode(e), "targets": tokenizer.decode(t)}
          for e, t in zip(enc, tgt)]
  return rows, {"inputs": enc, "targets": tgt}


def infer(*, model_dir: str, backbone: run_setup.BackboneConfig,
          method: method_base.Method, output_file: str,
          dataset_cfg: data_lib.DatasetConfig | None = None,
          input_file: str | None = None, mode: str = "predict",
          prompt_file: str | None = None,
          mesh_cfg: run_setup.MeshConfig = run_setup.MeshConfig(),
          max_decode_length: int = 32, decode_method: str = "greedy",
          num_beams: int = 4, batch_size: int = 32,
          overwrite: bool = False) -> list[dict[str, Any]]:
  """Writes predictions or scores; returns the written rows."""
  if mode not in MODES:
    raise ValueError(f"infer: mode={mode!r}; expected one of {MODES}")
  if (dataset_cfg is None) == (input_file is None):
    raise ValueError("infer: give exactly one of dataset_cfg or input_file")
  jsonl_io.check_output_path(output_file, overwrite)
  run = run_setup.build_run(backbone=backbone,
                            method=method.inference_method(),
                            mesh_cfg=mesh_cfg)
  trainable = evaluate_lib.load_trainable(run, model_dir, prompt_file)
  if input_file is not None:
    rows, ids = _file_rows(input_file, mode, run.tokenizer,
                           run.model.family == models.DECODER_ONLY)
  else:
    rows, ids = _task_rows(dataset_cfg, run.tokenizer)
  predictor = predicting.Predictor(
      run.model, run.mesh, run.rules,
      jax.tree.map(lambda x: x.sharding, run.frozen),
      max_decode_length=max_decode_length, method=decode_method,
      num_beams=num_beams, batch_size=batch_size)
  if mode == "score":
    scores = predictor.score(trainable, run.frozen, ids["inputs"],
                             ids["targets"])
    for row, score in zip(rows, scores):
      row["score"] = float(score)
  else:
    tokens = predictor.predict(trainable, run.frozen, ids["inputs"])
    for row, out in zip(rows, tokens):
      out = predicting.until_eos(out, run.config.eos_id)
      row["prediction"] = run.tokenizer.decode(out)
      row["prediction_ids"] = out
  jsonl_io.write_jsonl(output_file, rows, overwrite=overwrite)
  return rows
