"""The `Method` interface and `TunedModel`: a language model plus a method.

A method owns only its parameters (the trainable tree) and says how they
enter the frozen backbone: `bind(lm, trainable, frozen)` returns the params
to run and the `Seams` to run them with. The backbone owns every insertion
point (`backbones.seams`); a method never edits the network.

`TunedModel(lm, method, ...)` is what the trainer, checkpoints and every
entry point hold: pure functions of `(trainable, frozen)` that bind the
method and call the language model, whatever the method is. Gradients are
taken with respect to `trainable` only; `frozen` enters as a constant, so no
backbone gradient or optimizer state exists unless the method makes the
backbone itself trainable (full fine-tuning: `frozen` is then `{}`).

`trainable=None` everywhere means the bare backbone (zero-shot scoring).
"""

import abc
import os
import pathlib
import re
from typing import Any, ClassVar, Mapping

import flax
import jax

from prompt_jax import models
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.methods import artifacts
from prompt_jax.types import Array, PRNGKey, PyTree


class Method(abc.ABC):
  """A parameter-efficient (or full) tuning method.

  Class attributes:
    name: the registry key (`methods.METHODS`).
    artifact_dir: run-directory folder of the exported artifacts.
    artifact_stem / artifact_suffix: artifact file names are
      `<artifact_dir>/<stem>_step_<N><suffix>`; `artifact_suffix` None
      means the method exports no small artifact (the checkpoint is it).
    adds_input_slots: `bind` inserts slots into the input (soft prompts).
    identity_at_init: `init_trainable`'s tree runs exactly the bare
      backbone (LoRA's B = 0, full fine-tuning's loaded weights): losses
      and scores equal `trainable=None` bit for bit before training.
  """
  name: ClassVar[str]
  artifact_dir: ClassVar[str] = "artifacts"
  artifact_stem: ClassVar[str] = "trainable"
  artifact_suffix: ClassVar[str | None] = ".npz"
  adds_input_slots: ClassVar[bool] = False  # Its embed seam adds slots.
  identity_at_init: ClassVar[bool] = False

  @abc.abstractmethod
  def abstract_trainable(self, lm: models.LanguageModel) -> PyTree:
    """Boxed abstract trainable tree (shapes + logical axes, no arrays)."""

  @abc.abstractmethod
  def init_trainable(self, rng: PRNGKey, lm: models.LanguageModel,
                     params: PyTree, tokenizer: Any) -> PyTree:
    """The initial (unboxed) trainable tree.

    Args:
      rng: init key.
      lm: the language model.
      params: the loaded backbone weights (e.g. for vocabulary-sampled
        prompt inits).
      tokenizer: the backbone's tokenizer, or None.
    """

  @abc.abstractmethod
  def bind(self, lm: models.LanguageModel, trainable: PyTree,
           frozen: PyTree) -> tuple[PyTree, seams_lib.Seams]:
    """(params to run, seams) for one forward pass."""

  def bind_train(self, lm: models.LanguageModel, trainable: PyTree,
                 frozen: PyTree, rng: PRNGKey) -> tuple[PyTree,
                                                        seams_lib.Seams]:
    """`bind` for a training step with dropout on; `rng` is this step's key
    for the method's own dropout (LoRA's, prefix dropout). Default: `bind`
    (the method has no dropout)."""
    del rng
    return self.bind(lm, trainable, frozen)

  def check(self, lm: models.LanguageModel) -> None:
    """Raises a one-line ValueError if the method cannot run on `lm`."""
    del lm

  def frozen_params(self, params: PyTree) -> PyTree:
    """The frozen tree given the loaded backbone (all of it by default)."""
    return params

  def inference_method(self) -> "Method":
    """The method that runs this one's artifact (what eval, infer and
    classify build): itself, unless training reparameterises what the
    artifact stores plainly (prefix tuning's MLP, P-tuning's encoder)."""
    return self

  def consumes_backbone(self) -> bool:
    """True if `init_trainable` takes the backbone over (the trainer
    donates it, so the caller must not use `params` afterwards)."""
    return False

  def settings(self) -> dict[str, Any]:
    """JSON-able settings that define the trainable tree (resume checks)."""
    return {"method": self.name}

  def save_artifact(self, trainable: PyTree, path: str | os.PathLike
                    ) -> pathlib.Path:
    """Writes the small artifact of `trainable` to `path` atomically
    (default: every leaf in one `.npz`, keys are '/'-joined paths)."""
    return artifacts.save_tree(path, trainable)

  def load_artifact(self, path: str | os.PathLike,
                    lm: models.LanguageModel) -> PyTree:
    """Reads an artifact written by `save_artifact`, checked against
    `abstract_trainable(lm)` (one-line error naming the file and key)."""
    return artifacts.load_tree(path, abstract_values(self, lm))

  def artifact_path(self, model_dir: str | os.PathLike, step: int
                    ) -> pathlib.Path | None:
    """Where the artifact of `step` goes (None: no artifact)."""
    if self.artifact_suffix is None:
      return None
    return (pathlib.Path(model_dir) / self.artifact_dir /
            f"{self.artifact_stem}_step_{step}{self.artifact_suffix}")

  def latest_artifact(self, model_dir: str | os.PathLike) -> pathlib.Path:
    """The artifact of the highest saved step under `model_dir`."""
    if self.artifact_suffix is None:
      raise ValueError(f"{self.name} exports no artifact file; its trained "
                       "weights are in the run's checkpoints/")
    folder = pathlib.Path(model_dir) / self.artifact_dir
    pattern = re.compile(rf"{re.escape(self.artifact_stem)}_step_(\d+)"
                         rf"{re.escape(self.artifact_suffix or '')}$")
    found = [(int(m.group(1)), p) for p in folder.glob("*")
             if (m := pattern.match(p.name))]
    if not found:
      raise FileNotFoundError(
          f"no {self.artifact_stem}_step_*{self.artifact_suffix} under "
          f"{folder}; train first or pass an artifact file")
    return max(found)[1]


def abstract_values(method: Method, lm: models.LanguageModel) -> PyTree:
  """Unboxed `jax.ShapeDtypeStruct` tree of the method's trainable tree."""
  return flax.core.meta.unbox(method.abstract_trainable(lm))


class TunedModel:
  """A language model with a method: what the trainer and entry points run.

  Args:
    lm: an `EncoderDecoderLM` or `DecoderOnlyLM`.
    method: the tuning method.
    params: the loaded backbone (for `init_trainable`; with a method that
      consumes the backbone it is released after the first init).
    tokenizer: the backbone's tokenizer (for vocabulary-based inits).
  """

  def __init__(self, lm: models.LanguageModel, method: Method,
               params: PyTree = None, tokenizer: Any = None):
    method.check(lm)
    self.lm, self.method = lm, method
    self._params, self.tokenizer = params, tokenizer

  # Attributes of the language model that callers read.
  config = property(lambda self: self.lm.config)
  module = property(lambda self: self.lm.module)
  loss_cfg = property(lambda self: self.lm.loss_cfg)
  family = property(lambda self: self.lm.family)
  add_bos = property(lambda self: self.lm.add_bos)

  def abstract_trainable(self) -> PyTree:
    """Boxed abstract trainable tree (logical axes, no allocation)."""
    return self.method.abstract_trainable(self.lm)

  def init_trainable(self, rng: PRNGKey) -> PyTree:
    """The method's initial trainable tree (eager)."""
    if self._params is None and self.method.consumes_backbone():
      raise ValueError(f"{self.method.name}: the backbone weights were "
                       "already handed to a train state")
    trainable = self.method.init_trainable(rng, self.lm, self._params,
                                           self.tokenizer)
    if self.method.consumes_backbone():
      self._params = None
    return trainable

  def inserts_slots(self, trainable: PyTree | None) -> bool:
    """True if running `trainable` adds input slots (a soft prompt)."""
    return trainable is not None and self.method.adds_input_slots

  def bind(self, trainable: PyTree | None, frozen: PyTree
           ) -> tuple[PyTree, seams_lib.Seams]:
    """(params, seams) to run; `trainable=None`: the bare backbone."""
    if trainable is None:
      return frozen, seams_lib.Seams()
    return self.method.bind(self.lm, trainable, frozen)

  def loss_fn(self, trainable: PyTree, frozen: PyTree,
              batch: Mapping[str, Array], rng: PRNGKey | None = None,
              enable_dropout: bool = False) -> tuple[Array, dict]:
    """Scalar loss and summed metrics; differentiate w.r.t. `trainable`.
    With dropout on, the method binds with its own key (`bind_train`)."""
    if enable_dropout and rng is not None and trainable is not None:
      params, seams = self.method.bind_train(
          self.lm, trainable, frozen, jax.random.fold_in(rng, 1))
    else:
      params, seams = self.bind(trainable, frozen)
    return self.lm.loss_fn(params, batch, seams=seams, rng=rng,
                           enable_dropout=enable_dropout)

  def score_batch(self, trainable: PyTree | None, frozen: PyTree,
                  inputs: Array, targets: Array, **kwargs
                  ) -> tuple[Array, Array]:
    """(scores [B], token_scores [B, To]) of targets [B, To] given inputs
    [B, Ti]; `kwargs` as `lm.score` (masks, `context`)."""
    params, seams = self.bind(trainable, frozen)
    return self.lm.score(params, inputs, targets, seams=seams, **kwargs)

  def next_token_log_probs(self, frozen: PyTree, inputs: Array,
                           input_mask: Array, context: Any = None,
                           trainable: PyTree | None = None) -> Array:
    """log p(next token) [B, V] after inputs [B, Ti] (see `lm`)."""
    params, seams = self.bind(trainable, frozen)
    return self.lm.next_token_log_probs(params, inputs, input_mask,
                                        seams=seams, context=context)

  def encode_context(self, trainable: PyTree | None, frozen: PyTree,
                     tokens: Array) -> models.ContextCache:
    """Cache of a shared context [1, C] with the method in place."""
    params, seams = self.bind(trainable, frozen)
    return self.lm.encode_context(params, tokens, seams=seams)

  def generate(self, trainable: PyTree | None, frozen: PyTree,
               inputs: Array, **kwargs) -> tuple[Array, Array]:
    """(tokens [B, L], scores [B]) generated after inputs [B, Ti]."""
    params, seams = self.bind(trainable, frozen)
    return self.lm.generate(params, inputs, seams=seams, **kwargs)
