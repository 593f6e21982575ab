"""Full fine-tuning (`methods.FullFinetune`): every weight trains, no prompt.

The trainable tree is the backbone itself, sharded by its logical axes; the
loss equals the bare backbone's; optimizer steps move the weights and fit a
toy task.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_jax import models
from prompt_jax import partitioning
from prompt_jax import testing
from prompt_jax import trainer as trainer_lib
from prompt_jax.backbones.llama import network
from prompt_jax.methods import base as method_base
from prompt_jax.methods import full_finetune
from prompt_jax.testing import llama as decoder_testing

CFG = decoder_testing.tiny_decoder_config(num_layers=2)
_SAMPLE = (jax.ShapeDtypeStruct((1, 1), jnp.int32),)


def _batch(n=16, length=10, seed=0):
  """Prefix-LM rows whose single target (10/11) is the parity of x_0."""
  rng = np.random.RandomState(seed)
  tokens = np.zeros((n, length), np.int32)
  weights = np.zeros((n, length), np.int32)
  for i in range(n):
    x = list(rng.randint(3, CFG.vocab_size, rng.randint(3, 8)))
    tokens[i, :len(x) + 1] = x + [10 + x[0] % 2]
    weights[i, len(x)] = 1
  return {"decoder_target_tokens": tokens, "decoder_loss_weights": weights}


def _decoder_setup(mesh_shape=(2, 4)):
  mesh = partitioning.make_mesh(*mesh_shape)
  rules = partitioning.standard_logical_axis_rules("model")
  params = partitioning.init_params(network.DecoderLM(CFG), jax.random.key(0),
                                    mesh, rules, _SAMPLE)
  lm = models.DecoderOnlyLM(CFG, target_length=1)
  model = method_base.TunedModel(lm, full_finetune.FullFinetune(), params)
  trainer = trainer_lib.Trainer(model, optax.adamw(3e-3), mesh, rules, {})
  return model, trainer, params


def test_trainable_tree_is_the_backbone_with_its_shardings():
  model, trainer, params = _decoder_setup()
  want = partitioning.shardings_of(params)
  got = trainer.state_shardings.trainable["backbone"]
  flat_want = flax.traverse_util.flatten_dict(want, sep="/")
  flat_got = flax.traverse_util.flatten_dict(got, sep="/")
  assert set(flat_got) == set(flat_want)
  for key, sharding in flat_want.items():
    assert flat_got[key].spec == sharding.spec, key
  # The MLP kernels really are split over 'model' (not all replicated).
  assert "model" in str(flat_got["layers_0/mlp/wi_0/kernel"].spec)
  # So are Adam's moments of them (not replicated on every device).
  moments = [sh for path, sh in jax.tree_util.tree_flatten_with_path(
      trainer.state_shardings.opt_state)[0]
             if "layers_0']['mlp']['wi_0" in jax.tree_util.keystr(path)]
  assert len(moments) == 2, moments
  for sharding in moments:
    assert sharding.spec == flat_want["layers_0/mlp/wi_0/kernel"].spec
  before = jax.tree.map(np.array, params)
  state = trainer.init_state(jax.random.key(1))
  jax.tree.map(np.testing.assert_array_equal, before,
               jax.tree.map(np.array, state.trainable["backbone"]))
  with pytest.raises(ValueError, match="already handed"):
    model.init_trainable(jax.random.key(0))


def test_loss_equals_the_bare_backbone_and_training_moves_every_weight():
  model, trainer, params = _decoder_setup()
  batch = _batch()
  want, _ = model.lm.loss_fn(params, batch)
  got, _ = model.loss_fn({"backbone": params}, {}, batch)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
  before = jax.tree.map(np.array, params)
  state = trainer.init_state(jax.random.key(1))
  device_batch = trainer.put_batch(batch)
  losses = []
  for _ in range(40):
    state, metrics = trainer.train_step(state, {}, device_batch,
                                        jax.random.key(2))
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.2 * losses[0], losses[::8]
  after = flax.traverse_util.flatten_dict(
      jax.tree.map(np.array, state.trainable["backbone"]), sep="/")
  for key, value in flax.traverse_util.flatten_dict(before, sep="/").items():
    assert not np.array_equal(value, after[key]), f"{key} did not move"


def test_t5_full_finetune_loss_equals_bare_t5():
  cfg = testing.tiny_t5_config()
  mesh = partitioning.make_mesh(8, 1)
  rules = partitioning.standard_logical_axis_rules("model")
  lm = models.EncoderDecoderLM(cfg, models.LossConfig(z_loss=0.0))
  params = partitioning.init_params(lm.module, jax.random.key(0), mesh,
                                    rules)
  model = method_base.TunedModel(lm, full_finetune.FullFinetune(), params)
  rng = np.random.RandomState(0)
  enc = rng.randint(2, cfg.vocab_size, (8, 7)).astype(np.int32)
  tgt = rng.randint(2, cfg.vocab_size, (8, 3)).astype(np.int32)
  batch = {"encoder_input_tokens": enc, "decoder_target_tokens": tgt,
           "decoder_input_tokens": np.concatenate(
               [np.zeros((8, 1), np.int32), tgt[:, :-1]], 1),
           "decoder_loss_weights": np.ones_like(tgt)}
  logits = lm.module.apply({"params": params}, enc,
                              batch["decoder_input_tokens"])
  log_p = jax.nn.log_softmax(logits)
  want = -jnp.take_along_axis(log_p, tgt[..., None], -1).sum()
  _, metrics = model.loss_fn({"backbone": params}, {}, batch)
  np.testing.assert_allclose(float(metrics["loss_sum"]), float(want),
                             rtol=1e-5)


def test_full_finetune_has_no_artifact_file(tmp_path):
  method = full_finetune.FullFinetune()
  assert method.artifact_path(tmp_path, 3) is None
  with pytest.raises(ValueError, match="full_finetune exports no artifact"):
    method.latest_artifact(tmp_path)
