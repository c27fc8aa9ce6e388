#!/usr/bin/env bash
# Installs every Debian package fer-dist needs to build, test and benchmark.
# Idempotent and non-interactive: packages already installed are skipped, and apt-get runs only
# when something is missing. Usage: launch/install-deps.sh [--bench]
#   --bench   also install the Python reference stack (python3-torch, torchvision, h5py, PIL)
#             used by tests/bench and shared/reference.
set -euo pipefail

packages=(
  build-essential cmake ccache pkg-config git
  libtorch-dev                        # LibTorch (CPU) + its headers
  libopenblas0-openmp                 # fast BLAS for LibTorch (the default reference BLAS is ~20x slower)
  libopenmpi-dev openmpi-bin          # MPI communicator and launcher
  libhdf5-dev                         # dataset shards
  libssl-dev                          # SHA-256 of shards (libcrypto)
  libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev libopencv-objdetect-dev
  libopencv-videoio-dev               # fer-predict on videos/cameras (FFmpeg backend: libavcodec59)
  opencv-data                         # Haar cascades for fer-predict
  libspdlog-dev libfmt-dev libyaml-cpp-dev libcli11-dev nlohmann-json3-dev
  libgtest-dev googletest
  slurm-wlm munge                     # the sbatch scripts are tested on a local one-node Slurm
  iproute2                            # ip netns + veth: the two-node cluster of tests/cluster
  clang libclang-rt-14-dev            # ASan/UBSan + libFuzzer targets (tests/fuzz, FER_FUZZ=ON)
  dataset-fashion-mnist               # real images for the SyncBN tests (tests/unit/real_images.h)
)
if [[ "${1:-}" == "--bench" ]]; then
  packages+=(python3-torch python3-torchvision python3-h5py python3-pil python3-numpy time bc)
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages already installed"
else
  echo "install-deps: installing ${#missing[@]} missing package(s): ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# LibTorch calls whichever libblas.so.3 the alternatives system selects; prefer OpenBLAS (OpenMP).
blas_alt=$(update-alternatives --list "libblas.so.3-$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)" 2>/dev/null | grep openblas-openmp | head -n1 || true)
if [[ -n "$blas_alt" ]]; then
  current=$(readlink -f "/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)/libblas.so.3" || true)
  if [[ "$current" != "$(readlink -f "$blas_alt")" ]]; then
    echo "install-deps: selecting OpenBLAS (OpenMP) as libblas.so.3"
    $sudo update-alternatives --set "libblas.so.3-$(dpkg-architecture -qDEB_HOST_MULTIARCH)" "$blas_alt" >/dev/null
  fi
fi
echo "install-deps: done"
