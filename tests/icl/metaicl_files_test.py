"""The seqio-free MetaICL layer: pool files, split lists, k-shot examples.

`prompt_jax.icl.metaicl_pool`, `kshot_format` and `metaicl_splits` must give
what the seqio tasks give (`tasks.metaicl`, `tasks.kshot`, `tasks.mixtures`
build on them), and the unseen evaluation, the meta-training batches and the
MetaICL bench must import on a machine without seqio, TensorFlow or gin (the
GPU image).
"""

import os
import pathlib
import subprocess
import sys

import pytest

from prompt_jax.icl import kshot_format
from prompt_jax.icl import metaicl_pool
from prompt_jax.icl import metaicl_splits
import tasks  # pylint: disable=unused-import  (registers the seqio tasks)
from tasks import kshot
from tasks import mixtures

_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _encode(text: str) -> list[int]:
  return [ord(c) % 1000 + 3 for c in text]  # Any deterministic encoder.


class _Vocabulary:
  encode = staticmethod(_encode)


def test_split_lists_match_the_seqio_mixtures():
  for split in metaicl_splits.SPLIT_NAMES:
    folders = tuple(metaicl_pool.FOLDER_OF[n]
                    for n in mixtures.TRAIN_TASKS[split])
    assert metaicl_splits.train_folders(split) == folders, split
    assert metaicl_splits.test_folders(split) == tuple(
        mixtures.METAICL_SPLITS[split]["test"])
  assert "sick" not in metaicl_splits.train_folders("non_nli_to_nli")
  with pytest.raises(ValueError, match="unknown MetaICL split 'nope'"):
    metaicl_splits.train_folders("nope")


def test_meta_train_examples_equal_the_seqio_source():
  fmt = kshot_format.KShotFormat(method="channel", layout="decoder",
                                 max_length=300)
  source = kshot.KShotSource("superglue-cb", k=4, seed=100, fmt=fmt,
                             vocabulary_fn=_Vocabulary, task="t")
  pairs = [r[:2] for r in metaicl_pool.MetaICLFiles("superglue-cb").read(
      "meta_train")]
  got = kshot_format.meta_train_examples(pairs, 4, 100, fmt, _encode,
                                         task="t")
  # The seqio source formats the same rows with the same demonstrations.
  _, want = source.examples(kshot.META_TRAIN_SPLIT)
  assert len(got) == len(want) == len(pairs)
  assert [(g.inputs, g.targets) for g in got] == [
      (w.inputs, w.targets) for w in want]
  assert any(g.num_truncated for g in got)  # The budget of 300 bites.


def test_unfit_meta_train_examples_raise_or_are_listed():
  pairs = [("a", "b"), ("c", "x" * 40), ("e", "f"), ("g", "h")]
  fmt = kshot_format.KShotFormat(layout="decoder", max_length_per_example=20)
  with pytest.raises(ValueError, match="task 't' meta_train example 1: "
                     "output of 41 tokens"):
    kshot_format.meta_train_examples(pairs, 2, 0, fmt, _encode, task="t")
  errors = []
  got = kshot_format.meta_train_examples(
      pairs, 1, 0, fmt, _encode, task="t", errors=errors)
  # Row 1 cannot fit; every row whose sampled demonstration is row 1 either.
  assert len(got) + len(errors) == 4 and len(errors) >= 1
  assert all("\n" not in e and e.startswith("task 't'") for e in errors)


def test_library_and_bench_import_without_seqio_tensorflow_or_gin():
  code = ("import sys\n"
          "for m in ('seqio', 'tensorflow', 'gin'): sys.modules[m] = None\n"
          "import prompt_jax.evaluators.unseen_decoder, prompt_jax.train\n"
          "import prompt_jax.data.array_batches, prompt_jax.scoring.options\n"
          "sys.path.insert(0, 'bench')\n"
          "import metaicl_results\n"
          "print(len(metaicl_results.test_folders('hr_to_lr',"
          " metaicl_results.SETTINGS['gpu'])))\n")
  env = {**os.environ, "PYTHONPATH": str(_ROOT)}
  out = subprocess.run([sys.executable, "-c", code], cwd=_ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == "26"
