#!/usr/bin/env bash
# Set up (or reuse) the virtual environment, then run the default reproduction or the tests.
#   bash workflow/scripts/run.sh reproduce [snakemake args...]
#   bash workflow/scripts/run.sh test [pytest args...]
# Environment: PYTHON (default python3), SVDZOO_VENV (default .venv),
# SVDZOO_TORCH (default "torch==2.13.0"; set e.g. "torch" after configuring a CUDA index for GPUs).
set -euo pipefail
cd "$(dirname "$0")/../.."

mode="${1:-}"
[ $# -gt 0 ] && shift
case "$mode" in
  reproduce|test|setup) ;;
  *) echo "usage: bash workflow/scripts/run.sh {reproduce|test|setup} [args...]" >&2; exit 2 ;;
esac

PYTHON="${PYTHON:-python3}"
VENV="${SVDZOO_VENV:-.venv}"
TORCH_SPEC="${SVDZOO_TORCH:-torch==2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[svdzoo] creating virtual environment $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

stamp="$VENV/.svdzoo-install"
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1) $TORCH_SPEC"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "[svdzoo] installing dependencies into $VENV" >&2
  "$PY" -m pip install -q --upgrade pip
  # torch first, pinned: every later requirement is then already satisfied by it, so no
  # CUDA build is pulled in behind our back.
  if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install -q "$TORCH_SPEC"
  fi
  "$PY" -m pip install -q -e ".[dev,slurm]"
  echo "$want" > "$stamp"
fi

export PATH="$PWD/$VENV/bin:$PATH"
export TOKENIZERS_PARALLELISM=false
case "$mode" in
  setup) echo "[svdzoo] environment ready: source $VENV/bin/activate" >&2 ;;
  reproduce)
    export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
    exec snakemake --cores all "$@" ;;
  test)
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
    # the Snakemake report is checked in a real browser: Debian's Chromium + ChromeDriver
    if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
      if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "[svdzoo] installing chromium and chromium-driver (apt) for the report test" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
          || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
               apt-get install -y -q chromium chromium-driver >/dev/null; } || true
      fi
    fi
    if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
      export SVDZOO_REQUIRE_BROWSER=1
    else
      echo "[svdzoo] no chromium/chromedriver: the browser check of the report is skipped" >&2
    fi
    # the SLURM profile is run on a local single-node cluster (tests/test_cluster.py):
    # Debian's slurm-wlm and munge (measured: ~11 s to install here)
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
      if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "[svdzoo] installing slurm-wlm and munge (apt) for the cluster test" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null \
          || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
               apt-get install -y -q slurm-wlm munge >/dev/null; } || true
      fi
    fi
    if command -v slurmctld >/dev/null && command -v munged >/dev/null && [ "$(id -u)" = 0 ]; then
      export SVDZOO_REQUIRE_SLURM=1
    else
      echo "[svdzoo] no slurm-wlm/munge or not root: the SLURM cluster test is skipped" >&2
    fi
    # one pytest-xdist worker per CPU (at most 4), one test module per worker at a time
    # (--no-loadscope-reorder: xdist >= 3.8; conftest puts the long modules first):
    # module-scoped fixtures and the order of a module's tests hold as in a serial run
    exec "$PY" -m pytest -q --numprocesses logical --maxprocesses 4 --dist loadfile \
      --no-loadscope-reorder "$@" ;;
esac
