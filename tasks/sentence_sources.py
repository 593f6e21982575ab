"""Sources for the Kim (2014) single-sentence classification files.

Files live under the data root in `sentence_cls/<dataset>/`: one example per
line, `LABEL<space>text`, integer labels, tokenised lower-cased text (TREC
keeps its case). Every source yields the schema

  {"idx": int64, "label": int64, "sentence": string}

with `idx` the 0-based line number in the file the row comes from and
`label` a class id whose name is `SCHEMAS[name].label_names[label]`:

  dataset  splits (rows)                              label_names
  sst2     train 6920, validation 872, test 1821      negative positive
  sst5     train 8544, validation 1101, test 2210     very negative .. very
                                                      positive (5)
  trec     train 5452, test 500 (coarse, `.all`)      DESC ENTY ABBR HUM LOC
                                                      NUM
  mr       10662 rows → train 8530 / val 1066 / test 1066   negative positive
  cr       3775 → 3021 / 377 / 377                    negative positive
  mpqa     10606 → 8486 / 1060 / 1060                 negative positive
  subj     10000 → 8000 / 1000 / 1000                 subjective objective

MR, CR, MPQA and Subj ship as one unsplit file. Their splits are carved
deterministically by `sources.hash_split` over the line index with salt
`sentence_cls/<dataset>/v1`: lines ordered by sha256 of `salt:index`, the
first 10% are `test`, the next 10% `validation`, the rest `train`.

Encodings: MR and Subj are Latin-1 with NEL (0x85) bytes and TREC's train
file has one Latin-1 byte, so those are decoded as Latin-1 and every file is
split on `\\n` only. Surrounding ASCII spaces are stripped from the text
(MR and Subj lines end in a space). CR has 4 and MPQA 3 rows whose text is
empty (CR lines 769, 1368, 3691, 3775; MPQA 6415, 7294, 10606); they are
kept, as in the benchmark's row counts, and are the only empty rows allowed.

Example:
  src = sst2_source()
  src.examples("validation")[0]
  → {"idx": 0, "label": 0, "sentence": "one long string of cliches ."}
  sst2_source(source="tfds")  # glue/sst2 from TFDS, same schema.
"""

import dataclasses
import os

import numpy as np
import seqio
import tensorflow as tf

from tasks import sources
from tasks import tfds_sources

SENTENCE_FEATURES = {"idx": tf.int64, "label": tf.int64, "sentence": tf.string}
_BINARY = ("negative", "positive")


def _schema(name: str, label_names: tuple[str, ...]) -> sources.Schema:
  return sources.Schema(name, SENTENCE_FEATURES, label_names, ("sentence",))


SCHEMAS: dict[str, sources.Schema] = {
    "sst2": _schema("sst2", _BINARY),
    "sst5": _schema("sst5", ("very negative", "negative", "neutral",
                             "positive", "very positive")),
    "trec": _schema("trec", ("DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM")),
    "mr": _schema("mr", _BINARY),
    "cr": _schema("cr", _BINARY),
    "mpqa": _schema("mpqa", _BINARY),
    "subj": _schema("subj", ("subjective", "objective")),
}
NAMES = tuple(SCHEMAS)

# The split carved out of an unsplit file: first 10% test, next 10% val.
HASH_PARTS = (("test", 0.1), ("validation", 0.1), ("train", 0.8))
_SPLIT_FILES = {
    "sst2": {"train": "sst2/stsa.binary.train",
             "validation": "sst2/stsa.binary.dev",
             "test": "sst2/stsa.binary.test"},
    "sst5": {"train": "sst5/stsa.fine.train",
             "validation": "sst5/stsa.fine.dev",
             "test": "sst5/stsa.fine.test"},
    "trec": {"train": "trec/TREC.train.all", "test": "trec/TREC.test.all"},
}
_UNSPLIT_FILES = {"mr": "mr/rt-polarity.all", "cr": "cr/custrev.all",
                  "mpqa": "mpqa/mpqa.all", "subj": "subj/subj.all"}
_LATIN1 = ("trec", "mr", "subj")
_EMPTY_TEXT_OK = ("cr", "mpqa")


def parse_kim_lines(
    data: bytes, path: str | os.PathLike[str], num_classes: int,
    encoding: str = "utf-8", allow_empty_text: bool = False,
) -> tuple[np.ndarray, list[str]]:
  """Parses `LABEL<space>text` lines (split on `\\n` only).

  One trailing newline is allowed; every other line, including a blank one,
  must be an example.

  Args:
    data: the raw file contents.
    path: the file, named in error messages.
    num_classes: labels must be integers in `[0, num_classes)`.
    encoding: the text encoding of the file.
    allow_empty_text: accept `LABEL` lines whose text is empty (CR, MPQA).

  Returns:
    (labels [N] int64, texts: N strings, ASCII spaces stripped).

  Raises:
    ValueError: `path:line: ...` for the first malformed line.
  """
  labels, texts = [], []
  for lineno, raw in enumerate(sources.split_lines(data), start=1):
    try:
      line = raw.decode(encoding)
    except UnicodeDecodeError as e:
      raise ValueError(f"{path}:{lineno}: not valid {encoding}: {e}") from None
    label, sep, text = line.partition(" ")
    text = text.strip(" \t")
    valid_label = label.isascii() and label.isdigit()
    has_text = bool(text) or (allow_empty_text and sep)
    if not (valid_label and int(label) < num_classes and has_text):
      raise ValueError(
          f"{path}:{lineno}: expected 'LABEL text' with LABEL in"
          f" 0..{num_classes - 1}, got {line[:80]!r}")
    labels.append(int(label))
    texts.append(text)
  return np.asarray(labels, np.int64), texts


@dataclasses.dataclass(frozen=True)
class KimReader:
  """A `sources.Reader` for one Kim-format file."""

  num_classes: int
  encoding: str = "utf-8"
  allow_empty_text: bool = False

  def __call__(self, data: bytes, path: str) -> sources.Columns:
    labels, texts = parse_kim_lines(data, path, self.num_classes,
                                    self.encoding, self.allow_empty_text)
    sentences = np.empty(len(texts), dtype=object)
    sentences[:] = texts
    return {"idx": np.arange(len(labels), dtype=np.int64),
            "label": labels, "sentence": sentences}


def _split_specs(name: str) -> dict[str, sources.SplitSpec]:
  if name in _SPLIT_FILES:
    return {split: sources.SplitSpec(f"sentence_cls/{path}")
            for split, path in _SPLIT_FILES[name].items()}
  path = f"sentence_cls/{_UNSPLIT_FILES[name]}"
  salt = f"sentence_cls/{name}/v1"
  return {
      split: sources.SplitSpec(
          path, sources.hash_split_subset("idx", salt, HASH_PARTS, split))
      for split in ("train", "validation", "test")
  }


def get_sentence_source(
    name: str, *, source: str = "local",
    root: str | os.PathLike[str] | None = None,
    tfds_data_dir: str | None = None,
) -> seqio.DataSource:
  """Returns the source of dataset `name` (one of `NAMES`).

  Args:
    name: "sst2", "sst5", "trec", "mr", "cr", "mpqa" or "subj".
    source: "local" (the Kim files) or "tfds" (only "sst2": TFDS
      `glue/sst2`, splits train 67,349 phrases / validation 872 / test
      1,821 unlabelled (label -1); its validation is the local one).
    root: the data root for "local"; None means `data_root()` at read time.
    tfds_data_dir: the TFDS data directory for "tfds"; None is TFDS's.

  Raises:
    ValueError: (one line) an unknown name, or "tfds" for a dataset that has
      no TFDS source here.
  """
  sources.check_source_name(source)
  if name not in SCHEMAS:
    raise ValueError(f"Unknown sentence dataset {name!r}; one of {NAMES}.")
  if source == "tfds":
    return tfds_sources.tfds_source(SCHEMAS[name], data_dir=tfds_data_dir)
  reader = KimReader(SCHEMAS[name].num_classes,
                     "latin-1" if name in _LATIN1 else "utf-8",
                     allow_empty_text=name in _EMPTY_TEXT_OK)
  return sources.ColumnSource(SCHEMAS[name], _split_specs(name), reader,
                              root=root)


def sst2_source(root: str | os.PathLike[str] | None = None, *,
                source: str = "local",
                tfds_data_dir: str | None = None) -> seqio.DataSource:
  """SST-2 binary sentences: train 6920, validation 872, test 1821 rows."""
  return get_sentence_source("sst2", source=source, root=root,
                             tfds_data_dir=tfds_data_dir)


def sst5_source(root: str | os.PathLike[str] | None = None
                ) -> seqio.DataSource:
  """SST-5 fine-grained: train 8544, validation 1101, test 2210 rows."""
  return get_sentence_source("sst5", root=root)


def trec_source(root: str | os.PathLike[str] | None = None
                ) -> seqio.DataSource:
  """TREC coarse question types (6): train 5452, test 500 rows."""
  return get_sentence_source("trec", root=root)


def mr_source(root: str | os.PathLike[str] | None = None
              ) -> seqio.DataSource:
  """MR movie-review polarity: 10662 rows, hash split 8530/1066/1066."""
  return get_sentence_source("mr", root=root)


def cr_source(root: str | os.PathLike[str] | None = None
              ) -> seqio.DataSource:
  """CR customer-review polarity: 3775 rows, hash split 3021/377/377."""
  return get_sentence_source("cr", root=root)


def mpqa_source(root: str | os.PathLike[str] | None = None
                ) -> seqio.DataSource:
  """MPQA opinion polarity: 10606 rows, hash split 8486/1060/1060."""
  return get_sentence_source("mpqa", root=root)


def subj_source(root: str | os.PathLike[str] | None = None
                ) -> seqio.DataSource:
  """Subj subjectivity: 10000 rows, hash split 8000/1000/1000."""
  return get_sentence_source("subj", root=root)
