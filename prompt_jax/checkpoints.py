"""Orbax checkpoints of the trainable state; the method exports its artifact.

Only what training changes is saved: the trainable params (the method's),
the optimizer state, the step and the data position, so a checkpoint of an
XXL run is a few megabytes. The frozen backbone always comes from its initial
checkpoint and is never re-saved.

Writes are atomic: Orbax finalises a step directory by renaming a temporary
one; method artifacts (`methods.artifacts`) go through a temporary file and
`os.replace`.
A SIGTERM (preemption on TPU VMs) sets a flag that the trainer polls to make
one last save before exiting (`PreemptionWatcher`).
"""

import dataclasses
import json
import logging
import os
import pathlib
import signal
from typing import Any, Callable

import orbax.checkpoint as ocp

from prompt_jax.data import jsonl as jsonl_io
from prompt_jax.types import PyTree

_LOG = logging.getLogger(__name__)
SETTINGS_FILE = "train_settings.json"


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """When and how many checkpoints to keep.

  Attributes:
    save_every_steps: save when `step % save_every_steps == 0`.
    keep: number of most recent checkpoints kept on disk.
    export_artifacts: also write the method's small artifact at each save
      (prompt tuning: `prompts/prompt_step_<N>.npy`).
  """
  save_every_steps: int = 1000
  keep: int = 3
  export_artifacts: bool = True


class TrainCheckpointer:
  """Saves and restores `{state, data_position}` under `model_dir/checkpoints`.

  Args:
    model_dir: the run directory.
    cfg: the save schedule.
  """

  def __init__(self, model_dir: str | os.PathLike, cfg: CheckpointConfig):
    self.model_dir = pathlib.Path(model_dir)
    self.cfg = cfg
    options = ocp.CheckpointManagerOptions(
        max_to_keep=cfg.keep, create=False,  # Made by the first save.
        enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(
        (self.model_dir / "checkpoints").absolute(), options=options)

  def should_save(self, step: int) -> bool:
    return step > 0 and step % self.cfg.save_every_steps == 0

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: PyTree, data_position: dict[str, Any],
           export: Callable[[pathlib.Path], Any] | None = None,
           export_path: pathlib.Path | None = None) -> None:
    """Saves `state` (trainable tree only) and the data position at `step`;
    then `export(export_path)` writes the method's artifact (if both are
    given and the config exports artifacts)."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data_position=ocp.args.JsonSave(data_position))
    self._manager.save(step, args=args, force=True)
    self._manager.wait_until_finished()
    if export is not None and export_path is not None and (
        self.cfg.export_artifacts):
      export(export_path)

  def restore(self, abstract_state: PyTree, step: int | None = None
              ) -> tuple[PyTree, dict[str, Any]]:
    """Restores `(state, data_position)`; `abstract_state` fixes shapes,
    dtypes and shardings (a tree of `jax.ShapeDtypeStruct`)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(
          f"no checkpoint under {self.model_dir / 'checkpoints'}")
    args = ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data_position=ocp.args.JsonRestore())
    restored = self._manager.restore(step, args=args)
    return restored.state, dict(restored.data_position)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for key, value in tree.items():
    out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
  return out


def settings_differences(saved: dict[str, Any], current: dict[str, Any]
                         ) -> list[str]:
  """`['batch_size 32 -> 8', ...]` for every leaf that differs."""
  old, new = _flatten(saved), _flatten(current)
  return [f"{key} {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}"
          for key in sorted(old.keys() | new.keys())
          if old.get(key) != new.get(key)]


def check_resume_settings(model_dir: str | os.PathLike,
                          settings: dict[str, Any], resuming: bool,
                          allow_changes: bool = False) -> None:
  """Records the settings that define a run's data stream and trainable
  tree in `model_dir/train_settings.json`; on resume, refuses other ones.

  A resumed run replays `position` batches of its stream; with another
  batch size, task, seed or feature lengths that is a different stream,
  so the run would silently mix two. `settings` must be JSON-serialisable
  (lists, not tuples, so a round trip compares equal).

  Raises:
    ValueError: one line listing the differences, unless `allow_changes`
      (then they are logged as a WARNING and the new settings recorded).
  """
  path = pathlib.Path(model_dir) / SETTINGS_FILE
  current = json.loads(json.dumps(settings))
  if resuming and path.exists():
    try:
      saved = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None
    diffs = settings_differences(saved, current)
    if diffs and not allow_changes:
      raise ValueError(
          f"{model_dir} was trained with other settings; resuming would "
          f"replay a different data stream: {'; '.join(diffs)} (use a new "
          "MODEL_DIR, or ALLOW_CHANGED_SETTINGS = True to resume anyway)")
    if diffs:
      _LOG.warning("resuming %s with changed settings: %s", model_dir,
                   "; ".join(diffs))
  elif resuming:
    _LOG.warning("%s has checkpoints but no %s: resuming without checking "
                 "the settings", model_dir, SETTINGS_FILE)
  jsonl_io.write_text_atomic(path, json.dumps(current, indent=1,
                                              sort_keys=True) + "\n")


class PreemptionWatcher:
  """Turns SIGTERM into a flag the training loop polls (`stop_requested`)."""

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
    self.stop_requested = False
    self._previous = {}
    for sig in signals:
      self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    self.stop_requested = True

  def restore_handlers(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
