// Data-parallel fer-dist-train under mpiexec: N ranks with batch B reproduce one process with
// batch N*B; failures stop the whole job instead of hanging; resume works across world sizes.
// Each test launches mpiexec itself (a plain gtest binary; see CMakeLists.txt).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/fs_util.h"
#include "data/manifest.h"
#include "metrics_util.h"
#include "test_util.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace fer {
namespace {

using testing::epoch_records;
using testing::mpiexec;
using testing::quote;
using testing::run_command;
using testing::step_losses;
using testing::TempFolder;
using testing::tool;

class DataParallel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tmp_ = new TempFolder("dp");
    const auto r = testing::make_packed_dataset(tmp_->path(), "--per-class 20 --size 16 --seed 4",
                                                "--size 16");  // 112 train images
    ASSERT_EQ(r.exit_code, 0) << r.output;
    std::ofstream(*tmp_ / "dp.yaml")
        << "model: {width: 0.0625, dropout: 0.2}\n"  // the reference recipe's dropout
           "train: {epochs: 2, log_every: 1, threads: 1}\n"
           "data: {workers: 1}\n"
           "dist: {comm_timeout_s: 20}\n";
  }
  static void TearDownTestSuite() { delete tmp_; }

  // Runs fer-dist-train on np ranks with per-rank batch `batch`.
  testing::CommandResult train(int np, int batch, const std::string& out,
                               const std::string& extra = "", const std::string& env = "") {
    return run_command(env + mpiexec(np) + tool("fer-dist-train") + " --config " +
                       quote(*tmp_ / "dp.yaml") + " --data " + quote(*tmp_ / "data") + " --out " +
                       quote(*tmp_ / out) + " --set train.batch_size=" + std::to_string(batch) +
                       " " + extra);
  }
  fs::path path(const std::string& name) { return *tmp_ / name; }
  static TempFolder* tmp_;
};
TempFolder* DataParallel::tmp_ = nullptr;

// Parameters and buffers of a checkpoint, except the conv biases that feed a BatchNorm: BN
// subtracts the batch mean, so their true gradient is exactly 0 and what backward produces is
// round-off (~1e-9) that Adam normalizes into full-size lr steps of random sign. They differ
// between any two summation orders (even two thread counts of one process) and carry no signal.
// The BatchNorm running means average conv output including that bias, so they inherit the
// same noise; they are left out too. Everything else (conv and classifier weights, BN affine
// parameters, running variances) must agree.
std::vector<torch::Tensor> weights(const fs::path& checkpoint) {
  ResNet9 model = load_checkpoint_model(checkpoint, nullptr);
  std::vector<torch::Tensor> out;
  for (const auto& p : model->named_parameters()) {
    const std::string& name = p.key();
    const bool conv_bias_before_bn = name.size() > 7 && name.substr(name.size() - 7) == ".0.bias";
    if (!conv_bias_before_bn) out.push_back(p.value().detach().clone());
  }
  for (const auto& b : model->named_buffers()) {
    if (b.key().find("running_mean") == std::string::npos) {
      out.push_back(b.value().detach().clone());
    }
  }
  return out;
}

namespace testing {
std::string tensor_shape(const torch::Tensor& t) {
  std::string out;
  for (auto d : t.sizes()) out += (out.empty() ? "" : "x") + std::to_string(d);
  return out;
}
}  // namespace testing

bool all_close(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!torch::allclose(a[i].to(torch::kFloat64), b[i].to(torch::kFloat64), 1e-4, 1e-5)) {
      const auto diff = (a[i].to(torch::kFloat64) - b[i].to(torch::kFloat64)).abs();
      std::printf("tensor %zu %s differs: max |a-b| %.3g at |a| %.3g\n", i,
                  testing::tensor_shape(a[i]).c_str(), diff.max().item<double>(),
                  a[i].to(torch::kFloat64).abs().flatten()[diff.argmax()].item<double>());
      return false;
    }
  }
  return true;
}

void expect_same_step_losses(const fs::path& reference, const fs::path& run, double rel) {
  const auto l1 = step_losses(reference), ln = step_losses(run);
  ASSERT_EQ(ln.size(), l1.size()) << run;
  for (std::size_t i = 0; i < l1.size(); ++i) {
    EXPECT_NEAR(ln[i], l1[i], rel * std::abs(l1[i])) << run << " step " << i + 1;
  }
}

// Balanced class weights average per sample (not per weight sum): still N x B = 1 x N*B.
TEST_F(DataParallel, ClassWeightedLossKeepsTheEquivalence) {
  const std::string opts = "--set train.max_steps=5 --set optim.class_weights=balanced";
  auto r1 = train(1, 16, "cw_np1", opts);
  ASSERT_EQ(r1.exit_code, 0) << r1.output;
  auto r2 = train(2, 8, "cw_np2", opts);
  ASSERT_EQ(r2.exit_code, 0) << r2.output;
  ASSERT_EQ(step_losses(path("cw_np1")).size(), 5u);
  expect_same_step_losses(path("cw_np1"), path("cw_np2"), 1e-5);
}

TEST_F(DataParallel, ThreeRanksOfEightReproduceOneProcessOfTwentyFour) {
  const std::string five = "--set train.max_steps=5";
  auto r1 = train(1, 24, "np1_b24", five);
  ASSERT_EQ(r1.exit_code, 0) << r1.output;
  auto r3 = train(3, 8, "np3_b8", five);
  ASSERT_EQ(r3.exit_code, 0) << r3.output;
  ASSERT_EQ(step_losses(path("np1_b24")).size(), 5u);
  expect_same_step_losses(path("np1_b24"), path("np3_b8"), 1e-5);
  const fs::path ckpt = fs::path("checkpoints") / checkpoint_file_name(5);
  EXPECT_TRUE(all_close(weights(path("np1_b24") / ckpt), weights(path("np3_b8") / ckpt)));
}

TEST_F(DataParallel, TwoAndFourRanksReproduceOneProcessWithTheSameGlobalBatch) {
  const std::string five = "--set train.max_steps=5";
  ASSERT_EQ(train(1, 16, "np1", five).exit_code, 0);
  auto r2 = train(2, 8, "np2", five);
  ASSERT_EQ(r2.exit_code, 0) << r2.output;
  auto r4 = train(4, 4, "np4", five);
  ASSERT_EQ(r4.exit_code, 0) << r4.output;
  auto off = train(2, 8, "np2_nosync", five + " --set model.sync_bn=off");
  ASSERT_EQ(off.exit_code, 0) << off.output;
  const auto l1 = step_losses(path("np1"));
  ASSERT_EQ(l1.size(), 5u);
  for (const char* run : {"np2", "np4"}) {
    const auto ln = step_losses(path(run));
    ASSERT_EQ(ln.size(), l1.size()) << run;
    for (std::size_t i = 0; i < l1.size(); ++i) {
      EXPECT_NEAR(ln[i], l1[i], 1e-5 * std::abs(l1[i])) << run << " step " << i + 1;
    }
  }
  const fs::path ckpt = fs::path("checkpoints") / checkpoint_file_name(5);
  const auto w1 = weights(path("np1") / ckpt);
  EXPECT_TRUE(all_close(w1, weights(path("np2") / ckpt)));
  EXPECT_TRUE(all_close(w1, weights(path("np4") / ckpt)));
  // Without SyncBN each rank normalizes by its own half batch: the result must differ, which
  // proves the statistics above really were synchronized.
  EXPECT_FALSE(all_close(w1, weights(path("np2_nosync") / ckpt)));
}

// Gradient accumulation: one rank with K micro-batches of B reproduces K ranks of B (SyncBN off:
// each micro-batch, like each rank, is normalized over its own B samples), for 10 steps.
TEST_F(DataParallel, OneRankAccumulatingKMicroBatchesReproducesKRanks) {
  const std::string ten = "--set train.max_steps=10 --set model.sync_bn=off";
  for (int k : {2, 4}) {
    const int b = 16 / k;
    const std::string ranks = "ranks_k" + std::to_string(k), acc = "acc_k" + std::to_string(k);
    auto r = train(k, b, ranks, ten);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    r = train(1, b, acc, ten + " --set train.accumulate_steps=" + std::to_string(k));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    ASSERT_EQ(step_losses(path(acc)).size(), 10u);
    expect_same_step_losses(path(ranks), path(acc), 1e-5);
  }
}

// With SyncBN off each rank's BatchNorm tracks its own batches; the running statistics are
// averaged over ranks before every evaluation and checkpoint, so the validation metrics a run
// reports are those of the checkpoint it saves.
TEST_F(DataParallel, WithoutSyncBnTheReportedValidationIsThatOfTheSavedCheckpoint) {
  auto r = train(2, 8, "nosync_eval", "--set model.sync_bn=off --set train.max_steps=7");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const fs::path best = path("nosync_eval") / "checkpoints" / "best.pt";
  auto eval = run_command(tool("fer-dist-train") + " --eval-only " + quote(best) + " --data " +
                          quote(path("data")));
  ASSERT_EQ(eval.exit_code, 0) << eval.output;
  const json evaluated = json::parse(eval.output.substr(eval.output.find('{')));
  json reported;
  std::ifstream in(path("nosync_eval") / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const json j = json::parse(line);
    if (j["type"] == "epoch") reported = j["val"];
  }
  ASSERT_FALSE(reported.is_null());
  EXPECT_EQ(evaluated["val"]["confusion"], reported["confusion"]);
  EXPECT_NEAR(evaluated["val"]["loss"].get<double>(), reported["loss"].get<double>(),
              1e-6 * std::abs(reported["loss"].get<double>()));
}

TEST_F(DataParallel, OverlapOffGivesBitIdenticalResults) {
  const std::string three = "--set train.max_steps=3";
  ASSERT_EQ(train(2, 8, "ov_on", three).exit_code, 0);
  ASSERT_EQ(train(2, 8, "ov_off", three + " --set dist.overlap=false").exit_code, 0);
  const fs::path ckpt = fs::path("checkpoints") / checkpoint_file_name(3);
  const auto a = weights(path("ov_on") / ckpt), b = weights(path("ov_off") / ckpt);
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << i;
}

// train.host_sync=log on 2 ranks: the loss and accuracy totals cross ranks through the data
// plane at log steps (log_every 4) instead of the per-step control all-reduce; the training is the
// same bits and the epoch records the same numbers (train loss to float64 rounding).
TEST_F(DataParallel, HostSyncLogGivesTheSameBitsAndEpochRecords) {
  const std::string rest = "--set train.epochs=1 --set train.log_every=4";
  ASSERT_EQ(train(2, 8, "sync_step", rest + " --set train.host_sync=step").exit_code, 0);
  auto r = train(2, 8, "sync_log", rest + " --set train.host_sync=log");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const fs::path ckpt = fs::path("checkpoints") / checkpoint_file_name(7);
  const auto a = weights(path("sync_step") / ckpt), b = weights(path("sync_log") / ckpt);
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << i;
  const auto xs = epoch_records(path("sync_step")), ys = epoch_records(path("sync_log"));
  ASSERT_EQ(xs.size(), 1u);
  ASSERT_EQ(ys.size(), 1u);
  const json& x = xs[0];
  const json& y = ys[0];
  EXPECT_NEAR(x["train_loss"].get<double>(), y["train_loss"].get<double>(), 1e-12);
  EXPECT_EQ(x["train_accuracy"], y["train_accuracy"]);
  EXPECT_EQ(x["val"], y["val"]);
}

TEST_F(DataParallel, EvaluationCountsEverySampleOnceForThreeRanks) {
  auto r = train(3, 8, "np3", "--set train.max_steps=2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json summary = json::parse(read_file(path("np3") / "summary.json"));
  const Manifest m = load_manifest(path("data"));
  EXPECT_EQ(summary["test"]["count"], m.split("test").count);
  EXPECT_EQ(summary["world_size"], 3);
}

TEST_F(DataParallel, ARankThatExitsOrHangsStopsTheJobAndResumeFinishesTheRun) {
  for (const char* kind : {"exit", "hang"}) {
    const std::string out = std::string("fault_") + kind;
    const auto start = std::chrono::steady_clock::now();
    auto r = train(2, 8, out, "",
                   std::string("FER_FAULT_INJECT=kind:") + kind + ",rank:1,step:9 ");
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_NE(r.exit_code, 0) << kind << "\n" << r.output;
    EXPECT_LT(seconds, 20 + 30) << kind;  // comm_timeout_s + 30 s
    if (std::string(kind) == "hang") {
      EXPECT_NE(r.output.find("timed out"), std::string::npos) << r.output;
    }
    ASSERT_TRUE(fs::exists(path(out) / "checkpoints" / checkpoint_file_name(7))) << r.output;
    auto resumed = train(2, 8, out, "--resume auto");
    ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
    EXPECT_TRUE(fs::exists(path(out) / "checkpoints" / checkpoint_file_name(14)));
  }
}

TEST_F(DataParallel, AMismatchedConfigOnOneRankIsANamedErrorNotAHang) {
  const std::string common = tool("fer-dist-train") + " --config " + quote(path("dp.yaml")) +
                             " --data " + quote(path("data")) + " --out " +
                             quote(path("mismatch")) + " --set train.batch_size=8";
  auto r = run_command(mpiexec() + "-np 1 " + common + " : -np 1 " + common +
                       " --set optim.weight_decay=0.5");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("rank 1's config differs from rank 0's"), std::string::npos)
      << r.output;
}

TEST_F(DataParallel, ResumeWorksWithAnotherWorldSize) {
  // 2 ranks x 8 for one epoch, then 1 rank x 16 for the second; and the other way round.
  ASSERT_EQ(train(2, 8, "w21", "--set train.max_steps=7").exit_code, 0);
  auto r = train(1, 16, "w21", "--resume auto");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("written by 2 rank(s)"), std::string::npos) << r.output;
  ASSERT_EQ(train(1, 16, "w12", "--set train.max_steps=7").exit_code, 0);
  r = train(2, 8, "w12", "--resume auto");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(all_close(weights(path("w21") / "checkpoints" / checkpoint_file_name(14)),
                        weights(path("w12") / "checkpoints" / checkpoint_file_name(14))));
}

}  // namespace
}  // namespace fer
