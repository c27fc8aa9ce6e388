#!/usr/bin/env bash
# Every benchmark of the project, one after the other, and one table of ratios against their
# references (the README's performance section is this table). Each benchmark's full output is
# kept in LOG_DIR (default: a new /tmp/fer-bench-all.* folder).
#   pack   tests/bench/pack/run.sh   fer-pack vs a PIL + h5py script (10,000 PNGs)
#   train  tests/bench/train/run.sh  train step, end-to-end epoch, loader vs resnet9_ref.py
#   dist   tests/bench/dist/run.sh   GradSync vs raw MPI_Allreduce, np2 vs np1 scaling
#   optim  tests/bench/train/run_optimizer.sh   optimizer step: FusedAdam vs LibTorch's Adam
#   levers tests/bench/train/run_levers.sh  step vs the conv limit; each lever on and off
#   predict  tests/bench/predict/run.sh  fer-predict on a 640x480 video vs the video's own rate
# Usage: tests/bench/run_all.sh [pack] [train] [dist] [optim] [levers] [predict]   (default: all six;
# ~18 min on 2 cores)
# Needs a build (BUILD_DIR, default build/) with the benchmark targets and
# `launch/install-deps.sh --bench`. Ratios are measured side by side in one run; a machine shared
# with other jobs makes them noisy: the table shows the load average.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
benches=("$@")
(( ${#benches[@]} )) || benches=(pack train dist optim levers predict)
log=${LOG_DIR:-$(mktemp -d /tmp/fer-bench-all.XXXXXX)}
mkdir -p "$log"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for b in "${benches[@]}"; do
  script=$root/tests/bench/$b/run.sh
  [[ $b == optim ]] && script=$root/tests/bench/train/run_optimizer.sh
  [[ $b == levers ]] && script=$root/tests/bench/train/run_levers.sh
  [[ -x "$script" ]] || { echo "unknown benchmark '$b' (pack, train, dist, optim, levers, predict)" >&2; exit 2; }
  echo "run_all: $b ... (log: $log/$b.log)" >&2
  start=$(date +%s)
  "$script" >"$log/$b.log" 2>&1 ||
    { echo "run_all: $b failed:" >&2; tail -20 "$log/$b.log" >&2; exit 1; }
  echo "run_all: $b done in $(( $(date +%s) - start )) s" >&2
done

echo "fer-dist benchmarks, $(date -u +%Y-%m-%d), $(nproc --all) cores" \
     "($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), load average before" \
     "$load_before, after $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| benchmark | ours | reference | ratio | target | met |"
echo "|---|--:|--:|--:|--:|:-:|"
for b in "${benches[@]}"; do
  grep '^result ' "$log/$b.log" | while read -r _ name ours ref ratio target unit; do
    met=-
    case $target in
      ">="*) met=$(echo "$ratio >= ${target#>=}" | bc -l) ;;
      "<="*) met=$(echo "$ratio <= ${target#<=}" | bc -l) ;;
    esac
    [[ $met == 1 ]] && met=yes; [[ $met == 0 ]] && met=no
    echo "| $name | $ours $unit | $ref $unit | ${ratio}x | $target | $met |"
  done
done
