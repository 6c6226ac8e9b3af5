#!/usr/bin/env bash
# Duo-SVD's column-split acceptance threshold on SmolLM2: `duo-svd` (per-ratio KL tables)
# with `--option accept=A` for each A and ratio, compressed and scored (perplexity only) with
# the workflow's own flags, in a project that has run workflow/configs/ablations.yaml (its
# model, Gram cache and per-ratio tables). Default accept is the official 1 %: a split is
# kept when it cuts the whitened layer error by more than that.
#
#   bash benchmarks/run_duo_accept.sh PROJECT OUTDIR "0.05 0.10 0.20 1.0" "0.80"
#
# A model already in OUTDIR is reused (rerun after a stop). Two jobs at a time, one thread
# each. Writes OUTDIR/duo-accept.csv and prints it.
set -euo pipefail
PROJECT=$(cd "$1" && pwd); OUT=$(mkdir -p "$2" && cd "$2" && pwd)
ACCEPTS=${3:-"0.01 0.05 0.10 0.20 1.0"}; RATIOS=${4:-"0.40 0.60 0.80"}
S=data/stats/smollm2-135m/pydoc-n32-l256-s3
cd "$PROJECT"
if [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi
command -v svdzoo > /dev/null || { echo "svdzoo not found: set up $PROJECT (run.sh setup) or activate its environment" >&2; exit 2; }
for f in "$S/gram" data/models/smollm2-135m; do
  [ -e "$f" ] || { echo "$PROJECT/$f missing: run workflow/configs/ablations.yaml there first" >&2; exit 2; }
done
export SVDZOO_EXECUTION=workflow/configs/ablations.yaml HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
one() {  # accept ratio
  local d=$OUT/duo-svd-a$1-r$2
  if [ ! -f "$d.ppl.json" ]; then
    OMP_NUM_THREADS=1 svdzoo --execution "$SVDZOO_EXECUTION" compress --model data/models/smollm2-135m \
      --stats $S/gram --sensitivity-duo $S/sensitivity-duo-r$2 --method duo-svd --ratio "$2" \
      --option accept="$1" --calibration pydoc-n32-l256-s3 --out "$d" --force > "$d.compress.log" 2>&1
    OMP_NUM_THREADS=1 svdzoo --execution "$SVDZOO_EXECUTION" evaluate --model "$d" --model-name smollm2-135m \
      --method duo-svd --ratio "$2" --corpora pydoc pysource --seqlen 256 --max-windows 8 \
      --ppl-out "$d.ppl.json" > "$d.eval.log" 2>&1
  fi
}
jobs_=()
for r in $RATIOS; do for a in $ACCEPTS; do jobs_+=("$a $r"); done; done
for ((i = 0; i < ${#jobs_[@]}; i += 2)); do
  pids=()
  one ${jobs_[i]} & pids+=($!)
  if ((i + 1 < ${#jobs_[@]})); then one ${jobs_[i + 1]} & pids+=($!); fi
  for p in "${pids[@]}"; do
    wait "$p" || { echo "a job failed: see $OUT/*.log" >&2; exit 1; }
  done
done
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1]); rows = ["accept,ratio,pydoc,pysource,splits,achieved"]
for f in sorted(out.glob("duo-svd-a*-r*.ppl.json")):
    d = out / f.name.removesuffix(".ppl.json")
    p = json.loads(f.read_text())["perplexity"]
    m = json.loads((d / "manifest.json").read_text())
    splits = sum(1 for x in m["modules"].values() if x.get("kept_columns"))
    a, r = d.name.removeprefix("duo-svd-a").split("-r")
    rows.append(f"{a},{r},{p['pydoc']:.4f},{p['pysource']:.4f},{splits},{m['achieved_ratio']:.4f}")
(out / "duo-accept.csv").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PY
