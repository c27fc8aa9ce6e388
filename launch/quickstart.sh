#!/usr/bin/env bash
# The main job end to end on the embedded default data:
#   install deps -> build -> fer-synth (demo faces) -> fer-pack -> fer-dist-train (demo_cpu.yaml)
#   -> test accuracy.
# Re-runnable: reuses build/, the generated data and the packed dataset; each run trains into a
# new run folder. Environment: BUILD_DIR (build), WORK_DIR (quickstart), PER_CLASS (300),
# EPOCHS (from configs/demo_cpu.yaml), JOBS (cores).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}
work=${WORK_DIR:-$root/quickstart}
per_class=${PER_CLASS:-300}
jobs=${JOBS:-$(nproc)}

step() { printf '\n== %s\n' "$*"; }

step "1/5 dependencies"
"$root/launch/install-deps.sh"

step "2/5 build ($build)"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$jobs" --target fer-synth fer-pack fer-dist-train

step "3/5 demo data: fer-synth, $per_class faces per class ($work/images)"
if [[ -f "$work/.images-complete-$per_class" ]]; then
  echo "reusing $work/images"
else
  rm -rf "$work/images"
  "$build/bin/fer-synth" "$work/images" --per-class "$per_class" --seed 1
  touch "$work/.images-complete-$per_class"
fi

step "4/5 pack ($work/dataset)"
if [[ -f "$work/dataset/manifest.json" && "$work/dataset/manifest.json" -nt "$work/.images-complete-$per_class" ]]; then
  echo "reusing $work/dataset"
else
  "$build/bin/fer-pack" imagefolder "$work/images" "$work/dataset" --overwrite
fi
"$build/bin/fer-pack" verify "$work/dataset"

run="$work/runs/demo-$(date +%Y%m%d-%H%M%S)"
step "5/5 train configs/demo_cpu.yaml -> $run"
extra=()
if [[ -n "${EPOCHS:-}" ]]; then extra+=(--set "train.epochs=$EPOCHS"); fi
"$build/bin/fer-dist-train" --config "$root/configs/demo_cpu.yaml" --data "$work/dataset" \
  --out "$run" "${extra[@]}"

# summary.json's only "accuracy" key is the test evaluation's.
test_acc=$(grep -o '"accuracy": [0-9.]*' "$run/summary.json" | tail -1 | cut -d' ' -f2)
cat <<EOT

Done.
  dataset      $work/dataset          (fer-pack inspect $work/dataset)
  run folder   $run
  metrics      $run/metrics.jsonl
  summary      $run/summary.json
  checkpoints  $run/checkpoints/      (best.pt = best val accuracy)
  test accuracy of the best checkpoint: $test_acc
EOT
