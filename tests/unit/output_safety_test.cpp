// Output safety: fer-pack and fer-dist-train killed (SIGKILL, no chance to clean up) at random
// moments, several seeds each; whatever they leave must load. fer-pack writes into a temporary
// folder swapped into place, so OUT is always a whole dataset (the old or the new one);
// fer-dist-train writes checkpoints, config and summary atomically and metrics.jsonl line by line,
// so every checkpoint present loads and every complete metrics line parses.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "data/dataset.h"
#include "data/manifest.h"
#include "test_util.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;

namespace fer {
namespace {

using testing::quote;
using testing::run_command;
using testing::TempFolder;
using testing::tool;

constexpr int kSeeds = 3;

// Starts `command` in its own process group (so the kill reaches its children too).
pid_t spawn(const std::string& command) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    ::execl("/bin/sh", "sh", "-c", ("exec " + command + " >/dev/null 2>&1").c_str(), nullptr);
    ::_exit(127);
  }
  ::setpgid(pid, pid);
  return pid;
}

// Runs `command`, SIGKILLs it after `delay` unless it ended before; true when it was killed.
bool run_and_kill(const std::string& command, std::chrono::milliseconds delay) {
  const pid_t pid = spawn(command);
  const auto deadline = std::chrono::steady_clock::now() + delay;
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (::waitpid(pid, &status, WNOHANG) == pid) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ::kill(-pid, SIGKILL);
  ::waitpid(pid, &status, 0);
  return true;
}

double seconds_of(const std::string& command) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = run_command(command);
  EXPECT_EQ(r.exit_code, 0) << command << "\n" << r.output;
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

TEST(OutputSafety, FerPackKilledAtRandomMomentsLeavesAWholeDataset) {
  TempFolder tmp("kill_pack");
  auto r = run_command(tool("fer-synth") + " " + quote(tmp / "src") +
                       " --per-class 40 --size 32 --seed 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto pack = [&](int seed) {
    return tool("fer-pack") + " imagefolder " + quote(tmp / "src") + " " + quote(tmp / "out") +
           " -q --overwrite --size 32 --shards 3 --threads 1 --seed " + std::to_string(seed);
  };
  const double full = seconds_of(pack(0));  // the old dataset every kill may fall back to
  int killed = 0;
  for (int seed = 1; seed <= kSeeds; ++seed) {
    std::mt19937 rng(seed);
    const auto delay = std::chrono::milliseconds(
        std::uniform_int_distribution<int>(0, static_cast<int>(full * 1100))(rng));
    killed += run_and_kill(pack(seed), delay);
    ASSERT_TRUE(fs::exists(tmp / "out" / kManifestName)) << "seed " << seed;
    const auto report = verify_dataset(tmp / "out");
    EXPECT_TRUE(report.ok()) << "seed " << seed << ": "
                             << (report.problems.empty() ? "" : report.problems[0]);
    EXPECT_NO_THROW(load_manifest(tmp / "out")) << "seed " << seed;
  }
  std::printf("fer-pack: %d of %d runs killed (full pack %.2f s)\n", killed, kSeeds, full);
  EXPECT_GE(killed, 1);
}

TEST(OutputSafety, FerDistTrainKilledAtRandomMomentsLeavesLoadableOutputs) {
  TempFolder tmp("kill_train");
  auto r = testing::make_packed_dataset(tmp.path(), "--per-class 20 --size 16 --seed 3",
                                        "--size 16");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ofstream(tmp / "c.yaml") << "model: {width: 0.0625, dropout: 0.1}\n"
                                   "train: {epochs: 6, batch_size: 8, log_every: 1, threads: 1}\n"
                                   "data: {workers: 1}\n"
                                   "checkpoint: {keep_last: 2}\n";
  const auto train = [&](const fs::path& out) {
    return tool("fer-dist-train") + " --config " + quote(tmp / "c.yaml") + " --data " +
           quote(tmp / "data") + " --out " + quote(out) + " --no-report --resume auto";
  };
  const double full = seconds_of(train(tmp / "full"));
  int killed = 0;
  for (int seed = 1; seed <= kSeeds; ++seed) {
    std::mt19937 rng(100 + seed);
    const fs::path out = tmp / ("run" + std::to_string(seed));
    // Two kills per run: one in a fresh run, one in the resumed run.
    for (int attempt = 0; attempt < 2; ++attempt) {
      const auto delay = std::chrono::milliseconds(
          std::uniform_int_distribution<int>(0, static_cast<int>(full * 1000))(rng));
      killed += run_and_kill(train(out), delay);
    }
    if (fs::exists(out / "checkpoints")) {
      for (const auto& e : fs::directory_iterator(out / "checkpoints")) {
        if (e.path().extension() != ".pt") continue;
        CheckpointMeta meta;
        EXPECT_NO_THROW(load_checkpoint_model(e.path(), &meta)) << e.path();
      }
    }
    // Every complete line of metrics.jsonl parses; only the last may be torn.
    if (fs::exists(out / "metrics.jsonl")) {
      std::ifstream in(out / "metrics.jsonl");
      std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      std::size_t at = 0, end;
      while ((end = text.find('\n', at)) != std::string::npos) {
        EXPECT_NO_THROW({ const auto j = nlohmann::json::parse(text.substr(at, end - at)); (void)j; })
            << "seed " << seed << ": " << text.substr(at, end - at);
        at = end + 1;
      }
    }
    for (const char* name : {"summary.json", "config.yaml"}) {
      if (!fs::exists(out / name)) continue;
      std::ifstream in(out / name);
      std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      EXPECT_FALSE(text.empty()) << name;
      if (std::string(name) == "summary.json") {
        EXPECT_NO_THROW({ const auto j = nlohmann::json::parse(text); (void)j; }) << "seed " << seed;
      }
    }
    // And the run continues from what is left, to the end.
    r = run_command(train(out));
    EXPECT_EQ(r.exit_code, 0) << "seed " << seed << "\n" << r.output;
  }
  std::printf("fer-dist-train: %d of %d runs killed (full run %.2f s)\n", killed, 2 * kSeeds,
              full);
  EXPECT_GE(killed, 1);
}

}  // namespace
}  // namespace fer
