#!/usr/bin/env bash
# The GPU device check: on a machine with a CUDA torch (pip or the libtorch archive), nvcc and
# cmake, one command builds the trainer-only set and checks everything about the GPU path that
# matters, inside a time budget, and leaves results.json and a table.
#
# Usage: tests/gpu/device_check.sh [--bundle DIR] [--budget-s 540] [--dry-run] [--gpus N]
#                                  [--build-dir DIR] [--out DIR] [--jobs N] [--build-budget-s 240]
#                                  [--device cpu]
#
# Phases, in order (each with a budget; the script stops itself before --budget-s, skipping what
# no longer fits and saying so):
#   versions   driver, GPU model and count, nvcc, python's torch (CUDA, cuDNN, NCCL)
#   bundle     --bundle DIR: sources DIR/env.sh (launch/gpu/bundle-deps.sh) for MPI, HDF5, ...
#   configure  launch/build-gpu.sh --configure-only (trainer-only set, LibTorch found as it says)
#   build      all cores; ccache and the torch PCH when present
#   dataset    fer-tiny-dataset (src/data's own shard writer): e2e (48x48, 350 images) and
#              sweep (48x48, 14,000 images)
#   runtime    fer-dist-train --device cuda --validate-only: the CUDA runtime, driver, cuDNN and
#              NCCL the trainer loads (it refuses two CUDA runtimes)
#   gpu_tests  ctest -L gpu: NCCL communicator at world 1 (and 2 ranks with 2+ GPUs); GradSync
#              and SyncBN over NCCL against over MPI, and stream order (kernels still running
#              when their output is all-reduced), tests/gpu/gpu_dist_test.cpp; checkpoints saved
#              on cuda:0 loaded on the last GPU and the CPU, tests/gpu/checkpoint_cuda_test.cpp;
#              the --device cuda run of tests/gpu/train_cuda_e2e_test.cpp (2 epochs + --resume auto);
#              then the Cuda* suites of the other tests (the GPU batch path against the CPU's)
#   e2e        the reference recipe (configs/fer2013_resnet9.yaml) with --device cuda: 2 epochs,
#              then --resume auto for a third; the summary must say cuda and 3 epochs of steps
#   sweep      train.precision fp32/bf16 x model.channels_last off/on x per-GPU batch 128 and
#              512, 200 steps each, SyncBN on (collectives forced at world 1), host_sync auto
#              (log on CUDA): images/s (summary.json) and peak GPU memory (nvidia-smi)
#   mpirun2    2+ GPUs: mpirun -np 2, one GPU per rank, NCCL, 100 steps of batch 128 per rank
# --dry-run walks every phase that needs no GPU for real (bundle, configure, a build of the
# targets the GPU phases run, datasets, the runtime line) and prints the exact command lines of the
# others, each fer-dist-train one checked with --validate-only; it plans for --gpus N (default 2
# in a dry run, so the 2-GPU phases are walked too). CI runs it (ctest -R device_check_dry_run).
#
#   --out DIR          results.json, the table (results.txt), phase logs, datasets, runs
#                      (default: BUILD_DIR/device-check)
#   --build-dir DIR    default: build-gpu-check in the repository root
#   --jobs N           build jobs (default: all cores)
#   --build-budget-s N the build phase's own cap (default 240)
#   --device cpu       a test of this script where there is no GPU: every phase really runs, on
#                      the CPU, with a 1/8-wide model and 3-step sweeps (the figures mean nothing)
# Exit status: 0 when every phase that can run here passed, 1 when one failed, 3 when none
# failed but the budget left some out (listed), 2 for a usage error.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "device_check: error: $*" >&2; exit 2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bundle="" budget_s=540 dry_run=0 gpus_planned="" build="" out="" jobs=$(nproc) build_budget_s=240
device=cuda
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --bundle) bundle=${2:?--bundle needs a folder}; shift 2 ;;
    --budget-s) budget_s=${2:?--budget-s needs seconds}; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --gpus) gpus_planned=${2:?--gpus needs a number}; shift 2 ;;
    --build-dir) build=${2:?--build-dir needs a folder}; shift 2 ;;
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --jobs) jobs=${2:?--jobs needs a number}; shift 2 ;;
    --build-budget-s) build_budget_s=${2:?--build-budget-s needs seconds}; shift 2 ;;
    --device) device=${2:?--device needs cpu}; shift 2 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
for n in budget_s jobs build_budget_s ${gpus_planned:+gpus_planned}; do
  [[ "${!n}" =~ ^[0-9]+$ ]] || die "--${n//_/-} must be a whole number, not '${!n}'"
done
[[ "$device" == cuda || "$device" == cpu ]] || die "--device must be cpu (or the default, cuda)"
[[ "$device" == cuda ]] || ((!dry_run)) || die "--device cpu and --dry-run do not go together"
# The CPU stand-in for a test of this script: a narrow model, short sweeps.
cpu_args=() sweep_steps=200 mpirun_steps=100
[[ "$device" == cpu ]] && cpu_args=(--set model.width=0.125) sweep_steps=3 mpirun_steps=3
[[ -z "$bundle" || -f "$bundle/env.sh" ]] ||
  die "--bundle $bundle has no env.sh (make one with launch/gpu/bundle-deps.sh)"
build=${build:-$root/build-gpu-check}
mkdir -p "$build"
build=$(cd "$build" && pwd)
out=${out:-$build/device-check}
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
[[ -z "$bundle" ]] || bundle=$(cd "$bundle" && pwd)

started=$(date +%s)
deadline=$((started + budget_s - 5))  # 5 s kept for the results
bin=$build/bin
train=$bin/fer-dist-train
# Open MPI refuses root (containers) unless told twice; ranks may outnumber cores.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

# --- bookkeeping ------------------------------------------------------------------------------
json_str() {
  local s=$1
  s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/\\n}; s=${s//$'\t'/\\t}; s=${s//$'\r'/}
  printf '"%s"' "$s"
}
names=() statuses=() seconds=() notes=() figures=()
declare -A fig=()       # figures of the phase being run: key -> JSON value
declare -A status_of=() # phase -> its status, for the phases that need it
phase_end=0
now() { date +%s; }
left() { echo $((phase_end - $(now))); }
# figure KEY VALUE [str]: a number as is, anything else (or with str: everything) as a string.
figure() {
  if [[ "${3:-}" != str && "$2" =~ ^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]]; then fig[$1]=$2
  else fig[$1]=$(json_str "$2"); fi
}
# run_logged LOG CMD...: runs CMD (its output to the phase log and to stdout) within the phase's
# time; 124 when it ran out of time.
run_logged() {
  local log=$1; shift
  local t
  t=$(left)
  ((t > 0)) || return 124
  echo "\$ $*" >>"$log"
  timeout --kill-after=5 "$t" "$@" 2>&1 | tee -a "$log" | sed 's/^/    /'
  return "${PIPESTATUS[0]}"
}
# show CMD...: the command line, as a dry run prints it (shell-quoted).
show() { printf '    would run:'; printf ' %q' "$@"; printf '\n'; }
# phase NAME BUDGET_S MIN_S NEEDS FUNCTION: runs FUNCTION when MIN_S seconds are left and every
# phase in NEEDS ("configure build ...", or "-") that ran ended ok.
phase() {
  local name=$1 budget=$2 min=$3 needs=$4 fn=$5
  local t0 left_s status="" note="" need
  t0=$(now)
  left_s=$((deadline - t0))
  fig=()
  for need in $needs; do
    case "${status_of[$need]:-ok}" in
      ok | dry-run) ;;
      *) status=skipped note="needs $need, which was ${status_of[$need]}"; break ;;
    esac
  done
  if [[ -n "$status" ]]; then
    :
  elif ((left_s < min)); then
    status=skipped note="${left_s} s of the budget left, needs at least ${min} s"
  else
    phase_end=$((t0 + (budget < left_s ? budget : left_s)))
    echo "device_check: [$name] (budget $((phase_end - t0)) s)"
    local log=$out/logs/$name.log rc=0
    : >"$log"
    PHASE_NOTE=""
    "$fn" "$log" || rc=$?
    note=$PHASE_NOTE
    if ((rc == 0)); then status=$([[ -n "${PHASE_STATUS:-}" ]] && echo "$PHASE_STATUS" || echo ok)
    elif ((rc == 124)); then status=timeout note="over its $((phase_end - t0)) s budget${note:+; $note}"
    else status=failed note="exit $rc${note:+; $note} (log: logs/$name.log)"; fi
    PHASE_STATUS=""
  fi
  status_of[$name]=$status
  local f="" k
  for k in "${!fig[@]}"; do f+="${f:+, }$(json_str "$k"): ${fig[$k]}"; done
  names+=("$name") statuses+=("$status") seconds+=($(($(now) - t0))) notes+=("$note")
  figures+=("{$f}")
  echo "device_check: [$name] $status ($(($(now) - t0)) s)${note:+: $note}"
}

# --- phases -------------------------------------------------------------------------------------
gpu_count=0
python=${PYTHON:-python3}
ph_versions() {
  local log=$1 smi
  if command -v nvidia-smi >/dev/null &&
     smi=$(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>>"$log"); then
    echo "$smi" | tee -a "$log"
    gpu_count=$(grep -c . <<<"$smi")
    figure gpu_model "$(head -n1 <<<"$smi" | cut -d, -f1 | sed 's/^ *//')"
    figure driver "$(head -n1 <<<"$smi" | cut -d, -f2 | tr -d ' ')" str
    figure gpu_memory "$(head -n1 <<<"$smi" | cut -d, -f3 | sed 's/^ *//')"
  else
    echo "no nvidia-smi or no driver: no GPU" | tee -a "$log"
    figure driver n/a
    figure gpu_model n/a
  fi
  figure gpu_count "$gpu_count"
  local nvcc
  nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  if [[ -x "$nvcc" ]]; then figure nvcc "$("$nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')" str
  else figure nvcc n/a; fi
  local torch
  if torch=$(timeout 60 "$python" -c 'import torch
c = torch.cuda.is_available()
print(torch.__version__, torch.version.cuda or "none",
      torch.backends.cudnn.version() if c else "n/a",
      ".".join(map(str, torch.cuda.nccl.version())) if c else "n/a")' 2>>"$log"); then
    echo "$python: torch cuda cudnn nccl = $torch" | tee -a "$log"
    read -r t_version t_cuda t_cudnn t_nccl <<<"$torch"
    figure torch "$t_version" str; figure torch_cuda "$t_cuda" str
    figure torch_cudnn "$t_cudnn" str; figure torch_nccl "$t_nccl" str
  else
    echo "$python has no torch (a libtorch archive is found by build-gpu.sh instead)" | tee -a "$log"
    figure torch n/a
  fi
  figure cmake "$(cmake --version | head -n1 | awk '{print $3}')"
  figure cores "$(nproc)"
  if [[ "$device" == cpu ]]; then
    gpus_planned=2 PHASE_NOTE="--device cpu: the GPU phases run on the CPU (2 ranks for mpirun2)"
  elif [[ -n "$gpus_planned" ]]; then
    PHASE_NOTE="planning for $gpus_planned GPU(s) (--gpus)"
  elif ((dry_run)); then
    gpus_planned=2 PHASE_NOTE="dry run: planning for 2 GPUs"
  fi
  gpus_planned=${gpus_planned:-$gpu_count}
  figure gpus_planned "$gpus_planned"
}

ph_bundle() {
  local log=$1
  # shellcheck disable=SC1091
  . "$bundle/env.sh"
  echo "FER_BUNDLE=$FER_BUNDLE; mpirun: $(command -v mpirun)" | tee -a "$log"
  figure bundle "$bundle"
  local mib
  mib=$(du -sb "$bundle" | awk '{ printf "%.1f", $1 / 1048576 }')
  figure bundle_mib "$mib"
  figure mpirun "$(command -v mpirun)"
  PHASE_NOTE="$mib MiB, its mpirun, MPI, HDF5, ... first on every path"
}

ph_configure() {
  local log=$1
  run_logged "$log" "$root/launch/build-gpu.sh" --build-dir "$build" --configure-only || return
  local cache=$build/CMakeCache.txt torch_dir
  torch_dir=$(sed -n 's/^Torch_DIR:PATH=//p' "$cache")
  figure libtorch "$(sed -n 's/^set(PACKAGE_VERSION "\(.*\)")/\1/p' "$torch_dir/TorchConfigVersion.cmake" 2>/dev/null || echo '?')" str
  figure torch_dir "$torch_dir"
  figure nccl_library "$(sed -n 's/^NCCL_LIBRARY:FILEPATH=//p' "$cache")"
  figure cxx_standard "$(grep -o 'C++[0-9]*' "$log" | tail -n1)"
}

ph_build() {
  local log=$1
  local -a targets=()
  # A dry run builds what the GPU phases run; the real run builds the whole trainer-only set.
  ((dry_run)) && targets=(--target fer-dist-train fer-tiny-dataset test_nccl_communicator test_gpu_dist
                             test_checkpoint_cuda test_train_cuda)
  run_logged "$log" cmake --build "$build" -j "$jobs" "${targets[@]}" >/dev/null || return
  figure targets "$( ((dry_run)) && echo "${targets[*]:1}" || echo all)"
  [[ -x "$train" ]] || { PHASE_NOTE="no $train after the build"; return 1; }
}

e2e_data=$out/data/e2e sweep_data=$out/data/sweep
ph_dataset() {
  local log=$1
  run_logged "$log" "$bin/fer-tiny-dataset" "$e2e_data" --per-class 50 --size 48 --seed 3 --overwrite || return
  run_logged "$log" "$bin/fer-tiny-dataset" "$sweep_data" --per-class 2000 --size 48 --seed 4 --overwrite || return
  figure e2e_train_images 280
  figure sweep_train_images 11200
}

ph_runtime() {
  local log=$1 line
  run_logged "$log" "$train" --config "$root/configs/fer2013_resnet9.yaml" --data "$e2e_data" \
    --out "$out/runs/runtime" --device cuda --validate-only >/dev/null || return
  line=$(grep -o 'CUDA runtime .*' "$log" | head -n1)
  [[ -n "$line" ]] || { PHASE_NOTE="fer-dist-train logged no runtime line"; return 1; }
  figure runtime "$line"
  PHASE_NOTE=$line
}

# The GPU tests: label gpu (tests/gpu), and the GPU cases of other suites, whose suite name
# ends in Cuda (e.g. DeviceSplitCuda.* in test_data_device_batch). ctest runs in the build folder (--test-dir
# needs CMake 3.20).
kGpuTestRegex='Cuda\.'
ph_gpu_tests() {
  local log=$1 rc=0
  pushd "$build" >/dev/null
  if ((dry_run)); then
    run_logged "$log" ctest -N -L gpu >/dev/null || rc=$?
    run_logged "$log" ctest -N -R "$kGpuTestRegex" -LE gpu >/dev/null || rc=$?
    figure tests "$(sed -n 's/^Total Tests: //p' "$log" | awk '{ n += $1 } END { print n + 0 }')"
    PHASE_NOTE="$(sed -n 's/^ *Test *#[0-9]*: //p' "$log" | tr '\n' ' ')"
    show ctest -L gpu --output-on-failure
    show ctest -R "$kGpuTestRegex" -LE gpu --output-on-failure
    PHASE_STATUS=dry-run
  else
    run_logged "$log" ctest -L gpu --output-on-failure --timeout "$(left)" || rc=$?
    run_logged "$log" ctest -R "$kGpuTestRegex" -LE gpu --output-on-failure --timeout "$(left)" || rc=$?
    PHASE_NOTE=$(grep -E 'tests passed|tests failed' "$log" | paste -sd ';' | sed 's/;/; /g')
    figure summary "$PHASE_NOTE"
    figure did_not_run "$(grep -c '^[[:space:]]*[0-9]* - .*(\(Skipped\|Not Run\|Disabled\))' "$log" || true)"
  fi
  popd >/dev/null
  return "$rc"
}

# A fer-dist-train run: in a dry run its line is printed and checked with --validate-only.
# train_run LOG RUN_DIR ARGS...
train_run() {
  local log=$1 run=$2; shift 2
  local -a cmd=("$train" --device "$device" --out "$run" --no-report "$@" "${cpu_args[@]}")
  if ((dry_run)); then
    show "${cmd[@]}"
    run_logged "$log" "${cmd[@]}" --validate-only >/dev/null
    return
  fi
  run_logged "$log" "${cmd[@]}"
}
summary_value() {  # summary_value RUN KEY: a number from RUN/summary.json
  sed -n "s/^  \"$2\": \\([-0-9.eE+]*\\),\\{0,1\\}\$/\\1/p" "$1/summary.json" 2>/dev/null | head -n1
}

ph_e2e() {
  local log=$1 run=$out/runs/e2e
  rm -rf "$run"
  local steps=$((280 / 64))  # per epoch at batch 64, drop last
  local -a recipe=(--config "$root/configs/fer2013_resnet9.yaml" --data "$e2e_data"
                   --set train.batch_size=64 --set train.epochs=3 --set train.log_every=1)
  train_run "$log" "$run" "${recipe[@]}" --set train.max_steps=$((2 * steps)) || return
  train_run "$log" "$run" "${recipe[@]}" --resume auto || return
  if ((dry_run)); then
    PHASE_STATUS=dry-run PHASE_NOTE="2 runs printed, their flags and config checked (--validate-only)"
    return
  fi
  local got device_used
  got=$(summary_value "$run" steps)
  device_used=$(sed -n 's/^  "device": "\(.*\)",$/\1/p' "$run/summary.json")
  figure steps "${got:-0}"
  figure device "${device_used:-?}"
  figure images_per_s "$(summary_value "$run" train_images_per_s)"
  PHASE_NOTE="$got steps on ${device_used:-?}, 2 epochs + --resume auto for a third"
  grep -q 'resuming from' "$log" || { PHASE_NOTE="the second run did not resume"; return 1; }
  [[ "$got" == $((3 * steps)) && "$device_used" == "$device"* ]] ||
    { PHASE_NOTE="summary: steps $got (want $((3 * steps))), device $device_used (want $device)"; return 1; }
}

sweep_rows=()  # "precision channels_last batch images_per_s gpu_mib status"
ph_sweep() {
  local log=$1 batch precision layout
  for precision in fp32 bf16; do for layout in false true; do for batch in 128 512; do
    local name=$precision-cl$([[ $layout == true ]] && echo 1 || echo 0)-b$batch
    local run=$out/runs/sweep-$name ips="n/a" mib="n/a" status=ok
    rm -rf "$run"
    if (($(left) < 20)); then sweep_rows+=("$precision $layout $batch n/a n/a skipped(time)"); continue; fi
    local mem_pid="" memlog=$out/logs/sweep-$name.mem
    if ((!dry_run)) && command -v nvidia-smi >/dev/null; then
      nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 250 >"$memlog" 2>/dev/null &
      mem_pid=$!
    fi
    train_run "$log" "$run" --config "$root/configs/fer2013_resnet9.yaml" --data "$sweep_data" \
      --set train.batch_size=$batch --set train.max_steps=$sweep_steps --set train.epochs=1000 \
      --set train.eval_every=1000 --set checkpoint.every_epochs=1000 --set model.sync_bn=on \
      --set dist.force_collectives=true --set train.precision=$precision \
      --set model.channels_last=$layout || status=failed
    [[ -n "$mem_pid" ]] && { kill "$mem_pid" 2>/dev/null; wait "$mem_pid" 2>/dev/null || true; }
    if ((dry_run)); then
      [[ "$status" == ok ]] && status=dry-run
    elif [[ "$status" == ok ]]; then
      ips=$(summary_value "$run" train_images_per_s)
      ips=$(awk -v v="${ips:-0}" 'BEGIN { printf "%.1f", v }')
      mib=$(sort -n "$memlog" 2>/dev/null | tail -n1 || true)
      figure "${name}_images_per_s" "$ips"
      [[ -n "$mib" ]] && figure "${name}_gpu_mib" "$mib"
    fi
    sweep_rows+=("$precision $layout $batch ${ips:-n/a} ${mib:-n/a} $status")
  done; done; done
  local r
  for r in "${sweep_rows[@]}"; do [[ "$r" == *failed ]] && return 1; done
  if ((dry_run)); then
    PHASE_STATUS=dry-run PHASE_NOTE="${#sweep_rows[@]} runs printed, checked (--validate-only)"
  fi
  return 0
}

ph_mpirun2() {
  local log=$1 run=$out/runs/mpirun2
  rm -rf "$run"
  local -a cmd=(mpirun -np 2 --bind-to none -x OMP_NUM_THREADS=4 "$train" --device "$device"
                --config "$root/configs/fer2013_resnet9.yaml" --data "$sweep_data" --out "$run"
                --no-report --set train.batch_size=128 --set train.max_steps="$mpirun_steps"
                --set train.epochs=1000 --set train.eval_every=1000 --set checkpoint.every_epochs=1000
                "${cpu_args[@]}")
  if ((dry_run)); then
    show "${cmd[@]}"
    run_logged "$log" "${cmd[@]:7}" --validate-only >/dev/null || return
    PHASE_STATUS=dry-run PHASE_NOTE="printed, checked (--validate-only, one process)"
    return
  fi
  run_logged "$log" "${cmd[@]}" || return
  local world ips
  world=$(summary_value "$run" world_size)
  ips=$(awk -v v="$(summary_value "$run" train_images_per_s)" 'BEGIN { printf "%.1f", v }')
  figure world_size "${world:-0}"
  figure images_per_s "$ips"
  PHASE_NOTE="$world ranks, $ips images/s (all ranks)"
  [[ "$world" == 2 ]] || { PHASE_NOTE="summary.json says world_size ${world:-?}, want 2"; return 1; }
}

# --- run --------------------------------------------------------------------------------------
echo "device_check: $( ((dry_run)) && echo "dry run, " )budget $budget_s s, build $build, results $out"
phase versions 30 5 - ph_versions
if [[ -n "$bundle" ]]; then phase bundle 10 2 - ph_bundle; fi
phase configure 90 20 bundle ph_configure
phase build "$build_budget_s" 30 "bundle configure" ph_build
phase dataset 30 5 "bundle configure build" ph_dataset
phase runtime 30 5 "bundle configure build dataset" ph_runtime
if ((dry_run || gpu_count > 0)) || [[ "$device" == cpu ]]; then
  phase gpu_tests 150 30 "bundle configure build dataset runtime" ph_gpu_tests
  phase e2e 90 30 "bundle configure build dataset runtime" ph_e2e
  phase sweep 150 40 "bundle configure build dataset runtime" ph_sweep
  if ((gpus_planned >= 2)); then
    phase mpirun2 60 30 "bundle configure build dataset runtime" ph_mpirun2
  else
    names+=(mpirun2) statuses+=(skipped) seconds+=(0) notes+=("needs 2 GPUs, this machine has $gpu_count") figures+=("{}")
  fi
else
  for p in gpu_tests e2e sweep mpirun2; do
    names+=("$p") statuses+=(skipped) seconds+=(0) notes+=("no GPU") figures+=("{}")
  done
fi

# --- results ----------------------------------------------------------------------------------
total=$(($(now) - started))
failed=0 skipped=() incomplete=0
for i in "${!names[@]}"; do
  [[ "${statuses[i]}" == failed || "${statuses[i]}" == timeout ]] && failed=1
  if [[ "${statuses[i]}" == skipped ]]; then
    skipped+=("${names[i]} (${notes[i]})")
    [[ "${notes[i]}" == *"of the budget left"* ]] && incomplete=1
  fi
done
{
  printf '{\n  "tool": "tests/gpu/device_check.sh",\n  "date": %s,\n  "host": %s,\n' \
    "$(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)")" "$(json_str "$(uname -n)")"
  printf '  "dry_run": %s,\n  "budget_s": %d,\n  "seconds": %d,\n  "ok": %s,\n' \
    "$( ((dry_run)) && echo true || echo false)" "$budget_s" "$total" \
    "$( ((failed)) && echo false || echo true)"
  printf '  "phases": [\n'
  for i in "${!names[@]}"; do
    printf '    {"name": %s, "status": %s, "seconds": %d, "note": %s, "figures": %s}%s\n' \
      "$(json_str "${names[i]}")" "$(json_str "${statuses[i]}")" "${seconds[i]}" \
      "$(json_str "${notes[i]}")" "${figures[i]}" "$( ((i + 1 < ${#names[@]})) && echo ,)"
  done
  printf '  ],\n  "sweep": [\n'
  for i in "${!sweep_rows[@]}"; do
    read -r pr cl b ips mib st <<<"${sweep_rows[i]}"
    printf '    {"precision": "%s", "channels_last": %s, "batch_per_gpu": %d, "steps": %d, "sync_bn": true, "images_per_s": %s, "gpu_memory_mib": %s, "status": %s}%s\n' \
      "$pr" "$cl" "$b" "$sweep_steps" "$([[ $ips =~ ^[0-9.]+$ ]] && echo "$ips" || echo null)" \
      "$([[ $mib =~ ^[0-9.]+$ ]] && echo "$mib" || echo null)" "$(json_str "$st")" \
      "$( ((i + 1 < ${#sweep_rows[@]})) && echo ,)"
  done
  printf '  ],\n  "skipped": ['
  for i in "${!skipped[@]}"; do printf '%s%s' "$( ((i)) && echo ', ')" "$(json_str "${skipped[i]}")"; done
  printf ']\n}\n'
} >"$out/results.json"

{
  echo "device check $(date -u +%Y-%m-%d) on $(uname -n)$( ((dry_run)) && echo ' (dry run: GPU figures not measured)'), ${total} s of ${budget_s} s"
  printf '%-10s %-8s %5s  %s\n' phase status s note
  for i in "${!names[@]}"; do
    printf '%-10s %-8s %5d  %s\n' "${names[i]}" "${statuses[i]}" "${seconds[i]}" "${notes[i]}"
  done
  echo
  echo "throughput, 1 $([[ $device == cuda ]] && echo GPU || echo 'CPU (a test of the script)'), $sweep_steps steps, SyncBN on (images/s; peak GPU MiB):"
  printf '%-10s %-14s %-14s %-12s %-10s\n' precision channels_last "batch per GPU" "img/s" "MiB"
  for r in "${sweep_rows[@]}"; do
    read -r pr cl b ips mib st <<<"$r"
    [[ "$st" == ok ]] || { ips=$st; mib=$st; }
    printf '%-10s %-14s %-14s %-12s %-10s\n' "$pr" "$cl" "$b" "$ips" "$mib"
  done
  ((${#sweep_rows[@]})) || echo "(not run)"
  ((${#skipped[@]} == 0)) || printf 'skipped: %s\n' "${skipped[@]}"
} | tee "$out/results.txt"
echo "device_check: $out/results.json"
if ((failed)); then exit 1; elif ((incomplete)); then exit 3; fi
