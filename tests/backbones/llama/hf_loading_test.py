"""Loading Llama decoders from Hugging Face directories (safetensors)."""

import json

import ml_dtypes
import numpy as np
import pytest

from prompt_jax.backbones.llama import convert
from prompt_jax.backbones.llama import hf_loading

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


def _hand_params(state: dict, tied: bool, n: int = 4, k: int = 2,
                 d: int = 8) -> dict:
  """Our tree from an HF Llama state, written out by hand (the reference):
  HF Linear weights are [out, in]; our kernels [in, out], heads split."""
  h = state["model.embed_tokens.weight"].shape[1]
  tree = {"token_embedder": {"embedding": state["model.embed_tokens.weight"]},
          "decoder_norm": {"scale": state["model.norm.weight"]}}
  if not tied:
    tree["logits_dense"] = {"kernel": state["lm_head.weight"].T}
  for i in range(2):
    w = lambda name, i=i: state[f"model.layers.{i}.{name}.weight"]
    tree[f"layers_{i}"] = {
        "self_attention": {
            "query": {"kernel": w("self_attn.q_proj").T.reshape(h, n, d)},
            "key": {"kernel": w("self_attn.k_proj").T.reshape(h, k, d)},
            "value": {"kernel": w("self_attn.v_proj").T.reshape(h, k, d)},
            "out": {"kernel": w("self_attn.o_proj").T.reshape(n, d, h)}},
        "mlp": {"wi_0": {"kernel": w("mlp.gate_proj").T},
                "wi_1": {"kernel": w("mlp.up_proj").T},
                "wo": {"kernel": w("mlp.down_proj").T}},
        "pre_self_attention_layer_norm": {"scale": w("input_layernorm")},
        "pre_mlp_layer_norm": {"scale": w("post_attention_layernorm")}}
  return tree


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
  _assert_trees_equal(params, _hand_params(_numpy_state(model), tied))


def test_sharded_directory(tmp_path):
  model = _tiny_model(tied=False, seed=1)
  model.save_pretrained(tmp_path, max_shard_size="20KB")
  assert (tmp_path / "model.safetensors.index.json").is_file()
  _, params = hf_loading.load_hf_dir(tmp_path)
  _assert_trees_equal(params, _hand_params(_numpy_state(model), tied=False))


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
    convert.from_hf_state(hf, state, "state")


def test_tied_head_that_differs_from_the_embedding_is_named(tmp_path):
  model = _tiny_model(tied=True)
  model.save_pretrained(tmp_path)
  state = _numpy_state(model)
  hf = json.loads((tmp_path / "config.json").read_text())
  state["lm_head.weight"] = state["lm_head.weight"].copy()
  convert.from_hf_state(hf, state, "state")  # An equal copy is fine.
  state["lm_head.weight"][3, 5] += 1.0
  with pytest.raises(hf_loading.CheckpointMismatchError,
                     match=r"^state does not match the model: 1 tied but not "
                     r"equal to model\.embed_tokens\.weight: lm_head\.weight$"):
    convert.from_hf_state(hf, state, "state")


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
