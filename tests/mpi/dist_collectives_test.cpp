// Multi-rank tests of the MPI communicator (src/dist). Run under mpiexec with 1, 2 and 4 ranks and
// once without a launcher (MPI singleton, a world of 1); see tests/mpi/CMakeLists.txt.
//
// Every test issues the same collectives on every rank, unconditionally, and only checks results
// afterwards: a check that returned early on one rank would leave the others waiting. main() makes
// the exit code the same on every rank and aborts the job if a test hangs.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <ostream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "common/errors.h"
#include "dist/communicator.h"
#include "dist/mpi_check.h"
#include "dist/mpi_communicator.h"
#include "dist/mpi_context.h"
#include "mpi_test_env.h"

namespace fer {

MpiContext* g_mpi = nullptr;  // created once in main()

// For gtest's messages: "avg" rather than "4-byte object <01-00 00-00>" (found by ADL, so in fer).
void PrintTo(ReduceOp op, std::ostream* os) { *os << to_string(op); }

namespace {

constexpr int64_t kLarge = 1000003;  // odd, and larger than a gradient bucket's first chunk

class DistCollectivesTest : public ::testing::Test {
 protected:
  int rank() const { return comm_.rank(); }
  int world() const { return comm_.size(); }
  MpiCommunicator comm_{*g_mpi};
};

// The value rank `r` contributes at index `i`: small integers, so that sums are exact in float32.
int64_t contribution(int64_t i, int r) { return (i * 7 + r * 13) % 101 - 50 + r; }

at::Tensor contributions(at::ScalarType type, int64_t n, int r) {
  auto i = at::arange(n, at::kLong);
  return ((i * 7 + r * 13).remainder(101) - 50 + r).to(type).contiguous();
}

// Fractional values whose sums round: for checks that must be bit-exact, not just exact.
at::Tensor fractional(at::ScalarType type, int64_t n, int r) {
  auto i = at::arange(n, at::kDouble);
  return (at::sin(i * 0.37 + r * 1.3) * 1000.0 + 1.0 / (r + 3)).to(type).contiguous();
}

template <typename T>
at::Tensor expected_reduction(int64_t n, int world, ReduceOp op, at::ScalarType type) {
  at::Tensor out = at::empty({n}, at::TensorOptions().dtype(type));
  T* p = out.data_ptr<T>();
  for (int64_t i = 0; i < n; ++i) {
    int64_t sum = 0;
    int64_t max = contribution(i, 0);
    int64_t min = max;
    for (int r = 0; r < world; ++r) {
      const int64_t v = contribution(i, r);
      sum += v;
      max = std::max(max, v);
      min = std::min(min, v);
    }
    switch (op) {
      case ReduceOp::kSum:
        p[i] = static_cast<T>(sum);
        break;
      case ReduceOp::kAvg:
        p[i] = static_cast<T>(sum) / static_cast<T>(world);
        break;
      case ReduceOp::kMax:
        p[i] = static_cast<T>(max);
        break;
      case ReduceOp::kMin:
        p[i] = static_cast<T>(min);
        break;
    }
  }
  return out;
}

at::Tensor expected_reduction(int64_t n, int world, ReduceOp op, at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return expected_reduction<float>(n, world, op, type);
    case at::kDouble:
      return expected_reduction<double>(n, world, op, type);
    default:
      return expected_reduction<int64_t>(n, world, op, type);
  }
}

// Same dtype, shape and bytes (stricter than at::equal: tells -0 from +0, compares NaN payloads).
::testing::AssertionResult bit_identical(const at::Tensor& actual, const at::Tensor& expected) {
  if (actual.scalar_type() != expected.scalar_type() || actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure()
           << detail::tensor_summary(actual) << " vs expected " << detail::tensor_summary(expected);
  }
  const auto a = actual.contiguous();
  const auto e = expected.contiguous();
  const size_t item = a.element_size();
  const auto* pa = static_cast<const unsigned char*>(a.data_ptr());
  const auto* pe = static_cast<const unsigned char*>(e.data_ptr());
  int64_t mismatches = 0;
  int64_t first = -1;
  for (int64_t i = 0; i < a.numel(); ++i) {
    if (std::memcmp(pa + i * item, pe + i * item, item) != 0) {
      if (first < 0) first = i;
      ++mismatches;
    }
  }
  if (mismatches == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << mismatches << " of " << a.numel() << " elements differ; first at " << first << ": "
         << a.reshape({-1})[first].item<double>() << " vs expected "
         << e.reshape({-1})[first].item<double>();
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const CommError& e) {
    return e.what();
  }
  return "(no CommError)";
}

// ---- allreduce against the formula -------------------------------------------------------------

using AllreduceCase = std::tuple<at::ScalarType, ReduceOp, int64_t>;

class AllreduceFormulaTest : public DistCollectivesTest,
                             public ::testing::WithParamInterface<AllreduceCase> {};

TEST_P(AllreduceFormulaTest, EveryRankGetsTheExactReduction) {
  const auto [type, op, n] = GetParam();
  at::Tensor t = contributions(type, n, rank());
  comm_.allreduce(t, op);
  EXPECT_TRUE(bit_identical(t, expected_reduction(n, world(), op, type)));
}

std::vector<AllreduceCase> allreduce_cases() {
  std::vector<AllreduceCase> cases;
  for (auto type : {at::kFloat, at::kDouble, at::kLong}) {
    for (auto op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax, ReduceOp::kMin}) {
      if (type == at::kLong && op == ReduceOp::kAvg) continue;  // rejected, tested below
      for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, kLarge}) {
        cases.emplace_back(type, op, n);
      }
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(AllDtypesOpsSizes, AllreduceFormulaTest,
                         ::testing::ValuesIn(allreduce_cases()),
                         [](const ::testing::TestParamInfo<AllreduceCase>& info) {
                           return detail::dtype_name(std::get<0>(info.param)) + "_" +
                                  to_string(std::get<1>(info.param)) + "_n" +
                                  std::to_string(std::get<2>(info.param));
                         });

TEST_F(DistCollectivesTest, AllreduceOfRoundingValuesIsBitIdenticalOnEveryRank) {
  for (int64_t n : {int64_t{7}, kLarge}) {
    for (auto op : {ReduceOp::kSum, ReduceOp::kAvg}) {
      at::Tensor t = fractional(at::kFloat, n, rank());
      comm_.allreduce(t, op);
      const at::Tensor all = comm_.allgather(t.unsqueeze(0));  // [world, n]
      for (int r = 1; r < world(); ++r) {
        EXPECT_TRUE(bit_identical(all[r], all[0]))
            << "rank " << r << " vs rank 0, " << n << " " << to_string(op);
      }
    }
  }
}

// ---- rejected tensors --------------------------------------------------------------------------

TEST_F(DistCollectivesTest, AvgOfInt64IsRejected) {
  at::Tensor t = contributions(at::kLong, 7, rank());
  const std::string what = message_of([&] { comm_.allreduce(t, ReduceOp::kAvg); });
  EXPECT_NE(what.find("allreduce(avg)"), std::string::npos) << what;
  EXPECT_NE(what.find("int64"), std::string::npos) << what;
  EXPECT_TRUE(bit_identical(t, contributions(at::kLong, 7, rank()))) << "tensor was touched";
}

TEST_F(DistCollectivesTest, NonContiguousTensorsAreRejectedNamingTheOp) {
  at::Tensor t = at::zeros({4, 3}).t();
  ASSERT_FALSE(t.is_contiguous());
  const std::string reduce = message_of([&] { comm_.allreduce(t, ReduceOp::kSum); });
  EXPECT_NE(reduce.find("allreduce(sum)"), std::string::npos) << reduce;
  EXPECT_NE(reduce.find("not contiguous"), std::string::npos) << reduce;
  const std::string bcast = message_of([&] { comm_.broadcast(t, 0); });
  EXPECT_NE(bcast.find("broadcast"), std::string::npos) << bcast;
  const std::string gather = message_of([&] { comm_.allgather(t); });
  EXPECT_NE(gather.find("allgather"), std::string::npos) << gather;
  const std::string async = message_of([&] { comm_.allreduce_async(t, ReduceOp::kMax); });
  EXPECT_NE(async.find("allreduce(max)"), std::string::npos) << async;
}

TEST_F(DistCollectivesTest, UnsupportedDtypesAreRejected) {
  at::Tensor t = at::zeros({5}, at::kInt);
  const std::string what = message_of([&] { comm_.allreduce(t, ReduceOp::kSum); });
  EXPECT_NE(what.find("int32"), std::string::npos) << what;
  at::Tensor h = at::zeros({5}, at::kHalf);
  EXPECT_THROW(comm_.broadcast(h, 0), CommError);
}

TEST_F(DistCollectivesTest, CudaTensorsAreRejected) {
  // A CUDA tensor without a GPU: host memory labelled cuda:0. The communicator must refuse it from
  // the metadata alone, before touching the data.
  std::vector<float> host(4, 1.0f);
  at::Tensor cuda;
  try {
    cuda = at::for_blob(host.data(), {4})
               .target_device(at::Device(at::kCUDA, 0))
               .options(at::TensorOptions().dtype(at::kFloat).device(at::kCUDA, 0))
               .make_tensor();
  } catch (const std::exception& e) {
    GTEST_SKIP() << "this LibTorch cannot label memory as CUDA: " << e.what();
  }
  ASSERT_TRUE(cuda.is_cuda());
  const std::string what = message_of([&] { comm_.allreduce(cuda, ReduceOp::kSum); });
  EXPECT_NE(what.find("cuda"), std::string::npos) << what;
  EXPECT_NE(what.find("allreduce(sum)"), std::string::npos) << what;
  EXPECT_THROW(comm_.broadcast(cuda, 0), CommError);
  EXPECT_THROW(comm_.allgather(cuda), CommError);
}

TEST_F(DistCollectivesTest, BroadcastRootOutOfRangeIsRejected) {
  at::Tensor t = at::zeros({3});
  EXPECT_THROW(comm_.broadcast(t, world()), CommError);
  EXPECT_THROW(comm_.broadcast(t, -1), CommError);
}

TEST_F(DistCollectivesTest, MpiCheckThrowsWithCallFileAndRank) {
  int ignored = 0;
  const std::string what =
      message_of([&] { FER_MPI_CHECK(MPI_Comm_rank(MPI_COMM_NULL, &ignored)); });
  EXPECT_NE(what.find("MPI_Comm_rank(MPI_COMM_NULL, &ignored) failed"), std::string::npos) << what;
  EXPECT_NE(what.find("MPI_ERR_COMM"), std::string::npos) << what;
  EXPECT_NE(what.find("(rank " + std::to_string(rank()) + ")"), std::string::npos) << what;
  EXPECT_NE(what.find("dist_collectives_test.cpp:"), std::string::npos) << what;
}

// ---- broadcast, allgather, barrier -------------------------------------------------------------

void check_broadcast(MpiCommunicator& comm, int root) {
  for (auto type : {at::kFloat, at::kDouble, at::kLong}) {
    for (int64_t n : {int64_t{0}, int64_t{7}, kLarge}) {
      at::Tensor t = fractional(type, n, comm.rank());
      comm.broadcast(t, root);
      EXPECT_TRUE(bit_identical(t, fractional(type, n, root)))
          << detail::dtype_name(type) << " n=" << n << " root " << root;
    }
  }
}

TEST_F(DistCollectivesTest, BroadcastFromRankZeroReachesEveryRank) { check_broadcast(comm_, 0); }

TEST_F(DistCollectivesTest, BroadcastFromLastRankReachesEveryRank) {
  check_broadcast(comm_, world() - 1);
}

// Rank r contributes `rows(r)` rows of 3 values r*1000 + k.
void check_allgather(MpiCommunicator& comm, int (*rows)(int), at::ScalarType type) {
  const int r = comm.rank();
  at::Tensor mine = (at::arange(rows(r) * 3, at::kLong) + r * 1000).reshape({rows(r), 3}).to(type);
  const at::Tensor all = comm.allgather(mine);
  std::vector<at::Tensor> parts;
  for (int q = 0; q < comm.size(); ++q) {
    parts.push_back((at::arange(rows(q) * 3, at::kLong) + q * 1000).reshape({rows(q), 3}).to(type));
  }
  EXPECT_TRUE(bit_identical(all, at::cat(parts, 0))) << detail::dtype_name(type);
}

TEST_F(DistCollectivesTest, AllgatherConcatenatesRankSizedContributionsInRankOrder) {
  for (auto type : {at::kFloat, at::kDouble, at::kLong}) {
    check_allgather(
        comm_, [](int r) { return r + 1; }, type);
    check_allgather(
        comm_, [](int r) { return r; }, type);  // rank 0 sends no rows
    check_allgather(
        comm_, [](int) { return 0; }, type);  // nobody sends anything
  }
}

TEST_F(DistCollectivesTest, AllgatherOfScalarsGivesOneElementPerRank) {
  const at::Tensor all = comm_.allgather(at::scalar_tensor(rank() * 2.5, at::kDouble));
  EXPECT_TRUE(bit_identical(all, at::arange(world(), at::kDouble) * 2.5));
}

TEST_F(DistCollectivesTest, AllgatherWithMismatchedRowShapesFailsOnEveryRankAndStaysUsable) {
  if (world() == 1) GTEST_SKIP() << "needs two ranks to disagree";
  const bool odd_one = rank() == world() - 1;
  at::Tensor mine = at::zeros({2, odd_one ? 4 : 3});
  EXPECT_THROW(comm_.allgather(mine), CommError);
  // Every rank threw after the same exchange, so the ranks are still in step.
  at::Tensor t = contributions(at::kDouble, 7, rank());
  comm_.allreduce(t, ReduceOp::kSum);
  EXPECT_TRUE(bit_identical(t, expected_reduction(7, world(), ReduceOp::kSum, at::kDouble)));
}

TEST_F(DistCollectivesTest, BarrierReturnsOnlyAfterEveryRankEntered) {
  // steady_clock is CLOCK_MONOTONIC, shared by processes on one machine.
  using Clock = std::chrono::steady_clock;
  if (rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const int64_t entered = Clock::now().time_since_epoch().count();
  comm_.barrier();
  const int64_t left = Clock::now().time_since_epoch().count();
  const at::Tensor times = comm_.allgather(at::tensor({entered, left}, at::kLong).reshape({1, 2}));
  const int64_t last_entry = times.select(1, 0).max().item<int64_t>();
  for (int r = 0; r < world(); ++r) {
    EXPECT_GE(times[r][1].item<int64_t>(), last_entry) << "rank " << r << " left the barrier early";
  }
}

// ---- async -------------------------------------------------------------------------------------

TEST_F(DistCollectivesTest, AsyncResultsAreBitIdenticalToBlockingOnes) {
  for (auto type : {at::kFloat, at::kDouble}) {
    for (auto op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax, ReduceOp::kMin}) {
      at::Tensor blocking = fractional(type, kLarge, rank());
      at::Tensor async = blocking.clone();
      comm_.allreduce(blocking, op);
      auto work = comm_.allreduce_async(async, op);
      work->wait();
      EXPECT_TRUE(bit_identical(async, blocking))
          << detail::dtype_name(type) << " " << to_string(op);
    }
  }
  at::Tensor blocking = fractional(at::kDouble, 1001, rank());
  at::Tensor async = blocking.clone();
  comm_.broadcast(blocking, world() - 1);
  comm_.broadcast_async(async, world() - 1)->wait();
  EXPECT_TRUE(bit_identical(async, blocking));
}

TEST_F(DistCollectivesTest, SeveralAsyncCollectivesInFlightKeepIssueOrder) {
  // Different ops, sizes and roots in a row: if any rank ran them in another order the results
  // would mix (or the sizes would not match). Waited for in reverse order, with a blocking call
  // issued while they are in flight (it queues behind them).
  constexpr int kCount = 12;
  std::vector<at::Tensor> tensors;
  std::vector<std::unique_ptr<Work>> works;
  for (int k = 0; k < kCount; ++k) {
    const int64_t n = 1000 + 997 * k;
    tensors.push_back(contributions(at::kDouble, n, rank()) + k);
    switch (k % 3) {
      case 0:
        works.push_back(comm_.allreduce_async(tensors.back(), ReduceOp::kSum));
        break;
      case 1:
        works.push_back(comm_.allreduce_async(tensors.back(), ReduceOp::kMax));
        break;
      default:
        works.push_back(comm_.broadcast_async(tensors.back(), k % world()));
        break;
    }
  }
  at::Tensor blocking = contributions(at::kFloat, kLarge, rank());
  comm_.allreduce(blocking, ReduceOp::kMin);
  for (int k = kCount - 1; k >= 0; --k) works[k]->wait();

  EXPECT_TRUE(
      bit_identical(blocking, expected_reduction(kLarge, world(), ReduceOp::kMin, at::kFloat)));
  for (int k = 0; k < kCount; ++k) {
    const int64_t n = 1000 + 997 * k;
    at::Tensor expected;
    switch (k % 3) {
      case 0:
        expected = expected_reduction(n, world(), ReduceOp::kSum, at::kDouble) + k * world();
        break;
      case 1:
        expected = expected_reduction(n, world(), ReduceOp::kMax, at::kDouble) + k;
        break;
      default:
        expected = contributions(at::kDouble, n, k % world()) + k;
        break;
    }
    EXPECT_TRUE(bit_identical(tensors[k], expected)) << "collective #" << k;
  }
}

TEST_F(DistCollectivesTest, WaitForReportsCompletionAndDescribeNamesTheCollective) {
  at::Tensor t = contributions(at::kFloat, 7, rank());
  auto work = comm_.allreduce_async(t, ReduceOp::kSum);
  EXPECT_TRUE(work->wait_for(60.0));
  EXPECT_TRUE(work->wait_for(0.0)) << "a finished collective stays finished";
  EXPECT_NO_THROW(work->wait());
  EXPECT_NO_THROW(work->wait()) << "wait() is idempotent";
  EXPECT_NE(work->describe().find("allreduce(sum) float32[7]"), std::string::npos)
      << work->describe();
  EXPECT_NE(work->describe().find("mpi rank " + std::to_string(rank())), std::string::npos)
      << work->describe();
  EXPECT_TRUE(bit_identical(t, expected_reduction(7, world(), ReduceOp::kSum, at::kFloat)));
}

TEST_F(DistCollectivesTest, DestructorRunsQueuedCollectivesAndWorkOutlivesTheCommunicator) {
  std::vector<at::Tensor> tensors;
  std::vector<std::unique_ptr<Work>> works;
  {
    MpiCommunicator local(*g_mpi);
    for (int k = 0; k < 4; ++k) {
      tensors.push_back(contributions(at::kDouble, kLarge / (k + 1), rank()));
      auto work = local.allreduce_async(tensors.back(), ReduceOp::kSum);
      if (k % 2 == 0) works.push_back(std::move(work));  // the others are dropped unwaited
    }
  }
  for (auto& work : works) EXPECT_NO_THROW(work->wait());
  for (int k = 0; k < 4; ++k) {
    EXPECT_TRUE(bit_identical(
        tensors[k], expected_reduction(kLarge / (k + 1), world(), ReduceOp::kSum, at::kDouble)))
        << "collective #" << k;
  }
}

// Not run by default: it kills the job. CTest runs it alone (mpi_collectives_shutdown_abort_np2)
// and expects the abort message: a communicator that cannot finish its collectives must stop the
// job when destroyed, never hang.
TEST_F(DistCollectivesTest, DISABLED_DestructorAbortsTheJobWhenACollectiveCannotFinish) {
  if (world() == 1) GTEST_SKIP() << "needs a peer that never joins";
  MpiCommunicatorOptions options;
  options.shutdown_timeout_s = 2.0;
  MpiCommunicator local(*g_mpi, options);
  if (rank() == world() - 1) {
    at::Tensor t = at::ones({10});
    local.allreduce_async(t, ReduceOp::kSum);  // no other rank joins: never finishes
  }
}

// ---- context and factory -----------------------------------------------------------------------

TEST_F(DistCollectivesTest, ContextDescribesAConsistentWorld) {
  const MpiContext& mpi = *g_mpi;
  EXPECT_EQ(mpi.rank(), comm_.rank());
  EXPECT_EQ(mpi.size(), comm_.size());
  EXPECT_GE(mpi.rank(), 0);
  EXPECT_LT(mpi.rank(), mpi.size());
  EXPECT_GE(mpi.local_rank(), 0);
  EXPECT_LT(mpi.local_rank(), mpi.local_size());
  EXPECT_LE(mpi.local_size(), mpi.size());
  EXPECT_GE(mpi.thread_level(), MPI_THREAD_SERIALIZED);
  EXPECT_NE(mpi.describe().find("MPI rank " + std::to_string(mpi.rank())), std::string::npos)
      << mpi.describe();
  // All ranks of these tests run on one machine.
  EXPECT_EQ(mpi.local_rank(), mpi.rank());
}


// ---- main: one MPI session, consistent exit code, no hangs -------------------------------------

// Prints only failures (with the rank): ranks other than 0 would otherwise repeat rank 0's report.
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.summary());
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed()) {
      std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank_, info.test_suite_name(), info.name());
    }
  }

 private:
  int rank_;
};

// Aborts the whole job when the tests take too long (a rank stuck in a collective), so a hang
// fails fast and names the test instead of waiting for CTest's timeout.
class Watchdog : public ::testing::EmptyTestEventListener {
 public:
  explicit Watchdog(std::chrono::seconds limit) {
    thread_ = std::thread([this, limit] {
      std::unique_lock<std::mutex> lock(mutex_);
      if (!done_cv_.wait_for(lock, limit, [&] { return done_; })) {
        abort_job(1, "test watchdog: still in " + current_ + " after " +
                         std::to_string(limit.count()) + " s (a rank stuck in a collective?)");
      }
    });
  }
  ~Watchdog() override { stop(); }
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
    }
    done_cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  void OnTestStart(const ::testing::TestInfo& info) override {
    std::lock_guard<std::mutex> lock(mutex_);
    current_ = std::string(info.test_suite_name()) + "." + info.name();
  }

 private:
  std::mutex mutex_;
  std::condition_variable done_cv_;
  bool done_ = false;
  std::string current_ = "start-up";
  std::thread thread_;
};

}  // namespace
}  // namespace fer

int main(int argc, char** argv) {
  fer::MpiContext mpi(&argc, &argv);
  fer::g_mpi = &mpi;
  ::testing::InitGoogleTest(&argc, argv);
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (mpi.rank() != 0) {
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new fer::FailurePrinter(mpi.rank()));
  }
  auto* watchdog = new fer::Watchdog(std::chrono::seconds(100));
  listeners.Append(watchdog);  // owned by gtest from here on

  const int failed_here = RUN_ALL_TESTS() != 0 ? 1 : 0;
  watchdog->stop();
  int failed_anywhere = failed_here;
  FER_MPI_CHECK(MPI_Allreduce(&failed_here, &failed_anywhere, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
  if (failed_anywhere && !failed_here) {
    std::fprintf(stderr, "[rank %d] all tests passed here, but another rank failed\n", mpi.rank());
  }
  return failed_anywhere;
}
