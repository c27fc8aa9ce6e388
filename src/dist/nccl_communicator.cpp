#include "dist/nccl_communicator.h"

#include <ATen/ATen.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <future>
#include <mutex>
#include <numeric>
#include <thread>
#include <utility>
#include <vector>

#include "common/errors.h"
#include "dist/mpi_check.h"
#include "dist/mpi_context.h"
#include "dist/wait.h"

// ---- check macros (STYLE.md lesson 2): CHECK throws CommError, LOG_ERROR only logs ------------

namespace fer::detail {

inline std::string cuda_error_message(cudaError_t code, const char* call, const char* file,
                                      int line) {
  return concat(call, " failed: ", cudaGetErrorName(code), ": ", cudaGetErrorString(code),
                " (rank ", world_rank_for_errors(), ") [", source_location(file, line), "]");
}

inline std::string nccl_error_message(ncclResult_t code, const char* call, const char* file,
                                      int line) {
  const char* last = ncclGetLastError(nullptr);  // NCCL's detail for the last error, may be ""
  return concat(call, " failed: ", ncclGetErrorString(code),
                (last != nullptr && *last != '\0') ? concat(" (", last, ")") : std::string(),
                " (rank ", world_rank_for_errors(), ") [", source_location(file, line), "]");
}

}  // namespace fer::detail

#define FER_CUDA_CHECK(call)                                                           \
  do {                                                                                 \
    const cudaError_t fer_cuda_rc_ = (call);                                           \
    if (fer_cuda_rc_ != cudaSuccess) {                                                 \
      throw ::fer::CommError(                                                          \
          ::fer::detail::cuda_error_message(fer_cuda_rc_, #call, __FILE__, __LINE__)); \
    }                                                                                  \
  } while (0)

#define FER_CUDA_LOG_ERROR(call)                                                                 \
  do {                                                                                           \
    const cudaError_t fer_cuda_rc_ = (call);                                                     \
    if (fer_cuda_rc_ != cudaSuccess) {                                                           \
      spdlog::error("{}",                                                                        \
                    ::fer::detail::cuda_error_message(fer_cuda_rc_, #call, __FILE__, __LINE__)); \
    }                                                                                            \
  } while (0)

#define FER_NCCL_CHECK(call)                                                           \
  do {                                                                                 \
    const ncclResult_t fer_nccl_rc_ = (call);                                          \
    if (fer_nccl_rc_ != ncclSuccess) {                                                 \
      throw ::fer::CommError(                                                          \
          ::fer::detail::nccl_error_message(fer_nccl_rc_, #call, __FILE__, __LINE__)); \
    }                                                                                  \
  } while (0)

#define FER_NCCL_LOG_ERROR(call)                                                                 \
  do {                                                                                           \
    const ncclResult_t fer_nccl_rc_ = (call);                                                    \
    if (fer_nccl_rc_ != ncclSuccess) {                                                           \
      spdlog::error("{}",                                                                        \
                    ::fer::detail::nccl_error_message(fer_nccl_rc_, #call, __FILE__, __LINE__)); \
    }                                                                                            \
  } while (0)

namespace fer {
namespace {

// ---- RAII for the foreign handles (STYLE.md lesson 1) ------------------------------------------

// A non-blocking stream: it does not synchronize implicitly with the legacy default stream, so
// ordering against the compute stream is explicit (events).
class CudaStream {
 public:
  CudaStream() { FER_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~CudaStream() {
    if (stream_ != nullptr) FER_CUDA_LOG_ERROR(cudaStreamDestroy(stream_));
  }
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

class CudaEvent {
 public:
  CudaEvent() { FER_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming)); }
  ~CudaEvent() {
    if (event_ != nullptr) FER_CUDA_LOG_ERROR(cudaEventDestroy(event_));
  }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

// Device memory (cudaMalloc) or, with `pinned`, page-locked host memory (cudaMallocHost).
class CudaBuffer {
 public:
  CudaBuffer() = default;
  CudaBuffer(size_t bytes, bool pinned) : pinned_(pinned) {
    bytes = std::max<size_t>(bytes, 1);
    if (pinned_) {
      FER_CUDA_CHECK(cudaMallocHost(&data_, bytes));
    } else {
      FER_CUDA_CHECK(cudaMalloc(&data_, bytes));
    }
  }
  ~CudaBuffer() { reset(); }
  CudaBuffer(CudaBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), pinned_(other.pinned_) {}
  CudaBuffer& operator=(CudaBuffer&& other) noexcept {
    if (this != &other) {
      reset();
      data_ = std::exchange(other.data_, nullptr);
      pinned_ = other.pinned_;
    }
    return *this;
  }
  void* get() const { return data_; }
  // Gives up ownership (the caller frees it).
  void* release() { return std::exchange(data_, nullptr); }

 private:
  void reset() {
    if (data_ == nullptr) return;
    if (pinned_) {
      FER_CUDA_LOG_ERROR(cudaFreeHost(data_));
    } else {
      FER_CUDA_LOG_ERROR(cudaFree(data_));
    }
    data_ = nullptr;
  }
  void* data_ = nullptr;
  bool pinned_ = false;
};

// Makes `device` current on this thread for the guard's lifetime (the CUDA device is per thread,
// and collectives may be issued from threads that never called cudaSetDevice).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    int current = 0;
    FER_CUDA_CHECK(cudaGetDevice(&current));
    if (current != device) {
      FER_CUDA_CHECK(cudaSetDevice(device));
      previous_ = current;
    }
  }
  ~DeviceGuard() {
    if (previous_ >= 0) FER_CUDA_LOG_ERROR(cudaSetDevice(previous_));
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

// The NCCL communicator: destroyed normally, or aborted (for errors, timeouts, lost peers).
class NcclComm {
 public:
  explicit NcclComm(ncclComm_t comm) : comm_(comm) {}
  ~NcclComm() { abort(); }  // only reached when neither destroy() nor abort() ran: be safe
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  ncclComm_t get() const { return comm_; }
  void destroy() {
    if (comm_ != nullptr) FER_NCCL_LOG_ERROR(ncclCommDestroy(comm_));
    comm_ = nullptr;
  }
  void abort() {
    if (comm_ != nullptr) FER_NCCL_LOG_ERROR(ncclCommAbort(comm_));
    comm_ = nullptr;
  }

 private:
  ncclComm_t comm_ = nullptr;
};

ncclDataType_t nccl_datatype(at::ScalarType type, bool* supported) {
  *supported = true;
  switch (type) {
    case at::kFloat:
      return ncclFloat32;
    case at::kDouble:
      return ncclFloat64;
    case at::kLong:
      return ncclInt64;
    case at::kInt:
      return ncclInt32;
    case at::kByte:
      return ncclUint8;
    case at::kHalf:
      return ncclFloat16;
#if NCCL_VERSION_CODE >= 21000  // bfloat16 arrived in NCCL 2.10
    case at::kBFloat16:
      return ncclBfloat16;
#endif
    default:
      *supported = false;
      return ncclFloat32;
  }
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kAvg:
      return ncclAvg;
    case ReduceOp::kMax:
      return ncclMax;
    case ReduceOp::kMin:
      return ncclMin;
  }
  return ncclSum;
}

enum class Poll { kDone, kPending, kFailed };

// One collective issued: its completion event (recorded on the communicator's stream after it),
// what it is, when it was issued, and whether a stream waits for it instead of the host
// (Work::wait_on_device: then the watchdog bounds it).
struct Collective {
  CudaEvent done;
  std::string what;
  std::chrono::steady_clock::time_point issued = std::chrono::steady_clock::now();
  std::atomic<bool> device_waits{false};
};

// ---- torch's current stream, through c10's device-generic interface ----------------------------
// LibTorch's CUDA library registers its stream and event implementation with c10 when it loads.
// Through it this file reaches torch's *current* CUDA stream (the trainer's, or whatever stream a
// caller made current with a c10::StreamGuard) without LibTorch's CUDA headers, so it still compiles
// next to Debian's CPU-only LibTorch. Without a CUDA LibTorch no CUDA tensor exists either; the
// legacy default stream stands in.

const c10::impl::DeviceGuardImplInterface* torch_cuda() {
  return c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA)
             ? c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)
             : nullptr;
}

c10::Device cuda_device(int device) {
  return c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device));
}

// Records `event` on torch's current stream of `device`: what is queued there now precedes it.
void record_on_current_stream(cudaEvent_t event, int device) {
  if (const auto* impl = torch_cuda()) {
    void* handle = event;  // record() takes an existing event and re-records it
    impl->record(&handle, impl->getStream(cuda_device(device)),
                 static_cast<c10::DeviceIndex>(device), c10::EventFlag::PYTORCH_DEFAULT);
  } else {
    FER_CUDA_CHECK(cudaEventRecord(event, nullptr));
  }
}

// Makes torch's current stream of `device` wait for `event`; the host does not wait.
void current_stream_waits_for(cudaEvent_t event, int device) {
  if (const auto* impl = torch_cuda()) {
    impl->block(event, impl->getStream(cuda_device(device)));
  } else {
    FER_CUDA_CHECK(cudaStreamWaitEvent(nullptr, event, 0));
  }
}

// ncclCommInitRank blocks until every rank has joined: forever when one never does (a dead rank,
// a misconfigured network). It runs on a thread of its own so that the caller's wait is bounded
// by wait_or_abort like any collective's.
class NcclInitWork final : public Work {
 public:
  NcclInitWork(int device, int size, const ncclUniqueId& id, int rank, std::string what)
      : what_(std::move(what)),
        result_(std::async(std::launch::async, [device, size, id, rank] {
          FER_CUDA_CHECK(cudaSetDevice(device));  // the device is per thread
          ncclComm_t comm = nullptr;
          FER_NCCL_CHECK(ncclCommInitRank(&comm, size, id, rank));
          return comm;
        })) {}

  void wait() override {
    if (!taken_) {
      taken_ = true;
      comm_ = result_.get();  // rethrows the thread's CommError
    }
  }
  bool wait_for(double seconds) override {
    return taken_ || result_.wait_for(std::chrono::duration<double>(std::max(seconds, 0.0))) ==
                         std::future_status::ready;
  }
  std::string describe() const override { return what_; }
  ncclComm_t comm() const { return comm_; }

 private:
  std::string what_;
  std::future<ncclComm_t> result_;
  bool taken_ = false;
  ncclComm_t comm_ = nullptr;
};

}  // namespace

// ---- shared state ------------------------------------------------------------------------------

struct NcclCommunicator::State {
  State(int device, int rank, int size, double timeout, std::string owner)
      : device(device),
        rank(rank),
        size(size),
        timeout_s(timeout),
        owner(std::move(owner)),
        scratch(sizeof(int64_t) * 4 * static_cast<size_t>(size), /*pinned=*/false),
        host_scratch(sizeof(int64_t) * 4 * static_cast<size_t>(size), /*pinned=*/true) {}

  const int device;
  const int rank;
  const int size;
  const double timeout_s;
  const std::string owner;  // describe() of the communicator

  CudaStream stream;        // where the collectives run
  CudaEvent ready;          // recorded on torch's current stream, waited for by `stream`
  CudaBuffer scratch;       // device int64[4 * size]: allgather layouts, barrier
  CudaBuffer host_scratch;  // pinned int64[4 * size]: allgather layouts
  std::unique_ptr<NcclComm> comm;

  struct InFlight {
    std::shared_ptr<Collective> collective;
    std::vector<at::Tensor> tensors;  // kept alive until its `done` fired
  };

  // Guards comm, failure, closed, in_flight and next_sequence. Held while issuing, so issue order
  // is launch order. Pollers only try_lock it: a launch blocked inside NCCL must not block the
  // watchdog's wait_for.
  std::mutex mutex;
  std::string failure;  // why the communicator was aborted; empty while healthy
  bool closed = false;  // destroyed normally
  std::deque<InFlight> in_flight;
  uint64_t next_sequence = 0;

  // The watchdog's (NcclCommunicator::watch) sleep, and its stop.
  std::mutex watch_mutex;
  std::condition_variable watch_cv;
  bool stop_watch = false;

  // Records the first failure and aborts the NCCL communicator. Caller holds `mutex`.
  void fail_locked(const std::string& why) {
    if (!failure.empty()) return;
    failure = why;
    spdlog::error("nccl communicator aborted: {}", why);
    if (comm) comm->abort();
  }

  // One look at `done`: finished, still running, or the communicator failed.
  Poll poll(cudaEvent_t done) {
    std::unique_lock<std::mutex> lock(mutex, std::try_to_lock);
    if (lock.owns_lock() && !failure.empty()) return Poll::kFailed;
    const cudaError_t rc = cudaEventQuery(done);
    if (rc == cudaSuccess) return Poll::kDone;
    if (!lock.owns_lock()) return Poll::kPending;  // someone is issuing; look again later
    if (rc != cudaErrorNotReady) {
      fail_locked(detail::cuda_error_message(rc, "cudaEventQuery(done)", __FILE__, __LINE__));
      return Poll::kFailed;
    }
    if (comm && comm->get() != nullptr) {
      ncclResult_t async_error = ncclSuccess;
      const ncclResult_t query = ncclCommGetAsyncError(comm->get(), &async_error);
      const ncclResult_t bad = query != ncclSuccess ? query : async_error;
      if (bad != ncclSuccess && bad != ncclInProgress) {
        fail_locked(detail::nccl_error_message(bad, "ncclCommGetAsyncError", __FILE__, __LINE__));
        return Poll::kFailed;
      }
    }
    return Poll::kPending;
  }

  // Polls `done` for at most `seconds` (backing off from 20 us to 1 ms between looks).
  Poll poll_for(cudaEvent_t done, double seconds) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    auto pause = std::chrono::microseconds(20);
    for (;;) {
      const Poll state = poll(done);
      if (state != Poll::kPending || std::chrono::steady_clock::now() >= deadline) return state;
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    }
  }

  // Waits for `done` up to timeout_s; throws CommError (and aborts) on failure or timeout.
  void wait(cudaEvent_t done, const std::string& what) {
    const Poll state = poll_for(done, timeout_s);
    if (state == Poll::kDone) return;
    std::lock_guard<std::mutex> lock(mutex);
    if (state == Poll::kPending) {
      fail_locked(detail::concat(what, " did not finish within ", timeout_s, " s"));
    }
    throw CommError(detail::concat(what, ": ", failure));
  }

  // Drops the collectives at the front that have finished (one stream: they finish in order).
  // Caller holds `mutex`.
  void prune_locked() {
    while (!in_flight.empty() &&
           cudaEventQuery(in_flight.front().collective->done.get()) == cudaSuccess) {
      in_flight.pop_front();
    }
  }
};

namespace {

class NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<NcclCommunicator::State> state, std::shared_ptr<Collective> collective)
      : state_(std::move(state)), collective_(std::move(collective)) {}

  void wait() override { state_->wait(collective_->done.get(), collective_->what); }
  bool wait_for(double seconds) override {
    return state_->poll_for(collective_->done.get(), std::max(seconds, 0.0)) != Poll::kPending;
  }
  bool wait_on_device() override {
    {
      std::lock_guard<std::mutex> lock(state_->mutex);
      FER_CHECK(state_->failure.empty(), CommError, collective_->what, ": ", state_->failure);
    }
    collective_->device_waits = true;  // from now on the watchdog bounds it
    current_stream_waits_for(collective_->done.get(), state_->device);
    return true;
  }
  std::string describe() const override { return collective_->what; }

 private:
  std::shared_ptr<NcclCommunicator::State> state_;
  std::shared_ptr<Collective> collective_;
};

// Issues `enqueue(comm, stream)` on the communication stream after the work queued on torch's
// current stream, and returns its handle. A failure while issuing aborts the communicator.
template <typename Enqueue>
std::unique_ptr<Work> launch(const std::shared_ptr<NcclCommunicator::State>& state,
                             const std::string& name, std::vector<at::Tensor> tensors,
                             Enqueue&& enqueue) {
  std::lock_guard<std::mutex> lock(state->mutex);
  const std::string what = detail::concat(name, " #", state->next_sequence++, " on ", state->owner);
  FER_CHECK(state->failure.empty(), CommError, what,
            ": not run, the communicator is broken since: ", state->failure);
  FER_CHECK(!state->closed, CommError, what, ": the communicator was destroyed");
  try {
    DeviceGuard guard(state->device);
    state->prune_locked();
    auto collective = std::make_shared<Collective>();
    collective->what = what;
    cudaStream_t stream = state->stream.get();
    record_on_current_stream(state->ready.get(), state->device);
    FER_CUDA_CHECK(cudaStreamWaitEvent(stream, state->ready.get(), 0));
    enqueue(state->comm->get(), stream);
    FER_CUDA_CHECK(cudaEventRecord(collective->done.get(), stream));
    state->in_flight.push_back({collective, std::move(tensors)});
    return std::make_unique<NcclWork>(state, std::move(collective));
  } catch (const std::exception& e) {
    state->fail_locked(detail::concat(what, ": ", e.what()));
    throw CommError(detail::concat(what, ": ", e.what()));
  }
}

}  // namespace

// ---- NcclCommunicator --------------------------------------------------------------------------

NcclCommunicator::NcclCommunicator(MpiContext& mpi, int device, NcclCommunicatorOptions options)
    : rank_(mpi.rank()), size_(mpi.size()), local_rank_(mpi.local_rank()), device_(device) {
  // 1. Every rank takes its GPU, then all agree: a rank failing alone would leave the others
  //    waiting in ncclCommInitRank forever.
  std::string problem;
  int device_count = 0;
  const cudaError_t count_rc = cudaGetDeviceCount(&device_count);
  if (count_rc != cudaSuccess) {
    problem = detail::cuda_error_message(count_rc, "cudaGetDeviceCount", __FILE__, __LINE__);
  } else if (device_count == 0) {
    problem = "no CUDA device is visible to this rank";
  } else if (device_ < 0 || device_ >= device_count) {
    if (device_ < 0) device_ = local_rank_ % device_count;  // the binding of DESIGN.md
    if (device_ >= device_count) {
      problem = detail::concat("local rank ", local_rank_, " was given CUDA device ", device_,
                               " but it sees ", device_count, " device(s)");
    }
  }
  if (problem.empty()) {
    const cudaError_t set_rc = cudaSetDevice(device_);
    if (set_rc != cudaSuccess) {
      problem = detail::cuda_error_message(set_rc, "cudaSetDevice", __FILE__, __LINE__);
    }
  }
  const int mine_bad = problem.empty() ? 0 : 1;
  std::vector<int> bad(static_cast<size_t>(size_));
  FER_MPI_CHECK(MPI_Allgather(&mine_bad, 1, MPI_INT, bad.data(), 1, MPI_INT, MPI_COMM_WORLD));
  std::string bad_ranks;
  for (int r = 0; r < size_; ++r) {
    if (bad[r]) bad_ranks += (bad_ranks.empty() ? "" : ", ") + std::to_string(r);
  }
  FER_CHECK(bad_ranks.empty(), CommError, "nccl: rank(s) ", bad_ranks,
            " cannot use their GPU; this rank: ", problem.empty() ? "ok" : problem);

  // 2. Rank 0 creates the unique id; the others learn it, or why there is none.
  struct {
    int ok;
    ncclUniqueId id;
  } start{1, {}};
  if (rank_ == 0) {
    const ncclResult_t rc = ncclGetUniqueId(&start.id);
    if (rc != ncclSuccess) {
      start.ok = 0;
      problem = detail::nccl_error_message(rc, "ncclGetUniqueId", __FILE__, __LINE__);
    }
  }
  FER_MPI_CHECK(MPI_Bcast(&start, sizeof(start), MPI_BYTE, 0, MPI_COMM_WORLD));
  FER_CHECK(start.ok, CommError, "nccl: rank 0 could not create the NCCL unique id",
            problem.empty() ? "" : ": ", problem);

  // 3. Stream, events, buffers, and the NCCL communicator itself.
  DeviceGuard guard(device_);
  state_ = std::make_shared<State>(device_, rank_, size_, options.timeout_s, describe());
  NcclInitWork init(device_, size_, start.id, rank_,
                    detail::concat("ncclCommInitRank on ", describe()));
  wait_or_abort(init, options.timeout_s, "NCCL initialisation");
  state_->comm = std::make_unique<NcclComm>(init.comm());
  watchdog_ = std::thread([this] { watch(); });
  spdlog::debug("{} ready (NCCL {})", describe(), NCCL_VERSION_CODE);
}

// The bound on the collectives the host does not wait for (Work::wait_on_device): a few times a
// second (at most every timeout_s / 10) the oldest of them still running is looked at; one running
// for longer than timeout_s, or an asynchronous NCCL error, stops the job naming it (abort_job,
// exit code 5): a stream waiting for it would otherwise hang the rank at its next host read.
void NcclCommunicator::watch() {
  const auto period = std::chrono::duration<double>(std::clamp(state_->timeout_s / 10, 0.05, 0.5));
  std::unique_lock<std::mutex> sleep(state_->watch_mutex);
  while (!state_->watch_cv.wait_for(sleep, period, [this] { return state_->stop_watch; })) {
    std::shared_ptr<Collective> oldest;
    {
      std::unique_lock<std::mutex> lock(state_->mutex, std::try_to_lock);
      if (!lock.owns_lock()) continue;  // someone is issuing; look again next time
      state_->prune_locked();
      for (const auto& f : state_->in_flight) {
        if (f.collective->device_waits) {
          oldest = f.collective;
          break;
        }
      }
    }
    if (!oldest) continue;
    const Poll state = state_->poll(oldest->done.get());
    const double age =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - oldest->issued).count();
    if (state == Poll::kDone || (state == Poll::kPending && age < state_->timeout_s)) continue;
    std::string why;
    {
      std::lock_guard<std::mutex> lock(state_->mutex);
      if (state == Poll::kPending) {
        state_->fail_locked(detail::concat("did not finish within ", state_->timeout_s, " s"));
      }
      why = state_->failure;
    }
    abort_job(static_cast<int>(ExitCode::kComm),
              detail::concat(oldest->what, ", waited for by the device: ", why,
                             " (dist.comm_timeout_s; another rank died, hangs, or issued a "
                             "different collective)"));
  }
}

NcclCommunicator::~NcclCommunicator() {
  if (!state_) return;
  if (watchdog_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(state_->watch_mutex);
      state_->stop_watch = true;
    }
    state_->watch_cv.notify_all();
    watchdog_.join();
  }
  try {
    // Give what is in flight up to timeout_s to finish; anything else means a peer is gone.
    std::vector<std::shared_ptr<Collective>> pending;
    {
      std::lock_guard<std::mutex> lock(state_->mutex);
      for (const auto& f : state_->in_flight) pending.push_back(f.collective);
    }
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(state_->timeout_s);
    bool finished = true;
    for (const auto& collective : pending) {
      const double left =
          std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count();
      if (state_->poll_for(collective->done.get(), std::max(left, 0.0)) != Poll::kDone) {
        finished = false;
        break;
      }
    }
    std::lock_guard<std::mutex> lock(state_->mutex);
    DeviceGuard guard(device_);
    if (finished && state_->failure.empty()) {
      state_->comm->destroy();
      state_->closed = true;
    } else {
      state_->fail_locked(describe() + " destroyed with collectives unfinished");
    }
    state_->in_flight.clear();
  } catch (const std::exception& e) {
    spdlog::error("{}: shutting down: {}", describe(), e.what());
  }
}

std::string NcclCommunicator::describe() const {
  return detail::concat("nccl rank ", rank_, "/", size_, " (local ", local_rank_,
                        ") on cuda:", device_);
}

namespace {

// Throws CommError naming `op` unless `t` is a tensor this backend can send from `device`.
ncclDataType_t check_tensor(const at::Tensor& t, const std::string& op, int device) {
  FER_CHECK(t.defined(), CommError, "nccl ", op, ": undefined tensor");
  FER_CHECK(t.is_cuda() && t.device().index() == device && t.layout() == at::kStrided, CommError,
            "nccl ", op, ": tensor on ", t.device(), " (", t.layout(),
            "); the nccl backend takes dense tensors on this rank's device cuda:", device,
            " (use the mpi backend for CPU tensors)");
  bool supported = false;
  const ncclDataType_t type = nccl_datatype(t.scalar_type(), &supported);
  FER_CHECK(supported, CommError, "nccl ", op, ": dtype ", detail::dtype_name(t.scalar_type()),
            " is not supported (float32, float64, int64)");
  FER_CHECK(t.is_contiguous(), CommError, "nccl ", op, ": tensor ", detail::tensor_summary(t),
            " is not contiguous; pass t.contiguous() and copy the result back");
  return type;
}

}  // namespace

std::unique_ptr<Work> NcclCommunicator::allreduce_async(at::Tensor& t, ReduceOp op) {
  const std::string name = detail::concat("allreduce(", to_string(op), ")");
  const ncclDataType_t type = check_tensor(t, name, device_);
  FER_CHECK(op != ReduceOp::kAvg || at::isFloatingType(t.scalar_type()), CommError, "nccl ", name,
            ": cannot average an integer tensor (", detail::dtype_name(t.scalar_type()),
            "); use sum and divide where the rounding is yours to choose");
  void* data = t.data_ptr();
  const size_t count = static_cast<size_t>(t.numel());
  const ncclRedOp_t reduce = nccl_op(op);
  return launch(state_, detail::concat(name, " ", detail::tensor_summary(t)), {t},
                [&](ncclComm_t comm, cudaStream_t stream) {
                  if (count == 0) return;
                  FER_NCCL_CHECK(ncclAllReduce(data, data, count, type, reduce, comm, stream));
                });
}

std::unique_ptr<Work> NcclCommunicator::broadcast_async(at::Tensor& t, int root) {
  const std::string name = detail::concat("broadcast(root ", root, ")");
  const ncclDataType_t type = check_tensor(t, name, device_);
  FER_CHECK(root >= 0 && root < size_, CommError, "nccl ", name, ": root out of range [0, ", size_,
            ")");
  void* data = t.data_ptr();
  const size_t count = static_cast<size_t>(t.numel());
  return launch(state_, detail::concat(name, " ", detail::tensor_summary(t)), {t},
                [&](ncclComm_t comm, cudaStream_t stream) {
                  if (count == 0) return;
                  FER_NCCL_CHECK(ncclBroadcast(data, data, count, type, root, comm, stream));
                });
}

at::Tensor NcclCommunicator::allgather(const at::Tensor& in) {
  const ncclDataType_t type = check_tensor(in, "allgather", device_);
  const std::string name = detail::concat("allgather ", detail::tensor_summary(in));
  const std::vector<int64_t> sizes = in.dim() == 0 ? std::vector<int64_t>{1} : in.sizes().vec();
  const int64_t row =
      std::accumulate(sizes.begin() + 1, sizes.end(), int64_t{1}, std::multiplies<int64_t>());
  const size_t item = in.element_size();

  // 1. Agree on the layout: {dim 0, number of dims, dims after the first, dtype} of every rank.
  constexpr int kMeta = 4;
  uint64_t trailing_hash = 1469598103934665603ull;  // FNV-1a over the dims after the first
  for (size_t i = 1; i < sizes.size(); ++i) {
    trailing_hash = (trailing_hash ^ static_cast<uint64_t>(sizes[i])) * 1099511628211ull;
  }
  const int64_t mine[kMeta] = {sizes[0], static_cast<int64_t>(sizes.size()),
                               static_cast<int64_t>(trailing_hash >> 1),
                               static_cast<int64_t>(in.scalar_type())};
  auto* host = static_cast<int64_t*>(state_->host_scratch.get());
  auto* device_meta = static_cast<int64_t*>(state_->scratch.get());
  {
    std::copy(mine, mine + kMeta, host + static_cast<size_t>(rank_) * kMeta);
    const size_t rank_offset = static_cast<size_t>(rank_) * kMeta;
    launch(state_, name + " (layout)", {}, [&](ncclComm_t comm, cudaStream_t stream) {
      FER_CUDA_CHECK(cudaMemcpyAsync(device_meta + rank_offset, host + rank_offset,
                                     kMeta * sizeof(int64_t), cudaMemcpyHostToDevice, stream));
      FER_NCCL_CHECK(
          ncclAllGather(device_meta + rank_offset, device_meta, kMeta, ncclInt64, comm, stream));
      FER_CUDA_CHECK(cudaMemcpyAsync(host, device_meta, kMeta * sizeof(int64_t) * size_,
                                     cudaMemcpyDeviceToHost, stream));
    })->wait();
  }
  std::vector<size_t> counts(static_cast<size_t>(size_));
  std::vector<size_t> offsets(static_cast<size_t>(size_));
  int64_t total_rows = 0;
  for (int r = 0; r < size_; ++r) {
    const int64_t* theirs = host + static_cast<size_t>(r) * kMeta;
    // Every rank sees the same table, so every rank throws, and the communicator stays usable.
    FER_CHECK(theirs[1] == mine[1] && theirs[2] == mine[2] && theirs[3] == mine[3], CommError,
              "nccl allgather: rank ", r,
              " sends a tensor whose dims after the first or dtype differ from this rank's ",
              detail::tensor_summary(in));
    offsets[r] = static_cast<size_t>(total_rows * row);
    counts[r] = static_cast<size_t>(theirs[0] * row);
    total_rows += theirs[0];
  }

  // 2. Move the data: straight into the result when every rank sends as much, else through a
  //    buffer padded to the largest contribution (NCCL's allgather takes one count).
  std::vector<int64_t> out_sizes = sizes;
  out_sizes[0] = total_rows;
  DeviceGuard guard(device_);
  CudaBuffer out(static_cast<size_t>(total_rows * row) * item, /*pinned=*/false);
  const size_t largest = *std::max_element(counts.begin(), counts.end());
  const bool equal =
      std::all_of(counts.begin(), counts.end(), [&](size_t c) { return c == largest; });
  CudaBuffer padded;
  if (!equal) padded = CudaBuffer(largest * item * size_, /*pinned=*/false);
  if (largest > 0) {
    char* result = static_cast<char*>(out.get());
    char* staging = static_cast<char*>(padded.get());
    const void* send = in.data_ptr();
    launch(state_, name, {in}, [&](ncclComm_t comm, cudaStream_t stream) {
      if (equal) {
        FER_NCCL_CHECK(ncclAllGather(send, result, largest, type, comm, stream));
        return;
      }
      char* slot = staging + static_cast<size_t>(rank_) * largest * item;
      if (counts[rank_] > 0) {
        FER_CUDA_CHECK(
            cudaMemcpyAsync(slot, send, counts[rank_] * item, cudaMemcpyDeviceToDevice, stream));
      }
      FER_NCCL_CHECK(ncclAllGather(slot, staging, largest, type, comm, stream));
      for (int r = 0; r < size_; ++r) {
        if (counts[r] == 0) continue;
        FER_CUDA_CHECK(cudaMemcpyAsync(result + offsets[r] * item,
                                       staging + static_cast<size_t>(r) * largest * item,
                                       counts[r] * item, cudaMemcpyDeviceToDevice, stream));
      }
    })->wait();
  }
  void* data = out.release();
  return at::for_blob(data, out_sizes)
      .target_device(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device_)))
      .deleter([](void* p) { FER_CUDA_LOG_ERROR(cudaFree(p)); })
      .options(in.options())
      .make_tensor();
}

void NcclCommunicator::barrier() {
  auto* flag = static_cast<int64_t*>(state_->scratch.get());
  launch(state_, "barrier", {}, [&](ncclComm_t comm, cudaStream_t stream) {
    FER_NCCL_CHECK(ncclAllReduce(flag, flag, 1, ncclInt64, ncclSum, comm, stream));
  })->wait();
}

}  // namespace fer
