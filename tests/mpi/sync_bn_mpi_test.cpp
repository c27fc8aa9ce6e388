// SyncBatchNorm2d across real ranks (mpiexec -np 2 / 4, or a singleton world of 1) against
// torch::nn::BatchNorm2d on the concatenated global batch.
//
// Every rank builds the same global batch from a fixed seed and takes its slice; the per-rank batch
// sizes differ (np 2: 3 and 5; np 4: 1, 2, 3, 4; in general rank r holds r + 1 + r % 2).
// Convention: the global loss is sum(g * y) over the whole global batch and each rank's loss is the
// same sum over its slice, so the global loss is the sum of the rank losses. Then
//   - a rank's input gradient equals the reference input gradient on its slice;
//   - the SUM over ranks of a rank's weight/bias gradient equals the reference gradient (GradSync
//     averages instead, i.e. the per-rank losses are divided by the world size; same direction).
// The all-reduce is MPI_Allreduce(MPI_SUM) directly, independent of src/dist.
//
// Every test issues the same collectives on every rank, unconditionally, and checks with EXPECT
// only afterwards; main() makes the exit code the same on every rank.
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "model/resnet9.h"
#include "model/sync_batchnorm.h"

namespace fer {
namespace {

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

MPI_Datatype mpi_type(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat:
      return MPI_FLOAT;
    case torch::kDouble:
      return MPI_DOUBLE;
    default:
      TORCH_CHECK(false, "mpi_allreduce_sum: float32/float64 only, got ", t.scalar_type());
  }
}

// The AllReduceSum the dist layer would supply, built on MPI directly (CPU tensors).
void mpi_allreduce_sum(torch::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), "mpi_allreduce_sum: contiguous CPU only");
  const int rc = MPI_Allreduce(MPI_IN_PLACE, t.data_ptr(), static_cast<int>(t.numel()), mpi_type(t),
                               MPI_SUM, MPI_COMM_WORLD);
  TORCH_CHECK(rc == MPI_SUCCESS, "MPI_Allreduce failed: ", rc);
}

// Sum over ranks of a copy of t.
torch::Tensor summed_over_ranks(const torch::Tensor& t) {
  torch::Tensor copy = t.detach().clone().contiguous();
  mpi_allreduce_sum(copy);
  return copy;
}

// True when t (as float64) is bit-identical on every rank.
bool identical_on_every_rank(const torch::Tensor& t) {
  const auto mine = t.detach().to(torch::kDouble).contiguous();
  auto lo = mine.clone();
  auto hi = mine.clone();
  MPI_Allreduce(MPI_IN_PLACE, lo.data_ptr(), static_cast<int>(lo.numel()), MPI_DOUBLE, MPI_MIN,
                MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, hi.data_ptr(), static_cast<int>(hi.numel()), MPI_DOUBLE, MPI_MAX,
                MPI_COMM_WORLD);
  return torch::equal(lo, hi);
}

double scaled_diff(const torch::Tensor& a, const torch::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.numel() == 0) return 0.0;
  const auto a64 = a.detach().to(torch::kDouble);
  const auto b64 = b.detach().to(torch::kDouble);
  const double scale = std::max(1.0, b64.abs().max().item<double>());
  return (a64 - b64).abs().max().item<double>() / scale;
}

// Checks one comparison; rank 0 prints the worst difference over all ranks.
void expect_close(const std::string& what, const torch::Tensor& actual,
                  const torch::Tensor& expected, double tolerance) {
  const double mine = scaled_diff(actual, expected);
  double worst = mine;
  MPI_Allreduce(&mine, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (world_rank() == 0) std::printf("  %-24s max scaled diff %.3g\n", what.c_str(), worst);
  EXPECT_LE(mine, tolerance) << what << " on rank " << world_rank();
}

double tolerance_for(torch::ScalarType type) { return type == torch::kDouble ? 1e-10 : 1e-5; }

// Per-rank batch sizes: np 2 -> 3, 5; np 4 -> 1, 2, 3, 4 (then 5, 7, 7, 9, ...); or all given.
std::vector<int64_t> default_sizes(int world) {
  if (world == 2) return {3, 5};
  std::vector<int64_t> sizes;
  for (int r = 0; r < world; ++r) sizes.push_back(world == 4 ? r + 1 : r + 1 + r % 2);
  return sizes;
}

struct Slice {
  int64_t begin;
  int64_t size;
};

Slice my_slice(const std::vector<int64_t>& sizes) {
  const int r = world_rank();
  return {std::accumulate(sizes.begin(), sizes.begin() + r, int64_t{0}), sizes[r]};
}

// Channels with different, non-zero means and scales (as after a conv).
torch::Tensor make_input(std::vector<int64_t> shape, torch::ScalarType type) {
  const int64_t c = shape[1];
  const auto mean = torch::linspace(-3, 3, c, torch::kDouble).view({1, c, 1, 1});
  const auto scale = torch::linspace(0.5, 2.0, c, torch::kDouble).view({1, c, 1, 1});
  return (torch::randn(shape, torch::kDouble) * scale + mean).to(type);
}

// Runs `steps` training steps of SyncBatchNorm2d on each rank's slice and of BatchNorm2d on the
// global batch, comparing after each, then one eval step.
void check_against_global_batchnorm(torch::ScalarType type, const std::vector<int64_t>& sizes,
                                    int steps) {
  const double tol = tolerance_for(type);
  const int64_t channels = 6;
  const int64_t total = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  const Slice mine = my_slice(sizes);
  torch::manual_seed(1234);  // the same global data on every rank

  torch::nn::BatchNorm2d ref(channels);
  SyncBatchNorm2d sync(channels, mpi_allreduce_sum);
  ref->to(type);
  sync->to(type);
  {
    torch::NoGradGuard no_grad;
    const auto w = torch::rand({channels}, torch::kDouble) + 0.5;
    const auto b = torch::randn({channels}, torch::kDouble);
    ref->weight.copy_(w);
    sync->weight.copy_(w);
    ref->bias.copy_(b);
    sync->bias.copy_(b);
  }

  for (int step = 0; step < steps; ++step) {
    if (world_rank() == 0) std::printf("step %d\n", step);
    const auto x = make_input({total, channels, 3, 4}, type);
    const auto g = torch::randn(x.sizes(), x.options());
    const auto x_ref = x.clone().requires_grad_();
    const auto y_ref = ref->forward(x_ref);
    (y_ref * g).sum().backward();

    const auto x_local = x.slice(0, mine.begin, mine.begin + mine.size).clone().requires_grad_();
    const auto y_local = sync->forward(x_local);
    (y_local * g.slice(0, mine.begin, mine.begin + mine.size)).sum().backward();

    expect_close("output", y_local, y_ref.slice(0, mine.begin, mine.begin + mine.size), tol);
    expect_close("grad input", x_local.grad(),
                 x_ref.grad().slice(0, mine.begin, mine.begin + mine.size), tol);
    expect_close("sum of grad weight", summed_over_ranks(sync->weight.grad()), ref->weight.grad(),
                 tol);
    expect_close("sum of grad bias", summed_over_ranks(sync->bias.grad()), ref->bias.grad(), tol);
    expect_close("running_mean", sync->running_mean, ref->running_mean, tol);
    expect_close("running_var", sync->running_var, ref->running_var, tol);
    EXPECT_TRUE(identical_on_every_rank(sync->running_mean)) << "rank " << world_rank();
    EXPECT_TRUE(identical_on_every_rank(sync->running_var)) << "rank " << world_rank();
    EXPECT_EQ(sync->num_batches_tracked.item<int64_t>(), step + 1);
    ref->zero_grad();
    sync->zero_grad();
  }

  ref->eval();
  sync->eval();
  const auto x = make_input({total, channels, 3, 4}, type);
  expect_close("eval output", sync->forward(x.slice(0, mine.begin, mine.begin + mine.size)),
               ref->forward(x).slice(0, mine.begin, mine.begin + mine.size), tol);
}

class SyncBatchNormMpi : public ::testing::TestWithParam<torch::ScalarType> {};

TEST_P(SyncBatchNormMpi, EqualsBatchNorm2dOnTheGlobalBatchWithUnequalRankBatches) {
  check_against_global_batchnorm(GetParam(), default_sizes(world_size()), /*steps=*/3);
}

TEST_P(SyncBatchNormMpi, HandlesRanksWithAnEmptyLocalBatch) {
  // Every other rank holds nothing (a world of 1 keeps its batch).
  std::vector<int64_t> sizes;
  for (int r = 0; r < world_size(); ++r) {
    sizes.push_back(world_size() == 1 ? 4 : (r % 2 == 0 ? 0 : r + 2));
  }
  check_against_global_batchnorm(GetParam(), sizes, /*steps=*/2);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, SyncBatchNormMpi, ::testing::Values(torch::kFloat, torch::kDouble),
                         [](const auto& info) { return std::string(c10::toString(info.param)); });

// A whole ResNet9 (sync_bn) on the rank slices equals the BatchNorm2d model on the global batch:
// loss and the sum over ranks of every parameter gradient.
TEST(SyncBatchNormMpiResNet9, MatchesTheSingleProcessModelOnTheGlobalBatch) {
  const auto sizes = default_sizes(world_size());
  const int64_t total = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  const Slice mine = my_slice(sizes);
  torch::manual_seed(99);
  ResNet9Options o;
  o.width = 0.125;
  o.dropout = 0.0;  // dropout would draw different masks
  ResNet9 ref(o);
  o.sync_bn = true;
  ResNet9 synced(o);
  synced->set_allreduce(mpi_allreduce_sum);
  {
    torch::NoGradGuard no_grad;
    const auto from = ref->named_parameters();
    for (auto& item : synced->named_parameters()) item.value().copy_(from[item.key()]);
  }
  ref->to(torch::kDouble);
  synced->to(torch::kDouble);
  const auto x = torch::randn({total, 1, 16, 16}, torch::kDouble);
  const auto target = torch::randint(0, 7, {total}, torch::kLong);
  namespace F = torch::nn::functional;
  const auto sum = F::CrossEntropyFuncOptions().reduction(torch::kSum);

  const auto loss_ref = F::cross_entropy(ref->forward(x), target, sum);
  loss_ref.backward();
  const auto loss_local =
      F::cross_entropy(synced->forward(x.slice(0, mine.begin, mine.begin + mine.size)),
                       target.slice(0, mine.begin, mine.begin + mine.size), sum);
  loss_local.backward();

  expect_close("loss (sum over ranks)", summed_over_ranks(loss_local), loss_ref, 1e-10);
  const auto ref_params = ref->named_parameters();
  double worst = 0;
  for (const auto& item : synced->named_parameters()) {
    const double d =
        scaled_diff(summed_over_ranks(item.value().grad()), ref_params[item.key()].grad());
    EXPECT_LE(d, 1e-9) << item.key() << " on rank " << world_rank();
    worst = std::max(worst, d);
  }
  if (world_rank() == 0) {
    std::printf("  %-24s max scaled diff %.3g\n", "sum of parameter grads", worst);
  }
  for (const auto& item : synced->named_buffers()) {
    EXPECT_TRUE(identical_on_every_rank(item.value())) << item.key();
  }
}

// Prints only failures, with the rank: other ranks would otherwise repeat rank 0's report.
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.summary());
  }

 private:
  int rank_;
};

}  // namespace
}  // namespace fer

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  const int rank = fer::world_rank();
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new fer::FailurePrinter(rank));
  }
  const int failed_here = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int failed_anywhere = failed_here;
  MPI_Allreduce(&failed_here, &failed_anywhere, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (failed_anywhere && !failed_here) {
    std::fprintf(stderr, "[rank %d] all tests passed here, but another rank failed\n", rank);
  }
  MPI_Finalize();
  return failed_anywhere;
}
