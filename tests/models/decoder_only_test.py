"""PromptDecoderModel: layouts, masks, scoring, and the Trainer invariants."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_jax import optim
from prompt_jax import partitioning
from prompt_jax import testing
from prompt_jax import trainer as trainer_lib
from prompt_jax.backbones.llama import network
from prompt_jax.testing import llama as decoder_testing
from prompt_jax.methods.prompt_tuning import method as prompt_tuning_lib
from prompt_jax.backbones import seams as seams_lib
from prompt_jax import models

CFG = decoder_testing.tiny_decoder_config(num_layers=2)
P = 6
_SAMPLE = (jax.ShapeDtypeStruct((1, 1), jnp.int32),)


def _examples(n: int, seed: int = 0):
  """(inputs, targets) id lists: the label (10/11) is the parity of x_0."""
  rng = np.random.RandomState(seed)
  out = []
  for _ in range(n):
    x = list(rng.randint(3, CFG.vocab_size, rng.randint(3, 8)))
    label = 10 if x[0] % 2 == 0 else 11
    out.append((x, [label, CFG.eos_id]))
  return out


def _prefix_lm_batch(examples, length: int = 12) -> dict[str, np.ndarray]:
  """The layout of seqio's PrefixLMFeatureConverter (loss on targets)."""
  n = len(examples)
  tokens = np.zeros((n, length), np.int32)
  weights = np.zeros((n, length), np.int32)
  for i, (x, y) in enumerate(examples):
    tokens[i, :len(x) + len(y)] = x + y
    weights[i, len(x):len(x) + len(y)] = 1
  inputs = np.concatenate([np.zeros((n, 1), np.int32), tokens[:, :-1]], 1)
  return {"decoder_target_tokens": tokens, "decoder_input_tokens": inputs,
          "decoder_loss_weights": weights,
          "decoder_causal_attention": np.zeros_like(tokens)}


def _padded(rows, length):
  out = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def _frozen():
  return decoder_testing.random_params(CFG, seed=0)


@pytest.mark.parametrize("position", ["prefix", "after_bos"])
def test_loss_equals_minus_summed_scores(position):
  model = prompt_tuning_lib.decoder_model(
      CFG, P, position=position,
      loss_cfg=models.LossConfig(z_loss=0.0, normalize_by_tokens=False))
  trainable = model.init_trainable(jax.random.key(1))
  examples = _examples(4)
  _, metrics = jax.jit(model.loss_fn)(trainable, _frozen(),
                                      _prefix_lm_batch(examples))
  scores, token_scores = jax.jit(model.score_batch)(
      trainable, _frozen(), _padded([x for x, _ in examples], 9),
      _padded([y for _, y in examples], 3))
  assert token_scores.shape == (4, 3)
  np.testing.assert_allclose(float(metrics["loss_sum"]),
                             -float(jnp.sum(scores)), rtol=1e-5)
  assert float(metrics["tokens"]) == 8


def test_padding_and_prompt_placement():
  model = prompt_tuning_lib.decoder_model(CFG, P)
  trainable = model.init_trainable(jax.random.key(1))
  examples = _examples(3, seed=1)
  score = jax.jit(model.score_batch)
  inputs = [x for x, _ in examples]
  targets = _padded([y for _, y in examples], 2)
  a, _ = score(trainable, _frozen(), _padded(inputs, 8), targets)
  b, _ = score(trainable, _frozen(), _padded(inputs, 13), targets)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # Prefix prompt == the prompt's rows fed as the first embeddings by hand.
  x, y = examples[0]
  seq = jnp.asarray([x + y])
  prompt = model.method.prompt_of(trainable)
  hand = seams_lib.Seams(
      decoder_embed_fn=lambda e, m: (
          jnp.concatenate([prompt[None], e], 1),
          jnp.concatenate([jnp.ones((1, P), m.dtype), m], 1)))
  logits = network.DecoderLM(CFG).apply({"params": _frozen()}, seq,
                                        seams=hand)
  logp = jax.nn.log_softmax(logits[0, P + len(x) - 1:P + len(x) + 1])
  expected = float(logp[0, y[0]] + logp[1, y[1]])
  np.testing.assert_allclose(float(a[0]), expected, rtol=1e-5)


def test_after_bos_puts_bos_first():
  model = prompt_tuning_lib.decoder_model(CFG, P, position="after_bos")
  trainable = model.init_trainable(jax.random.key(1))
  x, y = _examples(1, seed=2)[0]
  got, _ = model.score_batch(trainable, _frozen(), jnp.asarray([x]),
                             jnp.asarray([y]))
  prompt = model.method.prompt_of(trainable)
  hand = seams_lib.Seams(
      decoder_embed_fn=lambda e, m: (
          jnp.concatenate([e[:, :1], prompt[None], e[:, 1:]], 1),
          jnp.ones((1, e.shape[1] + P), m.dtype)))
  seq = jnp.asarray([[CFG.bos_id] + x + y])
  logits = network.DecoderLM(CFG).apply({"params": _frozen()}, seq,
                                        seams=hand)
  logp = jax.nn.log_softmax(logits[0, P + len(x):P + len(x) + 2])
  np.testing.assert_allclose(float(got[0]),
                             float(logp[0, y[0]] + logp[1, y[1]]), rtol=1e-5)


def test_bad_position_is_one_line():
  with pytest.raises(ValueError, match="suffix"):
    prompt_tuning_lib.decoder_model(CFG, P, position="suffix")


def _setup(mesh_shape=(2, 4), lr=0.3):
  mesh = partitioning.make_mesh(*mesh_shape)
  rules = partitioning.standard_logical_axis_rules("model")
  frozen = partitioning.init_params(network.DecoderLM(CFG), jax.random.key(0),
                                    mesh, rules, _SAMPLE)
  frozen = jax.device_put(_frozen(), partitioning.shardings_of(frozen))
  model = prompt_tuning_lib.decoder_model(CFG, P)
  opt = optim.make_optimizer(name="adafactor", learning_rate=lr,
                             weight_decay=1e-5)
  trainer = trainer_lib.Trainer(model, opt, mesh, rules,
                                partitioning.shardings_of(frozen))
  return trainer, frozen


def test_trainer_changes_only_the_prompt_and_fits_a_toy_task():
  trainer, frozen = _setup()
  state = trainer.init_state(jax.random.key(1))
  prompt_before = np.array(trainer.model.method.prompt_of(state.trainable))
  grads, _ = trainer_lib.loss_and_grads(
      trainer.model, state.trainable, frozen,
      _prefix_lm_batch(_examples(16)), jax.random.key(0))
  flat = flax.traverse_util.flatten_dict(grads, sep="/")
  assert list(flat) == ["prompt/prompt"]
  optim.assert_no_large_leaves(state.opt_state, P * CFG.emb_dim)
  batch = trainer.put_batch(_prefix_lm_batch(_examples(16)))
  # Nothing backbone-shaped is computed into the jitted step's output.
  out = trainer.lower_train_step(state, frozen, batch,
                                 jax.random.key(2)).out_info
  for tree in (grads, state.opt_state, out):
    assert testing.backbone_shaped_leaves(tree, frozen,
                                          state.trainable) == []
  assert max(x.size for x in jax.tree.leaves(out)) == P * CFG.emb_dim
  losses = []
  for _ in range(60):
    state, metrics = trainer.train_step(state, frozen, batch,
                                        jax.random.key(2))
    losses.append(float(metrics["loss"]))
  prompt = np.array(trainer.model.method.prompt_of(state.trainable))
  assert (prompt != prompt_before).mean() > 0.9
  assert prompt.shape == (P, CFG.emb_dim)
  assert losses[-1] < 0.5 * losses[0], losses[::10]
  sums = trainer.eval_step(state.trainable, frozen, batch)
  print(f"decoder toy task: loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
        f"accuracy {float(sums['correct'] / sums['tokens']):.3f}")


def test_predictor_generates_and_scores_with_the_decoder():
  from prompt_jax.decoding import predictor as predicting  # pylint: disable=g-import-not-at-top
  mesh = partitioning.make_mesh(8, 1)
  rules = partitioning.standard_logical_axis_rules("model")
  model = prompt_tuning_lib.decoder_model(CFG, P)
  trainable = model.init_trainable(jax.random.key(1))
  frozen = _frozen()
  predictor = predicting.Predictor(
      model, mesh, rules, jax.tree.map(lambda _: predicting.NamedSharding(
          mesh, predicting.PartitionSpec()), frozen),
      max_decode_length=4, batch_size=8)
  examples = _examples(3, seed=3)
  inputs = _padded([x for x, _ in examples], 8)
  targets = _padded([y for _, y in examples], 2)
  out = predictor.predict(trainable, frozen, inputs)
  assert out.shape == (3, 4)
  # Greedy output of each row = its argmax continuation, unpadded.
  for row, (x, _) in zip(out, examples):
    seq = list(x)
    prompt = model.method.prompt_of(trainable)
    hand = seams_lib.Seams(
        decoder_embed_fn=lambda e, m: (
            jnp.concatenate([prompt[None], e], 1),
            jnp.concatenate([jnp.ones((1, P), m.dtype), m], 1)))
    logits = network.DecoderLM(CFG).apply({"params": frozen},
                                          jnp.asarray([seq]), seams=hand)
    assert int(row[0]) == int(jnp.argmax(logits[0, -1]))
  scores = predictor.score(trainable, frozen, inputs, targets)
  np.testing.assert_allclose(
      scores, model.score_batch(trainable, frozen, inputs, targets)[0],
      rtol=1e-5)
