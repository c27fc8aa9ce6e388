#!/usr/bin/env bash
# fer-pack benchmark (not a timed test): packs N fer-synth 48x48 PNGs with fer-pack at 1 and 2
# threads and with the Python PIL + h5py baseline (pack_reference.py) at 1 and 2 worker processes,
# in the same run on the same files, and prints images/s, peak RSS and the ratios.
# Usage: tests/bench/pack/run.sh [N=50000]     (BUILD_DIR defaults to build/)
# 50,000 images so that the figure is throughput: at 10,000 a run lasts ~0.5 s, of which ~0.2 s
# is process start-up, and the 2-thread ratio swung between 2.6x and 3.9x.
# Needs: launch/install-deps.sh --bench (python3-pil, python3-h5py, time).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
build=${BUILD_DIR:-$root/build}
n=${1:-50000}
per_class=$(( (n + 6) / 7 ))
work=$(mktemp -d /tmp/fer-bench-pack.XXXXXX)
trap 'rm -rf "$work"' EXIT

"$build/bin/fer-synth" "$work/src" --per-class "$per_class" --layout split --seed 1 >/dev/null 2>&1
images=$(find "$work/src" -name '*.png' | wc -l)
# warm the page cache for every contender (xargs: 50,000 names exceed one command line)
find "$work/src" -name '*.png' -print0 | xargs -0 cat > /dev/null

# run NAME COMMAND...: prints "NAME seconds peak_rss_kib"
run() {
  local name=$1; shift
  local start end
  start=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$work/rss" "$@" >/dev/null 2>"$work/err" || { cat "$work/err"; exit 1; }
  end=$(date +%s.%N)
  echo "$name $(echo "$end - $start" | bc -l) $(cat "$work/rss")"
}

results=()
for t in 1 2; do
  results+=("$(run "fer-pack@$t" "$build/bin/fer-pack" imagefolder "$work/src" "$work/ours$t" --threads "$t" -q)")
  results+=("$(run "python@$t" /usr/bin/python3 "$root/tests/bench/pack/pack_reference.py" "$work/src" "$work/py$t" --workers "$t")")
done

echo "fer-pack benchmark: $images PNGs 48x48 grayscale, $(nproc) cores, $(date -u +%Y-%m-%d)"
printf "%-12s %10s %12s %14s\n" contender seconds images/s peak_RSS_MiB
declare -A rate
for r in "${results[@]}"; do
  read -r name secs rss <<<"$r"
  rate[$name]=$(echo "$images / $secs" | bc -l)
  printf "%-12s %10.2f %12.0f %14.1f\n" "$name" "$secs" "${rate[$name]}" "$(echo "$rss / 1024" | bc -l)"
done
printf "ratio fer-pack/python at 1 thread:  %.2fx\n" "$(echo "${rate[fer-pack@1]} / ${rate[python@1]}" | bc -l)"
printf "ratio fer-pack/python at 2 threads: %.2fx  (target >= 3x)\n" "$(echo "${rate[fer-pack@2]} / ${rate[python@2]}" | bc -l)"
# Machine-readable lines for tests/bench/run_all.sh: result NAME OURS REF RATIO TARGET UNIT
for t in 1 2; do
  target=-; [[ $t == 2 ]] && target=">=3"
  printf "result pack@%d %.1f %.1f %.3f %s images/s\n" "$t" "${rate[fer-pack@$t]}" \
    "${rate[python@$t]}" "$(echo "${rate[fer-pack@$t]} / ${rate[python@$t]}" | bc -l)" "$target"
done
