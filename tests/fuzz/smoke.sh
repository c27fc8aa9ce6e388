#!/usr/bin/env bash
# Short, deterministic libFuzzer smoke runs (what CI runs): for each target, replay every kept
# crasher in regressions/<target>/, then a fixed number of mutations (-runs) from the seed corpus
# with a fixed -seed, so a pass or a failure reproduces exactly. New inputs go to a temporary
# folder, never into the repository. See tests/fuzz/README for longer runs.
# Usage: tests/fuzz/smoke.sh BUILD_DIR [target...]   (BUILD_DIR configured with -DFER_FUZZ=ON)
# Environment: FUZZ_RUNS_SCALE (default 1) multiplies every target's run count.
set -euo pipefail
shopt -s nullglob
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build=${1:?usage: smoke.sh BUILD_DIR [target...]}
shift
targets=("$@")
((${#targets[@]})) || targets=(csv manifest config shard)
scale=${FUZZ_RUNS_SCALE:-1}

# Mutations per target: about 20-40 s each on a 2-core CI machine (ASan + UBSan builds).
# shard: 0 = replay its seed corpus only. Mutated HDF5 images reach memory errors inside libhdf5
# itself within a few thousand runs (see README): run it by hand, not as a CI gate.
declare -A runs=([csv]=3000 [manifest]=30000 [config]=30000 [shard]=0)

# allocator_may_return_null: libhdf5 sizes metadata buffers from the file and checks malloc's
# result; without it ASan aborts on a multi-TiB request instead of HDF5 reporting an error.
export ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1
export LSAN_OPTIONS=suppressions=$here/lsan.supp
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

work=$(mktemp -d /tmp/fer_fuzz_smoke.XXXXXX)
trap 'rm -rf "$work"' EXIT
status=0
for t in "${targets[@]}"; do
  bin=$build/fuzz/fuzz_$t
  [[ -x "$bin" ]] || { echo "fuzz smoke: $bin not built" >&2; exit 2; }
  common=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1000000 -print_final_stats=0)
  regressions=("$here/regressions/$t"/*)
  if ((${#regressions[@]})); then
    if ! "$bin" "${common[@]}" "${regressions[@]}" >"$work/replay-$t.log" 2>&1; then
      echo "fuzz smoke: $t: a kept regression input fails again" >&2
      tail -n 40 "$work/replay-$t.log" >&2
      status=1
      continue
    fi
  fi
  mkdir -p "$work/$t"
  start=$SECONDS
  if ((runs[$t] == 0)); then
    if "$bin" "${common[@]}" "$here/corpus/$t"/* >"$work/replay-$t.log" 2>&1; then
      echo "fuzz smoke: $t ok (seed corpus and ${#regressions[@]} regression inputs replayed)"
    else
      echo "fuzz smoke: $t FAILED on its seed corpus" >&2
      tail -n 40 "$work/replay-$t.log" >&2
      status=1
    fi
    continue
  fi
  if "$bin" "${common[@]}" -seed=1 -runs=$((runs[$t] * scale)) -artifact_prefix="$work/$t-" \
      "$work/$t" "$here/corpus/$t" >"$work/$t.log" 2>&1; then
    echo "fuzz smoke: $t ok (${#regressions[@]} regression inputs, $((runs[$t] * scale)) runs," \
         "$((SECONDS - start)) s)"
  else
    echo "fuzz smoke: $t FAILED; the input that failed:" >&2
    tail -n 60 "$work/$t.log" >&2
    for a in "$work/$t-"*; do [[ -f "$a" ]] && base64 -w 0 "$a" >&2 && echo >&2; done
    status=1
  fi
done
exit $status
