// The two communication planes of a job (DESIGN.md "Distributed contracts"), as c10d keeps a CPU
// group beside the NCCL one:
//  - ControlPlane: HOST values only (int64 / double vectors): start-up agreement, stop flags, loss
//    and accuracy sums, evaluation counts, barriers, the timeline. Always MPI; never touches a
//    device. Its API takes no tensor, so a control value cannot reach NCCL by mistake.
//  - DataPlane: tensors on the model's device only (weight/buffer broadcast, gradient buckets,
//    SyncBN statistics). MPI when the device is the CPU, NCCL when it is a GPU; a tensor on any
//    other device is a CommError naming the caller, raised before anything is sent.
// ProcessGroups builds both from the MPI context and dist.* (backend, device, timeout given once).
// Every blocking call here is bounded by that timeout through wait_or_abort (dist/wait.h): on
// expiry the job aborts naming what it waited for. Callers never handle timeouts.
// "Blocking" on the data plane means: the result is there for the caller's next work on the
// device. On the CPU (MPI) the host waits. On a GPU (NCCL) the host does not: the collective runs
// after the work queued on torch's current CUDA stream, that stream waits for it (an event), and
// the NCCL communicator's watchdog aborts the job, naming the collective, when one does not
// finish within the timeout. Reading a result on the host (.item(), .to(kCPU)) waits for it there.
//
// Order: each plane's collectives must be issued in the same order on every rank (the
// Communicator contract). On the CPU both planes share one MPI communicator (one queue: the
// program order of the training thread is the order ranks match on).
//
// World of 1: unless `force_collectives` (a test switch that makes a single process exercise the
// communicators), no communicator exists and every collective returns its input at once.
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dist/communicator.h"

namespace fer {

class MpiContext;

// The data plane's backend, resolved from dist.backend and the device (STYLE.md lesson 14).
enum class Backend {
  kMpi,   // CPU tensors
  kNccl,  // CUDA tensors (needs a build with FER_HAVE_NCCL)
};
const char* to_string(Backend backend);

// "auto" (nccl on CUDA, mpi on CPU) | "mpi" | "nccl" for `device`. ConfigError for an unknown name
// or a backend that cannot carry tensors on that device (mpi with CUDA tensors: Debian's Open MPI
// is not CUDA-aware; nccl with CPU tensors), naming both and the fix.
Backend resolve_backend(const std::string& name, const c10::Device& device);

struct PlaneOptions {
  c10::Device device = c10::Device(c10::kCPU);  // the model's device (bound per rank)
  Backend backend = Backend::kMpi;              // of the data plane; resolve_backend's result
  double timeout_s = 300.0;                     // every collective of both planes, NCCL start-up
  bool force_collectives = false;               // test switch: communicate even at world 1
};

class ControlPlane {
 public:
  explicit ControlPlane(Communicator* comm, double timeout_s);  // comm null: a world of one

  int rank() const { return rank_; }
  int size() const { return size_; }

  // In place, element-wise over all ranks; blocking. `what` names the call in a timeout
  // ("stop flag and loss at step 12"). Avg is defined for doubles only.
  void allreduce(std::vector<std::int64_t>& values, ReduceOp op, const std::string& what);
  void allreduce(std::vector<double>& values, ReduceOp op, const std::string& what);
  // Every rank's `mine` (the same length on every rank), concatenated in rank order.
  std::vector<std::int64_t> allgather(const std::vector<std::int64_t>& mine,
                                      const std::string& what);
  // Returns once every rank has entered it.
  void barrier(const std::string& what);

 private:
  template <typename T>
  void reduce(std::vector<T>& values, ReduceOp op, const std::string& what);

  Communicator* comm_;
  double timeout_s_;
  int rank_ = 0;
  int size_ = 1;
};

class DataPlane {
 public:
  DataPlane(Communicator* comm, const c10::Device& device, double timeout_s);  // comm null: world 1

  int rank() const { return rank_; }
  int size() const { return size_; }
  const c10::Device& device() const { return device_; }
  // True when collectives go through a communicator (world > 1, or forced at world 1).
  bool active() const { return comm_ != nullptr; }

  // In place over all ranks, blocking (in the sense above) and bounded. `t` must live on device().
  void allreduce(at::Tensor& t, ReduceOp op, const char* what);
  void broadcast(at::Tensor& t, int root, const char* what);
  // Asynchronous all-reduce for overlap (GradSync); wait with wait() below. Null at world 1
  // (nothing to do: the tensor already holds the result).
  std::unique_ptr<Work> allreduce_async(at::Tensor& t, ReduceOp op, const char* what);
  // The bounded wait for a handle from allreduce_async (on a GPU a stream wait, see above); `what`
  // is built only on expiry of a host wait.
  void wait(Work& work, const std::function<std::string()>& what) const;

 private:
  void check_device(const at::Tensor& t, const char* what) const;

  Communicator* comm_;
  c10::Device device_;
  double timeout_s_;
  int rank_ = 0;
  int size_ = 1;
};

// Owns the communicators of one job and the two planes over them. Collective: every rank builds it
// at the same point, after MpiContext, and destroys it before MpiContext.
class ProcessGroups {
 public:
  ProcessGroups(MpiContext& mpi, const PlaneOptions& options);
  // A process on its own (no MPI at all): planes that never communicate, on options.device.
  explicit ProcessGroups(const PlaneOptions& options);
  ~ProcessGroups();
  ProcessGroups(const ProcessGroups&) = delete;
  ProcessGroups& operator=(const ProcessGroups&) = delete;

  ControlPlane& control() { return *control_; }
  DataPlane& data() { return *data_; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }
  // "2 ranks, control mpi, data nccl on cuda:1, timeout 300 s"
  std::string describe() const;

 private:
  int rank_ = 0;
  int size_ = 1;
  int local_rank_ = 0;
  PlaneOptions options_;
  std::unique_ptr<Communicator> mpi_;   // control plane, and the data plane on the CPU
  std::unique_ptr<Communicator> nccl_;  // data plane on a GPU
  std::unique_ptr<ControlPlane> control_;
  std::unique_ptr<DataPlane> data_;
};

}  // namespace fer
