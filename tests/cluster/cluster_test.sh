#!/usr/bin/env bash
# fer-dist-train on two nodes of one machine (tests/cluster/cluster.sh: network and UTS
# namespaces joined by a veth pair), launched by launch/mpirun.sh --hostfile through Open MPI's
# rsh launcher, and by a two-node Slurm. One test case per call:
#
#   cluster_test.sh CASE TOOLS_DIR SOURCE_DIR WORK_DIR
#
#   equivalence   2 nodes x 2 ranks of batch 8 reproduce 1 process of batch 32 (step losses
#                 within 1e-5, as tests/mpi/train_dp_test.cpp asks within one node)
#   local_ranks   every rank logs its host and local rank: node1 has ranks 0,1 with local ranks
#                 0,1, node2 ranks 2,3 with 0,1; the nodes share no memory (a canary: the job
#                 cannot run with shared memory alone)
#   node_death    node2 dies mid-run (link down, every process killed): mpirun and the surviving
#                 ranks exit non-zero within dist.comm_timeout_s + 30 s, nothing stays behind,
#                 and the same command resumes from the last checkpoint to a finished run
#   node_death_idle the same with dist.comm_timeout_s 120: Open MPI's keepalive (set by mpirun.sh)
#                 notices the dead node first and mpirun ends the job within 45 s
#   slurm_requeue a 2-node Slurm (slurmctld and one slurmd per node): sbatch --nodes=2
#                 --ntasks-per-node=2 train_cpu.sbatch through srun --mpi=pmix; scancel
#                 --signal=USR1 mid-run requeues it and it ends with the steps and metrics of an
#                 undisturbed job
#
# Exit 0: passed; 77: skipped (no root, no network namespaces, no Slurm), with the reason; else
# failed, with the logs. Everything the case makes lives in WORK_DIR/CASE (removed at the start
# and at the end) and in two network namespaces named after that folder, removed by name at the
# start (what a killed run left) and on exit, also on failure. Every wait is bounded.
set -uo pipefail

(($# == 4)) || { echo "usage: cluster_test.sh CASE TOOLS_DIR SOURCE_DIR WORK_DIR" >&2; exit 2; }
readonly test_case=$1 tools=$2 src=$3
mkdir -p "$4"
work="$(cd "$4" && pwd)/$test_case"
readonly work
readonly cluster_sh="$src/tests/cluster/cluster.sh"
# A clone or build under /tmp: the nodes have /tmps of their own, so these must be shown again.
export FER_CLUSTER_SHARE="$tools $src"
readonly nodes="$work/cluster"
comm_timeout_s=15  # dist.comm_timeout_s of the runs (node_death_idle: 120)

log() { echo "cluster_test [$(date '+%T')] $*"; }

# The logs of every run folder under WORK_DIR/CASE, then FAIL and exit 1.
fail() {
  echo "==== FAIL: $*"
  local f
  for f in "$work"/*.out "$work"/*/logs/*.log "$work"/slurm/log/*.log; do
    [[ -f "$f" ]] || continue
    echo "==== $f"
    tail -n 40 "$f"
  done
  exit 1
}

cleanup() {
  [[ -f "$work/slurm/slurm.conf" ]] && bash "$src/tests/cluster/cluster_slurm.sh" stop "$work/slurm" "$nodes"
  bash "$cluster_sh" down "$nodes"
  rm -rf "$work"
}

skip_unless() {  # skip_unless CHECK...: exit 77 with a loud message when CHECK says 77
  local why rc=0
  why=$("$@" 2>&1) || rc=$?
  ((rc == 0)) && return 0
  ((rc == 77)) && echo "**** CLUSTER TEST $test_case NOT RUN: ${why#*: } (ctest -LE cluster leaves these out) ****"
  ((rc == 77)) || echo "$why"
  exit "$rc"
}
skip_unless bash "$cluster_sh" check
[[ -d "$work" ]] && cleanup  # a run killed before its trap ran
mkdir -p "$work"
trap cleanup EXIT  # (FER_CLUSTER_KEEP=1: keep the files, for a look at the logs)
[[ -n "${FER_CLUSTER_KEEP:-}" ]] && trap 'cleanup; :' EXIT && cleanup() {
  [[ -f "$work/slurm/slurm.conf" ]] && bash "$src/tests/cluster/cluster_slurm.sh" stop "$work/slurm" "$nodes"
  bash "$cluster_sh" down "$nodes"
}
trap 'exit 143' TERM INT

on_node1() { bash "$cluster_sh" exec "$nodes" node1 "$@"; }

# The dataset of tests/mpi (112 train images of 16x16) and a tiny model.
make_data() {
  timeout 120 "$tools/fer-synth" "$work/src" --per-class 20 --size 16 --seed 4 >"$work/data.out" 2>&1 &&
    timeout 120 "$tools/fer-pack" imagefolder "$work/src" "$work/data" -q --size 16 \
      >>"$work/data.out" 2>&1 || fail "could not make the dataset"
  cat > "$work/tiny.yaml" <<YAML
model: {width: 0.0625, dropout: 0.2}
train: {epochs: ${1:-2}, log_every: 1, threads: 1}
data: {workers: 1}
checkpoint: {keep_last: 2}
dist: {comm_timeout_s: $comm_timeout_s}
YAML
}

# launch/mpirun.sh --hostfile on node1 with 4 ranks (2 per node) in the background; $! its pid.
# Open MPI's rsh launcher reaches node2 through the cluster's agent (nsenter); ranks talk TCP
# over the veth pair between the nodes, shared memory within one.
launch_two_nodes() {  # RUN OUTFILE [trainer args...]
  local run=$1 out=$2
  shift 2
  on_node1 env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 \
    FER_DEVICE=cpu FER_BIN="$tools/fer-dist-train" \
    MPIRUN_ARGS="--mca plm_rsh_agent $nodes/agent --mca btl ${BTL:-tcp,self,vader} \
--mca btl_tcp_if_include 10.99.0.0/24 --mca oob_tcp_if_include 10.99.0.0/24" \
    bash "$src/launch/mpirun.sh" --hostfile "$nodes/hostfile" 4 "$work/tiny.yaml" "$work/data" \
    "$run" --no-report "$@" >"$out" 2>&1 &
}

# Waits at most S seconds for PID; its exit code, or 124 (and PID is left running) on timeout.
wait_bounded() {  # PID S
  local pid=$1 deadline=$((SECONDS + $2))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && return 124
  wait "$pid"
}

# The largest "step" in RUN/metrics.jsonl (-1 when none).
last_step() {
  python3 - "$1/metrics.jsonl" <<'PY' 2>/dev/null || echo -1
import json, sys
step = -1
try:
    for line in open(sys.argv[1]):
        try:
            step = max(step, json.loads(line).get("step", -1))
        except ValueError:
            pass  # a line being written
except OSError:
    pass
print(step)
PY
}

case_equivalence() {
  make_data 2
  log "1 process, batch 32, 5 steps"
  timeout 120 "$tools/fer-dist-train" --config "$work/tiny.yaml" --data "$work/data" \
    --out "$work/np1" --device cpu --threads 1 --no-report --set train.batch_size=32 \
    --set train.max_steps=5 >"$work/np1.out" 2>&1 || fail "the 1-process run failed"
  log "2 nodes x 2 ranks, batch 8, 5 steps"
  launch_two_nodes "$work/n2x2" "$work/n2x2.out" --set train.batch_size=8 --set train.max_steps=5
  wait_bounded $! 150
  local rc=$?
  ((rc == 0)) || fail "the 2-node run exited with $rc"
  python3 - "$work/np1" "$work/n2x2" <<'PY' || fail "the 2-node run differs from 1 process"
import json, sys
def losses(run):
    out = []
    for line in open(run + "/metrics.jsonl"):
        j = json.loads(line)
        if j.get("type") == "step":
            out.append(j["loss"])
    return out
one, two = losses(sys.argv[1]), losses(sys.argv[2])
summary = json.load(open(sys.argv[2] + "/summary.json"))
assert summary["world_size"] == 4, summary["world_size"]
assert len(one) == 5 and len(two) == 5, (len(one), len(two))
worst = 0.0
for i, (a, b) in enumerate(zip(one, two)):
    rel = abs(a - b) / abs(a)
    worst = max(worst, rel)
    assert rel <= 1e-5, f"step {i + 1}: loss {b} on 2x2 ranks, {a} on 1 process (rel {rel:.2g})"
print(f"5 step losses agree, largest relative difference {worst:.2g}")
PY
}

case_local_ranks() {
  make_data 1
  launch_two_nodes "$work/ranks" "$work/ranks.out" --set train.batch_size=8 --set train.max_steps=2
  wait_bounded $! 120
  local rc=$?
  ((rc == 0)) || fail "the 2-node run exited with $rc"
  # "rank 2/4 on host node2, local rank 0, device cpu" in each rank's log.
  local rank line expected=("node1 0" "node1 1" "node2 0" "node2 1")
  for rank in 0 1 2 3; do
    line=$(grep -o "rank $rank/4 on host [^,]*, local rank [0-9]*" "$work/ranks/logs/rank-$rank.log") ||
      fail "rank $rank logs no host and local rank"
    log "$line"
    [[ "$line" == "rank $rank/4 on host ${expected[$rank]% *}, local rank ${expected[$rank]#* }" ]] ||
      fail "rank $rank: '$line', expected host and local rank '${expected[$rank]}'"
  done
  # Canary: the nodes do not share memory, so without TCP the ranks of one cannot reach the
  # other's; the job must fail (at start, within the bound).
  BTL=self,vader launch_two_nodes "$work/no_tcp" "$work/no_tcp.out" --set train.max_steps=1
  wait_bounded $! 60
  rc=$?
  ((rc != 0 && rc != 124)) || fail "with shared memory only the 2-node job exited with $rc"
  grep -qi "unreachable\|not able to reach\|could not be reached\|no route" "$work/no_tcp.out" ||
    fail "with shared memory only: no 'unreachable' from Open MPI"
  log "canary: shared memory alone does not connect the nodes (exit $rc)"
}

# Starts the 4-rank run RUN (30 steps), kills node2 after step 4 (after the first checkpoint) and
# waits for the launcher (bounded). Sets rc (its exit code) and took (seconds after the death).
kill_node2_mid_run() {  # RUN
  local run=$1
  make_data 10  # 3 steps an epoch (4 x 8 of 112 images), a checkpoint each: 30 steps
  launch_two_nodes "$run" "$work/try1.out" --set train.batch_size=8
  local launcher=$! deadline=$((SECONDS + 120))
  while (($(last_step "$run") < 4)) && ((SECONDS < deadline)); do
    kill -0 "$launcher" 2>/dev/null || fail "the run ended before node2 died"
    sleep 0.2
  done
  local before
  before=$(last_step "$run")
  ((before >= 4)) || fail "the run did not reach step 4 in 120 s"
  ((before < 30)) || fail "the run ended before node2 died"
  log "step $before: node2 dies (its link goes down, then every process in it is killed)"
  local t0=$SECONDS
  bash "$cluster_sh" kill-node "$nodes" node2 || fail "could not kill node2"
  wait_bounded "$launcher" $((comm_timeout_s + 60))
  rc=$? took=$((SECONDS - t0))
  log "launcher exited with $rc after $took s"
  if ((rc == 124)); then
    bash "$cluster_sh" pids "$nodes" node1
    fail "mpirun.sh still running $took s after node2 died"
  fi
  # Nothing of the job is left on node1 (only the node's holder process).
  local left
  left=$(bash "$cluster_sh" pids "$nodes" node1 | grep -E 'fer-dist-train|orted|mpirun')
  [[ -z "$left" ]] || fail "processes left after the failure: $left"
}

case_node_death() {
  local rc took bound=$((comm_timeout_s + 30))
  kill_node2_mid_run "$work/run"
  ((rc == 5)) || fail "mpirun.sh exited with $rc after node2 died, expected 5 (communication)"
  ((took <= bound)) || fail "mpirun.sh took $took s to end (bound: dist.comm_timeout_s + 30 = $bound s)"
  # The surviving ranks stopped on their own after dist.comm_timeout_s, with exit code 5.
  local rank
  for rank in 0 1; do
    grep -q "aborting the job (exit code 5) on rank $rank: .*timed out after $comm_timeout_s" \
      "$work/run/logs/rank-$rank.log" || fail "rank $rank did not stop on the communication timeout"
  done
  # mpirun itself waited for node2's daemon; the launcher ended it (tests the watchdog).
  grep -h "a host that stopped answering" "$work/run/logs/launcher.log" ||
    fail "no word from mpirun.sh about the host that stopped answering"

  log "node2 back; the same command resumes from the last checkpoint"
  bash "$cluster_sh" down "$nodes" && bash "$cluster_sh" up "$nodes" >/dev/null ||
    fail "the cluster did not come back"
  launch_two_nodes "$work/run" "$work/try2.out" --set train.batch_size=8
  wait_bounded $! 180
  rc=$?
  ((rc == 0)) || fail "the resumed run exited with $rc"
  grep -h "resuming from" "$work/run/logs/rank-0.log" | tail -n 1
  grep -q "resuming from" "$work/run/logs/rank-0.log" || fail "the second run did not resume"
  python3 - "$work/run" <<'PY' || fail "the resumed run did not finish"
import json, sys
s = json.load(open(sys.argv[1] + "/summary.json"))
assert s["steps"] == 30 and s["world_size"] == 4, s
print(f"resumed run finished: {s['steps']} steps on {s['world_size']} ranks")
PY
}

slurm() { bash "$src/tests/cluster/cluster_slurm.sh" run "$work/slurm" "$nodes" "$@"; }

# sbatch --nodes=2 --ntasks-per-node=2 train_cpu.sbatch RUN (the script's own --ntasks=2 would
# win over --ntasks-per-node: --ntasks=4 too); prints the job id.
submit() {
  slurm env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 FER_ROOT="$src" \
    FER_BIN="$tools/fer-dist-train" sbatch --parsable --nodes=2 --ntasks-per-node=2 --ntasks=4 \
    --output="$work/job-%j.out" --chdir="$work" "$src/launch/slurm/train_cpu.sbatch" \
    "$work/tiny.yaml" "$work/data" "$1" --no-report --set train.batch_size=8 | cut -d';' -f1
}

job_field() {  # JOB KEY: KEY=value of `scontrol show job -o JOB`
  slurm scontrol show job -o "$1" 2>/dev/null | grep -o "\(^\| \)$2=[^ ]*" | cut -d= -f2
}

wait_job() {  # JOB S: waits (bounded) until the job has ended; prints its state
  local deadline=$((SECONDS + $2)) state=""
  while ((SECONDS < deadline)); do
    state=$(job_field "$1" JobState)
    case "$state" in
      COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE)
        echo "$state"; return 0 ;;
    esac
    sleep 0.5
  done
  echo "still ${state:-unknown} after $2 s"
}

# dist.comm_timeout_s longer than Open MPI's keepalive (as the default 300 s is): mpirun notices
# on its own that node2's daemon stopped answering (launch/mpirun.sh sets the keepalive to
# 10 + 4 x 5 s) and ends the job, before any collective times out.
case_node_death_idle() {
  local rc took bound=45
  comm_timeout_s=120
  kill_node2_mid_run "$work/run"
  ((rc != 0)) || fail "mpirun.sh exited 0 although node2 died"
  ((took <= bound)) || fail "mpirun.sh took $took s to end (bound: the keepalive's 30 s + 15 s)"
  grep -h "lost communication with a remote daemon" "$work/try1.out" ||
    fail "no word from mpirun about the daemon it lost"
  if grep -q "timed out after" "$work/run/logs/rank-0.log"; then
    fail "a collective timed out: the keepalive did not end the job first"
  fi
}

case_slurm_requeue() {
  skip_unless bash "$src/tests/cluster/cluster_slurm.sh" check
  bash "$src/tests/cluster/cluster_slurm.sh" start "$work/slurm" "$nodes" >/dev/null ||
    fail "the two-node Slurm did not start"
  make_data 12  # 3 steps an epoch on 4 ranks of 8: 36 steps
  local ref id state
  ref=$(submit "$work/reference") && [[ -n "$ref" ]] || fail "sbatch failed"
  state=$(wait_job "$ref" 180)
  [[ "$state" == COMPLETED ]] || fail "the undisturbed job $ref: $state"
  grep -h "4 task(s)" "$work/reference/logs/slurm-$ref-try0.log" | head -n 1
  grep -q "on node\[1-2\]: 4 task(s)" "$work/reference/logs/slurm-$ref-try0.log" ||
    fail "the job did not run 4 tasks on node[1-2]"

  id=$(submit "$work/run") && [[ -n "$id" ]] || fail "sbatch failed"
  local deadline=$((SECONDS + 120))
  while (($(last_step "$work/run") < 4)) && ((SECONDS < deadline)); do sleep 0.2; done
  local at
  at=$(last_step "$work/run")
  ((at >= 4 && at < 36)) || fail "could not signal the job mid-run (at step $at)"
  slurm scancel --signal=USR1 "$id" || fail "scancel --signal=USR1 $id failed"
  log "job $id signalled (USR1) after step $at"
  state=$(wait_job "$id" 240)
  [[ "$state" == COMPLETED ]] || fail "the signalled job $id: $state"
  [[ "$(job_field "$id" Restarts)" == 1 ]] ||
    fail "job $id was requeued $(job_field "$id" Restarts) times, expected 1"
  grep -q "requeueing job $id" "$work/run/logs/slurm-$id-try0.log" || fail "no requeue in try 0"
  grep -q "resuming from" "$work/run/logs/slurm-$id-try1.log" || fail "try 1 did not resume"
  grep -h "resuming from" "$work/run/logs/slurm-$id-try1.log" | head -n 1
  python3 - "$work/reference" "$work/run" <<'PY' || fail "the requeued job differs"
import json, sys
def metrics(run):
    out = []
    for line in open(run + "/metrics.jsonl"):
        j = json.loads(line)
        j.pop("images_per_s", None)
        j.pop("seconds", None)
        out.append(j)
    return out
ref, run = (json.load(open(r + "/summary.json")) for r in sys.argv[1:])
assert run["world_size"] == 4 and run["steps"] == 36, run
for key in ("steps", "test", "best_val_accuracy"):
    assert run[key] == ref[key], (key, run[key], ref[key])
assert metrics(sys.argv[1]) == metrics(sys.argv[2]), "metrics.jsonl differ"
print(f"requeued job: {run['steps']} steps, test accuracy {run['test']['accuracy']:.4f}, metrics.jsonl the same as undisturbed")
PY
}

case "$test_case" in
  equivalence | local_ranks | node_death | node_death_idle | slurm_requeue) ;;
  *) echo "cluster_test: unknown case '$test_case'" >&2; exit 2 ;;
esac
bash "$cluster_sh" up "$nodes" || fail "the two-node cluster did not come up"
"case_$test_case"
log "PASS $test_case"
