"""P-tuning: PEFT parity, hybrid templates, the exported table, settings.

Parity: a tiny random HF Llama (6 query / 2 kv heads) and a tiny T5 1.1
are wrapped by `peft.get_peft_model` with a `PromptEncoderConfig` (MLP and
LSTM); PEFT's own random encoder weights are imported into our tree
(`peft_format.from_peft_state`) and logits and the gradients of
`sum(logits * W)` w.r.t. every encoder tensor are compared. PEFT returns
causal-LM logits for the P virtual slots too: we compare the text slots
(PEFT's `[:, P:]`). PEFT prepends the prompt before everything it is fed,
BOS included, so our decoder runs with `add_bos=False` on ids that start
with BOS ('prefix' position).

Templates: a template with pseudo tokens in two places is checked against
a reference that never uses the pseudo-token seam: the prompt rows are
appended to the vocabulary as ids V..V+P-1 and the plain backbone runs.
"""

from typing import Any, NamedTuple

import flax.traverse_util
import gin
import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch

from prompt_jax import gin_utils
from prompt_jax import models
from prompt_jax import optim
from prompt_jax import testing
from prompt_jax.backbones.llama import network as llama_network
from prompt_jax.backbones.t5 import network as t5_network
from prompt_jax.methods import METHODS
from prompt_jax.methods import base
from prompt_jax.methods.p_tuning import PTuning
from prompt_jax.methods.p_tuning import encoder
from prompt_jax.methods.p_tuning import peft_format
from prompt_jax.methods.p_tuning import template as template_lib
from prompt_jax.methods.prompt_tuning import PromptTuning
from prompt_jax.testing import llama as llama_testing
from prompt_jax.testing import peft_families

P, HIDDEN = 4, 12
LOGITS_REL_BOUND = 1e-5  # max |ours - PEFT| / max |PEFT|, on text slots.
GRAD_REL_BOUND = 1e-4  # per encoder tensor.
TABLE_REL_BOUND = 1e-6  # the exported table vs the encoder it came from.
CASES = [("llama", "MLP"), ("llama", "LSTM"), ("t5", "MLP"), ("t5", "LSTM")]


def _rel(ours, ref) -> float:
  ours, ref = np.asarray(ours), np.asarray(ref)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


Family = peft_families.Family


@pytest.fixture(scope="module")
def families() -> dict[str, Family]:
  return {"llama": peft_families.llama(), "t5": peft_families.t5()}


def _peft_model(fam: Family, encoder_type: str):
  task = "CAUSAL_LM" if fam.lm.family == models.DECODER_ONLY else (
      "SEQ_2_SEQ_LM")
  extra = {}
  if task == "SEQ_2_SEQ_LM" and encoder_type == "LSTM":
    extra["num_transformer_submodules"] = 1  # See peft_format.
  return peft.get_peft_model(fam.make_hf(), peft.PromptEncoderConfig(
      task_type=task, num_virtual_tokens=P, encoder_hidden_size=HIDDEN,
      encoder_reparameterization_type=encoder_type, **extra))


class Setup(NamedTuple):
  fam: Family
  method: PTuning
  trainable: Any  # PEFT's random encoder, imported.
  ours: dict[str, Any]  # logits, grads.
  ref: dict[str, Any]  # PEFT's logits (text slots), grads, saved table.
  peft_count: int  # PEFT's trainable parameters.


@pytest.fixture(scope="module", params=CASES, ids=[f"{f}-{e}" for f, e in
                                                   CASES])
def setup(request, families) -> Setup:
  family, encoder_type = request.param
  fam = families[family]
  method = PTuning(length=P, encoder_type=encoder_type,
                   encoder_hidden_size=HIDDEN)
  model = _peft_model(fam, encoder_type)
  named = {n: p for n, p in model.named_parameters() if p.requires_grad}
  trainable = {"prompt_encoder": peft_format.from_peft_state(
      {n: p.detach().numpy() for n, p in named.items()}, P)}
  logits_fn = peft_families.logits_fn(fam.lm, fam.inputs)
  shape = jax.eval_shape(logits_fn, fam.params, models.Seams()).shape
  weights = np.random.RandomState(1).standard_normal(shape).astype(
      np.float32) * fam.valid[..., None]

  def loss(trainable):
    logits = logits_fn(*method.bind(fam.lm, trainable, fam.params))
    return jnp.sum(logits * weights), logits

  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      trainable)
  ref_logits = model(**fam.kwargs).logits
  if fam.lm.family == models.DECODER_ONLY:
    ref_logits = ref_logits[:, P:]  # PEFT keeps the virtual slots.
  (ref_logits * torch.tensor(weights)).sum().backward()
  ref_grads = peft_format.from_peft_state(
      {n: p.grad.numpy() for n, p in named.items()}, P)
  saved = peft.get_peft_model_state_dict(model)["prompt_embeddings"]
  return Setup(fam, method, trainable,
               dict(logits=np.asarray(logits), grads=grads),
               dict(logits=ref_logits.detach().numpy(), grads=ref_grads,
                    table=saved.numpy()[:P]),
               sum(p.numel() for p in named.values()))


# ------------------------------------------------------- PEFT parity ----


def test_logits_match_peft(setup):
  valid = setup.fam.valid
  ours, ref = setup.ours["logits"][valid], setup.ref["logits"][valid]
  err = _rel(ours, ref)
  print(f"{setup.method.encoder_type}: logits rel err {err:.2e}")
  assert err <= LOGITS_REL_BOUND
  bare = peft_families.logits_fn(setup.fam.lm, setup.fam.inputs)(setup.fam.params,
                                                   models.Seams())
  assert np.abs(np.asarray(bare)[valid] - ref).max() > 1e-2


def test_gradients_match_peft(setup):
  ours = flax.traverse_util.flatten_dict(setup.ours["grads"], sep="/")
  ref = flax.traverse_util.flatten_dict(
      {"prompt_encoder": setup.ref["grads"]}, sep="/")
  assert ours.keys() == ref.keys()
  errors = {k: _rel(ours[k], ref[k]) for k in ref}
  worst = max(errors, key=errors.get)
  print(f"worst grad rel err {errors[worst]:.2e} ({worst})")
  assert errors[worst] <= GRAD_REL_BOUND
  assert min(np.abs(v).max() for v in ref.values()) > 1e-6


def test_tree_and_parameter_count_are_pefts(setup):
  abstract = setup.method.abstract_trainable(setup.fam.lm)
  shapes = jax.tree.map(lambda x: x.shape, flax.core.meta.unbox(abstract))
  assert shapes == jax.tree.map(lambda x: x.shape, setup.trainable)
  ours = encoder.count(abstract)
  # PEFT's seq2seq default keeps 2P embedding rows, the second P unused.
  extra = (setup.peft_count - ours) // (P * setup.fam.lm.config.emb_dim)
  assert setup.peft_count == ours + extra * P * setup.fam.lm.config.emb_dim
  assert extra == (setup.fam.lm.family == models.ENCODER_DECODER
                   and setup.method.encoder_type == "MLP")
  state = peft_format.to_peft_state(setup.trainable["prompt_encoder"])
  back = peft_format.from_peft_state(state, P)
  jax.tree.map(np.testing.assert_array_equal, back,
               jax.device_get(setup.trainable["prompt_encoder"]))


# --------------------------------------- reparameterisation, artifact ----


def test_exported_table_reproduces_the_encoder(setup, tmp_path):
  """The artifact is the encoder's output: PEFT's saved table, and a
  `PromptTuning` or table-form `PTuning` loading it gives the logits of
  the encoder it came from."""
  fam, method, trained = setup.fam, setup.method, setup.trainable
  path = method.save_artifact(trained, method.artifact_path(tmp_path, 7))
  assert path == tmp_path / "p_tuning" / "prompt_step_7.npy"
  assert method.latest_artifact(tmp_path) == path
  assert _rel(np.load(path), setup.ref["table"]) <= TABLE_REL_BOUND

  logits_fn = peft_families.logits_fn(fam.lm, fam.inputs)
  forward = jax.jit(lambda m, t: logits_fn(*m.bind(fam.lm, t, fam.params)),
                    static_argnums=0)
  want = np.asarray(forward(method, trained))
  prompt_tuning = PromptTuning(length=P)
  loaded = prompt_tuning.load_artifact(path, fam.lm)
  err = _rel(forward(prompt_tuning, loaded), want)
  print(f"table vs PEFT {_rel(np.load(path), setup.ref['table']):.1e}, "
        f"PromptTuning logits vs encoder logits {err:.1e}")
  assert err <= TABLE_REL_BOUND
  # The table form loads the same tree (and binds a table tree as the
  # encoder form does, run below).
  jax.tree.map(np.testing.assert_array_equal, PTuning(
      length=P, form="table").load_artifact(path, fam.lm), loaded)
  # The encoder form reloads its own tree bit for bit; without the encoder
  # file it runs the table.
  jax.tree.map(np.testing.assert_array_equal, method.load_artifact(
      path, fam.lm), jax.device_get(trained))
  method.encoder_path(path).unlink()
  table_tree = method.load_artifact(path, fam.lm)
  assert set(table_tree) == {"prompt"}
  assert _rel(forward(method, table_tree), want) <= TABLE_REL_BOUND


def test_table_form_trains_the_table():
  lm = models.DecoderOnlyLM(llama_testing.tiny_decoder_config())
  method = PTuning(length=3, form="table")
  tree = method.init_trainable(jax.random.key(0), lm, None, None)
  assert jax.tree.map(lambda x: x.shape, tree) == {"prompt": {"prompt": (
      3, lm.config.emb_dim)}}
  expected = encoder.apply(PTuning(length=3).init_trainable(
      jax.random.key(0), lm, None, None)["prompt_encoder"])
  np.testing.assert_array_equal(tree["prompt"]["prompt"], expected)
  boxed = method.abstract_trainable(lm)["prompt"]["prompt"]
  assert boxed.names == ("prompt", "prompt_embed")


# ---------------------------------------------------- hybrid templates ----


class FakeTokenizer:
  """Word-level: one id in [3, V) per whitespace-separated word."""

  def __init__(self, vocab_size: int):
    self.vocab_size, self.eos_id = vocab_size, 2

  def encode(self, text: str) -> list[int]:
    return [3 + sum(map(ord, w)) % (self.vocab_size - 3)
            for w in text.split()]

  def decode(self, ids) -> str:
    return " ".join(map(str, ids))


TEMPLATE = "[P:2] {sentence} [P:3] It was [MASK]"
EXAMPLES = [{"sentence": "a fine film indeed"}, {"sentence": "dull"}]


def _rendered(vocab_size: int) -> np.ndarray:
  tok = FakeTokenizer(vocab_size)
  rows = [template_lib.render(TEMPLATE, e, tok, mask="great", add_eos=True)
          for e in EXAMPLES]
  out = np.zeros((len(rows), max(map(len, rows))), np.int32)
  for r, ids in enumerate(rows):
    out[r, :len(ids)] = ids
  return out


def _virtual_vocab(params, table, family: str):
  """Params whose vocabulary has the table as rows V..V+P-1 (the untied
  T5 head gets zero columns; its logits are cut off)."""
  flat = dict(flax.traverse_util.flatten_dict(params, sep="/"))
  flat["token_embedder/embedding"] = jnp.concatenate(
      [flat["token_embedder/embedding"], table])
  if family == "t5":
    kernel = flat["decoder/logits_dense/kernel"]
    flat["decoder/logits_dense/kernel"] = jnp.concatenate(
        [kernel, jnp.zeros((kernel.shape[0], table.shape[0]))], 1)
  return flax.traverse_util.unflatten_dict(flat, sep="/")


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_template_equals_spliced_prompt_rows(families, family):
  fam = families[family]
  cfg, vocab = fam.lm.config, fam.lm.config.vocab_size
  tokens = _rendered(vocab)
  np.testing.assert_array_equal(tokens[0, :2], [-1, -2])  # [P:2]
  np.testing.assert_array_equal(tokens[0, 6:9], [-3, -4, -5])  # [P:3]
  method = PTuning(length=5, position="template", template=TEMPLATE)
  trainable = method.init_trainable(jax.random.key(4), fam.lm, None, None)
  table = method.table(trainable)
  virtual = np.where(tokens < 0, vocab - 1 - tokens, tokens)
  big_params = _virtual_vocab(fam.params, table, family)
  params, seams = method.bind(fam.lm, trainable, fam.params)
  if family == "t5":
    inputs = (tokens, np.asarray(fam.inputs[1][:, :3]))
    big = t5_network.T5Transformer(cfg.replace(vocab_size=vocab + 5))
  else:
    inputs = (tokens, tokens != 0)
    big = llama_network.DecoderLM(cfg.replace(vocab_size=vocab + 5))
  want = jax.jit(big.apply)({"params": big_params}, virtual, inputs[1])
  got = np.asarray(jax.jit(peft_families.logits_fn(fam.lm, inputs))(params, seams))
  want = np.asarray(want)[..., :vocab]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert not method.adds_input_slots and PTuning().adds_input_slots


def test_template_parse_and_render():
  parsed = template_lib.parse(TEMPLATE, fields=["sentence", "label"])
  assert parsed.num_pseudo == 5 and parsed.fields == ("sentence",)
  tok = FakeTokenizer(50)
  word = tok.encode
  ids = template_lib.render(parsed, {"sentence": " so good "}, tok)
  assert ids == ([-1, -2] + word("so good") + [-3, -4, -5] + word("It was"))
  assert template_lib.render(parsed, {"sentence": "x"}, tok, mask=7,
                             add_eos=True)[-2:] == [7, 2]
  assert template_lib.render("{a} [P] {b} [MASK] [P]", {"a": 1, "b": "y"},
                             tok, mask="z") == (
                                 word("1") + [-1] + word("y") + word("z")
                                 + [-2])
  method = PTuning(length=5, position="template", template=TEMPLATE)
  assert method.render({"sentence": "so good"}, tok) == ids


@pytest.mark.parametrize("template,pattern", [
    ("[P:3] It was [MASK]", "no {field}"),
    ("[P:0] {a}", r"\[P:0\]"),
    ("[P:2] {a} [P:x]", "cannot parse"),
    ("{a} {sentence", "cannot parse"),
])
def test_bad_templates_are_one_line_errors(template, pattern):
  with pytest.raises(ValueError, match=pattern) as e:
    template_lib.parse(template)
  assert template in str(e.value) and "\n" not in str(e.value)


def test_unknown_fields_are_one_line_errors():
  with pytest.raises(ValueError, match=r"unknown field\(s\) \['sentnce'\]"):
    template_lib.parse("[P:2] {sentnce}", fields=["sentence"])
  with pytest.raises(ValueError, match="no field") as e:
    template_lib.render(TEMPLATE, {"text": "x"}, FakeTokenizer(50))
  assert TEMPLATE in str(e.value) and "'text'" in str(e.value)


# ------------------------------------------------- settings and errors ----


def test_bloomz_560m_count_is_pefts():
  """PEFT's P-tuning record for bloomz-560m (H = 1024), P = 20, h = 128:
  300,288 trainable parameters = 20*1024 + (1024*128 + 128) + (128*128 +
  128) + (128*1024 + 1024). Abstract only: nothing is allocated."""
  lm = models.DecoderOnlyLM(llama_testing.tiny_decoder_config(emb_dim=1024))
  method = PTuning(length=20, encoder_hidden_size=128)
  assert encoder.count(method.abstract_trainable(lm)) == 300_288
  assert 20 * 1024 + 131_200 + 16_512 + 132_096 == 300_288
  lstm = PTuning(length=20, encoder_type="LSTM", encoder_hidden_size=512)
  # The original P-tuning encoder (h = H / 2): 2 bidirectional layers.
  per_dir = [4 * 512 * (1024 + 512 + 2), 4 * 512 * (1024 + 512 + 2)]
  assert encoder.count(lstm.abstract_trainable(lm)) == (
      20 * 1024 + 2 * sum(per_dir) + 1024 * 1024 + 1024 + 1024 * 1024
      + 1024)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(length=0), "length must be an int >= 1"),
    (dict(encoder_type="GRU"), r"'GRU'.*\['MLP', 'LSTM'\]"),
    (dict(encoder_hidden_size=0), "encoder_hidden_size"),
    (dict(form="merged"), r"\['encoder', 'table'\]"),
    (dict(position="middle"), "'template'"),
    (dict(position="template"), "go together"),
    (dict(length=4, position="template", template=TEMPLATE),
     "has 5 pseudo tokens"),
    (dict(position="template", template="[P:20] [MASK]"), "no {field}"),
])
def test_bad_settings_are_one_line_errors(kwargs, pattern):
  with pytest.raises(ValueError, match=pattern) as e:
    PTuning(**kwargs)
  assert "\n" not in str(e.value)


def test_family_positions_are_checked_when_the_model_is_built():
  llama = models.DecoderOnlyLM(llama_testing.tiny_decoder_config())
  with pytest.raises(ValueError, match="'suffix'"):
    base.TunedModel(llama, PTuning(position="suffix"))
  t5 = models.EncoderDecoderLM(testing.tiny_t5_config())
  base.TunedModel(t5, PTuning(position="suffix"))


def test_registry_and_settings():
  assert METHODS["p_tuning"] is PTuning
  method = PTuning(length=5, encoder_type="LSTM", position="template",
                   template=TEMPLATE)
  assert method.settings() == {
      "method": "p_tuning", "prompt_length": 5, "encoder_type": "LSTM",
      "encoder_hidden_size": None, "encoder_num_layers": 2,
      "encoder_dropout": 0.0, "prompt_position": "template", "template": TEMPLATE,
      "form": "encoder"}
  assert hash(method) == hash(PTuning(5, "LSTM", None, 2, "template",
                                      TEMPLATE))


def test_gin_file_builds_the_method_and_replaces_the_optimizer():
  gin_utils.parse(
      ["runs/prompt_train.gin", "models/t5_1_1_tiny.gin",
       "methods/p_tuning.gin"],
      ["MODEL_DIR='/tmp/x'", "TRAIN_STEPS=10",
       "MIXTURE_OR_TASK_NAME='sst2_v100'",
       "TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}",
       "P_TUNING_LENGTH=6", "P_TUNING_ENCODER='LSTM'",
       "P_TUNING_HIDDEN_SIZE=16"])
  assert "METHOD = @p_tuning.PTuning()" in gin.config_str()
  assert gin.get_configurable(PTuning)() == PTuning(
      6, "LSTM", encoder_hidden_size=16)
  assert gin.get_bindings(optim.make_optimizer) == {
      "name": "adamw", "learning_rate": 1e-3}


def test_encoder_dropout_acts_between_lstm_layers_at_training_steps():
  """PEFT's encoder_dropout: between LSTM layers, training steps only; the
  MLP encoder has none."""
  lm = models.DecoderOnlyLM(llama_testing.tiny_decoder_config(num_layers=1))
  key = jax.random.key(5)
  x, mask = jnp.zeros((1, 1, lm.config.emb_dim)), jnp.ones((1, 1), bool)
  for kind, changes in (("LSTM", True), ("MLP", False)):
    plain = PTuning(length=3, encoder_type=kind, encoder_hidden_size=8)
    dropped = PTuning(length=3, encoder_type=kind, encoder_hidden_size=8,
                      encoder_dropout=0.5)
    tree = plain.init_trainable(jax.random.key(0), lm, None, None)

    def trained_table(method):
      seams = method.bind_train(lm, tree, {}, key)[1]
      return np.asarray(seams.decoder_embed_fn(x, mask)[0][0, :3])
    np.testing.assert_array_equal(trained_table(plain), plain.table(tree))
    assert (np.abs(trained_table(dropped) - trained_table(plain)).max()
            > 0) == changes
    # Evaluation binds without it.
    np.testing.assert_array_equal(dropped.table(tree), plain.table(tree))
  with pytest.raises(ValueError, match="encoder_dropout"):
    PTuning(encoder_dropout=1.0)
