// MPI backend of Communicator, for CPU tensors (float32, float64, int64; contiguous; any size,
// including 0 elements).
//
// Threading model: the communicator owns ONE communication thread with a FIFO queue. Every
// collective, blocking or async, is a job on that queue and runs there with blocking MPI calls
// (MPI_Allreduce, MPI_Bcast, MPI_Allgatherv, MPI_Barrier); a blocking call is its async variant
// followed by wait(). Hence:
//  - the order in which a rank issues collectives is the order in which MPI sees them, so the
//    Communicator contract (same order on every rank) is all that matching needs;
//  - async and blocking calls run the very same code, so their results are bit-identical;
//  - overlap comes from the thread, not from MPI progress: the training thread keeps running
//    backward while the communication thread sits in MPI_Allreduce. (MPI_Iallreduce + MPI_Test
//    would need someone to drive progress and gains nothing here.)
//  - only one thread ever calls MPI for this communicator, so MPI_THREAD_SERIALIZED suffices
//    (see MpiContext for what the rest of the program must then respect).
//  - while a timeline is recorded (common/trace.h), each job is a span on the communication
//    track from the start to the end of its MPI calls, named by the issuing thread's
//    trace::ScopedLabel ("grad allreduce bucket" 2) or else by its op ("allreduce").
// The collectives use a private duplicate of MPI_COMM_WORLD with MPI_ERRORS_RETURN, so their
// traffic never matches other MPI calls of the program, and errors come back as CommError.
#pragma once

#include <memory>
#include <string>

#include "dist/communicator.h"

namespace fer {

class MpiContext;

struct MpiCommunicatorOptions {
  // The destructor lets queued collectives finish for this long, then aborts the job (a
  // collective that cannot finish means a peer is gone; waiting longer would hang every rank).
  double shutdown_timeout_s = 60.0;
};

class MpiCommunicator final : public Communicator {
 public:
  // Collective over MPI_COMM_WORLD (duplicates it): every rank constructs it at the same point.
  explicit MpiCommunicator(MpiContext& mpi, MpiCommunicatorOptions options = {});
  // Runs what is still queued, joins the thread and frees the communicator; aborts the job
  // (abort_job) if that takes longer than options.shutdown_timeout_s. Destroy it before the
  // MpiContext.
  ~MpiCommunicator() override;

  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  std::string describe() const override;

  std::unique_ptr<Work> allreduce_async(at::Tensor& t, ReduceOp op) override;
  std::unique_ptr<Work> broadcast_async(at::Tensor& t, int root) override;
  at::Tensor allgather(const at::Tensor& in) override;
  void barrier() override;

 private:
  class Worker;  // the communication thread, its queue and the MPI communicator it uses

  int rank_ = 0;
  int size_ = 1;
  int local_rank_ = 0;
  MpiCommunicatorOptions options_;
  std::unique_ptr<Worker> worker_;
};

}  // namespace fer
