"""Option scores of k-shot MetaICL rows (rank classification), either family.

`option_scores` lays every (row, option) out with `kshot_format.format_ids`
(the context cut from the left, the query and target whole; layout
'decoder' for a decoder-only model, 'enc_dec' for T5, whose encoder input
and target then end with EOS as T5 was trained) and sums log p(scored text
| context) with `prompt_jax.scoring.options`:

  direct  (P(y|x)):  [x_1 y_1 ... x_k y_k x] -> score " y" for each option y
  channel (P(x|y)):  [y_1 x_1 ... y_k x_k y] -> score " x" for each option y

Rows whose context and options are the same share one call and one encoded
context (`score_options`; a T5 reads the context in every row's encoder
input instead of a cache); `share_context=False` scores every (row, option)
as one padded sequence (`score_pairs`: per-row kNN contexts, fixed shapes).
`content_free_probs` is contextual calibration's p_cf (Zhao et al. 2021):
the options' mean distribution over `calibration.CONTENT_FREE_INPUTS` put
where the query goes. `sample_continuations` samples text after contexts
(order selection's probing set; a T5 samples its decoder output for the
context as encoder input). `prompt_jax.evaluators.unseen_decoder` drives
all three.

Worked example (k = 1, direct, two options, summed log-probabilities):

  scorer = KShotScorer(model, frozen, encode=tokenizer.encode)
  fmt = kshot_format.KShotFormat(method="direct", layout="decoder")
  scores, cut = option_scores(scorer, fmt, [[("great film", "positive")]],
                              ["dull plot"], [("negative", "positive")])
  # scores[0] = [log p(" negative" | "great film positive dull plot"),
  #              log p(" positive" | ...)]    (shape [C] = [2]); cut = 0
  prediction = ("negative", "positive")[int(np.argmax(scores[0]))]
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import numpy as np

from prompt_jax import models
from prompt_jax.methods import base as method_base
from prompt_jax.scoring import options as option_scoring
from prompt_jax.icl import calibration as calibration_lib
from prompt_jax.icl import kshot_format
from prompt_jax.types import PyTree

Demo = kshot_format.Demo  # (input, output) of one demonstration.
_GENERATE_BUCKET = 64  # Generation prompts padded to a multiple of this.


_LAYOUTS = {models.DECODER_ONLY: "decoder", models.ENCODER_DECODER: "enc_dec"}


@dataclasses.dataclass
class KShotScorer:
  """The model (either family), its params, an optional soft prompt, and a
  text encoder.

  `decode` (ids -> text, e.g. the tokenizer's) is needed only to turn
  generated ids back into text (order selection's generated probes).
  """
  model: method_base.TunedModel
  frozen: PyTree
  encode: Callable[[str], Sequence[int]]  # Text -> ids, no BOS / EOS.
  trainable: PyTree | None = None
  decode: Callable[[Sequence[int]], str] | None = None

  def __post_init__(self):
    self._encode = functools.lru_cache(maxsize=100_000)(
        lambda text: tuple(self.encode(text)))

  def ids(self, text: str) -> list[int]:
    """`encode(text)` (cached)."""
    return list(self._encode(text))

  @property
  def layout(self) -> str:
    """The `kshot_format` layout of the model's family."""
    return _LAYOUTS[self.model.family]


DecoderScorer = KShotScorer  # The name from when only decoders were scored.


# ------------------------------ option scores ------------------------------


class _Cell(NamedTuple):
  """One (row, option): [context, inputs] conditions, `target` is scored."""
  context: tuple[int, ...]
  inputs: tuple[int, ...]
  target: tuple[int, ...]
  truncated: bool


def _cells(scorer: KShotScorer, fmt, demos: Sequence[Demo], query: str,
           options: Sequence[str], where: str) -> list[_Cell]:
  """The cells of one row, laid out by `kshot_format.format_ids`; the
  'enc_dec' layout ends the query and the target with EOS."""
  if fmt.layout != scorer.layout:
    raise ValueError(f"{where}: KShotFormat layout {fmt.layout!r} does not "
                     f"fit the {scorer.model.family} model (use layout "
                     f"{scorer.layout!r})")
  eos = (scorer.model.config.eos_id,) if fmt.layout == "enc_dec" else ()
  cells = []
  for option in options:
    ids = kshot_format.format_ids(demos, (query, option), fmt, scorer.ids,
                                  where=where)
    # Where the context ends does not change the score (a causal LM, or a
    # T5 reading [context, inputs]); this split keeps the demonstrations as
    # the shared part.
    query_piece = kshot_format.kshot_pieces(demos, (query, option), fmt)[1]
    cut = max(0, len(ids.inputs) - len(scorer.ids(query_piece)))
    cells.append(_Cell(tuple(ids.inputs[:cut]), tuple(ids.inputs[cut:]) + eos,
                       tuple(ids.targets) + eos, ids.num_truncated > 0))
  return cells


def _problem(scorer: KShotScorer, cell: _Cell) -> str | None:
  """Why a cell cannot be scored, or None."""
  if not cell.target:
    return "the scored text has no tokens"
  if not (cell.context or cell.inputs or scorer.model.add_bos
          or scorer.model.inserts_slots(scorer.trainable)):
    return "nothing precedes the scored text"
  return None


def option_scores(scorer: KShotScorer, fmt, demos: Sequence[Sequence[Demo]],
                  queries: Sequence[str], options: Sequence[Sequence[str]], *,
                  normalization: str = "sum", batch_size: int = 16,
                  share_context: bool = True, bucket: int = 16,
                  where: str = "") -> tuple[list[np.ndarray], int]:
  """Per-row option scores: log p(option-side text | context) per option.

  Args:
    scorer: model, params, prompt and encoder.
    fmt: a `kshot_format.KShotFormat` whose layout is `scorer.layout` (its
      method decides what is scored: direct " y"; channel " x" after the
      option).
    demos, queries, options: per row, its demonstrations, input x, options.
    normalization: 'sum' (summed log-probability) or 'mean' (per token).
    batch_size: rows per compiled call.
    share_context: encode each distinct context once (the same for many
      rows); False: every (row, option) is one sequence [context, query,
      target] (`option_scoring.score_pairs`: per-row kNN contexts, or fixed
      shapes on an accelerator).
    bucket: without a shared context, inputs are padded to a multiple of
      this: each padded length compiles once.
    where: task / seed, for error messages.

  Returns:
    ([C_i] float64 scores per row, rows whose context was cut).

  Raises:
    ValueError: (one line, naming `where` and the row) for an unscorable row.
  """
  groups: dict[tuple, list[tuple[tuple[int, ...], list[tuple[int, int]]]]] = {}
  scores = [np.zeros(len(o)) for o in options]
  pairs = []  # Without a shared context: ((row, option), inputs, target).
  truncated = 0
  for row, (row_demos, query, row_options) in enumerate(
      zip(demos, queries, options)):
    cells = _cells(scorer, fmt, row_demos, query, row_options,
                   f"{where} row {row}")
    for cell in cells:
      if (problem := _problem(scorer, cell)) is not None:
        raise ValueError(f"{where} row {row}: cannot score: {problem}")
    truncated += any(c.truncated for c in cells)
    if not share_context:
      pairs.extend(((row, j), c.context + c.inputs, c.target)
                   for j, c in enumerate(cells))
    elif len({(c.context, c.inputs) for c in cells}) == 1:  # Row: C options.
      key = (cells[0].context, tuple(c.target for c in cells))
      groups.setdefault(key, []).append(
          (cells[0].inputs, [(row, j) for j in range(len(cells))]))
    else:  # Per-option conditioning (channel, or cut differently).
      for j, c in enumerate(cells):
        groups.setdefault((c.context, (c.target,)), []).append(
            (c.inputs, [(row, j)]))
  if pairs:
    got = option_scoring.score_pairs(
        scorer.model, scorer.trainable, scorer.frozen,
        inputs=[p[1] for p in pairs], targets=[p[2] for p in pairs],
        batch_size=batch_size, bucket=bucket)
    for ((row, j), _, target), value in zip(pairs, got):
      scores[row][j] = value / (len(target) if normalization == "mean"
                                else 1)
  for (context, targets), members in groups.items():
    got = option_scoring.score_options(
        scorer.model, scorer.trainable, scorer.frozen,
        inputs=[m[0] for m in members], options=targets, context=context,
        batch_size=batch_size)  # [N, C]
    for (_, slots), values in zip(members, got):
      for (row, j), value, target in zip(slots, values, targets):
        scores[row][j] = value / (len(target) if normalization == "mean"
                                  else 1)
  return scores, truncated


def content_free_probs(scorer: KShotScorer, fmt,
                       keys: Sequence[tuple[Sequence[Demo], Sequence[str]]],
                       *, where: str, **kwargs) -> list[np.ndarray]:
  """Per (demonstrations, options) key, p_cf [C]: the options' mean
  distribution over the content-free inputs put where the query goes
  (`kwargs`: those of `option_scores`)."""
  rows = [(i, text) for i, (demos, options) in enumerate(keys)
          for text in calibration_lib.CONTENT_FREE_INPUTS
          if all(_problem(scorer, c) is None for c in
                 _cells(scorer, fmt, demos, text, options, where))]
  if {i for i, _ in rows} != set(range(len(keys))):
    raise ValueError(f"{where}: no content-free input can be scored")
  scores, _ = option_scores(scorer, fmt, [keys[i][0] for i, _ in rows],
                            [text for _, text in rows],
                            [keys[i][1] for i, _ in rows], where=where,
                            **kwargs)
  by_key = [[] for _ in keys]
  for (i, _), row_scores in zip(rows, scores):
    by_key[i].append(row_scores)
  return [calibration_lib.content_free_probs(np.stack(k)) for k in by_key]


def sample_continuations(scorer: KShotScorer, contexts: Sequence[str], *,
                          max_new_tokens: int, seed: int,
                          max_tokens: int) -> list[str]:
  """One sampled continuation of each context (`TunedModel.generate`,
  method 'sample', temperature 1).

  Args:
    scorer: model, params, prompt, `encode` and `decode`.
    contexts: N texts; each keeps its LAST `max_tokens` tokens.
    max_new_tokens: L, the most tokens sampled; a continuation ends at EOS.
    seed: PRNG seed of the batch (rows draw independently; deterministic).

  Returns:
    N decoded continuations (EOS and what follows dropped).
  """
  if scorer.decode is None:
    raise ValueError("probe='generated' needs DecoderScorer.decode (the"
                     " tokenizer's decode) to read generations back")
  rows = [scorer.ids(c)[-max_tokens:] for c in contexts]
  longest = max(max(len(r) for r in rows), 1)
  length = -(-longest // _GENERATE_BUCKET) * _GENERATE_BUCKET
  tokens = np.zeros((len(rows), length), np.int32)  # [N, T] left-aligned.
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  out, _ = scorer.model.generate(
      scorer.trainable, scorer.frozen, tokens, method="sample",
      input_mask=np.arange(length) < np.array([[len(r)] for r in rows]),
      max_decode_length=max_new_tokens, rng=jax.random.key(seed))  # [N, L]
  eos = scorer.model.config.eos_id
  return [scorer.decode(row[:row.index(eos)] if eos in row else row)
          for row in np.asarray(out).tolist()]
