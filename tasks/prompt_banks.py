"""Mixtures for a prompt bank: each task's rows carry its prompt's ids.

`register_bank_mixture(name, tasks, length)` registers, for task k of
`tasks`, a variant `<task>_bank<k>_p<length>` whose token preprocessing
ends by prepending the pseudo ids of prompt k to `inputs`
(`prompt_jax.methods.prompt_bank.rows.prompt_ids`), and one mixture over
the variants. Training `PromptBank(tasks=tasks, length=length)` on it gives
each task its own prompt; evaluating a variant routes its rows to that
task's prompt. The ids add `length` tokens to `inputs`: set the inputs
feature length to the task's length + `length`.
"""

import functools
from typing import Sequence

import seqio
import tensorflow as tf

from prompt_jax.methods.prompt_bank import rows


def prepend_ids(ds: tf.data.Dataset, ids: Sequence[int]) -> tf.data.Dataset:
  """Puts `ids` before every example's tokenized `inputs`."""
  prefix = tf.constant(list(ids), tf.int32)

  def fn(ex):
    ex = dict(ex)
    ex["inputs"] = tf.concat([prefix, tf.cast(ex["inputs"], tf.int32)], 0)
    return ex
  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def variant_name(task: str, index: int, length: int) -> str:
  return f"{task}_bank{index}_p{length}"


def register_bank_mixture(name: str, tasks: Sequence[str], length: int,
                          default_rate: float = 1.0) -> seqio.Mixture:
  """(Re-)registers the bank variants of `tasks` and their mixture.

  Raises:
    ValueError: a task that is not registered (one line, naming it).
  """
  variants = []
  for k, task_name in enumerate(tasks):
    if task_name not in seqio.TaskRegistry.names():
      raise ValueError(f"prompt bank mixture {name!r}: no seqio task "
                       f"{task_name!r} is registered")
    task = seqio.get_mixture_or_task(task_name)
    variant = variant_name(task_name, k, length)
    seqio.TaskRegistry.remove(variant)
    seqio.TaskRegistry.add(
        variant, source=task.source, output_features=task.output_features,
        preprocessors=[*task.preprocessors, functools.partial(
            prepend_ids, ids=rows.prompt_ids(k, length).tolist())],
        postprocess_fn=task.postprocessor, metric_fns=task.metric_fns)
    variants.append(variant)
  seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, variants,
                                   default_rate=default_rate)


def bank_mixture(tasks: Sequence[str], length: int) -> str:
  """Registers the bank mixture of `tasks` and returns its name,
  `bank_<task>_..._p<length>` (for gin: `MIXTURE_OR_TASK_NAME =
  @prompt_banks.bank_mixture()`)."""
  name = "bank_" + "_".join(tasks) + f"_p{length}"
  register_bank_mixture(name, tasks, length)
  return name
