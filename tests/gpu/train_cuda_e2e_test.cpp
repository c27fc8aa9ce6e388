// fer-dist-train --device cuda end to end (DESIGN.md "Distributed contracts"): with two GPUs, two
// ranks under mpiexec (NCCL data plane, MPI control plane); with one, one process whose
// collectives are forced on (dist.force_collectives) so that NCCL, SyncBN and GradSync still run.
// Two epochs, then --resume auto for a third: the resumed ranks must land on their own devices.
// Skipped, with a message, without a CUDA-enabled LibTorch and a GPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "common/fs_util.h"
#include "test_util.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace fer {
namespace {

using testing::quote;
using testing::run_command;
using testing::TempFolder;
using testing::tool;

TEST(TrainCuda, TwoEpochsThenResumeForAThirdOnTheGpu) {
  if (!torch::cuda::is_available() || torch::cuda::device_count() < 1) {
    GTEST_SKIP() << "no GPU (or a CPU-only LibTorch): the --device cuda run needs one";
  }
  const int gpus = static_cast<int>(torch::cuda::device_count());
  TempFolder tmp("train_cuda");
  // fer-tiny-dataset, not fer-synth + fer-pack: this test runs in trainer-only builds too.
  const auto made = run_command(tool("fer-tiny-dataset") + " " + quote(tmp / "data") +
                                " --per-class 20 --size 16 --seed 5");  // 112 train images
  ASSERT_EQ(made.exit_code, 0) << made.output;
  std::ofstream(tmp / "cuda.yaml") << "model: {width: 0.125, dropout: 0.2, sync_bn: on}\n"
                                      "train: {epochs: 3, batch_size: 8, log_every: 1}\n"
                                      "dist: {comm_timeout_s: 60}\n";
  const bool two_ranks = gpus >= 2;
  const std::string launch = two_ranks ? testing::mpiexec(2) : std::string();
  const std::string forced = two_ranks ? "" : " --set dist.force_collectives=true";
  const std::string batch = two_ranks ? " --set train.batch_size=8" : " --set train.batch_size=16";
  const int steps_per_epoch = 112 / 16;
  auto train = [&](const std::string& extra) {
    return run_command(launch + tool("fer-dist-train") + " --device cuda --config " +
                       quote(tmp / "cuda.yaml") + " --data " + quote(tmp / "data") + " --out " +
                       quote(tmp / "run") + forced + batch + " --no-report " + extra);
  };
  auto first = train("--set train.max_steps=" + std::to_string(2 * steps_per_epoch));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  auto rest = train("--resume auto");
  ASSERT_EQ(rest.exit_code, 0) << rest.output;
  EXPECT_NE(rest.output.find("resuming from"), std::string::npos) << rest.output;

  const json summary = json::parse(read_file(tmp / "run" / "summary.json"));
  EXPECT_EQ(summary["steps"], 3 * steps_per_epoch);
  EXPECT_EQ(summary["world_size"], two_ranks ? 2 : 1);
  EXPECT_EQ(summary["device"].get<std::string>().rfind("cuda:", 0), 0u) << summary.dump();
  EXPECT_TRUE(std::isfinite(summary["test"]["loss"].get<double>()));
  // The checkpoint a GPU run wrote opens on the CPU.
  const auto newest = newest_valid_checkpoint(tmp / "run" / "checkpoints");
  ASSERT_TRUE(newest.has_value());
  ResNet9 model = load_checkpoint_model(*newest, nullptr);
  for (const auto& p : model->parameters()) EXPECT_TRUE(p.device().is_cpu());
}

}  // namespace
}  // namespace fer
