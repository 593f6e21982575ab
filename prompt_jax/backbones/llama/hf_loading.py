"""Loads Llama-family decoders from Hugging Face directories (no torch).

`load_hf_dir(path)` reads `config.json` and `model.safetensors` (or the
shards listed in `model.safetensors.index.json`); `load_backbone(path)` also
accepts a `.gguf` file (`gguf_loading`). Both end in `convert.from_hf_state`:
the config goes through `config.from_hf_config`, the weights through the
strict `convert.params_from_hf` (one `CheckpointMismatchError` lists every
missing, unexpected or wrongly shaped tensor) and are stored in `param_dtype`.
With `shardings` each param is built in its sharding, one shard read at a
time (`lazy_tensors`), so the model is never whole in host memory.
The tokenizer of a directory is `tokenizer.from_hf_dir(path)`.
"""

import json
import os
import pathlib

from prompt_jax.backbones import lazy_tensors
from prompt_jax.backbones.llama import config as config_lib
from prompt_jax.backbones.llama import convert
from prompt_jax.backbones.llama import gguf_loading

CheckpointMismatchError = convert.CheckpointMismatchError

_CONFIG = "config.json"
_SAFE = "model.safetensors"
_SAFE_INDEX = "model.safetensors.index.json"


def load_hf_dir(path: str | os.PathLike[str],
                shardings: lazy_tensors.Shardings | None = None,
                **overrides) -> tuple[config_lib.DecoderConfig, dict]:
  """Loads a Hugging Face Llama directory (config.json + safetensors).

  Args:
    path: the directory.
    shardings: see `convert.from_hf_state`.
    **overrides: `DecoderConfig` fields to set.

  Raises:
    FileNotFoundError: missing directory, config.json, weights or shard.
    ValueError: unreadable or unsupported config.json / safetensors.
    CheckpointMismatchError: weights that do not match config.json.
  """
  path = pathlib.Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"Hugging Face model directory not found: {path}")
  hf_config = _read_json(path / _CONFIG)
  files, source = _weight_files(path)
  state = lazy_tensors.open_safetensors(files)
  return convert.from_hf_state(hf_config, state, source, shardings,
                               **overrides)


def load_backbone(path: str | os.PathLike[str],
                  shardings: lazy_tensors.Shardings | None = None,
                  **overrides) -> tuple[config_lib.DecoderConfig, dict]:
  """Loads a decoder from an HF directory or a `.gguf` file.

  `shardings`: see `convert.from_hf_state`.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: neither format, or see `load_hf_dir` / `load_gguf`.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"decoder checkpoint not found: {path}")
  if path.is_file() and path.suffix == ".gguf":
    return gguf_loading.load_gguf(path, shardings, **overrides)
  if path.is_dir() and (path / _CONFIG).is_file():
    return load_hf_dir(path, shardings, **overrides)
  raise ValueError(
      f"{path}: not a decoder checkpoint; expected a .gguf file or a"
      f" directory with {_CONFIG} and {_SAFE} or {_SAFE_INDEX}")


def _read_json(path: pathlib.Path) -> dict:
  if not path.is_file():
    raise FileNotFoundError(f"missing {path}")
  try:
    value = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: invalid JSON ({e})") from None
  if not isinstance(value, dict):
    raise ValueError(f"{path}: expected a JSON object")
  return value


def _weight_files(path: pathlib.Path) -> tuple[list[pathlib.Path], str]:
  """(safetensors files, description) of an HF directory."""
  if (path / _SAFE).is_file():
    return [path / _SAFE], str(path / _SAFE)
  index = path / _SAFE_INDEX
  if not index.is_file():
    raise FileNotFoundError(f"{path}: no weights; expected {_SAFE} or"
                            f" {_SAFE_INDEX} (torch .bin is not read)")
  weight_map = _read_json(index).get("weight_map")
  if not isinstance(weight_map, dict):
    raise ValueError(f"{index}: no 'weight_map' object")
  files = [path / name for name in dict.fromkeys(weight_map.values())]
  for f in files:
    if not f.is_file():
      raise FileNotFoundError(f"{index}: shard {f.name} is missing")
  return files, str(index)
