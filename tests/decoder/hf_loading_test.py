"""Loading Llama decoders from Hugging Face directories (safetensors)."""

import json

import ml_dtypes
import numpy as np
import pytest

from prompt_jax.decoder import convert
from prompt_jax.decoder import hf_loading

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _tiny_model(tied: bool, seed: int = 0):
  torch.manual_seed(seed)
  cfg = transformers.LlamaConfig(
      vocab_size=40, hidden_size=32, intermediate_size=48,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
      head_dim=8, rms_norm_eps=1e-5, tie_word_embeddings=tied,
      rope_parameters={"rope_theta": 5000.0, "rope_type": "default"},
      bos_token_id=1, eos_token_id=2, pad_token_id=0)
  return transformers.LlamaForCausalLM(cfg).eval()


def _numpy_state(model) -> dict:
  return {k: v.float().numpy() for k, v in model.state_dict().items()}


def _assert_trees_equal(a, b):
  flat_a = dict(_leaves(a))
  assert flat_a.keys() == dict(_leaves(b)).keys()
  for path, value in _leaves(b):
    np.testing.assert_array_equal(flat_a[path], value, err_msg=path)


def _leaves(tree, prefix=""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _leaves(value, f"{prefix}{key}/")
    else:
      yield prefix + key, np.asarray(value)


@pytest.mark.parametrize("tied", [True, False])
def test_directory_loads_like_the_state_dict(tmp_path, tied):
  model = _tiny_model(tied)
  model.save_pretrained(tmp_path)
  cfg, params = hf_loading.load_backbone(tmp_path)
  assert cfg.tie_word_embeddings is tied
  assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (4, 2, 8)
  assert cfg.rope_theta == 5000.0
  _assert_trees_equal(params, convert.params_from_hf(_numpy_state(model), cfg))


def test_sharded_directory(tmp_path):
  model = _tiny_model(tied=False, seed=1)
  model.save_pretrained(tmp_path, max_shard_size="20KB")
  assert (tmp_path / "model.safetensors.index.json").is_file()
  cfg, params = hf_loading.load_hf_dir(tmp_path)
  _assert_trees_equal(params, convert.params_from_hf(_numpy_state(model), cfg))


def test_bfloat16_weights_become_param_dtype(tmp_path):
  model = _tiny_model(tied=True, seed=2).to(torch.bfloat16)
  model.save_pretrained(tmp_path)
  _, params = hf_loading.load_hf_dir(tmp_path)
  emb = params["token_embedder"]["embedding"]
  assert emb.dtype == np.float32
  np.testing.assert_array_equal(
      emb, model.model.embed_tokens.weight.detach().float().numpy())
  _, bf16 = hf_loading.load_hf_dir(tmp_path, param_dtype=ml_dtypes.bfloat16)
  assert bf16["token_embedder"]["embedding"].dtype == ml_dtypes.bfloat16


def test_missing_tensor_is_reported(tmp_path):
  model = _tiny_model(tied=True)
  model.save_pretrained(tmp_path)
  state = _numpy_state(model)
  del state["model.layers.1.mlp.up_proj.weight"]
  hf = json.loads((tmp_path / "config.json").read_text())
  with pytest.raises(hf_loading.CheckpointMismatchError,
                     match=r"1 missing: model\.layers\.1\.mlp\.up_proj"):
    hf_loading.from_hf_state(hf, state, "state")


def test_bad_directories(tmp_path):
  with pytest.raises(FileNotFoundError, match="not found"):
    hf_loading.load_backbone(tmp_path / "absent")
  with pytest.raises(ValueError, match="not a decoder checkpoint"):
    hf_loading.load_backbone(tmp_path)
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="no weights"):
    hf_loading.load_hf_dir(tmp_path)
  (tmp_path / "model.safetensors").write_bytes(b"junk")
  with pytest.raises(ValueError, match=r"model\.safetensors: unreadable"):
    hf_loading.load_hf_dir(tmp_path)
  (tmp_path / "config.json").write_text("[1]")
  with pytest.raises(ValueError, match="expected a JSON object"):
    hf_loading.load_hf_dir(tmp_path)
