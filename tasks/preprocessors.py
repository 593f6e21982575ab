"""Pure tf.data preprocessors shared by the unified task formats.

Every function here maps a `tf.data.Dataset` of raw examples (string and
integer features, as the sources give them) to a dataset of text-to-text
examples; none reads files or knows about a task. Templates are plain
strings with `{field}` placeholders filled from the example:

  fill_template("{sentence} It was <extra_id_0>.", {"sentence": "good ."})
    → "good . It was <extra_id_0>."

Three formats are built from them (see `tasks/formats.py`, `tasks/pet.py`):

* `unifiedqa_text`: one example → one generation example
  `question \\n (a) choice (b) choice \\n context` → the gold choice, both
  lower-cased, where `\\n` is the two characters backslash + n (UnifiedQA's
  separator; T5's vocabulary has no backslash, so it tokenizes to UNK + `n`).
* `rank_classification_rows`: one example → one row per (pattern, option),
  the rows that rank classification scores and groups back by `idx`. In a
  training split (`TRAIN_SPLIT_KEY` true) only the gold option is kept, or,
  with `train_negative_target`, every option with its target replaced by a
  negative word for the wrong ones (EFL trains on yes/no pairs).
* `strip_final_punctuation`: so a field can be quoted inside a pattern.
* `check_mask_kept` (after tokenization): a PET mask cut off by truncation
  is an error naming the example, not a silently meaningless score.
"""

import string
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import tensorflow as tf

# Boolean feature added by `tasks.formats.SplitFlagSource`: True in training
# splits, where rank classification keeps only the gold option.
TRAIN_SPLIT_KEY = "is_train_split"
UNIFIEDQA_SEPARATOR = " \\n "  # Backslash + n, spaces around (UnifiedQA).

Example = Mapping[str, tf.Tensor]


def template_fields(template: str) -> tuple[str, ...]:
  """The `{field}` names of a template, in order (`{{`/`}}` are literal).

  Example: `template_fields("{premise} {question}?")` → ("premise",
  "question").

  Raises:
    ValueError: on a positional (`{}`), indexed or formatted placeholder.
  """
  fields = []
  for _, field, spec, conv in string.Formatter().parse(template):
    if field is None:
      continue
    if not field.isidentifier() or spec or conv:
      raise ValueError(f"template {template!r}: placeholder {{{field}}} must"
                       " be a plain field name like {sentence}")
    fields.append(field)
  return tuple(fields)


def fill_template(template: str, ex: Example) -> tf.Tensor:
  """Fills `{field}`s of `template` with string features of `ex`.

  Example: template `"{premise} What was the {question}?"` and
  `{"premise": "The man fell.", "question": "cause"}` → the scalar string
  `"The man fell. What was the cause?"`.

  Raises:
    KeyError: (one line) naming the template and the missing field.
    TypeError: if a field is not a string tensor.
  """
  parts = []
  for literal, field, _, _ in string.Formatter().parse(template):
    if literal:
      parts.append(tf.constant(literal))
    if field is None:
      continue
    if field not in ex:
      raise KeyError(f"template {template!r} uses field {field!r}; the"
                     f" example has {sorted(ex)}")
    if ex[field].dtype != tf.string:
      raise TypeError(f"template {template!r}: field {field!r} is"
                      f" {ex[field].dtype.name}, not a string")
    parts.append(ex[field])
  template_fields(template)  # Validates the placeholders.
  if not parts:
    return tf.constant("")
  return tf.strings.join(parts) if len(parts) > 1 else parts[0]


def _normalize(text: tf.Tensor, lowercase: bool) -> tf.Tensor:
  text = tf.strings.strip(text)
  return tf.strings.lower(text, encoding="utf-8") if lowercase else text


def unifiedqa_text(ds: tf.data.Dataset, *, question: str,
                   choices: Sequence[str], context: str | None = None,
                   show_choices: bool = True, label_key: str = "label",
                   lowercase: bool = True) -> tf.data.Dataset:
  """Formats classification examples as UnifiedQA text-to-text.

  `choices[label]` (a template) is the answer. The letters follow
  UnifiedQA's `(A) ... (B) ...`; lower-casing the whole input, as
  UnifiedQA does, makes them `(a)`, `(b)`.

  Example (question "is this review positive or negative?", choices
  ("negative", "positive"), context "{sentence}"):
    {"idx": 3, "label": 1, "sentence": "Good fun ."} →
    {"idx": 3, "label": 1, "choices": ["negative", "positive"],
     "inputs": "is this review positive or negative? \\n (a) negative"
               " (b) positive \\n good fun .",
     "targets": "positive"}
  With `show_choices=False` (BoolQ) the middle part is left out:
  `"{question}? \\n {passage}"` → `"yes"`.

  Args:
    ds: examples with the template fields, `idx` and an integer label.
    question: template of the question (comes first).
    choices: one template per label; the answer is the gold one.
    context: template of the context (comes last), or None.
    show_choices: list the choices in the input.
    label_key: the integer label feature.
    lowercase: lower-case inputs, targets and choices (UnifiedQA does).

  Returns:
    Examples `{idx, label, choices [K], inputs, targets}` (strings
    stripped).
  """
  letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
  if not 0 < len(choices) <= len(letters):
    raise ValueError(f"unifiedqa_text needs 1..26 choices, got {choices!r}")

  def fn(ex):
    filled = [_normalize(fill_template(c, ex), lowercase) for c in choices]
    parts = [fill_template(question, ex)]
    if show_choices:
      listed = [tf.strings.join([f"({letters[i]}) ", c])
                for i, c in enumerate(filled)]
      parts.append(tf.strings.reduce_join(tf.stack(listed), separator=" "))
    if context is not None:
      parts.append(fill_template(context, ex))
    inputs = tf.strings.reduce_join(
        tf.stack([tf.strings.strip(p) for p in parts]),
        separator=UNIFIEDQA_SEPARATOR)
    label = tf.cast(ex[label_key], tf.int64)
    choice_texts = tf.stack(filled)
    return {"idx": tf.cast(ex["idx"], tf.int64), "label": label,
            "choices": choice_texts,
            "inputs": _normalize(inputs, lowercase),
            "targets": tf.gather(choice_texts, label)}

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


class OptionRow(NamedTuple):
  """One scored row of rank classification, as templates.

  Attributes:
    inputs: template of the encoder input (e.g. a PET pattern).
    targets: template of the scored target (e.g. a verbalizer word).
    option_label: the label this row votes for.
    pattern: which pattern (PVP) the row belongs to (for ensembles).
  """
  inputs: str
  targets: str
  option_label: int
  pattern: int = 0


def rank_classification_rows(
    ds: tf.data.Dataset, *, rows: Sequence[OptionRow],
    label_key: str = "label", train_negative_target: str | None = None,
) -> tf.data.Dataset:
  """Expands each example into one row per (pattern, option).

  Eval splits keep every row, so the scores of one example can be grouped
  back by `idx` and ranked (`prompt_jax.scoring.rank`). Training
  splits (feature `TRAIN_SPLIT_KEY` true) keep only the gold rows, or, when
  `train_negative_target` is set, keep every row and give the wrong ones
  that target (EFL: gold pair → "yes", others → "no").

  Example (rows `("{sentence} It was <extra_id_0>.", "<extra_id_0> bad",
  0)`, `(..., "<extra_id_0> great", 1)`):
    {"idx": 7, "label": 1, "sentence": "fun .", "is_train_split": False} →
    {"idx": 7, "label": 1, "pattern": 0, "option": 0, "option_label": 0,
     "is_correct": False, "inputs": "fun . It was <extra_id_0>.",
     "targets": "<extra_id_0> bad"},
    {... "option": 1, "option_label": 1, "is_correct": True,
     "targets": "<extra_id_0> great"}
  With `"is_train_split": True` only the second row is produced.

  Raises:
    KeyError: if an example lacks `TRAIN_SPLIT_KEY` (wrap the source in
      `SplitFlagSource`) or a template field.
  """
  if not rows:
    raise ValueError("rank_classification_rows needs at least one row")
  n = len(rows)
  pattern = tf.constant([r.pattern for r in rows], tf.int64)
  option_label = tf.constant([r.option_label for r in rows], tf.int64)

  def expand(ex):
    if TRAIN_SPLIT_KEY not in ex:
      raise KeyError(f"example has no {TRAIN_SPLIT_KEY!r} feature (features:"
                     f" {sorted(ex)}); wrap the source in SplitFlagSource")
    label = tf.cast(ex[label_key], tf.int64)
    correct = tf.equal(option_label, label)
    is_train = tf.cast(ex[TRAIN_SPLIT_KEY], tf.bool)
    targets = tf.stack([fill_template(r.targets, ex) for r in rows])
    if train_negative_target is None:
      keep = tf.logical_or(correct, tf.logical_not(is_train))
    else:
      keep = tf.ones([n], tf.bool)
      wrong_in_train = tf.logical_and(is_train, tf.logical_not(correct))
      targets = tf.where(wrong_in_train, train_negative_target, targets)
    out = {
        "idx": tf.fill([n], tf.cast(ex["idx"], tf.int64)),
        "label": tf.fill([n], label),
        "pattern": pattern,
        "option": tf.range(n, dtype=tf.int64),
        "option_label": option_label,
        "is_correct": correct,
        "inputs": tf.stack([fill_template(r.inputs, ex) for r in rows]),
        "targets": targets,
    }
    out = {k: tf.boolean_mask(v, keep) for k, v in out.items()}
    return tf.data.Dataset.from_tensor_slices(out)

  return ds.flat_map(expand)


def strip_final_punctuation(ds: tf.data.Dataset, *,
                            fields: Sequence[str]) -> tf.data.Dataset:
  """Removes trailing whitespace and `.?!` from string `fields`.

  PET's RTE/CB patterns ask `"{hypothesis}"?`, so the hypothesis's own
  full stop must go.

  Example (fields ("hypothesis",)):
    {"hypothesis": "Christopher Reeve had an accident. "} →
    {"hypothesis": "Christopher Reeve had an accident"}
  """
  def fn(ex):
    return {**ex, **{f: tf.strings.regex_replace(ex[f], r"[\s.?!]+$", "")
                     for f in fields}}

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def check_mask_kept(ds: tf.data.Dataset,
                    output_features: Mapping[str, object], *,
                    sentinel: str = "<extra_id_0>") -> tf.data.Dataset:
  """Fails when truncation cut a PET mask out of a tokenized input.

  Runs after `append_eos_after_trim`: a row whose targets contain the
  sentinel must still have it in its inputs, else its scores would be
  meaningless; the row is reported (with its `idx`), never dropped.

  Example: inputs trimmed to `[..., 1]` without 32099 while targets are
  `[32099, 248, 32098, 1]` → InvalidArgumentError "PET mask <extra_id_0>
  truncated away ... idx 17: raise the inputs length".
  """
  (sentinel_id,) = output_features["inputs"].vocabulary.encode(sentinel)

  def fn(ex):
    needs = tf.reduce_any(tf.equal(ex["targets"], sentinel_id))
    has = tf.reduce_any(tf.equal(ex["inputs"], sentinel_id))
    check = tf.debugging.Assert(
        tf.logical_or(tf.logical_not(needs), has),
        [f"PET mask {sentinel} truncated away from the inputs of example"
         " idx", ex["idx"], ": raise the inputs length"])
    with tf.control_dependencies([check]):
      return {k: tf.identity(v) for k, v in ex.items()}

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
