"""`Compose`: several methods trained together (e.g. prompt + LoRA).

The trainable tree is `{<method name>: <that method's tree>}`. `bind` runs
the methods in order, each on the params the previous one returned (so a
method that replaces backbone weights, LN-tuning's norm scales, composes
with one that adds seams), and merges their seams (`merge.merge`: two
methods claiming one insertion point is a one-line error, raised when the
`TunedModel` is built). The frozen tree is what every method leaves frozen.
The artifact is one `.npz` of the whole tree (keys '<method>/<path>'): a
member's own artifact format (a prompt's `.npy`, P-tuning's exported
table) is not used inside a composition.
"""

import dataclasses
from typing import Any, Sequence

import flax
import jax

from prompt_jax import models
from prompt_jax import partitioning
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.methods import base
from prompt_jax.methods.compose import merge
from prompt_jax.types import PRNGKey, PyTree


@dataclasses.dataclass(frozen=True)
class Compose(base.Method):
  """The methods in `methods`, trained together.

  Attributes:
    methods: two or more methods with distinct names.
  """
  methods: Sequence[base.Method] = ()

  name = "compose"
  artifact_dir = "compose"
  artifact_stem = "compose"

  def __post_init__(self):
    object.__setattr__(self, "methods", tuple(self.methods))
    names = [m.name for m in self.methods]
    if len(names) < 2:
      raise ValueError(f"compose needs two or more methods, got {names}")
    if len(set(names)) != len(names):
      raise ValueError(f"compose: each method may appear once, got {names}")
    if sum(m.consumes_backbone() for m in self.methods) and len(names) > 1:
      raise ValueError("compose: full_finetune trains the whole backbone; "
                       f"it does not compose with {names}")

  @property
  def adds_input_slots(self) -> bool:  # type: ignore[override]
    return any(m.adds_input_slots for m in self.methods)

  @property
  def identity_at_init(self) -> bool:  # type: ignore[override]
    return all(m.identity_at_init for m in self.methods)

  def check(self, lm: models.LanguageModel) -> None:
    """Each member's check, then one abstract `bind` (no arrays): seams
    claimed twice fail here, with one line."""
    for m in self.methods:
      m.check(lm)
    params = partitioning.abstract_variables(lm.module,
                                             lm.sample_inputs)["params"]
    jax.eval_shape(lambda t, f: (self.bind(lm, t, f), 0)[1],
                   base.abstract_values(self, lm),
                   self.frozen_params(flax.core.meta.unbox(params)))

  def abstract_trainable(self, lm: models.LanguageModel) -> PyTree:
    return {m.name: m.abstract_trainable(lm) for m in self.methods}

  def init_trainable(self, rng: PRNGKey, lm: models.LanguageModel,
                     params: PyTree, tokenizer: Any) -> PyTree:
    keys = jax.random.split(rng, len(self.methods))
    return {m.name: m.init_trainable(k, lm, params, tokenizer)
            for k, m in zip(keys, self.methods)}

  def frozen_params(self, params: PyTree) -> PyTree:
    for m in self.methods:
      params = m.frozen_params(params)
    return params

  def bind(self, lm: models.LanguageModel, trainable: PyTree,
           frozen: PyTree) -> tuple[PyTree, seams_lib.Seams]:
    return self._chain(trainable, frozen,
                       lambda i, m, t, p: m.bind(lm, t, p))

  def bind_train(self, lm: models.LanguageModel, trainable: PyTree,
                 frozen: PyTree, rng: PRNGKey
                 ) -> tuple[PyTree, seams_lib.Seams]:
    """`bind` with each member's training dropout (its own key)."""
    return self._chain(trainable, frozen, lambda i, m, t, p: m.bind_train(
        lm, t, p, jax.random.fold_in(rng, i)))

  def _chain(self, trainable: PyTree, frozen: PyTree, bind_one
             ) -> tuple[PyTree, seams_lib.Seams]:
    """Binds the members in order, each on the params the previous one
    returned; merges their seams."""
    params, seams, before = frozen, seams_lib.Seams(), []
    for i, m in enumerate(self.methods):
      params, s = bind_one(i, m, trainable[m.name], params)
      seams = merge.merge(seams, s, (" or ".join(before), m.name))
      before.append(m.name)
    return params, seams

  def settings(self) -> dict[str, Any]:
    return {"method": self.name,
            "methods": [m.settings() for m in self.methods]}
