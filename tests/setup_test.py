"""Backbone loading for runs: the checkpoint's weights, sharded, strictly."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_jax import checkpoints
from prompt_jax.data import seqio_batches as data_lib
from prompt_jax import setup as run_setup
from prompt_jax import testing
from prompt_jax import train as train_lib
from prompt_jax import trainer as trainer_lib
from prompt_jax.methods.prompt_tuning import specs
from prompt_jax.backbones.t5 import loading
from prompt_jax.backbones.t5 import network
from prompt_jax.methods import prompt_tuning


def _hf_dir(tmp_path, **overrides):
  cfg = testing.tiny_t5_config(vocab_size=32128, emb_dim=32, num_heads=4,
                               head_dim=8, mlp_dim=64, **overrides)
  tokens = np.ones((1, 2), np.int32)
  params = flax.core.meta.unbox(network.T5Transformer(cfg).init(
      jax.random.key(7), tokens, tokens)["params"])
  path = tmp_path / "backbone"
  loading.save_hf_dir(path, cfg, params)
  return str(path), cfg, params


def test_backbone_equals_the_checkpoint_and_is_sharded(tmp_path):
  path, cfg, params = _hf_dir(tmp_path)
  run = run_setup.build_run(
      backbone=run_setup.BackboneConfig(path=path),
      method=prompt_tuning.PromptTuning(length=4, init=specs.sampled_vocab()),
      mesh_cfg=run_setup.MeshConfig(data=2, model=4))
  assert run.config == cfg
  jax.tree.map(np.testing.assert_array_equal, params,
               jax.tree.map(np.asarray, run.frozen))
  wi = run.frozen["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  assert wi.addressable_shards[0].data.shape == (32, 64 // 4)
  # The sampled-vocab prompt rows are rows of the loaded embedding table.
  prompt = np.asarray(run.model.init_trainable(jax.random.key(0))
                      ["prompt"]["prompt"])
  table = params["token_embedder"]["embedding"][:5000]
  assert all((np.abs(table - row).sum(-1) == 0).any() for row in prompt)


def test_checkpoint_of_another_size_is_one_line(tmp_path):
  path, _, _ = _hf_dir(tmp_path)
  with pytest.raises(ValueError, match=r"is not a t5_1_1_small checkpoint: "
                     r"emb_dim 32 != 512"):
    run_setup.build_run(
        backbone=run_setup.BackboneConfig(path=path, preset="t5_1_1_small"),
        method=prompt_tuning.PromptTuning(length=4))


def test_missing_backbone_dir_is_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope"):
    run_setup.build_run(
        backbone=run_setup.BackboneConfig(path=str(tmp_path / "nope")),
        method=prompt_tuning.PromptTuning(length=4))


def test_nan_stops_with_step_and_saves_nothing_corrupt(tmp_path):
  import tasks  # pylint: disable=g-import-not-at-top,unused-import
  cfg = data_lib.DatasetConfig("sst2_v100", {"inputs": 16, "targets": 4},
                               "train", batch_size=8)
  with pytest.raises(train_lib.NonFiniteLossError, match="at step 1;"):
    train_lib.train(
        model_dir=str(tmp_path / "run"),
        backbone=run_setup.BackboneConfig(
            preset="t5_1_1_tiny", random_weights=True,
            overrides={"vocab_size": 32128}),
        method=prompt_tuning.PromptTuning(length=4, init=specs.random_uniform()),
        train_dataset_cfg=cfg, optimizer=optax.scale(float("nan")),
        total_steps=5,
        checkpoint_cfg=checkpoints.CheckpointConfig(save_every_steps=1),
        log_every_steps=1)
  ckpt = checkpoints.TrainCheckpointer(tmp_path / "run",
                                       checkpoints.CheckpointConfig())
  assert ckpt.latest_step() is None
  assert not (tmp_path / "run" / "prompts").exists()


def test_nan_loss_with_a_finite_prompt_names_its_step(tmp_path, monkeypatch):
  """The loss turns NaN at step 3 while gradients and the prompt stay
  finite; the run stops naming step 3 (not the step that noticed it) and
  keeps the checkpoint of step 2."""
  import tasks  # pylint: disable=g-import-not-at-top,unused-import
  original = trainer_lib.train_step

  def nan_from_step_3(state, *args, **kwargs):
    new_state, metrics = original(state, *args, **kwargs)
    nan = jnp.where(state.step >= 2, jnp.nan, 0.0)  # state.step 2 = step 3.
    return new_state, dict(metrics, loss=metrics["loss"] + nan)

  monkeypatch.setattr(trainer_lib, "train_step", nan_from_step_3)
  cfg = data_lib.DatasetConfig("sst2_v100", {"inputs": 16, "targets": 4},
                               "train", batch_size=8)
  with pytest.raises(train_lib.NonFiniteLossError,
                     match="^non-finite loss at step 3;"):
    train_lib.train(
        model_dir=str(tmp_path), backbone=run_setup.BackboneConfig(
            random_weights=True, preset="t5_1_1_tiny",
            overrides={"vocab_size": 32128}),
        method=prompt_tuning.PromptTuning(length=4, init=specs.random_uniform()),
        train_dataset_cfg=cfg, optimizer=optax.sgd(0.1), total_steps=10,
        checkpoint_cfg=checkpoints.CheckpointConfig(save_every_steps=2),
        log_every_steps=10)
  ckpt = checkpoints.TrainCheckpointer(tmp_path,
                                       checkpoints.CheckpointConfig())
  assert ckpt.all_steps() == [2]
  ckpt.close()
  prompt = np.load(tmp_path / "prompts" / "prompt_step_2.npy")
  assert np.isfinite(prompt).all()
