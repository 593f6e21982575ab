"""Pure train/eval steps and the `Trainer` that jits them on a mesh.

`train_step(state, frozen, batch, rng)` differentiates the loss with respect
to `state.trainable` only; the frozen backbone is a plain argument, so the
gradient tree and the optimizer state have exactly the trainable leaves. The
step folds the step number into the base RNG, accumulates gradients over
microbatches with `lax.scan` (the loss is normalised by the token count of
the whole batch, so M microbatches give the same update as one), and returns
summed metrics. `Trainer` compiles the steps once with in/out shardings,
donates the train state and keeps everything on device.
"""

import functools
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prompt_jax import partitioning
from prompt_jax.methods.base import TunedModel
from prompt_jax.types import Array
from prompt_jax.types import PRNGKey
from prompt_jax.types import PyTree

Batch = Mapping[str, Array]


@flax.struct.dataclass
class TrainState:
  """Everything training changes: step, trainable params, optimizer state."""
  step: Array
  trainable: PyTree
  opt_state: PyTree


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
  """[B, ...] -> [M, B / M, ...] for every array of the batch."""
  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by "
                       f"num_microbatches={num_microbatches}")
    return x.reshape((num_microbatches, -1) + x.shape[1:])
  return jax.tree.map(split, dict(batch))


def _weights(batch: Batch) -> Array:
  targets = batch["decoder_target_tokens"]
  return batch.get("decoder_loss_weights", targets > 0).astype(jnp.float32)


def loss_and_grads(model: TunedModel, trainable: PyTree, frozen: PyTree,
                   batch: Batch, rng: PRNGKey, num_microbatches: int = 1
                   ) -> tuple[PyTree, dict[str, Array]]:
  """Gradients w.r.t. `trainable` and summed metrics over microbatches."""
  scale = 1.0
  if model.loss_cfg.normalize_by_tokens:
    scale = 1.0 / jnp.maximum(jnp.sum(_weights(batch)), 1.0)

  def micro_loss(tr, mb, key):
    _, metrics = model.loss_fn(tr, frozen, mb, key, enable_dropout=True)
    return metrics["loss_sum"] * scale, metrics

  grad_fn = jax.grad(micro_loss, has_aux=True)
  if num_microbatches == 1:
    return grad_fn(trainable, batch, rng)

  def body(carry, xs):
    grads_acc, metrics_acc = carry
    index, mb = xs
    grads, metrics = grad_fn(trainable, mb, jax.random.fold_in(rng, index))
    return (jax.tree.map(jnp.add, grads_acc, grads),
            jax.tree.map(jnp.add, metrics_acc, metrics)), None

  micro = _split_microbatches(batch, num_microbatches)
  first = jax.tree.map(lambda x: x[0], micro)
  zero_metrics = jax.tree.map(
      jnp.zeros_like, jax.eval_shape(grad_fn, trainable, first, rng)[1])
  init = (jax.tree.map(jnp.zeros_like, trainable), zero_metrics)
  (grads, metrics), _ = jax.lax.scan(
      body, init, (jnp.arange(num_microbatches), micro))
  return grads, metrics


def train_step(state: TrainState, frozen: PyTree, batch: Batch,
               base_rng: PRNGKey, *, model: TunedModel,
               optimizer: optax.GradientTransformation,
               num_microbatches: int = 1) -> tuple[TrainState, dict]:
  """One optimizer step on `batch`; returns the new state and metrics."""
  rng = jax.random.fold_in(base_rng, state.step)
  grads, sums = loss_and_grads(model, state.trainable, frozen, batch, rng,
                               num_microbatches)
  updates, opt_state = optimizer.update(grads, state.opt_state,
                                        state.trainable)
  trainable = optax.apply_updates(state.trainable, updates)
  tokens = jnp.maximum(sums["tokens"], 1.0)
  metrics = {"loss": sums["loss_sum"] / tokens,
             "z_loss": sums["z_loss_sum"] / tokens,
             "accuracy": sums["correct"] / tokens,
             "tokens": sums["tokens"],
             "grad_norm": optax.tree.norm(grads)}
  return TrainState(state.step + 1, trainable, opt_state), metrics


def eval_step(trainable: PyTree, frozen: PyTree, batch: Batch, *,
              model: TunedModel) -> dict[str, Array]:
  """Teacher-forced summed metrics (`loss_sum`, `correct`, `tokens`)."""
  _, metrics = model.loss_fn(trainable, frozen, batch)
  return metrics


def opt_state_shardings(abstract_opt: PyTree, abstract_trainable: PyTree,
                        trainable_shardings: PyTree,
                        default: NamedSharding) -> PyTree:
  """Shardings of an optimizer state: a leaf shaped like the trainable
  leaf whose path ends its own path (Adam's moments, momentum) shards like
  that leaf; any other leaf (counts, factored statistics) gets `default`.

  So a trainable backbone's optimizer state is split over the mesh like the
  weights, not replicated on every device.
  """
  leaves = jax.tree_util.tree_flatten_with_path(abstract_trainable)[0]
  by_path = {path: (leaf.shape, sharding) for (path, leaf), sharding in zip(
      leaves, jax.tree.leaves(trainable_shardings))}

  def pick(path, leaf):
    for start in range(len(path)):
      shape, sharding = by_path.get(tuple(path[start:]), (None, None))
      if shape is not None and shape == leaf.shape:
        return sharding
    return default

  return jax.tree_util.tree_map_with_path(pick, abstract_opt)


class Trainer:
  """Compiles the steps once for a mesh and owns their shardings.

  Args:
    model: the tuned model (language model + method).
    optimizer: built for the trainable tree only; None for an eval-only
      trainer (no train step is compiled).
    mesh: ('data', 'model') mesh; batches are split over 'data'.
    rules: logical axis rules (the prompt is replicated by default).
    frozen_shardings: shardings of the frozen backbone params.
    num_microbatches: gradient accumulation inside one step.
  """

  def __init__(self, model: TunedModel,
               optimizer: optax.GradientTransformation | None, mesh: Mesh,
               rules: Any, frozen_shardings: PyTree,
               num_microbatches: int = 1):
    self.model, self.optimizer, self.mesh = model, optimizer, mesh
    self.rules = rules
    replicated = NamedSharding(mesh, PartitionSpec())
    self.batch_sharding = NamedSharding(mesh, PartitionSpec(
        partitioning.DATA))
    trainable_sh = partitioning.param_shardings(
        model.abstract_trainable(), mesh, rules)
    self._eval = partitioning.jit_sharded(
        functools.partial(eval_step, model=model), mesh, rules,
        in_shardings=(trainable_sh, frozen_shardings, self.batch_sharding),
        out_shardings=replicated)
    if optimizer is None:
      return
    abstract = flax.core.meta.unbox(model.abstract_trainable())
    self.state_shardings = TrainState(
        step=replicated, trainable=trainable_sh,
        opt_state=opt_state_shardings(
            jax.eval_shape(optimizer.init, abstract), abstract, trainable_sh,
            replicated))
    self._train = partitioning.jit_sharded(
        functools.partial(train_step, model=model, optimizer=optimizer,
                          num_microbatches=num_microbatches),
        mesh, rules,
        in_shardings=(self.state_shardings, frozen_shardings,
                      self.batch_sharding, replicated),
        out_shardings=(self.state_shardings, replicated),
        donate_argnums=(0,))

  def init_state(self, rng: PRNGKey) -> TrainState:
    """Initial state placed on the mesh (prompt init runs eagerly)."""
    trainable = self.model.init_trainable(rng)
    state = TrainState(jnp.zeros((), jnp.int32), trainable,
                       self.optimizer.init(trainable))
    return jax.device_put(state, self.state_shardings)

  def abstract_state(self) -> TrainState:
    """Shapes, dtypes and shardings of the state (for checkpoint restore)."""
    trainable = flax.core.meta.unbox(self.model.abstract_trainable())
    abstract = TrainState(jax.ShapeDtypeStruct((), jnp.int32), trainable,
                          jax.eval_shape(self.optimizer.init, trainable))
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract, self.state_shardings)

  def put_batch(self, batch: Mapping[str, Any]) -> dict[str, Array]:
    """Host numpy batch -> device arrays split over 'data'."""
    return jax.device_put(dict(batch), self.batch_sharding)

  def train_step(self, state: TrainState, frozen: PyTree, batch: Batch,
                 base_rng: PRNGKey) -> tuple[TrainState, dict]:
    return self._train(state, frozen, batch, base_rng)

  def lower_train_step(self, state: TrainState, frozen: PyTree, batch: Batch,
                       base_rng: PRNGKey):
    """The lowered train step (for AOT compilation and cost analysis)."""
    return self._train.lower(state, frozen, batch, base_rng)

  def eval_step(self, trainable: PyTree, frozen: PyTree,
                batch: Batch) -> dict[str, Array]:
    return self._eval(trainable, frozen, batch)
