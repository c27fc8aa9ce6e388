#!/usr/bin/env bash
# Configures and builds fer-dist against a CUDA-enabled LibTorch (the libtorch archive, or the
# one inside a pip-installed torch) with the NCCL backend.
#
# Usage: launch/build-gpu.sh [--build-dir DIR] [--full] [--nccl on|auto|off] [--cxx-std 17|20]
#                            [--jobs N] [--target T]... [--configure-only] [--no-tests]
#                            [--allow-cuda-mismatch] [-- CMAKE_ARGS...]
#
# LibTorch is found, first hit wins, through
#   1. Torch_DIR (environment): the folder holding TorchConfig.cmake;
#   2. CMAKE_PREFIX_PATH (environment): a prefix with share/cmake/Torch (the libtorch archive);
#   3. $PYTHON -c 'import torch; print(torch.utils.cmake_prefix_path)' (pip's torch; PYTHON
#      defaults to python3);
#   4. CMake's default search (Debian's CPU-only libtorch-dev: the GPU code builds, cannot run).
# The C++ standard follows that LibTorch (C++17, or 20 when its CMake target asks for it);
# --cxx-std overrides it. NCCL comes from the CUDA toolkit, else from pip's nvidia-nccl wheel
# (only libnccl.so.2 there), else NCCL_INCLUDE_DIR / NCCL_LIBRARY from the environment; with a
# CUDA LibTorch the NCCL backend is required (--nccl on), so a missing NCCL is a configure error.
# A CUDA toolkit whose major differs from the LibTorch's CUDA is refused: the trainer would load
# two CUDA runtimes (set CUDAToolkit_ROOT to a matching toolkit; --allow-cuda-mismatch builds
# anyway, and fer-dist-train then refuses to start).
#
#   --build-dir DIR     build folder (default: build-gpu in the repository root)
#   --full              also fer-report, fer-predict, fer-pack, fer-synth (needs OpenCV); the
#                       default is the trainer-only set (-DFER_TRAINER_ONLY=ON)
#   --nccl MODE         FER_WITH_NCCL (default: on with a CUDA LibTorch, else auto)
#   --jobs N            parallel build jobs (default: all cores)
#   --target T          build only these targets (repeatable; default: all)
#   --configure-only    stop after cmake's configure step
#   --no-tests          -DFER_BUILD_TESTS=OFF (no GoogleTest needed)
# The dependency bundle (launch/gpu/bundle-deps.sh) is used when its env.sh has been sourced.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "build-gpu: error: $*" >&2; exit 1; }
note() { echo "build-gpu: $*"; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$root/build-gpu"
trainer_only=ON
nccl=""
cxx_std=""
jobs=$(nproc)
targets=()
configure_only=0
tests=ON
allow_mismatch=0
extra=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --build-dir) build=${2:?--build-dir needs a folder}; shift 2 ;;
    --full) trainer_only=OFF; shift ;;
    --nccl) nccl=${2:?--nccl needs on, auto or off}; shift 2 ;;
    --cxx-std) cxx_std=${2:?--cxx-std needs 17 or 20}; shift 2 ;;
    --jobs) jobs=${2:?--jobs needs a number}; shift 2 ;;
    --target) targets+=("${2:?--target needs a target name}"); shift 2 ;;
    --configure-only) configure_only=1; shift ;;
    --no-tests) tests=OFF; shift ;;
    --allow-cuda-mismatch) allow_mismatch=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
case "$nccl" in ""|on|auto|off) ;; *) die "--nccl must be on, auto or off, not '$nccl'" ;; esac
case "$cxx_std" in ""|17|20|23) ;; *) die "--cxx-std must be 17 or 20, not '$cxx_std'" ;; esac
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive number, not '$jobs'"
command -v cmake >/dev/null || die "cmake not found (pip install cmake, or apt-get install cmake)"
python=${PYTHON:-python3}

# --- LibTorch ---------------------------------------------------------------------------------
torch_dir="" torch_how=""
if [[ -n "${Torch_DIR:-}" ]]; then
  [[ -f "$Torch_DIR/TorchConfig.cmake" ]] || die "Torch_DIR=$Torch_DIR holds no TorchConfig.cmake"
  torch_dir=$Torch_DIR torch_how="Torch_DIR"
fi
if [[ -z "$torch_dir" && -n "${CMAKE_PREFIX_PATH:-}" ]]; then
  IFS=':;' read -r -a prefixes <<<"$CMAKE_PREFIX_PATH"
  for p in "${prefixes[@]}"; do
    for d in "$p/share/cmake/Torch" "$p/lib/cmake/Torch" "$p/Torch"; do
      if [[ -f "$d/TorchConfig.cmake" ]]; then torch_dir=$d torch_how="CMAKE_PREFIX_PATH"; break 2; fi
    done
  done
fi
if [[ -z "$torch_dir" ]] && command -v "$python" >/dev/null; then
  if prefix=$("$python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)' 2>/dev/null) &&
     [[ -f "$prefix/Torch/TorchConfig.cmake" ]]; then
    torch_dir="$prefix/Torch" torch_how="$python's torch"
  fi
fi
if [[ -n "$torch_dir" ]]; then
  torch_dir=$(cd "$torch_dir" && pwd)
  torch_version=$(sed -n 's/^set(PACKAGE_VERSION "\(.*\)")/\1/p' "$torch_dir/TorchConfigVersion.cmake" 2>/dev/null || true)
  note "LibTorch ${torch_version:-?} from $torch_how: $torch_dir"
else
  torch_how="CMake's default search"
  note "no CUDA LibTorch named (Torch_DIR, CMAKE_PREFIX_PATH, $python's torch): using $torch_how" \
       "(Debian's libtorch-dev is CPU-only: the GPU code builds but cannot run)"
fi

# The CUDA major LibTorch was built with: libtorch_cuda.so's NEEDED libcudart[-hash].so.N.
torch_cuda=""
if [[ -n "$torch_dir" ]]; then
  for lib in "$torch_dir/../../../lib/libtorch_cuda.so" "$torch_dir/../../lib/libtorch_cuda.so"; do
    [[ -f "$lib" ]] || continue
    if command -v readelf >/dev/null; then
      torch_cuda=$(readelf -d "$lib" | sed -n 's/.*NEEDED.*\[libcudart[-0-9a-f]*\.so\.\([0-9]*\).*/\1/p' | head -n1)
    fi
    [[ -n "$torch_cuda" ]] || torch_cuda=$("$python" -c 'import torch; print(torch.version.cuda.split(".")[0])' 2>/dev/null || true)
    [[ -n "$torch_cuda" ]] || torch_cuda="?"
    break
  done
fi

# --- CUDA toolkit -----------------------------------------------------------------------------
nvcc=""
for n in "${CUDAToolkit_ROOT:+$CUDAToolkit_ROOT/bin/nvcc}" "$(command -v nvcc || true)" /usr/local/cuda/bin/nvcc; do
  [[ -n "$n" && -x "$n" ]] && { nvcc=$n; break; }
done
toolkit_version=""
[[ -n "$nvcc" ]] && toolkit_version=$("$nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
if [[ -n "$toolkit_version" ]]; then
  note "CUDA toolkit $toolkit_version: $nvcc"
  extra_cuda=(-DCUDAToolkit_ROOT="$(dirname "$(dirname "$nvcc")")")
else
  note "no CUDA toolkit (nvcc) found: no NCCL backend unless CUDAToolkit_ROOT is set"
  extra_cuda=()
fi
if [[ -n "$torch_cuda" && "$torch_cuda" != "?" && -n "$toolkit_version" &&
      "${toolkit_version%%.*}" != "$torch_cuda" ]]; then
  msg="LibTorch is built for CUDA $torch_cuda (libcudart.so.$torch_cuda) but nvcc is CUDA $toolkit_version: the trainer would load two CUDA runtimes. Set CUDAToolkit_ROOT to a CUDA $torch_cuda toolkit (e.g. /usr/local/cuda-$torch_cuda.x)"
  ((allow_mismatch)) || die "$msg, or pass --allow-cuda-mismatch"
  echo "build-gpu: warning: $msg" >&2
fi

# --- NCCL -------------------------------------------------------------------------------------
[[ -n "$nccl" ]] || { [[ -n "$torch_cuda" ]] && nccl=on || nccl=auto; }
nccl_args=()
if [[ "$nccl" != off && -z "${NCCL_LIBRARY:-}" ]]; then
  toolkit_lib=$(dirname "$(dirname "${nvcc:-/nonexistent/bin/nvcc}")")
  if ! compgen -G "$toolkit_lib/lib*/libnccl.so*" >/dev/null && command -v "$python" >/dev/null; then
    if pip_nccl=$("$python" -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null) &&
       [[ -f "$pip_nccl/include/nccl.h" ]]; then
      lib=$(compgen -G "$pip_nccl/lib/libnccl.so*" | head -n1 || true)
      [[ -n "$lib" ]] && nccl_args=(-DNCCL_INCLUDE_DIR="$pip_nccl/include" -DNCCL_LIBRARY="$lib")
      note "NCCL from pip's nvidia-nccl: $lib"
    fi
  fi
elif [[ "$nccl" != off ]]; then
  nccl_args=(-DNCCL_LIBRARY="$NCCL_LIBRARY" ${NCCL_INCLUDE_DIR:+-DNCCL_INCLUDE_DIR="$NCCL_INCLUDE_DIR"})
fi

# --- configure and build ----------------------------------------------------------------------
args=(-S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DFER_TRAINER_ONLY="$trainer_only"
      -DFER_BUILD_TESTS="$tests" -DFER_WITH_NCCL="${nccl^^}" "${extra_cuda[@]}" "${nccl_args[@]}")
[[ -n "$torch_dir" ]] && args+=(-DTorch_DIR="$torch_dir")
[[ -n "$cxx_std" ]] && args+=(-DCMAKE_CXX_STANDARD="$cxx_std")
[[ -n "${MPI_HOME:-}" && -x "$MPI_HOME/bin/mpicc" ]] && args+=(-DMPI_C_COMPILER="$MPI_HOME/bin/mpicc")
note "cmake ${args[*]} ${extra[*]}"
cmake "${args[@]}" "${extra[@]}"
((configure_only)) && { note "configured $build"; exit 0; }
build_args=(--build "$build" -j "$jobs")
((${#targets[@]})) && build_args+=(--target "${targets[@]}")
note "cmake ${build_args[*]}"
cmake "${build_args[@]}"
note "built $build/bin/fer-dist-train (LibTorch ${torch_version:-from $torch_how}, CUDA" \
     "${torch_cuda:-none}, trainer-only $trainer_only)"
