// fer-dist-train end to end on tiny fer-synth datasets: resume equals an uninterrupted run, the
// demo recipe learns, divergence stops cleanly, bad input gets its documented exit code.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <torch/torch.h>

#include <csignal>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "common/fs_util.h"
#include "data/dataset.h"
#include "data/manifest.h"
#include "metrics_util.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/precision.h"
#include "train/train_config.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace fer {
namespace {

using testing::epoch_records;
using testing::numeric_metrics;
using testing::step_losses;
using testing::quote;
using testing::run_command;
using testing::TempFolder;
using testing::tool;

// Synthesizes and packs a dataset: fer-synth --per-class N --size S.
void make_dataset(const fs::path& root, int per_class, int size) {
  const auto r = testing::make_packed_dataset(
      root, "--per-class " + std::to_string(per_class) + " --size " + std::to_string(size) +
                " --seed 3",
      "--size " + std::to_string(size));
  ASSERT_EQ(r.exit_code, 0) << r.output;
}

// A config small enough to train in seconds: 16x16 images, 4-channel-wide ResNet9.
void write_tiny_config(const fs::path& path) {
  std::ofstream(path) << "model: {width: 0.0625, dropout: 0.1}\n"
                         "train: {epochs: 4, batch_size: 16, log_every: 2, threads: 1}\n"
                         "data: {workers: 2}\n"
                         "checkpoint: {keep_last: 2}\n";
}

std::string train(const fs::path& config, const fs::path& data, const fs::path& out,
                  const std::string& extra = "") {
  return tool("fer-dist-train") + " --config " + quote(config) + " --data " + quote(data) +
         " --out " + quote(out) + " " + extra;
}


void expect_same_weights(const fs::path& a, const fs::path& b) {
  ResNet9 ma = load_checkpoint_model(a, nullptr);
  ResNet9 mb = load_checkpoint_model(b, nullptr);
  const auto pa = ma->named_parameters(), pb = mb->named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (const auto& item : pa) {
    EXPECT_TRUE(torch::equal(item.value(), pb[item.key()])) << item.key();
  }
  const auto ba = ma->named_buffers(), bb = mb->named_buffers();
  for (const auto& item : ba) {
    EXPECT_TRUE(torch::equal(item.value(), bb[item.key()])) << item.key();
  }
}

constexpr int kE2EPerClass = 20, kE2ESize = 16;  // 112 train images -> 7 steps/epoch

// The dataset and config are made once for the suite (packing is the slow part); every test
// writes its runs into a folder of its own.
class TrainerE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    suite_ = new TempFolder("train_e2e");
    data_ = shared_dataset();
    if (data_.empty()) {
      make_dataset(suite_->path(), kE2EPerClass, kE2ESize);
      data_ = *suite_ / "data";
    }
    write_tiny_config(*suite_ / "tiny.yaml");
  }
  static void TearDownTestSuite() { delete suite_; }
  void SetUp() override {
    ASSERT_TRUE(fs::exists(data_ / kManifestName)) << "the suite's dataset is missing: " << data_;
    runs_ = *suite_ / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::create_directories(runs_);
  }
  // The suite's "data" and "tiny.yaml"; anything else is this test's own.
  fs::path path(const std::string& name) const {
    if (name == "data") return data_;
    return name == "tiny.yaml" ? *suite_ / name : runs_ / name;
  }
  // The dataset packed once per ctest run by the e2e_dataset fixture (FER_E2E_DATA), or empty.
  static fs::path shared_dataset() {
    const char* dir = std::getenv("FER_E2E_DATA");
    if (!dir || !fs::exists(fs::path(dir) / "data" / kManifestName)) return {};
    return fs::path(dir) / "data";
  }
  static TempFolder* suite_;
  static fs::path data_;
  fs::path runs_;
};
TempFolder* TrainerE2E::suite_ = nullptr;
fs::path TrainerE2E::data_;

// The e2e_dataset CTest fixture (tests/CMakeLists.txt): packs TrainerE2E's dataset into
// FER_E2E_DATA once, before the suite's tests, which ctest runs as separate processes.
TEST(TrainerE2EDataset, DISABLED_Pack) {
  const char* dir = std::getenv("FER_E2E_DATA");
  ASSERT_NE(dir, nullptr) << "set FER_E2E_DATA";
  fs::remove_all(dir);
  fs::create_directories(dir);
  make_dataset(dir, kE2EPerClass, kE2ESize);
  EXPECT_TRUE(fs::exists(fs::path(dir) / "data" / kManifestName));
}

TEST_F(TrainerE2E, TwoEpochsPlusResumeEqualFourEpochsInWeightsAndMetrics) {
  auto full = run_command(train(path("tiny.yaml"), path("data"), path("full")));
  ASSERT_EQ(full.exit_code, 0) << full.output;
  auto half = run_command(train(path("tiny.yaml"), path("data"), path("split"),
                                "--set train.max_steps=14"));
  ASSERT_EQ(half.exit_code, 0) << half.output;
  ASSERT_TRUE(fs::exists(path("split") / "checkpoints" / checkpoint_file_name(14)));
  auto rest = run_command(train(path("tiny.yaml"), path("data"), path("split"), "--resume auto"));
  ASSERT_EQ(rest.exit_code, 0) << rest.output;
  EXPECT_NE(rest.output.find("resuming from"), std::string::npos) << rest.output;
  const fs::path last = fs::path("checkpoints") / checkpoint_file_name(28);
  expect_same_weights(path("full") / last, path("split") / last);
  EXPECT_EQ(numeric_metrics(path("full")), numeric_metrics(path("split")));
  const auto metrics = numeric_metrics(path("full"));
  ASSERT_FALSE(metrics.empty());
  EXPECT_EQ(metrics.front()["type"], "step");
  for (const char* key : {"step", "epoch", "loss", "lr", "beta1"}) {
    EXPECT_TRUE(metrics.front().contains(key)) << key;
  }
  int epochs = 0;
  for (const auto& m : metrics) {
    if (m["type"] != "epoch") continue;
    ++epochs;
    EXPECT_TRUE(m["val"].contains("confusion"));
    EXPECT_EQ(m["val"]["per_class"].size(), 7u);
  }
  EXPECT_EQ(epochs, 4);
  // keep_last 2 plus best.pt, and a self-contained summary.
  EXPECT_EQ(list_checkpoints(path("full") / "checkpoints").size(), 2u);
  EXPECT_TRUE(fs::exists(path("full") / "checkpoints" / "best.pt"));
  const json summary = json::parse(read_file(path("full") / "summary.json"));
  EXPECT_EQ(summary["steps"], 28);
  EXPECT_TRUE(summary["test"].contains("accuracy"));

  // A corrupt newest checkpoint is skipped with a warning; the run continues from the one before
  // and ends where it did.
  fs::resize_file(path("full") / last, 1000);
  auto again = run_command(train(path("tiny.yaml"), path("data"), path("full"), "--resume auto"));
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("skipping unreadable checkpoint"), std::string::npos)
      << again.output;
  expect_same_weights(path("full") / last, path("split") / last);
}

// The stream loader (shards read in chunk-aligned blocks through a shuffle buffer) trains the
// same recipe end to end, and is deterministic across a resume as the memory loader is.
TEST_F(TrainerE2E, StreamLoaderTrainsAndResumesToTheSameWeightsAndMetrics) {
  const std::string stream = "--set data.loader=stream ";
  auto full = run_command(train(path("tiny.yaml"), path("data"), path("full"), stream));
  ASSERT_EQ(full.exit_code, 0) << full.output;
  auto half = run_command(train(path("tiny.yaml"), path("data"), path("split"),
                                stream + "--set train.max_steps=14"));
  ASSERT_EQ(half.exit_code, 0) << half.output;
  auto rest = run_command(
      train(path("tiny.yaml"), path("data"), path("split"), stream + "--resume auto"));
  ASSERT_EQ(rest.exit_code, 0) << rest.output;
  const fs::path last = fs::path("checkpoints") / checkpoint_file_name(28);
  expect_same_weights(path("full") / last, path("split") / last);
  EXPECT_EQ(numeric_metrics(path("full")), numeric_metrics(path("split")));
  const json summary = json::parse(read_file(path("full") / "summary.json"));
  EXPECT_EQ(summary["steps"], 28);
  EXPECT_TRUE(summary["test"].contains("accuracy"));
  EXPECT_NE(read_file(path("full") / "config.yaml").find("stream"), std::string::npos);
}

// data.loader=device (the split held as a uint8 tensor on the model's device, augmented with
// batched tensor ops: the GPU path) runs on the CPU too and trains exactly as the threaded memory
// loader: the same samples and augmentation draws give bit-identical weights and metrics.
TEST_F(TrainerE2E, TheDeviceLoaderTrainsBitIdenticallyToTheMemoryLoader) {
  const std::string two = "--set train.epochs=2 ";
  auto memory = run_command(
      train(path("tiny.yaml"), path("data"), path("memory"), two + "--set data.loader=memory"));
  ASSERT_EQ(memory.exit_code, 0) << memory.output;
  auto device = run_command(
      train(path("tiny.yaml"), path("data"), path("device"), two + "--set data.loader=device"));
  ASSERT_EQ(device.exit_code, 0) << device.output;
  const fs::path last = fs::path("checkpoints") / checkpoint_file_name(14);
  expect_same_weights(path("memory") / last, path("device") / last);
  EXPECT_EQ(numeric_metrics(path("memory")), numeric_metrics(path("device")));
}

// optim.fused (flat-buffer Adam, the default) and LibTorch's Adam train the same bits, and a
// run resumes across the two (checkpoints hold the same optimizer state).
TEST_F(TrainerE2E, FusedAdamTrainsBitIdenticallyToLibTorchsAndResumesAcrossThem) {
  auto fused = run_command(train(path("tiny.yaml"), path("data"), path("fused"),
                                 "--set train.epochs=2"));
  ASSERT_EQ(fused.exit_code, 0) << fused.output;
  auto plain = run_command(train(path("tiny.yaml"), path("data"), path("plain"),
                                 "--set train.epochs=2 --set optim.fused=false"));
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  auto half = run_command(train(path("tiny.yaml"), path("data"), path("mixed"),
                                "--set train.epochs=2 --set train.max_steps=7 "
                                "--set optim.fused=false"));
  ASSERT_EQ(half.exit_code, 0) << half.output;
  auto rest = run_command(
      train(path("tiny.yaml"), path("data"), path("mixed"), "--set train.epochs=2 --resume auto"));
  ASSERT_EQ(rest.exit_code, 0) << rest.output;
  const fs::path last = fs::path("checkpoints") / checkpoint_file_name(14);
  expect_same_weights(path("fused") / last, path("plain") / last);
  expect_same_weights(path("fused") / last, path("mixed") / last);
  EXPECT_EQ(numeric_metrics(path("fused")), numeric_metrics(path("plain")));
}

// model.channels_last (NHWC weights and activations; SyncBN forced on, so its all-reduce path
// sees NHWC too) trains the default layout's recipe: only the convolutions' summation order
// differs, so the logged losses agree to 1e-3 relative over 2 epochs. A channels_last run stopped
// at step 7 resumes to the uninterrupted channels_last run's weights and epoch metrics, bit for
// bit.
TEST_F(TrainerE2E, ChannelsLastTrainsLikeTheDefaultLayoutAndResumesExactly) {
  const std::string two = "--set train.epochs=2 --set model.sync_bn=on "
                          "--set dist.force_collectives=true ";
  auto nchw = run_command(train(path("tiny.yaml"), path("data"), path("nchw"), two));
  ASSERT_EQ(nchw.exit_code, 0) << nchw.output;
  const std::string nhwc = two + "--set model.channels_last=true ";
  auto full = run_command(train(path("tiny.yaml"), path("data"), path("nhwc"), nhwc));
  ASSERT_EQ(full.exit_code, 0) << full.output;
  EXPECT_NE(full.output.find("channels_last"), std::string::npos) << full.output;
  const auto a = step_losses(path("nchw")), b = step_losses(path("nhwc"));
  ASSERT_EQ(a.size(), 7u);
  ASSERT_EQ(b.size(), a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_NEAR(b[i], a[i], 1e-3 * std::abs(a[i])) << "logged step record " << i;
  }
  ASSERT_EQ(run_command(train(path("tiny.yaml"), path("data"), path("resumed"),
                              nhwc + "--set train.max_steps=7"))
                .exit_code,
            0);
  auto rest = run_command(train(path("tiny.yaml"), path("data"), path("resumed"),
                                nhwc + "--resume auto"));
  ASSERT_EQ(rest.exit_code, 0) << rest.output;
  const fs::path last = fs::path("checkpoints") / checkpoint_file_name(14);
  expect_same_weights(path("nhwc") / last, path("resumed") / last);
  // The epoch records (the stopped run also logged its last step, 7).
  EXPECT_EQ(epoch_records(path("nhwc")), epoch_records(path("resumed")));
}

// train.precision=bf16 (autocast of forward and loss): on a CPU with native bfloat16 it trains
// the fp32 recipe's losses to bf16's precision (5% over 2 epochs) with fp32 weights in the
// checkpoint; on a CPU without, it is refused as a config error (exit 2) that says why.
TEST_F(TrainerE2E, Bf16TrainsNearTheFp32LossesOrIsRefusedWithoutNativeSupport) {
  std::ifstream in("/proc/cpuinfo");
  const std::string cpuinfo((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string two = "--set train.epochs=2 ";
  auto bf16 = run_command(
      train(path("tiny.yaml"), path("data"), path("bf16"), two + "--set train.precision=bf16"));
  if (!cpuinfo_has_native_bf16(cpuinfo)) {
    EXPECT_EQ(bf16.exit_code, 2) << bf16.output;
    EXPECT_NE(bf16.output.find("bfloat16"), std::string::npos) << bf16.output;
    return;
  }
  ASSERT_EQ(bf16.exit_code, 0) << bf16.output;
  auto fp32 = run_command(train(path("tiny.yaml"), path("data"), path("fp32"), two));
  ASSERT_EQ(fp32.exit_code, 0) << fp32.output;
  const auto a = step_losses(path("fp32")), b = step_losses(path("bf16"));
  ASSERT_EQ(b.size(), a.size());
  bool any_different = false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_NEAR(b[i], a[i], 0.05 * std::abs(a[i])) << "logged step record " << i;
    any_different = any_different || b[i] != a[i];
  }
  EXPECT_TRUE(any_different) << "bf16 computed the fp32 losses bit for bit: autocast is not on";
  ResNet9 model = load_checkpoint_model(
      path("bf16") / "checkpoints" / checkpoint_file_name(14), nullptr);
  for (const auto& p : model->parameters()) EXPECT_EQ(p.scalar_type(), torch::kFloat);
}

// train.host_sync=log (the CUDA default: the step's loss and accuracy add up on the device and
// the host reads them at log steps and epoch ends) trains the same bits as step (the CPU
// default), and its step records hold the mean loss of the steps since the previous record: here
// the mean of step-mode's per-step losses (log_every 1) over each pair of steps.
TEST_F(TrainerE2E, HostSyncLogTrainsTheSameBitsAndLogsWindowMeans) {
  const std::string two = "--set train.epochs=2 ";
  auto step = run_command(train(path("tiny.yaml"), path("data"), path("step"),
                                two + "--set train.host_sync=step --set train.log_every=1"));
  ASSERT_EQ(step.exit_code, 0) << step.output;
  auto log = run_command(
      train(path("tiny.yaml"), path("data"), path("log"), two + "--set train.host_sync=log"));
  ASSERT_EQ(log.exit_code, 0) << log.output;
  const fs::path last = fs::path("checkpoints") / checkpoint_file_name(14);
  expect_same_weights(path("step") / last, path("log") / last);
  std::map<std::int64_t, double> per_step;
  std::vector<json> step_epochs, log_epochs;
  for (const auto& r : numeric_metrics(path("step"))) {
    if (r["type"] == "step") per_step[r["step"].get<std::int64_t>()] = r["loss"].get<double>();
    if (r["type"] == "epoch") step_epochs.push_back(r);
  }
  ASSERT_EQ(per_step.size(), 14u);
  int windows = 0;
  for (const auto& r : numeric_metrics(path("log"))) {
    if (r["type"] == "epoch") log_epochs.push_back(r);
    if (r["type"] != "step") continue;
    // Records at steps 2, 4, 6 and 8, 10, 12, 14; the epoch end at 7 read step 7 alone.
    const std::int64_t at = r["step"].get<std::int64_t>();
    const std::int64_t from = at == 8 ? 8 : at - 1;
    double sum = 0;
    for (std::int64_t k = from; k <= at; ++k) sum += per_step.at(k);
    EXPECT_NEAR(r["loss"].get<double>(), sum / static_cast<double>(at - from + 1), 1e-12)
        << "step " << at;
    ++windows;
  }
  EXPECT_EQ(windows, 7);
  ASSERT_EQ(log_epochs.size(), step_epochs.size());
  for (std::size_t e = 0; e < log_epochs.size(); ++e) {
    EXPECT_NEAR(log_epochs[e]["train_loss"].get<double>(),
                step_epochs[e]["train_loss"].get<double>(), 1e-12);
    EXPECT_EQ(log_epochs[e]["train_accuracy"], step_epochs[e]["train_accuracy"]);
    EXPECT_EQ(log_epochs[e]["val"], step_epochs[e]["val"]);
  }
}

// With train.host_sync=log a non-finite loss is found at the next read, after its update: the
// run stops (exit 7) naming the steps read, and writes no checkpoint after them; skipping such
// steps needs host_sync=step (a config error otherwise).
TEST_F(TrainerE2E, HostSyncLogStopsAtTheReadAfterANonFiniteLoss) {
  const std::string env = "FER_FAULT_INJECT=kind:nan,step:9 ";
  auto r = run_command(env + train(path("tiny.yaml"), path("data"), path("nan"),
                                   "--set train.host_sync=log"));
  EXPECT_EQ(r.exit_code, 7) << r.output;
  EXPECT_NE(r.output.find("in steps 9-10"), std::string::npos) << r.output;
  const auto kept = newest_valid_checkpoint(path("nan") / "checkpoints");
  ASSERT_TRUE(kept.has_value());
  EXPECT_EQ(read_checkpoint_meta(*kept).step, 7);
  r = run_command(train(path("tiny.yaml"), path("data"), path("skip"),
                        "--set train.host_sync=log --set train.skip_nonfinite=true"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("train.host_sync=step"), std::string::npos) << r.output;
}

// Preemption (SIGUSR1, raised by fault injection before step 10, in the middle of epoch 1): every
// rank learns of it in step 10's control all-reduce, finishes that step, writes the checkpoint of
// step 11 and exits 75; the resumed run ends with the weights, the
// metrics (the interrupted epoch's train loss and accuracy included) and the test result of an
// uninterrupted run, to the bit.
TEST_F(TrainerE2E, PreemptedMidEpochExitsSeventyFiveAndResumesToTheSameWeightsAndMetrics) {
  auto full = run_command(train(path("tiny.yaml"), path("data"), path("full")));
  ASSERT_EQ(full.exit_code, 0) << full.output;
  auto first = run_command("FER_FAULT_INJECT=kind:preempt,step:10 " +
                           train(path("tiny.yaml"), path("data"), path("pre")));
  ASSERT_EQ(first.exit_code, 75) << first.output;
  EXPECT_NE(first.output.find("checkpoint written at step 11"), std::string::npos)
      << first.output;
  const CheckpointMeta saved =
      read_checkpoint_meta(path("pre") / "checkpoints" / checkpoint_file_name(11));
  EXPECT_EQ(saved.epoch, 1);
  EXPECT_EQ(saved.step_in_epoch, 4);
  EXPECT_EQ(saved.epoch_loss_steps, 4);
  EXPECT_EQ(saved.epoch_seen, 4 * 16);
  auto rest = run_command(train(path("tiny.yaml"), path("data"), path("pre"), "--resume auto"));
  ASSERT_EQ(rest.exit_code, 0) << rest.output;
  EXPECT_NE(rest.output.find("resuming from"), std::string::npos) << rest.output;
  const fs::path last = fs::path("checkpoints") / checkpoint_file_name(28);
  expect_same_weights(path("full") / last, path("pre") / last);
  EXPECT_EQ(numeric_metrics(path("full")), numeric_metrics(path("pre")));
  const json a = json::parse(read_file(path("full") / "summary.json"));
  const json b = json::parse(read_file(path("pre") / "summary.json"));
  EXPECT_EQ(a["steps"], b["steps"]);
  EXPECT_EQ(a["test"], b["test"]);
}

TEST_F(TrainerE2E, NonFiniteLossStopsNamingTheStepAndKeepsTheLastCheckpoint) {
  const std::string env = "FER_FAULT_INJECT=kind:nan,step:9 ";
  auto r = run_command(env + train(path("tiny.yaml"), path("data"), path("nan")));
  EXPECT_EQ(r.exit_code, 7) << r.output;
  EXPECT_NE(r.output.find("at step 9"), std::string::npos) << r.output;
  const auto kept = newest_valid_checkpoint(path("nan") / "checkpoints");
  ASSERT_TRUE(kept.has_value());
  EXPECT_EQ(read_checkpoint_meta(*kept).step, 7);

  r = run_command(env + train(path("tiny.yaml"), path("data"), path("skip"),
                              "--set train.skip_nonfinite=true"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json summary = json::parse(read_file(path("skip") / "summary.json"));
  EXPECT_EQ(summary["skipped_steps"], 1);
  EXPECT_EQ(summary["steps"], 28);
}

TEST_F(TrainerE2E, BadInputGetsItsDocumentedExitCode) {
  const fs::path cfg = path("tiny.yaml"), data = path("data");
  auto r = run_command(train(cfg, path("nowhere"), path("r1")));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  r = run_command(train(cfg, data, path("r2"), "--set optim.lrr=1"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("optim.lrr"), std::string::npos) << r.output;
  r = run_command(train(cfg, data, path("r3"), "--set train.epochs=many"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("train.epochs"), std::string::npos) << r.output;
  std::ofstream(path("typo.yaml")) << "train:\n  epochz: 3\n";
  r = run_command(train(path("typo.yaml"), data, path("r4")));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("train.epochz"), std::string::npos) << r.output;

  // An existing run: refused without --resume, and refused with a different config.
  ASSERT_EQ(run_command(train(cfg, data, path("r5"), "--set train.max_steps=2")).exit_code, 0);
  r = run_command(train(cfg, data, path("r5")));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--resume"), std::string::npos) << r.output;
  r = run_command(train(cfg, data, path("r5"), "--resume auto --set optim.weight_decay=0.5"));
  EXPECT_EQ(r.exit_code, 2) << r.output;

  // Manifest of another version; images too small for ResNet9; a corrupt shard, named.
  fs::copy(data, path("v2"), fs::copy_options::recursive);
  std::string manifest = read_file(path("v2") / kManifestName);
  manifest.replace(manifest.find("\"version\": 1"), 12, "\"version\": 2");
  write_file_atomic(path("v2") / kManifestName, manifest);
  r = run_command(train(cfg, path("v2"), path("r6")));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("version 2"), std::string::npos) << r.output;

  fs::copy(data, path("small"), fs::copy_options::recursive);
  manifest = read_file(path("small") / kManifestName);
  for (const char* key : {"\"height\": 16", "\"width\": 16"}) {
    manifest.replace(manifest.find(key), std::string(key).size(),
                     std::string(key).substr(0, std::string(key).size() - 2) + "4");
  }
  write_file_atomic(path("small") / kManifestName, manifest);
  r = run_command(train(cfg, path("small"), path("r7")));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("at least 8x8"), std::string::npos) << r.output;

  fs::copy(data, path("corrupt"), fs::copy_options::recursive);
  const fs::path shard = path("corrupt") / "train-00000-of-00001.h5";
  std::string bytes = read_file(shard);
  bytes[bytes.size() / 2] ^= 0x40;
  std::ofstream(shard, std::ios::binary | std::ios::trunc) << bytes;
  r = run_command(train(cfg, path("corrupt"), path("r8")));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("train-00000-of-00001.h5"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("checksum"), std::string::npos) << r.output;
}

// eval.tta and optim.class_weights: the run trains with the weighted loss, evaluates with ten
// crops, and says so in metrics.jsonl and summary.json; --eval-only --tta evaluates the same way.
TEST_F(TrainerE2E, TestTimeAugmentationAndClassWeightsAreUsedAndReported) {
  auto r = run_command(train(path("tiny.yaml"), path("data"), path("tta"),
                             "--set train.epochs=1 --set eval.tta=ten_crop "
                             "--set optim.class_weights=balanced"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("class weights (balanced)"), std::string::npos) << r.output;
  const json summary = json::parse(read_file(path("tta") / "summary.json"));
  EXPECT_EQ(summary["test"]["tta"], "ten_crop");
  bool saw_epoch = false;
  for (const auto& m : numeric_metrics(path("tta"))) {
    if (m["type"] != "epoch") continue;
    saw_epoch = true;
    EXPECT_EQ(m["val"]["tta"], "ten_crop");
  }
  EXPECT_TRUE(saw_epoch);
  const std::string best = quote(path("tta") / "checkpoints" / "best.pt");
  auto plain = run_command(tool("fer-dist-train") + " --eval-only " + best + " --data " +
                           quote(path("data")));
  auto crops = run_command(tool("fer-dist-train") + " --eval-only " + best + " --data " +
                           quote(path("data")) + " --tta ten_crop");
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  ASSERT_EQ(crops.exit_code, 0) << crops.output;
  EXPECT_NE(crops.output.find("TTA ten_crop"), std::string::npos) << crops.output;
  const json a = json::parse(plain.output.substr(plain.output.find('{')));
  const json b = json::parse(crops.output.substr(crops.output.find('{')));
  EXPECT_EQ(a["test"]["tta"], "none");
  // The run's own test evaluation (ten crops, one process) is what --eval-only --tta computes.
  EXPECT_EQ(b["test"]["confusion"], summary["test"]["confusion"]);
  EXPECT_NE(a["test"]["loss"], b["test"]["loss"]);  // the views really are averaged
  r = run_command(train(path("tiny.yaml"), path("data"), path("bad"), "--set eval.tta=five"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
}

TEST_F(TrainerE2E, EvalOnlyReportsValAndTestOfACheckpoint) {
  ASSERT_EQ(run_command(train(path("tiny.yaml"), path("data"), path("run"),
                              "--set train.epochs=1"))
                .exit_code,
            0);
  auto r = run_command(tool("fer-dist-train") + " --eval-only " +
                       quote(path("run") / "checkpoints" / "best.pt") + " --data " +
                       quote(path("data")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("val   accuracy"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("test  accuracy"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("(14 images, TTA none)"), std::string::npos) << r.output;
}

// Nearest-class-mean accuracy on raw pixels: class means from train, scored on test.
double nearest_mean_accuracy(const fs::path& data) {
  const Manifest m = load_manifest(data);
  const std::size_t pixels = static_cast<std::size_t>(m.image_bytes());
  auto read_all = [&](const std::string& split, std::vector<std::uint8_t>* images,
                      std::vector<std::uint8_t>* labels) {
    for (int k = 0; k < static_cast<int>(m.split(split).shards.size()); ++k) {
      ShardReader reader = open_verified_shard(data, m, split, k);
      const std::size_t at = labels->size();
      images->resize((at + reader.count()) * pixels);
      labels->resize(at + reader.count());
      reader.read_images(0, reader.count(), images->data() + at * pixels);
      reader.read_labels(0, reader.count(), labels->data() + at);
    }
  };
  std::vector<std::uint8_t> train_x, train_y, test_x, test_y;
  read_all("train", &train_x, &train_y);
  read_all("test", &test_x, &test_y);
  const std::size_t k = m.classes.size();
  std::vector<double> means(k * pixels, 0.0);
  std::vector<double> counts(k, 0.0);
  for (std::size_t i = 0; i < train_y.size(); ++i) {
    counts[train_y[i]] += 1;
    for (std::size_t p = 0; p < pixels; ++p) means[train_y[i] * pixels + p] += train_x[i * pixels + p];
  }
  for (std::size_t c = 0; c < k; ++c) {
    for (std::size_t p = 0; p < pixels; ++p) means[c * pixels + p] /= std::max(1.0, counts[c]);
  }
  int correct = 0;
  for (std::size_t i = 0; i < test_y.size(); ++i) {
    double best = 1e300;
    std::size_t best_class = 0;
    for (std::size_t c = 0; c < k; ++c) {
      double d = 0;
      for (std::size_t p = 0; p < pixels; ++p) {
        const double diff = test_x[i * pixels + p] - means[c * pixels + p];
        d += diff * diff;
      }
      if (d < best) best = d, best_class = c;
    }
    correct += best_class == test_y[i];
  }
  return static_cast<double>(correct) / test_y.size();
}

TEST(TrainerDemo, LearnsSynthFarAboveChanceAndBeatsTheNearestMeanBaseline) {
  TempFolder tmp("train_demo");
  // 32x32 keeps this test near a minute on 2 cores; the recipe is configs/demo_cpu.yaml.
  auto r = testing::make_packed_dataset(tmp.path(), "--per-class 150 --seed 5", "--size 32");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_command(tool("fer-dist-train") + " --config " + FER_SOURCE_DIR +
                  "/configs/demo_cpu.yaml --data " + quote(tmp / "data") + " --out " +
                  quote(tmp / "run") + " --set train.epochs=5 --set train.batch_size=32");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json summary = json::parse(read_file(tmp / "run" / "summary.json"));
  const double val = summary["best_val_accuracy"], test = summary["test"]["accuracy"];
  const double baseline = nearest_mean_accuracy(tmp / "data");
  std::printf("demo: val accuracy %.3f, test accuracy %.3f, nearest-mean baseline %.3f\n", val,
              test, baseline);
  EXPECT_GT(val, 0.5);   // chance is 1/7 = 0.14
  EXPECT_GT(test, 0.5);
  EXPECT_GT(test, baseline + 0.2);
}

TEST(Checkpoint, AFailedWriteLeavesThePreviousCheckpointLoadable) {
  TempFolder tmp("ckpt_full");
  ResNet9Options options;
  options.width = 0.0625;
  ResNet9 model(options);
  CheckpointMeta meta;
  meta.classes = {"a", "b", "c", "d", "e", "f", "g"};
  meta.mean = {0.5};
  meta.std = {0.2};
  meta.height = meta.width = 16;
  meta.channels = 1;
  meta.model = options;
  meta.step = 1;
  const fs::path path = tmp / "step.pt";
  save_checkpoint(path, model, nullptr, meta);
  // Fill the "disk" in a child: files may not grow past 4 KiB, as on a full file system.
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::signal(SIGXFSZ, SIG_IGN);
    rlimit limit{4096, 4096};
    ::setrlimit(RLIMIT_FSIZE, &limit);
    meta.step = 2;
    try {
      save_checkpoint(path, model, nullptr, meta);
      ::_exit(0);
    } catch (const CheckpointError&) {
      ::_exit(42);
    }
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 42);
  EXPECT_EQ(read_checkpoint_meta(path).step, 1);
  CheckpointMeta loaded;
  EXPECT_NO_THROW(load_checkpoint_model(path, &loaded));
  for (const auto& e : fs::directory_iterator(tmp.path())) {
    EXPECT_EQ(e.path().filename(), "step.pt");  // no temporary left behind
  }
}

TEST(TrainConfigFiles, ShippedRecipesLoadAndValidate) {
  const std::string root = FER_SOURCE_DIR;
  for (const char* name : {"/configs/demo_cpu.yaml", "/configs/fer2013_resnet9.yaml"}) {
    EXPECT_NO_THROW(load_train_config(root + name, {})) << name;
  }
  const TrainConfig r9 = load_train_config(root + "/configs/fer2013_resnet9.yaml", {});
  EXPECT_EQ(r9.model.width, 1.0);
  EXPECT_EQ(r9.optim.weight_decay, 1e-4);
  EXPECT_EQ(r9.optim.grad_clip_value, 0.1);
  EXPECT_EQ(r9.optim.name, "adam");
  EXPECT_THROW(load_train_config(root + "/configs/demo_cpu.yaml", {"data.loader=disk"}),
               ConfigError);
}

}  // namespace
}  // namespace fer
