"""Sharding on a ('data', 'model') device mesh with logical axis rules.

Parameters and block-boundary activations name their axes with the constants
of `prompt_jax.types`; the rules here map those logical names to the two mesh
axes. The recipe is Flax's: `jax.eval_shape` of init gives boxed abstract
params, `nn.get_partition_spec` reads their logical names, and
`nn.logical_to_mesh_sharding` turns them into `NamedSharding`s used as the
`out_shardings` of a jitted init (params are born sharded) and the
`in_shardings` of jitted steps.

Activation constraints (`nn.with_logical_constraint` in `prompt_jax.backbones.t5`) only
take effect while logical axis rules *and* a mesh are in context; Flax
silently drops them otherwise (t5x's CPU no-op, STYLE.md pitfall 10).
`MeshJitted` therefore enters both around every call and every `lower`, so
the constraints are real on any backend, CPU included.

Typical use::

  mesh = make_mesh(data=2, model=4)
  rules = standard_logical_axis_rules("model")
  params = init_params(model, jax.random.key(0), mesh, rules)
  forward = jit_forward(model, mesh, rules, shardings_of(params))
  logits = forward(params, {"encoder_input_tokens": enc,  # [B, Ti]
                            "decoder_input_tokens": dec})  # -> [B, To, V]
"""

import contextlib
import math
from typing import Any, Callable, Iterator, Sequence

import flax.core.meta
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import (AbstractMesh, AxisType, Mesh, NamedSharding,
                          PartitionSpec)

from prompt_jax import types

DATA = "data"
MODEL = "model"
MESH_AXES = (DATA, MODEL)
PARALLELISMS = ("data", "model", "2d")

MeshAxes = str | tuple[str, ...] | None
AxisRules = tuple[tuple[str, MeshAxes], ...]


def make_mesh(data: int, model: int,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Returns a `data` x `model` mesh with axis names ('data', 'model').

  Devices are laid out in `jax.devices()` order (row major), so the devices of
  one model-parallel group are adjacent; on one GPU host that keeps tensor
  parallel traffic on the fastest links.

  Args:
    data: size of the data-parallel axis (batch is split over it).
    model: size of the model-parallel axis (heads, mlp, vocab are split).
    devices: devices to use; defaults to all of `jax.devices()`.

  Raises:
    ValueError: if `data * model` differs from the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  if data < 1 or model < 1 or data * model != len(devices):
    raise ValueError(f"mesh data={data} x model={model} needs {data * model} "
                     f"devices, but {len(devices)} are given")
  # Auto axes: the compiler propagates shardings between our constraints.
  return Mesh(np.asarray(devices, dtype=object).reshape(data, model),
              MESH_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


# ---------------------------------------------------------------- rules ----


def prompt_rules() -> AxisRules:
  """Rules of the axes that are always replicated.

  Soft prompts are tiny and trained, so they stay whole on every device (as in
  google-research/prompt-tuning); the same holds for LoRA ranks, relative
  position buckets and the decode-cache length.
  """
  return ((types.PROMPT, None), (types.PROMPT_EMBED, None), (types.RANK, None),
          (types.RELPOS_BUCKETS, None), (types.CACHE_LENGTH, None))


def _core_rules(parallelism: str) -> AxisRules:
  """The rules for the batch and the backbone's weight axes."""
  if parallelism == "data":
    return ((types.BATCH, DATA), (types.VOCAB, None), (types.EMBED, None),
            (types.MLP, None), (types.HEADS, None))
  # Order matters: `batch` claims 'data' first, so in the 2-D rules the
  # `embed` -> 'data' rule applies to parameters only (activations carry a
  # batch axis), which is T5X's 2-D parameter sharding.
  embed = DATA if parallelism == "2d" else None
  return ((types.BATCH, DATA), (types.VOCAB, MODEL), (types.EMBED, embed),
          (types.MLP, MODEL), (types.HEADS, MODEL))


def standard_logical_axis_rules(parallelism: str = "model",
                                additional_rules: AxisRules = ()
                                ) -> AxisRules:
  """Logical axis -> mesh axis rules, covering every axis in `types.ALL_AXES`.

  * "data": batch over 'data'; all parameters replicated.
  * "model": batch over 'data'; heads, mlp and vocab over 'model'; embed,
    kv, length replicated (T5X 1-D parameter partitioning).
  * "2d": as "model", and the parameters' embed axis also over 'data'
    (T5X `parameter_partitioning_dims=2`); activations keep embed whole.

  Args:
    parallelism: one of `PARALLELISMS`.
    additional_rules: rules that take precedence over the standard ones.

  Returns:
    A tuple of (logical name, mesh axis or None) pairs, highest priority
    first, as `nn.logical_axis_rules` expects.

  Raises:
    ValueError: for an unknown `parallelism`.
  """
  if parallelism not in PARALLELISMS:
    raise ValueError(f"parallelism={parallelism!r}; expected one of "
                     f"{PARALLELISMS}")
  replicated = ((types.LENGTH, None), (types.KV, None))
  return (tuple(additional_rules) + _core_rules(parallelism) + replicated +
          prompt_rules())


def missing_axes(rules: AxisRules,
                 axes: Sequence[str] = types.ALL_AXES) -> list[str]:
  """Returns the logical axes in `axes` that no rule mentions."""
  covered = {name for name, _ in rules}
  return [a for a in axes if a not in covered]


# ------------------------------------------------------------ shardings ----


def _axis_size(mesh: Mesh | AbstractMesh, axes: MeshAxes) -> int:
  if axes is None:
    return 1
  names = (axes,) if isinstance(axes, str) else tuple(axes)
  return math.prod(mesh.shape[n] for n in names)


def fit_spec(spec: PartitionSpec, shape: Sequence[int],
             mesh: Mesh | AbstractMesh) -> PartitionSpec:
  """Drops the mesh axes of dims they do not divide (those dims replicate).

  E.g. T5 1.1 small has 6 heads: on a model axis of 8 its attention kernels
  keep `heads` whole instead of failing; dims that divide stay sharded.
  """
  dims = tuple(spec) + (None,) * (len(shape) - len(spec))
  return PartitionSpec(*(
      axes if size % _axis_size(mesh, axes) == 0 else None
      for axes, size in zip(dims, shape)))


def logical_sharding(logical_axes: Sequence[str | None], mesh: Mesh,
                     rules: AxisRules,
                     shape: Sequence[int] | None = None) -> NamedSharding:
  """The `NamedSharding` of an array whose dims have these logical names.

  Args:
    logical_axes: one name (or None) per dim, e.g. (BATCH, LENGTH).
    mesh: the device mesh.
    rules: logical axis rules.
    shape: if given, dims that a mesh axis does not divide are replicated.
  """
  spec = nn.logical_to_mesh_axes(tuple(logical_axes), rules)
  if shape is not None:
    spec = fit_spec(spec, shape, mesh)
  return NamedSharding(mesh, spec)


def param_shardings(abstract_boxed: Any, mesh: Mesh, rules: AxisRules) -> Any:
  """`NamedSharding`s for a (possibly boxed) tree of abstract parameters.

  Boxed leaves (`nn.LogicallyPartitioned`, from `nn.with_logical_partitioning`)
  are mapped through `rules`; unboxed leaves are replicated. A dim whose size
  the assigned mesh axes do not divide falls back to replicated for that dim
  only (`fit_spec`), so e.g. 6 heads on an 8-way model axis still works, at
  the cost of keeping those weights whole on every device.

  Args:
    abstract_boxed: e.g. `jax.eval_shape(model.init, ...)["params"]`; leaves
      are `ShapeDtypeStruct`s or arrays, optionally boxed.
    mesh: the device mesh.
    rules: logical axis rules.

  Returns:
    The unboxed tree structure with a `NamedSharding` at every leaf.
  """
  logical = nn.get_partition_spec(abstract_boxed)
  shardings = nn.logical_to_mesh_sharding(logical, mesh, rules)
  shapes = flax.core.meta.unbox(abstract_boxed)
  return jax.tree.map(
      lambda s, x: NamedSharding(mesh, fit_spec(s.spec, x.shape, mesh)),
      shardings, shapes,
      is_leaf=lambda x: isinstance(x, NamedSharding))


def shardings_of(tree: Any) -> Any:
  """The `.sharding` of every array leaf (e.g. of `init_params` output)."""
  return jax.tree.map(lambda x: x.sharding, tree)


def per_device_bytes(abstract: Any, shardings: Any) -> int:
  """Bytes of `abstract` that each device holds under `shardings`.

  Args:
    abstract: unboxed tree of `ShapeDtypeStruct`s (or arrays).
    shardings: matching tree of `Sharding`s.
  """
  sizes = jax.tree.map(
      lambda x, s: math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize,
      abstract, shardings)
  return int(sum(jax.tree.leaves(sizes)))


# ------------------------------------------------------ mesh contexts ----


def _set_mesh(mesh: Mesh):
  """The mesh context manager that this jax version offers."""
  if hasattr(jax, "set_mesh"):  # jax >= 0.7 (0.10.2, 0.11.x)
    return jax.set_mesh(mesh)
  if hasattr(jax.sharding, "use_mesh"):  # jax 0.5 - 0.6
    return jax.sharding.use_mesh(mesh)
  return mesh  # Legacy `with mesh:`.


def _inside_trace() -> bool:
  """True while tracing under jit, where `jax.set_mesh` is not allowed."""
  get_mesh = getattr(jax.sharding, "get_mesh", None)
  if get_mesh is None:  # Older jax: `with mesh:` also works under a trace.
    return False
  try:
    get_mesh()  # Raises inside a trace.
  except ValueError:
    return True
  return False


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: AxisRules) -> Iterator[None]:
  """Makes `mesh` and `rules` current, so logical constraints are applied.

  Inside a trace that already runs under `mesh` (a `MeshJitted` called from
  another one) the mesh is left as it is; it cannot change there.

  Raises:
    ValueError: if entered inside a trace that runs under another mesh.
  """
  mesh_cm = contextlib.nullcontext()
  if not _inside_trace():
    mesh_cm = _set_mesh(mesh)
  elif jax.sharding.get_abstract_mesh() != mesh.abstract_mesh:
    raise ValueError("mesh_context: entered inside a jit traced without this "
                     "mesh; call it outside jit or from a MeshJitted")
  with mesh_cm, nn.logical_axis_rules(rules):
    yield


def with_sharding_constraint(x: jax.Array, logical_axes: Sequence[str | None],
                             mesh: Mesh | None = None,
                             rules: AxisRules | None = None) -> jax.Array:
  """Constrains `x` to the sharding its logical axes map to; never a no-op.

  Unlike `nn.with_logical_constraint` (and t5x's wrapper), this applies on CPU
  and raises rather than silently doing nothing when no mesh or rules are
  known. Dims that the mesh axes do not divide are replicated.

  Args:
    x: the array, e.g. [B, T, H].
    logical_axes: one logical name (or None) per dim of `x`.
    mesh: the mesh; defaults to the one set by `mesh_context`.
    rules: the rules; default to those set by `mesh_context`.

  Raises:
    ValueError: if no mesh or no rules are given or in context.
  """
  context_mesh = jax.sharding.get_abstract_mesh()  # Valid inside jit.
  if mesh is None and context_mesh.empty:
    raise ValueError("with_sharding_constraint: no mesh given or in context "
                     "(use partitioning.mesh_context)")
  rules = rules or nn.get_logical_axis_rules()
  if not rules:
    raise ValueError("with_sharding_constraint: no logical axis rules given "
                     "or in context (use partitioning.mesh_context)")
  spec = fit_spec(nn.logical_to_mesh_axes(tuple(logical_axes), rules),
                  x.shape, context_mesh if mesh is None else mesh)
  # A bare spec refers to the context mesh.
  target = spec if mesh is None else NamedSharding(mesh, spec)
  return jax.lax.with_sharding_constraint(x, target)


# ------------------------------------------------------------ jitting ----


class MeshJitted:
  """A `jax.jit`-ed function that always traces under its mesh and rules.

  Flax reads logical axis rules and the mesh from context at trace time, so
  both are entered around every call and every `lower`; the rules are also
  entered inside the traced function, so a trace never misses them.
  """

  def __init__(self, fn: Callable, mesh: Mesh, rules: AxisRules,
               **jit_kwargs):
    self.mesh = mesh
    self.rules = rules

    def with_rules(*args, **kwargs):
      with nn.logical_axis_rules(rules):
        return fn(*args, **kwargs)

    self._jitted = jax.jit(with_rules, **jit_kwargs)

  def __call__(self, *args, **kwargs):
    with mesh_context(self.mesh, self.rules):
      return self._jitted(*args, **kwargs)

  def lower(self, *args, **kwargs):
    """`jax.jit(...).lower` under the mesh and rules (for HLO inspection)."""
    with mesh_context(self.mesh, self.rules):
      return self._jitted.lower(*args, **kwargs)


def jit_sharded(fn: Callable, mesh: Mesh, rules: AxisRules,
                in_shardings: Any = None, out_shardings: Any = None,
                **jit_kwargs) -> MeshJitted:
  """`jax.jit(fn, in_shardings=, out_shardings=)` bound to a mesh and rules.

  Shardings left as None are not passed to `jax.jit` (the compiler chooses).
  Other keyword arguments (`static_argnames`, `donate_argnums`, ...) are
  forwarded to `jax.jit`.
  """
  if in_shardings is not None:
    jit_kwargs["in_shardings"] = in_shardings
  if out_shardings is not None:
    jit_kwargs["out_shardings"] = out_shardings
  return MeshJitted(fn, mesh, rules, **jit_kwargs)


def _default_inputs() -> tuple[jax.ShapeDtypeStruct, ...]:
  tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  return (tokens, tokens)


def abstract_variables(model: nn.Module,
                       sample_inputs: Sequence[Any] | None = None) -> Any:
  """Boxed abstract variables of `model.init` (no compute, no allocation).

  Args:
    model: a Flax module.
    sample_inputs: positional inputs (arrays or `ShapeDtypeStruct`s) for
      `model.init`; defaults to two [1, 1] int32 token arrays, which fits
      `T5Transformer`.
  """
  inputs = tuple(sample_inputs or _default_inputs())
  return jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a), *inputs)


def init_params(model: nn.Module, rng: jax.Array, mesh: Mesh,
                rules: AxisRules,
                sample_inputs: Sequence[Any] | None = None) -> Any:
  """Initialises the model's 'params' directly into their shardings.

  The init is jitted with `out_shardings` from `param_shardings`, so no
  device ever holds the full unsharded tree.

  Args:
    model: a Flax module whose params are boxed with logical names.
    rng: PRNG key.
    mesh: the device mesh.
    rules: logical axis rules.
    sample_inputs: as in `abstract_variables`.

  Returns:
    The unboxed params tree of sharded `jax.Array`s; `shardings_of(params)`
    gives their shardings.
  """
  inputs = tuple(sample_inputs or _default_inputs())
  abstract = abstract_variables(model, inputs)["params"]
  shardings = param_shardings(abstract, mesh, rules)
  concrete = tuple(jnp.zeros(x.shape, x.dtype) for x in inputs)

  def init(key):
    return flax.core.meta.unbox(model.init(key, *concrete)["params"])

  return jit_sharded(init, mesh, rules, out_shardings=shardings)(rng)


def jit_forward(model: nn.Module, mesh: Mesh, rules: AxisRules,
                params_shardings: Any) -> MeshJitted:
  """A jitted, sharded teacher-forced forward of `T5Transformer`.

  The returned function is `forward(params, batch) -> logits`, where `batch`
  is a dict of [B, T] arrays with T5X feature names: `encoder_input_tokens`,
  `decoder_input_tokens` and optionally `encoder_mask`, `decoder_mask`
  (other keys, e.g. targets, are ignored). Every batch array is split over
  'data' (B must be divisible by the data axis size); the fp32 logits
  [B, To, V] come out sharded as the rules map (BATCH, LENGTH, VOCAB),
  with vocab replicated if the model axis does not divide V.

  Args:
    model: a `T5Transformer` (anything with `.config.vocab_size` and the
      same call signature).
    mesh: the device mesh.
    rules: logical axis rules.
    params_shardings: shardings of the params tree (`param_shardings` or
      `shardings_of(params)`).
  """
  batch_sharding = logical_sharding((types.BATCH, types.LENGTH), mesh, rules)
  logits_spec = fit_spec(
      nn.logical_to_mesh_axes((types.BATCH, types.LENGTH, types.VOCAB), rules),
      (mesh.shape[DATA], 1, model.config.vocab_size), mesh)

  def forward(params, batch):
    return model.apply({"params": params}, batch["encoder_input_tokens"],
                       batch["decoder_input_tokens"],
                       batch.get("encoder_mask"), batch.get("decoder_mask"))

  return jit_sharded(forward, mesh, rules,
                     in_shardings=(params_shardings, batch_sharding),
                     out_shardings=NamedSharding(mesh, logits_spec))
