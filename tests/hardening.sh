#!/usr/bin/env bash
# The hardening pass CI runs after the normal suite (launch/run-tests.sh with FER_HARDENING=1):
# a second build folder with clang, AddressSanitizer + UndefinedBehaviorSanitizer and libFuzzer
# instrumentation. It runs, and any sanitizer report fails it:
#  1. the torch-free unit tests (common, data, the CSV/imagefolder readers, the schedule);
#  2. the 2-rank MPI tests under mpiexec -np 2: the communicator and gradient buckets
#     (test_dist_collectives), SyncBatchNorm (test_sync_bn_mpi), and fer-dist-train itself via the
#     2-rank data-parallel and timeline tests. Our code and LibTorch's headers are instrumented;
#     Debian's LibTorch and Open MPI libraries are not. Open MPI's own leaks are suppressed by
#     tests/mpi/lsan.supp (each line justified there). Reports go to files (log_path), so a report
#     in a rank whose exit status a test does not check still fails the pass;
#  3. a canary rank with a deliberate leak, heap overflow and signed overflow, which must be
#     reported (proof that the sanitizers are live under mpiexec and the suppressions hide none
#     of our leaks);
#  4. tests/fuzz/smoke.sh.
# Usage: tests/hardening.sh [BUILD_DIR]   (default: build-hardening). JOBS as for run-tests.sh.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build-hardening}
jobs=${JOBS:-$(nproc)}
unit_tests=(test_common test_data test_data_pipeline test_tools_csv test_tools_imagefolder
            test_train_one_cycle)
fuzzers=(fuzz_csv fuzz_manifest fuzz_config fuzz_shard)
# The MPI part: test binaries, the tools they launch, the canary.
mpi_targets=(test_dist_collectives test_sync_bn_mpi test_train_dp test_train_timeline
             fer-dist-train fer-synth fer-pack mpi_sanitizer_canary)

echo "hardening: configuring $build (clang, address+undefined, libFuzzer)"
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFER_SANITIZE=address,undefined -DFER_FUZZ=ON -DFER_WITH_NCCL=OFF >/dev/null
echo "hardening: building ${unit_tests[*]} ${fuzzers[*]} ${mpi_targets[*]}"
cmake --build "$build" -j "$jobs" --target "${unit_tests[@]}" "${fuzzers[@]}" "${mpi_targets[@]}"

# Every process writes its sanitizer reports to $reports/<kind>.<pid>; a run passes when it exits 0
# AND the folder stays empty (a rank whose exit status a test ignores cannot hide a report).
# fast_unwind_on_malloc=0: Debian's Open MPI has no frame pointers, and tests/mpi/lsan.supp
# matches frames deep inside it.
reports=$(mktemp -d /tmp/fer_hardening_reports.XXXXXX)
trap 'rm -rf "$reports"' EXIT
sanitizer_env=(OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
  "ASAN_OPTIONS=detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1:fast_unwind_on_malloc=0:log_path=$reports/asan"
  "LSAN_OPTIONS=suppressions=$root/tests/mpi/lsan.supp:print_suppressions=0"
  "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan")
status=0

# run_checked NAME COMMAND...: runs it in the sanitizer environment (10 min limit); fails the pass
# when it fails or any of its processes left a report.
run_checked() {
  local name=$1 start=$SECONDS rc=0
  shift
  env "${sanitizer_env[@]}" timeout 600 "$@" >"$build/$name.log" 2>&1 || rc=$?
  if ((rc == 0)) && [[ -z "$(ls -A "$reports")" ]]; then
    echo "hardening: $name ok under ASan+UBSan ($((SECONDS - start)) s)"
    return
  fi
  echo "hardening: $name FAILED under ASan+UBSan (exit $rc):" >&2
  tail -n 40 "$build/$name.log" >&2
  for f in "$reports"/*; do [[ -e "$f" ]] && { echo "--- $f" >&2; head -n 60 "$f" >&2; }; done
  rm -f "$reports"/*
  status=1
}

for t in "${unit_tests[@]}"; do
  run_checked "$t" "$build/tests/$t" --gtest_brief=1
done

# --- 2-rank MPI tests -------------------------------------------------------------------------
mpiexec=$(sed -n 's/^MPIEXEC_EXECUTABLE:[A-Z]*=//p' "$build/CMakeCache.txt")
[[ -n "$mpiexec" ]] || mpiexec=mpiexec
np2=("$mpiexec" -np 2 --oversubscribe)
run_checked mpi_collectives "${np2[@]}" "$build/tests/mpi/test_dist_collectives" --gtest_brief=1
run_checked mpi_sync_bn "${np2[@]}" "$build/tests/test_sync_bn_mpi" --gtest_brief=1
# fer-dist-train on 2 ranks: overlapped and non-overlapped gradient buckets, SyncBN, checkpoints,
# evaluation, a rank whose config differs (the error path), and the timeline's comm thread.
run_checked mpi_train_dp "$build/tests/test_train_dp" --gtest_brief=1 \
  --gtest_filter='DataParallel.OverlapOffGivesBitIdenticalResults:DataParallel.AMismatchedConfigOnOneRankIsANamedErrorNotAHang'
run_checked mpi_train_timeline "$build/tests/test_train_timeline" --gtest_brief=1 \
  --gtest_filter='Timeline.TwoRankRunHasWellFormedSpansOfEveryPhaseOnEveryRank'

# The canary: each bug must fail the run AND be named in a report file.
canary() {
  local mode=$1 expected=$2 rc=0
  env "${sanitizer_env[@]}" timeout 120 "${np2[@]}" "$build/tests/mpi/mpi_sanitizer_canary" "$mode" \
    >"$build/canary-$mode.log" 2>&1 || rc=$?
  if ((rc != 0)) && grep -qs "$expected" "$reports"/*; then
    echo "hardening: canary '$mode' caught under mpiexec ($expected)"
  else
    echo "hardening: canary '$mode' NOT caught (exit $rc, no '$expected' report): the MPI" \
         "results above prove nothing" >&2
    tail -n 20 "$build/canary-$mode.log" >&2
    status=1
  fi
  rm -f "$reports"/*
}
canary leak "leak_a_buffer_used_by_mpi"
canary overflow "heap-buffer-overflow"
canary undefined "signed integer overflow"

"$root/tests/fuzz/smoke.sh" "$build" || status=1
exit $status
