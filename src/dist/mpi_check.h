// Check macros for MPI calls (STYLE.md lesson 2), llm.c's mpiCheck with typed errors:
//   FER_MPI_CHECK(MPI_Bcast(...));      throws CommError "<call> failed: <MPI error string>
//                                       (rank R) [file.cpp:42]"
//   FER_MPI_LOG_ERROR(MPI_Comm_free(...));  logs the same line instead; for destructors.
// Both need MPI_ERRORS_RETURN on the communicator the call uses (MpiContext sets it on
// MPI_COMM_WORLD, MpiCommunicator on its own communicator); with MPI's default
// MPI_ERRORS_ARE_FATAL an error kills the job before the macro can see it.
#pragma once

#include <mpi.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <string>

#include "common/errors.h"

namespace fer::detail {

// This process's rank in MPI_COMM_WORLD, or -1 before MpiContext initialized MPI. Recorded once
// by MpiContext so that error paths never need another MPI call (which may not be safe from the
// failing thread, or at all once MPI is broken).
int world_rank_for_errors();

// "MPI_Bcast(buf, 1, ...) failed: MPI_ERR_TRUNCATE: message truncated (rank 3) [file.cpp:42]"
inline std::string mpi_error_message(int code, const char* call, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) {
    std::snprintf(text, sizeof(text), "MPI error code %d", code);
  }
  return ::fer::detail::concat(call, " failed: ", text, " (rank ", world_rank_for_errors(), ") [",
                               ::fer::detail::source_location(file, line), "]");
}

}  // namespace fer::detail

#define FER_MPI_CHECK(call)                                                          \
  do {                                                                               \
    const int fer_mpi_rc_ = (call);                                                  \
    if (fer_mpi_rc_ != MPI_SUCCESS) {                                                \
      throw ::fer::CommError(                                                        \
          ::fer::detail::mpi_error_message(fer_mpi_rc_, #call, __FILE__, __LINE__)); \
    }                                                                                \
  } while (0)

#define FER_MPI_LOG_ERROR(call)                                                                \
  do {                                                                                         \
    const int fer_mpi_rc_ = (call);                                                            \
    if (fer_mpi_rc_ != MPI_SUCCESS) {                                                          \
      spdlog::error("{}",                                                                      \
                    ::fer::detail::mpi_error_message(fer_mpi_rc_, #call, __FILE__, __LINE__)); \
    }                                                                                          \
  } while (0)
