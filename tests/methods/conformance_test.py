"""Method conformance: every method in `methods.METHODS` x {tiny T5, Llama}.

A method gets every check here by adding its registry line (constructor
arguments come from `METHOD_ARGS`, defaults otherwise). For each (method,
family), one compiled train step runs twice on a 2x4 ('data', 'model') mesh
and the suite checks that:
  1. the trainable leaves carry the shardings of the method's logical axes;
     the frozen backbone is bit-for-bit unchanged (or, with an empty frozen
     tree, the trainable tree is the whole backbone with its shardings);
     `bind` runs the loaded backbone; every trainable leaf moves (a leaf
     behind a zero-initialised one, LoRA's A behind B = 0, by step 2);
  2. the optimizer state has no backbone-shaped leaf (full fine-tuning:
     one per backbone weight and moment, by design);
  3. with `identity_at_init`, loss and scores equal the bare backbone bit
     for bit at init; without it, they differ;
  4. the artifact round-trips bit for bit (or the method says it has none),
     and the method eval/infer build (`inference_method`) runs it with the
     trained logits;
  5. greedy decoding through the KV cache scores its tokens as teacher
     forcing does (the method is not lost in `generate`), and the gradient
     program never forms a backbone weight's gradient;
  6. `settings()` is JSON and names the method.
"""

import collections
import dataclasses
import json
from typing import Any

import flax.linen as nn
import flax.traverse_util
import jax
import jax.extend
import numpy as np
import optax
import pytest

from prompt_jax import methods as methods_lib
from prompt_jax import models
from prompt_jax import optim
from prompt_jax import partitioning
from prompt_jax import testing
from prompt_jax import trainer as trainer_lib
from prompt_jax.methods import METHODS
from prompt_jax.methods import base
from prompt_jax.methods.prompt_bank import rows
from prompt_jax.methods.prompt_tuning import specs
from prompt_jax.testing import llama as llama_testing

# Small constructor arguments; a method not named here runs its defaults.
METHOD_ARGS: dict[str, dict[str, Any]] = {
    "prompt_tuning": dict(length=4, init=specs.random_uniform()),
    "lora": dict(rank=2, targets="all-linear"),
    "p_tuning": dict(length=4, encoder_hidden_size=8),
    "adapters": dict(reduction_factor=4),
    "unipelt": dict(rank=2, prefix_length=2, reduction_factor=4),
    "prompt_bank": dict(tasks=("a", "b"), length=2,
                        init=specs.random_uniform()),
    "compose": dict(methods=(
        methods_lib.PromptTuning(length=4, init=specs.random_uniform()),
        methods_lib.LoRA(rank=2))),
}
# Methods whose rows choose their parameters by pseudo ids in the input:
# the batch routes rows to prompts 0, 1, 0, 1.
ROUTED = ("prompt_bank",)
FAMILIES = ("t5", "llama")
CASES = [(name, family) for name in METHODS for family in FAMILIES]
BATCH = 4  # Divisible by the mesh's 'data' axis (2).
LR = 1e-2  # Adam without weight decay: a zero gradient moves nothing.


def _flat(tree: Any) -> dict[str, Any]:
  return flax.traverse_util.flatten_dict(tree, sep="/")


def _host(tree: Any) -> Any:
  """A host copy that survives donation of the device buffers."""
  return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def _assert_same_bits(got: Any, want: Any, what: str) -> None:
  assert jax.tree.structure(got) == jax.tree.structure(want), what
  for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0],
                          jax.tree.leaves(want)):
    key = f"{what}{jax.tree_util.keystr(path)}"
    assert np.asarray(g).dtype == np.asarray(w).dtype, key
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=key)


@dataclasses.dataclass
class Backbone:
  """One family's language model, sharded weights and batches."""
  lm: Any
  params: Any  # Sharded on the mesh.
  host: Any  # Host copy of `params`.
  batch: dict[str, np.ndarray]  # Training batch (seqio feature names).
  score: tuple[np.ndarray, np.ndarray]  # (inputs [B, Ti], targets [B, To]).
  bare: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def _t5_data(vocab: int) -> tuple[dict, tuple]:
  rng = np.random.RandomState(0)
  # 9 slots: no activation [B, T, H] has the shape of a kernel [N, D, H].
  enc = testing.padded_batch(rng, BATCH, 9, vocab, lengths=[9, 5, 6, 3])
  tgt = rng.randint(2, vocab, (BATCH, 3)).astype(np.int32)
  dec = np.concatenate([np.zeros((BATCH, 1), np.int32), tgt[:, :-1]], 1)
  batch = {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
           "decoder_target_tokens": tgt,
           "decoder_loss_weights": np.ones_like(tgt)}
  return batch, (enc, tgt)


def _llama_data(vocab: int) -> tuple[dict, tuple]:
  """Prefix-LM rows: 3-6 input ids then 2 target ids (weighted)."""
  rng = np.random.RandomState(0)
  tokens = np.zeros((BATCH, 10), np.int32)
  weights = np.zeros_like(tokens)
  inputs = np.zeros((BATCH, 6), np.int32)
  targets = rng.randint(3, vocab, (BATCH, 2)).astype(np.int32)
  for i, n in enumerate([6, 3, 5, 4]):
    inputs[i, :n] = rng.randint(3, vocab, n)
    tokens[i, :n + 2] = np.concatenate([inputs[i, :n], targets[i]])
    weights[i, n:n + 2] = 1
  return ({"decoder_target_tokens": tokens, "decoder_loss_weights": weights},
          (inputs, targets))


def _random_backbone(lm: Any, mesh, rules) -> tuple[Any, Any]:
  """(host params, their shardings): N(0, 0.2^2) weights, norm scales
  N(1, 0.1^2), drawn in NumPy (no init program to compile)."""
  abstract = partitioning.abstract_variables(lm.module,
                                             lm.sample_inputs)["params"]
  rng = np.random.RandomState(0)
  host = {}
  for key, leaf in _flat(flax.core.meta.unbox(abstract)).items():
    mean = 1.0 if key.endswith("scale") else 0.0
    std = 0.1 if key.endswith("scale") else 0.2
    host[key] = (mean + std * rng.standard_normal(leaf.shape)).astype(
        leaf.dtype)
  return (flax.traverse_util.unflatten_dict(host, sep="/"),
          partitioning.param_shardings(abstract, mesh, rules))


@pytest.fixture(scope="module")
def mesh_and_rules():
  return (partitioning.make_mesh(2, 4),
          partitioning.standard_logical_axis_rules("model"))


@pytest.fixture(scope="module")
def backbones(mesh_and_rules) -> dict[str, Backbone]:
  mesh, rules = mesh_and_rules
  t5 = models.EncoderDecoderLM(testing.tiny_t5_config(
      num_heads=4, num_encoder_layers=1, num_decoder_layers=1))
  llama = models.DecoderOnlyLM(llama_testing.tiny_decoder_config(
      num_layers=1))
  out = {}
  for family, lm, data in (("t5", t5, _t5_data), ("llama", llama,
                                                  _llama_data)):
    host, shardings = _random_backbone(lm, mesh, rules)
    batch, score = data(lm.config.vocab_size)
    out[family] = Backbone(lm, jax.device_put(host, shardings), host, batch,
                           score)
  return out


def _routed(bb: Backbone, method: Any) -> Backbone:
  """`bb` with row b of its batches routed to prompt b % K."""
  index = np.arange(BATCH) % len(method.tasks)
  inputs, targets = bb.score
  return dataclasses.replace(
      bb, batch=rows.with_prompts(bb.batch, index, method.length,
                                  bb.lm.family),
      score=(rows.prepend(inputs, index, method.length), targets), bare={})


@dataclasses.dataclass
class Run:
  """One (method, family): the model, its trainer and what training did."""
  name: str
  method: base.Method
  model: base.TunedModel
  backbone: Backbone
  trainer: trainer_lib.Trainer
  frozen: Any  # Device frozen tree, after the steps.
  frozen_host: Any  # Its host copy, taken before the steps.
  state: trainer_lib.TrainState  # After 2 steps.
  trainable: list[Any]  # Host trainable trees: init, step 1, step 2.
  losses: list[float]  # Loss metric of step 1 and step 2.


@pytest.fixture(scope="module", params=CASES, ids=[f"{m}-{f}" for m, f in
                                                   CASES])
def run(request, backbones, mesh_and_rules) -> Run:
  name, family = request.param
  bb = backbones[family]
  method = METHODS[name](**METHOD_ARGS.get(name, {}))
  if name in ROUTED:
    bb = _routed(bb, method)
  params = bb.params
  if method.consumes_backbone():  # Its state is donated: give it a copy.
    params = jax.device_put(bb.host, partitioning.shardings_of(bb.params))
  model = base.TunedModel(bb.lm, method, params)
  frozen = method.frozen_params(params)
  frozen_host = _host(frozen)
  trainer = trainer_lib.Trainer(model, optax.adam(LR), *mesh_and_rules,
                                partitioning.shardings_of(frozen))
  state = trainer.init_state(jax.random.key(1))
  trainable, losses = [_host(state.trainable)], []
  batch = trainer.put_batch(bb.batch)
  for _ in range(2):  # One compile; the second step reuses it.
    state, metrics = trainer.train_step(state, frozen, batch,
                                        jax.random.key(2))
    trainable.append(_host(state.trainable))
    losses.append(float(metrics["loss"]))
  return Run(name, method, model, bb, trainer, frozen, frozen_host, state,
             trainable, losses)


# ------------------------------------------------- 1. the train step ----


def _logical_specs(method: base.Method, lm: Any, mesh, rules) -> dict:
  """'/'-path -> NamedSharding from each leaf's logical axis names."""
  boxed = _flat(method.abstract_trainable(lm))
  out = {}
  for key, leaf in boxed.items():
    shape = flax.core.meta.unbox(leaf).shape
    names = (leaf.names if isinstance(leaf, nn.LogicallyPartitioned)
             else (None,) * len(shape))
    out[key] = partitioning.logical_sharding(names, mesh, rules, shape)
  return out


def test_trainable_leaves_have_the_shardings_of_their_logical_axes(
    run, mesh_and_rules):
  actual = _flat(run.state.trainable)
  derived = _flat(run.trainer.state_shardings.trainable)
  logical = _logical_specs(run.method, run.backbone.lm, *mesh_and_rules)
  assert actual.keys() == derived.keys() == logical.keys()
  for key, x in actual.items():
    want = logical[key]
    assert derived[key].is_equivalent_to(want, x.ndim), key
    assert x.sharding.is_equivalent_to(want, x.ndim), (key, x.sharding)
    assert x.addressable_shards[0].data.shape == want.shard_shape(x.shape), key


def test_frozen_backbone_is_unchanged_or_is_the_trainable_tree(run):
  _assert_same_bits(jax.tree.map(np.asarray, run.frozen), run.frozen_host,
                    "frozen")
  if jax.tree.leaves(run.frozen_host):
    return
  # Nothing frozen (full fine-tuning): the weights it runs are the whole
  # backbone, trained, with the backbone's shardings.
  params, _ = run.model.bind(run.state.trainable, run.frozen)
  want = partitioning.shardings_of(run.backbone.params)
  assert jax.tree.structure(params) == jax.tree.structure(want)
  for (path, x), s, b in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                             jax.tree.leaves(want),
                             jax.tree.leaves(run.backbone.host)):
    key = jax.tree_util.keystr(path)
    assert (x.shape, x.dtype) == (b.shape, b.dtype), key
    assert x.sharding.is_equivalent_to(s, x.ndim), (key, x.sharding, s)
    assert not np.array_equal(np.asarray(x), b), f"{key} did not train"


def test_bind_runs_the_loaded_backbone_at_init(run):
  """A method plugs in through its trainable tree and seams: the weights
  `bind` runs at init are the loaded backbone, bit for bit, and binding
  leaves the frozen tree it is given as it was."""
  given = _host(run.frozen_host)
  params, _ = run.method.bind(run.backbone.lm, run.trainable[0], given)
  _assert_same_bits(params, run.backbone.host, "bound params")
  _assert_same_bits(given, run.frozen_host, "frozen after bind")


def test_every_trainable_leaf_moves(run):
  """Adam without weight decay moves a leaf iff its gradient is nonzero.

  Step 1 moves every leaf, except in a method with zero-initialised leaves
  (LoRA's B, a mam adapter's up-projection): those move at step 1, and a
  leaf whose gradient they block (LoRA's A: dL/dA = 0 while B = 0; the
  adapter's down bias, itself zero) may stall until step 2. By step 2 every leaf has moved and the loss has dropped.
  """
  init, step1, step2 = map(_flat, run.trainable)
  zero = {k for k, v in init.items() if not v.any()}
  stalled = {k for k in init if np.array_equal(init[k], step1[k])}
  if stalled:  # Only behind a zero leaf that moved.
    assert zero - stalled, sorted(stalled)
    assert stalled != init.keys()
  assert [k for k in init if np.array_equal(init[k], step2[k])] == []
  assert run.losses[1] < run.losses[0], run.losses


# ---------------------------------------------- 2. the optimizer state ----


def test_optimizer_state_has_no_backbone_sized_leaf(run):
  opt_state, backbone = run.state.opt_state, run.backbone.params
  if jax.tree.leaves(run.frozen_host):
    assert testing.backbone_shaped_leaves(opt_state, backbone,
                                          run.state.trainable) == []
    largest = max(x.size for x in jax.tree.leaves(run.state.trainable))
    optim.assert_no_large_leaves(opt_state, largest)
    return
  # Full fine-tuning: Adam keeps two moments of every backbone weight.
  have = collections.Counter(x.shape for x in jax.tree.leaves(opt_state))
  for shape, count in collections.Counter(
      x.shape for x in jax.tree.leaves(backbone)).items():
    assert have[shape] >= 2 * count, (shape, have[shape], count)


def _dot_output_shapes(jaxpr) -> set[tuple[int, ...]]:
  """Shapes of every dot_general output in a jaxpr (sub-jaxprs included)."""
  shapes = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      shapes.update(tuple(v.aval.shape) for v in eqn.outvars)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      shapes |= _dot_output_shapes(sub)
  return shapes


def test_the_gradient_never_forms_a_backbone_weight_gradient(run):
  """No matmul of the gradient program outputs a frozen weight's shape: the
  weight gradients x^T dy of the backbone are never computed (they are, as
  a check that this can fail, when the frozen tree is differentiated too)."""
  bb = run.backbone
  kernels = {tuple(x.shape) for x in jax.tree.leaves(run.frozen_host)
             if np.ndim(x) >= 2}
  if not kernels:  # Full fine-tuning: nothing is frozen.
    return
  loss = lambda t, f: run.model.loss_fn(t, f, bb.batch)[0]
  trainable = run.trainable[0]
  ours = jax.make_jaxpr(jax.grad(loss))(trainable, run.frozen_host).jaxpr
  formed = _dot_output_shapes(ours) & kernels
  assert not formed, formed
  both = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(
      trainable, run.frozen_host).jaxpr
  assert _dot_output_shapes(both) & kernels


# ------------------------------------------------ 3. identity at init ----


def _loss_and_scores(model: base.TunedModel, trainable: Any, frozen: Any,
                     bb: Backbone) -> tuple[np.ndarray, np.ndarray]:
  """Forward-only compiled loss and token scores on one device (a
  gradient program may fuse its forward pass differently)."""
  def forward(t, f, batch, inputs, targets):
    return (model.loss_fn(t, f, batch)[0],
            model.score_batch(t, f, inputs, targets)[1])
  loss, scores = jax.jit(forward)(trainable, frozen, bb.batch, *bb.score)
  return np.asarray(loss), np.asarray(scores)


def test_init_is_the_bare_backbone_iff_identity_at_init(run):
  bb = run.backbone
  if not bb.bare:
    bb.bare["loss"], bb.bare["scores"] = _loss_and_scores(
        run.model, None, bb.host, bb)
  loss, scores = _loss_and_scores(run.model, run.trainable[0],
                                  run.frozen_host, bb)
  assert np.isfinite(loss) and np.isfinite(scores).all()
  if run.method.identity_at_init:
    np.testing.assert_array_equal(loss, bb.bare["loss"])
    np.testing.assert_array_equal(scores, bb.bare["scores"])
  else:
    assert loss != bb.bare["loss"]
    assert (scores != bb.bare["scores"]).any()


# -------------------------------------------- 4. artifact, 5. settings ----


def test_artifact_round_trips_bit_for_bit(run, tmp_path):
  method, trained = run.method, run.trainable[-1]
  if method.artifact_suffix is None:
    assert method.artifact_path(tmp_path, 1) is None
    with pytest.raises(ValueError) as e:
      method.latest_artifact(tmp_path)
    assert method.name in str(e.value) and "\n" not in str(e.value)
    return
  path = method.save_artifact(trained, method.artifact_path(tmp_path, 1))
  assert path == method.artifact_path(tmp_path, 1) and path.is_file()
  assert method.latest_artifact(tmp_path) == path
  loaded = method.load_artifact(path, run.backbone.lm)
  _assert_same_bits(loaded, trained, "loaded")
  # What eval/infer/classify build runs the artifact, with the same logits.
  inference = method.inference_method()
  served = inference.load_artifact(path, run.backbone.lm)
  assert jax.tree.structure(served) == jax.tree.structure(
      base.abstract_values(inference, run.backbone.lm))
  if inference != method:
    got = _loss_and_scores(base.TunedModel(run.backbone.lm, inference),
                           served, run.frozen_host, run.backbone)
    want = _loss_and_scores(run.model, trained, run.frozen_host,
                            run.backbone)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-6)


def test_cached_generation_scores_as_teacher_forcing(run):
  """Greedy decoding through the KV cache, with the trained method in
  place, scores its own tokens as teacher forcing does: a method lost or
  misplaced in `generate` (PEFT's most reported bug class) would differ."""
  bb, trained = run.backbone, run.trainable[-1]
  inputs = bb.score[0]

  def both(t, f, x):
    tokens, scores = run.model.generate(t, f, x, max_decode_length=3)
    eos = tokens == bb.lm.config.eos_id
    upto_eos = (jax.numpy.cumsum(eos, axis=1) - eos) == 0
    return tokens, scores, run.model.score_batch(
        t, f, x, tokens, target_mask=upto_eos)[0]
  _, cached, forced = jax.jit(both)(trained, run.frozen_host, inputs)
  np.testing.assert_allclose(cached, forced, rtol=1e-4, atol=1e-4)


def test_settings_are_json_and_name_the_method(run):
  settings = run.method.settings()
  assert json.loads(json.dumps(settings)) == settings
  assert settings["method"] == run.method.name == run.name
