#!/usr/bin/env bash
# fer-dist-train data parallel on one machine under Open MPI's mpirun, resumable.
#
#   launch/mpirun.sh NP CONFIG DATA RUN_DIR [fer-dist-train args...]
#
#   launch/mpirun.sh 2 configs/demo_cpu.yaml data/synth runs/dp2 --set train.batch_size=32
#   FER_DEVICE=cuda launch/mpirun.sh 8 configs/fer2013_resnet9.yaml data/fer2013 runs/r9 \
#       --set train.batch_size=16            # one GPU per rank (cuda:<local rank>), NCCL
#
# Always passes --resume auto: run the same command again after a preemption (exit 75) or a
# crash and it continues from the newest checkpoint. Each rank gets OMP_NUM_THREADS =
# cores / NP (at least 1) unless OMP_NUM_THREADS is set. Environment:
#   FER_BIN      fer-dist-train (default: build/bin/fer-dist-train of this repository)
#   FER_DEVICE   cpu | cuda | auto (default: auto)
#   MPIRUN       the launcher (default: mpirun); MPIRUN_ARGS extra launcher flags
# As root (containers) Open MPI also needs OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1.
set -euo pipefail

if (($# < 4)); then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
np=$1 config=$2 data=$3 run_dir=$4
shift 4
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${FER_BIN:-$root/build/bin/fer-dist-train}
[[ -x "$bin" ]] || { echo "mpirun.sh: $bin not found (build first, or set FER_BIN)" >&2; exit 2; }
cores=$(nproc)
threads=${OMP_NUM_THREADS:-$((cores / np > 0 ? cores / np : 1))}
oversubscribe=()
((np > cores)) && oversubscribe=(--oversubscribe)

# shellcheck disable=SC2086  # MPIRUN_ARGS is a list of flags
set +e
"${MPIRUN:-mpirun}" -np "$np" "${oversubscribe[@]}" --bind-to none -x OMP_NUM_THREADS="$threads" \
  ${MPIRUN_ARGS:-} "$bin" --config "$config" --data "$data" --out "$run_dir" --resume auto \
  --threads "$threads" --device "${FER_DEVICE:-auto}" "$@"
rc=$?
set -e
if ((rc == 75)); then
  echo "mpirun.sh: preempted; the checkpoint is in $run_dir/checkpoints: run the same command" \
       "again to continue" >&2
fi
exit "$rc"
