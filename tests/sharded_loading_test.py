"""Checkpoints loaded straight into their shardings, one shard read at a time.

Each format is loaded twice: whole (numpy, no shardings) and into the
shardings of a 2 x 4 ('data', 'model') mesh of the 8 fake CPU devices. Every
sharded leaf must have its target sharding and equal the whole load bit for
bit, and the readers must be asked for slices, never a whole sharded tensor.
"""

import json

import flax.traverse_util
import gguf
import jax
import numpy as np
import pytest
from safetensors import numpy as st_numpy

from prompt_jax.backbones import lazy_tensors
from prompt_jax import partitioning
from prompt_jax import testing
from prompt_jax.backbones.llama import gguf_loading
from prompt_jax.backbones.llama import hf_loading
from prompt_jax.backbones.llama import network as decoder_network
from prompt_jax.backbones.t5 import convert
from prompt_jax.backbones.t5 import loading
from prompt_jax.backbones.t5 import network
from prompt_jax.backbones.t5 import t5x_format

MESH = partitioning.make_mesh(2, 4)
RULES = partitioning.standard_logical_axis_rules("model")
SAMPLE = (jax.ShapeDtypeStruct((1, 1), np.int32),)


def t5_shardings(cfg):
  return partitioning.param_shardings(partitioning.abstract_variables(
      network.T5Transformer(cfg))["params"], MESH, RULES)


def decoder_shardings(cfg):
  return partitioning.param_shardings(partitioning.abstract_variables(
      decoder_network.DecoderLM(cfg), SAMPLE)["params"], MESH, RULES)


def _flat(tree) -> dict:
  return flax.traverse_util.flatten_dict(tree, sep="/")


def assert_sharded_copy(sharded, whole, shardings) -> None:
  """Same leaves; each in its target sharding, equal to `whole` bitwise."""
  sharded, whole, shardings = _flat(sharded), _flat(whole), _flat(shardings)
  assert sorted(sharded) == sorted(whole) == sorted(shardings)
  for path, leaf in sharded.items():
    assert isinstance(leaf, jax.Array), path
    assert leaf.sharding == shardings[path], path
    assert leaf.dtype == whole[path].dtype, path
    np.testing.assert_array_equal(np.asarray(leaf), whole[path],
                                  err_msg=path)
  wi = sharded.get("encoder/layers_0/mlp/wi_0/kernel",
                   sharded.get("layers_0/mlp/wi_0/kernel"))
  assert wi.addressable_shards[0].data.shape[-1] == wi.shape[-1] // 4


def record_reads(monkeypatch, cls) -> list:
  """Records (tensor, elements) of every `cls.read`; whole reads fail."""
  reads = []
  read = cls.read

  def counted(self, index):
    value = read(self, index)
    reads.append((self, value.size))
    return value

  def whole(self):
    raise AssertionError(f"whole read of {self}")

  monkeypatch.setattr(cls, "read", counted)
  monkeypatch.setattr(cls, "full", whole)
  return reads


def keep_opened_safetensors(monkeypatch) -> dict:
  """The name -> tensor dict that the next `open_safetensors` returns."""
  opened = {}
  open_files = lazy_tensors.open_safetensors
  monkeypatch.setattr(lazy_tensors, "open_safetensors",
                      lambda files: opened.update(open_files(files)) or opened)
  return opened


def assert_only_slices_read(reads, shardings, stored) -> None:
  """Sharded leaves were read in slices (each at most 1/4 of the tensor)."""
  by_tensor = {}
  for tensor, size in reads:
    by_tensor.setdefault(id(tensor), []).append(size)
  checked = 0
  for path, tensor in stored.items():
    if path not in shardings or shardings[path].is_fully_replicated:
      continue
    full = int(np.prod(tensor.shape))
    sizes = by_tensor[id(tensor)]
    assert max(sizes) <= full // 4, (path, sizes, full)
    checked += 1
  assert checked >= 10


# ----------------------------------------------------------------------- T5


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
  """An HF T5 1.1 directory (untied head); dims divisible by the 4-way axis."""
  model, cfg, _ = testing.random_hf_t5("t5_1_1", vocab_size=96)
  path = tmp_path_factory.mktemp("t5")
  model.save_pretrained(path)
  return path, model, cfg


def test_hf_t5_loads_into_shardings(t5_dir, monkeypatch):
  path, _, cfg = t5_dir
  _, whole = loading.load_backbone(path)
  opened = keep_opened_safetensors(monkeypatch)
  reads = record_reads(monkeypatch, lazy_tensors.SafetensorsTensor)
  got_cfg, sharded = loading.load_backbone(path, t5_shardings)
  assert got_cfg == cfg
  targets = t5_shardings(cfg)
  assert_sharded_copy(sharded, whole, targets)
  # Stored names of a few sharded params; each read only its shards.
  names = {"token_embedder/embedding": "shared.weight",
           "decoder/logits_dense/kernel": "lm_head.weight"}
  for i in range(3):
    p, hf = f"encoder/layers_{i}", f"encoder.block.{i}.layer"
    names |= {f"{p}/attention/{ours}/kernel": f"{hf}.0.SelfAttention.{x}.weight"
              for ours, x in (("query", "q"), ("key", "k"), ("value", "v"),
                              ("out", "o"))}
    names |= {f"{p}/mlp/{w}/kernel": f"{hf}.1.DenseReluDense.{w}.weight"
              for w in ("wi_0", "wi_1", "wo")}
  assert_only_slices_read(reads, _flat(targets),
                          {p: opened[n] for p, n in names.items()})


def test_hf_t5_torch_bin_loads_into_shardings(t5_dir, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  _, model, cfg = t5_dir
  model.config.save_pretrained(tmp_path)
  state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
  torch.save(state, tmp_path / "pytorch_model.bin")
  _, whole = loading.load_backbone(tmp_path)
  _, sharded = loading.load_backbone(tmp_path, t5_shardings)
  assert _flat(whole)["token_embedder/embedding"].dtype == np.dtype("bfloat16")
  assert_sharded_copy(sharded, whole, t5_shardings(cfg))


def test_t5x_loads_into_shardings(tmp_path, monkeypatch):
  cfg = testing.tiny_t5_config(vocab_size=96, num_heads=4, head_dim=4,
                               mlp_dim=32, relative_attention_num_buckets=8)
  rng = np.random.RandomState(0)
  params = flax.traverse_util.unflatten_dict(
      {k: rng.standard_normal(v.shape).astype(v.dtype)
       for k, v in convert.abstract_params(cfg).items()}, sep="/")
  t5x_format.write_t5x_checkpoint(
      tmp_path, loading.t5x_from_params(params, cfg), 1)
  _, whole = loading.load_backbone(tmp_path)
  opened = {}
  open_ckpt = t5x_format.open_t5x_checkpoint
  monkeypatch.setattr(t5x_format, "open_t5x_checkpoint",
                      lambda p: opened.update(open_ckpt(p)) or opened)
  # pylint: disable-next=protected-access
  store_tensor = t5x_format._TensorStoreTensor
  reads = record_reads(monkeypatch, store_tensor)
  got_cfg, sharded = loading.load_backbone(tmp_path, t5_shardings)
  assert got_cfg == cfg
  assert_sharded_copy(sharded, whole, t5_shardings(cfg))
  assert_sharded_copy(sharded, params, t5_shardings(cfg))
  assert_only_slices_read(reads, _flat(t5_shardings(cfg)), opened)


# ------------------------------------------------------------------ decoder

TINY = dict(vocab_size=48, hidden_size=64, intermediate_size=96,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0,
            max_position_embeddings=128, tie_word_embeddings=False,
            model_type="llama")


def _llama_state(seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  h, f, d = 64, 96, 16
  shapes = {"model.embed_tokens.weight": (48, h), "model.norm.weight": (h,),
            "lm_head.weight": (48, h)}
  for i in range(2):
    p = f"model.layers.{i}."
    shapes |= {p + "input_layernorm.weight": (h,),
               p + "post_attention_layernorm.weight": (h,),
               p + "self_attn.q_proj.weight": (4 * d, h),
               p + "self_attn.k_proj.weight": (2 * d, h),
               p + "self_attn.v_proj.weight": (2 * d, h),
               p + "self_attn.o_proj.weight": (h, 4 * d),
               p + "mlp.gate_proj.weight": (f, h),
               p + "mlp.up_proj.weight": (f, h),
               p + "mlp.down_proj.weight": (h, f)}
  return {k: rng.standard_normal(s).astype(np.float32)
          for k, s in shapes.items()}


def test_hf_decoder_loads_into_shardings(tmp_path, monkeypatch):
  st_numpy.save_file(_llama_state(), tmp_path / "model.safetensors")
  (tmp_path / "config.json").write_text(json.dumps(TINY))
  _, whole = hf_loading.load_backbone(tmp_path)
  opened = keep_opened_safetensors(monkeypatch)
  reads = record_reads(monkeypatch, lazy_tensors.SafetensorsTensor)
  cfg, sharded = hf_loading.load_backbone(tmp_path, decoder_shardings)
  targets = decoder_shardings(cfg)
  assert_sharded_copy(sharded, whole, targets)
  names = {"token_embedder/embedding": "model.embed_tokens.weight",
           "logits_dense/kernel": "lm_head.weight"}
  for i in range(2):
    names |= {f"layers_{i}/self_attention/{ours}/kernel":
              f"model.layers.{i}.self_attn.{x}_proj.weight"
              for ours, x in (("query", "q"), ("out", "o"))}
    names |= {f"layers_{i}/mlp/{ours}/kernel":
              f"model.layers.{i}.mlp.{x}.weight"
              for ours, x in (("wi_0", "gate_proj"), ("wi_1", "up_proj"),
                              ("wo", "down_proj"))}
  assert_only_slices_read(reads, _flat(targets),
                          {p: opened[n] for p, n in names.items()})


def test_gguf_loads_into_shardings_one_tensor_at_a_time(tmp_path,
                                                        monkeypatch):
  state = _llama_state(1)
  path = gguf_loading.write_gguf(
      tmp_path / "m.gguf", TINY, state,
      default_type=gguf.GGMLQuantizationType.Q4_1,
      tokenizer={"tokens": [f"t{i}" for i in range(48)]})
  _, whole = gguf_loading.load_gguf(path)
  decoded = []
  dequantize = gguf_loading.dequantize
  monkeypatch.setattr(gguf_loading, "dequantize",
                      lambda t, s: decoded.append(t.name) or dequantize(t, s))
  cfg, sharded = hf_loading.load_backbone(path, decoder_shardings)
  assert_sharded_copy(sharded, whole, decoder_shardings(cfg))
  assert sorted(decoded) == sorted(set(decoded)) and len(decoded) == len(state)
