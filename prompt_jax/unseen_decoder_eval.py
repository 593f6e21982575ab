"""MetaICL evaluation on unseen tasks with a decoder-only backbone (SmolLM2).

For each test task of a MetaICL split (`hr_to_lr`, ...) and each seed (13,
21, 42, 87, 100), the k demonstrations are the seed's `<task>_16_<seed>_
train.jsonl` rows (all 16 in file order, or a seeded subset for k < 16:
`kshot_format.train_file_demonstrations`); every query row of the `test` file
(or the seed's `dev` file) is ranked over ITS OWN options with
`prompt_jax.option_scoring.score_options`:

  direct  (P(y|x)):  [x_1 y_1 ... x_k y_k x] -> score " y" for each option y
  channel (P(x|y)):  [y_1 x_1 ... y_k x_k y] -> score " x" for each option y

Layout and length limits (context cut from the left):
`kshot_format.format_ids`, decoder layout. Rows sharing a context and options share a call
and the encoded context. Scores: summed log-probabilities, per token with
`score_normalization='mean'` (MetaICL). Prediction = argmax; metric =
MetaICL's macro-F1 (classification) or accuracy (multiple choice); per task
each seed, the mean and the worst; the table adds the mean over tasks.
Variants: `calibration='contextual'` (content-free inputs after the same
demonstrations), `demonstrations='knn'` (per query, the k train rows nearest
by mean-pooled decoder states, most similar last: KATE), a trainable tree
(meta-trained soft prompt). `max_rows_per_task=N`: the FIRST N query rows of
each file (a fixed subset for CPU budgets; the table records N). Tasks
without data or options are listed under `skipped`.

Example (`--mode=unseen` with a decoder calls `evaluate_unseen_decoder_run`):

  scorer = DecoderScorer(model, frozen, encode=tokenizer.encode)
  cfg = DecoderEvalConfig(k=4, seeds=(13, 21), max_rows_per_task=32)
  table = evaluate_folders(scorer, split_test_folders(["hr_to_lr"]), cfg)
  write_table(table, pathlib.Path("/tmp/unseen"))  # unseen_decoder_*.{json,md}
"""

import dataclasses
import functools
import json
import logging
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from prompt_jax import decoder_model
from prompt_jax import option_scoring
from prompt_jax import unseen_table
from prompt_jax.icl import calibration as calibration_lib
from prompt_jax.icl import demo_selection
from prompt_jax.icl import embeddings
from prompt_jax.icl import kshot_format
from prompt_jax.icl import metaicl_pool
from prompt_jax.icl import metaicl_splits
from prompt_jax.types import PyTree

_LOG = logging.getLogger(__name__)
METHODS = ("direct", "channel")
CALIBRATIONS = (None, "contextual")
DEMONSTRATIONS = ("seed", "knn")
NORMALIZATIONS = ("mean", "sum")
QUERY_SPLITS = ("test", "dev")
MAX_K = metaicl_pool.K_SHOT  # The rows of one seed's train file.
Demo = tuple[str, str]
_BUCKET = 16
_embed = jax.jit(embeddings.decoder_sentence_embeddings, static_argnums=0)


@dataclasses.dataclass(frozen=True)
class DecoderEvalConfig:
  """What to evaluate and how (see the module docstring)."""
  k: int = MAX_K
  seeds: tuple[int, ...] = (13, 21, 42, 87, 100)
  method: str = "direct"
  calibration: str | None = None
  demonstrations: str = "seed"
  split: str = "test"
  max_rows_per_task: int | None = None
  score_normalization: str = "mean"
  max_length: int = 1024
  max_length_per_example: int = 256
  batch_size: int = 16
  shared_context: bool = True  # False: fixed shapes (`option_scores`).
  length_bucket: int = 16

  def __post_init__(self):
    for name, allowed in (("method", METHODS), ("calibration", CALIBRATIONS),
                          ("demonstrations", DEMONSTRATIONS),
                          ("split", QUERY_SPLITS),
                          ("score_normalization", NORMALIZATIONS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"DecoderEvalConfig: {name}="
                         f"{getattr(self, name)!r} not in {allowed}")
    for ok, message in [
        (0 <= self.k <= MAX_K, f"k={self.k}: a seed's train file has {MAX_K}"
         f" rows, so 0 <= k <= {MAX_K}"),
        (bool(self.seeds), "seeds must not be empty"),
        (self.demonstrations != "knn" or self.k > 0,
         "demonstrations='knn' needs k > 0"),
        (self.max_rows_per_task is None or self.max_rows_per_task > 0,
         f"max_rows_per_task={self.max_rows_per_task} must be > 0"),
        (self.length_bucket > 0,
         f"length_bucket={self.length_bucket} must be > 0")]:
      if not ok:
        raise ValueError(f"DecoderEvalConfig: {message}")

  def kshot_format(self):
    """The `kshot_format.KShotFormat` of this config (decoder layout)."""
    return kshot_format.KShotFormat(
        method=self.method, layout="decoder", max_length=self.max_length,
        max_length_per_example=self.max_length_per_example)

  @property
  def variant(self) -> str:
    """e.g. `direct_seed`, `channel_knn_calibrated`."""
    return (f"{self.method}_{self.demonstrations}"
            + ("_calibrated" if self.calibration else ""))


@dataclasses.dataclass
class DecoderScorer:
  """The model, its params, an optional soft prompt, and a text encoder."""
  model: decoder_model.PromptDecoderModel
  frozen: PyTree
  encode: Callable[[str], Sequence[int]]  # Text -> ids, no BOS / EOS.
  trainable: PyTree | None = None

  def __post_init__(self):
    self._encode = functools.lru_cache(maxsize=100_000)(
        lambda text: tuple(self.encode(text)))

  def ids(self, text: str) -> list[int]:
    return list(self._encode(text))


# ------------------------------ option scores ------------------------------


class _Cell(NamedTuple):
  """One (row, option): [context, inputs] conditions, `target` is scored."""
  context: tuple[int, ...]
  inputs: tuple[int, ...]
  target: tuple[int, ...]
  truncated: bool


def _cells(scorer: DecoderScorer, fmt, demos: Sequence[Demo], query: str,
           options: Sequence[str], where: str) -> list[_Cell]:
  """The cells of one row, laid out by `kshot_format.format_ids`."""
  cells = []
  for option in options:
    ids = kshot_format.format_ids(demos, (query, option), fmt, scorer.ids,
                           where=where)
    # Where the context ends does not change the score (causal LM); this
    # split keeps the demonstrations as the shared, cached part.
    query_piece = kshot_format.kshot_pieces(demos, (query, option), fmt)[1]
    cut = max(0, len(ids.inputs) - len(scorer.ids(query_piece)))
    cells.append(_Cell(tuple(ids.inputs[:cut]), tuple(ids.inputs[cut:]),
                       tuple(ids.targets), ids.num_truncated > 0))
  return cells


def _problem(scorer: DecoderScorer, cell: _Cell) -> str | None:
  """Why a cell cannot be scored, or None."""
  if not cell.target:
    return "the scored text has no tokens"
  if not (cell.context or cell.inputs or scorer.model.add_bos
          or scorer.trainable is not None):
    return "nothing precedes the scored text"
  return None


def option_scores(scorer: DecoderScorer, fmt, demos: Sequence[Sequence[Demo]],
                  queries: Sequence[str], options: Sequence[Sequence[str]], *,
                  normalization: str = "sum", batch_size: int = 16,
                  share_context: bool = True, bucket: int = 16,
                  where: str = "") -> tuple[list[np.ndarray], int]:
  """Per-row option scores: log p(option-side text | context) per option.

  Args:
    scorer: model, params, prompt and encoder.
    fmt: a `kshot_format.KShotFormat`, decoder layout (its method decides
      what is scored: direct " y"; channel " x" after the option).
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
    elif len({(c.context, c.inputs) for c in cells}) == 1:  # One row, C options.
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


def content_free_probs(scorer: DecoderScorer, fmt,
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


def sentence_embeddings(scorer: DecoderScorer, texts: Sequence[str], *,
                        max_tokens: int, batch_size: int = 16,
                        bucket: int = _BUCKET) -> np.ndarray:
  """[N, H] mean-pooled final decoder states of each text's first
  `max_tokens` tokens (no prompt: KATE embeds with the plain model)."""
  rows = [scorer.ids(t)[:max_tokens] for t in texts]
  out = []
  for start in range(0, len(rows), batch_size):  # Padded to [B, bucket].
    chunk = rows[start:start + batch_size]
    length = -(-max(max(len(r) for r in chunk), 1) // bucket) * bucket
    tokens = np.zeros((batch_size, length), np.int32)
    for i, r in enumerate(chunk):
      tokens[i, :len(r)] = r
    mask = np.arange(length) < np.array(
        [len(r) for r in chunk] + [0] * (batch_size - len(chunk)))[:, None]
    out.append(np.asarray(_embed(scorer.model.module, scorer.frozen, tokens,
                                 mask))[:len(chunk)])  # [B, H]
  return np.concatenate(out)


def knn_demonstrations(scorer: DecoderScorer, train: Sequence[Demo],
                       queries: Sequence[str], k: int, *, task: str,
                       max_tokens: int, bucket: int = _BUCKET
                       ) -> list[list[Demo]]:
  """Per query, the k train rows nearest by input embedding, most similar
  LAST (KATE's order)."""
  index = demo_selection.NearestNeighbourIndex(
      sentence_embeddings(scorer, [x for x, _ in train],
                          max_tokens=max_tokens, bucket=bucket), task=task)
  nearest, _ = index.query(sentence_embeddings(
      scorer, queries, max_tokens=max_tokens, bucket=bucket), k)
  return [[train[i] for i in row] for row in demo_selection.kate_order(nearest)]


def task_metrics(kind: str, targets: Sequence[str],
                 predictions: Sequence[str]) -> tuple[str, dict[str, float]]:
  """(primary metric, metrics): macro-F1 for classification, else accuracy."""
  metrics = {"accuracy": metaicl_pool.exact_match_accuracy(targets, predictions)}
  if kind == "classification":
    metrics["macro_f1"] = metaicl_pool.macro_f1(targets, predictions)
    return "macro_f1", metrics
  return "accuracy", metrics


def _query_split(cfg: DecoderEvalConfig, seed: int) -> str:
  return "test" if cfg.split == "test" else f"dev_{seed}"


def skip_reason(folder: str, cfg: DecoderEvalConfig) -> str | None:
  """Why a test task cannot be evaluated here, or None."""
  if folder not in metaicl_pool.NAME_OF:
    return "not in the MetaICL pool under the data root"
  source = metaicl_pool.MetaICLFiles(folder)
  try:
    for seed in cfg.seeds:
      source.paths(_query_split(cfg, seed))
      source.paths(f"train_{seed}")
    kind = metaicl_pool.task_type(folder)
  except (FileNotFoundError, ValueError) as e:
    return f"no data: {e}"
  return "free-form (no options to rank)" if kind == "free-form" else None


def evaluate_seed(scorer: DecoderScorer, folder: str, seed: int | None,
                  cfg: DecoderEvalConfig) -> dict[str, Any]:
  """One run of one task: {metric, score, metrics, examples, ...}."""
  source = metaicl_pool.MetaICLFiles(folder)
  query_rows = source.read(_query_split(cfg, seed or cfg.seeds[0]))
  rows = query_rows[:cfg.max_rows_per_task]
  queries, options = [r[0] for r in rows], [r[2] for r in rows]
  where = f"task {folder!r} seed {seed}"
  train = [r[:2] for r in source.read(f"train_{seed}")] if cfg.k else []
  if cfg.demonstrations == "knn":
    demos = knn_demonstrations(scorer, train, queries, cfg.k, task=folder,
                               max_tokens=cfg.max_length_per_example,
                               bucket=cfg.length_bucket)
  else:  # k = 0: seed None, no demonstrations.
    demos = [kshot_format.train_file_demonstrations(train, cfg.k, seed or 0,
                                             task=folder)] * len(rows)
  fmt = cfg.kshot_format()
  kwargs = dict(normalization=cfg.score_normalization,
                batch_size=cfg.batch_size, bucket=cfg.length_bucket,
                share_context=(cfg.demonstrations == "seed"
                               and cfg.shared_context))
  scores, truncated = option_scores(scorer, fmt, demos, queries, options,
                                    where=where, **kwargs)
  if cfg.calibration == "contextual":
    keys = list(dict.fromkeys(zip(map(tuple, demos), options)))
    p_cf = dict(zip(keys, content_free_probs(scorer, fmt, keys, where=where,
                                             **kwargs)))
    scores = [calibration_lib.calibrate(s[None], p_cf[(tuple(d), o)])[0]
              for s, d, o in zip(scores, demos, options)]
  predictions = [o[int(np.argmax(s))] for o, s in zip(options, scores)]
  metric, metrics = task_metrics(metaicl_pool.task_type(folder),
                                 [r[1] for r in rows], predictions)
  return {"metric": metric, "score": metrics[metric], "metrics": metrics,
          "examples": len(rows), "available": len(query_rows),
          "trimmed_inputs": truncated}


def evaluate_folder(scorer: DecoderScorer, folder: str,
                    cfg: DecoderEvalConfig) -> dict[str, Any]:
  """The table row of one task (`prompt_jax.unseen_eval`'s row layout)."""
  seeds = cfg.seeds if cfg.k else (None,)
  runs = {seed: evaluate_seed(scorer, folder, seed, cfg) for seed in seeds}
  first = next(iter(runs.values()))
  row = {"task": folder, "type": metaicl_pool.task_type(folder),
         "method": f"rank-{cfg.method}", "metric": first["metric"],
         "examples": first["examples"], "available": first["available"],
         "trimmed_inputs": sum(r["trimmed_inputs"] for r in runs.values()),
         "trimmed_options": 0}
  unseen_table.add_seed_summary(row, runs, per_seed=bool(cfg.k))
  _LOG.info("unseen decoder %s: %s %.2f", folder, row["metric"], row["score"])
  return row


def split_test_folders(names: Sequence[str]) -> list[str]:
  """Split names (`hr_to_lr`), their test mixtures / lists, MetaICL task
  names or folders → test folders, in order (absent ones included, so that
  they are listed as skipped).

  Raises:
    ValueError: (one line) for a `metaicl_...` name that is none of these.
  """
  by_name = {}
  for split in metaicl_splits.SPLIT_NAMES:
    for alias in (split, metaicl_splits.test_mixture_name(split),
                  metaicl_splits.test_list_name(split)):
      by_name[alias] = metaicl_splits.test_folders(split)
  out = []
  for name in names:
    if name in by_name:
      folders = by_name[name]
    elif name in metaicl_pool.FOLDER_OF:
      folders = (metaicl_pool.FOLDER_OF[name],)
    elif name.startswith("metaicl_"):
      raise ValueError(f"{name!r} is neither a MetaICL split, its test"
                       " mixture/list, nor a MetaICL task")
    else:
      folders = (name,)
    out.extend(f for f in folders if f not in out)
  return out


def evaluate_folders(scorer: DecoderScorer, folders: Sequence[str],
                     cfg: DecoderEvalConfig) -> dict[str, Any]:
  """The table over `folders` (tasks without data are listed, not scored).

  Raises:
    ValueError: (one line) if no folder has data.
  """
  skipped, rows = [], []
  for folder in folders:
    if (reason := skip_reason(folder, cfg)) is not None:
      _LOG.warning("unseen decoder: skipping %s: %s", folder, reason)
      skipped.append({"task": folder, "reason": reason})
    else:
      rows.append(evaluate_folder(scorer, folder, cfg))
  if not rows:
    raise ValueError(f"no test task has data: skipped {skipped}")
  seeds = list(cfg.seeds) if cfg.k else []
  settings = dataclasses.asdict(cfg)
  settings["max_examples_per_task"] = settings.pop("max_rows_per_task")
  settings["k_shot"] = settings.pop("k")
  return {**settings, "backbone": "decoder", "variant": cfg.variant,
          "seeds": seeds,
          "prompt": scorer.trainable is not None, "rows": rows,
          "skipped": skipped, **unseen_table.summarize(rows, cfg.k, seeds)}


def markdown(table: dict[str, Any]) -> str:
  """`unseen_table.markdown`'s table, with the variant and the skipped."""
  head = (f"Decoder `{table['variant']}` (soft prompt:"
          f" {'yes' if table['prompt'] else 'no'}; first"
          f" {table['max_examples_per_task'] or 'all'} rows per task).\n\n")
  skipped = ", ".join(f"{s['task']} ({s['reason']})" for s in table["skipped"])
  return (head + unseen_table.markdown(table)
          + (f"\nSkipped: {skipped}.\n" if skipped else ""))


def write_table(table: dict[str, Any], output_dir: pathlib.Path
                ) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes `unseen_decoder_<variant>_<split>_k<k>.{json,md}` atomically."""
  output_dir.mkdir(parents=True, exist_ok=True)
  stem = (f"unseen_decoder_{table['variant']}_{table['split']}"
          f"_k{table['k_shot']}")
  paths = (output_dir / f"{stem}.json", output_dir / f"{stem}.md")
  for path, text in zip(paths, (json.dumps(table, indent=2) + "\n",
                                markdown(table))):
    path.with_suffix(".tmp").write_text(text, encoding="utf-8")
    os.replace(path.with_suffix(".tmp"), path)
  return paths


def evaluate_unseen_decoder_run(*, model_dir: str, backbone, prompt,
                                mesh_cfg, task_names: Sequence[str],
                                cfg: DecoderEvalConfig,
                                prompt_file: str | None = None,
                                output_dir: str | None = None,
                                trained_on: Sequence[str] = ()
                                ) -> dict[str, Any]:
  """`--mode=unseen` with a decoder: builds the run, writes the table.

  Args: as `unseen_eval.evaluate_unseen` (`task_names`: see
  `split_test_folders`; `prompt_file='none'`: no soft prompt, plain ICL;
  `trained_on` overlapping the test tasks is an error), `cfg` the settings.
  """
  import seqio
  from prompt_jax import evaluate as evaluate_lib
  from prompt_jax import run_setup
  from prompt_jax import unseen_eval
  folders = split_test_folders(task_names)
  trained = {getattr(seqio.get_mixture_or_task(name).source, "folder", name)
             for name in unseen_eval.resolve_tasks(trained_on)
             } if trained_on else set()  # MetaICL and k-shot sources.
  overlap = sorted(set(folders) & trained)
  if overlap:
    raise ValueError(f"tasks {overlap} were trained on ({list(trained_on)});"
                     " an unseen-task evaluation must leave them out")
  run = run_setup.build_run(backbone=backbone, prompt=prompt,
                            mesh_cfg=mesh_cfg)
  if run.tokenizer is None:
    raise ValueError("decoder has no tokenizer: set BackboneConfig.vocab_path")
  trainable = (None if prompt_file == "none" else
               evaluate_lib.load_trainable(run, model_dir, prompt_file))
  scorer = DecoderScorer(run.model, run.frozen, run.tokenizer.encode,
                         trainable)
  table = evaluate_folders(scorer, folders, cfg)
  out_dir = pathlib.Path(output_dir or pathlib.Path(model_dir) / "unseen_eval")
  json_path, md_path = write_table(table, out_dir)
  _LOG.info("unseen-task table: %s, %s", json_path, md_path)
  print(markdown(table), flush=True)
  return table
