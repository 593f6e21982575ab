"""Tests for prompt_jax.backbones.t5.tokenizer against the shared T5 spiece model."""

from absl.testing import absltest
from absl.testing import parameterized

from prompt_jax.backbones.t5 import tokenizer as vocabularies

_SENTENCES = (
    "The house is wonderful.",
    "I like peanut butter and <extra_id_0> sandwiches.",
    "Translate English to German: That is good. <extra_id_1>",
    "  leading spaces, UNICODE café and digits 12345 <extra_id_99>",
)


class VocabulariesTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.seqio_vocab = vocabularies.t5_vocabulary()
    cls.tokenizer = vocabularies.SentencePieceTokenizer()

  @parameterized.named_parameters(("seqio", "seqio_vocab"),
                                  ("fallback", "tokenizer"))
  def test_known_ids_and_size(self, attr):
    vocab = getattr(self, attr)
    self.assertEqual(vocab.vocab_size, 32100)
    self.assertEqual(
        list(vocab.encode("The house is wonderful.")), [37, 629, 19, 1627, 5]
    )
    self.assertEqual(list(vocab.encode("<extra_id_0>")), [32099])
    self.assertEqual(list(vocab.encode("<extra_id_99>")), [32000])

  def test_fallback_matches_seqio(self):
    for text in _SENTENCES:
      ids = self.tokenizer.encode(text)
      self.assertEqual(ids, list(self.seqio_vocab.encode(text)), text)
      self.assertEqual(self.tokenizer.decode(ids), self.seqio_vocab.decode(ids))
    # Sentinels decode to their names; EOS truncates; ids past vocab are UNK.
    ids = [37, 629, 32099, 1, 5]
    self.assertEqual(self.tokenizer.decode(ids), "The house <extra_id_0>")
    self.assertEqual(self.tokenizer.decode(ids), self.seqio_vocab.decode(ids))
    self.assertEqual(self.tokenizer.decode([37, 32127]),
                     self.seqio_vocab.decode([37, 32127]))

  def test_check_vocab_size(self):
    vocabularies.check_vocab_size(32100, 32128, "spiece.model")
    vocabularies.check_vocab_size(32100, 32100, "spiece.model")
    with self.assertRaisesRegex(ValueError, r"spiece\.model.*32100.*32000"):
      vocabularies.check_vocab_size(32100, 32000, "spiece.model")

  def test_missing_file(self):
    for make in (vocabularies.t5_vocabulary,
                 vocabularies.SentencePieceTokenizer):
      with self.assertRaisesRegex(FileNotFoundError, "/nonexistent/x.model"):
        make("/nonexistent/x.model")


if __name__ == "__main__":
  absltest.main()
