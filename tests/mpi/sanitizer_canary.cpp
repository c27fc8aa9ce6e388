// A rank with a deliberate memory bug, to prove that the sanitizer pass over the MPI tests
// (tests/hardening.sh) would see one: built only in sanitizer builds, run under mpiexec -np 2 with
// the same ASAN/LSAN/UBSAN options and tests/mpi/lsan.supp as the MPI tests, and expected to FAIL
// with the named report. If it passed, the MPI tests passing would prove nothing.
//   sanitizer_canary leak      every rank loses a buffer it used in MPI_Allreduce (the Open MPI
//                              suppressions must not hide a leak of ours that touched MPI)
//   sanitizer_canary overflow  rank 1 writes past a heap buffer (ASan; the job must end, not hang)
//   sanitizer_canary undefined rank 1 overflows a signed int (UBSan)
//   sanitizer_canary none      no bug: exits 0 (the launch itself works)
#include <mpi.h>

#include <climits>
#include <cstdio>
#include <cstring>
#include <vector>

namespace {

// Out of line so that the only pointer to the buffer dies with this frame.
__attribute__((noinline)) void leak_a_buffer_used_by_mpi() {
  auto* buffer = new double[512];
  for (int i = 0; i < 512; ++i) buffer[i] = i;
  MPI_Allreduce(MPI_IN_PLACE, buffer, 512, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
}

__attribute__((noinline)) void overflow_a_heap_buffer() {
  std::vector<int> values(8);
  volatile int* data = values.data();  // volatile: the store cannot be dropped as dead
  data[values.size()] = 1;
}

__attribute__((noinline)) int overflow_a_signed_int() {
  volatile int big = INT_MAX;
  return big + 1;
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const char* mode = argc > 1 ? argv[1] : "";
  int status = 0;
  if (std::strcmp(mode, "leak") == 0) {
    leak_a_buffer_used_by_mpi();
  } else if (std::strcmp(mode, "overflow") == 0) {
    if (rank == 1) overflow_a_heap_buffer();
  } else if (std::strcmp(mode, "undefined") == 0) {
    if (rank == 1) std::printf("%d\n", overflow_a_signed_int());
  } else if (std::strcmp(mode, "none") != 0) {
    if (rank == 0) std::fprintf(stderr, "usage: %s leak|overflow|undefined|none\n", argv[0]);
    status = 2;
  }
  MPI_Barrier(MPI_COMM_WORLD);
  MPI_Finalize();
  return status;
}
