"""Full fine-tuning: every backbone weight trainable, no prompt.

The reference point prompt tuning is measured against (issue 5's "within 3
points of full fine-tuning"), and MetaICL's published all-weights
meta-training. `FullFinetuneModel` wraps a prompt model (T5 or decoder) so
the `Trainer`, checkpoints and entry points work unchanged: the trainable
tree is `{'backbone': params}` (logical axes as the backbone's, so the
weights and their optimizer state shard like the frozen backbone would), the
frozen tree is empty `{}`, and every computation calls the wrapped model with
no prompt (`trainable=None`) on the trainable weights.

Example:
  inner = decoder_model.PromptDecoderModel(cfg, prompt_length=1)
  model = FullFinetuneModel(inner, loaded_params, sample_inputs)
  trainer = Trainer(model, optax.adamw(1e-5), mesh, rules, {})
  state = trainer.init_state(rng)   # takes `loaded_params` over
  state, metrics = trainer.train_step(state, {}, batch, rng)
"""

from typing import Any, Mapping, Sequence

from prompt_jax import partitioning
from prompt_jax.types import Array, PRNGKey, PyTree


class FullFinetuneModel:
  """All weights of a backbone as the trainable tree.

  Args:
    inner: a `PromptT5Model` or `PromptDecoderModel`; only its backbone,
      loss and scoring are used (its prompt never is).
    params: the loaded backbone weights (unboxed). `init_trainable` hands
      them to the train state, which the trainer donates: do not use this
      tree afterwards.
    sample_inputs: positional inputs for `inner.module.init` (shapes only),
      as `partitioning.abstract_variables` takes them.
  """

  def __init__(self, inner: Any, params: PyTree,
               sample_inputs: Sequence[Any] | None = None):
    self.inner = inner
    self.config = inner.config
    self.loss_cfg = inner.loss_cfg
    self.module = inner.module
    self.prompt_length = 0
    self._params = params
    self._sample_inputs = sample_inputs

  def abstract_trainable(self) -> PyTree:
    """Boxed abstract `{'backbone': params}` (logical axes, no allocation)."""
    abstract = partitioning.abstract_variables(self.module,
                                               self._sample_inputs)
    return {"backbone": abstract["params"]}

  def init_trainable(self, rng: PRNGKey) -> PyTree:
    """The loaded weights as the initial trainable tree (`rng` unused)."""
    del rng
    if self._params is None:
      raise ValueError("FullFinetuneModel.init_trainable: the backbone "
                       "weights were already handed to a train state")
    params, self._params = self._params, None
    return {"backbone": params}

  def prompt_of(self, trainable: PyTree) -> None:
    """No prompt: full fine-tuning exports no prompt file."""
    del trainable
    return None

  def loss_fn(self, trainable: PyTree, frozen: PyTree,
              batch: Mapping[str, Array], rng: PRNGKey | None = None,
              enable_dropout: bool = False
              ) -> tuple[Array, dict[str, Array]]:
    """The wrapped model's loss on the trainable weights (`frozen` is {})."""
    del frozen
    return self.inner.loss_fn(None, trainable["backbone"], batch, rng,
                              enable_dropout)

  def score_batch(self, trainable: PyTree, frozen: PyTree, *args,
                  **kwargs) -> tuple[Array, Array]:
    """The wrapped model's `score_batch` on the trainable weights."""
    del frozen
    return self.inner.score_batch(None, trainable["backbone"], *args,
                                  **kwargs)

  def apply_kwargs(self, trainable: PyTree) -> dict[str, Any]:
    del trainable
    return {}

