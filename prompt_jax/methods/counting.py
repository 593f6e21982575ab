"""How many parameters a method trains, next to the backbone it runs on.

`count_trainable(method, lm)` works on abstract trees (shapes only, nothing
allocated), so it runs for full-size backbones without their weights. Its
line is PEFT's `print_trainable_parameters()` format: "all params" is every
parameter the tuned model holds (the frozen backbone plus the method's),
the percentage is trainable / all.
"""

import dataclasses
import math

import flax
import jax

from prompt_jax import models
from prompt_jax import partitioning
from prompt_jax.methods import base
from prompt_jax.types import PyTree


@dataclasses.dataclass(frozen=True)
class TrainableCount:
  """Parameter counts of one method on one backbone.

  Attributes:
    trainable: elements of the method's trainable tree.
    frozen: elements of the frozen tree (the backbone less what the method
      takes over).
    backbone: elements of the whole backbone.
  """
  trainable: int
  frozen: int
  backbone: int

  @property
  def all(self) -> int:
    return self.trainable + self.frozen

  @property
  def percent(self) -> float:
    """trainable / all, in percent (PEFT's `trainable%`)."""
    return 100.0 * self.trainable / self.all

  def line(self, name: str) -> str:
    return (f"{name}: trainable params: {self.trainable:,} || all params: "
            f"{self.all:,} || trainable%: {self.percent:.4f}")


def _size(tree: PyTree) -> int:
  return sum(math.prod(x.shape)
             for x in jax.tree.leaves(flax.core.meta.unbox(tree)))


def count_trainable(method: base.Method,
                    lm: models.LanguageModel) -> TrainableCount:
  """Counts of `method` on `lm` from abstract shapes (no allocation)."""
  backbone = flax.core.meta.unbox(partitioning.abstract_variables(
      lm.module, lm.sample_inputs)["params"])
  return TrainableCount(trainable=_size(method.abstract_trainable(lm)),
                        frozen=_size(method.frozen_params(backbone)),
                        backbone=_size(backbone))
