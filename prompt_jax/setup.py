"""Shared setup of train / eval / infer runs: mesh, backbone, method.

`build_run` makes the mesh, loads the frozen backbone straight into its
shardings (`backbones.load`, the one family dispatch), wraps it in its
language model and the method, and returns a `Run` that the entry points
use. No family branches here. Gin-free: `main.py` binds these dataclasses.
"""

import dataclasses
from typing import Any

import jax

from prompt_jax import models
from prompt_jax import partitioning
from prompt_jax import backbones
from prompt_jax.backbones import base as backbone_base
from prompt_jax.methods import base as method_base
from prompt_jax.methods import prompt_tuning
from prompt_jax.types import PyTree

BackboneConfig = backbones.BackboneConfig
backbone_kind = backbones.backbone_kind


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape (-1: all remaining devices) and parallelism rules."""
  data: int = -1
  model: int = 1
  parallelism: str = "model"


@dataclasses.dataclass
class Run:
  """Everything an entry point needs, built once.

  Attributes:
    frozen: the method's frozen tree (the backbone; `{}` when the method
      trains every weight).
    model: the `TunedModel` (language model + method).
  """
  mesh: Any
  rules: Any
  config: Any
  frozen: PyTree
  model: method_base.TunedModel
  tokenizer: backbone_base.Tokenizer | None

  @property
  def method(self) -> method_base.Method:
    return self.model.method


def make_mesh(cfg: MeshConfig):
  n = jax.device_count()
  data, model = cfg.data, cfg.model
  if data == -1:
    data = n // model
  if model == -1:
    model = n // data
  return partitioning.make_mesh(data, model)


def language_model(backbone: backbone_base.Backbone,
                   loss_cfg: models.LossConfig = models.LossConfig(),
                   target_length: int | None = None) -> models.LanguageModel:
  """The language model of a loaded backbone's family."""
  if backbone.kind == backbone_base.DECODER:
    return models.DecoderOnlyLM(backbone.config, loss_cfg, target_length,
                                add_bos=backbone.add_bos)
  return models.EncoderDecoderLM(backbone.config, loss_cfg)


def build_run(*, backbone: BackboneConfig,
              method: method_base.Method = prompt_tuning.PromptTuning(),
              mesh_cfg: MeshConfig = MeshConfig(),
              loss_cfg: models.LossConfig = models.LossConfig(),
              target_length: int | None = None) -> Run:
  """Builds the mesh, the frozen backbone and the tuned model.

  `target_length` (the task's target feature length) lets a decoder's loss
  project only the target slots to the vocabulary.
  """
  mesh = make_mesh(mesh_cfg)
  rules = partitioning.standard_logical_axis_rules(mesh_cfg.parallelism)
  loaded = backbones.load(backbone, mesh, rules)
  lm = language_model(loaded, loss_cfg, target_length)
  model = method_base.TunedModel(lm, method, loaded.params,
                                 loaded.tokenizer)
  return Run(mesh, rules, loaded.config, method.frozen_params(loaded.params),
             model, loaded.tokenizer)


def with_method(run: Run, method: method_base.Method) -> Run:
  """`run` with `method` instead of its own, on the same loaded backbone
  (`run`'s method must keep the backbone frozen: `run.frozen` is it)."""
  if run.method.consumes_backbone():
    raise ValueError(f"with_method: run's method {run.method.name} owns the "
                     "backbone weights; build a new run")
  model = method_base.TunedModel(run.model.lm, method, run.frozen,
                                 run.tokenizer)
  return dataclasses.replace(run, model=model,
                             frozen=method.frozen_params(run.frozen))
