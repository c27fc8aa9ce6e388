// launch/mpirun.sh --max-restarts: a run whose rank dies is started again from its newest
// checkpoint, at most N times, each restart logged with the exit code; a run that finishes after
// such a restart ends with the same numbers as one that was never disturbed. Usage errors and
// preemption are never restarted. The fault is injected through a wrapper given as FER_BIN that
// sets FER_FAULT_INJECT on the first try only (one marker file per rank), as a one-off crash.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "common/fs_util.h"
#include "metrics_util.h"
#include "test_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace fer {
namespace {

using testing::quote;
using testing::run_command;
using testing::TempFolder;
using testing::tool;

class LaunchRestart : public ::testing::Test {
 protected:
  // 112 train images, per-rank batch 8 on 2 ranks: 7 steps per epoch, a checkpoint at step 7.
  static void SetUpTestSuite() {
    tmp_ = new TempFolder("launcher_tries");
    const auto r = testing::make_packed_dataset(tmp_->path(), "--per-class 20 --size 16 --seed 4",
                                                "--size 16");
    if (r.exit_code != 0) setup_error_ = r.output;
    std::ofstream(*tmp_ / "tiny.yaml") << "model: {width: 0.0625, dropout: 0.0}\n"
                                          "train: {epochs: 2, batch_size: 8, log_every: 1}\n"
                                          "data: {workers: 1}\n"
                                          "dist: {comm_timeout_s: 20}\n";
  }
  static void TearDownTestSuite() { delete tmp_; }
  void SetUp() override { ASSERT_TRUE(setup_error_.empty()) << setup_error_; }

  static fs::path path(const std::string& name) { return *tmp_ / name; }

  // A FER_BIN for mpirun.sh that runs fer-dist-train with FER_FAULT_INJECT=`fault` the first
  // time each rank starts, and without it from then on.
  static std::string fault_once_wrapper(const std::string& name, const std::string& fault) {
    const fs::path script = path(name + ".sh"), marks = path(name + ".marks");
    fs::create_directories(marks);
    std::ofstream(script) << "#!/bin/sh\n"
                             "mark="
                          << quote(marks)
                          << "/rank-${OMPI_COMM_WORLD_RANK:-0}\n"
                             "if [ ! -e \"$mark\" ]; then\n"
                             "  : > \"$mark\"\n"
                             "  export FER_FAULT_INJECT='"
                          << fault
                          << "'\n"
                             "fi\n"
                             "exec "
                          << quote(tool("fer-dist-train")) << " \"$@\"\n";
    fs::permissions(script, fs::perms::owner_all, fs::perm_options::add);
    return script.string();
  }

  // launch/mpirun.sh [launcher_flags] 2 CONFIG DATA RUN_DIR [trainer_args], with `bin` as FER_BIN
  // and `env` (VAR=value ...) in front.
  static testing::CommandResult launch(const std::string& launcher_flags, const std::string& run,
                                       const std::string& bin, const std::string& env = "",
                                       const std::string& trainer_args = "") {
    return run_command(
        "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 "
        "MPIRUN_ARGS=--oversubscribe FER_DEVICE=cpu FER_BIN=" +
        quote(bin) + " " + env + " " + quote(fs::path(FER_SOURCE_DIR) / "launch" / "mpirun.sh") +
        " " + launcher_flags + " 2 " + quote(path("tiny.yaml")) + " " + quote(path("data")) + " " +
        quote(path(run)) + " " + trainer_args);
  }

  static TempFolder* tmp_;
  static std::string setup_error_;
};
TempFolder* LaunchRestart::tmp_ = nullptr;
std::string LaunchRestart::setup_error_;

json last_epoch_record(const fs::path& run) {
  json last;
  for (const json& j : testing::numeric_metrics(run)) {
    if (j["type"] == "epoch") last = j;
  }
  return last;
}

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// The launcher's restart lines ("mpirun.sh [...] exit 99 (...): restart 1 of 2 from ...").
std::size_t restarts(const std::string& output) {
  return count(output, "from the newest checkpoint (--resume auto)");
}

TEST_F(LaunchRestart, ARankThatDiesOnceIsRestartedAndTheRunEndsAsIfUndisturbed) {
  const auto plain = launch("", "undisturbed", tool("fer-dist-train"));
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  EXPECT_EQ(restarts(plain.output), 0u) << plain.output;

  // Rank 1 exits abruptly (code 99) at step 9, after the checkpoint of step 7.
  const std::string bin = fault_once_wrapper("fault_once", "kind:exit,rank:1,step:9");
  const auto r = launch("--max-restarts 2", "restarted", bin);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(restarts(r.output), 1u) << r.output;
  EXPECT_EQ(count(r.output, "restart 1 of 2"), 1u) << r.output;
  EXPECT_NE(r.output.find("exit 99"), std::string::npos) << r.output;  // the cause is named
  EXPECT_EQ(count(r.output, "restart 2 of 2"), 0u) << r.output;        // once was enough
  EXPECT_NE(r.output.find("run completed after 1 restart(s)"), std::string::npos) << r.output;
  const std::string log = read_file(path("restarted") / "logs" / "launcher.log");
  EXPECT_NE(log.find("exit 99"), std::string::npos) << log;

  const json a = json::parse(read_file(path("undisturbed") / "summary.json"));
  const json b = json::parse(read_file(path("restarted") / "summary.json"));
  EXPECT_EQ(b["steps"], a["steps"]);
  EXPECT_EQ(b["steps"], 14);
  EXPECT_EQ(b["test"]["accuracy"], a["test"]["accuracy"]);
  EXPECT_EQ(b["test"]["loss"], a["test"]["loss"]);
  EXPECT_EQ(b["best_val_accuracy"], a["best_val_accuracy"]);
  EXPECT_EQ(last_epoch_record(path("restarted")), last_epoch_record(path("undisturbed")));
}

TEST_F(LaunchRestart, AFailureThatRepeatsUsesUpTheRestartsAndReturnsItsCode) {
  // The fault on every try: one restart, then the launcher gives up with the run's own code.
  const auto r = launch("--max-restarts 1", "always_failing", tool("fer-dist-train"),
                        "FER_FAULT_INJECT=kind:exit,rank:1,step:9");
  EXPECT_EQ(r.exit_code, 99) << r.output;
  EXPECT_EQ(count(r.output, "restart 1 of 1"), 1u) << r.output;
  EXPECT_NE(r.output.find("giving up"), std::string::npos) << r.output;
  // Without --max-restarts nothing is restarted (the launcher's behaviour before the flag).
  const auto once = launch("", "always_failing", tool("fer-dist-train"),
                           "FER_FAULT_INJECT=kind:exit,rank:1,step:9");
  EXPECT_EQ(once.exit_code, 99) << once.output;
  EXPECT_EQ(restarts(once.output), 0u) << once.output;
}

TEST_F(LaunchRestart, UsageErrorsAndPreemptionAreNotRestarted) {
  auto r = launch("--max-restarts 3", "usage", tool("fer-dist-train"), "", "--set no_such.key=1");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(restarts(r.output), 0u) << r.output;
  r = launch("--max-restarts 3", "preempted", tool("fer-dist-train"),
             "FER_FAULT_INJECT=kind:preempt,rank:1,step:3");
  EXPECT_EQ(r.exit_code, 75) << r.output;
  EXPECT_EQ(restarts(r.output), 0u) << r.output;
  EXPECT_NE(r.output.find("preempted"), std::string::npos) << r.output;
  r = launch("--max-restarts=many", "usage", tool("fer-dist-train"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("needs a count"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace fer
