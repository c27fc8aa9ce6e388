#include "dist/mpi_communicator.h"

#include <ATen/ATen.h>
#include <mpi.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <numeric>
#include <thread>
#include <utility>
#include <vector>

#include "common/errors.h"
#include "common/trace.h"
#include "dist/mpi_check.h"
#include "dist/mpi_context.h"

namespace fer {
namespace {

// Largest element count of one MPI call (MPI counts are int); bigger tensors go in chunks.
constexpr int64_t kMaxCountPerCall = INT_MAX;

// Completion state shared by a queued job and its Work handle (which may outlive the communicator).
struct JobState {
  std::mutex mutex;
  std::condition_variable done_cv;
  bool done = false;
  std::exception_ptr error;  // set when the job failed
};

// A CommError that every rank raised identically after a successful exchange (e.g. allgather
// shapes disagree): the ranks are still in step, so the communicator stays usable.
class AgreedError : public CommError {
 public:
  using CommError::CommError;
};

class MpiWork final : public Work {
 public:
  MpiWork(std::shared_ptr<JobState> state, std::string what)
      : state_(std::move(state)), what_(std::move(what)) {}

  void wait() override {
    std::unique_lock<std::mutex> lock(state_->mutex);
    state_->done_cv.wait(lock, [&] { return state_->done; });
    if (state_->error) std::rethrow_exception(state_->error);
  }

  bool wait_for(double seconds) override {
    std::unique_lock<std::mutex> lock(state_->mutex);
    return state_->done_cv.wait_for(lock, std::chrono::duration<double>(std::max(seconds, 0.0)),
                                    [&] { return state_->done; });
  }

  std::string describe() const override { return what_; }

 private:
  std::shared_ptr<JobState> state_;
  std::string what_;
};

MPI_Datatype mpi_datatype(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return MPI_FLOAT;
    case at::kDouble:
      return MPI_DOUBLE;
    case at::kLong:
      return MPI_INT64_T;
    default:
      return MPI_DATATYPE_NULL;
  }
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      return MPI_SUM;
    case ReduceOp::kMax:
      return MPI_MAX;
    case ReduceOp::kMin:
      return MPI_MIN;
  }
  return MPI_OP_NULL;
}

// Throws CommError naming `op` unless `t` is a tensor this backend can send.
void check_tensor(const at::Tensor& t, const std::string& op) {
  FER_CHECK(t.defined(), CommError, "mpi ", op, ": undefined tensor");
  FER_CHECK(t.device().is_cpu() && t.layout() == at::kStrided, CommError, "mpi ", op,
            ": tensor on ", t.device(), " (", t.layout(),
            "); the mpi backend takes dense CPU tensors (use the nccl backend for CUDA)");
  FER_CHECK(mpi_datatype(t.scalar_type()) != MPI_DATATYPE_NULL, CommError, "mpi ", op, ": dtype ",
            detail::dtype_name(t.scalar_type()), " is not supported (float32, float64, int64)");
  FER_CHECK(t.is_contiguous(), CommError, "mpi ", op, ": tensor ", detail::tensor_summary(t),
            " is not contiguous; pass t.contiguous() and copy the result back");
}

// Calls `call(pointer, count)` for consecutive chunks of at most kMaxCountPerCall elements.
template <typename Call>
void for_each_chunk(const at::Tensor& t, Call&& call) {
  auto* base = static_cast<char*>(t.data_ptr());
  const int64_t numel = t.numel();
  const int64_t item = static_cast<int64_t>(t.element_size());
  for (int64_t offset = 0; offset < numel; offset += kMaxCountPerCall) {
    const int64_t count = std::min(kMaxCountPerCall, numel - offset);
    call(static_cast<void*>(base + offset * item), static_cast<int>(count));
  }
}

// avg = sum / size in the tensor's own dtype (IEEE division, identical on every rank).
template <typename T>
void divide_in_place(const at::Tensor& t, int size) {
  T* p = t.data_ptr<T>();
  const T divisor = static_cast<T>(size);
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) p[i] = p[i] / divisor;
}

// FNV-1a over the dims after the first: lets ranks compare allgather row shapes in one number.
int64_t hash_trailing_dims(at::IntArrayRef sizes) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 1; i < sizes.size(); ++i) {
    h = (h ^ static_cast<uint64_t>(sizes[i])) * 1099511628211ull;
  }
  return static_cast<int64_t>(h >> 1);
}

}  // namespace

// ---- the communication thread ----------------------------------------------------------------

class MpiCommunicator::Worker {
 public:
  Worker(MPI_Comm comm, std::string owner) : comm_(comm), owner_(std::move(owner)) {
    thread_ = std::thread([this] { run(); });
  }

  // Queues `job` (FIFO) and returns its handle. `what` names it in errors and timeouts; `op`
  // (a literal) names its timeline span unless the issuing thread has a trace::ScopedLabel.
  std::unique_ptr<Work> submit(std::string what, const char* op,
                               std::function<void(MPI_Comm)> job) {
    auto state = std::make_shared<JobState>();
    Job::Trace trace;
    if (trace::active()) {
      const trace::Label label = trace::current_label();
      trace = {label.name ? label.name : op, label.index, trace::current_step()};
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      FER_CHECK(!stopping_, CommError, what, ": the communicator is shutting down");
      what = detail::concat(what, " #", next_sequence_++, " on ", owner_);
      queue_.push_back(Job{what, std::move(job), state, trace});
    }
    queue_cv_.notify_one();
    return std::make_unique<MpiWork>(std::move(state), std::move(what));
  }

  // Drains the queue and stops the thread; false if that did not happen within `timeout_s`
  // (the thread is then still inside MPI and must not be joined).
  bool stop(double timeout_s) {
    std::unique_lock<std::mutex> lock(mutex_);
    stopping_ = true;
    queue_cv_.notify_one();
    const bool exited = exited_cv_.wait_for(lock, std::chrono::duration<double>(timeout_s),
                                            [&] { return exited_; });
    lock.unlock();
    if (exited) thread_.join();
    return exited;
  }

  // What the thread is doing now (for the shutdown abort message).
  std::string current() {
    std::lock_guard<std::mutex> lock(mutex_);
    return running_.empty() ? std::string("nothing") : running_;
  }

  MPI_Comm comm() const { return comm_; }

 private:
  struct Job {
    // The timeline span of the job (name null: not traced, tracing was off when it was issued).
    struct Trace {
      const char* name = nullptr;
      std::int64_t index = -1;
      std::int64_t step = -1;
    };
    std::string what;
    std::function<void(MPI_Comm)> run;
    std::shared_ptr<JobState> state;
    Trace trace;
  };

  void run() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        queue_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) break;  // stopping and drained
        job = std::move(queue_.front());
        queue_.pop_front();
        running_ = job.what;
      }
      std::exception_ptr error;
      const std::int64_t trace_start = job.trace.name ? trace::now_ns() : 0;
      if (!broken_.empty()) {
        error = std::make_exception_ptr(CommError(
            detail::concat(job.what, ": not run, the communicator is broken since: ", broken_)));
      } else {
        try {
          job.run(comm_);
        } catch (const AgreedError&) {
          error = std::current_exception();
        } catch (const std::exception& e) {
          broken_ = e.what();
          error = std::make_exception_ptr(CommError(detail::concat(job.what, ": ", e.what())));
        }
      }
      job.run = nullptr;  // release the tensors before signalling completion
      if (job.trace.name) {  // recorded before completion: a waiter then sees the event
        trace::record(job.trace.name, job.trace.index, job.trace.step, trace::Track::kComm,
                      trace_start, trace::now_ns());
      }
      {
        std::lock_guard<std::mutex> lock(job.state->mutex);
        job.state->error = error;
        job.state->done = true;
      }
      job.state->done_cv.notify_all();
      std::lock_guard<std::mutex> lock(mutex_);
      running_.clear();
    }
    std::lock_guard<std::mutex> lock(mutex_);
    exited_ = true;
    exited_cv_.notify_all();
  }

  MPI_Comm comm_;
  std::string owner_;
  std::string broken_;  // first failure's message; only touched by the thread

  std::mutex mutex_;  // guards everything below
  std::condition_variable queue_cv_;
  std::condition_variable exited_cv_;
  std::deque<Job> queue_;
  std::string running_;
  uint64_t next_sequence_ = 0;
  bool stopping_ = false;
  bool exited_ = false;

  std::thread thread_;  // last: starts after the members it uses exist
};

// ---- MpiCommunicator ---------------------------------------------------------------------------

MpiCommunicator::MpiCommunicator(MpiContext& mpi, MpiCommunicatorOptions options)
    : rank_(mpi.rank()), size_(mpi.size()), local_rank_(mpi.local_rank()), options_(options) {
  MPI_Comm comm = MPI_COMM_NULL;
  FER_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm));
  const int rc = MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  if (rc != MPI_SUCCESS) {
    FER_MPI_LOG_ERROR(MPI_Comm_free(&comm));
    FER_MPI_CHECK(rc);
  }
  FER_MPI_CHECK(MPI_Comm_set_name(comm, "fer-dist mpi communicator"));
  worker_ = std::make_unique<Worker>(comm, describe());
}

MpiCommunicator::~MpiCommunicator() {
  if (!worker_->stop(options_.shutdown_timeout_s)) {
    abort_job(static_cast<int>(ExitCode::kComm),
              detail::concat("mpi communicator destroyed while ", worker_->current(),
                             " was still running after ", options_.shutdown_timeout_s,
                             " s; a peer rank is probably gone"));
  }
  int finalized = 0;
  MPI_Finalized(&finalized);
  MPI_Comm comm = worker_->comm();
  if (!finalized) {
    FER_MPI_LOG_ERROR(MPI_Comm_free(&comm));
  } else {
    spdlog::error("mpi communicator destroyed after MPI_Finalize; destroy it before MpiContext");
  }
}

std::string MpiCommunicator::describe() const {
  return detail::concat("mpi rank ", rank_, "/", size_, " (local ", local_rank_, ")");
}

std::unique_ptr<Work> MpiCommunicator::allreduce_async(at::Tensor& t, ReduceOp op) {
  const std::string name = detail::concat("allreduce(", to_string(op), ")");
  check_tensor(t, name);
  FER_CHECK(op != ReduceOp::kAvg || at::isFloatingType(t.scalar_type()), CommError, "mpi ", name,
            ": cannot average an integer tensor (", detail::dtype_name(t.scalar_type()),
            "); use sum and divide where the rounding is yours to choose");
  const int size = size_;
  return worker_->submit(
      detail::concat(name, " ", detail::tensor_summary(t)), "allreduce",
      [t, op, size](MPI_Comm comm) {
        if (t.numel() == 0) return;  // shapes agree across ranks: every rank skips
        const MPI_Datatype type = mpi_datatype(t.scalar_type());
        for_each_chunk(t, [&](void* p, int count) {
          FER_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, p, count, type, mpi_op(op), comm));
        });
        if (op == ReduceOp::kAvg) {
          if (t.scalar_type() == at::kFloat) {
            divide_in_place<float>(t, size);
          } else {
            divide_in_place<double>(t, size);
          }
        }
      });
}

std::unique_ptr<Work> MpiCommunicator::broadcast_async(at::Tensor& t, int root) {
  const std::string name = detail::concat("broadcast(root ", root, ")");
  check_tensor(t, name);
  FER_CHECK(root >= 0 && root < size_, CommError, "mpi ", name, ": root out of range [0, ", size_,
            ")");
  return worker_->submit(
      detail::concat(name, " ", detail::tensor_summary(t)), "broadcast", [t, root](MPI_Comm comm) {
        if (t.numel() == 0) return;
        const MPI_Datatype type = mpi_datatype(t.scalar_type());
        for_each_chunk(
            t, [&](void* p, int count) { FER_MPI_CHECK(MPI_Bcast(p, count, type, root, comm)); });
      });
}

at::Tensor MpiCommunicator::allgather(const at::Tensor& in) {
  check_tensor(in, "allgather");
  const int size = size_;
  auto out = std::make_shared<at::Tensor>();
  auto work = worker_->submit(
      detail::concat("allgather ", detail::tensor_summary(in)), "allgather",
      [in, out, size](MPI_Comm comm) {
        const std::vector<int64_t> sizes =
            in.dim() == 0 ? std::vector<int64_t>{1} : in.sizes().vec();
        const int64_t row =
            std::accumulate(sizes.begin() + 1, sizes.end(), int64_t{1}, std::multiplies<int64_t>());
        // 1. Agree on the layout: {dim 0, dims after it, dtype} of every rank.
        constexpr int kMeta = 4;
        const int64_t mine[kMeta] = {sizes[0], static_cast<int64_t>(sizes.size()),
                                     hash_trailing_dims(sizes),
                                     static_cast<int64_t>(in.scalar_type())};
        std::vector<int64_t> meta(static_cast<size_t>(kMeta) * size);
        FER_MPI_CHECK(
            MPI_Allgather(mine, kMeta, MPI_INT64_T, meta.data(), kMeta, MPI_INT64_T, comm));
        std::vector<int> counts(size);
        std::vector<int> displacements(size);
        int64_t total_rows = 0;
        for (int r = 0; r < size; ++r) {
          const int64_t* theirs = &meta[static_cast<size_t>(r) * kMeta];
          if (theirs[1] != mine[1] || theirs[2] != mine[2] || theirs[3] != mine[3]) {
            // Every rank sees the same table, so every rank throws (for its own view).
            throw AgreedError(detail::concat(
                "allgather: rank ", r, " sends a tensor whose dims after the first or dtype differ",
                " from this rank's ", detail::tensor_summary(in)));
          }
          const int64_t displacement = total_rows * row;
          total_rows += theirs[0];
          if (total_rows * row > kMaxCountPerCall) {
            throw AgreedError(detail::concat("allgather: more than ", kMaxCountPerCall,
                                             " elements in total are not supported"));
          }
          counts[r] = static_cast<int>(theirs[0] * row);
          displacements[r] = static_cast<int>(displacement);
        }
        // 2. Move the data.
        std::vector<int64_t> out_sizes = sizes;
        out_sizes[0] = total_rows;
        at::Tensor result = at::empty(out_sizes, in.options());
        const MPI_Datatype type = mpi_datatype(in.scalar_type());
        int64_t dummy = 0;  // MPI wants valid buffers even for 0 elements
        void* send = in.numel() > 0 ? in.data_ptr() : &dummy;
        void* receive = result.numel() > 0 ? result.data_ptr() : &dummy;
        FER_MPI_CHECK(MPI_Allgatherv(send, static_cast<int>(in.numel()), type, receive,
                                     counts.data(), displacements.data(), type, comm));
        *out = std::move(result);
      });
  work->wait();
  return std::move(*out);
}

void MpiCommunicator::barrier() {
  worker_->submit("barrier", "barrier", [](MPI_Comm comm) { FER_MPI_CHECK(MPI_Barrier(comm)); })
      ->wait();
}

}  // namespace fer
