"""`infer` in score mode gives the scores of `python -m prompt_jax.score_cli`.

The decoder is a tiny random `transformers` Llama saved with
`save_pretrained`, with SmolLM2's BPE tokenizer (`tokenizer.json`) beside it,
once with `add_bos_token` false (SmolLM2) and once true (Llama style: the
model expects BOS first). Neither entry point appends EOS to decoder text;
T5 text gets EOS in both.
"""

import json
import pathlib

import numpy as np
import pytest

from prompt_jax import infer as infer_lib
from prompt_jax import setup as run_setup
from prompt_jax import score_cli as score
from prompt_jax import testing as t5_testing
from prompt_jax.backbones.t5 import tokenizer as vocabularies
from prompt_jax.backbones.llama import gguf_loading
from prompt_jax.testing import llama as testing
from prompt_jax.backbones.llama import tokenizer as tokenizer_lib
from prompt_jax.methods import prompt_tuning

_H = 32
_TEXT_ROWS = [
    {"inputs": "Review: a gorgeous, witty movie.\nSentiment:",
     "targets": " positive"},
    {"inputs": "Review: a gorgeous, witty movie.\nSentiment:",
     "targets": " negative and dull"},
    {"inputs": "The capital of France is", "targets": " Paris, of course."},
]


@pytest.fixture(scope="module")
def smollm2_tokenizer() -> tokenizer_lib.BPETokenizer:
  return tokenizer_lib.from_gguf(gguf_loading.default_smollm2_gguf())


def _rows(tok) -> list[dict]:
  """Text pairs plus id-list pairs (used exactly as given)."""
  ids = [{"inputs": tok.encode("2 + 2 ="), "targets": tok.encode(" 4")},
         {"inputs": [5, 6, 7], "targets": [8, 9, 10, 11]}]
  return _TEXT_ROWS + ids


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory, smollm2_tokenizer):
  """`add_bos -> (dir, torch model)`: a tiny random HF Llama dir with
  SmolLM2's tokenizer, built once per `add_bos` (tests only read it)."""
  built = {}

  def get(add_bos: bool):
    if add_bos not in built:
      built[add_bos] = _decoder_dir(tmp_path_factory.mktemp("llama"),
                                    smollm2_tokenizer, add_bos)
    return built[add_bos]
  return get


def _decoder_dir(root: pathlib.Path, tok, add_bos: bool):
  """A tiny random HF Llama dir with SmolLM2's tokenizer; (dir, torch model)."""
  cfg = testing.tiny_decoder_config(
      vocab_size=tok.vocab_size, emb_dim=_H, bos_id=tok.bos_id,
      eos_id=tok.eos_id, pad_id=0)
  hf_model, _ = testing.random_hf_llama(cfg, seed=3)
  path = root / f"llama_bos_{add_bos}"
  hf_model.save_pretrained(path)
  tok.tokenizer.save(str(path / "tokenizer.json"))
  (path / "tokenizer_config.json").write_text(json.dumps(
      {"add_bos_token": add_bos}))
  return path, hf_model


def _write(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def _cli_scores(backbone, in_file, out_file) -> list[dict]:
  return score.run(score.build_parser().parse_args([
      f"--backbone={backbone}", f"--input_file={in_file}",
      f"--output_file={out_file}", "--batch_size=4"]))


def _infer(backbone, in_file, out_file, prompt_file, length, mode="score",
           **kwargs) -> list[dict]:
  return infer_lib.infer(
      model_dir="/nonexistent", backbone=run_setup.BackboneConfig(
          path=str(backbone)),
      method=prompt_tuning.PromptTuning(length=length), output_file=str(out_file),
      input_file=str(in_file), mode=mode, prompt_file=str(prompt_file),
      batch_size=8, **kwargs)


def _hf_log_prob(hf_model, prompt: np.ndarray, ids: list[int], n_targets: int,
                 bos: int | None) -> float:
  """log p(last n ids | [BOS,] prompt, earlier ids) from transformers."""
  import torch  # pylint: disable=g-import-not-at-top
  embed = hf_model.get_input_embeddings()
  with torch.no_grad():
    parts = [embed(torch.tensor([[bos]]))] if bos is not None else []
    parts += [torch.tensor(prompt[None]), embed(torch.tensor([ids]))]
    logits = hf_model(inputs_embeds=torch.cat(parts, 1)).logits[0].double()
  log_probs = torch.log_softmax(logits, -1)
  last = logits.shape[0] - 1  # Row j predicts token j + 1.
  return sum(float(log_probs[last - n_targets + k, t])
             for k, t in enumerate(ids[-n_targets:]))


@pytest.mark.parametrize("add_bos", [False, True])
def test_decoder_infer_scores_equal_score_cli(tmp_path, smollm2_tokenizer,
                                              decoder_dir, add_bos):
  tok = smollm2_tokenizer
  backbone, hf_model = decoder_dir(add_bos)
  in_file = _write(tmp_path / "in.jsonl", _rows(tok))
  cli = _cli_scores(backbone, in_file, tmp_path / "cli.jsonl")
  ids = [[tok.encode(v) if isinstance(v, str) else v
          for v in (r["inputs"], r["targets"])] for r in _rows(tok)]
  # No EOS: one token score per target token as the tokenizer gives them;
  # BOS first iff the tokenizer says so.
  assert [len(r["token_scores"]) for r in cli] == [len(t) for _, t in ids]
  np.testing.assert_allclose(
      [r["score"] for r in cli],
      [_hf_log_prob(hf_model, np.zeros((0, _H), np.float32), i + t, len(t),
                    tok.bos_id if add_bos else None) for i, t in ids],
      rtol=0, atol=1e-4)
  np.save(tmp_path / "empty.npy", np.zeros((0, _H), np.float32))
  rows = _infer(backbone, in_file, tmp_path / "infer.jsonl",
                tmp_path / "empty.npy", length=0)
  assert [(r["inputs"], r["targets"]) for r in rows] == [
      (r["inputs"], r["targets"]) for r in _rows(tok)]
  np.testing.assert_allclose([r["score"] for r in rows],
                             [r["score"] for r in cli], rtol=0, atol=1e-5)
  assert all(r["score"] < -1.0 for r in cli)  # Random weights: far from 0.


@pytest.mark.parametrize("add_bos", [False, True])
def test_decoder_infer_with_prompt_matches_transformers(
    tmp_path, smollm2_tokenizer, decoder_dir, add_bos):
  tok = smollm2_tokenizer
  backbone, hf_model = decoder_dir(add_bos)
  rows = _rows(tok)
  in_file = _write(tmp_path / "in.jsonl", rows)
  prompt = np.random.RandomState(0).normal(0, 0.2, (3, _H)).astype(np.float32)
  np.save(tmp_path / "prompt.npy", prompt)
  got = _infer(backbone, in_file, tmp_path / "infer.jsonl",
               tmp_path / "prompt.npy", length=3)
  ids = [[tok.encode(v) if isinstance(v, str) else v
          for v in (r["inputs"], r["targets"])] for r in rows]
  want = [_hf_log_prob(hf_model, prompt, i + t, len(t),
                       tok.bos_id if add_bos else None) for i, t in ids]
  np.testing.assert_allclose([r["score"] for r in got], want, rtol=0,
                             atol=1e-4)


def test_decoder_infer_predicts_from_plain_text(tmp_path, smollm2_tokenizer,
                                                decoder_dir):
  """Text inputs are continued as they are: no EOS before the generation."""
  tok = smollm2_tokenizer
  backbone, _ = decoder_dir(add_bos=False)
  text = _TEXT_ROWS[0]["inputs"]
  in_file = _write(tmp_path / "in.jsonl",
                   [{"inputs": text}, {"inputs": tok.encode(text)}])
  np.save(tmp_path / "empty.npy", np.zeros((0, _H), np.float32))
  rows = _infer(backbone, in_file, tmp_path / "infer.jsonl",
                tmp_path / "empty.npy", length=0, mode="predict",
                max_decode_length=6)
  assert len(rows[0]["prediction_ids"]) == 6
  assert rows[0]["prediction_ids"] == rows[1]["prediction_ids"]


@pytest.mark.parametrize("line, what", [
    ({"inputs": "x", "targets": ""}, '"targets" is empty'),
    ({"inputs": [5, 0, 6], "targets": "x"},
     '"inputs"[1] is 0, the padding id (it would be ignored)'),
])
def test_decoder_infer_bad_line(tmp_path, decoder_dir, line, what):
  backbone, _ = decoder_dir(add_bos=False)
  in_file = _write(tmp_path / "in.jsonl", [_TEXT_ROWS[0], line])
  np.save(tmp_path / "empty.npy", np.zeros((0, _H), np.float32))
  with pytest.raises(ValueError) as e:
    _infer(backbone, in_file, tmp_path / "out.jsonl", tmp_path / "empty.npy",
           length=0)
  assert str(e.value) == f"{in_file}:2: {what}"
  assert not (tmp_path / "out.jsonl").exists()


def test_t5_infer_scores_equal_score_cli(tmp_path):
  """T5 appends EOS to text inputs and targets in both entry points."""
  hf_model, _, _ = t5_testing.random_hf_t5(
      "t5_1_0", vocab_size=32128, decoder_start_token_id=0)
  backbone = tmp_path / "t5"
  hf_model.save_pretrained(backbone)
  rows = [{"inputs": "sst2 sentence: a gorgeous, witty movie.",
           "targets": "positive"},
          {"inputs": "translate English to German: That is good.",
           "targets": "Das ist gut."},
          {"inputs": [37, 629, 19, 1], "targets": [1465, 1]}]
  in_file = _write(tmp_path / "in.jsonl", rows)
  cli = _cli_scores(backbone, in_file, tmp_path / "cli.jsonl")
  tok = vocabularies.SentencePieceTokenizer()
  assert [len(r["token_scores"]) for r in cli] == [  # EOS counted.
      len(tok.encode(r["targets"])) + 1 for r in rows[:2]] + [2]
  np.save(tmp_path / "empty.npy", np.zeros((0, _H), np.float32))
  got = _infer(backbone, in_file, tmp_path / "infer.jsonl",
               tmp_path / "empty.npy", length=0)
  np.testing.assert_allclose([r["score"] for r in got],
                             [r["score"] for r in cli], rtol=0, atol=1e-5)
