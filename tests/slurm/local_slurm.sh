#!/usr/bin/env bash
# A throw-away one-node Slurm cluster on this machine, for the tests in tests/slurm.
#   local_slurm.sh start DIR   writes DIR/slurm.conf (one node: this host, its CPUs), starts
#                              munged, slurmctld and slurmd with pid files, logs and state under
#                              DIR, waits (bounded) until the node is idle; prints
#                              `export SLURM_CONF=DIR/slurm.conf` on success.
#   local_slurm.sh stop DIR    cancels what is left, stops the three daemons by their pid files.
# Needs root (slurmd launches jobs as the submitting user) and Debian's slurm-wlm + munge
# (launch/install-deps.sh). No cgroups: proctrack/linuxproc and task/none work in containers and
# sandboxes. Ports are picked free at start so that two clusters (two test runs) do not clash.
set -euo pipefail

die() { echo "local_slurm: $*" >&2; exit 1; }

stop_pidfile() {  # stop_pidfile FILE NAME: TERM, wait up to 10 s, then KILL
  local file=$1 name=$2 pid
  [[ -s "$file" ]] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "local_slurm: $name (pid $pid) ignored SIGTERM, killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$file"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cmd=${1:-}
dir=${2:-}
[[ -n "$cmd" && -n "$dir" ]] || die "usage: local_slurm.sh start|stop DIR"

case "$cmd" in
start)
  [[ $(id -u) -eq 0 ]] || die "needs root (slurmd runs jobs as their user)"
  for b in munged mungekey slurmctld slurmd sinfo; do
    command -v "$b" >/dev/null || die "$b not found: run launch/install-deps.sh (slurm-wlm, munge)"
  done
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  mkdir -p "$dir"/{munge,ctld,log,run}
  chmod 700 "$dir/munge"
  # Unix socket paths must stay under 108 bytes: munged's socket and slurmd's spool (step
  # sockets) go to a short folder of their own, recorded in run/sockets and removed by stop.
  sockets=$(mktemp -d /tmp/fer-slurm.XXXXXX)
  chmod 755 "$sockets"
  echo "$sockets" > "$dir/run/sockets"
  mkdir -p "$sockets/slurmd"
  host=$(hostname -s)
  cpus=$(nproc)
  mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)

  mungekey --create --keyfile="$dir/munge/munge.key" --force >/dev/null
  chmod 600 "$dir/munge/munge.key"
  munged --force --key-file="$dir/munge/munge.key" --socket="$sockets/munge.socket" \
         --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
         --seed-file="$dir/munge/munged.seed" \
    || die "munged did not start: $(tail -n 5 "$dir/log/munged.log" 2>/dev/null)"

  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  while [[ "$slurmd_port" == "$ctld_port" ]]; do slurmd_port=$(free_port); done
  cat > "$dir/slurm.conf" <<CONF
# Written by tests/slurm/local_slurm.sh: a one-node test cluster, everything under $dir
# (sockets under $sockets).
ClusterName=ferlocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also delays the restart of a requeued job (default 120 s).
AuthInfo=socket=$sockets/munge.socket,cred_expire=10
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$sockets/slurmd
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=10
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
PropagateResourceLimits=NONE
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -c -f "$SLURM_CONF" \
    || die "slurmctld did not start: $(tail -n 20 "$dir/log/slurmctld.log" 2>/dev/null)"
  slurmd -f "$SLURM_CONF" \
    || die "slurmd did not start: $(tail -n 20 "$dir/log/slurmd.log" 2>/dev/null)"
  # Bounded wait for the node to be schedulable.
  for _ in $(seq 60); do
    state=$(sinfo -h -N -o '%T' 2>/dev/null | head -n1 || true)
    if [[ "$state" == idle* ]]; then
      echo "export SLURM_CONF=$SLURM_CONF"
      exit 0
    fi
    sleep 0.5
  done
  echo "local_slurm: node never became idle (state '${state:-?}'); logs:" >&2
  tail -n 30 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
  exit 1
  ;;
stop)
  [[ -d "$dir" ]] || exit 0
  dir=$(cd "$dir" && pwd)
  if [[ -s "$dir/run/slurmctld.pid" && -f "$dir/slurm.conf" ]]; then
    # Jobs left over (a failed test): cancel them and give their steps 15 s to go.
    export SLURM_CONF="$dir/slurm.conf"
    timeout 10 scancel --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 30); do
      [[ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ]] && break
      sleep 0.5
    done
  fi
  stop_pidfile "$dir/run/slurmd.pid" slurmd
  stop_pidfile "$dir/run/slurmctld.pid" slurmctld
  stop_pidfile "$dir/run/munged.pid" munged
  if [[ -s "$dir/run/sockets" ]]; then
    sockets=$(cat "$dir/run/sockets")
    [[ "$sockets" == /tmp/fer-slurm.* ]] && rm -rf "$sockets"
    rm -f "$dir/run/sockets"
  fi
  ;;
*) die "unknown command $cmd (start|stop)" ;;
esac
