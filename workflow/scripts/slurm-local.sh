#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, to run the workflow's SLURM profile
# for real (tests/test_cluster.py; docs/workflow.md "SLURM").
#
#   eval "$(bash workflow/scripts/slurm-local.sh start)"   # prints: export SLURM_CONF=...
#   snakemake --workflow-profile workflow/profiles/slurm --slurm-no-account ...
#   bash workflow/scripts/slurm-local.sh stop
#   bash workflow/scripts/slurm-local.sh status
#
# It writes a minimal slurm.conf for this host (all CPUs, 90 % of the memory, one
# partition `local`), starts munged, slurmctld and slurmd, and waits until `sinfo` shows
# the node idle. Everything lives in $SVDZOO_SLURM_DIR (default /tmp/svdzoo-slurm-$UID).
# Clients find the cluster through /etc/slurm/slurm.conf, a link to that file (the
# Snakemake jobstep plugin drops SLURM_CONF from the environment of the `srun` it runs
# inside each job, so SLURM_CONF alone is not enough); a slurm.conf that is not ours is
# never touched: then `start` refuses. `start` also prints `export SLURM_CONF=...`.
# `stop` kills what `start` started, by the pids it recorded, and removes the link.
# Both are idempotent.
# No slurmdbd: finished jobs stay visible to `squeue` for MinJobAge (1 h), which is what
# the Snakemake plugin then asks (`--slurm-status-command squeue`, set by the profile).
# Needs root (the daemons and munge's key), and Debian's packages:
#   apt-get install -y slurm-wlm munge
set -euo pipefail

DIR="${SVDZOO_SLURM_DIR:-/tmp/svdzoo-slurm-$(id -u)}"
CONF="$DIR/slurm.conf"
HOST="$(hostname -s)"
SYSTEM_CONF=/etc/slurm/slurm.conf

say() { echo "[slurm-local] $*" >&2; }
die() { say "error: $*"; exit 1; }

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

need() {
  local missing=()
  for cmd in munged slurmctld slurmd sinfo sbatch squeue scancel; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
  done
  [ ${#missing[@]} -eq 0 ] || die "missing ${missing[*]}: install Debian's packages with
  apt-get install -y slurm-wlm munge"
  [ "$(id -u)" = 0 ] || die "the local cluster runs its daemons as root: run this as root"
}

write_conf() {
  local cpus mem
  cpus="$(nproc)"
  mem="$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  cat > "$CONF.tmp" <<EOF
# written by workflow/scripts/slurm-local.sh: one node, this host
ClusterName=svdzoo-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=${SVDZOO_SLURM_PORT:-6817}
SlurmdPort=$(( ${SVDZOO_SLURM_PORT:-6817} + 1 ))
ProctrackType=proctrack/linuxproc
MpiDefault=none
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
MinJobAge=3600
ReturnToService=2
SlurmdTimeout=60
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
}

start_munge() {
  if [ -S /run/munge/munge.socket.2 ] && munge -n </dev/null >/dev/null 2>&1; then
    return  # a munged is already serving (ours or the system's)
  fi
  [ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; }
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  runuser -u munge -- munged
  for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n </dev/null >/dev/null 2>&1 || die "munged did not start"
  # munged forks: its own pid file names the daemon (not the process runuser started)
  cat /run/munge/munged.pid > "$DIR/munged.pid"
}

link_conf() {
  if [ -L "$SYSTEM_CONF" ] && [ "$(readlink "$SYSTEM_CONF")" = "$CONF" ]; then
    return
  fi
  [ -e "$SYSTEM_CONF" ] && die "$SYSTEM_CONF exists and is not this local cluster's:
  this machine has a SLURM configuration of its own; use that cluster instead"
  mkdir -p "$(dirname "$SYSTEM_CONF")"
  ln -s "$CONF" "$SYSTEM_CONF"
}

start() {
  need
  export SLURM_CONF="$CONF"
  [ -e "$SYSTEM_CONF" ] && ! { [ -L "$SYSTEM_CONF" ] && [ "$(readlink "$SYSTEM_CONF")" = "$CONF" ]; } \
    && die "$SYSTEM_CONF exists and is not this local cluster's: this machine has a SLURM
  configuration of its own; use that cluster instead"
  if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid"; then
    say "already running ($CONF)"
  else
    mkdir -p "$DIR"
    write_conf
    link_conf
    start_munge
    alive "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
    alive "$DIR/slurmd.pid" || slurmd -f "$CONF"
  fi
  local state=""
  for _ in $(seq 120); do
    state="$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)"
    [ "$state" = "idle" ] || [ "$state" = "mix" ] || [ "$state" = "alloc" ] && break
    sleep 0.5
  done
  case "$state" in
    idle|mix|alloc) say "node $HOST is $state; partition 'local'" ;;
    *) die "the node did not come up (sinfo: '${state:-nothing}'); see $DIR/log/" ;;
  esac
  echo "export SLURM_CONF=$CONF"
}

stop() {
  local pidfile
  local pidfile pid
  for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munged.pid"; do
    if alive "$pidfile"; then
      pid="$(cat "$pidfile")"
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
  done
  if [ -L "$SYSTEM_CONF" ] && [ "$(readlink "$SYSTEM_CONF")" = "$CONF" ]; then
    rm -f "$SYSTEM_CONF"
  fi
  say "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    export SLURM_CONF="$CONF"
    alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" || { say "not running"; exit 1; }
    sinfo ;;
  *) echo "usage: bash workflow/scripts/slurm-local.sh {start|stop|status}" >&2; exit 2 ;;
esac
