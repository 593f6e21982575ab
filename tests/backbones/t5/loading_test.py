"""Backbone loading: HF and T5X directories, strict errors, no overwrites."""

import functools
import json
import os
import pathlib
import subprocess
import sys

import flax.core
import flax.traverse_util
from flax import serialization
import numpy as np
import pytest
from safetensors import numpy as st_numpy

from prompt_jax import testing
from prompt_jax.backbones.t5 import convert
from prompt_jax.backbones.t5 import loading
from prompt_jax.backbones.t5 import network
from prompt_jax.backbones.t5 import t5x_format

STYLES = sorted(testing.HF_STYLES)
_REPO = pathlib.Path(__file__).resolve().parents[3]


@functools.lru_cache(maxsize=None)
def _hf(style: str):
  """(torch model, cfg, params) of a random tiny HF T5, built once."""
  return testing.random_hf_t5(style)


def _flat(params) -> dict:
  return flax.traverse_util.flatten_dict(flax.core.meta.unbox(params),
                                         sep="/")


def _assert_params_equal(got, want):
  got, want = _flat(got), _flat(want)
  assert sorted(got) == sorted(want)
  for k in want:
    assert np.asarray(got[k]).dtype == np.asarray(want[k]).dtype, k
    np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]),
                                  err_msg=k)


def _batch(vocab: int):
  rng = np.random.RandomState(0)
  enc = testing.padded_batch(rng, 2, 11, vocab, lengths=[11, 6])
  dec = testing.padded_batch(rng, 2, 5, vocab, start_with_pad=True)
  return enc, dec


def _assert_logits_match_torch(model, cfg, params):
  import torch  # pylint: disable=g-import-not-at-top
  enc, dec = _batch(cfg.vocab_size)
  ours = network.T5Transformer(cfg).apply({"params": params}, enc, dec)
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(enc),
                attention_mask=torch.tensor(enc != 0),
                decoder_input_ids=torch.tensor(dec)).logits.numpy()
  # Measured <= 2.9e-6 over the four callers (bench/parity_checks.py bounds
  # the same comparison at 5e-6 / 1e-5 for T5 1.0 / 1.1).
  np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-5, rtol=0)


def _random_params(cfg, seed: int = 0) -> dict:
  """Distinct random values for every param (faster than model init)."""
  rng = np.random.RandomState(seed)
  flat = {k: rng.standard_normal(v.shape).astype(v.dtype)
          for k, v in convert.abstract_params(cfg).items()}
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def _one_line(excinfo) -> str:
  message = str(excinfo.value)
  assert "\n" not in message
  return message


# ---------------------------------------------------------------- Hugging Face


@pytest.mark.parametrize("style", STYLES)
def test_hf_safetensors_dir_gives_transformers_logits(style, tmp_path):
  model, cfg, params = _hf(style)
  model.save_pretrained(tmp_path, safe_serialization=True)
  assert (tmp_path / "model.safetensors").is_file()
  got_cfg, got = loading.load_backbone(tmp_path)
  assert got_cfg == cfg
  assert got_cfg.logits_via_embedding == (style == "t5_1_0")
  _assert_params_equal(got, params)
  _assert_logits_match_torch(model, got_cfg, got)


def test_hf_sharded_safetensors(tmp_path):
  model, cfg, params = _hf("t5_1_1")
  model.save_pretrained(tmp_path, max_shard_size="20KB")
  assert (tmp_path / "model.safetensors.index.json").is_file()
  assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
  got_cfg, got = loading.load_hf_dir(tmp_path)
  assert got_cfg == cfg
  _assert_params_equal(got, params)


@pytest.mark.parametrize("style", STYLES)
def test_hf_pytorch_bin(style, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  model, cfg, params = _hf(style)
  # transformers 5 ignores safe_serialization=False, so write the .bin.
  model.config.save_pretrained(tmp_path)
  torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
  got_cfg, got = loading.load_hf_dir(tmp_path)
  assert got_cfg == cfg
  _assert_params_equal(got, params)


def test_hf_pytorch_bin_bfloat16(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  model, cfg, _ = _hf("t5_1_0")
  model.config.save_pretrained(tmp_path)
  state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
  torch.save(state, tmp_path / "pytorch_model.bin")
  _, got = loading.load_hf_dir(tmp_path)
  embedding = got["token_embedder"]["embedding"]
  assert embedding.dtype == np.dtype("bfloat16")
  np.testing.assert_array_equal(embedding.astype(np.float32),
                                state["shared.weight"].float().numpy())


def test_hf_safetensors_load_does_not_import_torch(tmp_path):
  model, cfg, _ = _hf("t5_1_1")
  model.save_pretrained(tmp_path)
  code = ("import sys; from prompt_jax.backbones.t5 import loading; "
          f"cfg, _ = loading.load_hf_dir({str(tmp_path)!r}); "
          "print(cfg.mlp_dim, 'torch' in sys.modules)")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], cwd=_REPO, env=env,
                       capture_output=True, text=True, check=True)
  assert out.stdout.split() == [str(cfg.mlp_dim), "False"]


def test_transformers5_tied_unscaled_head(tmp_path):
  """T5 1.1 saved by transformers 5 without a separate lm_head."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  hf_cfg = transformers.T5Config(
      vocab_size=64, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4,
      relative_attention_num_buckets=8, dropout_rate=0.0,
      feed_forward_proj="gated-gelu", tie_word_embeddings=False)
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(hf_cfg).eval()
  model.save_pretrained(tmp_path)
  written = json.loads((tmp_path / "config.json").read_text())
  assert written["tie_word_embeddings"] is True
  assert written["scale_decoder_outputs"] is False
  cfg, params = loading.load_hf_dir(tmp_path)
  assert not cfg.logits_via_embedding
  _assert_logits_match_torch(model, cfg, params)


@pytest.mark.parametrize("style", STYLES)
def test_save_hf_dir_round_trip(style, tmp_path):
  _, cfg, params = _hf(style)
  out = loading.save_hf_dir(tmp_path / "saved", cfg, params)
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
  assert os.listdir(tmp_path) == ["saved"]  # No temp dir left behind.
  written = json.loads((out / "config.json").read_text())
  tied = style == "t5_1_0"
  assert written["tie_word_embeddings"] is tied
  assert written["scale_decoder_outputs"] is tied
  got_cfg, got = loading.load_hf_dir(out)
  assert got_cfg == cfg
  _assert_params_equal(got, params)


def test_hf_config_not_matching_weights(tmp_path):
  model, cfg, _ = _hf("t5_1_1")
  model.save_pretrained(tmp_path)
  path = tmp_path / "config.json"
  path.write_text(json.dumps(json.loads(path.read_text()) | {"d_ff": 50}))
  with pytest.raises(loading.CheckpointMismatchError) as e:
    loading.load_backbone(tmp_path)
  message = _one_line(e)
  assert "model.safetensors does not match the model" in message
  assert f"({cfg.emb_dim}, 50)" in message  # Wanted wi_0 shape...
  assert "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in message


def _with_tensors(path, **changes):
  """Rewrites `path`/model.safetensors with tensors added or replaced."""
  state = st_numpy.load_file(path / "model.safetensors")
  st_numpy.save_file(state | {k.replace("__", "."): v(state) for k, v in
                              changes.items()}, path / "model.safetensors")
  return state


def _bumped(state):
  """shared.weight with one element changed."""
  value = state["shared.weight"].copy()
  value[3, 5] += 1
  return value


def test_tied_copies_equal_to_shared_are_accepted(tmp_path):
  model, cfg, params = _hf("t5_1_0")  # tie_word_embeddings: lm_head tied.
  model.save_pretrained(tmp_path)
  _with_tensors(tmp_path, lm_head__weight=lambda s: s["shared.weight"].copy(),
                encoder__embed_tokens__weight=lambda s: s["shared.weight"])
  got_cfg, got = loading.load_hf_dir(tmp_path)
  assert got_cfg == cfg
  _assert_params_equal(got, params)


@pytest.mark.parametrize("name", ["lm_head.weight",
                                  "encoder.embed_tokens.weight",
                                  "decoder.embed_tokens.weight"])
def test_tied_copy_that_differs_from_shared_is_named(name, tmp_path):
  model, _, _ = _hf("t5_1_0")
  model.save_pretrained(tmp_path)
  _with_tensors(tmp_path, **{name.replace(".", "__"): _bumped})
  with pytest.raises(loading.CheckpointMismatchError) as e:
    loading.load_hf_dir(tmp_path)
  assert _one_line(e) == (
      f"{tmp_path / 'model.safetensors'} does not match the model: 1 tied "
      f"but not equal to shared.weight: {name}")


@pytest.mark.parametrize("tie", [False, True])
def test_untied_head_is_its_own_weight(tie, tmp_path):
  """T5 1.1: lm_head differs from shared. tie_word_embeddings=false (as on
  the Hub), or true with scale_decoder_outputs=false (transformers 5 writes
  that and, reloading, keeps the stored head when the two differ)."""
  model, cfg, params = _hf("t5_1_1")
  model.save_pretrained(tmp_path)
  hf = json.loads((tmp_path / "config.json").read_text())
  assert hf["scale_decoder_outputs"] is False
  if not tie:
    del hf["scale_decoder_outputs"]
  (tmp_path / "config.json").write_text(json.dumps(
      hf | {"tie_word_embeddings": tie}))
  state = _with_tensors(tmp_path)
  assert not np.array_equal(state["lm_head.weight"], state["shared.weight"])
  got_cfg, got = loading.load_hf_dir(tmp_path)
  assert got_cfg == cfg
  np.testing.assert_array_equal(got["decoder"]["logits_dense"]["kernel"],
                                state["lm_head.weight"].T)
  _assert_params_equal(got, params)


def test_save_refuses_existing_dir(tmp_path):
  _, cfg, params = _hf("t5_1_1")
  (tmp_path / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError) as e:
    loading.save_hf_dir(tmp_path, cfg, params)
  assert str(tmp_path) in _one_line(e)
  assert os.listdir(tmp_path) == ["keep.txt"]
  assert (tmp_path / "keep.txt").read_text() == "mine"
  (tmp_path / "empty").mkdir()  # An empty directory may be filled.
  loading.save_hf_dir(tmp_path / "empty", cfg, params)
  assert (tmp_path / "empty" / "model.safetensors").is_file()


def test_save_checks_params_against_config(tmp_path):
  _, cfg, params = _hf("t5_1_1")
  with pytest.raises(loading.CheckpointMismatchError):
    loading.save_hf_dir(tmp_path / "x", cfg.replace(mlp_dim=7), params)
  assert not os.listdir(tmp_path)


# ------------------------------------------------------------------------ T5X

_T5X_CONFIGS = {
    # heads * head_dim != emb_dim, so a wrong reshape cannot pass.
    "gated_untied": testing.tiny_t5_config(num_heads=3, head_dim=4,
                                           relative_attention_num_buckets=8),
    "relu_tied": testing.tiny_t5_config(
        activation="relu", gated_mlp=False, logits_via_embedding=True,
        num_encoder_layers=3, num_decoder_layers=1, vocab_size=40),
}


def _write_t5x(model_dir, cfg, step=100, seed=0):
  params = _random_params(cfg, seed)
  t5x_format.write_t5x_checkpoint(model_dir, loading.t5x_from_params(
      params, cfg), step)
  return params


@pytest.mark.parametrize("name", sorted(_T5X_CONFIGS))
def test_t5x_round_trip_infers_config(name, tmp_path):
  cfg = _T5X_CONFIGS[name]
  params = _write_t5x(tmp_path, cfg)
  step_dir = tmp_path / "checkpoint_100"
  assert (step_dir / "checkpoint").is_file()
  query = step_dir / "target.encoder.layers_0.attention.query.kernel"
  zarray = json.loads((query / ".zarray").read_text())
  assert zarray["shape"] == [cfg.emb_dim, cfg.num_heads * cfg.head_dim]
  out = step_dir / "target.decoder.layers_0.self_attention.out.kernel"
  zarray = json.loads((out / ".zarray").read_text())
  assert zarray["shape"] == [cfg.num_heads * cfg.head_dim, cfg.emb_dim]
  for path in (tmp_path, step_dir, step_dir / "checkpoint"):
    got_cfg, got = loading.load_backbone(path)
    assert got_cfg == cfg
    _assert_params_equal(got, params)


def test_t5x_layout_is_hf_flax_kernel_layout(tmp_path):
  """T5X 2-D kernels are HF torch weights transposed (HF's T5X converter
  copies them unchanged into HF Flax kernels); loading gives HF logits."""
  model, cfg, params = _hf("t5_1_1")
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  flat = loading.t5x_from_params(params, cfg)
  hf_attn = "decoder.block.1.layer.1.EncDecAttention"
  pairs = {
      "encoder/layers_0/attention/query/kernel":
          "encoder.block.0.layer.0.SelfAttention.q.weight",
      "decoder/layers_1/encoder_decoder_attention/out/kernel":
          f"{hf_attn}.o.weight",
      "decoder/layers_1/encoder_decoder_attention/value/kernel":
          f"{hf_attn}.v.weight",
      "encoder/relpos_bias/rel_embedding":
          "encoder.block.0.layer.0.SelfAttention.relative_attention_bias"
          ".weight",
      "decoder/logits_dense/kernel": "lm_head.weight",
  }
  for t5x_name, hf_name in pairs.items():
    np.testing.assert_array_equal(flat[t5x_name], state[hf_name].T)
  np.testing.assert_array_equal(flat["token_embedder/embedding"],
                                state["shared.weight"])
  t5x_format.write_t5x_checkpoint(tmp_path, flat, 1)
  got_cfg, got = loading.load_t5x_dir(tmp_path)
  assert got_cfg == cfg.replace(relative_attention_max_distance=128)
  _assert_logits_match_torch(model, cfg, got)


def test_t5x_msgpack_layout(tmp_path):
  cfg = _T5X_CONFIGS["relu_tied"]
  _write_t5x(tmp_path, cfg, step=5)
  raw = (tmp_path / "checkpoint_5" / "checkpoint").read_bytes()
  contents = serialization.msgpack_restore(raw)
  assert contents["version"] == 3
  assert int(contents["optimizer"]["state"]["step"]) == 5
  spec = contents["optimizer"]["target"]["decoder"]["decoder_norm"]["scale"]
  assert spec["driver"] == "zarr"
  assert spec["kvstore"]["driver"] == "file"
  rel_path = spec["kvstore"]["path"].rstrip("/")
  assert rel_path == "target.decoder.decoder_norm.scale"
  assert spec["metadata"]["shape"] == [cfg.emb_dim]


def test_t5x_num_heads_from_argument_and_gin(tmp_path):
  cfg = _T5X_CONFIGS["gated_untied"]
  params = _write_t5x(tmp_path, cfg)
  got_cfg, got = loading.load_t5x_dir(tmp_path, num_heads=3)
  assert got_cfg == cfg
  _assert_params_equal(got, params)
  with pytest.raises(loading.CheckpointMismatchError) as e:
    loading.load_t5x_dir(tmp_path, num_heads=4)
  assert "encoder/relpos_bias/rel_embedding: (3, 8)" in _one_line(e)
  # The gin's exact GELU differs from the inferred default: proves it is read.
  (tmp_path / "config.gin").write_text(
      "from __gin__ import dynamic_registration\n"
      "# Macros:\nHEADS = 3\n"
      "network.T5Config.num_heads = %HEADS\n"
      "network.T5Config.head_dim = 4\n"
      "network.T5Config.dtype = @jnp.bfloat16\n"
      "network.T5Config.mlp_activations = \\\n    ('gelu_pytorch_tanh',\n"
      "     'linear')\n")
  got_cfg, _ = loading.load_t5x_dir(tmp_path / "checkpoint_100")
  assert got_cfg == cfg.replace(activation="gelu_pytorch_tanh")
  (tmp_path / "config.gin").write_text("network.T5Config.num_heads = 2\n")
  with pytest.raises(loading.CheckpointMismatchError):
    loading.load_backbone(tmp_path)


def test_t5x_picks_latest_step(tmp_path):
  cfg = _T5X_CONFIGS["relu_tied"]
  _write_t5x(tmp_path, cfg, step=9)
  latest = _write_t5x(tmp_path, cfg, step=10, seed=1)
  (tmp_path / "checkpoint_11.tmp-123").mkdir()  # An unfinished save.
  _, got = loading.load_t5x_dir(tmp_path)
  _assert_params_equal(got, latest)
  with pytest.raises(FileExistsError):
    _write_t5x(tmp_path, cfg, step=10)


def test_t5x_strict_errors_in_one_message(tmp_path):
  cfg = _T5X_CONFIGS["gated_untied"]
  flat = loading.t5x_from_params(_random_params(cfg), cfg)
  del flat["encoder/layers_1/mlp/wo/kernel"]
  flat["encoder/extra/kernel"] = np.zeros((2, 2), np.float32)
  flat["decoder/layers_0/mlp/wi_0/kernel"] = np.zeros((16, 31), np.float32)
  t5x_format.write_t5x_checkpoint(tmp_path, flat, 1)
  with pytest.raises(loading.CheckpointMismatchError) as e:
    loading.load_backbone(tmp_path)
  message = _one_line(e)
  assert "1 missing: encoder/layers_1/mlp/wo/kernel" in message
  assert "1 unexpected: encoder/extra/kernel" in message
  assert ("1 wrong shape: decoder/layers_0/mlp/wi_0/kernel: (16, 31), "
          "model wants (16, 32)") in message


def test_t5x_inline_and_placeholder_leaves(tmp_path):
  """Small leaves stored inline, and legacy orbax `PLACEHOLDER://` refs."""
  cfg = _T5X_CONFIGS["relu_tied"]
  params = _write_t5x(tmp_path, cfg)
  msgpack = tmp_path / "checkpoint_100" / "checkpoint"
  contents = serialization.msgpack_restore(msgpack.read_bytes())
  target = contents["optimizer"]["target"]
  target["encoder"]["encoder_norm"]["scale"] = np.asarray(
      params["encoder"]["encoder_norm"]["scale"])
  target["decoder"]["decoder_norm"]["scale"] = (
      "PLACEHOLDER://target.decoder.decoder_norm.scale")
  msgpack.write_bytes(serialization.msgpack_serialize(contents))
  _, got = loading.load_t5x_dir(tmp_path)
  _assert_params_equal(got, params)


def test_t5x_orbax_checkpoint(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  cfg = _T5X_CONFIGS["gated_untied"]
  params = _random_params(cfg)
  target = flax.traverse_util.unflatten_dict(
      loading.t5x_from_params(params, cfg), sep="/")
  tree = {"version": 3, "optimizer": {
      "target": target, "state": {"step": np.asarray(3, np.int32)}}}
  ocp.PyTreeCheckpointer().save(tmp_path / "checkpoint_3", tree)
  got_cfg, got = loading.load_backbone(tmp_path)
  assert got_cfg == cfg
  _assert_params_equal(got, params)


def test_gin_parser(tmp_path):
  (tmp_path / "config.gin").write_text(
      "# Macros:\n# ====\nA = %B\nB = 64\n\n"
      "# Parameters for network.T5Config:\n"
      "network.T5Config.head_dim = %A\n"
      "T5Config.num_heads = 2\n"
      "models.PromptT5Config.emb_dim = 5\n"
      "network.T5Config.logits_via_embedding = False\n"
      "network.T5Config.dtype = 'bfloat16'\n")
  assert t5x_format.read_gin_t5_config(tmp_path) == {
      "head_dim": 64, "num_heads": 2, "logits_via_embedding": False,
      "dtype": "bfloat16"}
  assert t5x_format.read_gin_t5_config(tmp_path / "none") == {}


# --------------------------------------------------------------------- errors


def test_missing_and_unrecognised_dirs(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    loading.load_backbone(tmp_path / "nope")
  assert str(tmp_path / "nope") in _one_line(e)
  (tmp_path / "weights.npz").write_bytes(b"")
  with pytest.raises(ValueError) as e:
    loading.load_backbone(tmp_path)
  message = _one_line(e)
  assert "config.json" in message and "checkpoint_<step>" in message
  assert "weights.npz" in message
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError) as e:
    loading.load_backbone(tmp_path)
  assert "model.safetensors" in _one_line(e)


def test_t5x_missing_array_dir_is_named(tmp_path):
  cfg = _T5X_CONFIGS["relu_tied"]
  _write_t5x(tmp_path, cfg, step=2)
  name = "target.encoder.encoder_norm.scale"
  for child in (tmp_path / "checkpoint_2" / name).iterdir():
    child.unlink()
  (tmp_path / "checkpoint_2" / name).rmdir()
  with pytest.raises(ValueError) as e:
    loading.load_backbone(tmp_path)
  message = _one_line(e)
  assert "cannot read encoder/encoder_norm/scale" in message
  assert "tensorstore_spec" not in message
