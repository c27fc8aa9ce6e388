#!/usr/bin/env bash
# The hardening pass CI runs after the normal suite (launch/run-tests.sh with FER_HARDENING=1):
# a second build folder with clang, AddressSanitizer + UndefinedBehaviorSanitizer and libFuzzer
# instrumentation, holding only torch-free targets (LibTorch is not built with ASan and would take
# most of CI's time to compile this way): the unit tests of common, data, the CSV/imagefolder
# readers and the schedule, then tests/fuzz/smoke.sh. Any sanitizer report fails the run.
# Usage: tests/hardening.sh [BUILD_DIR]   (default: build-hardening). JOBS as for run-tests.sh.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build-hardening}
jobs=${JOBS:-$(nproc)}
unit_tests=(test_common test_data test_data_pipeline test_tools_csv test_tools_imagefolder
            test_train_one_cycle)
fuzzers=(fuzz_csv fuzz_manifest fuzz_config fuzz_shard)

echo "hardening: configuring $build (clang, address+undefined, libFuzzer)"
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFER_SANITIZE=address,undefined -DFER_FUZZ=ON -DFER_WITH_NCCL=OFF >/dev/null
echo "hardening: building ${unit_tests[*]} ${fuzzers[*]}"
cmake --build "$build" -j "$jobs" --target "${unit_tests[@]}" "${fuzzers[@]}"

export ASAN_OPTIONS=detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
status=0
for t in "${unit_tests[@]}"; do
  start=$SECONDS
  if "$build/tests/$t" --gtest_brief=1 >"$build/$t.log" 2>&1; then
    echo "hardening: $t ok under ASan+UBSan ($((SECONDS - start)) s)"
  else
    echo "hardening: $t FAILED under ASan+UBSan:" >&2
    tail -n 60 "$build/$t.log" >&2
    status=1
  fi
done
"$root/tests/fuzz/smoke.sh" "$build" || status=1
exit $status
