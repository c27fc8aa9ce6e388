#!/usr/bin/env bash
# Reproduces the diagnosis of issue 15 item 1's float32 drift (N ranks x B against 1 x N*B):
# packs the Fashion-MNIST subset of tests/mpi/train_real_images_test.cpp (1,600 train images at
# 32x32) plain and with a fixed +-2 gray-level dither, then runs split_drift (the trainer's step,
# reference recipe at width 0.125, global batch 24, dropout 0.2, 10 steps) for:
#   N = 2, 3, 4 ranks on the plain set (per-step loss gap, kink crossings, per-tensor gradients)
#   no split, every weight x (1 + 1e-7 u) at step 0     (a generic rounding-size perturbation)
#   N = 2, 3, 4 on the dithered set                     (no flat black background: no exact ties)
#   N = 2 with a constant lr, and with dropout 0        (the schedule's and dropout's part)
#   N = 2, 3, 4 in float64, 20 steps                     (the same steps with rounding at 1e-16)
#   N = 2 and 3 with model.channels_last (NHWC), and NHWC perturbed without a split
# and bn_layout (LibTorch's NHWC batch norm statistics against NCHW's and float64).
# Usage: tests/bench/fidelity/split_drift.sh <build dir> [work dir]   (needs targets
#        fashion_folder, split_drift, bn_layout and fer-pack; about 30 s on one core).
#        VERBOSE=1 prints every step's full report instead of the loss lines.
set -euo pipefail
build=${1:?usage: split_drift.sh <build dir> [work dir]}
work=${2:-$(mktemp -d /tmp/fer-split-drift.XXXXXX)}
bin=$build/bin
mkdir -p "$work"
for d in 0 2; do
  if [ ! -f "$work/data_d$d/manifest.json" ]; then
    "$bin/fashion_folder" "$work/src_d$d" --dither "$d" >/dev/null
    "$bin/fer-pack" imagefolder "$work/src_d$d" "$work/data_d$d" -q --size 32 >/dev/null
  fi
done
show() {
  if [ -n "${VERBOSE:-}" ]; then cat; else grep -E '^split_drift|^step|argmax'; fi
}
for n in 2 3 4; do "$bin/split_drift" "$work/data_d0" --n "$n" | show; done
"$bin/split_drift" "$work/data_d0" --perturb 1e-7 | show
for n in 2 3 4; do "$bin/split_drift" "$work/data_d2" --n "$n" | show; done
"$bin/split_drift" "$work/data_d0" --n 2 --const-lr | show
"$bin/split_drift" "$work/data_d0" --n 2 --dropout 0 | show
for n in 2 3 4; do "$bin/split_drift" "$work/data_d0" --n "$n" --fp64 --steps 20 | show; done
for n in 2 3; do "$bin/split_drift" "$work/data_d0" --n "$n" --channels-last | show; done
"$bin/split_drift" "$work/data_d0" --perturb 1e-7 --channels-last | show
"$bin/bn_layout"
