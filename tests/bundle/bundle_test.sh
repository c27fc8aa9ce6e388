#!/usr/bin/env bash
# Tests launch/gpu/bundle-deps.sh the way a GPU machine uses it: the trainer-only set configured
# and built against the bundle alone, and a 2-rank run with the bundle's mpirun. The system's
# copies of every package the bundle holds (headers, libraries, MPI's launcher and plugins,
# /etc/openmpi) and OpenCV's headers are hidden in a private mount namespace (unshare -m, files
# bind-mounted over with /dev/null), so a piece missing from the bundle fails the build or the run
# instead of being found on this machine.
#
# Usage: tests/bundle/bundle_test.sh STEP WORK_DIR [--jobs N]
#   make     launch/gpu/bundle-deps.sh WORK_DIR/bundle (.deb files cached between runs, see its
#            --help; FER_BUNDLE_CACHE overrides the cache folder)
#   dry-run  hidden system copies: tests/gpu/device_check.sh --dry-run --bundle WORK_DIR/bundle
#            (configure + build of the GPU phases' targets, datasets, every command line)
#   mpirun   hidden system copies: the bundle's mpirun -np 2 runs the dry run's fer-dist-train
#            (CPU, 2 epochs) on its e2e dataset; summary.json must say 2 ranks
#   canary   hidden system copies: a copy of the bundle without libhdf5_serial must fail to
#            configure (the hiding is live: the system's HDF5 is not found instead)
#   all      the four in order
# CTest runs them as bundle_make, device_check_dry_run, bundle_mpirun_np2 and bundle_canary
# (labels bundle, e2e; `ctest -L bundle`). Without the rights for a mount namespace (not root, no
# CAP_SYS_ADMIN) the steps that need one exit 77 (skipped), saying why.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "bundle_test: error: $*" >&2; exit 1; }
kSkip=77

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
step=${1:-}
[[ "$step" == -h || "$step" == --help ]] && { usage; exit 0; }
[[ "$step" =~ ^(make|dry-run|mpirun|canary|all|inside)$ && -n "${2:-}" ]] || { usage >&2; exit 2; }
work=$2
shift 2
inner=""
if [[ "$step" == inside ]]; then inner=${1:?}; shift; fi
jobs=$(nproc)
while (($#)); do
  case "$1" in
    --jobs) jobs=${2:?--jobs needs a number}; shift 2 ;;
    *) die "unknown argument $1" ;;
  esac
done
mkdir -p "$work"
work=$(cd "$work" && pwd)
bundle=$work/bundle
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

# Hides the system's copies of what the bundle holds (in the namespace this process runs in),
# then puts the bundle first on every search path. Development and MPI packages are hidden whole
# (headers, CMake files, launcher, plugins: a file the bundle forgot must not be found here);
# of a runtime library package only the files the bundle holds (FILES, which lists them even when
# a canary deleted one), because this machine's LibTorch loads other libraries of the same packages
# (libbrotlienc beside the bundle's libbrotlidec) that a GPU machine's LibTorch brings itself.
# OpenCV's headers are hidden too: the trainer-only set must not need them.
hide_system() {
  local b=$1 n=0 f p whole
  [[ -f "$b/PACKAGES" && -f "$b/FILES" ]] || die "$b/PACKAGES or FILES missing: run the make step first"
  declare -A held=()
  while IFS= read -r f; do held[/$f]=1; done <"$b/FILES"
  while read -r p _; do
    dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -q '^installed$' || continue
    whole=0
    [[ "$p" =~ -dev$|^openmpi-|^libopenmpi|^libpmix|^hdf5-helpers$ ]] && whole=1
    while IFS= read -r f; do
      case "$f" in /usr/share/doc/* | /usr/share/man/* | /usr/share/lintian/*) continue ;; esac
      [[ -f "$f" && ! -L "$f" ]] || continue
      ((whole)) || [[ -n "${held[${f/#\/lib\//\/usr\/lib\/}]:-}" ]] || continue
      mount --bind /dev/null "$f"
      n=$((n + 1))
    done < <(dpkg -L "$p")
  done <"$b/PACKAGES"
  local empty
  empty=$(mktemp -d)
  for f in /usr/include/opencv4 /usr/include/opencv2; do
    [[ -d "$f" ]] && { mount --bind "$empty" "$f"; n=$((n + 1)); }
  done
  echo "bundle_test: hid $n files and folders of this system (the $(wc -l <"$b/PACKAGES") packages the bundle holds files of, OpenCV's headers)"
  # shellcheck disable=SC1091
  . "$b/env.sh"
}

# in_namespace STEP: re-runs this script's STEP inside a private mount namespace.
in_namespace() {
  if ! unshare --mount --propagation private true 2>/dev/null; then
    echo "bundle_test: SKIPPED: no private mount namespace here (unshare -m needs root or" \
         "CAP_SYS_ADMIN): the system's copies cannot be hidden, so the bundle cannot be tested" >&2
    exit "$kSkip"
  fi
  exec unshare --mount --propagation private "$0" inside "$work" "$1" --jobs "$jobs"
}

step_make() {
  "$root/launch/gpu/bundle-deps.sh" "$bundle" ${FER_BUNDLE_CACHE:+--cache "$FER_BUNDLE_CACHE"}
}

step_dry_run() {
  hide_system "$bundle"
  "$root/tests/gpu/device_check.sh" --dry-run --bundle "$bundle" --build-dir "$work/build" \
    --out "$work/check" --jobs "$jobs" --budget-s 1700 --build-budget-s 1500
}

step_mpirun() {
  hide_system "$bundle"
  local mpirun train=$work/build/bin/fer-dist-train run=$work/run-np2
  mpirun=$(command -v mpirun)
  [[ "$mpirun" == "$bundle"/* ]] || die "mpirun is $mpirun, not the bundle's"
  [[ -x "$train" && -f "$work/check/data/e2e/manifest.json" ]] ||
    die "no $train or dataset: run the dry-run step first"
  rm -rf "$run"
  printf 'model: {width: 0.125, dropout: 0.2}\ntrain: {epochs: 2, batch_size: 16, log_every: 5}\n' \
    >"$work/np2.yaml"
  "$mpirun" -np 2 --bind-to none -x OMP_NUM_THREADS=1 "$train" --device cpu \
    --config "$work/np2.yaml" --data "$work/check/data/e2e" --out "$run" --threads 1
  grep -q '"world_size": 2' "$run/summary.json" || die "summary.json does not say 2 ranks"
  # The MPI library the ranks ran with is the bundle's.
  local libmpi
  libmpi=$(ldd "$train" | sed -n 's/.*libmpi\.so\.[0-9]* => \([^ ]*\).*/\1/p')
  [[ "$libmpi" == "$bundle"/* ]] || die "fer-dist-train loads libmpi from ${libmpi:-nowhere}"
  echo "bundle_test: 2-rank run with the bundle's mpirun: ok"
}

step_canary() {
  hide_system "$bundle"
  local canary=$work/canary-bundle
  rm -rf "$canary" "$work/canary-build"
  cp -a "$bundle" "$canary"
  rm -f "$canary"/usr/lib/x86_64-linux-gnu/libhdf5_serial.so*
  sed -i "s|^FER_BUNDLE=.*|FER_BUNDLE='$canary'|" "$canary/env.sh"
  # shellcheck disable=SC1091
  . "$canary/env.sh"
  if "$root/launch/build-gpu.sh" --build-dir "$work/canary-build" --configure-only \
       >"$work/canary.log" 2>&1; then
    tail -n 20 "$work/canary.log"
    die "canary: the bundle without libhdf5_serial configured: the system's HDF5 is not hidden"
  fi
  grep -i 'hdf5' "$work/canary.log" | head -n 5 | sed 's/^/  /'
  echo "bundle_test: canary: a bundle without libhdf5_serial fails to configure, as it must"
}

case "$step" in
  make) step_make ;;
  dry-run | mpirun | canary) in_namespace "$step" ;;
  inside)
    case "$inner" in
      dry-run) step_dry_run ;;
      mpirun) step_mpirun ;;
      canary) step_canary ;;
      *) die "unknown inner step $inner" ;;
    esac ;;
  all)
    step_make
    for s in dry-run mpirun canary; do "$0" "$s" "$work" --jobs "$jobs"; done ;;
esac
