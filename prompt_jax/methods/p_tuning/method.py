"""P-tuning (Liu et al. 2021, "GPT Understands, Too") as a `Method`.

A prompt encoder (`encoder`: PEFT's MLP or bidirectional-LSTM
PromptEncoder) turns P trainable pseudo-token embeddings into the prompt
table [P, H]; the table enters the frozen backbone's input embeddings:

* position 'prefix' (default; T5 also 'suffix', decoder-only also
  'after_bos'): through prompt tuning's embed seam, exactly as
  `PromptTuning` places its prompt (`prompt_tuning.combine`: T5 before the
  encoder input; decoder-only before the text, after BOS when the model
  adds one). PEFT's layout: PEFT puts the prompt before everything it is
  given, BOS included, so a `DecoderOnlyLM(add_bos=False)` fed ids that
  start with BOS reproduces it;
* position 'template': hybrid prompts (`template`). The input holds pseudo
  ids `-1 - i` wherever the template put pseudo token i, among discrete
  anchor tokens; `bind` returns `Seams.pseudo_token_fn`, which writes
  prompt row i at those ids (T5 encoder input, decoder-only input). Render
  inputs with `template.render`.

Trainable tree: `{'prompt_encoder': <encoder tree>}` ('encoder' form), or
`{'prompt': {'prompt': [P, H]}}` ('table' form: the encoder's output,
PromptTuning's tree). The encoder exists at training time only: the
artifact is the table, `p_tuning/prompt_step_<N>.npy`, loadable by
`PromptTuning(length=P)` or `PTuning(form='table')` (and by PEFT as its
inference-mode `prompt_embeddings`). Beside it, `prompt_step_<N>.encoder
.npz` keeps the encoder weights, so the 'encoder' form reloads its own
trainable tree bit for bit; without that file it loads the table, which
`bind` accepts in either form.

Not supported: PEFT's `encoder_dropout` (`bind` has no rng; PEFT's default
is 0), and several pseudo-token tables per input.
"""

import dataclasses
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp

from prompt_jax import models
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.methods import artifacts
from prompt_jax.methods import base
from prompt_jax.methods.p_tuning import encoder
from prompt_jax.methods.p_tuning import template as template_lib
from prompt_jax.methods.prompt_tuning import PromptTuning
from prompt_jax.types import Array, PRNGKey, PyTree

TEMPLATE = "template"
POSITIONS = ("prefix", "suffix", "after_bos", TEMPLATE)
FORMS = ("encoder", "table")


def pseudo_token_fn(prompt: Array) -> seams_lib.PseudoTokenFn:
  """`(tokens [B, T], x [B, T, H]) -> x'`: rows at ids < 0 become
  `prompt[-1 - id]` ([P, H], cast to x's dtype); other rows stay. Ids
  below -P (which `template.render` never writes) read row P - 1."""
  last = prompt.shape[0] - 1

  def fn(tokens: Array, x: Array) -> Array:
    rows = jnp.take(prompt.astype(x.dtype),
                    jnp.clip(-1 - tokens, 0, last), axis=0)  # [B, T, H]
    return jnp.where((tokens < 0)[..., None], rows, x)

  return fn


def _positive_int(name: str, value: Any) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(f"P-tuning {name} must be an int >= 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class PTuning(base.Method):
  """A prompt encoder's [P, H] output on the input.

  Attributes:
    length: P, the pseudo tokens (PEFT's `num_virtual_tokens`).
    encoder_type: 'MLP' or 'LSTM' (PEFT's `encoder_reparameterization_
      type`).
    encoder_hidden_size: h; None: the model width H (PEFT's default).
      `H // 2` with 'LSTM' is the original P-tuning encoder (`encoder`).
    encoder_num_layers: LSTM layers (PEFT's default 2; unused by 'MLP').
    position: 'prefix', 'suffix' (T5), 'after_bos' (decoder-only) as
      `PromptTuning`, or 'template'.
    template: with position 'template', the hybrid template (`template`
      module); its pseudo tokens must number `length`.
    form: 'encoder' (train the encoder) or 'table' (its output only: run
      or fine-tune an exported table).
    encoder_dropout: PEFT's `encoder_dropout`, between LSTM layers at
      training steps (`bind_train`); the MLP encoder has none.
  """
  length: int = 20
  encoder_type: str = encoder.MLP
  encoder_hidden_size: int | None = None
  encoder_num_layers: int = 2
  position: str = "prefix"
  template: str | None = None
  form: str = "encoder"
  encoder_dropout: float = 0.0

  name = "p_tuning"
  artifact_dir = "p_tuning"
  artifact_stem = "prompt"
  artifact_suffix = ".npy"

  def __post_init__(self):
    _positive_int("length", self.length)
    encoder.check_type(self.encoder_type)
    if self.encoder_hidden_size is not None:
      _positive_int("encoder_hidden_size", self.encoder_hidden_size)
    _positive_int("encoder_num_layers", self.encoder_num_layers)
    if not 0.0 <= self.encoder_dropout < 1.0:
      raise ValueError(f"P-tuning encoder_dropout must be in [0, 1), got "
                       f"{self.encoder_dropout!r}")
    if self.form not in FORMS:
      raise ValueError(f"P-tuning form {self.form!r}: expected one of "
                       f"{list(FORMS)}")
    if self.position not in POSITIONS:
      raise ValueError(f"P-tuning position {self.position!r}: expected one "
                       f"of {list(POSITIONS)}")
    if (self.position == TEMPLATE) != (self.template is not None):
      raise ValueError("P-tuning: position 'template' and a template go "
                       f"together (position={self.position!r}, "
                       f"template={self.template!r})")
    if self.template is not None:
      count = template_lib.parse(self.template).num_pseudo
      if count != self.length:
        raise ValueError(f"template {self.template!r} has {count} pseudo "
                         f"tokens but length is {self.length}")

  @property
  def adds_input_slots(self) -> bool:  # type: ignore[override]
    """A prefix adds P slots; a template's pseudo ids are already there."""
    return self.position != TEMPLATE

  def _prompt_tuning(self) -> PromptTuning:
    """The prompt-tuning method whose placement a prefix reuses."""
    position = "prefix" if self.position == TEMPLATE else self.position
    return PromptTuning(length=self.length, position=position)

  def hidden_size(self, lm: models.LanguageModel) -> int:
    """h: `encoder_hidden_size`, or the model width."""
    return self.encoder_hidden_size or lm.config.emb_dim

  def _shape_args(self, lm: models.LanguageModel) -> tuple:
    return (self.encoder_type, self.length, lm.config.emb_dim,
            self.hidden_size(lm), self.encoder_num_layers)

  def check(self, lm: models.LanguageModel) -> None:
    """One-line error for a position `lm`'s family does not have."""
    if self.position != TEMPLATE:
      self._prompt_tuning().check(lm)

  def abstract_trainable(self, lm: models.LanguageModel) -> PyTree:
    self.check(lm)
    if self.form == "table":
      return self._prompt_tuning().abstract_trainable(lm)
    return {"prompt_encoder": encoder.abstract(*self._shape_args(lm))}

  def init_trainable(self, rng: PRNGKey, lm: models.LanguageModel,
                     params: PyTree, tokenizer: Any) -> PyTree:
    """PEFT's init (torch defaults); 'table': that encoder's output."""
    del params, tokenizer
    self.check(lm)
    tree = {"prompt_encoder": encoder.init(rng, *self._shape_args(lm))}
    return tree if self.form == "encoder" else {
        "prompt": {"prompt": self.table(tree)}}

  def table(self, trainable: PyTree) -> Array:
    """The prompt [P, H] of a trainable tree of either form."""
    if "prompt" in trainable:
      return trainable["prompt"]["prompt"]
    return encoder.apply(trainable["prompt_encoder"])

  def seams(self, lm: models.LanguageModel, prompt: Array
            ) -> seams_lib.Seams:
    """The seam that puts `prompt` [P, H] where `position` says."""
    if self.position == TEMPLATE:
      return seams_lib.Seams(pseudo_token_fn=pseudo_token_fn(prompt))
    return self._prompt_tuning().seams(lm, prompt)

  def bind(self, lm: models.LanguageModel, trainable: PyTree,
           frozen: PyTree) -> tuple[PyTree, seams_lib.Seams]:
    return frozen, self.seams(lm, self.table(trainable))

  def bind_train(self, lm: models.LanguageModel, trainable: PyTree,
                 frozen: PyTree, rng: PRNGKey
                 ) -> tuple[PyTree, seams_lib.Seams]:
    """`bind` with the encoder's dropout (`encoder_dropout`)."""
    if "prompt" in trainable or self.encoder_dropout == 0.0:
      return self.bind(lm, trainable, frozen)
    return frozen, self.seams(lm, encoder.apply(
        trainable["prompt_encoder"], self.encoder_dropout, rng))

  def render(self, example: dict[str, Any], tokenizer: Any,
             mask: str | int | None = None, add_eos: bool = False
             ) -> list[int]:
    """`template.render` of this method's template (position 'template')."""
    if self.template is None:
      raise ValueError("P-tuning render: no template (position="
                       f"{self.position!r})")
    return template_lib.render(self.template, example, tokenizer, mask,
                               add_eos)

  def settings(self) -> dict[str, Any]:
    return {"method": self.name, "prompt_length": self.length,
            "encoder_type": self.encoder_type,
            "encoder_hidden_size": self.encoder_hidden_size,
            "encoder_num_layers": self.encoder_num_layers,
            "encoder_dropout": self.encoder_dropout,
            "prompt_position": self.position, "template": self.template,
            "form": self.form}

  @staticmethod
  def encoder_path(path: str | os.PathLike) -> pathlib.Path:
    """The encoder-weights file beside a table artifact."""
    return pathlib.Path(path).with_suffix(".encoder.npz")

  def save_artifact(self, trainable: PyTree, path: str | os.PathLike
                    ) -> pathlib.Path:
    """Writes the table `.npy` (and, in the encoder form, the encoder
    `.npz` first, so a table on disk always has its encoder)."""
    if "prompt_encoder" in trainable:
      artifacts.save_tree(self.encoder_path(path), trainable)
    return artifacts.save_array(path, jax.jit(self.table)(trainable))

  def inference_method(self) -> "PTuning":
    """The table form: the exported [P, H] table runs without the
    encoder."""
    return dataclasses.replace(self, form="table")

  def load_artifact(self, path: str | os.PathLike,
                    lm: models.LanguageModel) -> PyTree:
    """The encoder tree (encoder form, when its `.npz` is there), else the
    table tree `{'prompt': {'prompt': [P, H]}}`."""
    weights = self.encoder_path(path)
    if self.form == "encoder" and weights.is_file():
      return artifacts.load_tree(weights, base.abstract_values(self, lm))
    table = artifacts.load_array(path, (self.length, lm.config.emb_dim))
    return {"prompt": {"prompt": jnp.asarray(table)}}

