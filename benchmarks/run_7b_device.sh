#!/usr/bin/env bash
# Issue 16's GPU check in one call (a device lease is short): a smoke run at shrunken
# shapes that stops everything if the device path is broken, SVD-LLM end to end on the
# whole LLaMA-7B-shaped model (the goal), the whitened-SVD solver table, then the slower
# methods and both sensitivity tables on one full-width layer (scaled to 32 in the md),
# and the Gram sums of float16 activations (bench_gram_sums.py) last.
#
#   bash benchmarks/run_7b_device.sh OUT_DIR      # python3 with torch, transformers, tqdm
#
# Every phase has its own time limit and writes into OUT_DIR as it goes, so a phase that
# runs out of time keeps what the earlier ones measured; run.log holds all the output.
# EXTRA (arguments appended to every bench_e2e_7b call, argparse keeps the last) and
# DRIVER_ARGS let it be tried on a CPU first:
#   EXTRA="--device cpu --shrink 32 --nsamples 4 --seqlen 128" \
#   DRIVER_ARGS="--device cpu --shrink 16" GRAM_ARGS="--device cpu --widths 256,688 --tokens 4096" \
#   bash benchmarks/run_7b_device.sh /tmp/check
set -u
OUT=${1:?usage: run_7b_device.sh OUT_DIR}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TQDM_MININTERVAL=15  # a progress line every 15 s, not a log of carriage returns
PY=${PY:-python3}
B=benchmarks/bench_e2e_7b.py
LOG="$OUT/run.log"
stamp() { echo "=== $(date +%T) $*" | tee -a "$LOG"; }

# the sections are named after the card that ran them (an H100 run must not overwrite the
# H200's numbers in e2e-7b.json): "NVIDIA H100 80GB HBM3" -> "H100", no GPU -> "cpu"
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | sed 's/^NVIDIA //; s/ .*//')
GPU=${GPU:-cpu}

stamp "versions ($GPU)"
{ nvidia-smi -L; $PY -c "import torch, transformers, tqdm; print(torch.__version__,
  transformers.__version__, tqdm.__version__, torch.cuda.get_device_name())"; } >>"$LOG" 2>&1

stamp "smoke (widths / 32, 2 layers)"
if ! timeout "${SMOKE_S:-60}" $PY $B --shrink 32 --layers 2 --nsamples 8 --seqlen 256 \
    --table-ratios 0.4 --section smoke --results /tmp/smoke ${EXTRA:-} >>"$LOG" 2>&1; then
  stamp "smoke FAILED"
  tail -60 "$LOG"
  exit 3
fi

stamp "SVD-LLM end to end, LLaMA-7B shapes"
timeout "${GOAL_S:-350}" $PY $B --methods svd-llm --tables \
  --section "$GPU, LLaMA-7B shapes" --results "$OUT" ${EXTRA:-} >>"$LOG" 2>&1

stamp "solver table"
timeout "${DRIVERS_S:-55}" $PY benchmarks/bench_svd_drivers.py --results "$OUT" ${DRIVER_ARGS:-} >>"$LOG" 2>&1

stamp "slower methods and tables on 1 full-width layer"
timeout "${REST_S:-110}" $PY $B --layers 1 --methods duo-svd-columns adasvd --section "$GPU, LLaMA-7B widths, 1 layer" \
  --results "$OUT" ${EXTRA:-} >>"$LOG" 2>&1

stamp "Gram sums of float16 activations at 7B widths: float64 against exact float32 chunks"
timeout "${GRAM_S:-25}" $PY benchmarks/bench_gram_sums.py ${GRAM_ARGS:---device cuda --tokens 16384} \
  --results "$OUT" >>"$LOG" 2>&1
stamp "done (rc $?)"
grep -v '%|' "$LOG" | grep -E '^(===|\{|calibration|model built)|Error|error' | tail -60
cat "$OUT/svd-drivers.md" "$OUT/e2e-7b.md" "$OUT/gram-sums.md" 2>/dev/null
