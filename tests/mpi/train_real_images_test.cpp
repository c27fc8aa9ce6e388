// fer-dist-train on REAL images (Fashion-MNIST from Debian's dataset-fashion-mnist, see
// tests/unit/real_images.h), with the reference recipe (configs/fer2013_resnet9.yaml) at reduced
// width and epochs: a regression floor on test accuracy for one process and for 2 ranks, and the
// data-parallel equivalence (N ranks x B against 1 x N*B, the recipe's dropout 0.2) on these
// images for 10 steps at N = 2, 3 and 4, measured against float32's own floor on the same run
// (one process at 2 threads against 1 thread). Drawn faces are too easy to show arithmetic drift.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/fs_util.h"
#include "real_images.h"
#include "metrics_util.h"
#include "test_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace fer {
namespace {

using testing::mpiexec;
using testing::quote;
using testing::run_command;
using testing::step_losses;
using testing::TempFolder;
using testing::tool;

constexpr int kSize = 32;  // 28x28 upscaled: ResNet9's three pools leave 4x4
// Test accuracy floor of the reduced recipe (4 epochs, width 0.125, 1,600 train images): measured
// 0.760 (1 process) and 0.758 (2 ranks); the nearest-class-mean classifier on the same pixels
// reaches 0.68 and chance is 0.10. The floor sits above the baseline (a model that learned no
// more than class means fails) and 0.04 below the measurements (thread counts and BLAS builds
// change the last bits, and training amplifies them).
constexpr double kFloor = 0.72;
// N ranks against 1 process, relative per-step loss, float32.
//
// Why not 1e-5 for all 10 steps (issue 15's target): float32 training of this network is not a
// continuous function of rounding. Measured with tests/bench/fidelity/split_drift (the trainer's
// step for 1 x 24 and N x 24/N in one process, bit for bit the losses of this test) on this set:
// steps 1-5 agree within 2.1e-7 at N = 2, 3, 4; at step 4 one ReLU input within rounding of 0
// changes sign (conv2), at step 5 one 2x2 max-pool window whose two largest inputs are 3.8e-6
// apart (relative) routes its gradient to the other input (conv3's pool). Each such kink crossing
// changes the gradient of every layer before it by 1e-4 to 1e-2 relative (and of no layer after
// it); Adam passes that into the weights, the next forward differs by ~1e-4, hundreds of kinks
// are crossed, and the loss is 4e-5 apart at step 6 and 4e-3 at step 10 - the same at every N,
// and the same (to 2%) for ONE process run at 2 threads against 1 thread, or with every weight
// multiplied by 1 + 1e-7 u at step 0 and no split at all. Dithering the images (no flat black
// background) does not help: the near-ties are generic, not exact ties of flat regions. So:
// - while one process at 2 threads stays within kFloat32Agreement of itself at 1 thread (no
//   kink crossed yet), N ranks must too: 1e-6, tighter than the 1e-5 (measured <= 2.1e-7);
// - once float32 itself has departed, N ranks must stay within kFloorFactor x that floor (the
//   two runs cross the same near-kinks of the reference trajectory: measured within 2%).
// The 1e-5 for 10 steps at N = 2, 3, 4 is asserted in float64, where rounding is 1e-16
// and no kink is crossed (tests/mpi/sync_bn_mpi_test.cpp, sync_bn_mpi_np2/3/4: ~1e-12).
// The comparison runs in NCHW (model.channels_last=false, pinned). In NHWC LibTorch 1.13's CPU
// batch norm gathers its statistics with ~100x NCHW's error (1e-5 to 1e-4 of the output when a
// channel's mean is a few standard deviations from 0; tests/bench/fidelity/bn_layout), and that
// error depends on the batch size and thread count: the losses then differ by ~2e-6 at step 1
// already (1 x 24 against 3 x 8, and 2 threads against 1), kinks are crossed from step 1 on, and
// the two runs part along different paths (6.6e-4 against a floor of 1.6e-5 at step 4 at N = 3):
// nothing left for a float32 comparison to pin down. (The convolutions give the same values in
// both layouts and at any batch size.)
constexpr double kFloat32Agreement = 1e-6;
constexpr double kFloorFactor = 10.0;

class RealImages : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!testing::fashion_mnist_available()) return;
    tmp_ = new TempFolder("real_images");
    // 1,600 train / 200 val from the train file, 500 test from the test file (every class in
    // each: the files interleave the classes).
    const auto train = testing::upscale(testing::load_fashion_mnist("train", 0, 1600), kSize);
    const auto val = testing::upscale(testing::load_fashion_mnist("train", 1600, 200), kSize);
    const auto test = testing::upscale(testing::load_fashion_mnist("test", 0, 500), kSize);
    testing::write_image_folder((*tmp_ / "src").string(),
                                {{"train", train}, {"val", val}, {"test", test}});
    packed_ = run_command(tool("fer-pack") + " imagefolder " + quote(*tmp_ / "src") + " " +
                          quote(*tmp_ / "data") + " -q --size " + std::to_string(kSize));
  }
  static void TearDownTestSuite() { delete tmp_; }
  void SetUp() override {
    if (!tmp_) GTEST_SKIP() << "Debian's dataset-fashion-mnist is not installed";
    ASSERT_EQ(packed_.exit_code, 0) << packed_.output;
  }

  // The reference recipe, reduced: width 0.125, `epochs` epochs, global batch 32.
  testing::CommandResult train(int np, const std::string& out, const std::string& extra) {
    const std::string launch = np > 1 ? mpiexec(np) : "";
    return run_command(launch + tool("fer-dist-train") + " --config " +
                       quote(fs::path(FER_SOURCE_DIR) / "configs" / "fer2013_resnet9.yaml") +
                       " --data " + quote(*tmp_ / "data") + " --out " + quote(*tmp_ / out) +
                       " --no-report --set model.width=0.125 --set train.threads=1"
                       " --set train.log_every=1 --set data.workers=1 " + extra);
  }
  fs::path path(const std::string& name) const { return *tmp_ / name; }
  static TempFolder* tmp_;
  static testing::CommandResult packed_;
};
TempFolder* RealImages::tmp_ = nullptr;
testing::CommandResult RealImages::packed_;

TEST_F(RealImages, ReferenceRecipeLearnsAboveTheFloorOnOneProcessAndTwoRanks) {
  const std::string recipe = "--set train.epochs=4 --set train.batch_size=";
  auto one = train(1, "floor_np1", recipe + "32");
  ASSERT_EQ(one.exit_code, 0) << one.output;
  auto two = train(2, "floor_np2", recipe + "16");
  ASSERT_EQ(two.exit_code, 0) << two.output;
  for (const char* run : {"floor_np1", "floor_np2"}) {
    const json summary = json::parse(read_file(path(run) / "summary.json"));
    const double accuracy = summary["test"]["accuracy"];
    std::printf("%s: test accuracy %.3f (best val %.3f)\n", run, accuracy,
                summary["best_val_accuracy"].get<double>());
    // Floor: see the measurements in the README's Tests section. Chance is 0.10.
    EXPECT_GT(accuracy, kFloor) << run;
  }
}

TEST_F(RealImages,
       NRanksMatchOneProcessWithin1e6WhileFloat32ItselfDoesThenWithin10xItsFloorFor10Steps) {
  const std::string ten =
      "--set train.max_steps=10 --set train.epochs=1 --set model.channels_last=false ";
  auto ref = train(1, "eq_np1", ten + "--set train.batch_size=24");
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  const auto l1 = step_losses(path("eq_np1"));
  ASSERT_EQ(l1.size(), 10u);
  // float32's own floor: the same process and batches, another summation order (2 threads)
  auto other = train(1, "eq_np1_threads2", ten + "--set train.batch_size=24 --set train.threads=2");
  ASSERT_EQ(other.exit_code, 0) << other.output;
  const auto l2 = step_losses(path("eq_np1_threads2"));
  ASSERT_EQ(l2.size(), l1.size());
  std::vector<double> floor;
  for (std::size_t i = 0; i < l1.size(); ++i) floor.push_back(std::abs(l2[i] - l1[i]) / l1[i]);
  for (int n : {2, 3, 4}) {
    // 24 = 2 x 12 = 3 x 8 = 4 x 6: the same global batch
    const std::string run = "eq_np" + std::to_string(n);
    auto r = train(n, run, ten + "--set train.batch_size=" + std::to_string(24 / n));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto ln = step_losses(path(run));
    ASSERT_EQ(ln.size(), l1.size());
    bool departed = false;  // float32 itself (1 process, 2 threads vs 1) past kFloat32Agreement
    for (std::size_t i = 0; i < l1.size(); ++i) {
      departed = departed || floor[i] > kFloat32Agreement;
      const double rel = std::abs(ln[i] - l1[i]) / std::abs(l1[i]);
      std::printf("N=%d step %2zu: loss %.9f vs %.9f, relative %.2e (float32 floor: 2 threads "
                  "vs 1, %.2e)\n",
                  n, i + 1, ln[i], l1[i], rel, floor[i]);
      if (!departed) {
        EXPECT_LE(rel, kFloat32Agreement)
            << "N=" << n << " step " << i + 1 << ": tolerance 1e-6 relative while one process "
            << "at 2 threads is within 1e-6 of itself at 1 thread (issue 15's target is 1e-5)";
      } else {
        EXPECT_LE(rel, std::max(1e-5, kFloorFactor * floor[i]))
            << "N=" << n << " step " << i + 1 << ": tolerance max(1e-5, 10 x float32's floor "
            << floor[i] << "): one process at 2 threads against 1 thread departed first";
      }
    }
  }
}

// Issue 15's target itself, where float32's own rounding cannot decide it: the whole trainer in
// float64 (train.precision=fp64: model, batches, SyncBN, GradSync, Adam), the reference recipe
// with dropout 0.2 per global sample: N ranks x 24/N against 1 process x 24 within 1e-5 relative
// per step for 10 steps at N = 2, 3, 4 (measured ~1e-14: no ReLU or max-pool decision flips).
TEST_F(RealImages, InFloat64NRanksMatchOneProcessWithin1e5For10Steps) {
  const std::string ten = "--set train.max_steps=10 --set train.epochs=1 "
                          "--set train.precision=fp64 ";
  auto ref = train(1, "fp64_np1", ten + "--set train.batch_size=24");
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  const auto l1 = step_losses(path("fp64_np1"));
  ASSERT_EQ(l1.size(), 10u);
  for (int n : {2, 3, 4}) {
    const std::string run = "fp64_np" + std::to_string(n);
    auto r = train(n, run, ten + "--set train.batch_size=" + std::to_string(24 / n));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto ln = step_losses(path(run));
    ASSERT_EQ(ln.size(), l1.size());
    for (std::size_t i = 0; i < l1.size(); ++i) {
      const double rel = std::abs(ln[i] - l1[i]) / std::abs(l1[i]);
      std::printf("fp64 N=%d step %2zu: loss %.15f vs %.15f, relative %.2e\n", n, i + 1, ln[i],
                  l1[i], rel);
      EXPECT_LE(rel, 1e-5) << "N=" << n << " step " << i + 1
                           << ": tolerance 1e-5 relative (issue 15), float64";
    }
  }
}

}  // namespace
}  // namespace fer
