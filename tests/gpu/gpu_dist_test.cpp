// The distributed layer on GPUs against its CPU/MPI results (issue 14, item 4). Run as an MPI
// singleton (a world of 1 whose collectives are forced on, as dist.force_collectives does) and
// under mpiexec -np 2 (one GPU per rank: skipped on a machine with fewer GPUs):
//  - GradSync over NCCL (CUDA tensors) against GradSync over MPI (CPU tensors), same gradients;
//  - SyncBatchNorm2d over NCCL against SyncBatchNorm2d over MPI: outputs, input/weight/bias
//    gradients, running statistics, then an eval-mode output;
//  - stream order: kernels still running on the stream that produces a tensor when it is
//    all-reduced, with no host synchronize in between.
// Every test builds its ProcessGroups the way fer-dist-train does (PlaneOptions: device, backend,
// force_collectives), one at a time, and issues the same collectives on every rank, checking with
// EXPECT only afterwards. main() makes every rank skip alike (no NCCL backend in the build, a
// CPU-only LibTorch, or a rank without a GPU) and gives every rank the same exit code.
//
// Tolerances, NCCL against MPI:
//  - GradSync: the gradients fed in are exactly the same bits on both devices (see
//    synthetic_backward), so the only difference is the order of the all-reduce's additions. With
//    1 or 2 ranks there is one order (a + b == b + a in IEEE arithmetic): bit-identical. With W > 2
//    any two orders are each within (W - 1) u sum|x_r| of the exact sum (u = 2^-24), so they are
//    allowed 2 (W - 1) u sum|x_r| apart per element.
//  - SyncBatchNorm2d: CPU and CUDA compute the statistics and the backward sums with different
//    kernels (CUDA: Welford with a float accumulator for float input; CPU: double accumulators).
//    The worst case of an n-term float sum is n u relative to the sum of magnitudes: n <= 280
//    values per channel (2 ranks: 8 rows of 5 x 7) gives 1.7e-5, and the normalisation multiplies
//    relative errors by a few units; so float32 results must agree within 1e-4 of the tensor's
//    scale (max(1, max|b|)), float64 ones (n u = 3.1e-14) within 1e-10. (float32 against float64
//    on the CPU, an accumulator-width difference of the same kind, is ~5e-7: GpuDistHarness.) A
//    missing or misordered all-reduce is off by O(1).
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <iterator>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "dist/grad_sync.h"
#include "dist/mpi_check.h"
#include "dist/mpi_context.h"
#include "dist/planes.h"
#include "model/resnet9.h"
#include "model/sync_batchnorm.h"
#ifdef FER_HAVE_NCCL
#include "dist/nccl_communicator.h"
#endif

namespace fer {
namespace {

MpiContext* g_mpi = nullptr;  // created once in main()
bool g_every_rank_has_a_gpu = false;
std::string g_why_skipped;

constexpr double kMiB = 1024.0 * 1024.0;
constexpr double kUnitRoundoff = 1.0 / (1 << 24);  // float32: 2^-24

// Planes that communicate even in a world of one, as fer-dist-train --set
// dist.force_collectives=true builds them: NCCL data plane on a GPU, MPI on the CPU.
PlaneOptions forced(const torch::Device& device) {
  PlaneOptions o;
  o.device = device;
  o.backend = resolve_backend("auto", device);
  o.timeout_s = 120.0;
  o.force_collectives = true;
  return o;
}

// Largest |a - b| over the elements relative to b's scale max(1, max|b|); +inf when shapes or
// dtypes differ or a value is not finite. CPU tensors.
double deviation(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) {
    return std::numeric_limits<double>::infinity();
  }
  if (a.numel() == 0) return 0.0;
  const torch::Tensor a64 = a.to(torch::kDouble), b64 = b.to(torch::kDouble);
  if (!torch::isfinite(a64).all().item<bool>() || !torch::isfinite(b64).all().item<bool>()) {
    return std::numeric_limits<double>::infinity();
  }
  const double scale = std::max(1.0, b64.abs().max().item<double>());
  return (a64 - b64).abs().max().item<double>() / scale;
}

class GpuDistTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!g_every_rank_has_a_gpu) GTEST_SKIP() << g_why_skipped;
  }
  int rank() const { return g_mpi->rank(); }
  int world() const { return g_mpi->size(); }
  // cuda:local_rank, the binding of fer-dist-train --device cuda (DESIGN.md).
  torch::Device gpu() const {
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(g_mpi->local_rank()));
  }
};

// ---- GradSync ----------------------------------------------------------------------------------

// Rank `rank`'s gradient of parameter k in backward pass `pass`: deterministic, spread over
// magnitudes 1e-2..1e2 so that the sums mix exponents. Built on the CPU, float32.
torch::Tensor synthetic_grad(std::size_t k, at::IntArrayRef shape, int rank, int pass) {
  const int64_t n =
      std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<int64_t>());
  const torch::Tensor i = torch::arange(n, torch::kDouble);
  const double phase = rank * 1.3 + pass * 0.7 + static_cast<double>(k) * 0.11;
  const double magnitude = std::pow(10.0, static_cast<double>(k % 5) - 2.0);
  return (torch::sin(i * 0.37 + phase) * magnitude).to(torch::kFloat).reshape(shape);
}

// A backward whose gradients are exactly synthetic_grad on any device: loss = sum_k sum(p_k * G_k)
// has d loss / d p_k = ones * G_k, which no kernel rounds.
void synthetic_backward(const std::vector<torch::Tensor>& params, const torch::Device& device,
                        int rank, int pass) {
  std::vector<torch::Tensor> terms;
  for (std::size_t k = 0; k < params.size(); ++k) {
    terms.push_back(
        (params[k] * synthetic_grad(k, params[k].sizes(), rank, pass).to(device)).sum());
  }
  torch::stack(terms).sum().backward();
}

enum class SyncMode { kOverlap, kAfterBackward, kAccumulate };
const char* mode_name(SyncMode m) {
  return m == SyncMode::kOverlap         ? "overlap"
         : m == SyncMode::kAfterBackward ? "no overlap"
                                         : "accumulate";
}

struct GradSyncRun {
  std::vector<torch::Tensor> grads;  // averaged gradients after the last step, CPU copies
  std::vector<int64_t> bucket_numels;
  bool on_device = true;  // every averaged gradient lived on the model's device
};

// Two training steps of a ResNet9's parameters through GradSync on `plane`, as the trainer drives
// it: zero_grad(set_to_none), backward (kAccumulate: a NoSync backward first), finish. Small
// buckets (64 KiB first, 512 KiB after) so that several are in flight during backward.
GradSyncRun run_grad_sync(DataPlane& plane, const torch::Device& device, SyncMode mode) {
  ResNet9Options model_options;
  model_options.width = 0.5;
  ResNet9 model(model_options);
  model->to(device);
  const std::vector<torch::Tensor> params = model->parameters();
  GradSyncOptions options;
  options.first_bucket_mb = 64 * 1024 / kMiB;
  options.bucket_mb = 512 * 1024 / kMiB;
  options.overlap = mode != SyncMode::kAfterBackward;
  GradSync sync(params, plane, options);
  for (int step = 0; step < 2; ++step) {  // the second step reuses the bucket buffers
    for (auto p : params) p.mutable_grad().reset();
    if (mode == SyncMode::kAccumulate) {
      const GradSync::NoSync no_sync(&sync);
      synthetic_backward(params, device, plane.rank(), 100 + step);
    }
    synthetic_backward(params, device, plane.rank(), step);
    sync.finish(step);
  }
  GradSyncRun run;
  run.bucket_numels = sync.bucket_numels();
  for (const auto& p : params) {
    run.on_device = run.on_device && p.grad().defined() && p.grad().device() == device;
    run.grads.push_back(p.grad().detach().to(torch::kCPU).clone());
  }
  return run;
}

// The exact average of every rank's gradient for parameter k (float64), and the per-element sum
// of magnitudes of the pre-scaled terms, for the error bounds.
struct Reference {
  torch::Tensor mean;
  torch::Tensor magnitude;
};
Reference reference_average(std::size_t k, at::IntArrayRef shape, int world, SyncMode mode) {
  Reference ref{torch::zeros(shape, torch::kDouble), torch::zeros(shape, torch::kDouble)};
  for (int r = 0; r < world; ++r) {
    torch::Tensor g = synthetic_grad(k, shape, r, 1).to(torch::kDouble);  // the last step's
    if (mode == SyncMode::kAccumulate) g = g + synthetic_grad(k, shape, r, 101).to(torch::kDouble);
    ref.mean += g / world;
    ref.magnitude += g.abs() / world;
  }
  return ref;
}

TEST_F(GpuDistTest, GradSyncOverNcclGivesTheMpiAveragesOfTheSameGradients) {
  const SyncMode modes[] = {SyncMode::kOverlap, SyncMode::kAfterBackward, SyncMode::kAccumulate};
  std::vector<GradSyncRun> mpi_runs, nccl_runs;
  std::string nccl_planes;
  {
    ProcessGroups cpu(*g_mpi, forced(torch::kCPU));
    for (SyncMode mode : modes) mpi_runs.push_back(run_grad_sync(cpu.data(), torch::kCPU, mode));
  }
  {
    ProcessGroups cuda(*g_mpi, forced(gpu()));
    nccl_planes = cuda.describe();
    for (SyncMode mode : modes) nccl_runs.push_back(run_grad_sync(cuda.data(), gpu(), mode));
  }
  EXPECT_NE(nccl_planes.find("data nccl"), std::string::npos) << nccl_planes;

  // Per element: |nccl - mpi| <= 2 (W - 1) u sum|x_r| (0 for W <= 2: bit-identical), and the
  // NCCL result within (W + 3) u sum|x_r| of the exact average (the accumulation's addition, the
  // rounded 1/W, the pre-scaling product, the W - 1 additions of the all-reduce).
  const double pair_factor = world() <= 2 ? 0.0 : 2.0 * (world() - 1) * kUnitRoundoff;
  const double exact_factor = (world() + 3) * kUnitRoundoff;
  double worst_pair = 0.0;  // largest |nccl - mpi| / sum|x_r| seen
  for (std::size_t m = 0; m < std::size(modes); ++m) {
    const GradSyncRun& mpi = mpi_runs[m];
    const GradSyncRun& nccl = nccl_runs[m];
    EXPECT_TRUE(nccl.on_device) << mode_name(modes[m]) << ": a gradient left " << gpu().str();
    EXPECT_EQ(nccl.bucket_numels, mpi.bucket_numels) << mode_name(modes[m]);
    EXPECT_GE(nccl.bucket_numels.size(), 4u) << "the test wants several buckets in flight";
    ASSERT_EQ(nccl.grads.size(), mpi.grads.size());
    for (std::size_t k = 0; k < nccl.grads.size(); ++k) {
      const Reference ref = reference_average(k, mpi.grads[k].sizes(), world(), modes[m]);
      const torch::Tensor a = nccl.grads[k].to(torch::kDouble), b = mpi.grads[k].to(torch::kDouble);
      const torch::Tensor pair = (a - b).abs();
      worst_pair = std::max(worst_pair, (pair / (ref.magnitude + 1e-30)).max().item<double>());
      if (world() <= 2) {
        EXPECT_TRUE(torch::equal(nccl.grads[k], mpi.grads[k]))
            << mode_name(modes[m]) << " parameter " << k << ": max |nccl - mpi| "
            << pair.max().item<double>();
      } else {
        EXPECT_TRUE((pair <= ref.magnitude * pair_factor).all().item<bool>())
            << mode_name(modes[m]) << " parameter " << k << ": max |nccl - mpi| "
            << pair.max().item<double>();
      }
      EXPECT_TRUE(((a - ref.mean).abs() <= ref.magnitude * exact_factor + 1e-30).all().item<bool>())
          << mode_name(modes[m]) << " parameter " << k << ": nccl result off the exact average by "
          << (a - ref.mean).abs().max().item<double>();
    }
  }
  std::printf(
      "[rank %d] GradSync nccl vs mpi, %d rank(s), %zu buckets: max |nccl - mpi| / "
      "sum|x_r| = %.3g (allowed %.3g)\n",
      rank(), world(), nccl_runs[0].bucket_numels.size(), worst_pair, pair_factor);
}

// ---- SyncBatchNorm2d ---------------------------------------------------------------------------

constexpr int64_t kChannels = 6;

// Rank r holds rows [offset(r), offset(r) + rows(r)) of the global batch: 3, 5, 7, ... rows.
int64_t rows_of(int r) { return 3 + 2 * r; }
int64_t offset_of(int r) {
  int64_t offset = 0;
  for (int q = 0; q < r; ++q) offset += rows_of(q);
  return offset;
}

// This rank's slice of a deterministic global batch [N, 6, 5, 7] (every rank builds the same),
// offset per channel so that the between-rank part of the variance matters. `phase` varies it.
torch::Tensor my_slice(int world, int rank, double phase, double offset) {
  const int64_t total = offset_of(world);
  const torch::Tensor i = torch::arange(total * kChannels * 35, torch::kDouble);
  const torch::Tensor global =
      (torch::sin(i * 0.61 + phase) * 2.0).reshape({total, kChannels, 5, 7}) +
      (torch::arange(kChannels, torch::kDouble) * 0.3 + offset).reshape({1, kChannels, 1, 1});
  return global.narrow(0, offset_of(rank), rows_of(rank)).contiguous();
}

struct BnPass {
  torch::Tensor out, grad_input, grad_weight, grad_bias;
};
struct BnRun {
  std::vector<BnPass> passes;
  torch::Tensor running_mean, running_var, num_batches_tracked, eval_out;
  bool on_device = true;  // every output, gradient and statistic stayed on the model's device
};

// Two training passes and one eval pass of a SyncBatchNorm2d on `device` in `type`, its all-reduce
// wired to the data plane as the trainer wires it (Trainer: model_->set_allreduce).
BnRun run_sync_bn(DataPlane& plane, const torch::Device& device, torch::ScalarType type) {
  const int world = plane.size(), rank = plane.rank();
  SyncBatchNorm2d bn(torch::nn::BatchNormOptions(kChannels).momentum(0.1));
  {
    torch::NoGradGuard no_grad;
    bn->weight.copy_(torch::arange(kChannels, torch::kFloat) * 0.1 + 1.0);
    bn->bias.copy_(torch::arange(kChannels, torch::kFloat) * 0.05 - 0.1);
  }
  // Onto the device, floating tensors in `type` (Module::to(dtype) would make the int64
  // num_batches_tracked floating too). set_data keeps the members' tensors the registered ones.
  for (auto p : bn->parameters()) p.set_data(p.detach().to(device, type));
  for (auto b : bn->buffers())
    b.set_data(b.is_floating_point() ? b.to(device, type) : b.to(device));
  DataPlane* data = &plane;
  bn->set_allreduce(
      [data](torch::Tensor& t) { data->allreduce(t, ReduceOp::kSum, "SyncBatchNorm all-reduce"); });
  bn->train();
  BnRun run;
  auto here = [&](const torch::Tensor& t) {
    run.on_device = run.on_device && t.device() == device;
  };
  for (int pass = 0; pass < 2; ++pass) {
    const torch::Tensor x =
        my_slice(world, rank, pass, 0.5 + pass).to(device, type).requires_grad_(true);
    const torch::Tensor dy = my_slice(world, rank, 10.0 + pass, 0.0).to(device, type);
    const torch::Tensor y = bn(x);
    (y * dy).sum().backward();  // d loss / d y = dy exactly
    for (const auto& t : {y, x.grad(), bn->weight.grad(), bn->bias.grad()}) here(t);
    run.passes.push_back(
        {y.detach().cpu(), x.grad().cpu(), bn->weight.grad().cpu(), bn->bias.grad().cpu()});
    bn->weight.mutable_grad().reset();
    bn->bias.mutable_grad().reset();
  }
  for (const auto& t : {bn->running_mean, bn->running_var, bn->num_batches_tracked}) here(t);
  run.running_mean = bn->running_mean.cpu();
  run.running_var = bn->running_var.cpu();
  run.num_batches_tracked = bn->num_batches_tracked.cpu();
  bn->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor eval_out = bn(my_slice(world, rank, 20.0, 1.0).to(device, type));
  here(eval_out);
  run.eval_out = eval_out.cpu();
  return run;
}

TEST_F(GpuDistTest, SyncBatchNormOverNcclGivesTheMpiOutputsGradientsAndRunningStatistics) {
  const torch::ScalarType types[] = {torch::kFloat, torch::kDouble};
  std::vector<BnRun> mpi_runs, nccl_runs;
  {
    ProcessGroups cpu(*g_mpi, forced(torch::kCPU));
    for (auto type : types) mpi_runs.push_back(run_sync_bn(cpu.data(), torch::kCPU, type));
  }
  {
    ProcessGroups cuda(*g_mpi, forced(gpu()));
    for (auto type : types) nccl_runs.push_back(run_sync_bn(cuda.data(), gpu(), type));
  }
  for (std::size_t t = 0; t < std::size(types); ++t) {
    const double tolerance = types[t] == torch::kFloat ? 1e-4 : 1e-10;
    const BnRun& mpi = mpi_runs[t];
    const BnRun& nccl = nccl_runs[t];
    const std::string type_name = types[t] == torch::kFloat ? "float32" : "float64";
    EXPECT_TRUE(nccl.on_device) << type_name << ": a result left " << gpu().str();
    double worst = 0.0;
    auto expect_close = [&](const torch::Tensor& a, const torch::Tensor& b,
                            const std::string& what) {
      const double d = deviation(a, b);
      worst = std::max(worst, d);
      EXPECT_LE(d, tolerance) << type_name << " " << what << ": nccl/cuda against mpi/cpu";
    };
    for (std::size_t p = 0; p < mpi.passes.size(); ++p) {
      const std::string pass = " (training pass " + std::to_string(p) + ")";
      expect_close(nccl.passes[p].out, mpi.passes[p].out, "output" + pass);
      expect_close(nccl.passes[p].grad_input, mpi.passes[p].grad_input, "input gradient" + pass);
      expect_close(nccl.passes[p].grad_weight, mpi.passes[p].grad_weight, "weight gradient" + pass);
      expect_close(nccl.passes[p].grad_bias, mpi.passes[p].grad_bias, "bias gradient" + pass);
    }
    expect_close(nccl.running_mean, mpi.running_mean, "running_mean");
    expect_close(nccl.running_var, mpi.running_var, "running_var");
    expect_close(nccl.eval_out, mpi.eval_out, "eval-mode output");
    EXPECT_TRUE(torch::equal(nccl.num_batches_tracked, mpi.num_batches_tracked)) << type_name;
    std::printf(
        "[rank %d] SyncBatchNorm2d %s nccl/cuda vs mpi/cpu, %d rank(s): max deviation "
        "%.3g of scale (allowed %.0e)\n",
        rank(), type_name.c_str(), world(), worst, tolerance);
  }
}

// ---- stream order ------------------------------------------------------------------------------
// A chain of products x * P^k with P the cyclic shift (P[i][(i + 1) % n] = 1) is x rolled by k
// columns: exact in float32 (and in TF32: |x| <= 1000 are integers), so the expected all-reduce
// result is known exactly, while the chain keeps the GPU busy for a chosen time. The chain's output
// is all-reduced while the chain still runs, without a host synchronize: an all-reduce not ordered
// after the producing stream would read an earlier product (the caching allocator hands the
// chain's freed blocks back) or uninitialised memory, and would return before the chain ended.

constexpr int64_t kSide = 4096;  // 64 MiB matrices; one product is 137 GFLOP

// n x n integers in [-1000, 1000], different per rank.
torch::Tensor integer_matrix(int64_t n, int rank) {
  const torch::Tensor i = torch::arange(n * n, torch::kLong);
  return ((i * 7919 + rank * 104729).remainder(2001) - 1000).to(torch::kFloat).reshape({n, n});
}

// P with P[i][(i + 1) % n] = 1: x.mm(P) is x rolled by one column.
torch::Tensor shift_matrix(int64_t n, const torch::Device& device) {
  return torch::roll(torch::eye(n, torch::TensorOptions().device(device)), 1, 1);
}

torch::Tensor shift_chain(const torch::Tensor& x, const torch::Tensor& shift, int64_t length) {
  torch::Tensor y = x;
  for (int64_t s = 0; s < length; ++s) y = y.mm(shift);
  return y;
}

// The chain length that keeps `device` busy for ~0.3 s, timed with host synchronizes before the
// test proper, agreed over MPI (the largest: every rank runs the same chain). Called before any
// communicator exists, so the plain MPI call cannot interleave with a communicator's thread.
int64_t agreed_chain_length(const torch::Device& device) {
  const torch::Tensor shift = shift_matrix(kSide, device);
  const torch::Tensor x = integer_matrix(kSide, 0).to(device);
  shift_chain(x, shift, 2);  // cuBLAS handles, kernel selection
  torch::cuda::synchronize(device.index());
  constexpr int64_t kProbe = 8;
  const auto start = std::chrono::steady_clock::now();
  shift_chain(x, shift, kProbe);
  torch::cuda::synchronize(device.index());
  const double each = std::max(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / kProbe,
      1e-6);
  int64_t length = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(0.3 / each)), 16, 4000);
  FER_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &length, 1, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD));
  return length;
}

// How the all-reduce under test is waited for: by the host (Communicator::allreduce), or by torch's
// current stream only (the data plane on a GPU: Work::wait_on_device).
enum class Waiter { kHost, kStream };

// Runs the chain on torch's current stream of `device`, all-reduces (sum) its output with
// `allreduce`, and checks that the chain was still running when the all-reduce was issued and that
// the result is the sum of every rank's finished product. With Waiter::kHost the chain must have
// finished when the all-reduce returned, and the result is read on a stream of its own (which
// waits for nothing); with Waiter::kStream the all-reduce must have returned while the chain was
// still running (no host wait), and the result is read on the current stream, which waited.
void expect_all_reduce_after_the_chain(const torch::Device& device, int rank, int world,
                                       int64_t length, Waiter waiter,
                                       const std::function<void(torch::Tensor&)>& allreduce) {
  const c10::impl::VirtualGuardImpl cuda(c10::DeviceType::CUDA);
  const c10::Stream producer = cuda.getStream(device);
  const torch::Tensor shift = shift_matrix(kSide, device);
  const torch::Tensor x = integer_matrix(kSide, rank).to(device);
  torch::Tensor y = shift_chain(x, shift, length);
  c10::Event chain_done(c10::DeviceType::CUDA);
  chain_done.record(producer);
  const bool running_at_issue = !chain_done.query();
  allreduce(y);
  const bool done_at_return = chain_done.query();
  torch::Tensor got;
  if (waiter == Waiter::kHost) {
    c10::Stream reader = cuda.getStreamFromGlobalPool(device);
    if (reader == producer) reader = cuda.getStreamFromGlobalPool(device);
    const c10::StreamGuard on_reader(reader);
    got = y.to(torch::kCPU);
  } else {
    got = y.to(torch::kCPU);  // on the producer, the current stream
  }
  torch::cuda::synchronize(device.index());  // nothing of this test outlives it

  torch::Tensor want = torch::zeros({kSide, kSide});
  for (int r = 0; r < world; ++r) want += torch::roll(integer_matrix(kSide, r), length % kSide, 1);
  EXPECT_TRUE(running_at_issue) << "the chain of " << length
                                << " products had finished before the all-reduce was issued: "
                                << "the test proves nothing (lengthen the chain)";
  if (waiter == Waiter::kHost) {
    EXPECT_TRUE(done_at_return) << "the all-reduce returned while the kernels producing its input "
                                   "were still running";
  } else {
    EXPECT_FALSE(done_at_return) << "the host waited for the chain: the data plane's all-reduce "
                                    "should only make the current stream wait";
  }
  EXPECT_TRUE(torch::equal(got, want))
      << "the all-reduce did not see the finished values: " << (got != want).sum().item<int64_t>()
      << " of " << want.numel() << " elements differ";
}

// The contract fer-dist-train relies on: the data plane's NCCL collectives are ordered after the
// work queued on torch's current stream (here the default one), and the current stream, not the
// host, waits for them.
TEST_F(GpuDistTest, DataPlaneAllReduceRunsAfterTheCurrentStreamAndOnlyThatStreamWaits) {
  const int64_t length = agreed_chain_length(gpu());
  ProcessGroups cuda(*g_mpi, forced(gpu()));
  DataPlane& data = cuda.data();
  expect_all_reduce_after_the_chain(gpu(), rank(), world(), length, Waiter::kStream,
                                    [&data](torch::Tensor& t) {
                                      data.allreduce(t, ReduceOp::kSum, "stream-order all-reduce");
                                    });
}

// The same on a non-default current stream (a pool stream, non-blocking: nothing orders it
// against the default stream but the communicator's events).
TEST_F(GpuDistTest, DataPlaneAllReduceWaitsForKernelsOnANonDefaultCurrentStream) {
  const int64_t length = agreed_chain_length(gpu());
  ProcessGroups cuda(*g_mpi, forced(gpu()));
  DataPlane& data = cuda.data();
  const c10::impl::VirtualGuardImpl impl(c10::DeviceType::CUDA);
  const c10::StreamGuard on_side(impl.getStreamFromGlobalPool(gpu()));
  expect_all_reduce_after_the_chain(
      gpu(), rank(), world(), length, Waiter::kStream, [&data](torch::Tensor& t) {
        data.allreduce(t, ReduceOp::kSum, "stream-order all-reduce (pool stream)");
      });
}

// NcclCommunicator's blocking allreduce (Work::wait: the host waits) on a pool stream made
// current: ordered after that stream's kernels, finished on return.
TEST_F(GpuDistTest, NcclCommunicatorHostWaitFollowsTheCurrentStream) {
#ifndef FER_HAVE_NCCL
  GTEST_SKIP() << "built without NCCL";
#else
  const int64_t length = agreed_chain_length(gpu());
  const c10::impl::VirtualGuardImpl cuda(c10::DeviceType::CUDA);
  const c10::StreamGuard on_side(cuda.getStreamFromGlobalPool(gpu()));
  NcclCommunicatorOptions options;
  options.timeout_s = 120.0;
  NcclCommunicator comm(*g_mpi, gpu().index(), options);
  expect_all_reduce_after_the_chain(gpu(), rank(), world(), length, Waiter::kHost,
                                    [&comm](torch::Tensor& t) { comm.allreduce(t, ReduceOp::kSum); });
#endif
}

// The watchdog: a data-plane all-reduce waited for by the stream only, still unfinished
// dist.comm_timeout_s after issue, stops the job (exit code 5) naming it, instead of hanging the
// rank at its next host read. Here the all-reduce is queued behind ~3 s of kernels with a 1 s
// timeout, so it works with one GPU (a world of one, collectives forced on). Disabled: it ends the
// job; ctest runs it on its own (gpu_dist_watchdog_abort_singleton).
TEST_F(GpuDistTest, DISABLED_AStreamWaitedCollectivePastTheTimeoutAbortsTheJob) {
  const int64_t length = 10 * agreed_chain_length(gpu());
  PlaneOptions options = forced(gpu());
  options.timeout_s = 1.0;
  ProcessGroups cuda(*g_mpi, options);
  const torch::Tensor shift = shift_matrix(kSide, gpu());
  torch::Tensor y = shift_chain(integer_matrix(kSide, rank()).to(gpu()), shift, length);
  cuda.data().allreduce(y, ReduceOp::kSum, "the all-reduce behind 3 s of kernels");
  const double total = y.sum().item<double>();  // the watchdog ends the job before this returns
  ADD_FAILURE() << "the host read returned " << total << " after the timeout";
}

// ---- the harness itself, on the CPU
// -------------------------------------------------------------- The GPU tests above run rarely, on
// a machine nobody watches: these check their reference computations here, over MPI on the CPU, in
// every CI run.

TEST(GpuDistHarness, SyntheticBackwardGivesExactlyTheSyntheticGradients) {
  ResNet9Options model_options;
  model_options.width = 0.25;
  ResNet9 model(model_options);
  const std::vector<torch::Tensor> params = model->parameters();
  synthetic_backward(params, torch::kCPU, /*rank=*/1, /*pass=*/3);
  for (std::size_t k = 0; k < params.size(); ++k) {
    EXPECT_TRUE(torch::equal(params[k].grad(), synthetic_grad(k, params[k].sizes(), 1, 3)))
        << "parameter " << k;
  }
}

TEST(GpuDistHarness, GradSyncOverMpiGivesTheReferenceAverageWithinItsBound) {
  const int world = g_mpi->size();
  const double exact_factor = (world + 3) * kUnitRoundoff;
  ProcessGroups cpu(*g_mpi, forced(torch::kCPU));
  for (SyncMode mode : {SyncMode::kOverlap, SyncMode::kAfterBackward, SyncMode::kAccumulate}) {
    const GradSyncRun run = run_grad_sync(cpu.data(), torch::kCPU, mode);
    EXPECT_TRUE(run.on_device) << mode_name(mode);
    EXPECT_GE(run.bucket_numels.size(), 4u) << mode_name(mode);
    for (std::size_t k = 0; k < run.grads.size(); ++k) {
      const Reference ref = reference_average(k, run.grads[k].sizes(), world, mode);
      const torch::Tensor error = (run.grads[k].to(torch::kDouble) - ref.mean).abs();
      EXPECT_TRUE((error <= ref.magnitude * exact_factor + 1e-30).all().item<bool>())
          << mode_name(mode) << " parameter " << k << ": off by " << error.max().item<double>();
      if (world == 1) {  // pre-scaled by 1: exactly the (accumulated) float32 gradient
        EXPECT_TRUE(torch::equal(run.grads[k], ref.mean.to(torch::kFloat))) << mode_name(mode);
      }
    }
  }
}

// float32 against float64 over MPI on the CPU: the size of an accumulator-width difference, which
// the float32 tolerance of the NCCL test (1e-4 of scale) must cover with room to spare.
TEST(GpuDistHarness, SyncBatchNormFloat32IsWithinTheToleranceOfFloat64OverMpi) {
  std::vector<BnRun> runs;
  {
    ProcessGroups cpu(*g_mpi, forced(torch::kCPU));
    for (auto type : {torch::kFloat, torch::kDouble}) {
      runs.push_back(run_sync_bn(cpu.data(), torch::kCPU, type));
    }
  }
  const BnRun& f32 = runs[0];
  const BnRun& f64 = runs[1];
  EXPECT_TRUE(f32.on_device && f64.on_device);
  auto to32 = [](const torch::Tensor& t) { return t.to(torch::kFloat); };
  double worst = 0.0;
  for (std::size_t p = 0; p < f32.passes.size(); ++p) {
    for (const auto& [a, b] : {std::pair{f32.passes[p].out, f64.passes[p].out},
                               std::pair{f32.passes[p].grad_input, f64.passes[p].grad_input},
                               std::pair{f32.passes[p].grad_weight, f64.passes[p].grad_weight},
                               std::pair{f32.passes[p].grad_bias, f64.passes[p].grad_bias}}) {
      worst = std::max(worst, deviation(a, to32(b)));
    }
  }
  worst = std::max({worst, deviation(f32.running_mean, to32(f64.running_mean)),
                    deviation(f32.running_var, to32(f64.running_var)),
                    deviation(f32.eval_out, to32(f64.eval_out))});
  EXPECT_LT(worst, 1e-5) << "float32 against float64: the NCCL test's 1e-4 would be too tight";
  EXPECT_GT(worst, 0.0) << "float32 and float64 agree exactly: the comparison sees nothing";
  EXPECT_TRUE(torch::equal(f32.num_batches_tracked, torch::tensor(2, torch::kLong)));
  std::printf(
      "[rank %d] SyncBatchNorm2d float32 vs float64 over mpi, %d rank(s): max deviation "
      "%.3g of scale\n",
      g_mpi->rank(), g_mpi->size(), worst);
}

TEST(GpuDistHarness, AShiftChainRollsTheMatrixExactly) {
  const int64_t n = 64;
  const torch::Tensor x = integer_matrix(n, 1);
  EXPECT_LE(x.abs().max().item<float>(), 1000.0f);
  EXPECT_TRUE(torch::equal(x, x.round()));
  const torch::Tensor shift = shift_matrix(n, torch::kCPU);
  for (int64_t length : {1, 5, 70}) {
    EXPECT_TRUE(torch::equal(shift_chain(x, shift, length), torch::roll(x, length % n, 1)))
        << length;
  }
  EXPECT_FALSE(torch::equal(shift_chain(x, shift, 2), x));
}

}  // namespace
}  // namespace fer

int main(int argc, char** argv) {
  fer::MpiContext mpi(&argc, &argv);
  fer::g_mpi = &mpi;
  ::testing::InitGoogleTest(&argc, argv);
  // Skip on every rank or on none: a rank skipping alone would leave the others in a collective.
  int has_gpu = 0;
#ifndef FER_HAVE_NCCL
  fer::g_why_skipped = "built without the NCCL backend (FER_HAVE_NCCL)";
#else
  if (!torch::cuda::is_available()) {
    fer::g_why_skipped = "no GPU, or a CPU-only LibTorch (torch::cuda::is_available() is false)";
  } else {
    const int count = static_cast<int>(torch::cuda::device_count());
    has_gpu = mpi.local_rank() < count ? 1 : 0;
    fer::g_why_skipped = "no GPU for every rank (this rank: local rank " +
                         std::to_string(mpi.local_rank()) + ", " + std::to_string(count) +
                         " CUDA device(s))";
  }
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
