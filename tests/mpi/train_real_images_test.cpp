// fer-dist-train on REAL images (Fashion-MNIST from Debian's dataset-fashion-mnist, see
// tests/unit/real_images.h), with the reference recipe (configs/fer2013_resnet9.yaml) at reduced
// width and epochs: a regression floor on test accuracy for one process and for 2 ranks, and the
// data-parallel equivalence (N ranks x B against 1 x N*B, the recipe's dropout 0.2) on these
// images for 10 steps at N = 2, 3 and 4. Drawn faces are too easy to show arithmetic drift.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "common/fs_util.h"
#include "real_images.h"
#include "test_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace fer {
namespace {

using testing::mpiexec;
using testing::quote;
using testing::run_command;
using testing::TempFolder;
using testing::tool;

constexpr int kSize = 32;  // 28x28 upscaled: ResNet9's three pools leave 4x4
// Test accuracy floor of the reduced recipe (4 epochs, width 0.125, 1,600 train images): measured
// 0.760 (1 process) and 0.758 (2 ranks); the nearest-class-mean classifier on the same pixels
// reaches 0.68 and chance is 0.10. The floor sits above the baseline (a model that learned no
// more than class means fails) and 0.04 below the measurements (thread counts and BLAS builds
// change the last bits, and training amplifies them).
constexpr double kFloor = 0.72;
// N ranks against 1 process, relative per-step loss. Measured on this set at N = 2, 3, 4: at most
// 2e-7 for steps 1-5 (summation order only), then 4e-5 at step 6 growing to 4e-3 at step 10, the
// same at every N. That growth is Adam, not SyncBN: a first Adam step moves every weight by about
// lr * sign(g), so gradient elements at rounding level (|g| ~ 1e-9, whose sign depends on the
// summation order the batch split changes) get full-size steps; plain BatchNorm2d trained on the
// same batches in another order drifts the same way (tests/mpi/sync_bn_mpi_test.cpp prints it).
constexpr double kFirstStepsTolerance = 1e-6;  // steps 1-5
constexpr double kLaterStepsTolerance = 1e-2;  // steps 6-10

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
  static std::vector<double> step_losses(const fs::path& run) {
    std::vector<double> out;
    std::ifstream in(run / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      const json j = json::parse(line);
      if (j["type"] == "step") out.push_back(j["loss"]);
    }
    return out;
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

TEST_F(RealImages, NRanksReproduceOneProcessForTenStepsWithTheRecipesDropout) {
  const std::string ten = "--set train.max_steps=10 --set train.epochs=1 ";
  auto ref = train(1, "eq_np1", ten + "--set train.batch_size=24");
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  const auto l1 = step_losses(path("eq_np1"));
  ASSERT_EQ(l1.size(), 10u);
  for (int n : {2, 3, 4}) {
    // 24 = 2 x 12 = 3 x 8 = 4 x 6: the same global batch
    const std::string run = "eq_np" + std::to_string(n);
    auto r = train(n, run, ten + "--set train.batch_size=" + std::to_string(24 / n));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto ln = step_losses(path(run));
    ASSERT_EQ(ln.size(), l1.size());
    for (std::size_t i = 0; i < l1.size(); ++i) {
      const double rel = std::abs(ln[i] - l1[i]) / std::abs(l1[i]);
      std::printf("N=%d step %zu: loss %.9f vs %.9f, relative %.2e\n", n, i + 1, ln[i], l1[i], rel);
      EXPECT_LT(rel, i < 5 ? kFirstStepsTolerance : kLaterStepsTolerance)
          << "N=" << n << " step " << i + 1 << " (tolerance " << (i < 5 ? "1e-6" : "1e-2") << ")";
    }
  }
}

}  // namespace
}  // namespace fer
