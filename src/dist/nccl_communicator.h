// NCCL backend of Communicator, for CUDA tensors (float32, float64, int64; contiguous; on this
// rank's device). Built only with FER_HAVE_NCCL (cmake/FerNccl.cmake).
//
// It uses the CUDA runtime API, nccl.h and c10's device-generic stream interface only (no LibTorch
// CUDA headers), so it compiles next to Debian's CPU-only LibTorch; this header includes none.
//
// Set-up: rank 0 creates the NCCL unique id and broadcasts it over MPI_COMM_WORLD; each rank uses
// the device it is given (cudaSetDevice; by default local_rank % visible devices) and one NCCL
// communicator over all ranks. ncclCommInitRank is bounded by timeout_s (wait_or_abort).
// Streams: collectives run on the communicator's own non-blocking stream, which first waits (via a
// cudaEvent) for everything already queued on torch's *current* CUDA stream at issue (the
// trainer's, or one a caller made current with c10::StreamGuard), so they see finished tensors.
// Two ways to wait for a collective:
//  - Work::wait_on_device() (what the data plane does): torch's current stream waits for the
//    collective's completion event and the host goes on. A watchdog thread bounds these: one not
//    finished timeout_s after issue, or an asynchronous NCCL error, stops the job naming it
//    (abort_job, exit code 5), since the next host read of its result would hang.
//  - Work::wait(): blocks the host until the completion event has fired; it polls, so it also
//    notices NCCL's asynchronous errors and the timeout.
// On an error or timeout the NCCL communicator is aborted (ncclCommAbort) and every later call
// throws CommError; the destructor destroys it normally (ncclCommDestroy) when everything
// finished, and aborts it otherwise.
// avg uses ncclAvg, which for floating types multiplies by 1/size inside the reduction: it may
// differ in the last bit from the MPI backend's sum-then-divide, but is identical on every rank.
// Tensors handed to a collective are kept alive until the collective is done.
#pragma once

#ifdef FER_HAVE_NCCL

#include <memory>
#include <string>
#include <thread>

#include "dist/communicator.h"

namespace fer {

class MpiContext;

struct NcclCommunicatorOptions {
  // Work::wait(), allgather() and barrier() give up after this long: abort the NCCL communicator
  // and throw CommError. The destructor waits this long for unfinished collectives, then aborts.
  // NCCL initialisation is bounded by it too. ProcessGroups passes dist.comm_timeout_s.
  double timeout_s = 300.0;
};

class NcclCommunicator final : public Communicator {
 public:
  // Collective over MPI_COMM_WORLD: every rank constructs it at the same point. `device` is the
  // CUDA device index of this rank (-1: local_rank % visible devices). Throws CommError when a
  // rank has no usable GPU (then every rank throws, naming the ranks without one) or NCCL cannot
  // start; aborts the job when NCCL's initialisation does not finish within options.timeout_s.
  explicit NcclCommunicator(MpiContext& mpi, int device = -1, NcclCommunicatorOptions options = {});
  ~NcclCommunicator() override;

  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int device() const { return device_; }  // the CUDA device index this rank uses
  std::string describe() const override;

  std::unique_ptr<Work> allreduce_async(at::Tensor& t, ReduceOp op) override;
  std::unique_ptr<Work> broadcast_async(at::Tensor& t, int root) override;
  // The result is allocated with cudaMalloc (freed with cudaFree), not by LibTorch's allocator.
  at::Tensor allgather(const at::Tensor& in) override;
  void barrier() override;

  struct State;  // CUDA/NCCL handles, shared with the Work handles (defined in the .cpp)

 private:
  int rank_ = 0;
  int size_ = 1;
  int local_rank_ = 0;
  int device_ = 0;
  std::shared_ptr<State> state_;
  std::thread watchdog_;  // runs watch() from construction to destruction

  void watch();
};

}  // namespace fer

#endif  // FER_HAVE_NCCL
