#!/usr/bin/env bash
# The body of launch/slurm/*.sbatch: runs fer-dist-train on every task of the allocation and
# requeues the job when the run was preempted. Not meant to be called by hand.
#
#   fer_job.sh CONFIG DATA RUN_DIR [fer-dist-train args...]
#   (or FER_CONFIG, FER_DATA, FER_RUN_DIR in the environment; arguments win)
#
# Environment (all optional):
#   FER_ROOT       repository root (default: the submit directory)
#   FER_BIN        fer-dist-train binary (default: $FER_ROOT/build/bin/fer-dist-train)
#   FER_DEVICE     --device of fer-dist-train (the .sbatch sets cpu or cuda)
#   FER_LAUNCHER   auto | srun | mpirun (auto: srun --mpi=pmix when Slurm has PMIx, else mpirun)
#   FER_NO_REQUEUE set to 1 to end a preempted job with exit 75 instead of requeueing it
#   FER_MAX_RESTARTS  restarts within the allocation after a failure (default 2, 0 = none)
#   FER_DRY_RUN    set to 1 to print "fer_job: dry run: COMMAND" and exit 0, writing nothing
#                  (tests/docs/check_examples.sh runs COMMAND with --validate-only)
#
# Failure: a rank that exits non-zero ends the whole step at once (srun --kill-on-bad-exit=1;
# mpirun does the same by default), also one that fails before it joins the MPI job, which
# would leave the others waiting in MPI_Init. Any exit code but 0, 2 (usage or config error),
# 75 (preempted) and 130 (interrupted) then starts the step again in the same allocation with
# --resume auto, at most FER_MAX_RESTARTS times, each restart logged with the exit code; the job
# fails with the last code when they are used up.
#
# Preemption: Slurm sends SIGUSR1 (sbatch --signal=B:USR1@T, T seconds before the time limit) or
# SIGTERM (preemption, scancel) to this script; it forwards the signal to the launcher, which
# forwards it to the ranks. `scancel --signal=USR1 JOB` reaches the ranks of an srun step
# directly. Either way the ranks agree on a step, rank 0 writes its checkpoint and every rank
# exits with 75; this script then runs `scontrol requeue`, and the requeued job (same script,
# same arguments) continues with --resume auto. Logs: RUN_DIR/logs/slurm-<job>-try<N>.log.
set -uo pipefail

config=${1:-${FER_CONFIG:-}}
data=${2:-${FER_DATA:-}}
run_dir=${3:-${FER_RUN_DIR:-}}
if (($# >= 3)); then shift 3; else shift $#; fi
if [[ -z "$config" || -z "$data" || -z "$run_dir" ]]; then
  echo "fer_job: usage: sbatch $0 CONFIG DATA RUN_DIR [fer-dist-train args...]" \
       "(or set FER_CONFIG, FER_DATA, FER_RUN_DIR)" >&2
  exit 2
fi

readonly kExitPreempted=75  # fer-dist-train: checkpoint written, requeue me (src/common/errors.h)
readonly kExitUsage=2 kExitInterrupted=130  # a bad config / Ctrl-C: never restarted
root=${FER_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
bin=${FER_BIN:-$root/build/bin/fer-dist-train}
job=${SLURM_JOB_ID:-nojob}
max_restarts=${FER_MAX_RESTARTS:-2}
try=${SLURM_RESTART_COUNT:-0}
[[ "${FER_DRY_RUN:-0}" == 1 ]] || mkdir -p "$run_dir/logs" || exit 4
log="$run_dir/logs/slurm-$job-try$try.log"

say() {  # to the job's output file and to the run folder's log
  echo "fer_job [$(date '+%F %T')] $*" | tee -a "$log"
}

[[ -x "$bin" ]] || { say "fer-dist-train not found at $bin (set FER_BIN or FER_ROOT)"; exit 2; }
[[ "$max_restarts" =~ ^[0-9]+$ ]] ||
  { say "FER_MAX_RESTARTS must be a count (0, 1, ...), not '$max_restarts'"; exit 2; }
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-${OMP_NUM_THREADS:-1}}

launcher=${FER_LAUNCHER:-auto}
if [[ "$launcher" == auto ]]; then
  if command -v srun >/dev/null && [[ -n "${SLURM_JOB_ID:-}" ]] &&
     srun --mpi=list 2>&1 | grep -q pmix; then
    launcher=srun
  else
    launcher=mpirun
  fi
fi
ntasks=${SLURM_NTASKS:-1}
case "$launcher" in
  # One rank per task; srun forwards SIGUSR1/SIGTERM to every task. A task that exits non-zero
  # gets the others SIGTERMed and, if still there, SIGKILLed after Slurm's KillWait (30 s by
  # default): a rank blocked in a collective with the dead one treats SIGTERM as preemption and
  # cannot act on it, one that already finished the stop protocol still exits 75.
  srun) cmd=(srun --mpi=pmix --kill-on-bad-exit=1 --cpus-per-task="$OMP_NUM_THREADS") ;;
  # Open MPI reads the Slurm allocation itself (hosts, slots); it forwards SIGUSR1/SIGTERM too.
  mpirun) cmd=(mpirun -np "$ntasks" --bind-to none) ;;
  *) say "FER_LAUNCHER must be auto, srun or mpirun, not '$launcher'"; exit 2 ;;
esac
cmd+=("$bin" --config "$config" --data "$data" --out "$run_dir" --resume auto
      --threads "$OMP_NUM_THREADS")
[[ -n "${FER_DEVICE:-}" ]] && cmd+=(--device "$FER_DEVICE")
cmd+=("$@")
if [[ "${FER_DRY_RUN:-0}" == 1 ]]; then echo "fer_job: dry run: $(printf '%q ' "${cmd[@]}")"; exit 0; fi

child=0
signalled=0
forward() {
  signalled=1
  say "got SIG$1: asking the ranks to checkpoint and stop"
  ((child > 0)) && kill -s "$1" "$child" 2>/dev/null
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

say "job $job try $try on ${SLURM_JOB_NODELIST:-$(hostname)}: $ntasks task(s) x" \
    "$OMP_NUM_THREADS thread(s), launcher $launcher, up to $max_restarts restart(s), log $log"
say "${cmd[*]}"
restart=0
while true; do
  "${cmd[@]}" >>"$log" 2>&1 &
  child=$!
  # `wait` returns early when a trapped signal arrives: wait again until the launcher is gone.
  while kill -0 "$child" 2>/dev/null; do wait "$child"; done
  wait "$child"
  rc=$?
  child=0

  # A rank signalled before it had installed its handlers (still starting up) dies of the
  # signal instead of exiting 75; the newest checkpoint is still there, so that is a preemption.
  if ((rc != 0 && rc != kExitPreempted && signalled)); then
    say "fer-dist-train exited with $rc after the signal (a rank still starting up?): treated" \
        "as preempted"
    rc=$kExitPreempted
  fi
  case $rc in
    0 | "$kExitUsage" | "$kExitPreempted" | "$kExitInterrupted") break ;;
  esac
  if ((restart >= max_restarts)); then
    ((max_restarts > 0)) && say "exit $rc, and all $max_restarts restart(s) are used: giving up"
    break
  fi
  restart=$((restart + 1))
  say "exit $rc (a rank failed, see $run_dir/logs/rank-*.log): restart $restart of" \
      "$max_restarts in this allocation from the newest checkpoint (--resume auto)"
done
if ((rc == kExitPreempted)); then
  if [[ "${FER_NO_REQUEUE:-0}" != 1 && -n "${SLURM_JOB_ID:-}" ]]; then
    say "preempted: requeueing job $job (it resumes from the newest checkpoint, --resume auto)"
    trap - USR1 TERM
    # The requeue ends this script (Slurm kills it); the job goes back to pending and runs this
    # script again with the same arguments.
    if scontrol requeue "$SLURM_JOB_ID"; then
      sleep 60
      exit "$rc"
    fi
    say "scontrol requeue $SLURM_JOB_ID failed: resubmit the job to continue"
  else
    say "preempted: checkpoint written; run the job again to resume"
  fi
  exit "$rc"
fi
say "fer-dist-train exited with $rc"
exit "$rc"
