"""The GGUF BPE tokenizer against transformers' tokenizer of the same file."""

import json
import pathlib
import subprocess
import sys

import gguf
import numpy as np
import pytest

from prompt_jax.backbones.llama import gguf_loading
from prompt_jax.backbones.llama import tokenizer as tokenizer_lib

# The two prompt formats of ../shared/bench/README.md (zero-shot, 2-shot).
DEMOS = ("Review: a gorgeous, witty, seductive movie.\nSentiment: positive\n"
         "Review: the plot is nothing but boilerplate clichés.\n"
         "Sentiment: negative\n")
PROMPT = "Review: {sentence}\nSentiment:"
EXTRA = [
    "<|im_start|>user\nWhat is 2+2? Answer in 10 words.<|im_end|>\n",
    "  leading spaces, tabs\tand\n\nnewlines  ",
    "Numbers 1234567 and 3.14159, 1,000,000 — naïve café 😀 ☃ 日本語",
    "it's, they're, we'll, I'd, you've, 'S 'LL",
]


def _sst2_dev(data_root: pathlib.Path) -> list[str]:
  lines = (data_root / "sentence_cls/sst2/stsa.binary.dev").read_text(
      encoding="utf-8").splitlines()
  return [line.split(" ", 1)[1] for line in lines]


@pytest.fixture(scope="module")
def reader() -> gguf.GGUFReader:
  return gguf_loading.open_gguf(gguf_loading.default_smollm2_gguf())


@pytest.fixture(scope="module")
def tok(reader) -> tokenizer_lib.BPETokenizer:
  return tokenizer_lib.from_gguf(reader)


@pytest.fixture(scope="module")
def reference():
  transformers = pytest.importorskip("transformers")
  path = gguf_loading.default_smollm2_gguf()
  return transformers.AutoTokenizer.from_pretrained(path.parent,
                                                    gguf_file=path.name)


@pytest.fixture(scope="module")
def texts(data_root) -> list[str]:
  sentences = _sst2_dev(data_root)
  assert len(sentences) == 872
  return (sentences + [PROMPT.format(sentence=s) for s in sentences[:64]]
          + [DEMOS + PROMPT.format(sentence=sentences[0])] + EXTRA)


def test_same_ids_as_transformers(tok, reference, texts):
  ours = tok.encode_batch(texts)
  theirs = reference(texts)["input_ids"]  # Adds no BOS: add_bos_token=false.
  mismatched = [t for t, a, b in zip(texts, ours, theirs) if a != b]
  assert not mismatched, f"{len(mismatched)} differ, e.g. {mismatched[0]!r}"
  assert tok.encode(texts[-1]) == ours[-1]


def test_special_ids_and_sizes(tok, reference):
  assert tok.vocab_size == len(reference) == 49152
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (
      reference.bos_token_id, reference.eos_token_id, reference.pad_token_id,
      0)
  assert not tok.add_bos
  assert tok.encode("<|im_start|><|im_end|>") == [1, 2]


def test_label_words_are_single_tokens(tok):
  """Zero-shot SST-2 compares the logits of these two tokens."""
  positive, negative = tok.encode(" positive"), tok.encode(" negative")
  assert len(positive) == len(negative) == 1 and positive != negative


def test_decode_inverts_encode(tok, texts):
  for text in texts[:100] + texts[-6:]:
    assert tok.decode(tok.encode(text)) == text
  ids = tok.encode("<|im_start|>hi<|im_end|>")
  assert tok.decode(ids, skip_special_tokens=True) == "hi"


def test_digits_are_split(tok):
  # SmolLM2's pre-tokenizer ("smollm"): every digit is its own token.
  assert [tok.decode([i]) for i in tok.encode(" 2024")] == [" ", "2", "0",
                                                            "2", "4"]


def test_vocab_size_check(tok):
  tokenizer_lib.check_vocab_size(tok, 49152)
  with pytest.raises(ValueError, match=r"^tokenizer .*\.gguf has 49152 ids but"
                     r" model\.gguf has a vocabulary of 49280$"):
    tokenizer_lib.check_vocab_size(tok, 49280, "model.gguf")


def test_hf_directory_gives_the_same_tokenizer(tok, tmp_path, texts):
  tok.tokenizer.save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "config.json").write_text(json.dumps(
      {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}))
  loaded = tokenizer_lib.from_hf_dir(tmp_path)
  assert loaded.encode_batch(texts) == tok.encode_batch(texts)
  assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (1, 2, 2)
  with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
    tokenizer_lib.from_hf_dir(tmp_path / "absent")


def _tiny_gguf(path, **tokenizer_overrides) -> pathlib.Path:
  """A GGUF with only tokenizer metadata (enough for `from_gguf`)."""
  writer = gguf.GGUFWriter(path, "llama")
  meta = dict(model="gpt2", pre="smollm", tokens=["a", "b", "ab"],
              merges=["a b"], token_type=[1, 1, 1]) | tokenizer_overrides
  for key, value in meta.items():
    if isinstance(value, str):
      writer.add_string(f"tokenizer.ggml.{key}", value)
    else:
      writer.add_array(f"tokenizer.ggml.{key}", value)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


def test_tiny_file_builds(tmp_path):
  tok = tokenizer_lib.from_gguf(_tiny_gguf(tmp_path / "t.gguf"))
  assert tok.encode("abba") == [2, 1, 0]
  assert tok.bos_id is None and tok.vocab_size == 3


@pytest.mark.parametrize("overrides,message", [
    (dict(model="llama"), r"t\.gguf: unsupported GGUF tokenizer model "
     r"'llama'; supported: 'gpt2'"),
    (dict(pre="qwen2"), r"t\.gguf: unsupported GGUF pre-tokenizer 'qwen2'"),
])
def test_unsupported_tokenizers(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    tokenizer_lib.from_gguf(_tiny_gguf(tmp_path / "t.gguf", **overrides))


def test_import_needs_neither_seqio_nor_tensorflow():
  code = ("import sys; from prompt_jax.backbones.llama import tokenizer;"
          " bad = {'seqio', 'tensorflow'} & set(sys.modules);"
          " assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_seqio_vocabulary(tok, texts):
  pytest.importorskip("seqio")
  tf = pytest.importorskip("tensorflow")
  vocab = tokenizer_lib.seqio_vocabulary(tok)
  text = texts[-6]
  ids = tok.encode(text)
  assert vocab.vocab_size == 49152 and vocab.eos_id == 2 and vocab.pad_id == 0
  assert list(vocab.encode(text)) == ids
  np.testing.assert_array_equal(vocab.encode_tf(tf.constant(text)), ids)
  ragged = vocab.encode_tf(tf.constant([text, "ok"]))
  assert ragged.to_list() == [ids, tok.encode("ok")]
  # seqio semantics: stop at EOS; padding (0) and special tokens vanish.
  tail = [2] + tok.encode(" after eos")
  assert vocab.decode(ids + tail) == text
  assert vocab.decode_tf(tf.constant(ids + tail)).numpy().decode() == text
  batch = vocab.decode_tf(tf.constant([ids + [0, 0], ids + [2, 0]]))
  assert [b.decode() for b in batch.numpy()] == [text, text]
  assert vocab == tokenizer_lib.seqio_vocabulary(tok)

  dataset = tf.data.Dataset.from_tensor_slices({"x": [text, "ok"]}).map(
      lambda ex: {"x": vocab.encode_tf(ex["x"])})
  assert [list(ex["x"]) for ex in dataset.as_numpy_iterator()] == [
      ids, tok.encode("ok")]
