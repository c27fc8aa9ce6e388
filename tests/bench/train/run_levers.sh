#!/usr/bin/env bash
# What each lever of the train step buys, and how close the step gets to the machine's own limit
# (ratios measured side by side in one run; not timed tests). ResNet9 width 1, batch 64, random
# 48x48 data, at 1 and 2 threads:
#   limit   bench_conv_limit: oneDNN's 3x3 convolution forward throughput on ResNet9's eight
#           convolution shapes (faster of NCHW and NHWC per layer), counted x3 per step
#           (forward, input and weight gradients): the images/s of a step that were convolutions
#           only. The headline figure is step / limit at 1 thread (target >= 0.80).
#   step    bench_train_step with each lever alone and all together: plain (LibTorch's Adam,
#           NCHW, fp32: the reference's loop), +channels_last (model.channels_last), +fused
#           (optim.fused), +bf16 (train.precision=bf16: only where the CPU has native bfloat16,
#           else skipped), +channels_last+fused, and all three.
# Each configuration runs twice, alternating, and its better rate counts (load from other jobs
# hits all alike). Rates are wall clock; the cpu column is images per CPU second of the process.
# Usage: tests/bench/train/run_levers.sh [STEPS=6]   (BUILD_DIR defaults to build/; ~6 min)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
build=${BUILD_DIR:-$root/build}
steps=${1:-6}
batch=64
for bin in bench_train_step bench_conv_limit; do
  [[ -x "$build/bin/$bin" ]] || { echo "missing $build/bin/$bin: build it first" >&2; exit 1; }
done
threads_list=(1 2)
(( $(nproc) >= 2 )) || threads_list=(1)
modes=(plain plain+channels_last plain+fused plain+channels_last+fused)
if grep -qwE 'avx512_bf16|amx_bf16|bf16' /proc/cpuinfo; then
  modes+=(plain+bf16 plain+channels_last+fused+bf16)
else
  echo "no native bfloat16 on this CPU: the bf16 rows are skipped" >&2
fi
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# value TEXT KEY: the number after "KEY=" in TEXT.
value() { grep -oE "(^| )$2=[0-9.e+-]+" <<<"$1" | tail -1 | cut -d= -f2; }
# better A B: the larger of two numbers.
better() { echo "if ($1 > $2) $1 else $2" | bc -l; }
declare -A rate cpu limit
for t in "${threads_list[@]}"; do
  export OMP_NUM_THREADS=$t MKL_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t
  out=$("$build/bin/bench_conv_limit" "$t" "$batch" 1 3)
  echo "$out" >&2
  limit[$t]=$(value "$out" conv_limit_images_per_s)
  for round in 1 2; do
    for m in "${modes[@]}"; do
      out=$("$build/bin/bench_train_step" "$t" "$batch" "$steps" 1 "$m" 2>/dev/null)
      r=$(value "$out" images_per_s) c=$(value "$out" cpu_images_per_s)
      rate[$m@$t]=$(better "$r" "${rate[$m@$t]:-0}")
      cpu[$m@$t]=$(better "$c" "${cpu[$m@$t]:-0}")
    done
  done
done
div() { echo "$1 / $2" | bc -l; }
echo "train-step levers: $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), ResNet9 width 1, batch $batch," \
     "$steps timed steps, best of 2; load avg before $load_before, after $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-32s %3s %10s %10s %9s %9s\n" mode thr img/s cpu_img/s vs_plain vs_limit
for t in "${threads_list[@]}"; do
  printf "%-32s %3d %10.1f %10s %9s %9s\n" "conv limit (convolutions only)" "$t" "${limit[$t]}" - - 1.00
  for m in "${modes[@]}"; do
    printf "%-32s %3d %10.1f %10.1f %8.2fx %8.2fx\n" "$m" "$t" "${rate[$m@$t]}" "${cpu[$m@$t]}" \
      "$(div "${rate[$m@$t]}" "${rate[plain@$t]}")" "$(div "${rate[$m@$t]}" "${limit[$t]}")"
  done
done
# Machine-readable lines for tests/bench/run_all.sh: result NAME OURS REF RATIO TARGET UNIT
for t in "${threads_list[@]}"; do
  best=plain+channels_last+fused
  printf "result step_vs_conv_limit@%d %.1f %.1f %.3f %s images/s\n" "$t" "${rate[$best@$t]}" \
    "${limit[$t]}" "$(div "${rate[$best@$t]}" "${limit[$t]}")" "$([[ $t == 1 ]] && echo '>=0.80' || echo -)"
  for m in "${modes[@]}"; do
    [[ $m == plain ]] && continue
    printf "result lever_%s@%d %.1f %.1f %.3f - images/s\n" "${m#plain+}" "$t" "${rate[$m@$t]}" \
      "${rate[plain@$t]}" "$(div "${rate[$m@$t]}" "${rate[plain@$t]}")"
  done
done
