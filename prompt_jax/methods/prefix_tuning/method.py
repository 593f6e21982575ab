"""Prefix tuning (Li & Liang 2021) as a `Method`: trainable key/value
prefixes at every layer, through `AttentionSeams.prefix_key/value`.

Where the prefixes go (and PEFT's conventions) is `layout`; the two
trainable trees are `trees`. `bind` computes the per-layer prefixes
[S, P, K, D] (running the reparameterisation MLP with `projection=True`)
and passes them as [1, P, K, D] seams; the frozen backbone runs unchanged.

Artifact design. The reparameterisation exists at training time only: the
artifact (`prefix/prefix_step_<N>.npz`) holds the computed prefixes, i.e.
the prefix form `{'prefix': {<site>: {'key', 'value'}}}` whatever
`projection` is (PEFT does the same: the `prompt_embeddings` it saves are
the prefix encoder's output). `load_artifact` returns that prefix form, and
`bind` accepts either form (it tells them apart by their keys, so tracing
never looks at values): a loaded artifact runs the trained model's logits
without the MLP. Without projection the trainable tree IS the prefix form,
so the artifact round-trips bit for bit. A loaded artifact is therefore a
`projection=False` tree, and `inference_method()` is this method without
projection: the entry points (evaluate, infer, classify) build that one to
run an artifact, whatever the run's PREFIX_PROJECTION.

Not an identity at init: a prefix adds P always-visible slots to each
softmax, so even zero keys and values (logit 0, weight e^0 each) take
attention mass from the real keys and scale the block's output down.
"""

import dataclasses
import os
import pathlib
from typing import Any

from prompt_jax import models
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.methods import artifacts
from prompt_jax.methods import base
from prompt_jax.methods.prefix_tuning import layout as layout_lib
from prompt_jax.methods.prefix_tuning import trees
from prompt_jax.types import Array, PRNGKey, PyTree


@dataclasses.dataclass(frozen=True)
class PrefixTuning(base.Method):
  """P-slot key/value prefixes on every attention block (`layout`).

  Attributes:
    length: P, PEFT's `num_virtual_tokens`.
    projection: PEFT's `prefix_projection`: train an embedding [P, E] and a
      two-layer tanh MLP that produce the prefixes (reparameterisation).
    hidden: the MLP's hidden width (PEFT's `encoder_hidden_size`); None:
      E = K * D, PEFT's default.
    mode: encoder-decoder only: 'paper' (default; encoder self, decoder
      self and cross-attention each get a prefix) or 'peft_compat' (PEFT's
      T5 layout exactly, see `layout`). None on a decoder-only model.
  """
  length: int = 20
  projection: bool = False
  hidden: int | None = None
  mode: str | None = None

  name = "prefix_tuning"
  artifact_dir = "prefix"
  artifact_stem = "prefix"

  def __post_init__(self):
    kind = type(self).__name__
    if not isinstance(self.length, int) or self.length < 1:
      raise ValueError(f"{kind} length must be a positive int (P >= 1), got "
                       f"{self.length!r}")
    if self.mode is not None and self.mode not in layout_lib.MODES:
      raise ValueError(f"{kind} mode={self.mode!r}; expected one of "
                       f"{layout_lib.MODES} (or None)")
    if self.hidden is not None and (not isinstance(self.hidden, int)
                                    or self.hidden < 1):
      raise ValueError(f"{kind} hidden must be a positive int or None, got "
                       f"{self.hidden!r}")
    if self.hidden is not None and not self.projection:
      raise ValueError(f"{kind} hidden={self.hidden} needs projection=True")

  def layout(self, lm: models.LanguageModel) -> layout_lib.Layout:
    """Where the prefixes go on `lm` (one-line error if they cannot)."""
    return layout_lib.layout_of(lm, self.length, self.mode)

  def check(self, lm: models.LanguageModel) -> None:
    self.layout(lm)

  def abstract_trainable(self, lm: models.LanguageModel) -> PyTree:
    layout = self.layout(lm)
    if not self.projection:
      return trees.abstract_prefixes(layout)
    return trees.abstract_projection(layout, self.hidden or layout.token_dim)

  def init_trainable(self, rng: PRNGKey, lm: models.LanguageModel,
                     params: PyTree, tokenizer: Any) -> PyTree:
    """PEFT's init: N(0, 1) prefixes (or embedding), Linear U(+-1/sqrt(fan
    in))."""
    del params, tokenizer
    return trees.initialize(rng, base.abstract_values(self, lm))

  def prefixes(self, trainable: PyTree) -> dict[str, dict[str, Array]]:
    """{site: {'key', 'value': [S, P, K, D]}} of a trainable tree in either
    form."""
    return trees.prefixes(trainable)

  def bind(self, lm: models.LanguageModel, trainable: PyTree,
           frozen: PyTree) -> tuple[PyTree, seams_lib.Seams]:
    return frozen, layout_lib.seams_of(self.layout(lm),
                                       self.prefixes(trainable))

  def settings(self) -> dict[str, Any]:
    return {"method": self.name, "prefix_length": self.length,
            "prefix_projection": self.projection,
            "prefix_hidden": self.hidden, "prefix_mode": self.mode}

  def save_artifact(self, trainable: PyTree, path: str | os.PathLike
                    ) -> pathlib.Path:
    """The computed prefixes (prefix form), without the MLP."""
    return artifacts.save_tree(path, {trees.PREFIX: self.prefixes(trainable)})

  def inference_method(self) -> "PrefixTuning":
    """Without the reparameterisation: the artifact is the plain prefixes."""
    return dataclasses.replace(self, projection=False, hidden=None)

  def load_artifact(self, path: str | os.PathLike,
                    lm: models.LanguageModel) -> PyTree:
    """The prefix form (runs with `bind` whatever `projection` is)."""
    return artifacts.load_tree(
        path, base.abstract_values(self.inference_method(), lm))
