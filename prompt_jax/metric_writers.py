"""Where metrics go: a JSONL log, TensorBoard, and a console progress line.

All writing happens on the host with fetched Python floats; nothing here is
traced. TensorBoard events are written with `tensorboardX` (no TensorFlow needed);
where it is not installed only JSONL and console output are written, and
this is said once.
"""

import json
import logging
import pathlib
import time
from typing import Mapping

_LOG = logging.getLogger(__name__)


class MetricWriter:
  """Appends `{step, split, metrics...}` rows to `<model_dir>/metrics.jsonl`
  and writes TensorBoard scalars under `<model_dir>/tb/<split>`."""

  def __init__(self, model_dir: str | pathlib.Path,
               tensorboard: bool = True):
    self.model_dir = pathlib.Path(model_dir)
    self.model_dir.mkdir(parents=True, exist_ok=True)
    self.jsonl_path = self.model_dir / "metrics.jsonl"
    self._tb = {}
    self._writer_cls = None
    if tensorboard:
      try:
        import tensorboardX  # pylint: disable=g-import-not-at-top
        self._writer_cls = tensorboardX.SummaryWriter
      except ImportError:
        _LOG.warning("tensorboardX not installed: no TensorBoard events, "
                     "metrics go to %s only", self.jsonl_path)

  def write(self, step: int, split: str, metrics: Mapping[str, float]
            ) -> None:
    row = {"step": int(step), "split": split}
    row.update({k: float(v) for k, v in metrics.items()})
    with open(self.jsonl_path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")
    if self._writer_cls is not None:
      writer = self._tb.get(split)
      if writer is None:
        writer = self._writer_cls(str(self.model_dir / "tb" / split))
        self._tb[split] = writer
      for key, value in metrics.items():
        writer.add_scalar(key, float(value), int(step))
      writer.flush()

  def close(self) -> None:
    for writer in self._tb.values():
      writer.close()


class Progress:
  """Console line with step, loss, examples/s and ETA."""

  def __init__(self, total_steps: int, batch_size: int, start_step: int = 0):
    self.total_steps = total_steps
    self.batch_size = batch_size
    self._last_step = start_step
    self._last_time = time.perf_counter()

  def line(self, step: int, metrics: Mapping[str, float]) -> str:
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    seconds = max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    rate = steps * self.batch_size / seconds
    eta = (self.total_steps - step) * seconds / steps
    parts = [f"step {step}/{self.total_steps}"]
    parts += [f"{k} {float(v):.4f}" for k, v in metrics.items()]
    parts += [f"{rate:.1f} ex/s", f"ETA {eta:.0f}s"]
    return " | ".join(parts)
