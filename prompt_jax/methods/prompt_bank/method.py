"""`PromptBank`: one [P, H] soft prompt per task, trained on a mixture.

Trainable tree: `{'bank': {'prompts': [K, P, H]}}`, logical axes (None,
PROMPT, PROMPT_EMBED), K = len(tasks). Rows choose their prompt through
pseudo-token ids at the start of their input (`rows.prepend`): `bind`
returns a `pseudo_token_fn` seam that replaces id `-1 - (k P + i)` by row i
of prompt k. A row without pseudo ids runs the bare backbone, so a mixed
batch may also hold rows of tasks without a prompt. Each prompt starts from
the same initializer spec as prompt tuning's (`init`), drawn per task.
The artifact is the bank, `prompt_bank/bank_step_<N>.npz`; `prompt(k)`
gives one task's plain [P, H] prompt for `PromptTuning`.
"""

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_jax import models
from prompt_jax import types
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.methods import base
from prompt_jax.methods.p_tuning import method as p_tuning
from prompt_jax.methods.prompt_tuning import method as prompt_tuning
from prompt_jax.methods.prompt_tuning import specs
from prompt_jax.types import Array, PRNGKey, PyTree

_AXES = (None, types.PROMPT, types.PROMPT_EMBED)


@dataclasses.dataclass(frozen=True)
class PromptBank(base.Method):
  """One soft prompt of length P per task.

  Attributes:
    tasks: the task names, in prompt order (index k = `tasks[k]`).
    length: P.
    init: prompt initializer spec (`prompt_tuning.specs`).
  """
  tasks: Sequence[str] = ()
  length: int = 20
  init: specs.InitSpec = specs.sampled_vocab()

  name = "prompt_bank"
  artifact_dir = "prompt_bank"
  artifact_stem = "bank"

  def __post_init__(self):
    object.__setattr__(self, "tasks", tuple(self.tasks))
    if not self.tasks:
      raise ValueError("prompt_bank: name the tasks (one prompt each)")
    if len(set(self.tasks)) != len(self.tasks):
      raise ValueError(f"prompt_bank: repeated task names in {self.tasks}")
    if not isinstance(self.length, int) or self.length < 1:
      raise ValueError(f"prompt_bank: length must be >= 1, got "
                       f"{self.length!r}")

  def index(self, task: str) -> int:
    """The prompt index of `task`."""
    if task not in self.tasks:
      raise ValueError(f"prompt_bank: no prompt for task {task!r}; the bank "
                       f"holds {list(self.tasks)}")
    return self.tasks.index(task)

  def abstract_trainable(self, lm: models.LanguageModel) -> PyTree:
    shape = (len(self.tasks), self.length, lm.config.emb_dim)
    return {"bank": {"prompts": nn.LogicallyPartitioned(
        jax.ShapeDtypeStruct(shape, jnp.float32), names=_AXES)}}

  def init_trainable(self, rng: PRNGKey, lm: models.LanguageModel,
                     params: PyTree, tokenizer: Any) -> PyTree:
    one = prompt_tuning.PromptTuning(self.length, self.init)
    prompts = [one.init_trainable(k, lm, params, tokenizer)["prompt"]["prompt"]
               for k in jax.random.split(rng, len(self.tasks))]
    return {"bank": {"prompts": jnp.stack(prompts).astype(jnp.float32)}}

  def prompt(self, trainable: PyTree, task: str | int) -> Array:
    """The [P, H] prompt of one task (name or index)."""
    k = self.index(task) if isinstance(task, str) else task
    return trainable["bank"]["prompts"][k]

  def bind(self, lm: models.LanguageModel, trainable: PyTree,
           frozen: PyTree) -> tuple[PyTree, seams_lib.Seams]:
    del lm
    prompts = trainable["bank"]["prompts"]
    table = prompts.reshape(-1, prompts.shape[-1])
    return frozen, seams_lib.Seams(
        pseudo_token_fn=p_tuning.pseudo_token_fn(table))

  def settings(self) -> dict[str, Any]:
    return {"method": self.name, "bank_tasks": list(self.tasks),
            "prompt_length": self.length}
