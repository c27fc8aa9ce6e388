#!/usr/bin/env bash
# fer-dist-train data parallel on one machine under Open MPI's mpirun, resumable.
#
#   launch/mpirun.sh [--max-restarts N] NP CONFIG DATA RUN_DIR [fer-dist-train args...]
#
#   launch/mpirun.sh 2 configs/demo_cpu.yaml data/synth runs/dp2 --set train.batch_size=32
#   launch/mpirun.sh --max-restarts 3 4 configs/demo_cpu.yaml data/synth runs/dp4
#   FER_DEVICE=cuda launch/mpirun.sh 8 configs/fer2013_resnet9.yaml data/fer2013 runs/r9 \
#       --set train.batch_size=16            # one GPU per rank (cuda:<local rank>), NCCL
#
# Always passes --resume auto: run the same command again after a preemption (exit 75) or a
# crash and it continues from the newest checkpoint. --max-restarts N (default 0) does that
# itself after a failure, at most N times, like torchrun: any exit code but 0, 2 (usage or
# config error: would fail again), 75 (preempted: the scheduler decides) and 130 (Ctrl-C) starts
# the job again; each restart is logged to stderr and RUN_DIR/logs/launcher.log with the code.
# Each rank gets OMP_NUM_THREADS = cores / NP (at least 1) unless OMP_NUM_THREADS is set.
# Environment:
#   FER_BIN      fer-dist-train (default: build/bin/fer-dist-train of this repository)
#   FER_DEVICE   cpu | cuda | auto (default: auto)
#   MPIRUN       the launcher (default: mpirun); MPIRUN_ARGS extra launcher flags
# As root (containers) Open MPI also needs OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1.
set -euo pipefail

readonly kExitUsage=2        # fer-dist-train: bad flags or config (src/common/errors.h)
readonly kExitPreempted=75   # checkpoint written; requeue (the scheduler's call, not ours)
readonly kExitInterrupted=130  # Ctrl-C: the user wants it stopped

usage() {
  sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit "$kExitUsage"
}

max_restarts=0
case "${1:-}" in
  --max-restarts) max_restarts=${2:-}; shift 2 || shift $# ;;
  --max-restarts=*) max_restarts=${1#*=}; shift ;;
  -h | --help) usage ;;
esac
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
threads=${OMP_NUM_THREADS:-$((cores / np > 0 ? cores / np : 1))}
oversubscribe=()
((np > cores)) && oversubscribe=(--oversubscribe)

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

try=0
while true; do
  set +e
  # shellcheck disable=SC2086  # MPIRUN_ARGS is a list of flags
  "${MPIRUN:-mpirun}" -np "$np" "${oversubscribe[@]}" --bind-to none -x OMP_NUM_THREADS="$threads" \
    ${MPIRUN_ARGS:-} "$bin" --config "$config" --data "$data" --out "$run_dir" --resume auto \
    --threads "$threads" --device "${FER_DEVICE:-auto}" "$@"
  rc=$?
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
