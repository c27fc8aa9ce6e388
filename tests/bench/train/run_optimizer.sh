#!/usr/bin/env bash
# Optimizer-step benchmark (not a timed test): ms per optimizer step of ResNet9 (width 1, 6.57 M
# parameters) at 1 and 2 threads, LibTorch's torch::optim::Adam (34 parameters x ~10 ops) against
# fer::FusedAdam (one flat buffer, 9 ops), side by side in one process on the same gradients
# (bench_optimizer_step; it fails unless both sides end with bit-identical weights). Rows:
#   step       optimizer.step() alone (Adam, L2 weight decay 1e-4)
#   clip+step  clip_grad_value_(0.1) + step(): the trainer's optimizer phase
# speedup = LibTorch ms / FusedAdam ms (medians over STEPS timed calls per row and side).
# Usage: tests/bench/train/run_optimizer.sh [STEPS=40] [WIDTH=1]   (~1 min on 2 cores)
#   BUILD_DIR defaults to build/ (target bench_optimizer_step).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
build=${BUILD_DIR:-$root/build}
steps=${1:-40}
width=${2:-1}
threads_list=(1 2)
(( $(nproc) >= 2 )) || threads_list=(1)
work=$(mktemp -d /tmp/fer-bench-optim.XXXXXX)
trap 'rm -rf "$work"' EXIT
# value FILE ROW KEY: the number after "KEY=" on FILE's line of row ROW.
value() { grep "^row=$2 " "$1" | grep -oE "(^| )$3=[0-9.e+-]+" | cut -d= -f2; }

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for t in "${threads_list[@]}"; do
  OMP_NUM_THREADS=$t MKL_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t \
    "$build/bin/bench_optimizer_step" "$t" "$steps" "$width" >"$work/opt$t.out" 2>"$work/opt$t.err" ||
    { cat "$work/opt$t.out" "$work/opt$t.err" >&2; exit 1; }
done
echo "optimizer-step benchmark: $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), load avg before" \
     "$load_before, after $(cut -d' ' -f1-3 /proc/loadavg)"
echo "ResNet9 width $width, Adam weight decay 1e-4, $steps timed calls per row and side (median)"
printf "%-10s %3s %12s %12s %8s\n" row thr libtorch_ms fused_ms speedup
for t in "${threads_list[@]}"; do
  for row in step clip+step; do
    printf "%-10s %3d %12.3f %12.3f %7.2fx\n" "$row" "$t" "$(value "$work/opt$t.out" "$row" libtorch_ms)" \
      "$(value "$work/opt$t.out" "$row" fused_ms)" "$(value "$work/opt$t.out" "$row" speedup)"
  done
done
# Machine-readable lines for tests/bench/run_all.sh: result NAME OURS REF RATIO TARGET UNIT, with
# RATIO = REF / OURS (a speed-up, like the images/s rows' OURS / REF) and no target.
for t in "${threads_list[@]}"; do
  for row in step clip+step; do
    printf "result optim_%s@%d %.3f %.3f %.3f - ms\n" "${row/+/_}" "$t" \
      "$(value "$work/opt$t.out" "$row" fused_ms)" "$(value "$work/opt$t.out" "$row" libtorch_ms)" \
      "$(value "$work/opt$t.out" "$row" speedup)"
  done
done
