#!/usr/bin/env bash
# A throw-away two-node Slurm on the namespaces of tests/cluster/cluster.sh.
#
#   cluster_slurm.sh check                 exit 0 when Slurm and munge are installed, else 77
#   cluster_slurm.sh start DIR NODES_DIR   NODES_DIR: a cluster.sh cluster that is up. Writes
#                                          DIR/slurm.conf (node1 and node2, 2 CPUs each), starts
#                                          munged (here: its socket is a file both nodes see),
#                                          slurmctld and one slurmd in node1, one slurmd in node2,
#                                          waits (bounded) until both nodes are idle.
#   cluster_slurm.sh stop DIR NODES_DIR    cancels what is left, stops the daemons (pid files).
#   cluster_slurm.sh run DIR NODES_DIR CMD...  a Slurm command (sbatch, scontrol ...) on node1,
#                                          with SLURM_CONF set; the machine itself cannot reach
#                                          slurmctld, whose address is inside node1.
# Needs root and Debian's slurm-wlm + munge, like tests/slurm/local_slurm.sh (whose settings it
# shares: no cgroups, short socket paths, cred_expire 10 s so a requeued job restarts soon).
set -euo pipefail

readonly kSkip=77
die() { echo "cluster_slurm: $*" >&2; exit 1; }

stop_pidfile() {  # stop_pidfile FILE: TERM, wait up to 10 s, then KILL
  local file=$1 pid
  [[ -s "$file" ]] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$file"
}

check() {
  [[ $(id -u) -eq 0 ]] || { echo "cluster_slurm: needs root (slurmd runs jobs as their user)" >&2; exit $kSkip; }
  local b
  for b in munged mungekey slurmctld slurmd sbatch sinfo; do
    command -v "$b" >/dev/null ||
      { echo "cluster_slurm: $b not found: run launch/install-deps.sh (slurm-wlm, munge)" >&2; exit $kSkip; }
  done
}

cmd=${1:-}
case "$cmd" in
  check) check; exit 0 ;;
  start | stop | run) (($# >= 3)) || die "usage: cluster_slurm.sh $cmd DIR NODES_DIR" ;;
  *) die "usage: cluster_slurm.sh check | start DIR NODES_DIR | stop DIR NODES_DIR | run DIR NODES_DIR CMD..." ;;
esac
mkdir -p "$2"
dir=$(cd "$2" && pwd)
nodes=$3
shift 3
cluster_sh="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/cluster.sh"
on_node() { local node=$1; shift; bash "$cluster_sh" exec "$nodes" "$node" "$@"; }
slurm() { on_node node1 env SLURM_CONF="$dir/slurm.conf" "$@"; }

case "$cmd" in
start)
  check
  mkdir -p "$dir"/{munge,ctld,log,run}
  chmod 700 "$dir/munge"
  # Unix socket paths stay under 108 bytes: munged's socket and the slurmd spools go to a short
  # folder of its own, recorded in run/sockets and removed by stop.
  sockets=$(mktemp -d /run/fer-cslurm.XXXXXX)  # not /tmp: each node has its own
  chmod 755 "$sockets"
  echo "$sockets" > "$dir/run/sockets"
  mkdir -p "$sockets/node1" "$sockets/node2"
  mungekey --create --keyfile="$dir/munge/munge.key" --force >/dev/null
  chmod 600 "$dir/munge/munge.key"
  munged --force --key-file="$dir/munge/munge.key" --socket="$sockets/munge.socket" \
         --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
         --seed-file="$dir/munge/munged.seed" \
    || die "munged did not start: $(tail -n 5 "$dir/log/munged.log" 2>/dev/null)"
  mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 / 4)}' /proc/meminfo)
  # The ports are those of the nodes' own network namespaces: no clash with anything else.
  cat > "$dir/slurm.conf" <<CONF
# Written by tests/cluster/cluster_slurm.sh: a two-node test cluster (namespaces node1 and
# node2 of $nodes), state under $dir, sockets under $sockets.
ClusterName=fercluster
SlurmctldHost=node1(10.99.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sockets/munge.socket,cred_expire=10
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$sockets/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
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
NodeName=node1 NodeAddr=10.99.0.1 CPUs=2 RealMemory=$mem_mb State=UNKNOWN
NodeName=node2 NodeAddr=10.99.0.2 CPUs=2 RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
  slurm slurmctld -c -f "$dir/slurm.conf" ||
    die "slurmctld did not start: $(tail -n 20 "$dir/log/slurmctld.log" 2>/dev/null)"
  for node in node1 node2; do
    on_node "$node" slurmd -f "$dir/slurm.conf" -N "$node" ||
      die "slurmd on $node did not start: $(tail -n 20 "$dir/log/slurmd-$node.log" 2>/dev/null)"
  done
  for _ in $(seq 60); do
    states=$(slurm sinfo -h -N -o '%N=%T' 2>/dev/null | sort | tr '\n' ' ' || true)
    if [[ "$states" == "node1=idle node2=idle " ]]; then
      echo "export SLURM_CONF=$dir/slurm.conf"
      exit 0
    fi
    sleep 0.5
  done
  echo "cluster_slurm: the nodes never became idle (${states:-no answer}); logs:" >&2
  tail -n 30 "$dir/log/slurmctld.log" "$dir/log/slurmd-node1.log" "$dir/log/slurmd-node2.log" >&2 || true
  exit 1
  ;;
stop)
  if [[ -s "$dir/run/slurmctld.pid" && -f "$dir/slurm.conf" ]]; then
    # Jobs left over (a failed test): cancel them and give their steps 15 s to go.
    timeout 10 bash -c "$(declare -f on_node slurm); slurm scancel --user=root" 2>/dev/null || true
    for _ in $(seq 30); do
      [[ -z "$(timeout 5 bash -c "$(declare -f on_node slurm); slurm squeue -h -o %i" 2>/dev/null)" ]] && break
      sleep 0.5
    done
  fi
  stop_pidfile "$dir/run/slurmd-node1.pid"
  stop_pidfile "$dir/run/slurmd-node2.pid"
  stop_pidfile "$dir/run/slurmctld.pid"
  stop_pidfile "$dir/run/munged.pid"
  if [[ -s "$dir/run/sockets" ]]; then
    sockets=$(cat "$dir/run/sockets")
    [[ "$sockets" == /run/fer-cslurm.* ]] && rm -rf "$sockets"
    rm -f "$dir/run/sockets"
  fi
  ;;
run) slurm "$@" ;;
esac
