// The collective-communication interface every distributed part of fer-dist talks to (DESIGN.md
// "Distributed contracts"). Backends: MpiCommunicator (CPU tensors), NcclCommunicator (CUDA
// tensors). Modelled on PyTorch c10d's ProcessGroup: an abstract backend, collectives in place,
// async variants returning a waitable handle.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>

namespace fer {

class MpiContext;

enum class ReduceOp {
  kSum,
  kAvg,  // sum, then divide by size() in the tensor's dtype; not defined for integer tensors
  kMax,
  kMin,
};

// "sum", "avg", "max", "min"
const char* to_string(ReduceOp op);

// Handle of one collective in flight. Move-only; may outlive the communicator that issued it
// (then it can still be waited on). Destroying it without waiting does not cancel the collective,
// and the communicator keeps the tensors alive until the collective is done.
class Work {
 public:
  virtual ~Work() = default;
  // Blocks until the collective has finished and its result is in the tensor. Throws CommError
  // when it failed (then the communicator is unusable; the job should stop). Idempotent: a second
  // call returns (or throws) at once.
  virtual void wait() = 0;
  // Waits at most `seconds`; true when the collective has finished (successfully or not: wait()
  // then says which), false on timeout. For a watchdog that logs describe() and calls abort_job.
  virtual bool wait_for(double seconds) = 0;
  // Orders the caller's next device work after the collective without blocking the host, where
  // the backend can, and returns true: NCCL makes torch's current CUDA stream wait for the
  // collective's completion event (c10d's Work::wait on CUDA), its communicator's watchdog
  // bounding the collective by the communicator's timeout. Returns false where it cannot (MPI: CPU
  // tensors, no streams), and then the caller waits on the host (wait_or_abort). Throws CommError
  // when the collective is already known to have failed.
  virtual bool wait_on_device() { return false; }
  // What this is, for logs and timeouts: "allreduce(avg) float32[6572679] #17 on mpi rank 1/4".
  virtual std::string describe() const = 0;
};

// All collectives on this class must be issued in the same order by every rank: collective k of
// rank r is matched with collective k of every other rank, whatever their kinds or tensors. Shapes
// and dtypes must agree across ranks (except allgather's dim 0). A rank that issues a different
// sequence hangs or corrupts the job; the watchdog (Work::wait_for + abort_job) turns a hang into
// an abort.
//
// Threading: the issuing calls are thread-safe, but issue order is what ranks match on, so issue
// from one thread (or serialize issuing yourself). Tensors handed to a collective must not be read
// or written by the caller until it has completed (blocking call returned, or Work::wait()).
//
// Errors: a tensor the backend cannot take (wrong device, dtype, not contiguous, bad root) throws
// CommError on the calling rank before anything is sent. A failed collective throws CommError;
// after it the communicator is broken and every later call throws.
class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual int local_rank() const = 0;
  // "mpi rank 1/4 (local 1)", "nccl rank 0/8 (local 0) on cuda:0"
  virtual std::string describe() const = 0;

  // In place: every rank's `t` becomes the element-wise reduction over all ranks, bit-identical
  // on every rank.
  virtual void allreduce(at::Tensor& t, ReduceOp op);
  virtual std::unique_ptr<Work> allreduce_async(at::Tensor& t, ReduceOp op) = 0;

  // In place: every rank's `t` becomes root's `t`.
  virtual void broadcast(at::Tensor& t, int root);
  virtual std::unique_ptr<Work> broadcast_async(at::Tensor& t, int root) = 0;

  // Every rank's `in`, concatenated along dim 0 in rank order (a 0-dim tensor counts as shape
  // [1]). Dim 0 may differ per rank; the other dims and the dtype must agree (checked, the same
  // CommError on every rank). The result lives on `in`'s device.
  virtual at::Tensor allgather(const at::Tensor& in) = 0;

  // Returns once every rank has entered the barrier.
  virtual void barrier() = 0;
};


namespace detail {
// "float32", "float64", "int64", ... (PyTorch's Python names) for messages.
std::string dtype_name(at::ScalarType type);
// "float32[2, 3]" for messages.
std::string tensor_summary(const at::Tensor& t);
}  // namespace detail

}  // namespace fer
