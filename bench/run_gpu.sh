#!/usr/bin/env bash
# Runs the Hugging Face PEFT anchor and prompt_jax's train-step benchmark side
# by side on one GPU, same shapes (batch $B, 512 = 100 prompt + 412 text
# encoder positions, 32 targets, bf16), and writes everything to one file.
#
#   bash bench/run_gpu.sh [RESULTS_FILE]      # from the repo root or anywhere
#
# Env: B (batch, default 32), PEAK_TFLOPS (default 989), PYTHON (python3),
# ANCHOR (path of anchor_peft_t5.py), ANCHOR_SIZES (default "base large xl"),
# OUR_SIZES (default "base large xl xxl"; set either to "" to skip a side).
# Ours runs one process per size so that each
# `peak_mem_gb` is that size's own peak. xxl at batch 32 may run out of memory;
# it is then retried with 4 microbatches, and also run at batch 8, the batch
# of the anchor's only xxl figure (../shared/bench/README.md).
set -u
OUT="${1:-}"
case "$OUT" in
  "") ;;
  /*) ;;
  *) OUT="$PWD/$OUT" ;;  # Relative to the caller's directory.
esac
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/bench/results_gpu_$(date +%Y%m%d_%H%M%S).txt}"
PY="${PYTHON:-python3}"
export B="${B:-32}"
export PEAK_TFLOPS="${PEAK_TFLOPS:-989}"
# JAX preallocates 75% of the card by default; torch may use all of it.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

ANCHOR="${ANCHOR:-}"
if [ -z "$ANCHOR" ]; then
  # ../shared does not travel to the device machine: copy the anchor into
  # bench/anchor/ (git-excluded, passed in `carry`) there, see bench/README.md.
  for candidate in ../shared/bench/anchor_peft_t5.py \
      shared/bench/anchor_peft_t5.py bench/anchor/anchor_peft_t5.py; do
    if [ -f "$candidate" ]; then ANCHOR="$candidate"; break; fi
  done
fi

ours() {  # ours SIZE [FLAGS...]
  timeout 600 "$PY" bench/train_throughput.py "$@"
}

{
  echo "# run_gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) B=$B PEAK_TFLOPS=$PEAK_TFLOPS"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$PY" -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" 2>&1
  "$PY" -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" 2>&1

  echo "## anchor (HF PEFT prompt tuning): $ANCHOR"
  if [ -n "$ANCHOR" ]; then
    plan=()
    for size in ${ANCHOR_SIZES-base large xl}; do plan+=("$size:prompt"); done
    if [ "${#plan[@]}" -gt 0 ]; then timeout 900 "$PY" "$ANCHOR" "${plan[@]}"; fi
  else
    echo "anchor_peft_t5.py not found; set ANCHOR=path"
  fi

  echo "## prompt_jax (bench/train_throughput.py)"
  for size in ${OUR_SIZES-base large xl xxl}; do
    if [ "$size" = xxl ]; then
      ours xxl || ours xxl --microbatches 4
      ours xxl --batch 8
    else
      ours "$size"
    fi
  done
} 2>&1 | tee "$OUT"
echo "results written to $OUT"
