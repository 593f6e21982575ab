"""Shared setup of train / eval / infer runs: mesh, backbone, prompt model.

`build_run` loads (or, for tests and benchmarks, randomly initialises) the
frozen backbone straight into its shardings, resolves the prompt initializer
against the backbone's embedding table and vocabulary, and returns a `Run`
that the entry points use. Gin-free: `main.py` binds these dataclasses.
"""

import dataclasses
import logging
import os
from typing import Any

import jax
import numpy as np

from prompt_jax import model as model_lib
from prompt_jax import partitioning
from prompt_jax import vocabularies
from prompt_jax.prompts import specs
from prompt_jax.t5 import config as config_lib
from prompt_jax.t5 import loading
from prompt_jax.t5 import network
from prompt_jax.types import PyTree

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
  """Where the frozen backbone comes from.

  Attributes:
    path: an HF or T5X checkpoint directory (the normal case).
    preset: a `T5Config` preset name for RANDOM weights (tests, benchmarks);
      only used when `path` is None.
    overrides: `T5Config` fields to change, e.g. {'dtype': 'bfloat16'}.
    seed: init seed for `preset`.
    vocab_path: SentencePiece model; default: `spiece.model` in `path`, else
      the T5 vocabulary under the data root.
  """
  path: str | None = None
  preset: str | None = None
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
  seed: int = 0
  vocab_path: str | None = None


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """The soft prompt: length P, initializer spec, position."""
  length: int = 100
  init: specs.InitSpec = specs.sampled_vocab()
  position: str = "prefix"


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape (-1: all remaining devices) and parallelism rules."""
  data: int = -1
  model: int = 1
  parallelism: str = "model"


@dataclasses.dataclass
class Run:
  """Everything an entry point needs, built once."""
  mesh: Any
  rules: Any
  config: config_lib.T5Config
  frozen: PyTree
  model: model_lib.PromptT5Model
  tokenizer: vocabularies.SentencePieceTokenizer


def make_mesh(cfg: MeshConfig):
  n = jax.device_count()
  data, model = cfg.data, cfg.model
  if data == -1:
    data = n // model
  if model == -1:
    model = n // data
  return partitioning.make_mesh(data, model)


def _overrides(raw: dict[str, Any]) -> dict[str, Any]:
  out = dict(raw)
  for key in ("dtype", "param_dtype"):
    if isinstance(out.get(key), str):
      out[key] = np.dtype(out[key]) if out[key] != "bfloat16" else (
          jax.numpy.bfloat16)
  return out


_SIZE_FIELDS = ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
                "num_encoder_layers", "num_decoder_layers")


def check_size(loaded: config_lib.T5Config, expected: config_lib.T5Config,
               path: str, preset: str) -> None:
  """One-line error when a checkpoint is not the size the config names."""
  diffs = [f"{f} {getattr(loaded, f)} != {getattr(expected, f)}"
           for f in _SIZE_FIELDS if getattr(loaded, f) != getattr(expected, f)]
  if diffs:
    raise ValueError(f"backbone {path} is not a {preset} checkpoint: "
                     + ", ".join(diffs) + " (use the matching models/*.gin)")


def load_frozen(cfg: BackboneConfig, mesh, rules
                ) -> tuple[config_lib.T5Config, PyTree]:
  """Loads or initialises the backbone params, placed in their shardings."""
  overrides = _overrides(cfg.overrides)
  if cfg.path is not None:
    t5_cfg, params = loading.load_backbone(cfg.path, **overrides)
    if cfg.preset is not None:
      check_size(t5_cfg, config_lib.preset(cfg.preset, **overrides),
                 cfg.path, cfg.preset)
    module = network.T5Transformer(t5_cfg)
    shardings = partitioning.param_shardings(
        partitioning.abstract_variables(module)["params"], mesh, rules)
    return t5_cfg, jax.device_put(params, shardings)
  if cfg.preset is None:
    raise ValueError("BackboneConfig: set `path` (a checkpoint directory) "
                     "or `preset` (random weights)")
  t5_cfg = config_lib.preset(cfg.preset, **overrides)
  _LOG.warning("backbone %s has RANDOM weights (no checkpoint given)",
               cfg.preset)
  params = partitioning.init_params(network.T5Transformer(t5_cfg),
                                    jax.random.key(cfg.seed), mesh, rules)
  return t5_cfg, params


def _tokenizer(cfg: BackboneConfig) -> vocabularies.SentencePieceTokenizer:
  path = cfg.vocab_path
  if path is None and cfg.path is not None:
    candidate = os.path.join(cfg.path, "spiece.model")
    path = candidate if os.path.exists(candidate) else None
  return vocabularies.SentencePieceTokenizer(path)


def build_run(*, backbone: BackboneConfig, prompt: PromptConfig,
              mesh_cfg: MeshConfig = MeshConfig(),
              loss_cfg: model_lib.LossConfig = model_lib.LossConfig()
              ) -> Run:
  """Builds the mesh, the frozen backbone and the prompt model."""
  mesh = make_mesh(mesh_cfg)
  rules = partitioning.standard_logical_axis_rules(mesh_cfg.parallelism)
  t5_cfg, frozen = load_frozen(backbone, mesh, rules)
  tokenizer = _tokenizer(backbone)
  vocabularies.check_vocab_size(tokenizer.vocab_size, t5_cfg.vocab_size,
                                tokenizer.path)
  embedding = np.asarray(jax.device_get(
      frozen["token_embedder"]["embedding"]))
  init_fn = prompt.init(embedding, tokenizer.encode)
  model = model_lib.PromptT5Model(t5_cfg, prompt.length, init_fn,
                                  prompt.position, loss_cfg)
  return Run(mesh, rules, t5_cfg, frozen, model, tokenizer)
