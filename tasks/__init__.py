"""The seqio task catalogue: importing this package registers every task.

This is the single import point for task registration (import it before
parsing gin). Registration is idempotent, so a second import is harmless.
Tasks depend on seqio, `tasks.vocab` and the data root only, never on model
code; the trainer reaches them by name through `prompt_jax.data`.

`tasks.testing_tasks` (in-memory tasks for tests) is not imported here.
"""

from tasks import sentence_classification

# Every registered task name, spelled out per module for grep.
TASK_NAMES: tuple[str, ...] = sentence_classification.TASK_NAMES
