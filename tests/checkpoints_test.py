"""Orbax train-state checkpoints and method artifacts (`.npy`, `.npz`)."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax import checkpoints
from prompt_jax.methods import artifacts


def _state(seed: float):
  return {"params": {"prompt": jnp.full((3, 4), seed, jnp.float32)},
          "opt": {"mu": jnp.arange(12.0).reshape(3, 4) * seed},
          "step": jnp.asarray(int(seed), jnp.int32)}


def test_save_restore_keeps_last_k(tmp_path):
  ckpt = checkpoints.TrainCheckpointer(
      tmp_path, checkpoints.CheckpointConfig(save_every_steps=2, keep=2))
  for step in (2, 4, 6):
    ckpt.save(step, _state(step), {"examples_seen": step * 8},
              export=lambda path, v=step: artifacts.save_array(
                  path, np.full((3, 4), v, np.float32)),
              export_path=tmp_path / f"prompts/prompt_step_{step}.npy")
  assert ckpt.all_steps() == [4, 6]
  assert ckpt.latest_step() == 6
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          _state(0))
  state, position = ckpt.restore(abstract)
  jax.tree.map(np.testing.assert_array_equal, state, _state(6))
  assert position == {"examples_seen": 48}
  prompt = artifacts.load_array(tmp_path / "prompts/prompt_step_6.npy",
                                (3, 4))
  np.testing.assert_array_equal(prompt, 6.0)
  ckpt.close()


def test_should_save_schedule(tmp_path):
  ckpt = checkpoints.TrainCheckpointer(
      tmp_path, checkpoints.CheckpointConfig(save_every_steps=5))
  assert [s for s in range(12) if ckpt.should_save(s)] == [5, 10]


def test_restore_without_checkpoint_is_clear(tmp_path):
  ckpt = checkpoints.TrainCheckpointer(tmp_path, checkpoints.CheckpointConfig())
  with pytest.raises(FileNotFoundError, match="no checkpoint under"):
    ckpt.restore({})


def test_prompt_file_errors(tmp_path):
  path = artifacts.save_array(tmp_path / "p.npy", np.zeros((5, 8)))
  with pytest.raises(ValueError, match=r"p.npy: shape \(5, 8\) does "
                     r"not match the model's expected \(5, 16\)"):
    artifacts.load_array(path, (5, 16))
  with pytest.raises(FileNotFoundError, match="missing.npy does not exist"):
    artifacts.load_array(tmp_path / "missing.npy")
  (tmp_path / "bad.npy").write_bytes(b"not numpy")
  with pytest.raises(ValueError, match="bad.npy: not a valid .npy"):
    artifacts.load_array(tmp_path / "bad.npy")
  assert sorted(os.listdir(tmp_path)) == ["bad.npy", "p.npy"]  # no temp left


def test_sigterm_sets_flag():
  watcher = checkpoints.PreemptionWatcher()
  try:
    assert not watcher.stop_requested
    os.kill(os.getpid(), signal.SIGTERM)
    assert watcher.stop_requested
  finally:
    watcher.restore_handlers()


def test_tree_artifact_round_trip_and_errors(tmp_path):
  tree = {"lora": {"a": np.arange(6.0).reshape(2, 3), "b": np.ones((3,))}}
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, np.float32), tree)
  path = artifacts.save_tree(tmp_path / "t.npz", tree)
  loaded = artifacts.load_tree(path, abstract)
  jax.tree.map(np.testing.assert_array_equal, loaded, tree)
  assert loaded["lora"]["a"].dtype == np.float32
  wrong = {"lora": {"a": jax.ShapeDtypeStruct((3, 2), np.float32),
                    "b": abstract["lora"]["b"]}}
  with pytest.raises(ValueError, match=r"t.npz: lora/a has shape \(2, 3\)"):
    artifacts.load_tree(path, wrong)
  with pytest.raises(ValueError, match=r"missing \['lora/c'\]"):
    artifacts.load_tree(path, {"lora": {**abstract["lora"],
                                        "c": abstract["lora"]["b"]}})
  assert sorted(os.listdir(tmp_path)) == ["t.npz"]  # no temp left
