// The two communication planes (src/dist/planes.h) and GradSync (with its own buckets and over
// FusedAdam's flat gradient buffers), under mpiexec with 1, 2 and 4
// ranks and as an MPI singleton (linked into test_dist_collectives, whose main() runs them).
// Every test issues the same collectives on every rank and checks results afterwards.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/errors.h"
#include "dist/grad_sync.h"
#include "dist/mpi_context.h"
#include "dist/planes.h"
#include "mpi_test_env.h"
#include "train/fused_adam.h"

namespace fer {
namespace {

// Planes that communicate even in a world of one (the test switch), on the CPU.
PlaneOptions forced_cpu(double timeout_s = 60.0) {
  PlaneOptions o;
  o.timeout_s = timeout_s;
  o.force_collectives = true;
  return o;
}

class PlanesTest : public ::testing::Test {
 protected:
  ProcessGroups groups_{*g_mpi, forced_cpu()};
  int rank() const { return g_mpi->rank(); }
  int world() const { return g_mpi->size(); }
};

TEST_F(PlanesTest, ControlPlaneReducesAndGathersHostValuesOverEveryRank) {
  std::vector<std::int64_t> ints{rank() + 1, 10 * rank()};
  groups_.control().allreduce(ints, ReduceOp::kSum, "test sum");
  std::vector<std::int64_t> maxima{rank(), -rank()};
  groups_.control().allreduce(maxima, ReduceOp::kMax, "test max");
  std::vector<double> doubles{0.5 * rank(), 1.0};
  groups_.control().allreduce(doubles, ReduceOp::kAvg, "test avg");
  const auto rows = groups_.control().allgather({rank(), 7, -rank()}, "test gather");
  groups_.control().barrier("test barrier");

  const std::int64_t w = world();
  EXPECT_EQ(ints, (std::vector<std::int64_t>{w * (w + 1) / 2, 10 * w * (w - 1) / 2}));
  EXPECT_EQ(maxima, (std::vector<std::int64_t>{w - 1, 0}));
  EXPECT_DOUBLE_EQ(doubles[0], 0.5 * (w - 1) / 2.0);
  EXPECT_DOUBLE_EQ(doubles[1], 1.0);
  ASSERT_EQ(rows.size(), static_cast<std::size_t>(3 * w));
  for (int r = 0; r < w; ++r) {
    EXPECT_EQ(rows[3 * r], r);
    EXPECT_EQ(rows[3 * r + 1], 7);
    EXPECT_EQ(rows[3 * r + 2], -r);
  }
}

TEST_F(PlanesTest, AvgOfIntegerHostValuesIsRefusedBeforeAnythingIsSent) {
  std::vector<std::int64_t> ints{1};
  EXPECT_THROW(groups_.control().allreduce(ints, ReduceOp::kAvg, "int avg"), CommError);
}

TEST_F(PlanesTest, DataPlaneReducesAndBroadcastsTensorsOnItsDevice) {
  EXPECT_TRUE(groups_.data().active());
  EXPECT_EQ(groups_.data().device(), c10::Device(c10::kCPU));
  at::Tensor t = at::full({5}, static_cast<double>(rank() + 1), at::kDouble);
  groups_.data().allreduce(t, ReduceOp::kSum, "test tensor sum");
  at::Tensor b = at::full({3}, static_cast<float>(rank() * 3 + 1), at::kFloat);
  groups_.data().broadcast(b, world() - 1, "test broadcast");
  const double w = world();
  EXPECT_TRUE(at::equal(t, at::full({5}, w * (w + 1) / 2, at::kDouble)));
  EXPECT_TRUE(at::equal(b, at::full({3}, static_cast<float>((world() - 1) * 3 + 1), at::kFloat)));
}

// The bug class of a host tensor handed to NCCL, seen from the CPU: a tensor that is not on the
// plane's device is refused on the calling rank, naming the caller, before anything is sent.
TEST_F(PlanesTest, DataPlaneRefusesATensorOnAnotherDeviceNamingTheCaller) {
  at::Tensor elsewhere = at::empty({4}, at::TensorOptions().dtype(at::kFloat).device(at::kMeta));
  try {
    groups_.data().allreduce(elsewhere, ReduceOp::kSum, "the caller under test");
    FAIL() << "a meta tensor went through the CPU data plane";
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("the caller under test"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("meta"), std::string::npos) << e.what();
  }
  at::Tensor undefined;
  EXPECT_THROW(groups_.data().broadcast(undefined, 0, "undefined"), CommError);
  // Still in step: a collective afterwards works on every rank.
  std::vector<std::int64_t> one{1};
  groups_.control().allreduce(one, ReduceOp::kSum, "after the refusal");
  EXPECT_EQ(one[0], world());
}

TEST(LocalPlanes, AProcessOnItsOwnCommunicatesNothingAndReturnsItsInput) {
  ProcessGroups local{PlaneOptions{}};
  EXPECT_FALSE(local.data().active());
  EXPECT_EQ(local.control().size(), 1);
  std::vector<double> values{1.5, -2.0};
  local.control().allreduce(values, ReduceOp::kSum, "local");
  EXPECT_EQ(values, (std::vector<double>{1.5, -2.0}));
  EXPECT_EQ(local.control().allgather({4, 5}, "local gather"), (std::vector<std::int64_t>{4, 5}));
  at::Tensor t = at::ones({2});
  local.data().allreduce(t, ReduceOp::kSum, "local tensor");
  EXPECT_TRUE(at::equal(t, at::ones({2})));
  at::Tensor meta = at::empty({1}, at::TensorOptions().device(at::kMeta));
  EXPECT_THROW(local.data().allreduce(meta, ReduceOp::kSum, "local meta"), CommError);
}

TEST(Backend, FollowsTheDeviceAndRefusesPairsThatCannotWork) {
  const c10::Device cpu(c10::kCPU), gpu(c10::kCUDA, 1);
  EXPECT_EQ(resolve_backend("auto", cpu), Backend::kMpi);
  EXPECT_EQ(resolve_backend("auto", gpu), Backend::kNccl);
  EXPECT_EQ(resolve_backend("mpi", cpu), Backend::kMpi);
  EXPECT_EQ(resolve_backend("nccl", gpu), Backend::kNccl);
  EXPECT_THROW(resolve_backend("mpi", gpu), ConfigError);  // the weight broadcast would fail
  EXPECT_THROW(resolve_backend("nccl", cpu), ConfigError);
  EXPECT_THROW(resolve_backend("gloo", cpu), ConfigError);
  PlaneOptions mismatched;
  mismatched.backend = Backend::kNccl;  // with a CPU device
  EXPECT_THROW(ProcessGroups(*g_mpi, mismatched), ConfigError);
}

// A collective that one rank never joins ends the job within the timeout, naming what it waited
// for (run by CTest with PASS_REGULAR_EXPRESSION, see tests/mpi/CMakeLists.txt).
TEST(PlanesTimeout, DISABLED_AControlCollectiveOneRankNeverJoinsAbortsTheJobNamingIt) {
  ProcessGroups groups(*g_mpi, forced_cpu(/*timeout_s=*/2.0));
  if (g_mpi->rank() == 0) {
    std::vector<std::int64_t> v{1};
    groups.control().allreduce(v, ReduceOp::kSum, "the all-reduce rank 1 skips");
  }
}

// ---- GradSync ----------------------------------------------------------------------------------

constexpr double kMiB = 1024.0 * 1024.0;

// Leaf parameters of distinct sizes, registration order = index.
std::vector<torch::Tensor> make_params(const std::vector<std::int64_t>& sizes) {
  std::vector<torch::Tensor> out;
  for (const auto n : sizes) out.push_back(torch::zeros({n}, torch::requires_grad()));
  return out;
}

// The gradient rank r produces for parameter k: distinct per rank, parameter and element.
torch::Tensor grad_of(int k, std::int64_t n, int r) {
  return torch::arange(n, torch::kFloat) * 0.25 + 100.0 * k + 7.0 * r;
}

// loss = sum_k <p_k, grad_of(k, r)>, over the parameters in `used`: backward gives exactly
// grad_of(k, r) to each used parameter and nothing to the others.
void backward(const std::vector<torch::Tensor>& params, int r, const std::vector<bool>& used) {
  torch::Tensor loss = torch::zeros({});
  for (std::size_t k = 0; k < params.size(); ++k) {
    if (used[k]) loss = loss + (params[k] * grad_of(static_cast<int>(k), params[k].numel(), r)).sum();
  }
  loss.backward();
}

torch::Tensor mean_over_ranks(int k, std::int64_t n, int world, const std::vector<bool>& used_by) {
  torch::Tensor sum = torch::zeros({n});
  for (int r = 0; r < world; ++r) {
    if (used_by[r]) sum += grad_of(k, n, r);
  }
  return sum / world;
}

TEST_F(PlanesTest, GradSyncBucketsInReverseRegistrationOrderWithASmallFirstBucket) {
  // float32 sizes 4000, 8000, 12000, 16000 bytes; first bucket cap 20000 bytes, others 25000.
  auto params = make_params({1000, 2000, 3000, 4000});
  GradSyncOptions o;
  o.first_bucket_mb = 20000 / kMiB;
  o.bucket_mb = 25000 / kMiB;
  GradSync sync(params, groups_.data(), o);
  // Backward produces the last parameter first: {p3} fills the small first bucket, then
  // {p2, p1, p0} = 24000 bytes fit the second.
  EXPECT_EQ(sync.bucket_numels(), (std::vector<std::int64_t>{4000, 6000}));
  const std::vector<bool> all(params.size(), true);
  backward(params, rank(), all);
  sync.finish(/*step=*/0);
  const std::vector<bool> every_rank(world(), true);
  for (std::size_t k = 0; k < params.size(); ++k) {
    EXPECT_TRUE(torch::allclose(params[k].grad(),
                                mean_over_ranks(static_cast<int>(k), params[k].numel(), world(),
                                                every_rank),
                                1e-6, 1e-5))
        << "parameter " << k;
  }
}

TEST_F(PlanesTest, GradSyncResultsAreBitIdenticalWithOverlapOnAndOff) {
  std::vector<torch::Tensor> results[2];
  for (int overlap = 0; overlap < 2; ++overlap) {
    auto params = make_params({300, 5, 7000, 64});
    GradSyncOptions o;
    o.overlap = overlap == 1;
    o.first_bucket_mb = 1024 / kMiB;
    GradSync sync(params, groups_.data(), o);
    for (int step = 0; step < 2; ++step) {  // the second step reuses the bucket buffers
      for (auto& p : params) p.mutable_grad().reset();
      backward(params, rank() + step, std::vector<bool>(params.size(), true));
      sync.finish(step);
    }
    for (auto& p : params) results[overlap].push_back(p.grad().clone());
  }
  for (std::size_t k = 0; k < results[0].size(); ++k) {
    EXPECT_TRUE(torch::equal(results[0][k], results[1][k])) << "parameter " << k;
  }
}

// Every rank issues the same buckets whatever backward reached: a parameter no rank used this
// step contributes zeros, one that only rank 0 used is averaged with the others' zeros.
TEST_F(PlanesTest, GradSyncGivesZerosForAParameterUnusedInAStep) {
  auto params = make_params({10, 20, 30});
  GradSync sync(params, groups_.data(), GradSyncOptions{});
  std::vector<bool> used{true, false, rank() == 0};
  backward(params, rank(), used);
  sync.finish(0);
  EXPECT_TRUE(torch::equal(params[1].grad(), torch::zeros({20})));
  std::vector<bool> only_rank0(world(), false);
  only_rank0[0] = true;
  EXPECT_TRUE(torch::allclose(params[2].grad(), mean_over_ranks(2, 30, world(), only_rank0)));
  EXPECT_TRUE(torch::allclose(params[0].grad(),
                              mean_over_ranks(0, 10, world(), std::vector<bool>(world(), true))));
}

// Gradient accumulation: a backward under NoSync all-reduces nothing; the next one all-reduces
// each parameter's accumulated gradient plus its new one, with overlap on and off alike.
TEST_F(PlanesTest, GradSyncNoSyncAccumulatesAndTheNextBackwardReducesTheSum) {
  std::vector<torch::Tensor> results[2];
  for (int overlap = 0; overlap < 2; ++overlap) {
    auto params = make_params({10, 2000});
    GradSyncOptions o;
    o.overlap = overlap == 1;
    GradSync sync(params, groups_.data(), o);
    const std::vector<bool> all(params.size(), true);
    {
      const GradSync::NoSync no_sync(&sync);
      backward(params, rank(), all);  // micro-batch 1: accumulates locally
    }
    backward(params, rank() + 100, all);  // micro-batch 2: all-reduces the sum
    sync.finish(0);
    for (std::size_t k = 0; k < params.size(); ++k) {
      torch::Tensor expected = torch::zeros({params[k].numel()});
      for (int r = 0; r < world(); ++r) {
        expected += grad_of(static_cast<int>(k), params[k].numel(), r) +
                    grad_of(static_cast<int>(k), params[k].numel(), r + 100);
      }
      EXPECT_TRUE(torch::allclose(params[k].grad(), expected / world(), 1e-6, 1e-4))
          << "parameter " << k << " overlap " << overlap;
      results[overlap].push_back(params[k].grad().clone());
    }
  }
  for (std::size_t k = 0; k < results[0].size(); ++k) {
    EXPECT_TRUE(torch::allclose(results[0][k], results[1][k], 0, 1e-5)) << "parameter " << k;
  }
}

// Two backward passes before finish() (e.g. gradient accumulation without a no-sync mode) would
// all-reduce a gradient twice: refused on every rank alike.
TEST_F(PlanesTest, GradSyncRefusesAGradientProducedTwiceInOneStep) {
  auto params = make_params({10, 20});
  GradSync sync(params, groups_.data(), GradSyncOptions{});
  const std::vector<bool> all(params.size(), true);
  backward(params, rank(), all);
  try {
    backward(params, rank(), all);
    FAIL() << "the second backward went through";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("two gradients"), std::string::npos) << e.what();
  }
}

// ---- GradSync over FusedAdam's flat gradient buffers -------------------------------------------

// Parameters of a small network as FusedAdam sees them: two conv weights made channels_last before
// FusedAdam is built (their gradient views keep those strides), biases and a linear layer, with
// sizes that leave alignment gaps between the slots. Values are fixed (the same on every rank).
std::vector<torch::Tensor> make_net_params() {
  const std::vector<std::vector<std::int64_t>> shapes{{16, 3, 3, 3}, {16},     {32, 16, 3, 3},
                                                      {5},           {7, 300}, {7}};
  std::vector<torch::Tensor> out;
  for (std::size_t k = 0; k < shapes.size(); ++k) {
    std::int64_t numel = 1;
    for (const auto d : shapes[k]) numel *= d;
    torch::Tensor p =
        torch::sin(torch::arange(numel, torch::kFloat) * 0.11 + static_cast<double>(k))
            .reshape(shapes[k]);
    if (p.dim() == 4) p = p.contiguous(at::MemoryFormat::ChannelsLast);
    out.push_back(p.set_requires_grad(true));
  }
  return out;
}

// Rank r's gradient for parameter k: values that round when scaled and summed.
torch::Tensor net_grad(const torch::Tensor& p, std::size_t k, int r) {
  return (torch::sin(torch::arange(p.numel(), torch::kFloat) * 0.37 + 1.3 * static_cast<double>(k) +
                     0.71 * r) *
          (1.0 + static_cast<double>(k)) / 3.0)
      .reshape(p.sizes());
}

void net_backward(const std::vector<torch::Tensor>& params, int r) {
  torch::Tensor loss = torch::zeros({});
  for (std::size_t k = 0; k < params.size(); ++k) {
    loss = loss + (params[k] * net_grad(params[k], k, r)).sum();
  }
  loss.backward();
}

struct FlatRun {
  std::vector<torch::Tensor> grads;   // after the last finish()
  std::vector<torch::Tensor> params;  // after the last FusedAdam step
  std::vector<int> copied;            // FusedAdam::last_copied() after each step's clip
  bool grads_are_fused_views = true;  // every step: .grad() is FusedAdam's grad view itself
  int buckets = 0;
};

// Two training steps as the trainer drives them (.grad() to none, [a NoSync micro-batch], backward,
// finish, clip, step) with GradSync's own buckets or FusedAdam's flat gradients.
FlatRun run_fused(DataPlane& plane, bool flat, bool overlap, bool no_sync) {
  auto params = make_net_params();
  FusedAdamOptions fo;
  fo.lr = 1e-2;
  fo.weight_decay = 1e-3;
  FusedAdam fused(params, fo);
  GradSyncOptions o;
  o.overlap = overlap;
  o.first_bucket_mb = 2048 / kMiB;  // several buckets: {linear bias, weight}, conv2, ...
  o.bucket_mb = 12000 / kMiB;
  GradSync sync(params, plane, o, flat ? fused.flat_gradients() : FlatGradients{});
  FlatRun run;
  run.buckets = sync.num_buckets();
  for (int step = 0; step < 2; ++step) {
    for (auto& p : params) p.mutable_grad().reset();  // set_to_none, as Trainer::train_step
    if (no_sync) {
      const GradSync::NoSync hold(&sync);
      net_backward(params, plane.rank() + 10 * step + 100);
    }
    net_backward(params, plane.rank() + 10 * step);
    sync.finish(step);
    for (std::size_t i = 0; i < params.size(); ++i) {
      const torch::Tensor& g = params[i].grad();
      const torch::Tensor& view = fused.grad_view(static_cast<int>(i));
      run.grads_are_fused_views = run.grads_are_fused_views && g.data_ptr() == view.data_ptr() &&
                                  g.strides().equals(view.strides());
      if (step == 1) run.grads.push_back(g.clone());
    }
    fused.clip_grad_value(0.3);
    run.copied.push_back(fused.last_copied());
    fused.step();
  }
  for (const auto& p : params) run.params.push_back(p.detach().clone());
  return run;
}

TEST_F(PlanesTest, GradSyncInFusedAdamsFlatGradientsIsBitIdenticalAndCopiesNothing) {
  const std::size_t n = make_net_params().size();
  for (int overlap = 0; overlap < 2; ++overlap) {
    for (int no_sync = 0; no_sync < 2; ++no_sync) {
      SCOPED_TRACE("overlap " + std::to_string(overlap) + ", NoSync micro-batch " +
                   std::to_string(no_sync));
      const FlatRun own = run_fused(groups_.data(), false, overlap == 1, no_sync == 1);
      const FlatRun flat = run_fused(groups_.data(), true, overlap == 1, no_sync == 1);
      EXPECT_GT(flat.buckets, 2);
      EXPECT_EQ(flat.buckets, own.buckets);  // the same cuts (one buffer: float32 on the CPU)
      // Own buckets: FusedAdam copies every gradient in; flat: none, .grad() is its view.
      EXPECT_EQ(own.copied, std::vector<int>(2, static_cast<int>(n)));
      EXPECT_EQ(flat.copied, std::vector<int>(2, 0));
      EXPECT_FALSE(own.grads_are_fused_views);
      EXPECT_TRUE(flat.grads_are_fused_views);
      ASSERT_EQ(flat.grads.size(), n);
      for (std::size_t k = 0; k < n; ++k) {
        EXPECT_TRUE(torch::equal(flat.grads[k], own.grads[k])) << "gradient " << k;
        EXPECT_TRUE(torch::equal(flat.params[k], own.params[k])) << "parameter " << k;
        // The average itself (step 1's gradients, before clipping).
        torch::Tensor expected = torch::zeros(own.grads[k].sizes());
        const auto p = make_net_params()[k];
        for (int r = 0; r < world(); ++r) {
          expected += net_grad(p, k, r + 10);
          if (no_sync == 1) expected += net_grad(p, k, r + 110);
        }
        EXPECT_TRUE(torch::allclose(flat.grads[k], expected / world(), 1e-5, 1e-5))
            << "gradient " << k;
      }
      // The channels_last conv weight's averaged gradient has the parameter's strides (own
      // buckets give a contiguous view, which FusedAdam copies into its channels_last slot).
      EXPECT_TRUE(flat.grads[2].is_contiguous(at::MemoryFormat::ChannelsLast) &&
                  !flat.grads[2].is_contiguous());
    }
  }
}

// The slots must follow each other in reverse registration order (a bucket is one slice): a
// layout in registration order is refused naming the parameter, before any hook is registered.
TEST_F(PlanesTest, GradSyncRefusesFlatSlotsOutOfReverseRegistrationOrder) {
  auto params = make_params({10, 20});
  FlatGradients flat;
  flat.buffers.push_back(torch::zeros({64}));
  flat.buffer = {0, 0};
  flat.offset = {0, 16};  // parameter 0 first: registration order
  for (std::size_t k = 0; k < params.size(); ++k) {
    flat.views.push_back(flat.buffers[0].narrow(0, flat.offset[k], params[k].numel()));
  }
  try {
    GradSync sync(params, groups_.data(), GradSyncOptions{}, flat);
    FAIL() << "slots in registration order were accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("parameter 0"), std::string::npos) << e.what();
  }
  // Reverse order is fine, and so is a view that is not where the offset says: refused.
  flat.offset = {24, 0};
  flat.views = {flat.buffers[0].narrow(0, 24, 10), flat.buffers[0].narrow(0, 0, 20)};
  EXPECT_NO_THROW(GradSync(params, groups_.data(), GradSyncOptions{}, flat));
  flat.views[0] = flat.buffers[0].narrow(0, 30, 10);
  EXPECT_THROW(GradSync(params, groups_.data(), GradSyncOptions{}, flat), std::invalid_argument);
}

// A .grad() still pointing into the flat buffers at backward (FusedAdam::zero_grad() instead of
// set_to_none) would have autograd add the gradient on top of the average: refused on every rank.
TEST_F(PlanesTest, GradSyncOverFlatGradientsRefusesAGradStillInTheBuffersAtBackward) {
  for (int overlap = 0; overlap < 2; ++overlap) {
    auto params = make_net_params();
    FusedAdam fused(params, FusedAdamOptions{});  // points every .grad() at its view
    GradSyncOptions o;
    o.overlap = overlap == 1;
    GradSync sync(params, groups_.data(), o, fused.flat_gradients());
    try {
      net_backward(params, rank());
      sync.finish(0);
      FAIL() << "backward into the flat buffers went through, overlap " << overlap;
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find("set it to none"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace fer
