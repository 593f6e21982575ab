"""The `train` entry point: any method, with checkpoints and resumption.

Gin-free; `main.py` wraps it with `gin.configurable`. A run directory holds
`checkpoints/` (Orbax, trainable state + data position), the method's small
artifacts (prompt tuning: `prompts/prompt_step_<N>.npy`), `metrics.jsonl`,
`tb/` and `config.gin`.
Restarting with the same directory resumes from the latest checkpoint and
replays exactly the batches an uninterrupted run would have seen.

Batches come from a seqio task (`train_dataset_cfg`) or, where seqio and
TensorFlow are not installed, from any resumable iterator
(`train_batches_fn`), e.g. pre-tokenized MetaICL examples:

  mixture = lambda p: array_batches.MixtureBatches(
      tasks, batch_size=16, max_length=1024, cap=16384, start_position=p)
  train(model_dir=..., backbone=..., method=..., optimizer=...,
        total_steps=30000, train_batches_fn=mixture,
        target_length=mixture(0).max_target_length)

`prompt_jax.data.seqio_batches` and `prompt_jax.evaluators.teacher_forced` (seqio, TensorFlow) are
imported only when a dataset config asks for them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
import optax

from prompt_jax import checkpoints
from prompt_jax import metric_writers
from prompt_jax import setup as run_setup
from prompt_jax import trainer as trainer_lib
from prompt_jax.methods import counting
from prompt_jax.methods import base as method_base
from prompt_jax.methods import prompt_tuning

if TYPE_CHECKING:
  from prompt_jax.data import seqio_batches as data_lib

_LOG = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  """Training produced NaN/inf; nothing was saved for that state."""


def _fetch(metrics: dict) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


class _FiniteLossCheck:
  """Keeps each step's loss on device (no per-step sync) and, when asked,
  names the first step whose loss was NaN/inf."""

  def __init__(self):
    self._losses = []

  def add(self, step: int, loss: jax.Array) -> None:
    self._losses.append((step, loss))

  def check(self, step: int, trainable) -> None:
    """Raises for the first non-finite loss since the last check, or for a
    non-finite trainable tree at `step` (reduced on device)."""
    steps = [s for s, _ in self._losses]
    losses = jax.device_get([loss for _, loss in self._losses])
    self._losses = []
    bad = [s for s, loss in zip(steps, losses) if not np.isfinite(loss)]
    trainable_ok = bool(_all_finite(trainable))
    if bad or not trainable_ok:
      what = (f"non-finite loss at step {bad[0]}" if bad else
              f"non-finite trainable parameters at step {step}")
      raise NonFiniteLossError(
          f"{what}; stopping without saving this state (the last good "
          "checkpoint is kept)")


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jax.numpy.isfinite(x).all() for x in jax.tree.leaves(tree)]
  return jax.numpy.all(jax.numpy.stack(leaves)) if leaves else True


def _restore_or_init(ckpt, trainer, seed: int):
  if ckpt.latest_step() is None:
    return trainer.init_state(jax.random.key(seed)), 0
  try:
    state, position = ckpt.restore(trainer.abstract_state())
  except (ValueError, KeyError) as e:
    raise ValueError(
        f"checkpoint {ckpt.model_dir / 'checkpoints'} step "
        f"{ckpt.latest_step()} does not match this model and method "
        f"({trainer.model.method.settings()}, H="
        f"{trainer.model.config.emb_dim}): "
        f"{' '.join(str(e).split())[:300]}") from None
  _LOG.info("resumed from step %d", int(state.step))
  return state, int(position["batches"])


def _check_batch_source(train_dataset_cfg: data_lib.DatasetConfig | None,
                        train_batches_fn: Callable | None,
                        target_length: int | None) -> None:
  if (train_dataset_cfg is None) == (train_batches_fn is None):
    raise ValueError("train: give exactly one of train_dataset_cfg and "
                     "train_batches_fn (got "
                     f"{'both' if train_batches_fn else 'neither'}).")
  if train_dataset_cfg is not None and target_length is not None:
    raise ValueError(
        "train: target_length goes with train_batches_fn only; with "
        "train_dataset_cfg it is task_feature_lengths['targets'].")


def _open_batches(train_dataset_cfg: data_lib.DatasetConfig | None,
                  train_batches_fn: Callable[[int], Iterator] | None,
                  position: int) -> tuple[Iterator, int]:
  """(batches from `position` on, batch size for the ex/s log line)."""
  if train_dataset_cfg is not None:
    from prompt_jax.data import seqio_batches as data  # pylint: disable=g-import-not-at-top
    return (data.TrainBatches(train_dataset_cfg, start_position=position),
            train_dataset_cfg.batch_size)
  batches = train_batches_fn(position)
  if getattr(batches, "position", None) != position:
    raise ValueError(
        f"train_batches_fn({position}) returned an iterator whose .position "
        f"is {getattr(batches, 'position', 'missing')}, not {position}; it "
        "must start at the given position (e.g. start_position=p).")
  return batches, getattr(batches, "batch_size", 0)


def _check_divisible(batch_size: int, mesh) -> None:
  data = mesh.shape["data"]
  if batch_size and batch_size % data:
    raise ValueError(f"batch size {batch_size} is not divisible by the "
                     f"mesh's data axis ({data} devices); use a multiple of "
                     f"{data} or set MESH_DATA")


def _run_settings(train_dataset_cfg, batches, backbone,
                  method: method_base.Method, seed: int) -> dict[str, Any]:
  """What defines the data stream and the trainable tree of a run."""
  data = (dataclasses.asdict(train_dataset_cfg) if train_dataset_cfg
          else getattr(batches, "settings", {"source": "train_batches_fn"}))
  trainable = {"backbone_preset": backbone.preset,
               "backbone_kind": backbone.kind, **method.settings()}
  return {"data": data, "seed": seed, "trainable": trainable}


def train(*, model_dir: str, backbone: run_setup.BackboneConfig,
          method: method_base.Method = prompt_tuning.PromptTuning(),
          optimizer: optax.GradientTransformation, total_steps: int,
          train_dataset_cfg: data_lib.DatasetConfig | None = None,
          train_batches_fn: Callable[[int], Iterator] | None = None,
          target_length: int | None = None,
          eval_dataset_cfg: data_lib.DatasetConfig | None = None,
          checkpoint_cfg: checkpoints.CheckpointConfig = (
              checkpoints.CheckpointConfig()),
          mesh_cfg: run_setup.MeshConfig = run_setup.MeshConfig(),
          num_microbatches: int = 1, log_every_steps: int = 10,
          eval_every_steps: int | None = None, seed: int = 0,
          allow_changed_settings: bool = False,
          on_start: Callable[[], None] | None = None) -> dict[str, Any]:
  """Trains `method`'s parameters on a frozen backbone (a soft prompt,
  LoRA, ...; with full fine-tuning every backbone weight).

  The arguments not listed do what their names say.

  Args:
    method: the tuning method (`prompt_jax.methods.METHODS`).
    train_dataset_cfg: a seqio task or mixture to read (needs seqio).
    train_batches_fn: instead, `start position -> iterator of numpy
      batches` with a `.position` property (batches consumed, saved with
      each checkpoint) and, for the ex/s log, a `.batch_size`; e.g.
      `lambda p: array_batches.MixtureBatches(..., start_position=p)`. A
      `.settings` dict, if present, is checked on resume.
    target_length: with `train_batches_fn`, the most target tokens of a row
      (the decoder loss projects only those slots); None: all slots.
    allow_changed_settings: resume even if the data stream or trainable
      tree settings differ from the recorded ones
      (`checkpoints.check_resume_settings`).
    on_start: called once the run is set up (backbone loaded, state
      restored, settings checked), before the first step.

  Raises:
    ValueError: unless exactly one of `train_dataset_cfg` and
      `train_batches_fn` is given; on resume with other settings.
    NonFiniteLossError: the first step with a NaN/inf loss (checked at
      every log step and before every save, so no such state is saved).

  Returns:
    `{'step': final step, 'train': last train metrics, 'eval': last eval
    metrics or None, 'preempted': bool, 'trainable': the final trainable
    tree (on device)}`. A SIGTERM at any point of the loop (a step, an
    evaluation, a save) ends it with a checkpoint of the last finished
    step and `preempted` True.
  """
  _check_batch_source(train_dataset_cfg, train_batches_fn, target_length)
  if train_dataset_cfg is not None:
    target_length = train_dataset_cfg.task_feature_lengths["targets"]
  run = run_setup.build_run(
      backbone=backbone, method=method, mesh_cfg=mesh_cfg,
      target_length=target_length)
  print(counting.count_trainable(method, run.model.lm).line(method.name),
        flush=True)
  trainer = trainer_lib.Trainer(
      run.model, optimizer, run.mesh, run.rules,
      jax.tree.map(lambda x: x.sharding, run.frozen), num_microbatches)
  ckpt = checkpoints.TrainCheckpointer(model_dir, checkpoint_cfg)
  try:
    state, position = _restore_or_init(ckpt, trainer, seed)
    batches, batch_size = _open_batches(train_dataset_cfg, train_batches_fn,
                                        position)
    _check_divisible(batch_size, run.mesh)
    checkpoints.check_resume_settings(
        model_dir, _run_settings(train_dataset_cfg, batches, backbone,
                                 method, seed),
        resuming=ckpt.latest_step() is not None,
        allow_changes=allow_changed_settings)
  except BaseException:
    ckpt.close()
    raise
  if on_start is not None:
    on_start()
  return _loop(run, trainer, ckpt, state, batches, batch_size,
               model_dir=model_dir, total_steps=total_steps,
               eval_dataset_cfg=eval_dataset_cfg,
               log_every_steps=log_every_steps,
               eval_every_steps=eval_every_steps, seed=seed)


def _loop(run, trainer, ckpt, state, batches, batch_size, *, model_dir,
          total_steps, eval_dataset_cfg, log_every_steps, eval_every_steps,
          seed) -> dict[str, Any]:
  """The training loop of `train` (see there)."""
  step = saved_step = int(state.step)
  writer = metric_writers.MetricWriter(model_dir)
  progress = metric_writers.Progress(total_steps, batch_size, step)
  watcher = checkpoints.PreemptionWatcher()
  finite = _FiniteLossCheck()
  base_rng = jax.random.key(seed)
  result = {"train": None, "eval": None, "preempted": False}

  def save():
    nonlocal saved_step
    finite.check(step, state.trainable)
    ckpt.save(step, state, {"batches": batches.position},
              export=lambda path: run.method.save_artifact(state.trainable,
                                                           path),
              export_path=run.method.artifact_path(model_dir, step))
    saved_step = step

  try:
    while step < total_steps and not watcher.stop_requested:
      state, metrics = trainer.train_step(
          state, run.frozen, trainer.put_batch(next(batches)), base_rng)
      step += 1
      finite.add(step, metrics["loss"])
      must_save = ckpt.should_save(step) or step == total_steps
      if step % log_every_steps == 0 or must_save:
        finite.check(step, state.trainable)
        result["train"] = _fetch(metrics)
        writer.write(step, "train", result["train"])
        print(progress.line(step, result["train"]), flush=True)
      if must_save:
        save()
      if eval_dataset_cfg and eval_every_steps and (
          step % eval_every_steps == 0 or step == total_steps):
        from prompt_jax.evaluators import teacher_forced as evaluation  # pylint: disable=g-import-not-at-top
        result["eval"] = evaluation.teacher_forced(
            trainer, state.trainable, run.frozen, eval_dataset_cfg)
        writer.write(step, "eval", result["eval"])
        print(f"eval step {step}: {result['eval']}", flush=True)
    # A SIGTERM during a step, an evaluation or a save lands here.
    result["preempted"] = watcher.stop_requested and step < total_steps
    if result["preempted"] and saved_step != step:
      save()
  finally:
    watcher.restore_handlers()
    writer.close()
    ckpt.close()
  result["step"] = step
  result["trainable"] = state.trainable
  return result
