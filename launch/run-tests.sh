#!/usr/bin/env bash
# Installs dependencies, configures, builds and runs the whole test suite with CTest.
# Usage: launch/run-tests.sh [extra ctest args...]    (e.g. -R Pack, -L mpi)
# Environment: BUILD_DIR (default: build), JOBS (default: number of cores).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}
jobs=${JOBS:-$(nproc)}

"$root/launch/install-deps.sh"

# Open MPI refuses to run as root without these (CI runs as root), and tests oversubscribe cores.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1

echo "run-tests: configuring $build"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DFER_BUILD_TESTS=ON >/dev/null
echo "run-tests: building with $jobs jobs"
cmake --build "$build" -j "$jobs"
echo "run-tests: running tests"
cd "$build"
ctest --output-on-failure -j "$jobs" "$@"

# The hardening pass (tests/hardening.sh: clang ASan+UBSan build of the torch-free unit tests and
# the 2-rank MPI tests, a canary, a short libFuzzer smoke run) after a full run;
# FER_HARDENING=0 skips it.
if [[ $# -eq 0 && "${FER_HARDENING:-1}" != 0 ]]; then
  echo "run-tests: hardening pass (FER_HARDENING=0 skips it)"
  JOBS=$jobs "$root/tests/hardening.sh" "$build-hardening"
fi
