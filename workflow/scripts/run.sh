#!/usr/bin/env bash
# Set up (or reuse) the virtual environment, then run the default reproduction or the tests.
#   bash workflow/scripts/run.sh reproduce [snakemake args...]
#   bash workflow/scripts/run.sh test [pytest args...]
#   bash workflow/scripts/run.sh lock      # rewrite the pins from a fresh, unpinned environment
# Environment: PYTHON (default python3), SVDZOO_VENV (default .venv),
# SVDZOO_TORCH (default "torch==2.13.0"; set e.g. "torch" after configuring a CUDA index for GPUs),
# SVDZOO_CONSTRAINTS (default workflow/envs/constraints.txt, the tested versions; empty: unpinned;
# a relative path is from the repository root, as SVDZOO_VENV's is).
set -euo pipefail
cd "$(dirname "$0")/../.."

mode="${1:-}"
[ $# -gt 0 ] && shift
case "$mode" in
  reproduce|test|setup|lock) ;;
  *) echo "usage: bash workflow/scripts/run.sh {reproduce|test|setup|lock} [args...]" >&2; exit 2 ;;
esac

PYTHON="${PYTHON:-python3}"
VENV="${SVDZOO_VENV:-.venv}"
TORCH_SPEC="${SVDZOO_TORCH:-torch==2.13.0}"
LOCK=workflow/envs/constraints.txt
CONSTRAINTS="${SVDZOO_CONSTRAINTS-$LOCK}"

if [ "$mode" = lock ]; then
  # the newest releases that pyproject.toml allows, in a throwaway environment, frozen
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "[svdzoo] resolving the newest allowed releases in a fresh environment ($tmp)" >&2
  "$PYTHON" -m venv "$tmp/venv"
  "$tmp/venv/bin/python" -m pip install -q --upgrade pip
  "$tmp/venv/bin/python" -m pip install -q "$TORCH_SPEC"
  "$tmp/venv/bin/python" -m pip install -q -e ".[dev,slurm]"
  "$tmp/venv/bin/python" workflow/scripts/write_lock.py "$LOCK" workflow/envs/svdzoo.yaml
  exit 0
fi

pin=()
if [ -n "$CONSTRAINTS" ]; then
  if [ ! -f "$CONSTRAINTS" ]; then
    echo "[svdzoo] SVDZOO_CONSTRAINTS=$CONSTRAINTS does not exist; set it to a pip constraints file, or to nothing to install unpinned" >&2
    exit 2
  fi
  pin=(-c "$CONSTRAINTS")
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[svdzoo] creating virtual environment $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

stamp="$VENV/.svdzoo-install"
want="$(cat pyproject.toml ${CONSTRAINTS:+"$CONSTRAINTS"} | sha256sum | cut -d' ' -f1) $TORCH_SPEC ${CONSTRAINTS:-unpinned}"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "[svdzoo] installing dependencies into $VENV" >&2
  "$PY" -m pip install -q --upgrade pip ${pin[@]+"${pin[@]}"}
  # torch first, pinned: every later requirement is then already satisfied by it, so no
  # CUDA build is pulled in behind our back.
  if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install -q "$TORCH_SPEC"
  fi
  "$PY" -m pip install -q ${pin[@]+"${pin[@]}"} -e ".[dev,slurm]"
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
    # tests/test_lock.py then checks that the environment holds the pinned versions
    if [ -n "$CONSTRAINTS" ]; then export SVDZOO_INSTALLED_WITH="$CONSTRAINTS"
    else unset SVDZOO_INSTALLED_WITH; fi
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
