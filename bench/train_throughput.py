"""Throughput of the prompt-tuning train step on a frozen, random-weight T5 1.1.

Same shapes as the Hugging Face PEFT anchor
(`../shared/bench/anchor_peft_t5.py`): batch 32 (flag `--batch`, else env
`B`), encoder input 512 positions of which P=100 are the soft prompt (412 text
tokens), 32 target tokens, bf16 compute, frozen backbone stored in bf16 (the
anchor casts its whole model to bf16; `--param_dtype float32` to change), the
[P, H] prompt trainable and stored in fp32, AdamW as the anchor's
`torch.optim.AdamW(lr=0.3)` (betas 0.9/0.999, eps 1e-8, weight decay 0.01).
The step timed is `Trainer`'s own jitted, sharded `train_step` with the state
donated, AOT-compiled once; the median of `--steps` timed steps is reported.

Prints one JSON line per size and a table. Throughput is counted as the
anchor counts it: examples/s = batch / step time, tokens/s = batch *
(encoder positions including the prompt + target tokens) / step time.
FLOPs per step are given twice: `tflop_per_step` is an analytic count of the
matmuls that the step executes (forward plus the activation gradients that
reach the prompt; see `analytic_flops`), which is what torch's
FlopCounterMode counts for the anchor and what `mfu` uses;
`tflop_per_step_xla` is XLA's own cost analysis of the compiled step (all
ops, summed over devices), with `mfu_xla` beside it.

On CPU (no accelerator) the defaults shrink to `t5_1_1_tiny` with vocabulary
32128, batch 8, 64 encoder positions (16 of them prompt), 8 targets, so the
script runs in seconds; every JSON line names its backend and preset.

  python bench/train_throughput.py base large xl --batch 32 --steps 8
"""

import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prompt_jax import optim
from prompt_jax import partitioning
from prompt_jax import trainer as trainer_lib
from prompt_jax.backbones.t5 import config as config_lib
from prompt_jax.backbones.t5 import network
from prompt_jax.methods.prompt_tuning import method as prompt_tuning_lib

# Size name -> T5 1.1 preset; `tiny` keeps the real vocabulary (32128).
SIZES = {"tiny": "t5_1_1_tiny", "small": "t5_1_1_small",
         "base": "t5_1_1_base", "large": "t5_1_1_large", "xl": "t5_1_1_xl",
         "xxl": "t5_1_1_xxl"}
_VOCAB = 32128
_MAX_TOKEN = 32000  # The anchor draws ids from [1, 32000).
DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}

# Shapes (batch, encoder positions incl. prompt, prompt length, targets).
_ACCEL_DEFAULTS = dict(sizes=["base"], batch=32, in_len=512, prompt_len=100,
                       out_len=32)
_CPU_DEFAULTS = dict(sizes=["tiny"], batch=8, in_len=64, prompt_len=16,
                     out_len=8)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """One benchmark configuration (one JSON line)."""
  size: str
  batch: int
  in_len: int  # Encoder positions, prompt included.
  prompt_len: int
  out_len: int
  steps: int
  warmup: int
  mesh: tuple[int, int]  # (data, model).
  microbatches: int
  peak_tflops: float  # Per device.
  param_dtype: str
  learning_rate: float = 0.3
  weight_decay: float = 0.01
  seed: int = 0


# ---------------------------------------------------------------- model ----


def t5_config(size: str, param_dtype: str) -> config_lib.T5Config:
  """The random backbone's config: bf16 compute, `param_dtype` storage."""
  overrides = dict(dtype=jnp.bfloat16, param_dtype=DTYPES[param_dtype],
                   dropout_rate=0.0)
  if size == "tiny":
    overrides["vocab_size"] = _VOCAB
  return config_lib.preset(SIZES.get(size, size), **overrides)


def analytic_flops(cfg: config_lib.T5Config, batch: int, in_len: int,
                   out_len: int) -> dict[str, int]:
  """Matmul FLOPs (2 per multiply-add) of one prompt-tuning train step.

  Forward: every projection, FFN, attention score/value product and the
  untied LM head. Backward: only what the prompt gradient needs. Frozen
  weights get no gradient, so a weight matmul costs one more matmul (the
  activation gradient) and an attention product of two activations costs
  two. Decoder layer 0's self-attention and its cross-attention query do not
  depend on the prompt, so they have no backward; its cross-attention scores
  need only the key gradient. torch autograd (the anchor) and JAX's
  linearization both prune exactly these. Norms, softmax, losses and the
  optimizer (elementwise) are not counted, as in FlopCounterMode.

  Args:
    cfg: backbone config (gated FFN = 3 FFN matmuls, else 2).
    batch: B.
    in_len: encoder positions Ti, prompt included.
    out_len: target positions To.

  Returns:
    {'forward', 'backward', 'total'} FLOPs for the whole batch.
  """
  b, ti, to = batch, in_len, out_len
  h, f, v = cfg.emb_dim, cfg.mlp_dim, cfg.vocab_size
  nd, n, d = cfg.num_heads * cfg.head_dim, cfg.num_heads, cfg.head_dim
  ffn_mats = 3 if cfg.gated_mlp else 2

  def mm(tokens, k, m):
    return 2 * tokens * k * m

  # Encoder layer: q, k, v, out projections; FFN; scores and values.
  enc_w = 4 * mm(b * ti, h, nd) + ffn_mats * mm(b * ti, h, f)
  enc_a = 2 * (2 * b * n * ti * ti * d)
  # Decoder layer parts.
  self_w, self_a = 4 * mm(b * to, h, nd), 2 * (2 * b * n * to * to * d)
  cross_qo, cross_kv = 2 * mm(b * to, h, nd), 2 * mm(b * ti, h, nd)
  cross_prod = 2 * b * n * to * ti * d  # One of the two attention products.
  dec_ffn = ffn_mats * mm(b * to, h, f)
  head = mm(b * to, h, v)  # Untied head or tied `attend`: same size.

  dec_fwd = self_w + self_a + cross_qo + cross_kv + 2 * cross_prod + dec_ffn
  forward = (cfg.num_encoder_layers * (enc_w + enc_a) +
             cfg.num_decoder_layers * dec_fwd + head)
  dec_bwd = (self_w + 2 * self_a + cross_qo + cross_kv + 4 * cross_prod +
             dec_ffn)
  # Layer 0: out projection, k/v, key grad of scores (1) + value product (2).
  dec0_bwd = cross_qo // 2 + cross_kv + 3 * cross_prod + dec_ffn
  backward = (cfg.num_encoder_layers * (enc_w + 2 * enc_a) +
              (dec0_bwd + (cfg.num_decoder_layers - 1) * dec_bwd
               if cfg.num_decoder_layers else 0) + head)
  return {"forward": forward, "backward": backward,
          "total": forward + backward}


def random_batch(batch: int, text_len: int, out_len: int, vocab_size: int,
                 seed: int = 0) -> dict[str, np.ndarray]:
  """A batch with no padding: random ids in [1, min(V, 32000))."""
  rng = np.random.RandomState(seed)
  high = min(vocab_size, _MAX_TOKEN)
  enc = rng.randint(1, high, (batch, text_len)).astype(np.int32)
  targets = rng.randint(1, high, (batch, out_len)).astype(np.int32)
  inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]],
                          axis=1)  # Shifted right, start id 0.
  return {"encoder_input_tokens": enc, "decoder_input_tokens": inputs,
          "decoder_target_tokens": targets,
          "decoder_loss_weights": np.ones_like(targets)}


# -------------------------------------------------------- measurements ----


def xla_cost(compiled) -> tuple[float | None, float | None]:
  """(FLOPs per device, bytes per device) from XLA's analyses, or None."""
  flops = mem = None
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # Older jax: one dict per module.
      cost = cost[0] if cost else None
    if cost and cost.get("flops", -1) >= 0:
      flops = float(cost["flops"])
  except Exception:  # pylint: disable=broad-except
    pass  # Some backends have no cost model.
  try:
    m = compiled.memory_analysis()
    mem = float(m.argument_size_in_bytes + m.output_size_in_bytes -
                m.alias_size_in_bytes + m.temp_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    pass
  return flops, mem


def _sig(x: float, digits: int = 4) -> float:
  """x rounded to `digits` significant digits (MFU on CPU is tiny)."""
  return float(f"{x:.{digits}g}")


def _peak_memory_gb() -> float | str:
  """Device 0's peak bytes in use (process-wide), or 'n/a' (e.g. on CPU)."""
  stats = jax.devices()[0].memory_stats()
  if not stats or "peak_bytes_in_use" not in stats:
    return "n/a"
  return round(stats["peak_bytes_in_use"] / 2**30, 2)


@dataclasses.dataclass
class Setup:
  """What one configuration runs on: the Trainer and its placed inputs."""
  trainer: trainer_lib.Trainer
  frozen: Any
  state: trainer_lib.TrainState
  batch: dict[str, jax.Array]


def build(bc: BenchConfig, cfg: config_lib.T5Config) -> Setup:
  """Mesh, frozen random backbone (sharded), Trainer, state, device batch."""
  mesh = partitioning.make_mesh(*bc.mesh)
  rules = partitioning.standard_logical_axis_rules("model")
  frozen = partitioning.init_params(network.T5Transformer(cfg),
                                    jax.random.key(bc.seed), mesh, rules)
  model = prompt_tuning_lib.t5_model(cfg, bc.prompt_len)
  optimizer = optim.make_optimizer(name="adamw",
                                   learning_rate=bc.learning_rate,
                                   weight_decay=bc.weight_decay)
  trainer = trainer_lib.Trainer(model, optimizer, mesh, rules,
                                partitioning.shardings_of(frozen),
                                num_microbatches=bc.microbatches)
  state = trainer.init_state(jax.random.key(bc.seed + 1))
  batch = trainer.put_batch(random_batch(
      bc.batch, bc.in_len - bc.prompt_len, bc.out_len, cfg.vocab_size,
      bc.seed))
  return Setup(trainer, frozen, state, batch)


def compile_step(setup: Setup, rng: jax.Array):
  """AOT-compiles the Trainer's own jitted step (shardings, donation).

  The executable returned is the one that is timed, so XLA's cost analysis
  describes exactly the measured program (calling the jitted function after
  `lower().compile()` would compile it a second time).
  """
  lowered = setup.trainer.lower_train_step(setup.state, setup.frozen,
                                           setup.batch, rng)
  return lowered.compile()


def _time_steps(step_fn, state, n: int) -> tuple[Any, Any, list[float]]:
  """Runs n steps, blocking after each; returns state, metrics, times."""
  times, metrics = [], None
  for _ in range(n):
    start = time.perf_counter()
    state, metrics = step_fn(state)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  return state, metrics, times


def run(bc: BenchConfig) -> dict[str, Any]:
  """Compiles, warms up and times the train step of one configuration."""
  cfg = t5_config(bc.size, bc.param_dtype)
  setup = build(bc, cfg)
  rng = jax.random.key(bc.seed + 2)
  start = time.perf_counter()
  compiled = compile_step(setup, rng)
  compile_s = time.perf_counter() - start
  xla_flops, xla_bytes = xla_cost(compiled)
  frozen, batch = setup.frozen, setup.batch

  def step_fn(s):
    return compiled(s, frozen, batch, rng)

  state, _, _ = _time_steps(step_fn, setup.state, bc.warmup)
  setup.state = None  # Donated.
  state, metrics, times = _time_steps(step_fn, state, bc.steps)
  step_s = statistics.median(times)
  n_dev = bc.mesh[0] * bc.mesh[1]
  peak = bc.peak_tflops * 1e12 * n_dev
  flops = analytic_flops(cfg, bc.batch, bc.in_len, bc.out_len)["total"]
  # XLA's count is per device and covers a while-loop body once, so the
  # microbatch scan is counted once: scale by devices and microbatches.
  xla_total = (None if xla_flops is None
               else xla_flops * n_dev * bc.microbatches)
  frozen_count = sum(x.size for x in jax.tree.leaves(frozen))
  trainable_count = sum(x.size for x in jax.tree.leaves(state.trainable))
  row = dict(
      size=bc.size, preset=SIZES.get(bc.size, bc.size),
      backend=jax.default_backend(), device=jax.devices()[0].device_kind,
      num_devices=n_dev, mesh=f"{bc.mesh[0]},{bc.mesh[1]}",
      jax_version=jax.__version__, batch=bc.batch,
      microbatches=bc.microbatches, in_len=bc.in_len,
      text_len=bc.in_len - bc.prompt_len, prompt_len=bc.prompt_len,
      out_len=bc.out_len, dtype="bfloat16", param_dtype=bc.param_dtype,
      prompt_dtype=str(jax.tree.leaves(state.trainable)[0].dtype),
      trainable=int(trainable_count),
      total=int(frozen_count + trainable_count),
      steps=bc.steps, warmup=bc.warmup, compile_s=round(compile_s, 2),
      step_s=round(step_s, 5), step_s_mean=round(statistics.mean(times), 5),
      step_s_min=round(min(times), 5),
      ex_per_s=round(bc.batch / step_s, 2),
      tok_per_s=round(bc.batch * (bc.in_len + bc.out_len) / step_s, 1),
      tflop_per_step=_sig(flops / 1e12),
      tflop_per_step_xla=None if xla_total is None else _sig(xla_total / 1e12),
      flops_for_mfu="analytic", peak_tflops=bc.peak_tflops,
      mfu=_sig(flops / step_s / peak),
      mfu_xla=None if xla_total is None else _sig(xla_total / step_s / peak),
      peak_mem_gb=_peak_memory_gb(),
      xla_mem_gb=None if xla_bytes is None else round(xla_bytes / 2**30, 3),
      loss=round(float(metrics["loss"]), 4))
  del compiled, state, frozen, batch, setup
  return row


# ------------------------------------------------------------------ CLI ----


def _parse_mesh(text: str) -> tuple[int, int] | None:
  if text == "auto":
    return None
  parts = text.split(",")
  if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
    raise argparse.ArgumentTypeError(
        f"--mesh {text!r}: expected DATA,MODEL (e.g. 1,1) or 'auto'")
  return int(parts[0]), int(parts[1])


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="train_throughput.py",
      description="Prompt-tuning train-step throughput on a random T5 1.1.")
  p.add_argument("sizes", nargs="*",
                 help=f"sizes ({', '.join(SIZES)}) or T5 preset names; "
                 "default: base on an accelerator, tiny on CPU")
  p.add_argument("--batch", type=int, default=None,
                 help="global batch (default: env B, else 32; CPU: 8)")
  p.add_argument("--steps", type=int, default=8, help="timed steps")
  p.add_argument("--warmup", type=int, default=3,
                 help="untimed steps after compiling")
  p.add_argument("--mesh", type=_parse_mesh, default=None,
                 help="DATA,MODEL mesh (default: all devices on data)")
  p.add_argument("--microbatches", type=int, default=1)
  p.add_argument("--peak_tflops", type=float,
                 default=float(os.environ.get("PEAK_TFLOPS", "989")),
                 help="per-device peak for MFU (default 989: H100/H200 "
                 "bf16 dense)")
  p.add_argument("--param_dtype", choices=sorted(DTYPES), default="bfloat16",
                 help="storage dtype of the frozen backbone")
  p.add_argument("--in_len", type=int, default=None,
                 help="encoder positions incl. prompt (512; CPU 64)")
  p.add_argument("--prompt_len", type=int, default=None,
                 help="P (100; CPU 16)")
  p.add_argument("--out_len", type=int, default=None,
                 help="target tokens (32; CPU 8)")
  return p


def _pick(value: int | None, default: int) -> int:
  return default if value is None else value


def configs_from_args(argv: Sequence[str]) -> list[BenchConfig]:
  """Parses the command line into configurations (backend-aware defaults).

  Raises:
    SystemExit: with a one-line message for bad input (argparse style).
  """
  parser = _parser()
  args = parser.parse_args(list(argv))
  defaults = _CPU_DEFAULTS if jax.default_backend() == "cpu" else (
      _ACCEL_DEFAULTS)
  env_batch = os.environ.get("B", "")
  if args.batch is None and env_batch and not env_batch.isdigit():
    parser.error(f"env B={env_batch!r}: expected a positive integer")
  batch = _pick(args.batch, int(env_batch) if env_batch else
                defaults["batch"])
  in_len = _pick(args.in_len, defaults["in_len"])
  prompt_len = _pick(args.prompt_len, defaults["prompt_len"])
  out_len = _pick(args.out_len, defaults["out_len"])
  mesh = args.mesh or (jax.device_count(), 1)
  sizes = args.sizes or defaults["sizes"]
  problems = [f"unknown size {s!r} (known: {', '.join(SIZES)} or a preset "
              f"in prompt_jax.backbones.t5.config.PRESETS)" for s in sizes
              if s not in SIZES and s not in config_lib.PRESETS]
  if mesh[0] * mesh[1] != jax.device_count():
    problems.append(f"--mesh {mesh[0]},{mesh[1]} needs {mesh[0] * mesh[1]} "
                    f"devices, {jax.device_count()} present")
  if batch < 1 or batch % (mesh[0] * max(args.microbatches, 1)):
    problems.append(f"--batch {batch} must be a positive multiple of data "
                    f"axis {mesh[0]} x microbatches {args.microbatches}")
  if not 0 <= prompt_len < in_len or out_len < 1:
    problems.append(f"need 0 <= prompt_len ({prompt_len}) < in_len "
                    f"({in_len}) and out_len ({out_len}) >= 1")
  if min(args.steps, args.microbatches) < 1 or args.warmup < 0:
    problems.append("--steps and --microbatches must be >= 1, --warmup >= 0")
  if problems:
    parser.error("; ".join(problems))
  return [BenchConfig(size=s, batch=batch, in_len=in_len,
                      prompt_len=prompt_len, out_len=out_len,
                      steps=args.steps, warmup=args.warmup, mesh=mesh,
                      microbatches=args.microbatches,
                      peak_tflops=args.peak_tflops,
                      param_dtype=args.param_dtype) for s in sizes]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """A fixed-width table of the successful rows."""
  head = ("size", "batch", "ex/s", "tok/s", "step_ms", "TFLOP/step", "MFU",
          "MFU_xla", "peak_GB", "xla_GB")
  lines = ["  ".join(f"{h:>10}" for h in head)]
  for r in rows:
    if "error" in r:
      lines.append(f"{r['size']:>10}  error: {r['error'][:100]}")
      continue
    cells = (r["size"], r["batch"], r["ex_per_s"], r["tok_per_s"],
             round(1000 * r["step_s"], 2), r["tflop_per_step"], r["mfu"],
             r["mfu_xla"], r["peak_mem_gb"], r["xla_mem_gb"])
    lines.append("  ".join(f"{str(c):>10}" for c in cells))
  return "\n".join(lines)


def main(argv: Sequence[str]) -> list[dict[str, Any]]:
  """Runs every configuration; prints JSON lines and a table; returns rows.

  A configuration that fails (e.g. out of memory) gives a row with `error`
  and the rest still run, as in the anchor.
  """
  rows = []
  for bc in configs_from_args(argv):
    try:
      row = run(bc)
    except Exception as e:  # pylint: disable=broad-except
      row = dict(size=bc.size, batch=bc.batch, backend=jax.default_backend(),
                 error=repr(e)[:300])
    print(json.dumps(row), flush=True)
    rows.append(row)
    jax.clear_caches()
    gc.collect()
  print(format_table(rows), flush=True)
  return rows


if __name__ == "__main__":
  sys.exit(1 if any("error" in r for r in main(sys.argv[1:])) else 0)
