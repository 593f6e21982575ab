"""Full fine-tuning as a `Method`: the whole backbone is trainable.

The reference point parameter-efficient methods are measured against, and
MetaICL's all-weights meta-training. The trainable tree is
`{'backbone': params}` with the backbone's logical axes (so weights and
their optimizer state shard like the frozen backbone would), the frozen
tree is `{}`, and `bind` runs the trainable weights with no seam. The
loaded weights are handed over to the train state (which the trainer
donates). No small artifact: the checkpoint is the artifact.
"""

import dataclasses

from prompt_jax import models
from prompt_jax import partitioning
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.methods import base
from prompt_jax.types import PRNGKey, PyTree


@dataclasses.dataclass(frozen=True)
class FullFinetune(base.Method):
  """Every backbone weight trains."""
  name = "full_finetune"
  artifact_suffix = None
  identity_at_init = True  # Starts at the loaded weights.

  def abstract_trainable(self, lm: models.LanguageModel) -> PyTree:
    abstract = partitioning.abstract_variables(lm.module, lm.sample_inputs)
    return {"backbone": abstract["params"]}

  def init_trainable(self, rng: PRNGKey, lm: models.LanguageModel,
                     params: PyTree, tokenizer) -> PyTree:
    """The loaded weights as the initial trainable tree (`rng` unused)."""
    del rng, lm, tokenizer
    if params is None:
      raise ValueError("full_finetune: no backbone weights to train")
    return {"backbone": params}

  def frozen_params(self, params: PyTree) -> PyTree:
    del params
    return {}

  def consumes_backbone(self) -> bool:
    return True

  def bind(self, lm: models.LanguageModel, trainable: PyTree,
           frozen: PyTree) -> tuple[PyTree, seams_lib.Seams]:
    del lm, frozen
    return trainable["backbone"], seams_lib.Seams()
