"""MetaICL evaluation on unseen tasks, k-shot option scoring, either family.

Decoder-only backbones (SmolLM2) always come here; a T5 does for channel
scoring or order selection (`unseen_kshot.eval_config` takes the layout and
the length budget from the model family: a decoder's context + target share
inputs + targets tokens, a T5's encoder input holds inputs - 1 tokens + EOS).

For each test task of a MetaICL split (`hr_to_lr`, ...) and each seed (13,
21, 42, 87, 100), the k demonstrations are the seed's `<task>_16_<seed>_
train.jsonl` rows (all 16 in file order, or a seeded subset for k < 16:
`kshot_format.train_file_demonstrations`); every query row of the `test` file
(or the seed's `dev` file) is ranked over ITS OWN options, direct (score
" y" after [x_1 y_1 ... x_k y_k x]) or channel (" x" after [y_1 x_1 ... y],
by `prompt_jax.scoring.kshot`, re-exported here; context cut from the
left). Scores: summed log-probabilities, per token with
`score_normalization='mean'` (MetaICL). Prediction = argmax; metric =
MetaICL's macro-F1 (classification) or accuracy (multiple choice); per task
each seed, the mean and the worst; the table adds the mean over tasks.
Variants: `calibration='contextual'` (content-free inputs after the same
demonstrations), `demonstrations='knn'` (per query, the k train rows nearest
by mean-pooled decoder states, most similar last: KATE), a trainable tree
(meta-trained soft prompt). `max_rows_per_task=N`: the FIRST N query rows of
each file (a fixed subset for CPU budgets; the table records N). Tasks
without data or options are listed under `skipped` (and under the Markdown
table); a malformed file is an error (`path:line: ...`), never "no data".

Demonstration order (`order='globale'|'locale'`, Lu et al. 2022; k >= 2,
seed demonstrations): per (task, seed), `order_candidates` seeded
permutations of the k demonstrations; probes: `probe='generated'` (the
paper: after each order's context in `PROBE_TEMPLATE` form, input "\\n"
output "\\n\\n", the model samples, seeded; parsed probe inputs, scored over
the task's one option set) or `probe='dev'` (cheaper: the seed's `dev_<seed>`
inputs with their own options, labels unused); at most `probe_size`, unique.
Each probe is scored after each order with the evaluation's own format
(`option_scores`, uncalibrated), softmaxed over the options; the order of
highest GlobalE / LocalE (`order_selection.select_orders`) is used for the
test rows. Runs and the row's `seed_orders` record it; variant e.g.
`direct_seed_globale` (`direct_seed_globale_devprobe`).

Example (`--mode=unseen` calls `unseen_kshot.evaluate_unseen_kshot_run`):

  scorer = KShotScorer(model, frozen, encode=tokenizer.encode)
  cfg = KShotEvalConfig(k=4, seeds=(13, 21), max_rows_per_task=32,
                          order="globale")
  table = evaluate_folders(scorer, split_test_folders(["hr_to_lr"]), cfg)
  write_table(table, pathlib.Path("/tmp/unseen"))  # unseen_decoder_*.{json,md}
"""

import dataclasses
import functools
import logging
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from prompt_jax.scoring import kshot as kshot_option_scores
from prompt_jax.evaluators import metaicl_folders
from prompt_jax.evaluators import tables as unseen_table
from prompt_jax.icl import calibration as calibration_lib
from prompt_jax.icl import config as icl_config
from prompt_jax.icl import demo_selection
from prompt_jax.icl import embeddings
from prompt_jax.icl import kshot_format
from prompt_jax.icl import metaicl_pool
from prompt_jax.icl import order_selection

_LOG = logging.getLogger(__name__)
METHODS = icl_config.METHODS
CALIBRATIONS = icl_config.CALIBRATIONS
DEMONSTRATIONS = icl_config.DEMONSTRATIONS
NORMALIZATIONS = icl_config.NORMALIZATIONS
QUERY_SPLITS = ("test", "dev")
ORDERS = icl_config.ORDERS
PROBES = icl_config.PROBES
PROBE_TEMPLATE = order_selection.ProbeTemplate("", "\n", "\n\n")
MAX_SAMPLES_PER_ORDER = 4  # Generations per candidate order, at most.
MAX_K = metaicl_pool.K_SHOT  # The rows of one seed's train file.
Demo = kshot_option_scores.Demo
_BUCKET = 16
_EMBED = {"decoder": jax.jit(embeddings.decoder_sentence_embeddings,
                             static_argnums=0),
          "enc_dec": jax.jit(embeddings.t5_sentence_embeddings,
                             static_argnums=0)}
# Re-exported: the scoring moved to `prompt_jax.scoring.kshot`.
KShotScorer = kshot_option_scores.KShotScorer
DecoderScorer = KShotScorer
option_scores = kshot_option_scores.option_scores
content_free_probs = kshot_option_scores.content_free_probs
split_test_folders = metaicl_folders.split_test_folders  # Re-exported.
task_metrics = metaicl_folders.task_metrics


@dataclasses.dataclass(frozen=True)
class KShotEvalConfig:
  """What to evaluate and how (see the module docstring); `layout` is the
  `kshot_format` layout of the model family ('decoder' or 'enc_dec')."""
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
  order: str | None = None  # None | 'globale' | 'locale'.
  order_candidates: int = 4  # Permutations tried (all k! if fewer).
  probe: str = "generated"  # 'generated' (sampled) | 'dev' (dev inputs).
  probe_size: int = 32  # Most probes kept.
  probe_max_new_tokens: int = 64  # Tokens sampled per generation.
  layout: str = "decoder"

  def __post_init__(self):
    for name, allowed in (("method", METHODS), ("calibration", CALIBRATIONS),
                          ("demonstrations", DEMONSTRATIONS),
                          ("split", QUERY_SPLITS), ("order", ORDERS),
                          ("probe", PROBES),
                          ("score_normalization", NORMALIZATIONS),
                          ("layout", kshot_format.LAYOUTS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"KShotEvalConfig: {name}="
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
         f"length_bucket={self.length_bucket} must be > 0"),
        (not self.order or (self.k >= 2 and self.demonstrations == "seed"),
         f"order={self.order!r} needs k >= 2 and demonstrations='seed'"
         f" (got k={self.k}, demonstrations={self.demonstrations!r})"),
        (self.order_candidates >= 2,
         f"order_candidates={self.order_candidates} must be >= 2"),
        (self.probe_size > 0, f"probe_size={self.probe_size} must be > 0"),
        (self.probe_max_new_tokens > 0, f"probe_max_new_tokens="
         f"{self.probe_max_new_tokens} must be > 0")]:
      if not ok:
        raise ValueError(f"KShotEvalConfig: {message}")

  def kshot_format(self):
    """The `kshot_format.KShotFormat` of this config."""
    return kshot_format.KShotFormat(
        method=self.method, layout=self.layout, max_length=self.max_length,
        max_length_per_example=self.max_length_per_example)

  @property
  def variant(self) -> str:
    """e.g. `direct_seed`, `channel_knn_calibrated`, `direct_seed_globale`."""
    order = (f"_{self.order}" + ("_devprobe" if self.probe == "dev" else "")
             if self.order else "")
    return (f"{self.method}_{self.demonstrations}{order}"
            + ("_calibrated" if self.calibration else ""))


DecoderEvalConfig = KShotEvalConfig  # The name from decoder-only days.


# ---------------------------- demonstrations -----------------------------


def sentence_embeddings(scorer: KShotScorer, texts: Sequence[str], *,
                        max_tokens: int, batch_size: int = 16,
                        bucket: int = _BUCKET) -> np.ndarray:
  """[N, H] mean-pooled final decoder (T5: encoder) states of each text's
  first `max_tokens` tokens (no prompt: KATE embeds with the plain model)."""
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
    embed = _EMBED[scorer.layout]
    out.append(np.asarray(embed(scorer.model.module, scorer.frozen, tokens,
                                mask))[:len(chunk)])  # [B, H]
  return np.concatenate(out)


def knn_demonstrations(scorer: KShotScorer, train: Sequence[Demo],
                       queries: Sequence[str], k: int, *, task: str,
                       max_tokens: int, bucket: int = _BUCKET
                       ) -> list[list[Demo]]:
  """Per query, the k train rows nearest by input embedding, most similar
  LAST (KATE's order)."""
  embed = functools.partial(sentence_embeddings, scorer,
                            max_tokens=max_tokens, bucket=bucket)
  return demo_selection.kate_demonstrations(
      train, embed([x for x, _ in train]), embed(queries), k, task=task)


# ------------------------- demonstration order -------------------------


def _probe_problem(cfg: KShotEvalConfig, rows: Sequence) -> str | None:
  """Why these rows' options cannot label the probes, or None."""
  if cfg.probe == "generated" and len({r[2] for r in rows}) != 1:
    return (f"probe='generated' needs one option set shared by the rows;"
            f" found {len({r[2] for r in rows})} (use probe='dev')")
  if len(counts := {len(r[2]) for r in rows}) != 1:
    return (f"probe={cfg.probe!r}: rows have {sorted(counts)} options;"
            " GlobalE/LocalE need one option count")
  return None


def _probe_source_rows(folder: str, seed: int, query_rows: Sequence,
                       cfg: KShotEvalConfig) -> Sequence:
  """The rows whose options (and, for 'dev', inputs) the probes use."""
  if cfg.probe == "generated":
    return query_rows
  return metaicl_pool.MetaICLFiles(folder).read(f"dev_{seed}")[:cfg.probe_size]


def probing_rows(scorer: KShotScorer, folder: str, seed: int,
                 demos: Sequence[Demo], perms: np.ndarray,
                 query_rows: Sequence, cfg: KShotEvalConfig
                 ) -> tuple[list[str], list[tuple[str, ...]]]:
  """(probe inputs, their options) for order selection (module docstring).

  Raises:
    ValueError: (one line, naming the task and seed) if the options cannot
      label the probes (`_probe_problem`) or no probe could be parsed.
  """
  where = f"task {folder!r} seed {seed}"
  rows = _probe_source_rows(folder, seed, query_rows, cfg)
  if (problem := _probe_problem(cfg, rows)) is not None:
    raise ValueError(f"{where}: {problem}")
  if cfg.probe == "dev":
    return [r[0] for r in rows], [r[2] for r in rows]
  contexts = [order_selection.format_context(demos, p, PROBE_TEMPLATE)
              for p in perms]
  samples = min(MAX_SAMPLES_PER_ORDER, -(-cfg.probe_size // len(perms)))
  texts = iter(kshot_option_scores.sample_continuations(
      scorer, [c for c in contexts for _ in range(samples)],
      max_new_tokens=cfg.probe_max_new_tokens, seed=seed,
      max_tokens=(cfg.max_length if cfg.layout == "enc_dec" else
                  max(1, cfg.max_length - cfg.probe_max_new_tokens))))
  try:
    probing = order_selection.probing_set_from_generations(
        contexts, lambda _: next(texts), PROBE_TEMPLATE,
        samples_per_context=samples)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None
  inputs = list(dict.fromkeys(probing.inputs))[:cfg.probe_size]
  return inputs, [rows[0][2]] * len(inputs)


def order_demonstrations(scorer: KShotScorer, folder: str, seed: int,
                         demos: Sequence[Demo], query_rows: Sequence,
                         cfg: KShotEvalConfig, **kwargs
                         ) -> tuple[list[Demo], dict[str, Any]]:
  """The demonstrations in the order of highest GlobalE / LocalE, and a
  record {method, permutation, probes, candidates, entropies}.

  `kwargs`: those of `option_scores` (the evaluation's own settings).
  """
  perms = order_selection.candidate_permutations(len(demos),
                                                 cfg.order_candidates, seed)
  ordered = [[demos[i] for i in perm] for perm in perms]
  probes, options = probing_rows(scorer, folder, seed, demos, perms,
                                 query_rows, cfg)
  scores, _ = option_scores(
      scorer, cfg.kshot_format(), [d for d in ordered for _ in probes],
      list(probes) * len(perms), list(options) * len(perms),
      where=f"task {folder!r} seed {seed} probes", **kwargs)
  probs = calibration_lib.option_probs(np.stack(scores)).reshape(
      len(perms), len(probes), -1)  # [P, N, C]
  best = int(order_selection.select_orders(probs, cfg.order)[0])
  entropy = (order_selection.global_entropy if cfg.order == "globale"
             else order_selection.local_entropy)(probs)
  return ordered[best], {
      "method": cfg.order, "permutation": perms[best].tolist(),
      "probes": len(probes), "candidates": perms.tolist(),
      "entropies": [round(float(e), 6) for e in entropy]}


def _query_split(cfg: KShotEvalConfig, seed: int) -> str:
  return "test" if cfg.split == "test" else f"dev_{seed}"


def skip_reason(folder: str, cfg: KShotEvalConfig) -> str | None:
  """Why a test task cannot be evaluated here, or None.

  A task without the files (no such split, a missing file or metadata) is
  skipped; a file that is there but malformed is an error, never "no data".

  Raises:
    ValueError: `path:line: ...` for a malformed file.
  """
  if folder not in metaicl_pool.NAME_OF:
    return "not in the MetaICL pool under the data root"
  source = metaicl_pool.MetaICLFiles(folder)
  try:
    for seed in cfg.seeds:
      for split in (_query_split(cfg, seed), f"train_{seed}"):
        if split not in source.files:
          return (f"no data: MetaICL task {folder!r} has no split {split!r};"
                  f" it has {sorted(source.files)}.")
        source.paths(split)
    kind = metaicl_pool.task_type(folder)
    problems = [_probe_problem(cfg, _probe_source_rows(
        folder, seed, source.read(_query_split(cfg, seed)), cfg))
                for seed in (cfg.seeds if cfg.order else ())]
  except FileNotFoundError as e:
    return f"no data: {e}"
  if kind == "free-form":
    return "free-form (no options to rank)"
  return next((f"order: {p}" for p in problems if p), None)


def evaluate_seed(scorer: KShotScorer, folder: str, seed: int | None,
                  cfg: KShotEvalConfig) -> dict[str, Any]:
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
  kwargs = dict(normalization=cfg.score_normalization,
                batch_size=cfg.batch_size, bucket=cfg.length_bucket,
                share_context=(cfg.demonstrations == "seed"
                               and cfg.shared_context))
  order = None
  if cfg.demonstrations == "seed":  # k = 0: seed None, no demonstrations.
    seed_demos = kshot_format.train_file_demonstrations(
        train, cfg.k, seed or 0, task=folder)
    if cfg.order:
      seed_demos, order = order_demonstrations(
          scorer, folder, seed, seed_demos, query_rows, cfg, **kwargs)
    demos = [seed_demos] * len(rows)
  fmt = cfg.kshot_format()
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
          "trimmed_inputs": truncated, **({"order": order} if order else {})}


def evaluate_folder(scorer: KShotScorer, folder: str,
                    cfg: KShotEvalConfig) -> dict[str, Any]:
  """The table row of one task (`prompt_jax.evaluators.unseen`'s row layout)."""
  seeds = cfg.seeds if cfg.k else (None,)
  runs = {seed: evaluate_seed(scorer, folder, seed, cfg) for seed in seeds}
  first = next(iter(runs.values()))
  row = {"task": folder, "type": metaicl_pool.task_type(folder),
         "method": f"rank-{cfg.method}", "metric": first["metric"],
         "examples": first["examples"], "available": first["available"],
         "trimmed_inputs": sum(r["trimmed_inputs"] for r in runs.values()),
         "trimmed_options": 0}
  unseen_table.add_seed_summary(row, runs, per_seed=bool(cfg.k))
  if cfg.order:  # The chosen permutation and probe count per seed.
    row["seed_orders"] = {str(s): r["order"] for s, r in runs.items()}
  _LOG.info("unseen k-shot %s: %s %.2f", folder, row["metric"], row["score"])
  return row


def evaluate_folders(scorer: KShotScorer, folders: Sequence[str],
                     cfg: KShotEvalConfig) -> dict[str, Any]:
  """The table over `folders` (tasks without data are listed, not scored).

  Raises:
    ValueError: (one line) if no folder has data.
  """
  skipped, rows = [], []
  for folder in folders:
    if (reason := skip_reason(folder, cfg)) is not None:
      _LOG.warning("unseen k-shot: skipping %s: %s", folder, reason)
      skipped.append({"task": folder, "reason": reason})
    else:
      rows.append(evaluate_folder(scorer, folder, cfg))
  if skipped:
    _LOG.warning("unseen k-shot: %d of %d tasks left out of the mean: %s",
                 len(skipped), len(folders),
                 ", ".join(s["task"] for s in skipped))
  if not rows:
    raise ValueError(f"no test task has data: skipped {skipped}")
  seeds = list(cfg.seeds) if cfg.k else []
  settings = dataclasses.asdict(cfg)
  settings["max_examples_per_task"] = settings.pop("max_rows_per_task")
  settings["k_shot"] = settings.pop("k")
  return {**settings, "backbone": _BACKBONE[cfg.layout],
          "variant": cfg.variant,
          "seeds": seeds,
          "prompt": scorer.trainable is not None, "rows": rows,
          "skipped": skipped, **unseen_table.summarize(rows, cfg.k, seeds)}


_BACKBONE = {"decoder": "decoder", "enc_dec": "t5"}  # Table names.


def markdown(table: dict[str, Any]) -> str:
  """`unseen_table.markdown`'s table (the skipped tasks under it), headed by
  the variant."""
  head = (f"{table['backbone'].capitalize()}"
          f" `{table['variant']}` (soft prompt:"
          f" {'yes' if table['prompt'] else 'no'}; first"
          f" {table['max_examples_per_task'] or 'all'} rows per task).\n\n")
  return head + unseen_table.markdown(table)


def write_table(table: dict[str, Any], output_dir: pathlib.Path
                ) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes `unseen_<backbone>_<variant>_<split>_k<k>.{json,md}` atomically
  (backbone 'decoder' or 't5')."""
  stem = (f"unseen_{table['backbone']}_{table['variant']}_{table['split']}"
          f"_k{table['k_shot']}")
  return unseen_table.write(table, output_dir, stem, markdown(table))


def evaluate_unseen_kshot_run(*, model_dir: str, backbone, method, mesh_cfg,
                              task_names: Sequence[str],
                              cfg: KShotEvalConfig,
                              prompt_file: str | None = None,
                              output_dir: str | None = None,
                              trained_on: Sequence[str] = ()
                              ) -> dict[str, Any]:
  """`--mode=unseen` through the k-shot loop: builds the run, writes the
  table.

  Args: as `unseen.evaluate_unseen` (`task_names`: see
  `split_test_folders`; `prompt_file='none'`: no soft prompt, plain ICL;
  `trained_on` overlapping the test tasks is an error), `cfg` the settings
  (its layout that of the backbone's family: `unseen_kshot.eval_config`).
  """
  import seqio
  from prompt_jax import evaluate as evaluate_lib
  from prompt_jax import models
  from prompt_jax import setup as run_setup
  from prompt_jax.backbones.t5 import tokenizer as t5_tokenizer
  from prompt_jax.evaluators import task_selection
  folders = split_test_folders(task_names)
  trained = {getattr(seqio.get_mixture_or_task(name).source, "folder", name)
             for name in task_selection.resolve_tasks(trained_on)
             } if trained_on else set()  # MetaICL and k-shot sources.
  overlap = sorted(set(folders) & trained)
  if overlap:
    raise ValueError(f"tasks {overlap} were trained on ({list(trained_on)});"
                     " an unseen-task evaluation must leave them out")
  run = run_setup.build_run(backbone=backbone,
                            method=method.inference_method(),
                            mesh_cfg=mesh_cfg)
  tokenizer = run.tokenizer
  if tokenizer is None and run.model.family == models.ENCODER_DECODER:
    tokenizer = t5_tokenizer.SentencePieceTokenizer()  # The tasks' vocab.
  if tokenizer is None:
    raise ValueError("decoder has no tokenizer: set BackboneConfig.vocab_path")
  trainable = (None if prompt_file == "none" else
               evaluate_lib.load_trainable(run, model_dir, prompt_file))
  scorer = KShotScorer(run.model, run.frozen, tokenizer.encode, trainable,
                       decode=tokenizer.decode)
  table = evaluate_folders(scorer, folders, cfg)
  out_dir = pathlib.Path(output_dir or pathlib.Path(model_dir) / "unseen_eval")
  json_path, md_path = write_table(table, out_dir)
  _LOG.info("unseen-task table: %s, %s", json_path, md_path)
  print(markdown(table), flush=True)
  return table


evaluate_unseen_decoder_run = evaluate_unseen_kshot_run  # The old name.
