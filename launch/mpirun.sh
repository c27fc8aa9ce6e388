#!/usr/bin/env bash
# fer-dist-train data parallel under Open MPI's mpirun, on one machine or several, resumable.
#
#   launch/mpirun.sh [--max-restarts N] [--hostfile FILE] NP CONFIG DATA RUN_DIR [trainer args...]
#
#   launch/mpirun.sh 2 configs/demo_cpu.yaml data/synth runs/dp2 --set train.batch_size=32
#   launch/mpirun.sh --max-restarts 3 4 configs/demo_cpu.yaml data/synth runs/dp4
#   launch/mpirun.sh --hostfile hosts.txt 8 configs/demo_cpu.yaml data/synth runs/two-nodes
#   FER_DEVICE=cuda launch/mpirun.sh 8 configs/fer2013_resnet9.yaml data/fer2013 runs/r9 \
#       --set train.batch_size=16            # one GPU per rank (cuda:<local rank>), NCCL
#
# Always passes --resume auto: run the same command again after a preemption (exit 75) or a
# crash and it continues from the newest checkpoint. --max-restarts N (default 0) does that
# itself after a failure, at most N times, like torchrun: any exit code but 0, 2 (usage or
# config error: would fail again), 75 (preempted: the scheduler decides) and 130 (Ctrl-C) starts
# the job again; each restart is logged to stderr and RUN_DIR/logs/launcher.log with the code.
# --hostfile FILE (Open MPI's format, one `HOST slots=K` a line) runs the ranks on those hosts,
# filled in order; every host must see the same paths (binary, DATA, RUN_DIR) and be reachable
# by ssh without a password (or MPIRUN_ARGS="--mca plm_rsh_agent AGENT"). A host that dies:
# the ranks elsewhere stop after dist.comm_timeout_s (exit 5), and mpirun is ended if it still
# waits for the dead host FER_TEARDOWN_S (default 15) seconds after its last rank here exited;
# the launcher then exits 5 (restarted by --max-restarts, like any failure).
# Each rank gets OMP_NUM_THREADS = cores / ranks per host (at least 1) unless OMP_NUM_THREADS
# is set.
# Environment:
#   FER_BIN      fer-dist-train (default: build/bin/fer-dist-train of this repository)
#   FER_DEVICE   cpu | cuda | auto (default: auto)
#   MPIRUN       the launcher (default: mpirun); MPIRUN_ARGS extra launcher flags, e.g.
#                "--mca btl_tcp_if_include 10.0.0.0/24" for the network between hosts
# As root (containers) Open MPI also needs OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1.
set -euo pipefail

readonly kExitUsage=2        # fer-dist-train: bad flags or config (src/common/errors.h)
readonly kExitPreempted=75   # checkpoint written; requeue (the scheduler's call, not ours)
readonly kExitInterrupted=130  # Ctrl-C: the user wants it stopped
readonly kExitComm=5  # a collective failed or timed out; here: a host stopped answering
readonly kEndedByWatchdog=3  # watch_teardown's status when it ended mpirun

usage() {
  sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit "$kExitUsage"
}

max_restarts=0
hostfile=""
while (($# > 0)); do
  case $1 in
    --max-restarts) max_restarts=${2:-}; shift 2 || shift $# ;;
    --max-restarts=*) max_restarts=${1#*=}; shift ;;
    --hostfile) hostfile=${2:-}; shift 2 || shift $# ;;
    --hostfile=*) hostfile=${1#*=}; shift ;;
    -h | --help) usage ;;
    *) break ;;
  esac
done
if [[ ! "$max_restarts" =~ ^[0-9]+$ ]]; then
  echo "mpirun.sh: --max-restarts needs a count (0, 1, ...), not '$max_restarts'" >&2
  exit "$kExitUsage"
fi
if (($# < 4)); then usage; fi
np=$1 config=$2 data=$3 run_dir=$4
shift 4
if [[ ! "$np" =~ ^[1-9][0-9]*$ ]]; then
  echo "mpirun.sh: NP must be a number of ranks, not '$np'" >&2
  exit "$kExitUsage"
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${FER_BIN:-$root/build/bin/fer-dist-train}
[[ -x "$bin" ]] || { echo "mpirun.sh: $bin not found (build first, or set FER_BIN)" >&2; exit 2; }
cores=$(nproc)
per_host=$np  # ranks on one host
hosts=()
oversubscribe=()
if [[ -n "$hostfile" ]]; then
  if [[ ! -r "$hostfile" || -d "$hostfile" ]]; then
    echo "mpirun.sh: --hostfile $hostfile: no such readable file" >&2
    exit "$kExitUsage"
  fi
  nhosts=$(grep -cv '^[[:space:]]*\(#\|$\)' "$hostfile" || true)
  if ((nhosts < 1)); then
    echo "mpirun.sh: --hostfile $hostfile names no host (one 'HOST slots=K' a line)" >&2
    exit "$kExitUsage"
  fi
  per_host=$(((np + nhosts - 1) / nhosts))
  # Daemons on other hosts: a host that dies without closing its connections (power, network)
  # is noticed after 10 + 5 x 4 s of TCP keepalive instead of Open MPI's default 300 + 9 x 20 s.
  hosts=(--hostfile "$hostfile" --mca oob_tcp_keepalive_time 10 --mca oob_tcp_keepalive_intvl 5
         --mca oob_tcp_keepalive_probes 4)
else
  ((np > cores)) && oversubscribe=(--oversubscribe)
fi
threads=${OMP_NUM_THREADS:-$((cores / per_host > 0 ? cores / per_host : 1))}

say() {  # stderr, and the run folder's launcher log once the run folder exists
  local line
  line="mpirun.sh [$(date '+%F %T')] $*"
  echo "$line" >&2
  if [[ -d "$run_dir" ]] && mkdir -p "$run_dir/logs" 2>/dev/null; then
    echo "$line" >>"$run_dir/logs/launcher.log" 2>/dev/null || true
  fi
}

# Ctrl-C or a TERM to this script while a try runs: the try ends as it would without us (mpirun
# gets the terminal's SIGINT itself); we only make sure no restart follows.
stopping=0
trap 'stopping=1' INT TERM

# With hosts: Open MPI ends a failed job by asking every host's daemon to kill its ranks and
# waits for the answers. A host that died without closing its connections (power, network) never
# answers, and mpirun waits for TCP to give up (many minutes) although every rank here has
# exited (the survivors of a collective stop after dist.comm_timeout_s). This watchdog, started
# next to mpirun, ends mpirun when it has had no rank on this host for FER_TEARDOWN_S seconds
# (default 15) after it had some.
teardown_s=${FER_TEARDOWN_S:-15}
if [[ ! "$teardown_s" =~ ^[0-9]+$ ]]; then
  echo "mpirun.sh: FER_TEARDOWN_S must be a number of seconds, not '$teardown_s'" >&2
  exit "$kExitUsage"
fi
watch_teardown() {
  local me=$BASHPID pid="" child ranks seen=0 idle_since=0
  for _ in $(seq 100); do  # mpirun: our parent's other child
    pid=$(pgrep -P $$ | grep -vx "$me" | head -n 1 || true)
    [[ -n "$pid" ]] && break
    sleep 0.1
  done
  [[ -n "$pid" ]] || return 0
  while kill -0 "$pid" 2>/dev/null; do
    ranks=0
    for child in $(pgrep -P "$pid" || true); do  # ranks carry OMPI_COMM_WORLD_RANK
      { tr '\0' '\n' <"/proc/$child/environ"; } 2>/dev/null | grep -q '^OMPI_COMM_WORLD_RANK=' &&
        ranks=$((ranks + 1))
    done
    if ((ranks > 0)); then
      seen=1 idle_since=0
    elif ((seen)); then
      ((idle_since > 0)) || idle_since=$SECONDS
      if ((SECONDS - idle_since >= teardown_s)); then
        say "mpirun is still waiting $teardown_s s after the last rank on this host exited: a" \
            "host that stopped answering holds Open MPI's teardown; ending mpirun"
        # SIGKILL: on SIGTERM mpirun retries the same teardown (and may crash doing so). Its
        # children first (the ssh sessions, one of them to the dead host).
        pkill -KILL -P "$pid" 2>/dev/null
        kill -KILL "$pid" 2>/dev/null
        return "$kEndedByWatchdog"
      fi
    fi
    sleep 1
  done
}

try=0
while true; do
  watchdog=0
  if [[ -n "$hostfile" ]]; then
    watch_teardown &
    watchdog=$!
  fi
  set +e
  # shellcheck disable=SC2086  # MPIRUN_ARGS is a list of flags
  "${MPIRUN:-mpirun}" -np "$np" "${hosts[@]}" "${oversubscribe[@]}" --bind-to none -x OMP_NUM_THREADS="$threads" \
    ${MPIRUN_ARGS:-} "$bin" --config "$config" --data "$data" --out "$run_dir" --resume auto \
    --threads "$threads" --device "${FER_DEVICE:-auto}" "$@"
  rc=$?
  if ((watchdog > 0)); then
    kill "$watchdog" 2>/dev/null
    wait "$watchdog" 2>/dev/null
    if (($? == kEndedByWatchdog)); then
      say "mpirun ended (exit $rc) after a host stopped answering: the job failed (exit $kExitComm)"
      rc=$kExitComm
    fi
  fi
  set -e
  case $rc in
    0) ((try > 0)) && say "run completed after $try restart(s)"
       exit 0 ;;
    "$kExitUsage") exit "$rc" ;;  # fer-dist-train printed why; a restart would fail the same way
    "$kExitPreempted")
      echo "mpirun.sh: preempted; the checkpoint is in $run_dir/checkpoints: run the same command" \
           "again to continue" >&2
      exit "$rc" ;;
    "$kExitInterrupted") exit "$rc" ;;
  esac
  if ((stopping)); then
    say "exit $rc after a signal to the launcher: not restarting"
    exit "$rc"
  fi
  if ((try >= max_restarts)); then
    if ((max_restarts > 0)); then
      say "exit $rc, and all $max_restarts restart(s) are used: giving up; the newest checkpoint" \
          "is in $run_dir/checkpoints (run the same command to continue)"
    fi
    exit "$rc"
  fi
  try=$((try + 1))
  say "exit $rc (a rank failed, see $run_dir/logs/rank-*.log): restart $try of $max_restarts" \
      "from the newest checkpoint (--resume auto)"
done
