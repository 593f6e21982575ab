"""Loads T5 backbones from Hugging Face or T5X directories; saves HF dirs.

`load_backbone(path)` looks at the directory and dispatches:
  * `config.json` + `model.safetensors` (or sharded safetensors with
    `model.safetensors.index.json`, or `pytorch_model.bin`): `load_hf_dir`.
    The config comes from config.json; weights go through
    `convert.params_from_hf`. torch is imported only for `.bin` files.
  * `checkpoint_<step>/checkpoint` (T5X, see `t5x_format`): `load_t5x_dir`.
    The config is inferred from shapes (plus `config.gin` when present) and
    T5X's 2-D attention kernels are reshaped to our 3-D ones.
Every path is strict: one `CheckpointMismatchError` lists all missing,
unexpected and wrongly shaped tensors, and HF copies of the tied embedding
that differ from `shared.weight`. Nothing is ever written over.

With `shardings` (a sharding tree, or a function of the config that returns
one), each param is built in its sharding straight from the files
(`lazy_tensors`): a device's shard is read as a slice of a safetensors file,
a TensorStore array or a memory-mapped torch file, so a host needs memory
for about one tensor, not the whole model.
"""

import json
import os
import pathlib
import re
import shutil
import time
from typing import Any, Mapping

import flax.core
import flax.traverse_util
import ml_dtypes
import numpy as np
from safetensors import numpy as st_numpy

from prompt_jax.backbones import lazy_tensors
from prompt_jax.backbones.t5 import convert
from prompt_jax.backbones.t5 import t5x_format
from prompt_jax.backbones.t5.config import T5Config
from prompt_jax.backbones.t5.config import from_hf_config

CheckpointMismatchError = convert.CheckpointMismatchError
Flat = dict[str, np.ndarray]

_CONFIG = "config.json"
_SAFE = "model.safetensors"
_SAFE_INDEX = "model.safetensors.index.json"
_BIN = "pytorch_model.bin"
_BIN_INDEX = "pytorch_model.bin.index.json"
_HEADS_FROM = "encoder/relpos_bias/rel_embedding"  # [N, buckets]
_LAYER = re.compile(r"(encoder|decoder)/layers_(\d+)/")
_GIN_FIELDS = ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
               "num_encoder_layers", "num_decoder_layers",
               "logits_via_embedding")


def load_backbone(path: str | os.PathLike,
                  shardings: lazy_tensors.Shardings | None = None,
                  **overrides) -> tuple[T5Config, dict]:
  """Loads a Hugging Face or T5X backbone directory (see module docstring).

  Args:
    path: the directory (for T5X also a checkpoint_<step> dir).
    shardings: the params' sharding tree, or a function of the loaded
      `T5Config` returning it (called before any weight is read); None
      loads numpy arrays.
    **overrides: T5Config fields to set (e.g. dtype); for T5X also num_heads.

  Returns:
    (config, param tree of numpy arrays, or of `jax.Array`s in `shardings`).

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: `path` is neither format.
    CheckpointMismatchError: the weights do not match the config.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"backbone directory not found: {path}")
  if path.is_dir() and (path / _CONFIG).is_file():
    return load_hf_dir(path, shardings, **overrides)
  if t5x_format.is_t5x_dir(path):
    return load_t5x_dir(path, shardings=shardings, **overrides)
  found = sorted(os.listdir(path))[:8] if path.is_dir() else [path.name]
  raise ValueError(
      f"{path}: not a T5 backbone; expected {_CONFIG} with {_SAFE}, "
      f"{_SAFE_INDEX} or {_BIN} (Hugging Face), or checkpoint_<step>/"
      f"checkpoint (T5X); found {found}")


# ---------------------------------------------------------------- Hugging Face


def load_hf_dir(path: str | os.PathLike,
                shardings: lazy_tensors.Shardings | None = None,
                **overrides) -> tuple[T5Config, dict]:
  """Loads a Hugging Face T5 directory (config.json + weights).

  `scale_decoder_outputs` (written by transformers 5, which always writes
  tie_word_embeddings=true) decides `logits_via_embedding` when present;
  otherwise `tie_word_embeddings` does (absent means tied, as in T5 1.0).
  An unscaled head with tie_word_embeddings=true and no `lm_head.weight`
  (a transformers 5 save of a T5 1.1 model) copies the embedding into
  `decoder/logits_dense`, which is what transformers 5 computes. A tied
  (scaled) head drops a stored `lm_head.weight`, which must then equal
  `shared.weight`, as must `encoder/decoder.embed_tokens.weight`; an
  unscaled head uses a stored `lm_head.weight` as its own weight (as
  transformers 5 does even under tie_word_embeddings=true when the two
  differ). `shardings`: see `load_backbone`.

  Raises:
    FileNotFoundError: missing directory, config.json or weights file.
    ValueError: unreadable config.json.
    CheckpointMismatchError: weights that do not match config.json.
  """
  path = pathlib.Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"Hugging Face model directory not found: {path}")
  files, reader, source = _weight_files(path)
  hf = _read_json(path / _CONFIG)
  scaled = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings"))
  cfg = from_hf_config(hf, str(path / _CONFIG), **(
      {"logits_via_embedding": scaled is not False} | overrides))
  state = reader(files)
  if (not cfg.logits_via_embedding and hf.get("tie_word_embeddings") is True
      and "lm_head.weight" not in state and "shared.weight" in state):
    # transformers 5 ties an unscaled head to the embedding in this case.
    state["lm_head.weight"] = state["shared.weight"]
  return cfg, convert.params_from_hf(
      state, cfg, source, lazy_tensors.flat_shardings(shardings, cfg))


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


def _weight_files(path: pathlib.Path):
  """(weight files, their reader, description) of an HF directory."""
  for single, index, reader in ((_SAFE, _SAFE_INDEX, _read_safetensors),
                                (_BIN, _BIN_INDEX, _read_torch_bin)):
    if (path / single).is_file():
      return [path / single], reader, str(path / single)
    if (path / index).is_file():
      return _index_files(path / index), reader, str(path / index)
  raise FileNotFoundError(
      f"{path}: no weights; expected {_SAFE}, {_SAFE_INDEX}, {_BIN} or "
      f"{_BIN_INDEX}")


def _index_files(index: pathlib.Path) -> list[pathlib.Path]:
  weight_map = _read_json(index).get("weight_map")
  if not isinstance(weight_map, dict):
    raise ValueError(f"{index}: no 'weight_map' object")
  files = [index.parent / name for name in dict.fromkeys(weight_map.values())]
  for f in files:
    if not f.is_file():
      raise FileNotFoundError(f"{index}: shard {f.name} is missing")
  return files


def _read_safetensors(files: list[pathlib.Path]
                      ) -> dict[str, lazy_tensors.Tensor]:
  return lazy_tensors.open_safetensors(files)


class _TorchTensor(lazy_tensors.Tensor):
  """A (memory-mapped) torch tensor; slices are copied out one at a time."""

  def __init__(self, tensor: Any):
    self.tensor = tensor
    self.shape = tuple(tensor.shape)

  def read(self, index: lazy_tensors.Index) -> np.ndarray:
    import torch  # pylint: disable=g-import-not-at-top
    # A copy: the result must not alias the mapped file.
    t = self.tensor.detach()[index].clone(
        memory_format=torch.contiguous_format)
    if t.dtype == torch.bfloat16:  # numpy has no bf16; keep the bits.
      return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _read_torch_bin(files: list[pathlib.Path]
                    ) -> dict[str, lazy_tensors.Tensor]:
  """Tensors of torch files, memory-mapped (legacy non-zip files: read)."""
  import torch  # pylint: disable=g-import-not-at-top
  state = {}
  for f in files:
    try:
      tensors = torch.load(f, map_location="cpu", weights_only=True,
                           mmap=True)
    except RuntimeError:  # Pre-1.6 (non-zip) files cannot be mapped.
      tensors = torch.load(f, map_location="cpu", weights_only=True)
    state.update({name: _TorchTensor(t) for name, t in tensors.items()})
  return state


def save_hf_dir(path: str | os.PathLike, cfg: T5Config, params: Mapping
                ) -> pathlib.Path:
  """Writes config.json + model.safetensors, atomically, to a new `path`.

  Files go to a temp dir beside `path`, which is then renamed. The tied
  head is not stored (as transformers does). `dropout_rate` is written but
  `from_hf_config` does not read it back.

  Raises:
    FileExistsError: `path` exists and is not an empty directory.
    CheckpointMismatchError: `params` do not match `cfg`.
  """
  path = pathlib.Path(path)
  _refuse_existing(path)
  _check_params(params, cfg, "params to save")
  hf = hf_config_dict(cfg)
  state = convert.hf_from_params(params, cfg)
  if cfg.logits_via_embedding:
    del state["lm_head.weight"]
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.time_ns()}")
  tmp.mkdir()
  try:
    (tmp / _CONFIG).write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    st_numpy.save_file(state, tmp / _SAFE, metadata={"format": "pt"})
    _refuse_existing(path)
    os.rename(tmp, path)  # Replaces only an empty directory.
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return path


def _refuse_existing(path: pathlib.Path) -> None:
  if path.exists() and (not path.is_dir() or any(path.iterdir())):
    raise FileExistsError(f"refusing to overwrite existing {path}")


def hf_config_dict(cfg: T5Config) -> dict[str, Any]:
  """The Hugging Face `config.json` dict for `cfg` (both head flags)."""
  if cfg.gated_mlp and cfg.activation == "gelu":
    raise ValueError("gated exact GELU has no Hugging Face T5 config "
                     "('gated-gelu' means gelu_new)")
  act = "gelu" if cfg.gated_mlp and cfg.activation == "gelu_new" else (
      cfg.activation)
  return {
      "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
      "vocab_size": cfg.vocab_size, "d_model": cfg.emb_dim,
      "d_kv": cfg.head_dim, "d_ff": cfg.mlp_dim,
      "num_layers": cfg.num_encoder_layers,
      "num_decoder_layers": cfg.num_decoder_layers,
      "num_heads": cfg.num_heads,
      "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
      "relative_attention_max_distance": cfg.relative_attention_max_distance,
      "dropout_rate": cfg.dropout_rate,
      "layer_norm_epsilon": cfg.layer_norm_epsilon,
      "initializer_factor": 1.0,
      "feed_forward_proj": f"gated-{act}" if cfg.gated_mlp else act,
      "is_encoder_decoder": True, "use_cache": True,
      "pad_token_id": cfg.pad_id, "eos_token_id": cfg.eos_id,
      "decoder_start_token_id": cfg.decoder_start_id,
      "tie_word_embeddings": cfg.logits_via_embedding,
      "scale_decoder_outputs": cfg.logits_via_embedding,
  }


# ------------------------------------------------------------------------ T5X


def load_t5x_dir(path: str | os.PathLike, num_heads: int | None = None,
                 shardings: lazy_tensors.Shardings | None = None,
                 **overrides) -> tuple[T5Config, dict]:
  """Loads a T5X checkpoint (model dir or checkpoint_<step> dir).

  The config is inferred from shapes. Fields are taken, in priority order,
  from `overrides`/`num_heads`, `network.T5Config.*` in `<model_dir>/
  config.gin`, then the weights (num_heads from the relative-position table
  [N, buckets]); whatever is taken must agree with the weights. Fields no
  shape determines keep T5X defaults (activation gelu_new if gated else relu,
  max distance 128, epsilon 1e-6). With `shardings` (see `load_backbone`)
  each TensorStore array is read shard by shard; Orbax-written checkpoints
  are still restored whole first.

  Raises:
    FileNotFoundError: no checkpoint at `path`.
    CheckpointMismatchError: weights that do not match the config.
  """
  ckpt_dir = t5x_format.find_checkpoint_dir(path)
  flat = (t5x_format.read_t5x_checkpoint(ckpt_dir) if shardings is None
          else t5x_format.open_t5x_checkpoint(ckpt_dir))
  model_dir = t5x_format.model_dir_of(ckpt_dir)
  known = _fields_from_gin(t5x_format.read_gin_t5_config(model_dir),
                           model_dir / "config.gin")
  if num_heads is not None:
    known["num_heads"] = num_heads
  known.update(overrides)
  cfg = infer_t5x_config(flat, known, str(ckpt_dir))
  return cfg, params_from_t5x(flat, cfg, str(ckpt_dir),
                              lazy_tensors.flat_shardings(shardings, cfg))


def _fields_from_gin(gin: Mapping[str, Any], source: pathlib.Path
                     ) -> dict[str, Any]:
  """Our T5Config fields from gin `T5Config` bindings."""
  fields = {k: gin[k] for k in _GIN_FIELDS if k in gin}
  acts = gin.get("mlp_activations")
  if acts is not None:
    acts = tuple(acts) if isinstance(acts, (tuple, list)) else (acts,)
    gated = len(acts) == 2 and acts[1] == "linear"
    if not acts or len(acts) > 2 or (len(acts) == 2 and not gated):
      raise ValueError(f"{source}: unsupported mlp_activations {acts}")
    # T5X's 'gelu' is flax's tanh approximation, i.e. HF's gelu_new.
    fields.update(activation={"gelu": "gelu_new"}.get(acts[0], acts[0]),
                  gated_mlp=gated)
  return fields


def infer_t5x_config(flat: Mapping[str, Any], known: Mapping[str, Any],
                     source: str) -> T5Config:
  """Completes `known` T5Config fields from T5X (2-D) weight shapes."""
  fields = dict(known)

  def shape(name: str) -> tuple[int, ...]:
    if name not in flat:
      raise CheckpointMismatchError(
          f"{source}: cannot infer the T5 config, {name} is missing")
    return tuple(flat[name].shape)

  vocab, emb = shape("token_embedder/embedding")
  fields.setdefault("vocab_size", vocab)
  fields.setdefault("emb_dim", emb)
  for stack in ("encoder", "decoder"):
    layers = [int(m.group(2)) for m in map(_LAYER.match, flat)
              if m and m.group(1) == stack]
    fields.setdefault(f"num_{stack}_layers", max(layers, default=-1) + 1)
  gated = fields.setdefault("gated_mlp", any(
      k.endswith("/mlp/wi_0/kernel") for k in flat))
  fields.setdefault("activation", "gelu_new" if gated else "relu")
  wi = "wi_0" if gated else "wi"
  fields.setdefault("mlp_dim", shape(f"encoder/layers_0/mlp/{wi}/kernel")[-1])
  fields.setdefault("logits_via_embedding",
                    "decoder/logits_dense/kernel" not in flat)
  if "num_heads" not in fields and _HEADS_FROM not in flat:
    raise CheckpointMismatchError(
        f"{source}: cannot infer num_heads ({_HEADS_FROM} is missing); pass "
        "load_t5x_dir(path, num_heads=N) or bind network.T5Config.num_heads "
        "in the model dir's config.gin")
  if _HEADS_FROM in flat:
    heads, buckets = shape(_HEADS_FROM)
    fields.setdefault("num_heads", heads)
    fields.setdefault("relative_attention_num_buckets", buckets)
  if "head_dim" not in fields:
    joined = shape("encoder/layers_0/attention/query/kernel")[-1]
    if joined % fields["num_heads"]:
      raise CheckpointMismatchError(
          f"{source}: query kernel width {joined} is not a multiple of "
          f"num_heads={fields['num_heads']}")
    fields["head_dim"] = joined // fields["num_heads"]
  return T5Config(**fields)


def _t5x_shape(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """T5X's 2-D storage shape of our param `path` with `shape`."""
  parts = path.split("/")
  if len(shape) == 3 and parts[-1] == "kernel":
    if parts[-2] == "out":
      return (shape[0] * shape[1], shape[2])  # [N, D, H] -> [N*D, H]
    return (shape[0], shape[1] * shape[2])  # [H, N, D] -> [H, N*D]
  return tuple(shape)


def _t5x_layout(path: str, shape: tuple[int, ...]) -> lazy_tensors.Layout:
  """How T5X's 2-D storage of our param `path` with `shape` becomes ours."""
  if _t5x_shape(path, shape) == tuple(shape):
    return lazy_tensors.Layout()
  if path.split("/")[-2] == "out":  # [N*D, H] -> [N, D, H]
    return lazy_tensors.Layout(split=0, heads=shape[0], head_dim=shape[1])
  return lazy_tensors.Layout(split=1, heads=shape[1], head_dim=shape[2])


def params_from_t5x(flat: Mapping[str, Any], cfg: T5Config,
                    source: str = "T5X checkpoint",
                    shardings: Mapping[str, Any] | None = None) -> dict:
  """T5X flat params (2-D attention kernels) -> our tree, strictly.

  `flat` values are arrays or `lazy_tensors.Tensor`s; `shardings` as in
  `convert.params_from_hf`.
  """
  expected = convert.abstract_params(cfg)
  leaves, missing, bad_shape = {}, [], []
  for path, want in expected.items():
    if path not in flat:
      missing.append(path)
      continue
    tensor = lazy_tensors.as_tensor(flat[path])
    stored = _t5x_shape(path, want.shape)
    if tensor.shape == tuple(want.shape):  # Already 3-D.
      leaves[path] = (tensor, lazy_tensors.Layout())
    elif tensor.shape == stored:
      leaves[path] = (tensor, _t5x_layout(path, tuple(want.shape)))
    else:
      bad_shape.append(f"{path}: {tensor.shape}, model wants {stored}")
  unexpected = sorted(set(flat) - set(expected))
  convert.raise_if_mismatch(source, missing, unexpected, bad_shape)
  return lazy_tensors.build(leaves, shardings)


def t5x_from_params(params: Mapping, cfg: T5Config) -> Flat:
  """Our tree -> T5X flat params with 2-D attention kernels."""
  flat = _check_params(params, cfg, "params")
  return {path: arr.reshape(_t5x_shape(path, arr.shape))
          for path, arr in flat.items()}


# --------------------------------------------------------------------- strict


def _check_params(params: Mapping, cfg: T5Config, source: str) -> Flat:
  """Flat numpy params, after checking names and shapes against `cfg`."""
  flat = {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(
      flax.core.meta.unbox(params), sep="/").items()}
  expected = convert.abstract_params(cfg)
  missing = sorted(set(expected) - set(flat))
  unexpected = sorted(set(flat) - set(expected))
  bad_shape = [f"{k}: {flat[k].shape}, model wants {tuple(v.shape)}"
               for k, v in expected.items()
               if k in flat and flat[k].shape != tuple(v.shape)]
  convert.raise_if_mismatch(source, missing, unexpected, bad_shape)
  return flat
