"""T5 scoring for the unseen-task evaluation: rank, calibrate, kNN, generate.

`prompt_jax.evaluators.unseen` (the `--mode=unseen` entry point, T5 path) does
the task bookkeeping; the model work is here:

  option_scores       every option of every row scored as the T5 target,
                      the prompt in place (`Predictor.score`), per token
                      with `normalization='mean'`: [C_i] per row.
  rank_predictions    the best option per row, optionally after contextual
                      calibration with a per-row p_cf [C_i].
  content_free_probs  p_cf of contextual calibration (Zhao et al. 2021):
                      the options scored after each content-free input
                      (`icl.calibration.CONTENT_FREE_INPUTS`, placed where the
                      query goes, after the same demonstrations), softmaxed
                      and averaged (`icl.calibration.content_free_probs`).
  knn_demonstrations  KATE: per query the k train rows nearest by mean-pooled
                      T5 ENCODER states (`icl.embeddings`, plain model, no
                      prompt), most similar LAST.
  generation_metrics  greedy generation + the task's postprocessor/metrics.

Texts are tokenized with the task's own vocabularies (`encode`: inputs cut
from the start, so the query survives; targets cut from the end). `task` is
a `seqio.Task`, used only through its attributes: no seqio import here.

Example (a `Predictor` and a seqio task, as `unseen_eval` builds them):

  scorer = T5Scorer(predictor, trainable, frozen,
                    {"inputs": 256, "targets": 8}, "mean")
  encoder, _ = encode(task, "inputs", ["premise ... hypothesis"], 256,
                      keep_end=True)                          # [1, 256]
  p_cf = content_free_probs(scorer, task, [["N/A", "", "[MASK]"]],
                            [("true", "false", "neither")])  # [[C]]
  rank_predictions(scorer, task, encoder, [("true", "false", "neither")],
                   p_cf)                                     # (["false"], 0)
  knn_demonstrations(scorer, task, train_pairs, ["a query"], k=4)
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from prompt_jax.decoding import predictor as predicting
from prompt_jax.icl import calibration as calibration_lib
from prompt_jax.icl import demo_selection
from prompt_jax.icl import embeddings

Demo = tuple[str, str]  # (input, target) of one demonstration.
_embed = jax.jit(embeddings.t5_sentence_embeddings, static_argnums=0)


@dataclasses.dataclass
class T5Scorer:
  """What every task evaluation needs: model, prompt, lengths, settings.

  `calibration` (None | 'contextual') and `demonstrations` ('seed' | 'knn')
  are the ICL variant (`prompt_jax.evaluators.unseen` module doc).
  """
  predictor: predicting.Predictor
  trainable: Any
  frozen: Any
  lengths: Mapping[str, int]
  normalization: str
  calibration: str | None = None
  demonstrations: str = "seed"


# ------------------------------ tokenization -------------------------------


def fit(ids: Sequence[int], length: int, eos_id: int | None, *,
        keep_end: bool) -> tuple[np.ndarray, bool]:
  """Ids trimmed (from the start if `keep_end`) + EOS, zero-padded.

  Returns:
    ([length] int32, whether anything was trimmed).
  """
  room = length - (eos_id is not None)
  trimmed = len(ids) > room
  if trimmed:
    ids = ids[len(ids) - room:] if keep_end else ids[:room]
  ids = list(ids) + ([eos_id] if eos_id is not None else [])
  return np.asarray(ids + [0] * (length - len(ids)), np.int32), trimmed


def encode(task, key: str, texts: Sequence[str], length: int,
           keep_end: bool) -> tuple[np.ndarray, int]:
  """Texts -> ([N, length] int32 ids of feature `key`, how many trimmed)."""
  feature = task.output_features[key]
  eos = feature.vocabulary.eos_id if feature.add_eos else None
  fitted = [fit(feature.vocabulary.encode(t), length, eos, keep_end=keep_end)
            for t in texts]
  return (np.stack([f[0] for f in fitted]),
          sum(f[1] for f in fitted))


# ------------------------------ option scores ------------------------------


def option_scores(scorer: T5Scorer, task, encoder: np.ndarray,
                  options: Sequence[Sequence[str]]
                  ) -> tuple[list[np.ndarray], int]:
  """Per row, its options' log-scores given its encoder input.

  Args:
    scorer: model, prompt, lengths and normalization.
    task: the seqio task (its `targets` vocabulary).
    encoder: [N, Ti] encoder ids, one row per example.
    options: per row, its C_i options.

  Returns:
    ([C_i] scores per row: summed target log-probability, EOS included,
    divided by the target's token count when normalization is 'mean'),
    how many options were trimmed to the targets length).
  """
  counts = np.asarray([len(o) for o in options])
  flat = [o for opts in options for o in opts]
  targets, trimmed = encode(task, "targets", flat, scorer.lengths["targets"],
                            keep_end=False)
  scores = scorer.predictor.score(scorer.trainable, scorer.frozen,
                                  np.repeat(encoder, counts, axis=0), targets)
  if scorer.normalization == "mean":
    scores = scores / np.maximum(np.count_nonzero(targets, axis=1), 1)
  ends = np.cumsum(counts)
  return [scores[end - n:end] for n, end in zip(counts, ends)], trimmed


def rank_predictions(scorer: T5Scorer, task, encoder: np.ndarray,
                     options: Sequence[tuple[str, ...]],
                     p_cf: Sequence[np.ndarray] | None = None
                     ) -> tuple[list[str], int]:
  """The best option per example, and how many options were trimmed.

  Args:
    scorer, task, encoder, options: as for `option_scores`.
    p_cf: None (argmax of the scores), or per row its content-free
      distribution [C_i]: argmax of `calibration.calibrate(scores, p_cf)`.
  """
  scores, trimmed = option_scores(scorer, task, encoder, options)
  if p_cf is not None:
    scores = [calibration_lib.calibrate(s[None], p)[0]
              for s, p in zip(scores, p_cf)]
  best = [int(np.argmax(s)) for s in scores]
  return [opts[b] for opts, b in zip(options, best)], trimmed


def content_free_probs(scorer: T5Scorer, task,
                       contexts: Sequence[Sequence[str]],
                       options: Sequence[Sequence[str]]) -> list[np.ndarray]:
  """p_cf per key: its options' mean distribution over content-free inputs.

  Args:
    scorer, task: as for `option_scores`.
    contexts: per key, its M content-free encoder texts (the demonstrations,
      if any, then each of `calibration.CONTENT_FREE_INPUTS`).
    options: per key, its C options.

  Returns:
    Per key, p_cf [C] (sums to 1).
  """
  texts = [text for key in contexts for text in key]
  encoder, _ = encode(task, "inputs", texts, scorer.lengths["inputs"],
                      keep_end=True)
  scores, _ = option_scores(scorer, task, encoder,
                            [o for key, o in zip(contexts, options)
                             for _ in key])
  ends = np.cumsum([len(key) for key in contexts])
  return [calibration_lib.content_free_probs(np.stack(scores[end - m:end]))
          for m, end in zip((len(key) for key in contexts), ends)]


# ------------------------------ kNN (KATE) ---------------------------------


def sentence_embeddings(scorer: T5Scorer, task,
                        texts: Sequence[str]) -> np.ndarray:
  """[N, H] mean-pooled T5 encoder states of each text (plain model, no
  prompt; inputs tokenized as the encoder sees them, cut to `inputs`)."""
  tokens, _ = encode(task, "inputs", texts, scorer.lengths["inputs"],
                     keep_end=False)  # [N, Ti]
  batch = scorer.predictor.batch_size
  out = []
  for start in range(0, len(tokens), batch):  # Fixed [batch, Ti] calls.
    chunk = tokens[start:start + batch]
    padded = np.pad(chunk, [(0, batch - len(chunk)), (0, 0)])
    out.append(np.asarray(_embed(scorer.predictor.model.module, scorer.frozen,
                                 padded, padded != 0))[:len(chunk)])  # [B, H]
  return np.concatenate(out)


def knn_demonstrations(scorer: T5Scorer, task, train: Sequence[Demo],
                       queries: Sequence[str], k: int) -> list[list[Demo]]:
  """Per query, the k train rows nearest by input embedding (cosine), most
  similar LAST (KATE's order)."""
  return demo_selection.kate_demonstrations(
      train, sentence_embeddings(scorer, task, [x for x, _ in train]),
      sentence_embeddings(scorer, task, queries), k, task=task.name)


# ------------------------------- generation --------------------------------


def generation_metrics(scorer: T5Scorer, task, encoder: np.ndarray,
                       targets: Sequence[str],
                       examples: Sequence[Mapping[str, Any]]
                       ) -> dict[str, float]:
  """Greedy generation, the task's postprocessor, then its metrics."""
  vocab = task.output_features["targets"].vocabulary
  tokens = scorer.predictor.predict(scorer.trainable, scorer.frozen, encoder)
  predictions = [task.postprocess_fn(vocab.decode(t.tolist()), example=ex,
                                     is_target=False)
                 for t, ex in zip(tokens, examples)]
  targets = [task.postprocess_fn(t, example=ex, is_target=True)
             for t, ex in zip(targets, examples)]
  if not task.predict_metric_fns:
    raise ValueError(f"task {task.name!r} has no (targets, predictions)"
                     " metric for generation")
  metrics = {}
  for fn in task.predict_metric_fns:
    metrics.update(fn(targets, predictions))
  return {k: float(v) for k, v in metrics.items()}
