"""`train.train(train_batches_fn=...)`: training without seqio/TensorFlow.

  pytest tests/train_array_batches_test.py -q

A random tiny decoder (preset 'tiny', P=4) trains on `MixtureBatches` of two
toy tasks, batch 8 on the 8 fake CPU devices: the loss is finite, only the
prompt moves, a run stopped after 2 steps and resumed ends bit-for-bit where
an uninterrupted 4-step run does, and `prompt_jax.train` imports with seqio
and TensorFlow unavailable.
"""

import contextlib
import io
import os
import pathlib
import subprocess
import sys
import types

import jax
import numpy as np
import optax
import pytest

from prompt_jax import checkpoints
from prompt_jax import setup as run_setup
from prompt_jax import testing
from prompt_jax import train as train_lib
from prompt_jax.data.array_batches import MixtureBatches
from prompt_jax.methods.prompt_tuning import specs
from prompt_jax.methods import prompt_tuning

_REPO = pathlib.Path(__file__).resolve().parents[1]
_RNG = np.random.RandomState(0)
TASKS = {  # Target: 10 + parity of the first input id (then EOS 2).
    "parity": [([int(x) for x in ids], [10 + int(ids[0]) % 2, 2])
               for ids in (_RNG.randint(3, 128, _RNG.randint(2, 9))
                           for _ in range(40))],
    "copy": [([int(x) for x in ids], [int(ids[0])])
             for ids in (_RNG.randint(3, 128, _RNG.randint(2, 9))
                         for _ in range(20))],
}


def _train(model_dir, steps: int, positions: list[int] | None = None,
           **overrides) -> dict:
  """Trains the tiny decoder on `TASKS`; records each start position."""
  def batches_fn(position):
    if positions is not None:
      positions.append(position)
    return MixtureBatches(TASKS, batch_size=8, max_length=12, seed=5,
                          start_position=position)
  kwargs = dict(
      model_dir=str(model_dir),
      backbone=run_setup.BackboneConfig(preset="tiny", kind="decoder",
                                        random_weights=True),
      method=prompt_tuning.PromptTuning(length=4, init=specs.random_uniform()),
      optimizer=optax.adam(0.05), total_steps=steps,
      train_batches_fn=batches_fn, target_length=2,
      checkpoint_cfg=checkpoints.CheckpointConfig(save_every_steps=1,
                                                  keep=2),
      log_every_steps=1, seed=3)
  kwargs.update(overrides)
  return train_lib.train(**kwargs)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """A 4-step run and the `run_setup.Run` it built."""
  built = []
  build_run = run_setup.build_run

  def spy(**kwargs):
    run = build_run(**kwargs)
    built.append(run)
    return run

  mp = pytest.MonkeyPatch()
  mp.setattr(train_lib.run_setup, "build_run", spy)
  model_dir = tmp_path_factory.mktemp("uninterrupted")
  out = io.StringIO()
  try:
    positions = []
    with contextlib.redirect_stdout(out):
      result = _train(model_dir, 4, positions)
  finally:
    mp.undo()
  run, = built
  return types.SimpleNamespace(result=result, run=run, positions=positions,
                               model_dir=model_dir, stdout=out.getvalue())


def test_the_run_prints_its_trainable_count_first(uninterrupted):
  first = uninterrupted.stdout.splitlines()[0]
  p_h = 4 * uninterrupted.run.config.emb_dim
  assert first.startswith(f"prompt_tuning: trainable params: {p_h:,} || "
                          "all params: "), first


def _prompt(trainable) -> np.ndarray:
  """The [P, H] prompt of a trainable tree, on the host."""
  return np.asarray(jax.device_get(trainable["prompt"]["prompt"]))


def test_loss_is_finite_and_only_the_prompt_moves(uninterrupted, tmp_path):
  result, run = uninterrupted.result, uninterrupted.run
  assert result["step"] == 4 and not result["preempted"]
  assert uninterrupted.positions == [0]
  rows = testing.metric_rows(uninterrupted.model_dir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
  assert jax.tree_util.tree_structure(result["trainable"]) == (
      jax.tree_util.tree_structure({"prompt": {"prompt": 0}}))
  initial = _train(tmp_path / "zero_steps", 0)["trainable"]
  assert _prompt(initial).shape == (4, run.config.emb_dim)
  assert np.abs(_prompt(result["trainable"]) - _prompt(initial)).max() > 1e-3


def test_two_steps_then_resume_equals_four_uninterrupted(uninterrupted,
                                                         tmp_path):
  positions = []
  first = _train(tmp_path, 2, positions)
  assert first["step"] == 2
  second = _train(tmp_path, 4, positions)
  assert second["step"] == 4
  assert positions == [0, 2]  # The resumed run asked for batch 2 on.
  np.testing.assert_array_equal(_prompt(second["trainable"]),
                                _prompt(uninterrupted.result["trainable"]))
  assert not np.array_equal(_prompt(first["trainable"]),
                            _prompt(second["trainable"]))


def test_trainable_is_replicated_over_the_8_device_mesh(uninterrupted):
  leaves = jax.tree.leaves(uninterrupted.result["trainable"])
  assert len(leaves) == 1  # The prompt only.
  for leaf in leaves:
    assert len(leaf.sharding.device_set) == 8
    assert leaf.sharding.is_fully_replicated
    assert dict(leaf.sharding.mesh.shape) == {"data": 8, "model": 1}


def test_exactly_one_batch_source(tmp_path):
  fake_cfg = types.SimpleNamespace(task_feature_lengths={"targets": 2},
                                   batch_size=8)
  with pytest.raises(ValueError, match=r"exactly one of .*\(got both\)"):
    _train(tmp_path, 1, train_dataset_cfg=fake_cfg)
  with pytest.raises(ValueError, match=r"exactly one of .*\(got neither\)"):
    _train(tmp_path, 1, train_batches_fn=None)
  with pytest.raises(ValueError, match="target_length goes with "
                     "train_batches_fn only"):
    _train(tmp_path, 1, train_batches_fn=None, train_dataset_cfg=fake_cfg)
  assert not (tmp_path / "checkpoints").exists()  # Raised before any work.


def test_batches_fn_must_start_at_the_given_position(tmp_path):
  ahead = lambda p: MixtureBatches(TASKS, batch_size=8, max_length=12,
                                   start_position=p + 1)
  with pytest.raises(ValueError, match=r"train_batches_fn\(0\) returned an "
                     "iterator whose .position is 1, not 0"):
    _train(tmp_path, 2, train_batches_fn=ahead)
  no_position = lambda p: iter([])
  with pytest.raises(ValueError, match="whose .position is missing"):
    _train(tmp_path, 2, train_batches_fn=no_position)


def test_train_imports_without_seqio_and_tensorflow():
  code = ("import sys; sys.modules['seqio'] = None; "
          "sys.modules['tensorflow'] = None; "
          "import prompt_jax.train, prompt_jax.data.array_batches; "
          "assert 'prompt_jax.data.seqio_batches' not in sys.modules; "
          "assert 'prompt_jax.evaluators.teacher_forced' not in sys.modules; print('ok')")
  env = dict(os.environ, PYTHONPATH=str(_REPO), JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-c", code], cwd=_REPO, env=env,
                        capture_output=True, text=True, timeout=120,
                        check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == "ok"
