"""T5 hyperparameters: one frozen dataclass plus the published size presets.

Layers read only the fields they need from `T5Config`; nothing here knows about
training. `from_hf_config` maps a Hugging Face `config.json` dict onto it so a
checkpoint directory fully determines the model.
"""

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

_ACTIVATIONS = ("relu", "gelu", "gelu_new", "silu", "gelu_pytorch_tanh")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Shape and numerics of a T5 encoder-decoder.

  Attributes:
    vocab_size: V, rows of the (padded) embedding table.
    emb_dim: H, the model width (HF `d_model`).
    num_heads: N, attention heads.
    head_dim: D, width of one head (HF `d_kv`).
    mlp_dim: F, feed-forward hidden width (HF `d_ff`).
    num_encoder_layers: encoder depth.
    num_decoder_layers: decoder depth.
    activation: FFN nonlinearity ("relu" for T5 1.0, "gelu_new" for 1.1).
    gated_mlp: gated FFN (wi_0, wi_1) as in T5 1.1 / mT5 / Flan-T5.
    logits_via_embedding: tied head with logits scaled by H^-0.5 (T5 1.0).
    relative_attention_num_buckets: buckets of the relative position bias.
    relative_attention_max_distance: distance mapped to the last bucket.
    dropout_rate: dropout on residual branches (only when enabled).
    layer_norm_epsilon: RMS norm epsilon.
    dtype: compute dtype (bf16 for speed); softmax and logits stay fp32.
    param_dtype: storage dtype of parameters.
    pad_id: padding id, also the decoder start id.
    eos_id: end-of-sequence id.
  """

  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 6
  head_dim: int = 64
  mlp_dim: int = 1024
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  activation: str = "gelu_new"
  gated_mlp: bool = True
  logits_via_embedding: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  pad_id: int = 0
  eos_id: int = 1

  def __post_init__(self):
    if self.activation not in _ACTIVATIONS:
      raise ValueError(f"T5Config.activation={self.activation!r}; expected one "
                       f"of {_ACTIVATIONS}")

  @property
  def decoder_start_id(self) -> int:
    return self.pad_id

  def replace(self, **changes) -> "T5Config":
    return dataclasses.replace(self, **changes)


def _t5_1_0(emb, mlp, heads, head_dim, layers) -> T5Config:
  return T5Config(emb_dim=emb, mlp_dim=mlp, num_heads=heads, head_dim=head_dim,
                  num_encoder_layers=layers, num_decoder_layers=layers,
                  activation="relu", gated_mlp=False, logits_via_embedding=True)


def _t5_1_1(emb, mlp, heads, layers, vocab=32128, dec_layers=None) -> T5Config:
  return T5Config(vocab_size=vocab, emb_dim=emb, mlp_dim=mlp, num_heads=heads,
                  head_dim=64, num_encoder_layers=layers,
                  num_decoder_layers=dec_layers or layers)


# Published shapes. LM-adapted T5 and Flan-T5 use the T5 1.1 shapes.
PRESETS: dict[str, T5Config] = {
    "t5_1_0_small": _t5_1_0(512, 2048, 8, 64, 6),
    "t5_1_0_base": _t5_1_0(768, 3072, 12, 64, 12),
    "t5_1_0_large": _t5_1_0(1024, 4096, 16, 64, 24),
    "t5_1_0_3b": _t5_1_0(1024, 16384, 32, 128, 24),
    "t5_1_0_11b": _t5_1_0(1024, 65536, 128, 128, 24),
    "t5_1_1_small": _t5_1_1(512, 1024, 6, 8),
    "t5_1_1_base": _t5_1_1(768, 2048, 12, 12),
    "t5_1_1_large": _t5_1_1(1024, 2816, 16, 24),
    "t5_1_1_xl": _t5_1_1(2048, 5120, 32, 24),
    "t5_1_1_xxl": _t5_1_1(4096, 10240, 64, 24),
    "mt5_small": _t5_1_1(512, 1024, 6, 8, vocab=250112),
    "mt5_base": _t5_1_1(768, 2048, 12, 12, vocab=250112),
    "mt5_large": _t5_1_1(1024, 2816, 16, 24, vocab=250112),
    "mt5_xl": _t5_1_1(2048, 5120, 32, 24, vocab=250112),
    "mt5_xxl": _t5_1_1(4096, 10240, 64, 24, vocab=250112),
    "byt5_small": _t5_1_1(1472, 3584, 6, 12, vocab=384, dec_layers=4),
    "byt5_base": _t5_1_1(1536, 3968, 12, 18, vocab=384, dec_layers=6),
    "byt5_large": _t5_1_1(1536, 3840, 16, 36, vocab=384, dec_layers=12),
    "byt5_xl": _t5_1_1(2560, 6720, 32, 36, vocab=384, dec_layers=12),
    "byt5_xxl": _t5_1_1(4672, 12352, 64, 36, vocab=384, dec_layers=12),
}
PRESETS["t5_1_1_tiny"] = T5Config(vocab_size=128, emb_dim=16, num_heads=2,
                                  head_dim=8, mlp_dim=32, num_encoder_layers=2,
                                  num_decoder_layers=2)


def preset(name: str, **overrides) -> T5Config:
  """Returns the named preset, with fields overridden."""
  if name not in PRESETS:
    raise KeyError(f"unknown T5 preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


def from_hf_config(hf: Mapping[str, Any], source: str = "config.json",
                   **overrides) -> T5Config:
  """Builds a `T5Config` from a Hugging Face T5 `config.json` dict.

  `tie_word_embeddings` missing or true means T5 1.0 behaviour (tied head,
  logits scaled by H^-0.5); false means an untied `lm_head` (T5 1.1 family).
  """
  required = ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff",
              "num_layers")
  missing = [k for k in required if k not in hf]
  if missing:
    raise ValueError(f"{source}: missing T5 config keys {missing}")
  proj = hf.get("feed_forward_proj", "relu")
  parts = proj.split("-")
  if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
    raise ValueError(f"{source}: unsupported feed_forward_proj {proj!r}")
  activation = parts[-1]
  if proj == "gated-gelu":
    activation = "gelu_new"  # HF's backwards-compatible special case.
  fields = dict(
      vocab_size=hf["vocab_size"], emb_dim=hf["d_model"],
      num_heads=hf["num_heads"], head_dim=hf["d_kv"], mlp_dim=hf["d_ff"],
      num_encoder_layers=hf["num_layers"],
      num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
      activation=activation, gated_mlp=len(parts) == 2,
      logits_via_embedding=hf.get("tie_word_embeddings", True) is not False,
      relative_attention_num_buckets=hf.get(
          "relative_attention_num_buckets", 32),
      relative_attention_max_distance=hf.get(
          "relative_attention_max_distance", 128),
      layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
      pad_id=hf.get("pad_token_id", 0) or 0,
      eos_id=hf.get("eos_token_id", 1) if hf.get("eos_token_id") is not None
      else 1)
  fields.update(overrides)
  return T5Config(**fields)
