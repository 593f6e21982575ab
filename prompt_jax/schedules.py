"""Learning-rate schedules, as optax schedules (step -> learning rate).

`optim.make_optimizer` takes either a float or one of these. The step a
schedule sees is the optimizer's own update counter: with gradient
accumulation it counts optimizer updates, not microbatches (see `optim.py`).
Every schedule is a pure jnp function of the step, safe under `jax.jit`, and
returns a float32 scalar.

Schedules (values at integer step s, base learning rate b, warmup w, total n):

  constant:        b
  warmup_constant: b * min(1, s / w)                 (0 at step 0)
  warmup_cosine:   b * s / w for s < w, then
                   e + (b - e) * (1 + cos(pi * (s - w) / (n - w))) / 2,
                   and e for s >= n (e = end_lr)
  rsqrt:           b / sqrt(max(s, w))               (T5's inverse square root;
                   base 1.0 and w=10_000 is T5 pre-training's schedule)

Lester et al. (2021) prompt-tune with `constant` at 0.3.

`make_schedule(name, ...)` is the gin-friendly entry point; it rejects unknown
names, missing arguments and arguments the schedule would ignore, each with a
one-line message.
"""

from typing import Callable

import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "warmup_constant", "warmup_cosine", "rsqrt")


def _step(count) -> jnp.ndarray:
  return jnp.asarray(count, jnp.float32)


def constant(*, base_lr: float) -> optax.Schedule:
  """Returns `base_lr` at every step."""
  base_lr = _check_lr("base_lr", base_lr)

  def schedule(count):
    del count
    return jnp.asarray(base_lr, jnp.float32)

  return schedule


def warmup_constant(*, base_lr: float, warmup_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `base_lr` over `warmup_steps`, then constant."""
  base_lr = _check_lr("base_lr", base_lr)
  warmup = _check_steps("warmup_steps", warmup_steps, minimum=1)

  def schedule(count):
    return base_lr * jnp.minimum(1.0, _step(count) / warmup)

  return schedule


def warmup_cosine(*, base_lr: float, warmup_steps: int, total_steps: int,
                  end_lr: float = 0.0) -> optax.Schedule:
  """Linear warmup to `base_lr`, then half a cosine down to `end_lr`.

  Args:
    base_lr: peak learning rate, reached at step `warmup_steps`.
    warmup_steps: length of the linear warmup (0: start at the peak).
    total_steps: step at which the cosine reaches `end_lr` (counted from 0,
      warmup included); the rate stays at `end_lr` afterwards.
    end_lr: final learning rate.

  Returns:
    The schedule.
  """
  base_lr = _check_lr("base_lr", base_lr)
  end_lr = _check_lr("end_lr", end_lr, allow_zero=True)
  warmup = _check_steps("warmup_steps", warmup_steps, minimum=0)
  total = _check_steps("total_steps", total_steps, minimum=warmup + 1)
  decay_len = float(total - warmup)

  def schedule(count):
    step = _step(count)
    warm = base_lr * step / max(warmup, 1)
    frac = jnp.clip((step - warmup) / decay_len, 0.0, 1.0)
    cos = end_lr + (base_lr - end_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return jnp.where(step < warmup, warm, cos)

  return schedule


def rsqrt(*, base_lr: float, warmup_steps: int) -> optax.Schedule:
  """T5's inverse square root: `base_lr / sqrt(max(step, warmup_steps))`.

  Constant at `base_lr / sqrt(warmup_steps)` during warmup (T5 has no ramp).
  """
  base_lr = _check_lr("base_lr", base_lr)
  warmup = _check_steps("warmup_steps", warmup_steps, minimum=1)

  def schedule(count):
    return base_lr * jnp.reciprocal(jnp.sqrt(jnp.maximum(_step(count),
                                                         float(warmup))))

  return schedule


def make_schedule(name: str, *, base_lr: float, warmup_steps: int = 0,
                  total_steps: int | None = None,
                  end_lr: float | None = None) -> optax.Schedule:
  """Builds the schedule called `name` (one of `SCHEDULES`).

  Arguments that `name` does not use must keep their defaults: a warmup or
  total length that would be silently ignored is an error.

  Args:
    name: 'constant', 'warmup_constant', 'warmup_cosine' or 'rsqrt'.
    base_lr: base (peak) learning rate.
    warmup_steps: warmup length; required (>= 1) by 'warmup_constant' and
      'rsqrt', optional for 'warmup_cosine', not allowed for 'constant'.
    total_steps: required by 'warmup_cosine' only.
    end_lr: final rate of 'warmup_cosine' (default 0.0); others reject it.

  Returns:
    An optax schedule (step -> float32 learning rate).

  Raises:
    ValueError: unknown name, missing or unused argument, or a bad value.
  """
  used = {"warmup_steps": warmup_steps != 0, "total_steps": total_steps
          is not None, "end_lr": end_lr is not None}
  takes = _TAKES.get(name)
  if takes is None:
    raise ValueError(f"make_schedule: unknown schedule {name!r}; expected one "
                     f"of {', '.join(SCHEDULES)}.")
  unused = [arg for arg, given in used.items() if given and arg not in takes]
  if unused:
    raise ValueError(f"make_schedule: schedule {name!r} does not use "
                     f"{', '.join(unused)}; it takes base_lr"
                     + "".join(f", {t}" for t in takes) + ".")
  if name == "warmup_cosine" and total_steps is None:
    raise ValueError("make_schedule: schedule 'warmup_cosine' needs "
                     "total_steps.")
  if name in ("warmup_constant", "rsqrt") and warmup_steps == 0:
    raise ValueError(f"make_schedule: schedule {name!r} needs warmup_steps "
                     ">= 1.")
  kwargs = {"warmup_steps": warmup_steps, "total_steps": total_steps,
            "end_lr": end_lr}
  kwargs = {k: v for k, v in kwargs.items() if k in takes and v is not None}
  return _BUILDERS[name](base_lr=base_lr, **kwargs)


_TAKES = {
    "constant": (),
    "warmup_constant": ("warmup_steps",),
    "warmup_cosine": ("warmup_steps", "total_steps", "end_lr"),
    "rsqrt": ("warmup_steps",),
}
_BUILDERS: dict[str, Callable[..., optax.Schedule]] = {
    "constant": constant,
    "warmup_constant": warmup_constant,
    "warmup_cosine": warmup_cosine,
    "rsqrt": rsqrt,
}


def _check_lr(arg: str, value, allow_zero: bool = False) -> float:
  """Returns `value` as a float, or raises if not a (positive) number."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"schedules: {arg} must be a number, got {value!r}.")
  if value < 0 or (value == 0 and not allow_zero):
    bound = ">= 0" if allow_zero else "> 0"
    raise ValueError(f"schedules: {arg} must be {bound}, got {value!r}.")
  return float(value)


def _check_steps(arg: str, value, minimum: int) -> int:
  """Returns `value` as an int, or raises if not an int >= `minimum`."""
  if isinstance(value, bool) or not isinstance(value, int):
    raise ValueError(f"schedules: {arg} must be an int, got {value!r}.")
  if value < minimum:
    raise ValueError(f"schedules: {arg} must be >= {minimum}, got {value}.")
  return value
