"""Prompt-tuning invariants of the train step on a frozen tiny T5."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax import model as model_lib
from prompt_jax import optim
from prompt_jax import partitioning
from prompt_jax import testing
from prompt_jax import trainer as trainer_lib
from prompt_jax.t5 import network

CFG = testing.tiny_t5_config(emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64)
P = 20


def _toy_batch(n: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
  """n examples, 2 labels: the label (id 10 or 11) depends on token 3's id."""
  rng = np.random.RandomState(seed)
  enc = testing.padded_batch(rng, n, 8, CFG.vocab_size,
                             lengths=list(rng.randint(4, 9, n)))
  label = np.where(enc[:, 0] % 2 == 0, 10, 11).astype(np.int32)
  targets = np.stack([label, np.ones(n, np.int32)], 1)  # label, EOS
  inputs = np.concatenate([np.zeros((n, 1), np.int32), targets[:, :-1]], 1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": inputs,
          "decoder_target_tokens": targets,
          "decoder_loss_weights": np.ones_like(targets)}


def _setup(mesh_shape=(2, 4), lr=0.3, microbatches=1):
  mesh = partitioning.make_mesh(*mesh_shape)
  rules = partitioning.standard_logical_axis_rules("model")
  frozen = partitioning.init_params(network.T5Transformer(CFG),
                                    jax.random.key(0), mesh, rules)
  model = model_lib.PromptT5Model(CFG, P)
  opt = optim.make_optimizer(name="adafactor", learning_rate=lr,
                             weight_decay=1e-5)
  trainer = trainer_lib.Trainer(model, opt, mesh, rules,
                                partitioning.shardings_of(frozen),
                                num_microbatches=microbatches)
  return trainer, frozen


def test_only_the_prompt_changes_bit_for_bit():
  trainer, frozen = _setup()
  frozen_before = jax.tree.map(np.array, frozen)
  state = trainer.init_state(jax.random.key(1))
  prompt_before = np.array(trainer.model.prompt_of(state.trainable))
  batch = trainer.put_batch(_toy_batch())
  for _ in range(3):
    state, metrics = trainer.train_step(state, frozen, batch,
                                        jax.random.key(2))
  assert int(state.step) == 3
  assert np.isfinite(float(metrics["loss"]))
  jax.tree.map(np.testing.assert_array_equal, frozen_before,
               jax.tree.map(np.array, frozen))
  prompt = np.array(trainer.model.prompt_of(state.trainable))
  assert (prompt != prompt_before).mean() > 0.9


def test_gradients_and_optimizer_state_hold_only_trainable_leaves():
  trainer, frozen = _setup()
  state = trainer.init_state(jax.random.key(1))
  grads, _ = trainer_lib.loss_and_grads(
      trainer.model, state.trainable, frozen, _toy_batch(), jax.random.key(0))
  assert (jax.tree.structure(grads) ==
          jax.tree.structure(state.trainable))
  flat = flax.traverse_util.flatten_dict(grads, sep="/")
  assert list(flat) == ["prompt/prompt"]
  assert flat["prompt/prompt"].shape == (P, CFG.emb_dim)
  optim.assert_no_large_leaves(state.opt_state, P * CFG.emb_dim)
  smallest_backbone = min(x.size for x in jax.tree.leaves(frozen))
  assert all(x.size < max(smallest_backbone, P * CFG.emb_dim + 1)
             for x in jax.tree.leaves(state.opt_state))


def test_state_and_batch_shardings():
  trainer, frozen = _setup((2, 4))
  state = trainer.init_state(jax.random.key(1))
  state, metrics = trainer.train_step(state, frozen,
                                      trainer.put_batch(_toy_batch()),
                                      jax.random.key(2))
  prompt = trainer.model.prompt_of(state.trainable)
  assert prompt.sharding.is_fully_replicated
  batch = trainer.put_batch(_toy_batch())
  assert batch["encoder_input_tokens"].sharding.spec == jax.sharding.PartitionSpec(
      partitioning.DATA)
  assert batch["encoder_input_tokens"].addressable_shards[0].data.shape[0] == 8
  wi = frozen["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  assert wi.addressable_shards[0].data.shape == (CFG.emb_dim, 64 // 4)
  assert metrics["loss"].sharding.is_fully_replicated


def test_microbatches_give_the_same_update():
  results = []
  for m in (1, 4):
    trainer, frozen = _setup((8, 1), microbatches=m)
    state = trainer.init_state(jax.random.key(1))
    state, metrics = trainer.train_step(
        state, frozen, trainer.put_batch(_toy_batch()), jax.random.key(2))
    results.append((np.array(trainer.model.prompt_of(state.trainable)),
                    float(metrics["loss"])))
  np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-5)
  assert results[0][1] == pytest.approx(results[1][1], rel=1e-5)


def test_prompt_fits_small_task_on_frozen_random_t5():
  trainer, frozen = _setup((8, 1))
  state = trainer.init_state(jax.random.key(1))
  batch = trainer.put_batch(_toy_batch())
  losses = []
  for _ in range(80):
    state, metrics = trainer.train_step(state, frozen, batch,
                                        jax.random.key(2))
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0], losses[::10]
  sums = trainer.eval_step(state.trainable, frozen, batch)
  accuracy = float(sums["correct"] / sums["tokens"])
  print(f"toy task: loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
        f"token accuracy {accuracy:.3f}")
  assert accuracy > 0.75
