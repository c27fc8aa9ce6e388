// fer-dist-train --timeline under mpiexec (2 ranks): one merged Chrome trace with every phase of
// every rank, gradient all-reduces on the communication thread, a bounded step window; and rank
// 0's progress lines when the console is not a terminal. Launches mpiexec itself, like
// train_dp_test.cpp.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "test_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace fer {
namespace {

using testing::quote;
using testing::run_command;
using testing::TempFolder;
using testing::tool;

class Timeline : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tmp_ = new TempFolder("timeline");
    const auto r = testing::make_packed_dataset(tmp_->path(), "--per-class 20 --size 16 --seed 4",
                                                "--size 16");  // 112 train images
    ASSERT_EQ(r.exit_code, 0) << r.output;
    // 2 epochs x 7 steps at 2 ranks x 8; buckets of ~1 KiB after the first: several per step.
    std::ofstream(*tmp_ / "tl.yaml")
        << "model: {width: 0.0625, dropout: 0.0}\n"
           "train: {epochs: 2, log_every: 2, threads: 1, batch_size: 8}\n"
           "data: {workers: 1}\n"
           "dist: {comm_timeout_s: 20, bucket_mb: 0.001}\n";
  }
  static void TearDownTestSuite() { delete tmp_; }

  testing::CommandResult train(const std::string& out, const std::string& extra) {
    return run_command(testing::mpiexec(2) + tool("fer-dist-train") + " --config " +
                       quote(*tmp_ / "tl.yaml") +
                       " --data " + quote(*tmp_ / "data") + " --out " + quote(*tmp_ / out) +
                       " --no-report " + extra);
  }
  static TempFolder* tmp_;
};
TempFolder* Timeline::tmp_ = nullptr;

json complete_events(const fs::path& file) {
  std::ifstream in(file);
  EXPECT_TRUE(in) << file;
  const json trace = json::parse(in);  // throws (test fails) if it does not parse
  json out = json::array();
  for (const auto& e : trace.at("traceEvents")) {
    if (e.at("ph") == "X") out.push_back(e);
  }
  return out;
}

TEST_F(Timeline, TwoRankRunHasWellFormedSpansOfEveryPhaseOnEveryRank) {
  const auto r = train("full", "--timeline");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const fs::path file = *tmp_ / "full" / "timeline.json";
  ASSERT_TRUE(fs::exists(file)) << r.output;
  EXPECT_FALSE(fs::exists(*tmp_ / "full" / "timeline")) << "per-rank parts left behind";
  const json events = complete_events(file);

  std::map<int, std::set<std::string>> names;  // pid -> span names (bucket index stripped)
  for (const auto& e : events) {
    ASSERT_TRUE(e.contains("ts") && e.contains("dur") && e.contains("pid") && e.contains("tid"))
        << e.dump();
    EXPECT_GE(e.at("ts").get<double>(), 0.0) << e.dump();
    EXPECT_GE(e.at("dur").get<double>(), 0.0) << e.dump();
    std::string name = e.at("name");
    if (name.rfind("grad allreduce bucket", 0) == 0) {
      name = "grad allreduce bucket";
      EXPECT_EQ(e.at("tid"), 1) << "bucket all-reduces run on the communication thread";
    }
    if (name == "backward" || name == "forward" || name == "optimizer") {
      EXPECT_EQ(e.at("tid"), 0) << name << " runs on the compute thread";
    }
    names[e.at("pid").get<int>()].insert(name);
  }
  ASSERT_EQ(names.size(), 2u) << "spans of ranks 0 and 1";
  for (const auto& [rank, seen] : names) {
    for (const char* expected :
         {"data wait", "forward", "backward", "grad sync wait", "optimizer", "eval",
          "grad allreduce bucket", "syncbn allreduce", "step all-reduce"}) {
      EXPECT_TRUE(seen.count(expected)) << "rank " << rank << " has no '" << expected << "'";
    }
  }
  EXPECT_TRUE(names[0].count("checkpoint")) << "rank 0 writes the checkpoints";

  // Overlap is visible: in some step a bucket's all-reduce starts before that rank's backward
  // ends (buckets are issued from autograd hooks).
  std::map<std::pair<int, int>, std::pair<double, double>> backward;  // (pid, step) -> [t0, t1]
  for (const auto& e : events) {
    if (e.at("name") == "backward") {
      const double t0 = e.at("ts");
      backward[{e.at("pid"), e.at("args").at("step")}] = {t0, t0 + e.at("dur").get<double>()};
    }
  }
  EXPECT_EQ(backward.size(), 2u * 14u);
  int overlapping = 0;
  for (const auto& e : events) {
    const std::string name = e.at("name");
    if (name.rfind("grad allreduce bucket", 0) != 0) continue;
    const auto it = backward.find({e.at("pid"), e.at("args").at("step")});
    ASSERT_NE(it, backward.end()) << e.dump();
    if (e.at("ts").get<double>() < it->second.second) ++overlapping;
  }
  EXPECT_GT(overlapping, 0) << "no bucket all-reduce overlapped backward";
}

TEST_F(Timeline, RecordsOnlyTheRequestedStepsWhenAWindowIsGiven) {
  const fs::path file = *tmp_ / "window.json";
  const auto r =
      train("window", "--timeline " + quote(file) + " --timeline-from 3 --timeline-steps 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json events = complete_events(file);
  std::set<std::int64_t> steps;
  for (const auto& e : events) {
    if (e.at("args").contains("step")) steps.insert(e.at("args").at("step").get<std::int64_t>());
  }
  EXPECT_EQ(steps, (std::set<std::int64_t>{3, 4})) << "steps [3, 5) only";
}

TEST_F(Timeline, ProgressOnANonTerminalIsPlainLinesWithEta) {
  const auto r = train("progress", "");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(fs::exists(*tmp_ / "progress" / "timeline.json")) << "no timeline unless asked";
  EXPECT_EQ(r.output.find('\r'), std::string::npos) << "no bar redraws when not a terminal";
  EXPECT_EQ(r.output.find("\033[K"), std::string::npos);
  const std::regex line(
      R"(epoch \d+/2 step (\d+)/14 loss [0-9.]+ lr [0-9.e+-]+ \d+ img/s ETA \d+:\d\d \(epoch \d+:\d\d\))");
  int lines = 0;
  for (auto it = std::sregex_iterator(r.output.begin(), r.output.end(), line);
       it != std::sregex_iterator(); ++it) {
    ++lines;
  }
  EXPECT_EQ(lines, 7) << "every 2 steps of 14 on rank 0 only:\n" << r.output;
}

}  // namespace
}  // namespace fer
