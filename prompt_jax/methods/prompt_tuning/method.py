"""Prompt tuning (Lester et al. 2021) as a `Method`: a trainable [P, H] prompt.

Trainable tree: `{'prompt': {'prompt': [P, H]}}` (path `prompt/prompt`,
logical axes (PROMPT, PROMPT_EMBED): replicated under the standard rules).
`bind` puts the prompt into the input embeddings through the embed seam:
  * encoder-decoder: on the encoder input, 'prefix' or 'suffix' (after the
    last real token);
  * decoder-only: before the text, after BOS when the model adds one.
The artifact is the plain prompt `.npy` at `prompts/prompt_step_<N>.npy`.
"""

import dataclasses
import os
import pathlib
from typing import Any

import flax
import jax
import numpy as np

from prompt_jax import models
from prompt_jax.backbones import seams as seams_lib
from prompt_jax.methods import artifacts
from prompt_jax.methods import base
from prompt_jax.methods.prompt_tuning import combine
from prompt_jax.methods.prompt_tuning import initializers
from prompt_jax.methods.prompt_tuning import modules
from prompt_jax.methods.prompt_tuning import specs
from prompt_jax.types import Array, PRNGKey, PyTree

ENCODER_POSITIONS = {"prefix": combine.prefix, "suffix": combine.suffix}
DECODER_POSITIONS = ("prefix", "after_bos")


def _no_tokenizer(text: str) -> list[int]:
  raise ValueError(f"cannot tokenize {text!r}: this backbone has no "
                   "tokenizer (set BackboneConfig.vocab_path)")


@dataclasses.dataclass(frozen=True)
class PromptTuning(base.Method):
  """A soft prompt of length P on the input.

  Attributes:
    length: P.
    init: initializer spec, resolved against the backbone's embedding
      table and tokenizer (`prompt_tuning.specs`).
    position: encoder-decoder 'prefix' or 'suffix'; decoder-only 'prefix'
      (after BOS when the model adds one) or 'after_bos'.
  """
  length: int = 100
  init: specs.InitSpec = specs.sampled_vocab()
  position: str = "prefix"

  name = "prompt_tuning"
  artifact_dir = "prompts"
  artifact_stem = "prompt"
  artifact_suffix = ".npy"
  adds_input_slots = True

  def _module(self, lm: models.LanguageModel,
              init_fn: initializers.PromptInitializer | None = None
              ) -> modules.Prompt:
    return modules.Prompt(self.length, lm.config.emb_dim,
                          init_fn or initializers.random_uniform())

  def check(self, lm: models.LanguageModel) -> None:
    """One-line error for a position the model's family does not have."""
    allowed = (ENCODER_POSITIONS if lm.family == models.ENCODER_DECODER
               else DECODER_POSITIONS)
    if self.position not in allowed:
      raise ValueError(f"prompt position {self.position!r}: expected one of "
                       f"{sorted(allowed)} for a {lm.family} model")
    if self.position == "after_bos" and not lm.add_bos:
      raise ValueError("prompt position 'after_bos' needs a model that "
                       "adds BOS (DecoderOnlyLM(add_bos=True))")

  def abstract_trainable(self, lm: models.LanguageModel) -> PyTree:
    self.check(lm)
    return {"prompt": jax.eval_shape(self._module(lm).init,
                                     jax.random.key(0))["params"]}

  def init_fn(self, lm: models.LanguageModel, params: PyTree | None,
              tokenizer: Any) -> initializers.PromptInitializer:
    """The resolved initializer (vocabulary inits read `params`)."""
    embedding = None if params is None else np.asarray(jax.device_get(
        params["token_embedder"]["embedding"]))
    encode = tokenizer.encode if tokenizer is not None else _no_tokenizer
    return self.init(embedding, encode)

  def init_trainable(self, rng: PRNGKey, lm: models.LanguageModel,
                     params: PyTree, tokenizer: Any) -> PyTree:
    self.check(lm)
    variables = self._module(lm, self.init_fn(lm, params, tokenizer)).init(
        rng)
    return {"prompt": flax.core.meta.unbox(variables["params"])}

  def prompt_of(self, trainable: PyTree) -> Array:
    """The [P, H] prompt inside a trainable tree."""
    return trainable["prompt"]["prompt"]

  def seams(self, lm: models.LanguageModel, prompt: Array
            ) -> seams_lib.Seams:
    """The embed seam that inserts `prompt` [P, H] for `lm`'s family."""
    if lm.family == models.ENCODER_DECODER:
      return combine.encoder_prompt_seams(prompt,
                                          ENCODER_POSITIONS[self.position])
    after_bos = lm.add_bos
    return combine.decoder_prompt_seams(
        prompt, combine.prefix_after_bos if after_bos else combine.prefix)

  def bind(self, lm: models.LanguageModel, trainable: PyTree,
           frozen: PyTree) -> tuple[PyTree, seams_lib.Seams]:
    return frozen, self.seams(lm, self.prompt_of(trainable))

  def settings(self) -> dict[str, Any]:
    return {"method": self.name, "prompt_length": self.length,
            "prompt_position": self.position}

  def save_artifact(self, trainable: PyTree, path: str | os.PathLike
                    ) -> pathlib.Path:
    return artifacts.save_array(path, self.prompt_of(trainable))

  def load_artifact(self, path: str | os.PathLike,
                    lm: models.LanguageModel) -> PyTree:
    prompt = artifacts.load_array(path, (self.length, lm.config.emb_dim))
    return {"prompt": {"prompt": jax.numpy.asarray(prompt)}}


def _fixed(prompt_init: initializers.PromptInitializer | None
           ) -> specs.InitSpec:
  init = prompt_init or initializers.random_uniform()
  return lambda embedding, encode: init


def t5_model(config: Any, prompt_length: int,
             prompt_init: initializers.PromptInitializer | None = None,
             position: str = "prefix",
             loss_cfg: models.LossConfig = models.LossConfig()
             ) -> base.TunedModel:
  """A T5 with a soft prompt whose initializer is already resolved."""
  method = PromptTuning(prompt_length, _fixed(prompt_init), position)
  return base.TunedModel(models.EncoderDecoderLM(config, loss_cfg), method)


def decoder_model(config: Any, prompt_length: int,
                  prompt_init: initializers.PromptInitializer | None = None,
                  position: str = "prefix",
                  loss_cfg: models.LossConfig = models.LossConfig(),
                  target_length: int | None = None) -> base.TunedModel:
  """A decoder-only LM with a soft prompt; 'after_bos' makes the model
  prepend BOS."""
  lm = models.DecoderOnlyLM(config, loss_cfg, target_length,
                            add_bos=position == "after_bos")
  method = PromptTuning(prompt_length, _fixed(prompt_init), position)
  return base.TunedModel(lm, method)
