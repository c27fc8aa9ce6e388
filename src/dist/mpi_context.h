// The process's MPI session (RAII): initialization, world rank/size, node-local rank, and the one
// way to stop the whole job.
//
// Thread level. GradSync issues collectives from a communication thread while the training thread
// runs backward, so MPI must be initialized at least MPI_THREAD_SERIALIZED. MpiContext asks for
// MPI_THREAD_MULTIPLE and accepts SERIALIZED; anything less is a CommError. The communicators are
// built so that SERIALIZED suffices: MpiCommunicator makes every MPI call of its collectives
// (blocking ones too) on its single communication thread. Under SERIALIZED the rest of the program
// must not call MPI while a communicator has work in flight (e.g. NcclCommunicator's start-up
// broadcast, or the test main's final agreement); under MULTIPLE (Open MPI 4.1 provides it)
// there is no such restriction.
//
// Exactly one MpiContext per process, created in main before any communicator and destroyed after
// all of them (MPI cannot be initialized again after MPI_Finalize). Without a launcher (plain
// `./fer-dist-train`) MPI starts as a singleton: a world of 1.
#pragma once

#include <string>

namespace fer {

class MpiContext {
 public:
  // Initializes MPI unless something else already did (then this context only reads the world and
  // leaves MPI_Finalize to its owner). Sets MPI_ERRORS_RETURN on MPI_COMM_WORLD so that failing
  // calls return codes to FER_MPI_CHECK. Throws CommError when MPI was already finalized or the
  // thread level is below MPI_THREAD_SERIALIZED. argc/argv may be null.
  explicit MpiContext(int* argc = nullptr, char*** argv = nullptr);
  // MPI_Finalize when this context initialized MPI and nobody finalized it yet. Errors are logged.
  ~MpiContext();

  MpiContext(const MpiContext&) = delete;
  MpiContext& operator=(const MpiContext&) = delete;
  MpiContext(MpiContext&&) = delete;
  MpiContext& operator=(MpiContext&&) = delete;

  int rank() const { return rank_; }              // in MPI_COMM_WORLD
  int size() const { return size_; }              // of MPI_COMM_WORLD
  int local_rank() const { return local_rank_; }  // among the ranks sharing this node's memory
  int local_size() const { return local_size_; }  // ranks on this node
  // MPI_THREAD_SERIALIZED or MPI_THREAD_MULTIPLE (the MPI constants' values).
  int thread_level() const { return thread_level_; }
  bool thread_multiple() const;
  // "MPI rank 1/4 (local 1/2), thread level MULTIPLE, Open MPI v4.1.4"
  std::string describe() const;

 private:
  bool owns_mpi_ = false;  // this context called MPI_Init_thread, so it finalizes
  int rank_ = 0;
  int size_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
  int thread_level_ = 0;
};

// Logs `why` as critical (with the rank) and stops every rank of the job: MPI_Abort on
// MPI_COMM_WORLD with `code` when MPI is running, otherwise std::_Exit(code). For failures that
// would otherwise hang the other ranks (a collective timed out, ranks disagree). Thread-safe.
[[noreturn]] void abort_job(int code, const std::string& why);

}  // namespace fer
