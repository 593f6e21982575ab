"""Optimizers for the trainable (prompt-sized) parameter tree, built on optax.

`make_optimizer` is the gin-bound factory; `adafactor_paper` is the exact
Lester et al. (2021) configuration. Both return an
`optax.GradientTransformation`.

Trainable tree only. The trainer differentiates the loss with respect to the
trainable subtree and keeps the frozen backbone in a separate argument
(STYLE.md 3.6), so `init` MUST be called on the trainable params only, e.g.
`opt.init(trainable)`, never on the full tree: Adafactor/AdamW state is
allocated for every leaf it is given, and for an XXL backbone that is tens of
GB. `assert_no_large_leaves(opt_state, max_elements)` turns that rule into a
check (prompt-tuning instead masked a full-tree optimizer, `MultiOptimizer`).

Composition, outermost first::

  MultiSteps(accumulation_steps)         only if accumulation_steps > 1
    clip_by_global_norm(clip_norm)       only if clip_norm is set
      adafactor | adamw | sgd            (weight decay inside, see below)

Gradient accumulation (`optax.MultiSteps`): call `update` once per microbatch
with that microbatch's gradient. On the first k-1 calls of each group of k it
only accumulates and returns an all-zero update (params do not move, weight
decay included); on the k-th it applies the inner optimizer to the MEAN of the
k gradients. Clipping, learning-rate schedules and Adafactor's decay schedule
therefore see one step per optimizer update, not per microbatch. The result is
the update a k-times-larger batch would give when the loss is a per-example
mean and microbatches are equal-sized.

Weight decay follows each optimizer's usual convention:
  adafactor: decoupled and NOT scaled by the learning rate (T5X):
             p <- (1 - weight_decay) * p - lr * y.
  adamw:     decoupled, scaled by the learning rate (optax/PyTorch AdamW):
             p <- p - lr * (adam_direction + weight_decay * p).
  sgd:       L2 added to the gradient: p <- p - lr * (g + weight_decay * p).

Adafactor factoring of a [P, H] prompt. prompt-tuning registers Adafactor
factor rules `prompt -> NONE` (`prompt_tuning/train/optim.py`), but T5X's
Adafactor ignores factor rules for parameters of rank <= 2 without a BATCH
dim and falls back to its shape heuristic (`t5x/adafactor.py:_parse_rule`,
`fallback_to_heuristics=True`): factor iff the second-largest dim is >= 128
(`min_dim_size_to_factor`). optax uses the same heuristic, so we keep it, which
reproduces what prompt-tuning actually ran: the paper's P=100 prompt is NOT
factored (full [P, H] second moment); a prompt with P >= 128 and H >= 128 (e.g.
the P=150 ablation) IS factored, as in T5X. Pass `factored=False` to never
factor. optax keeps the second moments in the parameter dtype (T5X: float32),
so keep trainable params in float32.
"""

import math
import types as pytypes
from typing import Any, Callable, Mapping

import jax
import optax

from prompt_jax import types

OPTIMIZERS = ("adafactor", "adamw", "sgd")

# Steps already taken by the released T5 1.1 LM-adapted checkpoints
# (`checkpoint_1100000`), which T5X restores along with the weights.
T5_1_1_LM100K_STEPS = 1_100_000

# Per-optimizer options (the **options of `make_optimizer`) and their defaults.
# Adafactor's are optax.adafactor's argument names with prompt-tuning's values
# (`configs/models/t5_1_1_prompt.gin`); `momentum` is T5X's `beta1`.
_OPTIONS: Mapping[str, Mapping[str, Any]] = pytypes.MappingProxyType({
    "adafactor": pytypes.MappingProxyType({
        "decay_rate": 0.8,
        "decay_offset": 0,
        "multiply_by_parameter_scale": False,
        "clipping_threshold": 1.0,
        "factored": True,
        "min_dim_size_to_factor": 128,
        "momentum": None,
        "eps": 1e-30,
    }),
    "adamw": pytypes.MappingProxyType({
        "b1": 0.9,
        "b2": 0.999,
        "eps": 1e-8,
        "eps_root": 0.0,
        "mu_dtype": None,
        "nesterov": False,
    }),
    "sgd": pytypes.MappingProxyType({
        "momentum": None,
        "nesterov": False,
    }),
})

LearningRate = float | optax.Schedule


def make_optimizer(*, name: str = "adafactor", learning_rate: LearningRate,
                   weight_decay: float = 0.0, clip_norm: float | None = None,
                   accumulation_steps: int = 1,
                   **options: Any) -> optax.GradientTransformation:
  """Builds the optimizer for the trainable tree (see the module docstring).

  Args:
    name: 'adafactor', 'adamw' or 'sgd'.
    learning_rate: a positive float or an optax schedule (`schedules.py`),
      evaluated at the optimizer-update count.
    weight_decay: decay rate, with the optimizer's convention (module
      docstring); 0 disables it.
    clip_norm: if set, gradients (after accumulation) are scaled so their
      global L2 norm is at most this.
    accumulation_steps: microbatches per optimizer update (`optax.MultiSteps`).
    **options: optimizer-specific settings, see `_OPTIONS` for the names and
      defaults (e.g. adafactor `decay_rate`, `factored`; adamw `b1`, `b2`).

  Returns:
    The gradient transformation; `init` it on the trainable params only.

  Raises:
    ValueError: unknown name or option, or an out-of-range value.
  """
  if name not in _OPTIONS:
    raise ValueError(f"make_optimizer: unknown optimizer {name!r}; expected "
                     f"one of {', '.join(OPTIMIZERS)}.")
  unknown = sorted(set(options) - set(_OPTIONS[name]))
  if unknown:
    raise ValueError(f"make_optimizer: unknown option(s) {', '.join(unknown)} "
                     f"for {name!r}; allowed: {', '.join(_OPTIONS[name])}.")
  _check_learning_rate(learning_rate)
  _check_number("weight_decay", weight_decay, allow_zero=True)
  if clip_norm is not None:
    _check_number("clip_norm", clip_norm, allow_zero=False)
  if (isinstance(accumulation_steps, bool)
      or not isinstance(accumulation_steps, int) or accumulation_steps < 1):
    raise ValueError("make_optimizer: accumulation_steps must be an int >= 1, "
                     f"got {accumulation_steps!r}.")
  opts = {**_OPTIONS[name], **options}
  tx = _BUILDERS[name](learning_rate, float(weight_decay), opts)
  if clip_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(float(clip_norm)), tx)
  if accumulation_steps > 1:
    tx = optax.MultiSteps(
        tx, every_k_schedule=accumulation_steps).gradient_transformation()
  return tx


def adafactor_paper_settings(*, pretraining_steps: int = T5_1_1_LM100K_STEPS,
                             learning_rate: float = 0.3,
                             accumulation_steps: int = 1) -> dict[str, Any]:
  """The `make_optimizer` arguments of `adafactor_paper` (to record them)."""
  if (isinstance(pretraining_steps, bool)
      or not isinstance(pretraining_steps, int) or pretraining_steps < 0):
    raise ValueError("adafactor_paper: pretraining_steps must be an int >= 0, "
                     f"got {pretraining_steps!r}.")
  return dict(
      name="adafactor", learning_rate=learning_rate, weight_decay=1e-5,
      accumulation_steps=accumulation_steps, decay_rate=0.8,
      decay_offset=-pretraining_steps, multiply_by_parameter_scale=False,
      clipping_threshold=1.0, factored=True, min_dim_size_to_factor=128,
      momentum=None, eps=1e-30)


def adafactor_paper(*, pretraining_steps: int = T5_1_1_LM100K_STEPS,
                    accumulation_steps: int = 1, learning_rate: float = 0.3
                    ) -> optax.GradientTransformation:
  """Adafactor exactly as Lester et al. (2021) and prompt-tuning ran it.

  Constant learning rate 0.3, second-moment decay exponent 0.8, weight decay
  1e-5 (not scaled by the rate), no parameter scaling, update clipping at RMS
  1.0, no momentum, eps 1e-30, the T5X factoring heuristic (the P=100 prompt is
  not factored), no gradient clipping.

  The decay of the second moment is `1 - t**-0.8` at optimizer step t. T5X
  restores the step counter of the initial checkpoint and prompt-tuning sets
  `step_offset = 0`, so in the paper t started at the checkpoint's step
  (1.1M for the LM-adapted T5 1.1 checkpoints; TRAIN_STEPS "includes
  pretrain steps"), i.e. the decay was ~0.99999 from the first prompt update
  and Adafactor's update clipping was active throughout. Our optimizer count
  starts at 0, so the offset is applied here.

  Args:
    pretraining_steps: step counter of the backbone checkpoint; 0 gives a
      fresh Adafactor whose decay starts at 0 (`1 - 1**-0.8`).
    accumulation_steps: microbatches per update; changes no result when the
      paper's batch of 32 is split into equal microbatches.
    learning_rate: the constant rate (the paper's 0.3 by default).

  Returns:
    The gradient transformation; `init` it on the trainable params only.
  """
  return make_optimizer(**adafactor_paper_settings(
      pretraining_steps=pretraining_steps, learning_rate=learning_rate,
      accumulation_steps=accumulation_steps))


def assert_no_large_leaves(tree: types.PyTree, max_elements: int) -> None:
  """Raises if any leaf of `tree` has more than `max_elements` elements.

  Meant for optimizer states: with the trainable-only rule no leaf can be
  larger than the largest trainable param, so a backbone-sized leaf means
  `init` was given frozen params. Works on arrays and `jax.ShapeDtypeStruct`s
  (e.g. `jax.eval_shape(opt.init, params)`).

  Args:
    tree: an optimizer state (any pytree).
    max_elements: largest allowed leaf size.

  Raises:
    ValueError: listing every offending leaf path and shape on one line.
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  too_big = []
  for path, leaf in flat:
    shape = tuple(getattr(leaf, "shape", ()))
    if math.prod(shape) > max_elements:
      too_big.append(f"{jax.tree_util.keystr(path)} {list(shape)}")
  if too_big:
    raise ValueError(
        f"optimizer state has {len(too_big)} leaf/leaves larger than "
        f"{max_elements} elements: {'; '.join(too_big)} (init the optimizer "
        "on the trainable params only).")


def _adafactor(learning_rate: LearningRate, weight_decay: float,
               opts: Mapping[str, Any]) -> optax.GradientTransformation:
  return optax.adafactor(
      learning_rate=learning_rate,
      weight_decay_rate=weight_decay or None, **opts)


def _adamw(learning_rate: LearningRate, weight_decay: float,
           opts: Mapping[str, Any]) -> optax.GradientTransformation:
  return optax.adamw(learning_rate=learning_rate, weight_decay=weight_decay,
                     **opts)


def _sgd(learning_rate: LearningRate, weight_decay: float,
         opts: Mapping[str, Any]) -> optax.GradientTransformation:
  sgd = optax.sgd(learning_rate=learning_rate, **opts)
  if not weight_decay:
    return sgd
  return optax.chain(optax.add_decayed_weights(weight_decay), sgd)


_BUILDERS: Mapping[str, Callable[..., optax.GradientTransformation]] = {
    "adafactor": _adafactor,
    "adamw": _adamw,
    "sgd": _sgd,
}


def _check_learning_rate(learning_rate: LearningRate) -> None:
  if callable(learning_rate):
    return
  _check_number("learning_rate", learning_rate, allow_zero=False)


def _check_number(arg: str, value: Any, allow_zero: bool) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"make_optimizer: {arg} must be a number, got {value!r}.")
  if value < 0 or (value == 0 and not allow_zero):
    bound = ">= 0" if allow_zero else "> 0"
    raise ValueError(f"make_optimizer: {arg} must be {bound}, got {value!r}.")
