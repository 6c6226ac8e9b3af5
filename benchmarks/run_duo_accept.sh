#!/usr/bin/env bash
# Duo-SVD's column-split acceptance threshold on SmolLM2: `duo-svd` (per-ratio KL tables)
# with `--option accept=A` for each A and ratio, compressed and scored (perplexity only) in a
# project that has run workflow/configs/ablations.yaml. `calibrate-compress --params` takes
# that run's model, Gram cache and per-ratio tables (and stops if they are not the params');
# the perplexity flags are the params' own. Default accept is the official 1 %: a split is
# kept when it cuts the whitened layer error by more than that.
#
#   bash benchmarks/run_duo_accept.sh PROJECT OUTDIR "0.05 0.10 0.20 1.0" "0.80"
#
# A model already scored in OUTDIR is reused (rerun after a stop). Two jobs at a time, one
# thread each. Writes OUTDIR/duo-accept.{csv,md,png} (bench_duo_accept.py) and prints the table.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); PROJECT=$(cd "$1" && pwd); OUT=$(mkdir -p "$2" && cd "$2" && pwd)
ACCEPTS=${3:-"0.01 0.05 0.10 0.20 1.0"}; RATIOS=${4:-"0.40 0.60 0.80"}
cd "$PROJECT"
if [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi
command -v svdzoo > /dev/null || { echo "svdzoo not found: set up $PROJECT (run.sh setup) or activate its environment" >&2; exit 2; }
export PARAMS=workflow/configs/ablations.yaml OUT OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
EVAL_FLAGS=$(python -c 'import os; from svdzoo.config import cli_flags, load_params
ev = load_params(os.environ["PARAMS"])["evaluation"]
print("\n".join(cli_flags({k: ev[k] for k in ("corpora", "seqlen", "max-windows")})))')
export EVAL_FLAGS  # one flag or value per line (an array does not cross into xargs' shells)
one() {  # accept ratio
  local d=$OUT/duo-svd-a$1-r$2
  [ -f "$d.ppl.json" ] && return
  svdzoo calibrate-compress --params "$PARAMS" --model-name smollm2-135m --method duo-svd \
    --ratio "$2" --option accept="$1" --out "$d" > "$d.compress.log" 2>&1
  local ev; mapfile -t ev <<< "$EVAL_FLAGS"
  svdzoo evaluate --model "$d" --model-name smollm2-135m --method duo-svd --ratio "$2" \
    "${ev[@]}" --ppl-out "$d.ppl.json" > "$d.eval.log" 2>&1
}
export -f one
for r in $RATIOS; do for a in $ACCEPTS; do echo "$a $r"; done; done |
  xargs -n 2 -P 2 bash -c 'one "$@"' _ || { echo "a job failed: see $OUT/*.log" >&2; exit 1; }
python "$HERE/bench_duo_accept.py" --dir "$OUT" --out "$OUT/duo-accept"
