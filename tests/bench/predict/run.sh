#!/usr/bin/env bash
# fer-predict on a video (not a timed test): frames per second against the video's own rate, at
# 1 and 2 threads, with --every 1 (detect on every frame) and --every 3 (detect on every third,
# track in between), on a generated 640x480 H.264 video (tests/bench/predict/synth_video.h: one
# or two fer-synth faces moving over a textured background, 25 fps) with a ResNet9 of width 1.
# Detection, inference and decoding time per frame are reported separately (fer-predict --stats);
# decoding runs on its own thread, so it overlaps the rest; cpu is the process's CPU time per frame
# (all threads), which other jobs on the machine disturb less than the wall clock.
#   Target: >= 25 fps (real time, ratio >= 1.00) at 2 threads with --every 1, more with --every 3.
# Usage: tests/bench/predict/run.sh [FRAMES=250] [WIDTH=1]
#   BUILD_DIR defaults to build/ (targets fer-predict bench_make_video). ~2 min on 2 cores.
#   The environment passes through (e.g. OMP_WAIT_POLICY=PASSIVE, which helps at 2 threads when
#   other jobs share the cores).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
build=${BUILD_DIR:-$root/build}
frames=${1:-250}
width=${2:-1}
threads_list=(1 2)
(( $(nproc) >= 2 )) || threads_list=(1)
work=$(mktemp -d /tmp/fer-bench-predict.XXXXXX)
trap 'rm -rf "$work"' EXIT
for bin in fer-predict bench_make_video; do
  [[ -x "$build/bin/$bin" ]] || { echo "missing $build/bin/$bin (build it)" >&2; exit 1; }
done
for faces in 1 2; do
  "$build/bin/bench_make_video" "$work" "$faces" "$frames" "$width" >/dev/null
done

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# value KEY LINE: the number after "KEY=" in LINE.
value() { grep -oE "(^| )$1=[0-9.e+-]+" <<<"$2" | head -1 | cut -d= -f2; }
echo "fer-predict on a ${frames}-frame 640x480 video at 25 fps, ResNet9 width $width," \
     "$(nproc) cores, load average before $load_before"
echo
printf '| faces | threads | every | fps | x real time | cpu ms/frame | decode ms | detect ms | infer ms | other ms |\n'
printf '|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n'
results=()
for faces in 1 2; do
  for t in "${threads_list[@]}"; do
    for every in 1 3; do
      line=$(OMP_NUM_THREADS=$t MKL_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t \
        "$build/bin/fer-predict" --checkpoint "$work/model.pt" --threads "$t" --every "$every" \
        --stats --json "$work/scene-$faces.mp4" 2>&1 >/dev/null | grep 'stats:' || true)
      [[ -n "$line" ]] || { echo "fer-predict gave no stats (faces $faces, threads $t)" >&2; exit 1; }
      [[ "$(value frames "$line")" == "$frames" ]] ||
        { echo "fer-predict processed $(value frames "$line") of $frames frames" >&2; exit 1; }
      fps=$(value fps "$line")
      other=$(echo "$(value prepare_ms "$line") + $(value output_ms "$line") + $(value wait_ms "$line")" | bc -l)
      printf '| %d | %d | %d | %.1f | %.2f | %.1f | %.1f | %.1f | %.1f | %.1f |\n' "$faces" "$t" \
        "$every" "$fps" "$(value realtime "$line")" "$(value cpu_ms "$line")" \
        "$(value decode_ms "$line")" "$(value detect_ms "$line")" "$(value infer_ms "$line")" "$other"
      target=-
      (( t == 2 )) && target=">=1.00"
      results+=("result predict_f${faces}_every${every}@$t $fps 25 $(value realtime "$line") $target fps")
    done
  done
done
echo
echo "detect/infer/other: milliseconds per frame on the pipeline's thread (wall clock; other ="
echo "preparing faces, JSON output, waiting for the decoder); decode: on its own thread."
echo "load average after $(cut -d' ' -f1-3 /proc/loadavg)"
# For tests/bench/run_all.sh: NAME OURS REFERENCE RATIO TARGET UNIT (reference: the video's rate).
printf '%s\n' "${results[@]}"
