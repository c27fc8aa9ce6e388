#include "dist/mpi_context.h"

#include <mpi.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cstdlib>

#include "common/errors.h"
#include "dist/mpi_check.h"

namespace fer {
namespace {

// Written once by MpiContext, read by error paths (mpi_check.h). A process property, not state
// anyone changes: the world rank never changes while MPI runs.
std::atomic<int> g_world_rank_for_errors{-1};

bool mpi_running() {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

const char* thread_level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE:
      return "SINGLE";
    case MPI_THREAD_FUNNELED:
      return "FUNNELED";
    case MPI_THREAD_SERIALIZED:
      return "SERIALIZED";
    case MPI_THREAD_MULTIPLE:
      return "MULTIPLE";
    default:
      return "unknown";
  }
}

}  // namespace

namespace detail {
int world_rank_for_errors() { return g_world_rank_for_errors.load(std::memory_order_relaxed); }
}  // namespace detail

MpiContext::MpiContext(int* argc, char*** argv) {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  FER_CHECK(!finalized, CommError,
            "MPI was already finalized; create one MpiContext per process, in main");
  if (!initialized) {
    // MPI_Init_thread's own errors are always fatal (no error handler can be set before it).
    MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &thread_level_);
    owns_mpi_ = true;
  } else {
    MPI_Query_thread(&thread_level_);
  }
  try {
    FER_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    FER_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
    FER_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size_));
    g_world_rank_for_errors.store(rank_, std::memory_order_relaxed);
    FER_CHECK(
        thread_level_ >= MPI_THREAD_SERIALIZED, CommError, "MPI provides thread level ",
        thread_level_name(thread_level_),
        " but fer-dist needs at least SERIALIZED (collectives run on a communication thread)");

    MPI_Comm node = MPI_COMM_NULL;
    FER_MPI_CHECK(
        MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
    const int rank_rc = MPI_Comm_rank(node, &local_rank_);
    const int size_rc = MPI_Comm_size(node, &local_size_);
    FER_MPI_LOG_ERROR(MPI_Comm_free(&node));
    FER_MPI_CHECK(rank_rc);
    FER_MPI_CHECK(size_rc);
  } catch (...) {
    // The destructor does not run for a half-built object: finalize here.
    if (owns_mpi_) FER_MPI_LOG_ERROR(MPI_Finalize());
    throw;
  }
}

MpiContext::~MpiContext() {
  if (owns_mpi_ && mpi_running()) FER_MPI_LOG_ERROR(MPI_Finalize());
}

bool MpiContext::thread_multiple() const { return thread_level_ == MPI_THREAD_MULTIPLE; }

std::string MpiContext::describe() const {
  char library[MPI_MAX_LIBRARY_VERSION_STRING] = {0};
  int length = 0;
  std::string version = "MPI";
  if (MPI_Get_library_version(library, &length) == MPI_SUCCESS) {
    version.assign(library, static_cast<size_t>(length));
    const auto cut = version.find_first_of(",\n");  // "Open MPI v4.1.4, package: ..." -> first part
    if (cut != std::string::npos) version.resize(cut);
  }
  return detail::concat("MPI rank ", rank_, "/", size_, " (local ", local_rank_, "/", local_size_,
                        "), thread level ", thread_level_name(thread_level_), ", ", version);
}

void abort_job(int code, const std::string& why) {
  spdlog::critical("aborting the job (exit code {}) on rank {}: {}", code,
                   detail::world_rank_for_errors(), why);
  spdlog::default_logger()->flush();
  if (mpi_running()) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort may return when the runtime is broken; never go on.
}

}  // namespace fer
