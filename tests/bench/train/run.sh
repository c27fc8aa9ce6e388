#!/usr/bin/env bash
# fer-dist-train benchmarks (not timed tests), ours against shared/reference/resnet9_ref.py in the
# same run, on the same fer-synth data, at the same thread counts (1 and 2; both sides get
# OMP_NUM_THREADS=T and torch threads T):
#   1. step:   train-step images/s, ResNet9 width 1, batch 64, random 48x48 data, STEPS timed steps
#              after 2 warm-up steps: bench_train_step vs `resnet9_ref.py speed`.  Target >= 1.00.
#   2. e2e:    one training run of EPOCHS epochs at WIDTH, batch 64, on a fer-synth dataset of
#              PER_CLASS images per class (80/10/10 split): fer-pack + fer-dist-train (memory
#              loader, 1 worker thread) vs `resnet9_ref.py train` (torchvision ImageFolder,
#              num_workers=0). Ours: summary.json train_images_per_s (epoch time, without val);
#              reference: its train_images_per_s (includes its per-epoch val pass). Target >= 1.20.
#   3. loader: TrainLoader alone (memory mode, crop + flip + normalize + batch, WORKERS=T) vs the
#              faster of our two consumption rates at T threads (1 and 2). Target >= 20x.
# Peak RSS (/usr/bin/time %M) of every process; load average before and after.
# Usage: tests/bench/train/run.sh [STEPS=10] [PER_CLASS=300] [WIDTH=0.25] [EPOCHS=1]
#   BUILD_DIR defaults to build/ (targets fer-dist-train fer-pack fer-synth bench_train_step
#   bench_loader); REF overrides the reference script's path. Defaults take ~7 min on 2 cores
#   (394-428 s at load average 1.8-3.8), more on a busier machine. Both sides inherit the
#   environment, so e.g. OMP_WAIT_POLICY=PASSIVE (much faster at 2 threads when other jobs share
#   the cores) or MALLOC_* settings apply to both alike.
# Needs: launch/install-deps.sh --bench (python3-torch, python3-torchvision, time, bc).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
build=${BUILD_DIR:-$root/build}
steps=${1:-10}
per_class=${2:-300}
width=${3:-0.25}
epochs=${4:-1}
batch=64
python=/usr/bin/python3  # Debian's interpreter: the one with python3-torch
ref=${REF:-}
for dir in "$root/shared" "$root/../shared"; do
  [[ -z "$ref" && -f "$dir/reference/resnet9_ref.py" ]] && ref=$dir/reference/resnet9_ref.py
done
[[ -n "$ref" ]] || { echo "resnet9_ref.py not found; set REF=path" >&2; exit 1; }
threads_list=(1 2)
(( $(nproc) >= 2 )) || threads_list=(1)
work=$(mktemp -d /tmp/fer-bench-train.XXXXXX)
trap 'rm -rf "$work"' EXIT

"$build/bin/fer-synth" "$work/src" --per-class "$per_class" --layout split --seed 1 >/dev/null 2>&1
"$build/bin/fer-pack" imagefolder "$work/src" "$work/packed" -q >/dev/null
train_images=$(find "$work/src/train" -name '*.png' | wc -l)
cat $(find "$work/src" -name '*.png') >/dev/null  # warm the page cache for both sides
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# The reference's speed() as is; only its clock is observed, so its loop is also timed by process
# CPU time (what bench_train_step reports as cpu_images_per_s).
cat >"$work/ref_speed.py" <<'EOF'
import importlib.util, sys, time, types
spec = importlib.util.spec_from_file_location("resnet9_ref", sys.argv[1])
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)
marks = []
def perf_counter():
    marks.append((time.perf_counter(), time.process_time()))
    return marks[-1][0]
ref.time = types.SimpleNamespace(perf_counter=perf_counter)
threads, batch, steps = (int(a) for a in sys.argv[2:5])
ref.speed(threads, batch, steps)  # prints images_per_s (wall clock)
print(f"cpu_images_per_s={steps * batch / (marks[-1][1] - marks[0][1]):.2f}")
EOF

# timed T NAME COMMAND...: runs COMMAND with T threads everywhere, keeps its stdout in
# $work/NAME.out and its peak RSS (KiB) in $work/NAME.rss; stops the script if it fails.
timed() {
  local t=$1 name=$2; shift 2
  OMP_NUM_THREADS=$t MKL_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t \
    /usr/bin/time -f "%M" -o "$work/$name.rss" "$@" >"$work/$name.out" 2>"$work/$name.err" ||
    { cat "$work/$name.out" "$work/$name.err" >&2; exit 1; }
}
# value FILE KEY: the number after the word "KEY=" in FILE (last occurrence).
value() { grep -oE "(^| )$2=[0-9.e+-]+" "$1" | tail -1 | cut -d= -f2; }

# The two sides of benchmarks 1 and 2, for the thread count $t.
step_ours() {
  timed "$t" "step_ours$t" "$build/bin/bench_train_step" "$t" "$batch" "$steps" 1 plain
}
step_ref() {
  timed "$t" "step_ref$t" "$python" "$work/ref_speed.py" "$ref" "$t" "$batch" "$steps"
}
e2e_ours() {
  cat >"$work/cfg$t.yaml" <<EOF
data: {loader: memory, workers: 1, augment: true, pad: 4, flip: true}
model: {width: $width}
optim: {name: adam, weight_decay: 1.0e-4, grad_clip_value: 0.1}
schedule: {max_lr: 0.01}
train: {epochs: $epochs, batch_size: $batch, threads: $t, log_every: 10}
EOF
  timed "$t" "e2e_ours$t" "$build/bin/fer-dist-train" --config "$work/cfg$t.yaml" \
    --data "$work/packed" --out "$work/run$t" --threads "$t" --device cpu --log-level warn
}
e2e_ref() {
  timed "$t" "e2e_ref$t" "$python" "$ref" train "$work/src" "$epochs" "$batch" "$t" "$width"
}
# in_turn A B: runs A then B for odd $t, B then A for even $t. The two sides run back to back, so
# load from other jobs hits both about alike, and neither always goes first.
in_turn() { if (( t % 2 )); then "$1"; "$2"; else "$2"; "$1"; fi; }

declare -A rate rss
for t in "${threads_list[@]}"; do
  # 1. Train step (the step_cpu rows are less sensitive to other jobs' load than the wall clock).
  in_turn step_ours step_ref
  for side in ours ref; do
    rate[step_$side$t]=$(value "$work/step_$side$t.out" images_per_s)
    rate[step_cpu_$side$t]=$(value "$work/step_$side$t.out" cpu_images_per_s)
  done

  # 2. End to end: the same images, width, batch, epochs and threads.
  in_turn e2e_ours e2e_ref
  rate[e2e_ours$t]=$(grep -oE '"train_images_per_s": [0-9.e+-]+' "$work/run$t/summary.json" |
    cut -d' ' -f2)
  rate[e2e_ref$t]=$(value "$work/e2e_ref$t.out" train_images_per_s)

  # 3. Loader alone: >= ~30k images so the rate is not start-up noise.
  loader_epochs=$(( 30000 / train_images + 1 ))
  timed "$t" "loader$t" "$build/bin/bench_loader" "$work/packed" "$t" "$batch" "$loader_epochs"
  rate[loader$t]=$(value "$work/loader$t.out" images_per_s)
  for name in step_ours step_ref e2e_ours e2e_ref loader; do
    rss[$name$t]=$(cat "$work/$name$t.rss")
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

div() { echo "$1 / $2" | bc -l; }
echo "fer-dist-train benchmark: $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), load avg before" \
     "$load_before, after $load_after"
echo "step: width 1, batch $batch, $steps timed steps | e2e: fer-synth $per_class/class" \
     "($train_images train), width $width, batch $batch, $epochs epoch(s) | loader: memory mode"
printf "%-8s %3s %12s %12s %8s %8s %11s %11s\n" bench thr ours_img/s ref_img/s ratio target \
       ours_RSS_MiB ref_RSS_MiB
for t in "${threads_list[@]}"; do
  rss[step_cpu_ours$t]=${rss[step_ours$t]} rss[step_cpu_ref$t]=${rss[step_ref$t]}
  for b in step step_cpu e2e; do
    target=1.00; [[ $b == e2e ]] && target=1.20
    printf "%-8s %3d %12.1f %12.1f %7.2fx %7.2fx %11.0f %11.0f\n" "$b" "$t" "${rate[${b}_ours$t]}" \
      "${rate[${b}_ref$t]}" "$(div "${rate[${b}_ours$t]}" "${rate[${b}_ref$t]}")" "$target" \
      "$(div "${rss[${b}_ours$t]}" 1024)" "$(div "${rss[${b}_ref$t]}" 1024)"
  done
  # The loader must outrun the fastest consumer at these threads: the step at width 1 or e2e.
  consume=${rate[e2e_ours$t]}
  (( $(echo "${rate[step_ours$t]} > $consume" | bc -l) )) && consume=${rate[step_ours$t]}
  printf "%-8s %3d %12.1f %12.1f %7.1fx %7.1fx %11.0f %11s\n" loader "$t" "${rate[loader$t]}" \
    "$consume" "$(div "${rate[loader$t]}" "$consume")" 20 "$(div "${rss[loader$t]}" 1024)" "-"
done
echo "step_cpu: the step loops timed by process CPU time (all threads) instead of wall time"
echo "loader: its ref_img/s column is our training consumption at those threads (max of step, e2e)"
# Machine-readable lines for tests/bench/run_all.sh: result NAME OURS REF RATIO TARGET UNIT
for t in "${threads_list[@]}"; do
  for b in step e2e; do
    target=">=1.30"; [[ $b == e2e ]] && target=">=1.20"
    printf "result train_%s@%d %.1f %.1f %.3f %s images/s\n" "$b" "$t" "${rate[${b}_ours$t]}" \
      "${rate[${b}_ref$t]}" "$(div "${rate[${b}_ours$t]}" "${rate[${b}_ref$t]}")" "$target"
  done
  printf "result train_step_rss@%d %.0f %.0f %.3f %s MiB\n" "$t" "$(div "${rss[step_ours$t]}" 1024)" \
    "$(div "${rss[step_ref$t]}" 1024)" "$(div "${rss[step_ours$t]}" "${rss[step_ref$t]}")" "<=1.20"
  consume=${rate[e2e_ours$t]}
  (( $(echo "${rate[step_ours$t]} > $consume" | bc -l) )) && consume=${rate[step_ours$t]}
  printf "result loader@%d %.1f %.1f %.3f %s images/s\n" "$t" "${rate[loader$t]}" "$consume" \
    "$(div "${rate[loader$t]}" "$consume")" ">=20"
done
