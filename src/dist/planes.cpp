#include "dist/planes.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <sstream>

#include "common/errors.h"
#include "dist/mpi_communicator.h"
#include "dist/mpi_context.h"
#include "dist/wait.h"
#ifdef FER_HAVE_NCCL
#include "dist/nccl_communicator.h"
#endif

namespace fer {

const char* to_string(Backend backend) { return backend == Backend::kNccl ? "nccl" : "mpi"; }

Backend resolve_backend(const std::string& name, const c10::Device& device) {
  const bool gpu = device.is_cuda();
  if (name == "auto") return gpu ? Backend::kNccl : Backend::kMpi;
  if (name == "mpi") {
    FER_CHECK(!gpu, ConfigError, "dist.backend=mpi cannot carry tensors on ", device.str(),
              " (this Open MPI is not CUDA-aware); use dist.backend=nccl or auto with --device ",
              device.str());
    return Backend::kMpi;
  }
  if (name == "nccl") {
    FER_CHECK(gpu, ConfigError, "dist.backend=nccl needs a CUDA device, not ", device.str(),
              "; use dist.backend=mpi or auto on the CPU");
    return Backend::kNccl;
  }
  throw ConfigError("unknown dist.backend '" + name + "'", "use auto, mpi or nccl");
}

// ---- ControlPlane ------------------------------------------------------------------------------

ControlPlane::ControlPlane(Communicator* comm, double timeout_s)
    : comm_(comm),
      timeout_s_(timeout_s),
      rank_(comm ? comm->rank() : 0),
      size_(comm ? comm->size() : 1) {}

template <typename T>
void ControlPlane::reduce(std::vector<T>& values, ReduceOp op, const std::string& what) {
  if (!comm_ || values.empty()) return;  // a world of one: already the result
  // A CPU tensor over the caller's memory: the control plane's communicator is always MPI.
  at::Tensor t = at::from_blob(values.data(), {static_cast<std::int64_t>(values.size())},
                               at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  auto work = comm_->allreduce_async(t, op);
  wait_or_abort(*work, timeout_s_, what);
}

void ControlPlane::allreduce(std::vector<std::int64_t>& values, ReduceOp op,
                             const std::string& what) {
  FER_CHECK(op != ReduceOp::kAvg, CommError, what, ": avg of int64 values is not defined");
  reduce(values, op, what);
}

void ControlPlane::allreduce(std::vector<double>& values, ReduceOp op, const std::string& what) {
  reduce(values, op, what);
}

std::vector<std::int64_t> ControlPlane::allgather(const std::vector<std::int64_t>& mine,
                                                  const std::string& what) {
  // Each rank writes its row into zeros, and a sum gathers the rows (exact for integers).
  const std::size_t n = mine.size();
  std::vector<std::int64_t> all(n * static_cast<std::size_t>(size_), 0);
  std::copy(mine.begin(), mine.end(), all.begin() + static_cast<std::ptrdiff_t>(n) * rank_);
  reduce(all, ReduceOp::kSum, what);
  return all;
}

void ControlPlane::barrier(const std::string& what) {
  std::vector<std::int64_t> token{0};
  reduce(token, ReduceOp::kSum, what);
}

// ---- DataPlane ---------------------------------------------------------------------------------

DataPlane::DataPlane(Communicator* comm, const c10::Device& device, double timeout_s)
    : comm_(comm),
      device_(device),
      timeout_s_(timeout_s),
      rank_(comm ? comm->rank() : 0),
      size_(comm ? comm->size() : 1) {}

void DataPlane::check_device(const at::Tensor& t, const char* what) const {
  FER_CHECK(t.defined() && t.device() == device_, CommError, what, ": the data plane takes tensors on ",
            device_.str(), ", got ", t.defined() ? t.device().str() : std::string("an undefined tensor"),
            " (host values go through the control plane)");
}

std::unique_ptr<Work> DataPlane::allreduce_async(at::Tensor& t, ReduceOp op, const char* what) {
  check_device(t, what);
  if (!comm_) return nullptr;
  return comm_->allreduce_async(t, op);
}

void DataPlane::allreduce(at::Tensor& t, ReduceOp op, const char* what) {
  auto work = allreduce_async(t, op, what);
  if (work) wait(*work, [what] { return std::string(what); });
}

void DataPlane::broadcast(at::Tensor& t, int root, const char* what) {
  check_device(t, what);
  if (!comm_) return;
  auto work = comm_->broadcast_async(t, root);
  wait(*work, [what] { return std::string(what); });
}

void DataPlane::wait(Work& work, const std::function<std::string()>& what) const {
  if (work.wait_on_device()) return;  // a GPU: the current stream waits, the host goes on
  wait_or_abort(work, timeout_s_, what);
}

// ---- ProcessGroups -----------------------------------------------------------------------------

ProcessGroups::ProcessGroups(MpiContext& mpi, const PlaneOptions& options)
    : rank_(mpi.rank()), size_(mpi.size()), local_rank_(mpi.local_rank()), options_(options) {
  FER_CHECK(options.timeout_s > 0, ConfigError, "dist.comm_timeout_s must be > 0");
  FER_CHECK((options.backend == Backend::kNccl) == options.device.is_cuda(), ConfigError,
            "the ", to_string(options.backend), " data plane cannot carry tensors on ",
            options.device.str());
  const bool communicate = size_ > 1 || options.force_collectives;
  if (!communicate) {
    control_ = std::make_unique<ControlPlane>(nullptr, options.timeout_s);
    data_ = std::make_unique<DataPlane>(nullptr, options.device, options.timeout_s);
    return;
  }
  Communicator* data = nullptr;
  if (options.backend == Backend::kNccl) {
#ifdef FER_HAVE_NCCL
    // NCCL first: its start-up talks MPI on MPI_COMM_WORLD from this thread, before the MPI
    // communicator's thread exists (enough under MPI_THREAD_SERIALIZED).
    NcclCommunicatorOptions nccl_options;
    nccl_options.timeout_s = options.timeout_s;
    nccl_ = std::make_unique<NcclCommunicator>(mpi, options.device.index(), nccl_options);
    data = nccl_.get();
#else
    throw ConfigError("communication backend 'nccl' is not in this build",
                      "use the CPU, or rebuild with the CUDA toolkit and NCCL installed "
                      "(-DFER_WITH_NCCL=ON)");
#endif
  }
  MpiCommunicatorOptions mpi_options;
  mpi_options.shutdown_timeout_s = options.timeout_s;
  mpi_ = std::make_unique<MpiCommunicator>(mpi, mpi_options);
  if (!data) data = mpi_.get();
  control_ = std::make_unique<ControlPlane>(mpi_.get(), options.timeout_s);
  data_ = std::make_unique<DataPlane>(data, options.device, options.timeout_s);
}

ProcessGroups::ProcessGroups(const PlaneOptions& options)
    : options_(options),
      control_(std::make_unique<ControlPlane>(nullptr, options.timeout_s)),
      data_(std::make_unique<DataPlane>(nullptr, options.device, options.timeout_s)) {}

ProcessGroups::~ProcessGroups() {
  // Planes first (they only point at the communicators), then the data plane's communicator.
  data_.reset();
  control_.reset();
  nccl_.reset();
  mpi_.reset();
}

std::string ProcessGroups::describe() const {
  std::ostringstream os;
  os << size_ << " rank(s), control " << (mpi_ ? "mpi" : "local") << ", data "
     << (data_->active() ? to_string(options_.backend) : "local") << " on "
     << options_.device.str() << ", timeout " << options_.timeout_s << " s";
  return os.str();
}

}  // namespace fer
