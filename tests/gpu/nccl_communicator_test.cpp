// GPU tests of the NCCL communicator (src/dist). Every test skips (GTEST_SKIP) when the build has
// no NCCL backend or any rank lacks a GPU (one GPU per rank on a node: cuda:local_rank).
//
// CUDA tensors are made without a CUDA-enabled LibTorch: cudaMalloc'd memory wrapped with
// at::for_blob(...).target_device(cuda:d), data moved with cudaMemcpy. So these tests run against
// Debian's CPU-only LibTorch too.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/errors.h"
#include "dist/communicator.h"
#include "dist/mpi_check.h"
#include "dist/mpi_context.h"
#include "dist/planes.h"
#ifdef FER_HAVE_NCCL
#include <cuda_runtime_api.h>

#include "dist/nccl_communicator.h"
#endif

namespace fer {
namespace {

MpiContext* g_mpi = nullptr;  // created once in main()
bool g_every_rank_has_a_gpu = false;
std::string g_why_skipped;

#ifdef FER_HAVE_NCCL

void cuda_ok(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(rc));
  }
}

at::Tensor to_device(const at::Tensor& host_tensor, int device) {
  const at::Tensor host = host_tensor.contiguous();
  const size_t bytes = host.numel() * host.element_size();
  cuda_ok(cudaSetDevice(device), "cudaSetDevice");
  void* p = nullptr;
  cuda_ok(cudaMalloc(&p, std::max<size_t>(bytes, 1)), "cudaMalloc");
  if (bytes > 0) cuda_ok(cudaMemcpy(p, host.data_ptr(), bytes, cudaMemcpyHostToDevice), "H2D");
  return at::for_blob(p, host.sizes())
      .target_device(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device)))
      .deleter([](void* q) { cudaFree(q); })
      .options(host.options().device(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device))))
      .make_tensor();
}

at::Tensor to_host(const at::Tensor& device_tensor) {
  at::Tensor host = at::empty(device_tensor.sizes(), device_tensor.options().device(at::kCPU));
  const size_t bytes = host.numel() * host.element_size();
  if (bytes > 0) {
    cuda_ok(cudaMemcpy(host.data_ptr(), device_tensor.data_ptr(), bytes, cudaMemcpyDeviceToHost),
            "D2H");
  }
  return host;
}

int64_t contribution(int64_t i, int r) { return (i * 7 + r * 13) % 101 - 50 + r; }

at::Tensor contributions(at::ScalarType type, int64_t n, int r) {
  auto i = at::arange(n, at::kLong);
  return ((i * 7 + r * 13).remainder(101) - 50 + r).to(type).contiguous();
}

at::Tensor fractional(at::ScalarType type, int64_t n, int r) {
  auto i = at::arange(n, at::kDouble);
  return (at::sin(i * 0.37 + r * 1.3) * 1000.0 + 1.0 / (r + 3)).to(type).contiguous();
}

at::Tensor expected_reduction(int64_t n, int world, ReduceOp op, at::ScalarType type) {
  std::vector<int64_t> sum(n, 0), max(n), min(n);
  for (int64_t i = 0; i < n; ++i) {
    max[i] = min[i] = contribution(i, 0);
    for (int r = 0; r < world; ++r) {
      sum[i] += contribution(i, r);
      max[i] = std::max(max[i], contribution(i, r));
      min[i] = std::min(min[i], contribution(i, r));
    }
  }
  const auto& pick = op == ReduceOp::kMax ? max : op == ReduceOp::kMin ? min : sum;
  at::Tensor out = at::tensor(pick, at::kLong).to(type);
  if (op == ReduceOp::kAvg) out = out / world;
  return out;
}

bool bit_identical(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
         std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(),
                     a.numel() * a.element_size()) == 0;
}

#endif  // FER_HAVE_NCCL

class NcclCommunicatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
#ifndef FER_HAVE_NCCL
    GTEST_SKIP() << "built without the NCCL backend (FER_HAVE_NCCL)";
#else
    if (!g_every_rank_has_a_gpu) GTEST_SKIP() << g_why_skipped;
    comm_ = std::make_unique<NcclCommunicator>(*g_mpi);
#endif
  }
#ifdef FER_HAVE_NCCL
  int rank() const { return comm_->rank(); }
  int world() const { return comm_->size(); }
  int device() const { return comm_->device(); }
  std::unique_ptr<NcclCommunicator> comm_;
#endif
};

#ifdef FER_HAVE_NCCL

TEST_F(NcclCommunicatorTest, AllreduceGivesTheReductionForEveryDtypeOpAndSize) {
  for (auto type : {at::kFloat, at::kDouble, at::kLong}) {
    for (auto op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax, ReduceOp::kMin}) {
      if (type == at::kLong && op == ReduceOp::kAvg) continue;
      for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{1000003}}) {
        at::Tensor t = to_device(contributions(type, n, rank()), device());
        comm_->allreduce(t, op);
        const at::Tensor got = to_host(t);
        const at::Tensor want = expected_reduction(n, world(), op, type);
        if (op == ReduceOp::kAvg) {  // ncclAvg multiplies by 1/size: not always sum / size
          EXPECT_TRUE(at::allclose(got, want, 1e-6, 1e-6))
              << detail::dtype_name(type) << " n=" << n;
        } else {
          EXPECT_TRUE(bit_identical(got, want))
              << detail::dtype_name(type) << " " << to_string(op) << " n=" << n;
        }
      }
    }
  }
}

TEST_F(NcclCommunicatorTest, ResultsAreBitIdenticalOnEveryRankAndAsyncMatchesBlocking) {
  at::Tensor host = fractional(at::kFloat, 1000003, rank());
  at::Tensor blocking = to_device(host, device());
  at::Tensor async = to_device(host, device());
  comm_->allreduce(blocking, ReduceOp::kAvg);
  comm_->allreduce_async(async, ReduceOp::kAvg)->wait();
  EXPECT_TRUE(bit_identical(to_host(async), to_host(blocking)));
  const at::Tensor all = to_host(comm_->allgather(blocking.view({1, -1})));
  for (int r = 1; r < world(); ++r) EXPECT_TRUE(bit_identical(all[r], all[0])) << "rank " << r;
}

TEST_F(NcclCommunicatorTest, RejectsWhatItCannotSend) {
  at::Tensor cpu = at::zeros({4});
  EXPECT_THROW(comm_->allreduce(cpu, ReduceOp::kSum), CommError);
  at::Tensor ints = to_device(at::zeros({4}, at::kLong), device());
  EXPECT_THROW(comm_->allreduce(ints, ReduceOp::kAvg), CommError);
  at::Tensor int32s = to_device(at::zeros({4}, at::kInt), device());
  EXPECT_THROW(comm_->broadcast(int32s, 0), CommError);
  at::Tensor matrix = to_device(at::zeros({4, 3}), device());
  at::Tensor transposed = matrix.as_strided({3, 4}, {1, 3});
  ASSERT_FALSE(transposed.is_contiguous());
  EXPECT_THROW(comm_->allreduce(transposed, ReduceOp::kSum), CommError);
  // Still usable: nothing was sent.
  at::Tensor t = to_device(contributions(at::kDouble, 7, rank()), device());
  comm_->allreduce(t, ReduceOp::kSum);
  EXPECT_TRUE(
      bit_identical(to_host(t), expected_reduction(7, world(), ReduceOp::kSum, at::kDouble)));
}

TEST_F(NcclCommunicatorTest, BroadcastFromFirstAndLastRank) {
  for (int root : {0, world() - 1}) {
    at::Tensor t = to_device(fractional(at::kDouble, 100003, rank()), device());
    comm_->broadcast(t, root);
    EXPECT_TRUE(bit_identical(to_host(t), fractional(at::kDouble, 100003, root))) << root;
  }
}

TEST_F(NcclCommunicatorTest, AllgatherConcatenatesRankSizedContributions) {
  for (int extra : {0, 1}) {
    const int rows = rank() + extra;
    at::Tensor mine = (at::arange(rows * 3, at::kLong) + rank() * 1000).reshape({rows, 3});
    const at::Tensor all = to_host(comm_->allgather(to_device(mine, device())));
    std::vector<at::Tensor> parts;
    for (int q = 0; q < world(); ++q) {
      parts.push_back((at::arange((q + extra) * 3, at::kLong) + q * 1000).reshape({q + extra, 3}));
    }
    EXPECT_TRUE(bit_identical(all, at::cat(parts, 0))) << "extra " << extra;
  }
}

TEST_F(NcclCommunicatorTest, AsyncCollectivesInFlightKeepIssueOrder) {
  std::vector<at::Tensor> tensors;
  std::vector<std::unique_ptr<Work>> works;
  for (int k = 0; k < 8; ++k) {
    tensors.push_back(to_device(contributions(at::kDouble, 1000 + 997 * k, rank()), device()));
    works.push_back(k % 2 == 0 ? comm_->allreduce_async(tensors.back(), ReduceOp::kSum)
                               : comm_->broadcast_async(tensors.back(), k % world()));
  }
  for (int k = 7; k >= 0; --k) {
    EXPECT_TRUE(works[k]->wait_for(120.0)) << works[k]->describe();
    works[k]->wait();
  }
  for (int k = 0; k < 8; ++k) {
    const int64_t n = 1000 + 997 * k;
    const at::Tensor want = k % 2 == 0 ? expected_reduction(n, world(), ReduceOp::kSum, at::kDouble)
                                       : contributions(at::kDouble, n, k % world());
    EXPECT_TRUE(bit_identical(to_host(tensors[k]), want)) << "collective #" << k;
  }
  comm_->barrier();
}

// The narrow dtypes of NCCL's map (bf16/fp16 for reduced-precision tensors, int32, uint8): small
// integers, exact in every one of them, reduce to the exact results.
TEST_F(NcclCommunicatorTest, AllreduceCarriesTheNarrowDtypesExactly) {
  const int64_t n = 1001;
  const at::Tensor i = at::arange(n, at::kLong);
  at::Tensor sum = at::zeros({n}, at::kLong), max = sum.clone(), min = sum.clone();
  for (int r = 0; r < world(); ++r) {
    const at::Tensor mine = i.remainder(5) + r;
    sum += mine;
    max = r == 0 ? mine : at::maximum(max, mine);
    min = r == 0 ? mine : at::minimum(min, mine);
  }
  for (auto type : {at::kBFloat16, at::kHalf, at::kInt, at::kByte}) {
    for (auto op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
      at::Tensor t = to_device((i.remainder(5) + rank()).to(type).contiguous(), device());
      comm_->allreduce(t, op);
      const at::Tensor want = (op == ReduceOp::kSum ? sum : op == ReduceOp::kMax ? max : min);
      EXPECT_TRUE(bit_identical(to_host(t), want.to(type)))
          << detail::dtype_name(type) << " " << to_string(op);
    }
  }
}

#endif  // FER_HAVE_NCCL

TEST(NcclWithoutGpu, ConstructionFailsOnEveryRankNamingTheRanksWithoutAGpu) {
#ifndef FER_HAVE_NCCL
  GTEST_SKIP() << "built without the NCCL backend (FER_HAVE_NCCL)";
#else
  if (g_every_rank_has_a_gpu) GTEST_SKIP() << "every rank has a GPU";
  // Runs on CPU-only machines: the ranks agree over MPI before NCCL starts, so all of them throw
  // instead of the GPU-less ones throwing and the others waiting in ncclCommInitRank.
  std::string what = "(no CommError)";
  try {
    NcclCommunicator comm(*g_mpi);
  } catch (const CommError& e) {
    what = e.what();
  }
  EXPECT_NE(what.find("cannot use their GPU"), std::string::npos) << what;
  EXPECT_NE(what.find("rank(s) 0"), std::string::npos) << what;
  PlaneOptions nccl;  // the planes that fer-dist-train --device cuda builds
  nccl.device = c10::Device(c10::kCUDA, 0);
  nccl.backend = Backend::kNccl;
  nccl.force_collectives = true;
  EXPECT_THROW(ProcessGroups(*g_mpi, nccl), CommError);
#endif
}

TEST(NcclPlanes, NcclBackendIsAConfigErrorWithoutNccl) {
#ifdef FER_HAVE_NCCL
  GTEST_SKIP() << "this build has the NCCL backend";
#else
  PlaneOptions nccl;
  nccl.device = c10::Device(c10::kCUDA, 0);
  nccl.backend = Backend::kNccl;
  nccl.force_collectives = true;
  EXPECT_THROW(ProcessGroups(*g_mpi, nccl), ConfigError);
#endif
}

}  // namespace
}  // namespace fer

int main(int argc, char** argv) {
  fer::MpiContext mpi(&argc, &argv);
  fer::g_mpi = &mpi;
  ::testing::InitGoogleTest(&argc, argv);
  // Skip on every rank or on none: a rank skipping alone would leave the others in a collective.
  int has_gpu = 0;
#ifdef FER_HAVE_NCCL
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
  has_gpu = mpi.local_rank() < count ? 1 : 0;
  fer::g_why_skipped = "no GPU for every rank (this rank: local rank " +
                       std::to_string(mpi.local_rank()) + ", " + std::to_string(count) +
                       " CUDA device(s))";
#endif
  int everyone = has_gpu;
  FER_MPI_CHECK(MPI_Allreduce(&has_gpu, &everyone, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
  fer::g_every_rank_has_a_gpu = everyone == 1;
  if (mpi.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int failed_here = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int failed_anywhere = failed_here;
  FER_MPI_CHECK(MPI_Allreduce(&failed_here, &failed_anywhere, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
  if (failed_here) std::fprintf(stderr, "[rank %d] tests failed on this rank\n", mpi.rank());
  return failed_anywhere;
}
